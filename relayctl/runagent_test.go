package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/transparent"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// TestAgentExit: each way Run can end gives its exit code and one line
// that says what happened and what to do (the process tests reach some of
// these only with a relay that misbehaves on cue).
func TestAgentExit(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	dial := &tunnel.DialError{Addr: "relay.example.com:7000", Kind: "tcp", Err: refused}
	for _, tc := range []struct {
		name string
		err  error
		code int
		want string
	}{
		{"identity", &transport.IdentityError{Msg: "relay r:7000 has fingerprint SHA256:a, not the expected SHA256:b: check --fingerprint"}, exitUnverified,
			"relay r:7000 has fingerprint SHA256:a, not the expected SHA256:b: check --fingerprint"},
		{"gave up", fmt.Errorf("%w after 3 attempts: %w", tunnel.ErrGaveUp, dial), exitFailure,
			"gave up reconnecting to the relay after 3 attempts: could not reach the relay at relay.example.com:7000 over tcp: dial tcp: connection refused; " +
				"--max-retries 0 (max_retries in agent.toml) keeps trying"},
		{"relay stopping", &tunnel.RefusedError{Code: tunnel.CodeShutdown, Text: "the relay is shutting down"}, exitFailure,
			"the relay ended the session: the relay is shutting down; run relayctl again once it is back, or with --wait-for-relay (wait_for_relay)"},
		{"relay failed", &tunnel.RefusedError{Code: tunnel.CodeInternal, Text: "relay failed to open a port: too many open files"}, exitFailure,
			"the relay ended the session: relay failed to open a port: too many open files; run relayctl again once it is back, or with --wait-for-relay (wait_for_relay)"},
		{"refused", fmt.Errorf("registering: %w", &tunnel.RefusedError{Code: tunnel.CodePortTaken, Text: "port 20001 is already taken by another tunnel on this relay: choose another --port, or leave it out"}), exitRefused,
			"the relay refused: port 20001 is already taken by another tunnel on this relay: choose another --port, or leave it out"},
		{"last tunnel closed", fmt.Errorf("%w: %w", tunnel.ErrLastTunnelClosed, &tunnel.RefusedError{Code: tunnel.CodeForbidden,
			Text: `tunnel gone (127.0.0.1:8080): its token "t"'s names rule no longer allows the name "gone"`}), exitRefused,
			`the relay closed the agent's last tunnel: tunnel gone (127.0.0.1:8080): its token "t"'s names rule no longer allows the name "gone"`},
		{"unreachable", dial, exitFailure,
			"could not reach the relay at relay.example.com:7000 over tcp: dial tcp: connection refused: check the relay's address, that relayd is running there, " +
				"and that its port is open (UDP for QUIC, TCP for --transport tcp); --wait-for-relay (wait_for_relay) keeps trying"},
		{"proxy refused", &tunnel.DialError{Addr: "relay.example.com:7000", Kind: "tcp", Err: &transport.ProxyError{Proxy: "http://u:xxxxx@proxy.example:3128",
			Err: errors.New("the proxy refused to connect to relay.example.com:7000: 502 Bad Gateway")}}, exitFailure,
			"could not reach the relay at relay.example.com:7000 over tcp: proxy http://u:xxxxx@proxy.example:3128: the proxy refused to connect to relay.example.com:7000: 502 Bad Gateway; " +
				"--wait-for-relay (wait_for_relay) keeps trying"},
		{"session lost", fmt.Errorf("%w: %w", tunnel.ErrSessionClosed, io.EOF), exitFailure,
			"session with the relay closed: EOF: run relayctl again, or with --wait-for-relay (wait_for_relay)"},
		{"transparent routes missing", &transparent.SetupError{Reason: "the local server's replies to a client's IPv4 address would not come back to relayctl: add the routes, as root: " + transparent.Routes(false)}, exitFailure,
			"transparent: the local server's replies to a client's IPv4 address would not come back to relayctl: add the routes, as root: " + transparent.Routes(false)},
		{"something else", errors.New("registering: waiting for REGISTERED\nfrom the relay: timeout"), exitFailure,
			"session with relay.example.com:7000 failed: registering: waiting for REGISTERED; from the relay: timeout"},
	} {
		err := agentExit(tc.err, "relay.example.com:7000")
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != tc.code || err.Error() != tc.want {
			t.Errorf("%s: %v (exit %v)\nwant exit %d and %q", tc.name, err, ec, tc.code, tc.want)
		}
	}
	if err := agentExit(nil, "r:7000"); err != nil {
		t.Errorf("agentExit(nil) = %v, want nil", err)
	}
}
