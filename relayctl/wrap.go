//go:build unix

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/relaytun/relay/tunnel"
)

// Timing of wrap.
const (
	// localPoll is how often wrap tries the local servers while the
	// command starts.
	localPoll = 100 * time.Millisecond
	// stopGrace is how long a command has to exit after SIGTERM, when
	// relayctl stops it, before SIGKILL.
	stopGrace = 10 * time.Second
)

// forwarded are the signals relayctl passes on to the command it wraps.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// wrap runs command beside the agent: the command starts first, the agent
// connects once every local server of a TCP tunnel accepts connections (a
// UDP-only tunnel's is not waited for: see waitLocals), every signal
// in forwarded goes to the command, and when the command exits the tunnels
// close and relayctl exits with its exit code (128+N if signal N killed
// it). If the agent ends first (refused, relay unverified, gave up), the
// command is stopped and relayctl exits as expose would.
func wrap(agent *tunnel.Agent, p *agentPlan, command []string) error {
	log := p.log
	// Before the start, so that no signal falls between the two.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	warnTaken(p.cfg.Tunnels, command[0], log)
	ch, err := startChild(command, log)
	if err != nil {
		return cli.Exit(fmt.Sprintf("starting %s: %v", command[0], pathErr(err)), exitFailure)
	}

	pollCtx, stopPoll := context.WithCancel(context.Background())
	pollDone := make(chan struct{})
	// The wait ends before wrap returns: a "waiting for the local server"
	// line logged after relayctl's last line would bury it.
	defer func() { stopPoll(); <-pollDone }()
	waiting := make(chan string, len(p.cfg.Tunnels)) // each local server as its turn comes
	ready := make(chan struct{})
	go func() {
		defer close(pollDone)
		if waitLocals(pollCtx, p.cfg.Tunnels, waiting, log) == nil {
			close(ready)
		}
	}()
	local := p.cfg.Tunnels[0].Local
	var r *running
	var agentDone <-chan error
	for {
		select {
		case sig := <-sigs:
			ch.signal(sig.(syscall.Signal))
		case local = <-waiting:
		case <-ready:
			ready = nil
			r = startAgent(agent)
			agentDone = r.done
		case <-ch.done:
			code := ch.exitCode()
			if r == nil {
				return cli.Exit(fmt.Sprintf("%s %s before %s accepted connections", ch.name, ch.status(), local), code)
			}
			log.Info("the command ended; closing the tunnels", "command", ch.name, "status", ch.status())
			if err := r.drain(p.drainTimeout, sigs, log); err != nil {
				log.Warn("closing the tunnels", "err", err)
			}
			if code != 0 {
				return cli.Exit("", code)
			}
			return nil
		case err := <-agentDone:
			log.Info("the tunnels ended; stopping the command", "command", ch.name)
			ch.stop(stopGrace)
			if err == nil {
				return cli.Exit(fmt.Sprintf("the tunnels ended; %s was stopped", ch.name), exitFailure)
			}
			return agentExit(err, p.cfg.Relay)
		}
	}
}

// warnTaken warns of each TCP local server that accepts connections
// before the command has started: another program holds its port, the
// wait for the command's server ends at once on it, and clients reach it
// rather than the command (which may then fail to listen).
func warnTaken(tunnels []tunnel.TunnelSpec, command string, log *slog.Logger) {
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	for _, t := range tunnels {
		if t.Protos == tunnel.ProtoUDP {
			continue
		}
		if c, err := d.Dial("tcp", t.Local); err == nil {
			c.Close()
			log.Warn("something already accepts connections on the local address before the command has started: clients will reach it, not the command, which may fail to listen there; stop that program, or give the command and LOCAL another port",
				"local", t.Local, "command", command)
		}
	}
}

