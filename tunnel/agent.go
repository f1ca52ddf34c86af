package tunnel

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/relaytun/relay/internal/bitrate"
	"github.com/relaytun/relay/transport"
)

// Transport choices for AgentConfig.Transport.
const (
	TransportAuto = "auto"
	TransportQUIC = transport.KindQUIC
	TransportTCP  = transport.KindTCP
)

// TunnelSpec is one local server to expose.
type TunnelSpec struct {
	// Name identifies the tunnel on the relay (see ValidName).
	Name string
	// Local is the server's "host:port".
	Local string
	// Ports asks for a public port or range; zero lets the relay choose.
	Ports PortRange
	// Allow, when not empty, admits only public clients in these
	// prefixes; Deny turns away clients in these. The relay's own limits
	// apply as well.
	Allow []netip.Prefix
	Deny  []netip.Prefix
	// Protos are ProtoTCP, ProtoUDP or both (on one port number); zero
	// means TCP.
	Protos uint8
	// ProxyProtocol, 1 or 2, sends the local server a PROXY protocol
	// header with the client's address: before a TCP connection's first
	// byte, and (v2 only) in front of a UDP flow's first datagram. 0: none.
	ProxyProtocol int
	// Transparent connects to the local server from each client's own
	// address (Linux's IP_TRANSPARENT), for servers that read no PROXY
	// header: the server must be on this machine's loopback, and the
	// machine needs CAP_NET_ADMIN and the routes of package transparent;
	// Run checks both before it dials the relay. Clients of the other
	// address family than the server's (IPv4 first, for a name) are
	// connected from the agent's own address, with a warning.
	Transparent bool
	// NoLease asks for a tunnel that leaves no port reserved on the relay
	// once it closes, and shares its port with no other agent: for a test
	// such as relayctl bench. A relay older than that gives it a lease
	// as usual (and the agent logs so).
	NoLease bool
}

func (t TunnelSpec) protos() uint8 {
	if t.Protos == 0 {
		return ProtoTCP
	}
	return t.Protos
}

// Endpoint is one public listener the relay granted: a tunnel for TCP and
// UDP has two.
type Endpoint struct {
	Name  string
	Local string
	Proto string // "tcp" or "udp"
	Host  string
	Port  uint16
}

// URL is the address clients use: "tcp://host:port" or "udp://host:port".
func (e Endpoint) URL() string {
	proto := e.Proto
	if proto == "" {
		proto = "tcp"
	}
	return proto + "://" + net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// AgentConfig configures an Agent. Start from DefaultAgentConfig.
type AgentConfig struct {
	// Relay is the relay's "host:port".
	Relay string
	// Token is the secret the relay knows this agent by.
	Token string
	// Transport is TransportAuto, TransportQUIC or TransportTCP. Auto tries
	// QUIC first and TCP after FallbackDelay, or at once if QUIC fails.
	Transport     string
	FallbackDelay time.Duration
	// Proxy, when set, is an HTTP, HTTPS or SOCKS5 proxy (transport.ParseProxy)
	// to reach the relay through. A proxy carries TCP only, so auto then
	// means TCP.
	Proxy *url.URL
	// Verifier decides whether to trust the relay's certificate.
	Verifier *transport.Verifier
	// TransportOptions tunes the session.
	TransportOptions transport.Options
	Tunnels          []TunnelSpec
	// HandshakeTimeout bounds the control handshake and registration.
	HandshakeTimeout time.Duration
	// DialLocalTimeout bounds connecting to a local server.
	DialLocalTimeout time.Duration
	// Software names this build in the handshake ("relayctl 1.2.3").
	Software string
	Logger   *slog.Logger
	// OnReady, if set, is called with every tunnel when all are first
	// live, and again whenever a reconnect changes their public addresses.
	OnReady func([]Endpoint)

	// MaxRetries is how many reconnect attempts in a row may fail before
	// Run gives up (ErrGaveUp); 0 retries for ever.
	MaxRetries int
	// RetryBaseDelay is the wait before the second attempt (the first is
	// at once); each later one doubles it, up to RetryMaxDelay, with
	// jitter so a relay's agents do not all return in the same instant.
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	// WaitForRelay retries the first connection too. Without it, Run
	// returns the first connection's failure, so a mistake shows at once.
	WaitForRelay bool

	// FlowIdleTimeout ends a UDP flow quiet both ways for this long, and
	// MaxFlows caps a UDP tunnel's flows (local sockets; DefaultMaxFlows).
	FlowIdleTimeout time.Duration
	MaxFlows        int
}

// DefaultAgentConfig returns defaults for everything but the relay, token,
// verifier and tunnels.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		Transport:        TransportAuto,
		FallbackDelay:    2 * time.Second,
		TransportOptions: transport.DefaultOptions(),
		HandshakeTimeout: 10 * time.Second,
		DialLocalTimeout: 5 * time.Second,
		Software:         "relayctl",
		RetryBaseDelay:   500 * time.Millisecond,
		RetryMaxDelay:    30 * time.Second,
		FlowIdleTimeout:  120 * time.Second,
		MaxFlows:         DefaultMaxFlows,
	}
}

