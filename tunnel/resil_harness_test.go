package tunnel

// Helpers for the resilience tests: a relay that can be stopped and started
// again at the same address with the same key, an agent whose every OnReady
// is seen, proxies that can silence or cut the path between an agent and the
// relay, or freeze it as a stopped process does, and clients that report
// which group member served them.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/syncbuf"
	"github.com/relaytun/relay/transport"
)

// relayHost runs relays on one fixed loopback address with one key, so a
// relay can stop and a new one take its place where agents look for it.
type relayHost struct {
	t      *testing.T
	addr   string
	cert   tls.Certificate
	pin    []byte
	fp     string
	log    *syncbuf.Buffer
	mod    func(*RelayConfig)
	optMod func(*transport.Options)
}

// newRelayHost picks an address free on UDP and TCP and makes a key; mod
// and optMod adjust every relay started there (nil: as startRelay).
func newRelayHost(t *testing.T, mod func(*RelayConfig), optMod func(*transport.Options)) *relayHost {
	t.Helper()
	cert := relayCertificate(t)
	h := &relayHost{t: t, addr: proctest.ClosedPort(t), cert: cert, log: &syncbuf.Buffer{}, mod: mod, optMod: optMod}
	h.fp = transport.Fingerprint(cert.Leaf)
	h.pin, _ = transport.ParseFingerprint(h.fp)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log (every run on %s):\n%s", h.addr, h.log)
		}
	})
	return h
}

// start runs a relay on the host's address. A relay that just stopped may
// leave the address busy for a moment; start retries for a while.
func (h *relayHost) start() *testRelay {
	t := h.t
	t.Helper()
	cfg := DefaultRelayConfig()
	cfg.BindHost = "127.0.0.1"
	cfg.Tokens = []Token{{ID: "test", Secret: testSecret}}
	cfg.Logger = slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Ports = harnessPorts
	if h.mod != nil {
		h.mod(&cfg)
	}
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions()
	opts.MaxIncomingStreams = MaxAgentStreams
	if h.optMod != nil {
		h.optMod(&opts)
	}
	var ln transport.Listener
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err = transport.Listen(h.addr, transport.ServerTLSConfig(h.cert, ALPN), opts, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listening on %s again: %v", h.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tr := &testRelay{Relay: r, Addr: h.addr, Fingerprint: h.fp, Pin: h.pin, Log: h.log, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		if err := r.Serve(ctx, ln); err != nil {
			t.Errorf("relay Serve: %v", err)
		}
	}()
	t.Cleanup(tr.Stop)
	return tr
}

// agentConfig is testRelay.agentConfig for the host's address, usable
// before any relay runs there.
func (h *relayHost) agentConfig(kind string, locals ...string) AgentConfig {
	return (&testRelay{Addr: h.addr, Pin: h.pin}).agentConfig(kind, locals...)
}

// fastRetry makes an agent retry quickly, and give up on a handshake over
// a dead path after a second.
func fastRetry(cfg *AgentConfig) {
	cfg.RetryBaseDelay = 20 * time.Millisecond
	cfg.RetryMaxDelay = 200 * time.Millisecond
	cfg.TransportOptions.HandshakeTimeout = time.Second
}

// Short liveness settings for tests where a silent path must be noticed.
const (
	testIdle      = 2 * time.Second
	testKeepAlive = 400 * time.Millisecond
)

func fastLivenessRelay(cfg *RelayConfig)    { cfg.Liveness = testIdle }
func fastLivenessOpts(o *transport.Options) { o.IdleTimeout, o.KeepAlive = testIdle, testKeepAlive }
func fastLivenessAgent(cfg *AgentConfig)    { fastLivenessOpts(&cfg.TransportOptions) }

// liveAgent is a running Agent whose every OnReady call is kept.
type liveAgent struct {
	*Agent
	Log     *syncbuf.Buffer
	ready   chan []Endpoint
	readies atomic.Int32
	done    chan struct{}
	err     error // Run's result, once done is closed
	cancel  context.CancelFunc
	eps     []Endpoint
}

