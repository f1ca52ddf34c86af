//go:build unix

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/syncbuf"
	"github.com/relaytun/relay/tunnel"
)

func init() { helperServer = serveHelper }

// serveHelper is the command the wrapping tests have relayctl start: an
// echo server that reports each signal on stderr ("helper: got SIGHUP").
// SIGTERM then kills it, as it would a server with no handler. With
// $HELPER_EXIT set to N, it exits N once a client that sent something has
// gone (relayctl's probes send nothing). With $HELPER_STDIN set, it reads
// lines from stdin, as a server's console would, and reports each.
func serveHelper(addr string) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTERM)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(100)
	}
	fmt.Fprintln(os.Stderr, "helper: listening")
	exit, err := strconv.Atoi(os.Getenv("HELPER_EXIT"))
	if err != nil {
		exit = -1
	}
	if os.Getenv("HELPER_STDIN") != "" {
		go func() {
			in := bufio.NewScanner(os.Stdin)
			for in.Scan() {
				fmt.Fprintf(os.Stderr, "helper: read %q\n", in.Text())
			}
		}()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
				if n > 0 && exit >= 0 {
					os.Exit(exit)
				}
			}()
		}
	}()
	for sig := range sigs {
		s := sig.(syscall.Signal)
		fmt.Fprintf(os.Stderr, "helper: got %s\n", unix.SignalName(s))
		if s == syscall.SIGTERM {
			signal.Reset(s)
			syscall.Kill(os.Getpid(), s)
			select {}
		}
	}
}