// Validate reports the first invalid setting.
func (c *AgentConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.Relay); err != nil {
		return fmt.Errorf("relay address %q is not host:port", c.Relay)
	}
	if c.Token == "" {
		return errors.New("no token given")
	}
	switch c.Transport {
	case TransportAuto, TransportQUIC, TransportTCP:
	default:
		return fmt.Errorf("transport %q is not one of auto, quic, tcp", c.Transport)
	}
	if c.Proxy != nil && c.Transport == TransportQUIC {
		return errors.New("a proxy carries TCP only: transport quic cannot go through it; use tcp or auto")
	}
	if c.Verifier == nil {
		return errors.New("no relay verifier configured")
	}
	if len(c.Tunnels) == 0 {
		return errors.New("no tunnel to expose")
	}
	names := map[string]bool{}
	for _, t := range c.Tunnels {
		if !ValidName(t.Name) {
			return fmt.Errorf("tunnel name %q is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", t.Name)
		}
		if names[t.Name] {
			return fmt.Errorf("tunnel name %q is used twice", t.Name)
		}
		names[t.Name] = true
		if _, _, err := net.SplitHostPort(t.Local); err != nil {
			return fmt.Errorf("local address %q is not host:port", t.Local)
		}
		if len(t.Allow) > MaxPrefixes || len(t.Deny) > MaxPrefixes {
			return fmt.Errorf("tunnel %s: at most %d allow and %d deny prefixes", t.Name, MaxPrefixes, MaxPrefixes)
		}
		if t.Protos&^(ProtoTCP|ProtoUDP) != 0 {
			return fmt.Errorf("tunnel %s: protocol set %#x is not tcp, udp or both", t.Name, t.Protos)
		}
		switch t.ProxyProtocol {
		case 0, 2:
		case 1:
			if t.protos()&ProtoUDP != 0 {
				return fmt.Errorf("tunnel %s: PROXY protocol v1 has no form for UDP; use v2", t.Name)
			}
		default:
			return fmt.Errorf("tunnel %s: PROXY protocol version %d is not 1 or 2", t.Name, t.ProxyProtocol)
		}
		if t.Transparent {
			if err := checkTransparentSpec(t); err != nil {
				return fmt.Errorf("tunnel %s: %w", t.Name, err)
			}
		}
	}
	if c.FallbackDelay <= 0 || c.HandshakeTimeout <= 0 || c.DialLocalTimeout <= 0 {
		return errors.New("agent timeouts must be positive")
	}
	if c.MaxRetries < 0 {
		return errors.New("max retries must not be negative (0 retries for ever)")
	}
	if c.FlowIdleTimeout <= 0 || c.MaxFlows <= 0 {
		return errors.New("the UDP flow timeout and flow cap must be positive")
	}
	if c.RetryBaseDelay <= 0 || c.RetryMaxDelay < c.RetryBaseDelay {
		return errors.New("retry delays must be positive, the maximum no less than the base")
	}
	return c.TransportOptions.Validate()
}

// Agent keeps a session with a relay, reconnecting when it is lost, and
// carries its tunnels' clients to local servers.
type Agent struct {
	cfg      AgentConfig
	log      *slog.Logger
	instance [instanceLen]byte
	tunnels  []*agentTunnel // as in cfg.Tunnels
	// fellBack: an auto dial in this outage already said it tried the
	// second transport, so later attempts say it at debug level only.
	// Run's goroutine alone uses it.
	fellBack bool

	wmu       sync.Mutex // serialises control frames
	mu        sync.Mutex
	ctl       transport.Stream // the current session's, or nil
	sess      transport.Session
	connected bool
	since     time.Time
	rtt       time.Duration
	sessions  int
	limit     uint64 // the session's LIMIT, bytes a second (0: none)
	endpoints []Endpoint
	draining  bool
	stopRun   context.CancelFunc

	// lastPong is when the relay last answered (a PONG, or the session
	// going live; unix nanoseconds), and heardAtLoss what it was when the
	// last live session was lost.
	lastPong, heardAtLoss atomic.Int64
	// relayStopping: the relay said it is shutting down (DRAIN), so the
	// end of this session is expected, not a loss to warn of.
	relayStopping atomic.Bool
	pong          chan struct{} // a PONG arrived (room for one: never blocks)
	fastest       fastestRTT    // the current session's

	clients sync.WaitGroup // client streams in flight, over every session
	flows   sync.WaitGroup // UDP flows' goroutines
	active  atomic.Int64
	link    atomic.Pointer[dgramLink] // the current session's datagram path
	// received counts the bytes the relay's streams brought to local
	// servers (the stall guard's sign of a session that moves).
	received atomic.Int64
	// pace is the current session's share of its token's max_bandwidth
	// (LIMIT), which what it reads from local servers keeps to.
	pace *pace
}

// agentTunnel is one TunnelSpec and what it carried, across sessions.
type agentTunnel struct {
	spec   TunnelSpec
	public string
	port   uint16 // guarded by Agent.mu
	// closed is the relay's reason when it closed the tunnel for good
	// (CLOSED): it is not registered again. Guarded by Agent.mu.
	closed *RefusedError
	id     atomic.Uint32 // the tunnel id in the current session
	udp    *agentUDP     // nil for a TCP-only tunnel
	// wrongFamily is set once the agent has warned that a client's
	// address family has no transparent path to the server: [0] IPv4,
	// [1] IPv6.
	wrongFamily [2]atomic.Bool
	// wildcardUDP is set once the agent has warned that t's transparent
	// UDP server listens on all addresses; wildcardChecked is when it
	// last looked (unix nanoseconds).
	wildcardUDP     atomic.Bool
	wildcardChecked atomic.Int64
	traffic
}

// NewAgent validates cfg.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: log, since: time.Now(), pong: make(chan struct{}, 1), pace: newPace()}
	rand.Read(a.instance[:])
	for _, t := range cfg.Tunnels {
		at := &agentTunnel{spec: t}
		if t.protos()&ProtoUDP != 0 {
			at.udp = &agentUDP{flows: make(map[netip.AddrPort]*agentFlow)}
		}
		a.tunnels = append(a.tunnels, at)
	}
	return a, nil
}

// ErrGaveUp is wrapped by Run's error when MaxRetries attempts in a row
// failed.
var ErrGaveUp = errors.New("gave up reconnecting to the relay")