// waitLocals returns once every tunnel's local server accepts a TCP
// connection, sending each address on waiting as its turn comes, or when
// ctx ends. A UDP-only tunnel's server is not waited for: UDP has no
// connection to try, and a datagram sent to find out would reach the
// server as if from a player. Waiting for its TCP port instead would wait
// forever (a Bedrock or Valheim server listens on none).
func waitLocals(ctx context.Context, tunnels []tunnel.TunnelSpec, waiting chan<- string, log *slog.Logger) error {
	d := net.Dialer{Timeout: time.Second}
	for _, t := range tunnels {
		if t.Protos == tunnel.ProtoUDP {
			log.Info("not waiting for a UDP-only local server: UDP has no connection to try", "local", t.Local)
			continue
		}
		waiting <- t.Local
		for logged := false; ; logged = true {
			c, err := d.DialContext(ctx, "tcp", t.Local)
			if err == nil {
				c.Close()
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !logged {
				log.Info("waiting for the local server to accept connections", "local", t.Local)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(localPoll):
			}
		}
	}
	return nil
}

// child is the command relayctl wraps.
type child struct {
	name string
	pid  int // also its process group's id
	log  *slog.Logger
	done chan struct{}      // closed once the command has exited
	ws   syscall.WaitStatus // how it exited, once done is closed
}

// startChild starts command with relayctl's stdin, stdout and stderr, in a
// process group of its own.
//
// Why its own group: in relayctl's, a Ctrl-C in the terminal, or a
// supervisor signalling relayctl's group, would reach the command twice:
// once from the kernel and once from relayctl passing it on. In its own
// group the command hears each signal once, from relayctl, which sends it
// to the whole group so that the children of a `sh -c` hear it too. When
// relayctl runs in the foreground of a terminal, the command's group takes
// the foreground: Ctrl-C then reaches the command alone (relayctl sees it
// exit, and exits with its code), and the command can read the terminal (a
// game server's console) instead of being stopped by SIGTTIN. relayctl
// takes the terminal back when the command ends.
func startChild(command []string, log *slog.Logger) (*child, error) {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tty := terminalForeground()
	if tty {
		cmd.SysProcAttr.Foreground = true
		cmd.SysProcAttr.Ctty = syscall.Stdin
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if tty {
		// relayctl is in the background of its terminal now: writing to
		// it (with stty tostop) or taking the foreground back would stop
		// relayctl with SIGTTOU. Ignored only now, as the command would
		// inherit the disposition.
		signal.Ignore(syscall.SIGTTOU)
	}
	c := &child{name: command[0], pid: cmd.Process.Pid, log: log, done: make(chan struct{})}
	log.Info("started the command", "command", c.name, "pid", c.pid)
	go c.wait(cmd.Process, tty)
	return c, nil
}

// wait reaps the command and closes done. It calls wait4 itself, not
// cmd.Wait, to hear of the command being stopped from the terminal (see
// suspend).
func (c *child) wait(p *os.Process, tty bool) {
	flags := 0
	if tty {
		flags = syscall.WUNTRACED
	}
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(c.pid, &ws, flags, nil)
		if err == syscall.EINTR {
			continue
		}
		if err == nil && ws.Stopped() {
			switch ws.StopSignal() {
			case syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
				c.suspend()
			}
			continue
		}
		c.ws = ws
		break
	}
	p.Release()
	if tty {
		setForeground(syscall.Getpgrp())
	}
	close(c.done)
}

// suspend follows the command when the terminal stops it (Ctrl-Z):
// relayctl takes the terminal back and stops itself, so that its shell
// sees the job stopped and gets the terminal. When the shell continues the
// job (fg, or bg), the command continues too, with the terminal if
// relayctl has been given it.
func (c *child) suspend() {
	c.log.Info("the command was stopped from the terminal; stopping relayctl too until it is continued", "command", c.name)
	setForeground(syscall.Getpgrp())
	syscall.Kill(syscall.Getpid(), syscall.SIGSTOP)
	if terminalForeground() {
		setForeground(c.pid)
	}
	syscall.Kill(-c.pid, syscall.SIGCONT)
}

// terminalForeground reports whether stdin is a terminal and relayctl's
// process group is in its foreground.
func terminalForeground() bool {
	if !term.IsTerminal(syscall.Stdin) {
		return false
	}
	pgrp, err := unix.IoctlGetInt(syscall.Stdin, unix.TIOCGPGRP)
	return err == nil && pgrp == syscall.Getpgrp()
}

// setForeground gives stdin's terminal to the process group pgrp.
func setForeground(pgrp int) {
	unix.IoctlSetPointerInt(syscall.Stdin, unix.TIOCSPGRP, pgrp)
}

// signal sends sig to the command's process group.
func (c *child) signal(sig syscall.Signal) {
	select {
	case <-c.done:
		return // its group may be gone, and the id taken by another
	default:
	}
	c.log.Debug("passing a signal on to the command", "signal", unix.SignalName(sig))
	syscall.Kill(-c.pid, sig)
}

// stop ends the command: SIGTERM, then SIGKILL after grace.
func (c *child) stop(grace time.Duration) {
	c.signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(grace):
	}
	c.log.Warn("the command did not exit after SIGTERM; killing it", "command", c.name, "grace", grace)
	syscall.Kill(-c.pid, syscall.SIGKILL)
	<-c.done
}

// exitCode is the command's exit code, or 128+N if signal N killed it, as
// a shell reports it.
func (c *child) exitCode() int {
	ws := c.ws
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// status says how the command ended: "exited with code 7".
func (c *child) status() string {
	ws := c.ws
	if ws.Signaled() {
		return "was killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exited with code %d", ws.ExitStatus())
}