// TestWrap: expose and run start the command after --, expose its port
// once it accepts connections, pass signals on, and exit with its code.
func TestWrap(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relay := []string{"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}
	// noErrorLine fails if relayctl reported an error of its own.
	noErrorLine := func(t *testing.T, p *pt.Proc) {
		t.Helper()
		if errOut := p.Stderr.String(); strings.Contains(errOut, "relayctl: ") {
			t.Errorf("relayctl reported an error:\n%s", errOut)
		}
	}

	// The command's exit code, 0 too, once the tunnel was live.
	for _, exit := range []int{7, 0} {
		t.Run(fmt.Sprintf("exit code %d", exit), func(t *testing.T) {
			t.Parallel()
			local := pt.ClosedPort(t)
			env := []string{helperEnv + "=" + local, "HELPER_EXIT=" + strconv.Itoa(exit)}
			p, urls := pt.StartExpose(t, 1, env, append(append([]string{local}, relay...), "--", self)...)
			pt.CheckEcho(t, urls[0], "", 4096) // the helper exits after this client
			if code := p.Wait(pt.ExitTimeout); code != exit {
				t.Errorf("exit %d, want the command's %d", code, exit)
			}
			if out := p.Stdout.String(); out != urls[0]+"\n" {
				t.Errorf("stdout %q, want the tunnel's line alone", out)
			}
			if !strings.Contains(p.Stderr.String(), "helper: listening") {
				t.Errorf("the command's stderr did not reach relayctl's:\n%s", p.Stderr.String())
			}
			want := fmt.Sprintf(`msg="the command ended; closing the tunnels" command=%s status="exited with code %d"`, self, exit)
			if !strings.Contains(p.Stderr.String(), want) {
				t.Errorf("stderr lacks %s:\n%s", want, p.Stderr.String())
			}
			noErrorLine(t, p)
		})
	}

	t.Run("signals", func(t *testing.T) {
		t.Parallel()
		local := pt.ClosedPort(t)
		config := filepath.Join(t.TempDir(), "agent.toml")
		text := fmt.Sprintf("relay = %q\ntoken = %q\nfingerprint = %q\n[[tunnels]]\nlocal = %q\n", r.Addr, pt.TestSecret, r.FP, local)
		if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		p, urls := pt.StartRelayctl(t, 1, []string{helperEnv + "=" + local}, "run", "--config", config, "--", self)
		pt.CheckEcho(t, urls[0], "", 1024)
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGINT} {
			p.Signal(sig)
			p.WaitFor(&p.Stderr, regexp.MustCompile("helper: got "+unix.SignalName(sig)+"\n"), pt.StartTimeout)
		}
		// The command lives on through those, and the tunnel with it.
		pt.CheckEcho(t, urls[0], "", 1024)
		p.Signal(syscall.SIGTERM)
		if code := p.Wait(pt.ExitTimeout); code != 128+int(syscall.SIGTERM) {
			t.Errorf("exit %d, want %d: the command was killed by SIGTERM", code, 128+int(syscall.SIGTERM))
		}
		for _, s := range []string{"SIGHUP", "SIGQUIT", "SIGINT", "SIGTERM"} {
			if n := strings.Count(p.Stderr.String(), "helper: got "+s+"\n"); n != 1 {
				t.Errorf("the command got %s %d times, want once", s, n)
			}
		}
		noErrorLine(t, p)
	})

	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		local := pt.ClosedPort(t)
		p := pt.Start(t, []string{helperEnv + "=" + local}, pt.RelayctlBin, "expose", local, "--relay", r.Addr,
			"--token", "not-the-right-secret", "--fingerprint", r.FP, "--", self)
		if code := p.Wait(pt.ExitTimeout); code != exitRefused {
			t.Errorf("exit %d, want %d", code, exitRefused)
		}
		errOut := p.Stderr.String()
		if !strings.Contains(errOut, "helper: got SIGTERM") {
			t.Errorf("the command was not stopped with SIGTERM:\n%s", errOut)
		}
		if last := pt.LastLine(errOut); !strings.HasPrefix(last, "relayctl: the relay refused: ") {
			t.Errorf("stderr ends %q, want the refusal", last)
		}
	})

	t.Run("port taken", func(t *testing.T) {
		t.Parallel()
		local := pt.StartEcho(t, "")
		p := pt.Start(t, nil, pt.RelayctlBin, append(append([]string{"expose", local}, relay...), "--", "sh", "-c", "sleep 1; exit 3")...)
		if code := p.Wait(pt.ExitTimeout); code != 3 {
			t.Errorf("exit %d, want the command's 3", code)
		}
		want := `level=WARN msg="something already accepts connections on the local address before the command has started: clients will reach it, not the command, which may fail to listen there; stop that program, or give the command and LOCAL another port" local=` + local + " command=sh"
		if !strings.Contains(p.Stderr.String(), want) {
			t.Errorf("stderr lacks %s:\n%s", want, p.Stderr.String())
		}
	})

	// The relay is never dialed in these: the command ends first.
	for _, tc := range []struct {
		name    string
		command []string
		code    int
		want    string
	}{
		{"exits first", []string{"sh", "-c", "exit 5"}, 5, "sh exited with code 5 before 127.0.0.1:%s accepted connections"},
		{"killed first", []string{"sh", "-c", "kill -TERM $$"}, 143, "sh was killed by SIGTERM before 127.0.0.1:%s accepted connections"},
		{"not found", []string{"/no/such/command"}, exitFailure, "starting /no/such/command: no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			local := pt.ClosedPort(t)
			_, port, _ := net.SplitHostPort(local)
			args := append([]string{"expose", local, "--relay", "127.0.0.1:1", "--token", "x", "--fingerprint", r.FP, "--"}, tc.command...)
			out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, args...)
			if code != tc.code || out != "" {
				t.Errorf("exit %d, stdout %q; want %d and nothing", code, out, tc.code)
			}
			want := "relayctl: " + strings.ReplaceAll(tc.want, "%s", port)
			if last := pt.LastLine(errOut); last != want {
				t.Errorf("stderr ends %q, want %q", last, want)
			}
		})
	}
}