// Run connects, registers every tunnel, and carries clients, reconnecting
// whenever the session is lost, until ctx ends or Drain finishes (both
// return nil). It returns a *RefusedError for a refusal that retrying cannot
// heal, a *transport.IdentityError for a relay that fails verification, an
// error wrapping ErrGaveUp once MaxRetries attempts failed, and the first
// connection's failure unless WaitForRelay.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	a.stopRun = cancel
	stopped := a.draining
	a.mu.Unlock()
	if stopped {
		return nil
	}
	if err := CheckTransparent(ctx, a.cfg.Tunnels); err != nil {
		if ctx.Err() != nil {
			// Stopped (a signal, or Drain) while the check waited:
			// nothing failed.
			return nil
		}
		return err
	}
	for _, t := range a.cfg.Tunnels {
		if t.Transparent {
			a.log.Info("transparent: the local server sees each client's own address", "tunnel", t.Name, "local", t.Local)
		}
	}
	// Streams in flight end with their session; wait for their goroutines.
	defer a.clients.Wait()
	defer a.flows.Wait()
	defer a.closeFlows()
	var (
		everLive bool
		failures int // since the last live session; its loss counts as one
		attempts int // sessions that did not go live, since the last live one
		down     time.Time
	)
	for {
		live, err := a.session(ctx, everLive, failures, down)
		if ctx.Err() != nil {
			return nil
		}
		if live {
			everLive, failures, attempts, down = true, 0, 0, time.Now()
			a.fellBack = false
			// The relay's last answer on the lost session: a relay that
			// vanished is noticed only at the next keepalive or later.
			a.heardAtLoss.Store(a.lastPong.Load())
		} else {
			attempts++
		}
		if !retryable(err, everLive) || (!everLive && !a.cfg.WaitForRelay) || a.allClosed() {
			// With every tunnel closed for good there is nothing to
			// register again, even when the reason (no port free) would
			// be worth a retry for a tunnel still asked for.
			return err
		}
		if stopping := a.relayStopping.Swap(false) || isRefused(err, CodeShutdown) || closedBy(err, CodeShutdown); live && stopping {
			// Said at DRAIN already; the session's end is no loss.
			a.log.Info("the relay is shutting down: it closed the session; reconnecting", "relay", a.cfg.Relay)
		} else if live {
			a.log.Warn("connection to the relay lost; reconnecting", "relay", a.cfg.Relay, "err", err)
		}
		failures++
		// Retries are the attempts after a loss, or after the first.
		retries := attempts
		if !everLive {
			retries--
		}
		if a.cfg.MaxRetries > 0 && retries >= a.cfg.MaxRetries {
			return fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempts, err)
		}
		if failures == 2 {
			// Said once per outage, not once per attempt.
			msg := "the relay is not answering; retrying with backoff"
			if errors.As(err, new(*RefusedError)) {
				// It answers, with a refusal that may pass (no port free).
				msg = "the relay refused for now; retrying with backoff"
			}
			a.log.Warn(msg, "relay", a.cfg.Relay, "err", err, "max_delay", a.cfg.RetryMaxDelay)
		}
		delay := a.backoff(failures)
		if !live {
			a.log.Debug("reconnect attempt failed", "attempt", failures, "err", err, "next_in", delay.Round(time.Millisecond))
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// backoff is the wait before attempt n+1 after n failures: none after the
// first, then base, 2×base, … up to the maximum, each drawn from its upper
// half so agents that lost the same relay spread out.
func (a *Agent) backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := a.cfg.RetryBaseDelay << min(n-2, 30)
	if d <= 0 || d > a.cfg.RetryMaxDelay {
		d = a.cfg.RetryMaxDelay
	}
	half := int64(d / 2)
	j, _ := rand.Int(rand.Reader, big.NewInt(half+1))
	return time.Duration(half + j.Int64())
}

// retryable reports whether another attempt may succeed after err.
func retryable(err error, everLive bool) bool {
	var idErr *transport.IdentityError
	if errors.As(err, &idErr) {
		return false
	}
	var ref *RefusedError
	if errors.As(err, &ref) {
		switch {
		case ref.Temporary():
			return true
		case ref.Code == CodeLimit || ref.Code == CodePortTaken || ref.Code == CodeNoPortFree:
			// After a reconnect these are often our own old session, not
			// yet timed out on the relay; at the start they are the user's
			// to fix.
			return everLive
		}
		return false
	}
	return true
}

// session runs one session: dial, handshake, register, carry clients until
// it ends. live reports whether the tunnels went live.
func (a *Agent) session(ctx context.Context, reconnect bool, failures int, down time.Time) (live bool, err error) {
	sess, err := a.dial(ctx)
	if err != nil {
		return false, err
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	log := a.log.With("relay", a.cfg.Relay, "transport", sess.Kind())
	if a.cfg.Proxy != nil {
		log = log.With("proxy", a.cfg.Proxy.Redacted())
	}

	ctl, welcome, err := a.handshake(ctx, sess)
	if err != nil {
		return false, err
	}
	stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.pace.set(0) // until this session's LIMIT, if one comes
	eps, byID, err := a.register(ctl, welcome)
	if err != nil {
		var ref *RefusedError
		if errors.As(err, &ref) && (!retryable(err, reconnect) || (!reconnect && !a.cfg.WaitForRelay)) {
			// Run gives up on this refusal: the tunnels registered before
			// it must not keep their ports for an agent that is not
			// coming back. (After a failure of the session itself the
			// relay may not hear a goodbye, and waiting for it would
			// only hold the exit up.)
			a.goodbye(ctl, sess)
		}
		return false, err
	}
	a.mu.Lock()
	was := a.endpoints
	changed := !slices.Equal(eps, was)
	a.endpoints = eps
	a.ctl, a.sess = ctl, sess
	a.connected, a.since = true, time.Now()
	// As good as a PONG for since_heard; a probe, sent later, still
	// waits for its own.
	a.lastPong.Store(a.since.UnixNano())
	a.sessions++
	a.fastest.reset()
	draining := a.draining
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.connected, a.ctl, a.sess, a.since = false, nil, nil, time.Now()
		// The round trip was this session's: kept, it would pass for the
		// path's while the agent has none, and for the next session's
		// until its first PONG.
		a.rtt = 0
		a.limit = 0
		a.mu.Unlock()
	}()
	if draining {
		// Drain came while connecting: take no clients on this session.
		a.sendDrain(ctl)
	}
	if reconnect {
		args := []any{"after", time.Since(down).Round(time.Millisecond), "attempts", failures}
		if h := a.heardAtLoss.Load(); h > 0 && h < down.UnixNano() {
			// The outage as clients may have seen it: from the relay's
			// last answer, so at most a keepalive before it began.
			args = append(args, "since_heard", time.Since(time.Unix(0, h)).Round(time.Millisecond))
		}
		log.Info("reconnected", args...)
	}
	for _, e := range eps {
		if !reconnect || changed {
			log.Info("tunnel live", "name", e.Name, "local", e.Local, "public", e.URL())
		}
	}
	if changed {
		for _, e := range eps {
			// By name and protocol: a tunnel the relay closed since leaves
			// the others at other places in the list.
			i := slices.IndexFunc(was, func(w Endpoint) bool { return w.Name == e.Name && w.Proto == e.Proto })
			if reconnect && (i < 0 || was[i] != e) {
				var before string
				if i >= 0 {
					before = was[i].URL()
				}
				log.Warn("the relay gave a tunnel a different public address than before", "name", e.Name, "was", before, "now", e.URL())
			}
		}
		if a.cfg.OnReady != nil {
			a.cfg.OnReady(eps)
		}
	}

	link := newDgramLink(sess)
	a.link.Store(link)
	defer func() {
		a.link.CompareAndSwap(link, nil)
		link.close()
	}()
	var wg sync.WaitGroup
	defer func() {
		// Stop the keepalive now: left to its next tick, it would hold
		// back the reconnect by up to a keepalive interval.
		cancel()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.receiveDatagrams(ctx, sess, byID)
	}()
	ctlErr := make(chan error, 1)
	wg.Add(2)
	go func() {
		defer wg.Done()
		ctlErr <- a.controlLoop(ctl, log)
		sess.Close()
	}()
	go func() {
		defer wg.Done()
		a.keepAlive(ctx, ctl)
	}()
	guard := newStallGuard(func() bool { return a.answers(ctl, sess.Done()) }, windowFills(sess), func() *slog.Logger { return log })
	wg.Add(1)
	go func() {
		defer wg.Done()
		guard.watch(ctx.Done())
	}()
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				a.goodbye(ctl, sess)
				return true, ctx.Err()
			}
			sess.Close()
			if cerr := <-ctlErr; cerr != nil && !transport.IsClosed(cerr) {
				var ref *RefusedError
				if errors.As(cerr, &ref) {
					return true, cerr
				}
				return true, fmt.Errorf("%w: %w", ErrSessionClosed, cerr)
			}
			return true, fmt.Errorf("%w: %w", ErrSessionClosed, err)
		}
		a.clients.Add(1)
		a.active.Add(1)
		go a.carry(ctx, st, byID, guard, func() {
			a.active.Add(-1)
			a.clients.Done()
		})
	}
}