// startAgent starts cfg's agent without waiting for it.
func startAgent(t *testing.T, cfg AgentConfig) *liveAgent {
	t.Helper()
	la := &liveAgent{Log: &syncbuf.Buffer{}, ready: make(chan []Endpoint, 64), done: make(chan struct{})}
	cfg.Logger = slog.New(slog.NewTextHandler(la.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.OnReady = func(eps []Endpoint) {
		la.readies.Add(1)
		la.ready <- eps
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatalf("NewAgent: %v", err)
	}
	la.Agent = a
	ctx, cancel := context.WithCancel(context.Background())
	la.cancel = cancel
	go func() {
		defer close(la.done)
		la.err = a.Run(ctx)
	}()
	t.Cleanup(func() {
		la.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", la.Log)
		}
	})
	return la
}

// liveAgentUp starts cfg's agent and waits until its tunnels are live.
func liveAgentUp(t *testing.T, cfg AgentConfig) *liveAgent {
	t.Helper()
	a := startAgent(t, cfg)
	a.eps = a.waitReady(t)
	return a
}

// waitReady waits for the next OnReady.
func (a *liveAgent) waitReady(t *testing.T) []Endpoint {
	t.Helper()
	select {
	case eps := <-a.ready:
		return eps
	case <-a.done:
		t.Fatalf("agent stopped before its tunnels were live: %v", a.err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not live within 20 s")
	}
	return nil
}

// wait waits for Run to return and gives its error.
func (a *liveAgent) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-a.done:
		return a.err
	case <-time.After(d):
		t.Fatalf("agent's Run did not return within %v", d)
	}
	return nil
}

// Stop cancels Run and waits (a while) for it.
func (a *liveAgent) Stop() {
	a.cancel()
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
	}
}

// Public is "host:port" of the i-th tunnel as first granted.
func (a *liveAgent) Public(i int) string {
	e := a.eps[i]
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// connected reports whether the agent has a live session.
func (a *liveAgent) connected() bool { return a.Status().Connected }

// session is the agent's current session, or nil.
func (a *liveAgent) session() transport.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess
}

// agentCount is how many agent sessions the relay holds.
func agentCount(r *Relay) int {
	n := 0
	for _, c := range r.Stats().Agents {
		n += c
	}
	return n
}

// visit connects to a tunnel whose server is proctest.StartEcho with a
// tagLen-byte tag, checks a small payload's echo, and returns the tag:
// which server, behind which member, the client reached.
func visit(addr string, tagLen int) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	payload := make([]byte, 256)
	rand.Read(payload)
	if _, err := c.Write(payload); err != nil {
		return "", fmt.Errorf("writing: %w", err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("reading: %w (got %d bytes)", err, len(got))
	}
	if len(got) != tagLen+len(payload) || string(got[tagLen:]) != string(payload) {
		return "", fmt.Errorf("got %d bytes back, want a %d-byte tag and the %d-byte payload", len(got), tagLen, len(payload))
	}
	return string(got[:tagLen]), nil
}

// heldClient is a client connection left open mid-conversation with an
// echo server, to check later that it was not disturbed.
type heldClient struct {
	c   *net.TCPConn
	tag string
}

