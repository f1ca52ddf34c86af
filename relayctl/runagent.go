package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/debugpprof"
	"github.com/relaytun/relay/internal/gcfloor"
	"github.com/relaytun/relay/internal/transparent"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// runAgent runs plan's agent for expose and run, printing each public
// address on stdout as it goes live and serving its status on the control
// socket. The first SIGINT or SIGTERM drains: the relay sends no new
// clients and open connections may finish within the drain timeout; a
// second signal stops at once. Either way the exit status is 0. With a
// command to wrap (after "--"), wrap runs instead.
func runAgent(c *cli.Context, p *agentPlan) error {
	command, _ := c.App.Metadata[commandKey].([]string)
	if command != nil && len(command) == 0 {
		return cli.Exit("nothing follows --: put the command to start there, e.g. `-- java -jar server.jar`", exitUsage)
	}
	out := c.App.Writer
	p.cfg.OnReady = func(eps []tunnel.Endpoint) {
		for _, e := range eps {
			fmt.Fprintln(out, e.URL())
		}
	}
	agent, err := tunnel.NewAgent(p.cfg)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	if len(command) > 0 {
		// Before the command starts, which Run's own check would
		// follow only once its server accepts connections: a missing
		// route is said at once, not after a game server has loaded
		// its world, and the command is not started for nothing.
		if err := tunnel.CheckTransparent(context.Background(), p.cfg.Tunnels); err != nil {
			return agentExit(err, p.cfg.Relay)
		}
	}
	debugpprof.Start(p.log)
	gcfloor.Set(gcfloor.Relay)
	stopControl, err := startControl(c, agent, p.log)
	if err != nil {
		return err
	}
	defer stopControl()
	if len(command) > 0 {
		return wrap(agent, p, command)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	r := startAgent(agent)
	select {
	case err := <-r.done:
		return agentExit(err, p.cfg.Relay)
	case sig := <-sigs:
		// Say how to cut the wait short, as relayd does: a terminal's user
		// with a websocket open would otherwise wait out drain_timeout.
		p.log.Info("stopping: draining, so open connections may finish (signal again to close them now)", "signal", sig.String(), "drain_timeout", p.drainTimeout)
		err := r.drain(p.drainTimeout, sigs, p.log)
		p.log.Info("stopped")
		return agentExit(err, p.cfg.Relay)
	}
}

// running is an agent whose Run is under way.
type running struct {
	agent  *tunnel.Agent
	cancel context.CancelFunc
	done   chan error // Run's result
}

func startAgent(a *tunnel.Agent) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	return r
}

// drain stops the agent gracefully: the relay sends no new clients, and
// open connections may finish within timeout. A signal on sigs meanwhile
// stops it at once. It returns Run's result.
func (r *running) drain(timeout time.Duration, sigs <-chan os.Signal, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go r.agent.Drain(ctx)
	select {
	case err := <-r.done:
		return err
	case sig := <-sigs:
		log.Warn("second signal: closing open connections now", "signal", sig.String())
		cancel()
	case <-ctx.Done(): // Drain says so
	}
	return r.stop()
}

// stopWait bounds how long stop waits for Run to return.
const stopWait = 2 * time.Second

// stop ends Run at once. It waits for Run only briefly: a connection the
// agent is slow to close must not keep relayctl alive, and relayctl
// exiting closes it anyway.
func (r *running) stop() error {
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(stopWait):
		return nil
	}
}

// agentExit turns Run's result into the exit status and one line that says
// what happened and what to do.
func agentExit(err error, relay string) error {
	if err == nil {
		return nil
	}
	var ref *tunnel.RefusedError
	var idErr *transport.IdentityError
	var dialErr *tunnel.DialError
	var setupErr *transparent.SetupError
	var proxyErr *transport.ProxyError
	switch {
	case errors.As(err, &setupErr):
		return cli.Exit(oneLine(err.Error()), exitFailure)
	case errors.As(err, &idErr):
		return cli.Exit(oneLine(idErr.Error()), exitUnverified)
	case errors.Is(err, tunnel.ErrGaveUp):
		return cli.Exit(oneLine(err.Error())+"; --max-retries 0 (max_retries in agent.toml) keeps trying", exitFailure)
	// The rest end the first connection: once live, the agent reconnects.
	case errors.As(err, &ref) && ref.Temporary():
		return cli.Exit(fmt.Sprintf("the relay ended the session: %s; run relayctl again once it is back, or with --wait-for-relay (wait_for_relay)", oneLine(ref.Text)), exitFailure)
	case errors.Is(err, tunnel.ErrLastTunnelClosed) && errors.As(err, &ref):
		return cli.Exit("the relay closed the agent's last tunnel: "+oneLine(ref.Text), exitRefused)
	case errors.As(err, &ref):
		return cli.Exit("the relay refused: "+oneLine(ref.Text), exitRefused)
	case errors.As(err, &proxyErr):
		// What the proxy said is the news; the relay was not reached.
		return cli.Exit(oneLine(err.Error())+"; --wait-for-relay (wait_for_relay) keeps trying", exitFailure)
	case errors.As(err, &dialErr):
		return cli.Exit(fmt.Sprintf("%s: check the relay's address, that relayd is running there, and that its port is open (UDP for QUIC, TCP for --transport tcp); --wait-for-relay (wait_for_relay) keeps trying",
			oneLine(err.Error())), exitFailure)
	case errors.Is(err, tunnel.ErrSessionClosed):
		return cli.Exit(oneLine(err.Error())+": run relayctl again, or with --wait-for-relay (wait_for_relay)", exitFailure)
	}
	return cli.Exit(fmt.Sprintf("session with %s failed: %s", relay, oneLine(err.Error())), exitFailure)
}

// oneLine folds a multi-line error (errors.Join) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