// keepAlive pings the relay every keepalive interval; the answers prove the
// path alive to both sides and measure its round trip.
//
// Each keepalive is two PINGs in one write. A QUIC packet carrying one is
// about 40 bytes, and quic-go sends no stateless reset in answer to a
// packet of 42 bytes or less (it could be a reset itself): an idle agent
// whose relay restarted would then learn of it only at the liveness
// timeout. With two, the restarted relay resets the old session at the next
// keepalive and the agent reconnects at once.
func (a *Agent) keepAlive(ctx context.Context, ctl transport.Stream) {
	t := time.NewTicker(a.cfg.TransportOptions.KeepAlive)
	defer t.Stop()
	for {
		ping, err := AppendMessage(nil, &Ping{Data: uint64(time.Now().UnixNano())})
		if err != nil {
			return
		}
		a.wmu.Lock()
		_, err = ctl.Write(append(ping, ping...))
		a.wmu.Unlock()
		if err != nil {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// answers pings the relay and reports whether its PONG came back within
// answerWait: whether the relay's data still reaches the agent. It reports
// true when it cannot tell (a control write in progress, or its own PING
// stuck: then the blocked direction is the other one).
func (a *Agent) answers(ctl transport.Stream, done <-chan struct{}) bool {
	if !a.wmu.TryLock() {
		return true
	}
	sent := time.Now().UnixNano()
	ctl.SetWriteDeadline(time.Now().Add(time.Second))
	err := WriteMessage(ctl, &Ping{Data: uint64(sent)})
	ctl.SetWriteDeadline(time.Time{})
	a.wmu.Unlock()
	if err != nil {
		return true
	}
	idle := a.cfg.TransportOptions.IdleTimeout
	wait := pongWait(answerWait, a.fastest.get(), idle)
	return pongSince(&a.lastPong, a.pong, sent, wait, max(wait, idle/3), a.received.Load, done)
}

// answerWait is the least the agent's stall guard waits for a PONG: the
// relay's default answer timeout.
const answerWait = 2 * time.Second

func (a *Agent) writeControl(ctl transport.Stream, m Message) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return WriteMessage(ctl, m)
}

// Drain stops taking new clients (the relay is told, and sends them to
// other members of the tunnel's group, or closes its port), waits until
// the clients in flight finish or ctx ends, then makes Run return nil.
func (a *Agent) Drain(ctx context.Context) {
	a.mu.Lock()
	a.draining = true
	ctl, stop := a.ctl, a.stopRun
	a.mu.Unlock()
	if ctl != nil {
		a.sendDrain(ctl)
	}
	a.log.Info("draining: no new clients; waiting for those connected", "clients", a.active.Load())
	done := make(chan struct{})
	go func() {
		a.clients.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		a.log.Warn("drain cut short", "clients_cut", a.active.Load(), "err", ctx.Err())
	}
	if stop != nil {
		stop()
	}
}

// goodbye ends a session on purpose: it says so first, so the relay closes
// the tunnel's port at once instead of holding it for this agent to return.
func (a *Agent) goodbye(ctl transport.Stream, sess transport.Session) {
	a.sendDrain(ctl)
	ctl.CloseWrite()
	// The relay closes the session on reading the end of the control
	// stream, once its side of our clients has finished; closing first
	// could lose the bytes still in flight.
	t := time.NewTimer(goodbyeWait)
	select {
	case <-sess.Done():
	case <-t.C:
	}
	t.Stop()
	sess.Close()
}

// goodbyeWait bounds how long a goodbye waits for the relay to close.
const goodbyeWait = 5 * time.Second

func (a *Agent) sendDrain(ctl transport.Stream) {
	// The first deadline wakes a writer stuck holding wmu (the keepalive's
	// PING); the ones under wmu are this write's alone.
	ctl.SetWriteDeadline(time.Now().Add(time.Second))
	a.wmu.Lock()
	defer a.wmu.Unlock()
	ctl.SetWriteDeadline(time.Now().Add(time.Second))
	WriteMessage(ctl, &Drain{})
	ctl.SetWriteDeadline(time.Time{})
}

// Status reports the agent's session and tunnels.
func (a *Agent) Status() AgentStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := AgentStatus{Relay: a.cfg.Relay, Connected: a.connected, Since: a.since, RTT: a.rtt, Reconnects: max(a.sessions-1, 0), Draining: a.draining, Limit: a.limit}
	if a.sess != nil {
		st.Transport = a.sess.Kind()
	}
	if a.cfg.Proxy != nil {
		st.Proxy = a.cfg.Proxy.Redacted()
	}
	for _, t := range a.tunnels {
		ts := AgentTunnelStatus{
			Name: t.spec.Name, Local: t.spec.Local, Public: t.public,
			Active: t.active.Load(), Total: t.total.Load(), BytesIn: t.bytesIn.Load(), BytesOut: t.bytesOut.Load(),
		}
		if t.closed != nil {
			ts.Closed = t.closed.Text
		}
		if t.udp != nil {
			ts.UDPDrops = t.udp.drops.Load()
		}
		st.Tunnels = append(st.Tunnels, ts)
	}
	return st
}

// dial opens a session with the configured transport.
func (a *Agent) dial(ctx context.Context) (transport.Session, error) {
	tlsConf, err := a.cfg.Verifier.ClientTLSConfig(a.cfg.Relay, ALPN)
	if err != nil {
		return nil, err
	}
	q := &transport.QUICDialer{TLS: tlsConf, Options: a.cfg.TransportOptions}
	t := &transport.TCPDialer{TLS: tlsConf, Options: a.cfg.TransportOptions, Proxy: a.cfg.Proxy}
	switch {
	case a.cfg.Transport == TransportQUIC:
		return dialOne(ctx, q, a.cfg.Relay)
	case a.cfg.Transport == TransportTCP, a.cfg.Proxy != nil:
		return dialOne(ctx, t, a.cfg.Relay)
	}
	level := slog.LevelInfo
	if a.fellBack {
		level = slog.LevelDebug
	}
	s, fellBack, err := dialAuto(ctx, a.cfg.Relay, a.cfg.FallbackDelay, a.log, level, q, t, fallbackGrace)
	a.fellBack = a.fellBack || fellBack
	return s, err
}

func dialOne(ctx context.Context, d transport.Dialer, addr string) (transport.Session, error) {
	s, err := d.Dial(ctx, addr)
	if err != nil {
		return nil, &DialError{Addr: addr, Kind: d.Kind(), Err: err}
	}
	return s, nil
}

// DialError is a relay that could not be reached over one transport.
type DialError struct {
	Addr, Kind string
	Err        error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("could not reach the relay at %s over %s: %v", e.Addr, e.Kind, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// DialAuto dials with first, and also with second once delay passes or
// first fails, returning whichever session comes up first, but first's
// when it follows second's closely (see dialAuto). A relay that fails
// verification ends the attempt: another transport would not help.
func DialAuto(ctx context.Context, addr string, delay time.Duration, log *slog.Logger, first, second transport.Dialer) (transport.Session, error) {
	s, _, err := dialAuto(ctx, addr, delay, log, slog.LevelInfo, first, second, fallbackGrace)
	return s, err
}

// fallbackGrace is how long dialAuto holds a session of its second
// dialer that took took, for a fresh attempt of the first, started at the
// same moment, to come up: QUIC's handshake takes one round trip, TCP
// and TLS's two, so where UDP gets through QUIC is seldom much later.
func fallbackGrace(took time.Duration) time.Duration {
	return min(max(took, 100*time.Millisecond), time.Second)
}

// attemptsError is the failures of dialAuto's attempts. Its message is one
// line: it ends up in one log line or one exit message. A transport tried
// twice (first again beside second) failing the same way is said once.
type attemptsError []error

func joinAttempts(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return attemptsError(errs)
}

func (e attemptsError) Error() string {
	var msgs []string
	for _, err := range e {
		if m := err.Error(); !slices.Contains(msgs, m) {
			msgs = append(msgs, m)
		}
	}
	return strings.Join(msgs, "; ")
}

func (e attemptsError) Unwrap() []error { return e }

// dialAuto is DialAuto logging the turn to second at level, and reporting
// whether it took that turn.
//
// When delay passes without an answer, first is tried afresh beside
// second: an attempt that went out while the relay was down (a restart)
// is waiting out its retransmission backoff (quic-go doubles it from
// 200 ms), and would leave the session on second for as long as it
// lasts, though the relay now answers first as well. A session of second
// that comes up while a first attempt is pending is held for
// grace(how long it took) to let that one come up instead.
func dialAuto(ctx context.Context, addr string, delay time.Duration, log *slog.Logger, level slog.Level,
	first, second transport.Dialer, grace func(took time.Duration) time.Duration) (transport.Session, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s     transport.Session
		err   error
		first bool
	}
	results := make(chan result, 3)
	start := func(d transport.Dialer, isFirst bool) {
		go func() {
			s, err := dialOne(ctx, d, addr)
			results <- result{s, err, isFirst}
		}()
	}
	started, done, firstPending := 0, 0, 0
	startFirst := func() { start(first, true); started++; firstPending++ }
	var tookSecond bool
	var secondStart time.Time
	startSecond := func() { start(second, false); started++; tookSecond, secondStart = true, time.Now() }
	// closeLate closes whatever the attempts still pending bring.
	closeLate := func() {
		go func(pending int) {
			for range pending {
				if r := <-results; r.s != nil {
					r.s.Close()
				}
			}
		}(started - done)
	}
	startFirst()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	var held transport.Session // second's, while a first attempt may still win
	var graceOver <-chan time.Time
	var errs []error
	for {
		select {
		case <-timer.C:
			if !tookSecond {
				log.Log(ctx, level, "no answer over "+first.Kind()+" yet; trying "+second.Kind(), "relay", addr)
				startSecond()
				startFirst()
			}
		case r := <-results:
			done++
			if r.first {
				firstPending--
			}
			if r.err == nil {
				if !r.first && firstPending > 0 {
					held = r.s
					graceOver = time.After(grace(time.Since(secondStart)))
					continue
				}
				if held != nil {
					log.Debug(first.Kind()+" answered soon after "+second.Kind()+"; using "+first.Kind(), "relay", addr)
					held.Close()
				}
				closeLate()
				return r.s, tookSecond, nil
			}
			var idErr *transport.IdentityError
			if errors.As(r.err, &idErr) {
				if held != nil {
					held.Close()
				}
				closeLate()
				return nil, tookSecond, idErr
			}
			errs = append(errs, r.err)
			if held != nil {
				if firstPending == 0 {
					closeLate()
					return held, true, nil
				}
				continue
			}
			// Refused over TCP means the host answered with nothing on the
			// port: QUIC, on the same port number, will not do better.
			if !r.first && errors.Is(r.err, syscall.ECONNREFUSED) {
				closeLate()
				return nil, true, joinAttempts(errs)
			}
			if !tookSecond {
				log.Log(ctx, level, first.Kind()+" failed; trying "+second.Kind(), "relay", addr, "err", r.err)
				startSecond()
				continue
			}
			if done == started {
				return nil, true, joinAttempts(errs)
			}
		case <-graceOver:
			closeLate()
			return held, true, nil
		case <-ctx.Done():
			if held != nil {
				held.Close()
			}
			closeLate()
			return nil, tookSecond, ctx.Err()
		}
	}
}

func (a *Agent) handshake(ctx context.Context, sess transport.Session) (transport.Stream, *Welcome, error) {
	deadline := time.Now().Add(a.cfg.HandshakeTimeout)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ctl, err := sess.OpenStream(hctx)
	if err != nil {
		return nil, nil, fmt.Errorf("opening control stream: %w", err)
	}
	ctl.SetDeadline(deadline)
	if err := WriteMessage(ctl, &Hello{Version: ProtocolVersion, Software: a.cfg.Software, KeyID: KeyID(a.cfg.Token), Instance: a.instance}); err != nil {
		return nil, nil, fmt.Errorf("sending hello: %w", err)
	}
	m, err := a.expect(ctl, "CHALLENGE")
	if err != nil {
		return nil, nil, err
	}
	ch, ok := m.(*Challenge)
	if !ok {
		return nil, nil, fmt.Errorf("%w: expected CHALLENGE, got message type %#x", ErrFrame, m.msgType())
	}
	if ch.Version != ProtocolVersion {
		return nil, nil, &RefusedError{Code: CodeBadVersion, Text: fmt.Sprintf(
			"protocol version mismatch: the relay (%s) speaks version %d, the agent (%s) speaks version %d; upgrade the older of the two",
			ch.Software, ch.Version, a.cfg.Software, ProtocolVersion)}
	}
	ekm, err := sessionBinding(sess)
	if err != nil {
		return nil, nil, err
	}
	if err := WriteMessage(ctl, &Auth{Proof: Proof(a.cfg.Token, ch.Nonce, ekm)}); err != nil {
		return nil, nil, fmt.Errorf("sending auth: %w", err)
	}
	if m, err = a.expect(ctl, "WELCOME"); err != nil {
		return nil, nil, err
	}
	w, ok := m.(*Welcome)
	if !ok {
		return nil, nil, fmt.Errorf("%w: expected WELCOME, got message type %#x", ErrFrame, m.msgType())
	}
	return ctl, w, nil
}

// expect reads the next message, turning an ERROR into a *RefusedError.
// PING, PONG and DRAIN may come at any time (protocol.go), a relay's PING
// even between REGISTER and REGISTERED: a PING is answered, and they are
// read past.
func (a *Agent) expect(ctl transport.Stream, what string) (Message, error) {
	for {
		m, err := ReadMessage(ctl)
		if err != nil {
			return nil, fmt.Errorf("waiting for %s from the relay: %w", what, err)
		}
		switch m := m.(type) {
		case *Error:
			return nil, &RefusedError{Code: m.Code, Text: m.Text}
		case *Ping:
			if err := a.writeControl(ctl, &Pong{Data: m.Data}); err != nil {
				return nil, fmt.Errorf("waiting for %s from the relay: %w", what, err)
			}
		case *Pong:
		case *Drain:
			a.relayStopping.Store(true)
			a.log.Info("the relay is shutting down: reconnecting once it closes the session", "relay", a.cfg.Relay)
		default:
			return m, nil
		}
	}
}

func (a *Agent) register(ctl transport.Stream, w *Welcome) ([]Endpoint, map[uint32]*agentTunnel, error) {
	host := w.PublicHost
	if host == "" {
		host, _, _ = net.SplitHostPort(a.cfg.Relay)
	}
	byID := make(map[uint32]*agentTunnel, len(a.tunnels))
	eps := make([]Endpoint, 0, len(a.tunnels))
	// MOVEDs and CLOSEDs that came while registering: a reload moved or
	// closed a tunnel registered earlier in this session, or this one (its
	// notice can overtake the REGISTERED). Applied, in order, once all are.
	var early []Message
	paces := true
	for i, at := range a.tunnels {
		a.mu.Lock()
		closed := at.closed != nil
		a.mu.Unlock()
		if closed {
			continue // the relay closed it for good in an earlier session
		}
		t := at.spec
		req := uint32(i + 1)
		reg := &Register{Request: req, Name: t.Name, Protos: t.protos(), PortLow: t.Ports.Low, PortHigh: t.Ports.High,
			Allow: prefixStrings(t.Allow), Deny: prefixStrings(t.Deny), NoLease: t.NoLease, Paces: paces}
		m, err := a.registerOne(ctl, reg, &early)
		if err != nil && reg.Paces && isRefused(err, CodeUnsupported) {
			// A relay older than LIMIT refuses its bit the same way
			// (protocol.go): it has no bandwidth limits to keep to.
			paces, reg.Paces = false, false
			m, err = a.registerOne(ctl, reg, &early)
		}
		if err != nil && reg.NoLease && isRefused(err, CodeUnsupported) {
			// A relay older than the no-lease bit takes it for a protocol
			// it does not carry (protocol.go): ask again without it.
			a.log.Warn("the relay is older than this agent and keeps a lease for every tunnel: this one will hold its port after it closes",
				"relay", a.cfg.Relay, "name", t.Name, "err", err)
			reg.NoLease = false
			m, err = a.registerOne(ctl, reg, &early)
		}
		if err != nil {
			var ref *RefusedError
			if errors.As(err, &ref) {
				ref.Text = fmt.Sprintf("tunnel %s (%s): %s", t.Name, t.Local, ref.Text)
			}
			return nil, nil, err
		}
		r, ok := m.(*Registered)
		if !ok || r.Request != req {
			return nil, nil, fmt.Errorf("%w: unexpected reply to REGISTER", ErrFrame)
		}
		if r.Protos != t.protos() {
			return nil, nil, fmt.Errorf("%w: the relay granted protocols %#x for %s, not the %#x asked", ErrFrame, r.Protos, t.Name, t.protos())
		}
		byID[r.Tunnel] = at
		at.id.Store(r.Tunnel)
		var urls []string
		for _, p := range []struct {
			bit  uint8
			name string
		}{{ProtoTCP, "tcp"}, {ProtoUDP, "udp"}} {
			if r.Protos&p.bit != 0 {
				e := Endpoint{Name: t.Name, Local: t.Local, Proto: p.name, Host: host, Port: r.Port}
				eps = append(eps, e)
				urls = append(urls, e.URL())
			}
		}
		a.mu.Lock()
		at.public, at.port = strings.Join(urls, " "), r.Port
		a.mu.Unlock()
	}
	log := a.log.With("relay", a.cfg.Relay)
	for _, m := range early {
		switch m := m.(type) {
		case *Moved:
			at := byID[m.Tunnel]
			if at == nil || at.port == m.Port {
				continue
			}
			a.mu.Lock()
			was, now := at.moveTo(eps, m.Port)
			a.mu.Unlock()
			logMoved(log, at.spec, was, now, m.Text)
		case *Closed:
			at := byID[m.Tunnel]
			if at == nil {
				continue
			}
			delete(byID, m.Tunnel)
			eps = slices.DeleteFunc(eps, func(e Endpoint) bool { return e.Name == at.spec.Name })
			if err := a.tunnelClosed(m, log); err != nil {
				return nil, nil, err
			}
		}
	}
	ctl.SetDeadline(time.Time{})
	return eps, byID, nil
}

// registerOne sends one REGISTER and reads the answer, adding the MOVEDs
// and CLOSEDs that come first to early.
func (a *Agent) registerOne(ctl transport.Stream, reg *Register, early *[]Message) (Message, error) {
	if err := WriteMessage(ctl, reg); err != nil {
		return nil, fmt.Errorf("registering %s: %w", reg.Name, err)
	}
	for {
		m, err := a.expect(ctl, "REGISTERED")
		switch m := m.(type) {
		case *Moved, *Closed:
			*early = append(*early, m)
			continue
		case *Limit:
			a.setLimit(m)
			continue
		}
		return m, err
	}
}

// controlLoop answers pings, measures round trips, and reports the relay's
// ERROR or the stream's end. Silence for the liveness timeout (the relay
// answers every ping) means the relay or the path is gone.
func (a *Agent) controlLoop(ctl transport.Stream, log *slog.Logger) error {
	liveness := a.cfg.TransportOptions.IdleTimeout
	for {
		ctl.SetReadDeadline(time.Now().Add(liveness))
		m, err := ReadMessage(ctl)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("the relay was silent for %s", liveness)
			}
			return err
		}
		switch m := m.(type) {
		case *Ping:
			if err := a.writeControl(ctl, &Pong{Data: m.Data}); err != nil {
				return err
			}
		case *Pong:
			now := time.Now().UnixNano()
			if sent := int64(m.Data); sent > 0 {
				a.mu.Lock()
				a.rtt = time.Duration(now - sent)
				a.mu.Unlock()
				a.fastest.observe(time.Duration(now - sent))
			}
			a.lastPong.Store(now)
			select {
			case a.pong <- struct{}{}:
			default:
			}
		case *Drain:
			a.relayStopping.Store(true)
			log.Info("the relay is shutting down: clients in flight continue; reconnecting once it closes the session")
		case *Closed:
			if err := a.tunnelClosed(m, log); err != nil {
				return err
			}
		case *Moved:
			a.tunnelMoved(m, log)
		case *Limit:
			a.setLimit(m)
		case *Error:
			return &RefusedError{Code: m.Code, Text: m.Text}
		}
	}
}