// hold connects to a StartEcho tunnel and reads its tag.
func hold(t *testing.T, addr string, tagLen int) *heldClient {
	t.Helper()
	c := dialPublic(t, addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	tag := make([]byte, tagLen)
	if _, err := io.ReadFull(c, tag); err != nil {
		t.Fatalf("held client: reading the tag: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return &heldClient{c: c, tag: string(tag)}
}

// finish sends n random bytes, half-closes, and checks every byte comes
// back (sha256) followed by EOF.
func (h *heldClient) finish(n int) error {
	h.c.SetDeadline(time.Now().Add(30 * time.Second))
	p := make([]byte, n)
	rand.Read(p)
	werr := make(chan error, 1)
	go func() {
		_, err := h.c.Write(p)
		if err == nil {
			err = h.c.CloseWrite()
		}
		werr <- err
	}()
	hash := sha256.New()
	got, err := io.Copy(hash, h.c)
	if err != nil {
		return fmt.Errorf("reading the echo: %w (after %d bytes)", err, got)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if want := sha256.Sum256(p); got != int64(n) || string(hash.Sum(nil)) != string(want[:]) {
		return fmt.Errorf("%d bytes came back for the %d sent, or a different hash", got, n)
	}
	return nil
}

// pathProxy sits between an agent and the relay, to break the path in the
// ways networks do.
type pathProxy interface {
	Addr() string
	// Silence drops everything, on the flows open now and on new ones,
	// without closing anything: a pulled cable, a suspended laptop.
	Silence()
	// SilenceExisting drops everything on the flows open now; new ones
	// pass: the agent's network changed.
	SilenceExisting()
	// Cut closes the flows open now and refuses new ones (TCP). A UDP
	// path cannot be closed from the middle: Cut silences it.
	Cut()
	// Restore passes new flows again.
	Restore()
	// Freeze stops the flows open now as SIGSTOP stops a process: nothing
	// gets through and nothing is closed. TCP holds what it read until
	// Thaw (the senders' buffers fill); UDP drops it (QUIC resends).
	Freeze()
	// Thaw lets frozen flows carry on where they stopped.
	Thaw()
}

// newProxy returns the proxy for kind's path to target.
func newProxy(t *testing.T, kind, target string) pathProxy {
	t.Helper()
	if kind == TransportTCP {
		return newTCPProxy(t, target)
	}
	return newUDPProxy(t, target)
}

type proxyMode int32

const (
	passing proxyMode = iota
	silent
	cut
)

// tcpProxy forwards TCP connections to target.
type tcpProxy struct {
	ln     net.Listener
	target string
	mode   atomic.Int32
	mu     sync.Mutex
	conns  map[*proxyPair]struct{}
	wg     sync.WaitGroup
	// thawed, while frozen, is closed by Thaw; nil when not frozen.
	// Guarded by mu.
	thawed chan struct{}
}

type proxyPair struct {
	down, up net.Conn // up is nil for a connection silenced from the start
	dead     atomic.Bool
}

func (p *proxyPair) close() {
	p.down.Close()
	if p.up != nil {
		p.up.Close()
	}
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[*proxyPair]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		p.Thaw()
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		pair := &proxyPair{down: c}
		switch proxyMode(p.mode.Load()) {
		case cut:
			c.Close()
			continue
		case silent:
			pair.dead.Store(true)
		default:
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			pair.up = up
		}
		p.mu.Lock()
		p.conns[pair] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(pair, pair.down, pair.up)
		go p.pump(pair, pair.up, pair.down)
	}
}

// pump copies from src to dst until either fails, dropping what it reads
// while the pair is dead. The end of a dead pair's src is not passed on
// either: a silent path carries no FIN.
func (p *tcpProxy) pump(pair *proxyPair, src, dst net.Conn) {
	defer p.wg.Done()
	if src == nil {
		return
	}
	defer func() {
		if pair.dead.Load() {
			src.Close()
			return
		}
		pair.close()
		p.mu.Lock()
		delete(p.conns, pair)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		thawed := p.thawed
		p.mu.Unlock()
		if thawed != nil {
			<-thawed
		}
		if n > 0 && !pair.dead.Load() && dst != nil {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *tcpProxy) setExisting(f func(*proxyPair)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		f(c)
	}
}

func (p *tcpProxy) Silence() {
	p.mode.Store(int32(silent))
	p.setExisting(func(c *proxyPair) { c.dead.Store(true) })
}

func (p *tcpProxy) SilenceExisting() {
	p.setExisting(func(c *proxyPair) { c.dead.Store(true) })
}

func (p *tcpProxy) Cut() {
	p.mode.Store(int32(cut))
	p.setExisting(func(c *proxyPair) { c.close() })
}

func (p *tcpProxy) Restore() { p.mode.Store(int32(passing)) }

func (p *tcpProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed == nil {
		p.thawed = make(chan struct{})
	}
}

func (p *tcpProxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed != nil {
		close(p.thawed)
		p.thawed = nil
	}
}

// udpProxy forwards UDP flows (one per client address) to target.
type udpProxy struct {
	pc     net.PacketConn
	target *net.UDPAddr
	mode   atomic.Int32
	frozen atomic.Bool // drop everything, until Thaw
	mu     sync.Mutex
	flows  map[string]*proxyFlow
	wg     sync.WaitGroup
}

type proxyFlow struct {
	up   *net.UDPConn
	dead atomic.Bool
}

func newUDPProxy(t *testing.T, target string) *udpProxy {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	p := &udpProxy{pc: pc, target: ta, flows: map[string]*proxyFlow{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		pc.Close()
		p.mu.Lock()
		for _, f := range p.flows {
			f.up.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *udpProxy) Addr() string { return p.pc.LocalAddr().String() }

func (p *udpProxy) serve() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		f, ok := p.flows[from.String()]
		if !ok {
			up, err := net.DialUDP("udp", nil, p.target)
			if err != nil {
				p.mu.Unlock()
				continue
			}
			f = &proxyFlow{up: up}
			f.dead.Store(proxyMode(p.mode.Load()) != passing)
			p.flows[from.String()] = f
			p.wg.Add(1)
			go p.back(f, from)
		}
		p.mu.Unlock()
		if !f.dead.Load() && !p.frozen.Load() {
			f.up.Write(buf[:n])
		}
	}
}

// back forwards the relay's packets of flow f to the agent at to.
func (p *udpProxy) back(f *proxyFlow, to net.Addr) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error from a relay that is away
		}
		if !f.dead.Load() && !p.frozen.Load() {
			p.pc.WriteTo(buf[:n], to)
		}
	}
}

func (p *udpProxy) setExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.flows {
		f.dead.Store(true)
	}
}

func (p *udpProxy) Silence() {
	p.mode.Store(int32(silent))
	p.setExisting()
}

func (p *udpProxy) SilenceExisting() { p.setExisting() }
func (p *udpProxy) Cut()             { p.Silence() }
func (p *udpProxy) Restore()         { p.mode.Store(int32(passing)) }
func (p *udpProxy) Freeze()          { p.frozen.Store(true) }
func (p *udpProxy) Thaw()            { p.frozen.Store(false) }