// TestWaitLocalsUDPOnly: a UDP-only tunnel's local server is not waited
// for, since it accepts no TCP connection to find it by; a TCP tunnel's is.
// (The context is over before the start, so a wait returns at once with
// its error instead of polling.)
func TestWaitLocalsUDPOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	log := slog.New(slog.DiscardHandler)
	local := pt.ClosedPort(t)
	for _, tc := range []struct {
		protos uint8
		wait   bool
	}{
		{tunnel.ProtoUDP, false},
		{tunnel.ProtoTCP, true},
		{tunnel.ProtoTCP | tunnel.ProtoUDP, true},
		{0, true}, // TCP
	} {
		specs := []tunnel.TunnelSpec{{Name: "game", Local: local, Protos: tc.protos}}
		err := waitLocals(ctx, specs, make(chan string, len(specs)), log)
		if waited := err != nil; waited != tc.wait {
			t.Errorf("protos %#x: waitLocals returned %v; want a wait for the local server: %v", tc.protos, err, tc.wait)
		}
	}
}

// TestWarnTakenUDPOnly: the warning that something accepts connections on
// a LOCAL before the command has started is for tunnels that carry TCP: a
// UDP-only tunnel's port is not tried, as a TCP server on that number says
// nothing of the UDP port the command is to serve.
func TestWarnTakenUDPOnly(t *testing.T) {
	local := pt.StartEcho(t, "")
	for _, tc := range []struct {
		protos uint8
		warn   bool
	}{
		{tunnel.ProtoUDP, false},
		{tunnel.ProtoTCP, true},
		{tunnel.ProtoTCP | tunnel.ProtoUDP, true},
	} {
		var logs strings.Builder
		warnTaken([]tunnel.TunnelSpec{{Name: "game", Local: local, Protos: tc.protos}}, "srv", slog.New(slog.NewTextHandler(&logs, nil)))
		if warned := strings.Contains(logs.String(), `msg="something already accepts connections on the local address before the command has started`); warned != tc.warn {
			t.Errorf("protos %#x: warned %v, want %v\n%s", tc.protos, warned, tc.warn, logs.String())
		}
	}
}

// TestStopAfterGrace: relayctl stops the command it wraps (when the
// tunnels end first: refused, unverified, reconnects given up) with
// SIGTERM to its group, and SIGKILL with a warning once the grace is over
// if it ignores that. relayctl waits stopGrace, 10 s; the test, less.
func TestStopAfterGrace(t *testing.T) {
	t.Parallel()
	// The command that exits on SIGTERM gets a grace it cannot use up on
	// a loaded machine: stop returns when it exits, whatever the grace.
	for _, tt := range []struct {
		name, script, status, warn string
		grace                      time.Duration
	}{
		{"exits on SIGTERM", "echo ready; exec sleep 30", "was killed by SIGTERM", "", pt.ExitTimeout},
		{"ignores SIGTERM", "trap '' TERM; echo ready; exec sleep 30", "was killed by SIGKILL",
			`level=WARN msg="the command did not exit after SIGTERM; killing it" command=sh grace=200ms` + "\n", 200 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command("sh", "-c", tt.script)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as startChild, without a terminal
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var logs syncbuf.Buffer
			noTime := func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}
			c := &child{name: "sh", pid: cmd.Process.Pid, log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: noTime})), done: make(chan struct{})}
			go c.wait(cmd.Process, false)
			t.Cleanup(func() {
				select {
				case <-c.done:
				default:
					syscall.Kill(-c.pid, syscall.SIGKILL)
					<-c.done
				}
			})
			// Once it says so, its trap is set.
			if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
				t.Fatalf("the command printed %q, %v; want ready", line, err)
			}
			start := time.Now()
			c.stop(tt.grace)
			took := time.Since(start)
			if got := c.status(); got != tt.status {
				t.Errorf("the command %s, want %s", got, tt.status)
			}
			if logs.String() != tt.warn {
				t.Errorf("logged %q, want %q", logs.String(), tt.warn)
			}
			if tt.warn != "" && took < tt.grace {
				t.Errorf("killed after %v, before the grace of %v was over", took, tt.grace)
			}
		})
	}
}