// setLimit keeps the session's sending to the relay's LIMIT from now on,
// saying so when it changes.
func (a *Agent) setLimit(m *Limit) {
	a.mu.Lock()
	changed := a.limit != m.Rate
	a.limit = m.Rate
	a.mu.Unlock()
	a.pace.set(m.Rate)
	if !changed {
		return
	}
	if m.Rate == 0 {
		a.log.Info("the relay lifted its bandwidth limit on this agent", "relay", a.cfg.Relay)
		return
	}
	a.log.Info("the relay limits what this agent sends (its share of the token's max_bandwidth): clients' downloads and UDP datagrams over it wait or are dropped",
		"relay", a.cfg.Relay, "limit", bitrate.Format(8*float64(m.Rate)))
}

// allClosed reports whether the relay closed every one of the agent's
// tunnels for good.
func (a *Agent) allClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.tunnels {
		if at.closed == nil {
			return false
		}
	}
	return true
}

// tunnelClosed takes the tunnel the relay closed for good out of this and
// later sessions; its clients in flight finish. With none of the agent's
// tunnels left, the refusal ends Run.
func (a *Agent) tunnelClosed(m *Closed, log *slog.Logger) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	left := 0
	var closed *agentTunnel
	for _, at := range a.tunnels {
		if at.closed == nil && at.id.Load() == m.Tunnel {
			at.closed = &RefusedError{Code: m.Code, Text: fmt.Sprintf("tunnel %s (%s): %s", at.spec.Name, at.spec.Local, m.Text)}
			at.public = ""
			closed = at
		}
		if at.closed == nil {
			left++
		}
	}
	if closed == nil {
		return nil
	}
	// Out of the endpoints too: a later move or reconnect prints them
	// again, and a closed tunnel's address is dead.
	a.endpoints = slices.DeleteFunc(slices.Clone(a.endpoints), func(e Endpoint) bool { return e.Name == closed.spec.Name })
	if left == 0 {
		log.Warn("the relay closed the agent's last tunnel; stopping, and resetting its open connections",
			"name", closed.spec.Name, "local", closed.spec.Local, "code", m.Code.String(), "reason", m.Text)
		return &lastTunnelClosed{closed.closed}
	}
	log.Warn("the relay closed a tunnel; the others carry on", "name", closed.spec.Name, "local", closed.spec.Local, "code", m.Code.String(), "reason", m.Text)
	return nil
}

