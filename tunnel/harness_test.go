package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/syncbuf"
	"github.com/relaytun/relay/transport"
)

// kinds are the transports every end-to-end test body runs over.
var kinds = []string{TransportQUIC, TransportTCP}

// forEachTransport runs body once per transport, in parallel subtests.
func forEachTransport(t *testing.T, body func(t *testing.T, kind string)) {
	t.Helper()
	for _, k := range kinds {
		t.Run(k, func(t *testing.T) {
			t.Parallel()
			body(t, k)
		})
	}
}

// testOptions shortens transport timeouts for tests.
func testOptions() transport.Options {
	o := transport.DefaultOptions()
	o.HandshakeTimeout = 5 * time.Second
	return o
}

type testRelay struct {
	Relay       *Relay
	Addr        string
	Fingerprint string
	Pin         []byte
	Log         *syncbuf.Buffer
	cancel      context.CancelFunc
	done        chan struct{}
}

const testSecret = "test-secret-0123456789"

// harnessPorts are the public ports a test relay hands out unless its test
// says otherwise. The module's tests split the port space so that packages
// run at once never meet: proctest.ClosedPort (ports a test expects to stay
// closed, and twoFreePorts here) takes 20000-29999, the kernel's ephemeral
// range (32768-60999) is for listeners on port 0, tests that need a block
// of their own take fixed ones in 41000-51999, and the relayds of the relayd
// and relayctl packages 61000-64999. A relay that chose among all of them
// could open a port another test had been promised was closed.
var harnessPorts = PortSet{{1024, 19999}}

// harnessPortsAnd is harnessPorts with the ports given, which lie above
// them (twoFreePorts's).
func harnessPortsAnd(ports ...uint16) PortSet {
	out := slices.Clone(harnessPorts)
	for _, p := range slices.Sorted(slices.Values(ports)) {
		out = append(out, PortRange{p, p})
	}
	return out
}

// startRelay runs a relay on 127.0.0.1 with one token, testSecret, and lets
// mod adjust the config first.
func startRelay(t testing.TB, mod func(*RelayConfig)) *testRelay {
	t.Helper()
	return startRelayWith(t, mod, nil)
}

// relayCertificate makes a relay key and its certificate for 127.0.0.1.
func relayCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	key, _, err := transport.LoadOrCreateKey(filepath.Join(t.TempDir(), "relay.key"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := transport.SelfSignedCertificate(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// startRelayWith is startRelay with the relay's transport options adjusted
// by optMod too.
func startRelayWith(t testing.TB, mod func(*RelayConfig), optMod func(*transport.Options)) *testRelay {
	t.Helper()
	cert := relayCertificate(t)
	logs := &syncbuf.Buffer{}
	cfg := DefaultRelayConfig()
	cfg.BindHost = "127.0.0.1"
	cfg.Tokens = []Token{{ID: "test", Secret: testSecret}}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Ports = harnessPorts
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions()
	opts.MaxIncomingStreams = MaxAgentStreams
	if optMod != nil {
		optMod(&opts)
	}
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLSConfig(cert, ALPN), opts, r.TransportHandshakeFailed)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tr := &testRelay{
		Relay: r, Addr: ln.Addr().String(), Fingerprint: transport.Fingerprint(cert.Leaf),
		Log: logs, cancel: cancel, done: make(chan struct{}),
	}
	tr.Pin, _ = transport.ParseFingerprint(tr.Fingerprint)
	go func() {
		defer close(tr.done)
		if err := r.Serve(ctx, ln); err != nil {
			t.Errorf("relay Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		tr.Stop()
		if t.Failed() {
			t.Logf("relay log:\n%s", logs)
		}
	})
	return tr
}

// Stop ends the relay and waits for it.
func (r *testRelay) Stop() {
	r.cancel()
	<-r.done
}

type testAgent struct {
	Endpoints []Endpoint
	Log       *syncbuf.Buffer
	Err       chan error
	cancel    context.CancelFunc
	agent     *Agent
}

// agentConfig returns a config for kind that trusts r and exposes locals.
func (r *testRelay) agentConfig(kind string, locals ...string) AgentConfig {
	cfg := DefaultAgentConfig()
	cfg.Relay = r.Addr
	cfg.Token = testSecret
	cfg.Transport = kind
	cfg.Verifier = &transport.Verifier{Pin: r.Pin}
	cfg.TransportOptions = testOptions()
	// Names differ per local server: agents of one token that share a name
	// form a group, which only the group tests want.
	for _, l := range locals {
		_, port, _ := net.SplitHostPort(l)
		cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: "t" + port, Local: l})
	}
	return cfg
}

// runAgent starts an agent and waits until it is live or fails. On failure
// it returns the error and a nil agent.
func runAgent(t testing.TB, cfg AgentConfig) (*testAgent, error) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ready := make(chan []Endpoint, 1)
	cfg.OnReady = func(eps []Endpoint) { ready <- eps }
	a, err := NewAgent(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Log: logs, Err: make(chan error, 1), cancel: cancel, agent: a}
	go func() { ta.Err <- a.Run(ctx) }()
	select {
	case ta.Endpoints = <-ready:
	case err := <-ta.Err:
		cancel()
		return nil, err
	case <-time.After(15 * time.Second):
		cancel()
		t.Fatal("agent did not become ready within 15 s")
	}
	t.Cleanup(func() {
		ta.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	return ta, nil
}

func mustRunAgent(t testing.TB, cfg AgentConfig) *testAgent {
	t.Helper()
	a, err := runAgent(t, cfg)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	return a
}

// Stop ends the agent and waits for Run to return.
func (a *testAgent) Stop() {
	a.cancel()
	select {
	case err := <-a.Err:
		a.Err <- err
	case <-time.After(10 * time.Second):
	}
}

// Public is the "127.0.0.1:port" of the agent's i-th tunnel.
func (a *testAgent) Public(i int) string {
	e := a.Endpoints[i]
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// startServer runs handle for every connection on a fresh loopback port.
func startServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	return proctest.Serve(t, handle)
}

// echo copies everything back and half-closes on EOF, like a careful server.
func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