// tunnelMoved records the tunnel's new public port, says so, and hands
// every endpoint to OnReady again, as a reconnect that moved one would.
func (a *Agent) tunnelMoved(m *Moved, log *slog.Logger) {
	a.mu.Lock()
	var at *agentTunnel
	for _, t := range a.tunnels {
		if t.closed == nil && t.id.Load() == m.Tunnel {
			at = t
		}
	}
	if at == nil || at.port == m.Port {
		a.mu.Unlock()
		return
	}
	eps := slices.Clone(a.endpoints)
	was, now := at.moveTo(eps, m.Port)
	a.endpoints = eps
	a.mu.Unlock()
	logMoved(log, at.spec, was, now, m.Text)
	if a.cfg.OnReady != nil {
		a.cfg.OnReady(eps)
	}
}

// moveTo gives the tunnel, and its endpoints among eps, port, and returns
// their URLs before and after. Agent.mu is held.
func (at *agentTunnel) moveTo(eps []Endpoint, port uint16) (was, now []string) {
	for i, e := range eps {
		if e.Name == at.spec.Name {
			was = append(was, e.URL())
			eps[i].Port = port
			now = append(now, eps[i].URL())
		}
	}
	at.public, at.port = strings.Join(now, " "), port
	return was, now
}

func logMoved(log *slog.Logger, t TunnelSpec, was, now []string, why string) {
	msg := "the relay moved a tunnel to another public port; clients connected on the old one carry on"
	switch t.protos() {
	case ProtoUDP:
		msg = "the relay moved a tunnel to another public port; its UDP flows on the old one end"
	case ProtoTCP | ProtoUDP:
		msg = "the relay moved a tunnel to another public port; TCP clients connected on the old one carry on, its UDP flows there end"
	}
	log.Warn(msg, "name", t.Name, "was", strings.Join(was, " "), "now", strings.Join(now, " "), "reason", why)
}

// carry serves one client stream: read its header, dial the local server,
// report the outcome in the status byte, then join the two. finish runs once
// the stream is done: at carry's return, or once the joined pair ends.
func (a *Agent) carry(ctx context.Context, st transport.Stream, byID map[uint32]*agentTunnel, guard *stallGuard, finish func()) {
	growStack()
	joined := false
	defer func() {
		if !joined {
			finish()
		}
	}()
	st.SetReadDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	var first [1]byte
	if _, err := io.ReadFull(st, first[:]); err != nil {
		st.Close()
		return
	}
	if first[0] == DatagramStreamMarker {
		// The datagram stream lasts as long as the session and is no
		// client: Drain must not wait for it.
		joined = true
		finish()
		st.SetReadDeadline(time.Time{})
		defer st.Close()
		readDatagramStream(st, func(p []byte) { a.deliverUDP(p, byID) })
		return
	}
	h, err := readStreamHeaderAfter(st, first[0])
	if err != nil {
		st.Close()
		a.log.Warn("dropping stream with a bad header", "err", err)
		return
	}
	st.SetReadDeadline(time.Time{})
	t, ok := byID[h.Tunnel]
	if !ok || t.spec.protos()&ProtoTCP == 0 {
		st.Close()
		a.log.Warn("dropping stream for an unknown tunnel", "tunnel", h.Tunnel)
		return
	}
	log := a.log.With("tunnel", t.spec.Name, "client", h.Client.String())
	local, err := a.dialClient(ctx, t, h.Client)
	if err != nil {
		st.Write([]byte{StatusUnreachable})
		st.Close()
		log.Warn("client closed: the local server did not accept the connection", "local", t.spec.Local, "err", err)
		return
	}
	if v := t.spec.ProxyProtocol; v != 0 {
		hdr := proxyproto.HeaderProxyFromAddrs(byte(v), net.TCPAddrFromAddrPort(h.Client), a.publicAddr(t, "tcp", h.Client))
		if _, err := hdr.WriteTo(local); err != nil {
			local.Close()
			st.Write([]byte{StatusUnreachable})
			st.Close()
			log.Warn("client closed: writing the PROXY header to the local server", "err", err)
			return
		}
	}
	if _, err := st.Write([]byte{StatusConnected}); err != nil {
		local.Close()
		st.Close()
		return
	}
	t.active.Add(1)
	t.total.Add(1)
	log.Info("client connected")
	start := time.Now()
	// The copies run on goroutines of their own, and this one ends.
	joined = true
	// Stopping at once (not draining) must not wait on a client whose
	// server is idle: ctx's end closes both.
	startJoin(ctx, local, st, &t.bytesOut, &t.bytesIn, guard, joinPaces{toB: a.pace, sentA: &a.received}, func(stats JoinStats) {
		args := []any{"duration", time.Since(start).Round(time.Millisecond), "bytes_in", stats.BToA, "bytes_out", stats.AToB}
		// A closed stream is the relay's ordinary end of a client; an
		// aborted one means the client's side failed, so say so.
		if stats.Err != nil && (!transport.IsClosed(stats.Err) || errors.Is(stats.Err, transport.ErrAborted)) {
			args = append(args, "err", stats.Err)
		}
		log.Info("client disconnected", args...)
		t.active.Add(-1)
		finish()
	})
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
