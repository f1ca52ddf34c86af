package tunnel

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytun/relay/transport"
)

// RelayConfig configures a Relay. Start from DefaultRelayConfig.
type RelayConfig struct {
	// BindHost is the address public tunnel ports listen on ("",
	// "0.0.0.0" or "::": every address, IPv4 and IPv6, as Go listens on
	// both for any of them).
	BindHost string
	// Ports are the public ports tunnels may have.
	Ports PortSet
	// PublicHost is the host name agents print for their tunnels; empty
	// lets each agent use the host it dialed.
	PublicHost string
	// Tokens are the credentials agents may present. At least one.
	Tokens []Token
	// HandshakeTimeout bounds the control handshake (hello to welcome).
	HandshakeTimeout time.Duration
	// OpenStreamTimeout bounds opening a stream to the agent for a client.
	OpenStreamTimeout time.Duration
	// MaxPendingSessions caps sessions between connect and authentication;
	// more are closed at once.
	MaxPendingSessions int
	// Clients limits every tunnel's public clients; tokens may override.
	Clients ClientLimits
	// Liveness is how long an agent may stay silent before the relay
	// drops its session; agents ping well within it.
	Liveness time.Duration
	// AnswerTimeout is how long a group member may take to answer a new
	// client's stream before the client goes to another member.
	AnswerTimeout time.Duration
	// RejoinWindow is how long a tunnel whose every agent vanished (without
	// draining) keeps its public port open, holding new clients, for an
	// agent to come back.
	RejoinWindow time.Duration
	// FlowIdleTimeout ends a UDP flow (a client address on a UDP tunnel)
	// that carried nothing either way for this long.
	FlowIdleTimeout time.Duration
	// MaxFlows caps a UDP tunnel's flows; datagrams from more new
	// clients are dropped (and counted).
	MaxFlows int
	// LeaseFile, when set, keeps port leases across restarts.
	LeaseFile string
	// LeaseTTL is how long a tunnel's port stays promised to its token and
	// name after its last agent left.
	LeaseTTL time.Duration
	// Software names this build in the handshake ("relayd 1.2.3").
	Software string
	Logger   *slog.Logger
}

// DefaultRelayConfig returns the embedded defaults, with no tokens.
func DefaultRelayConfig() RelayConfig {
	return RelayConfig{
		Ports:              PortSet{{20000, 29999}},
		HandshakeTimeout:   10 * time.Second,
		OpenStreamTimeout:  10 * time.Second,
		MaxPendingSessions: 256,
		Liveness:           15 * time.Second,
		AnswerTimeout:      2 * time.Second,
		RejoinWindow:       10 * time.Second,
		LeaseTTL:           24 * time.Hour,
		FlowIdleTimeout:    120 * time.Second,
		MaxFlows:           1024,
		Software:           "relayd",
	}
}

// Validate reports the first invalid setting.
func (c *RelayConfig) Validate() error {
	if len(c.Ports) == 0 {
		return errors.New("relay: no public ports configured")
	}
	if len(c.Tokens) == 0 {
		return errors.New("relay: no tokens configured")
	}
	ids := map[string]bool{}
	keys := map[[keyIDLen]byte]string{}
	for i, t := range c.Tokens {
		if t.ID == "" {
			return fmt.Errorf("relay: token %d has no id", i+1)
		}
		if ids[t.ID] {
			return fmt.Errorf("relay: token id %q is used twice", t.ID)
		}
		ids[t.ID] = true
		if len(t.Secret) < MinSecretLen {
			return fmt.Errorf("relay: token %q: secret is shorter than %d characters", t.ID, MinSecretLen)
		}
		k := KeyID(t.Secret)
		if other, ok := keys[k]; ok {
			return fmt.Errorf("relay: tokens %q and %q have the same secret", other, t.ID)
		}
		keys[k] = t.ID
		for _, p := range t.Names {
			if err := ValidNamePattern(p); err != nil {
				return fmt.Errorf("relay: token %q: %w", t.ID, err)
			}
		}
		for _, r := range t.Ports {
			for p := int(r.Low); p <= int(r.High); p++ {
				if !c.Ports.Contains(uint16(p)) {
					return fmt.Errorf("relay: token %q: port %d is outside the relay's ports (%s)", t.ID, p, c.Ports)
				}
			}
		}
		if t.MaxTunnels < 0 || t.MaxConnections < 0 {
			return fmt.Errorf("relay: token %q: limits must not be negative", t.ID)
		}
		if err := t.Clients.Validate(); err != nil {
			return fmt.Errorf("relay: token %q: %w", t.ID, err)
		}
	}
	if err := c.Clients.Validate(); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if c.MaxPendingSessions <= 0 {
		return errors.New("relay: max pending sessions must be positive")
	}
	if c.HandshakeTimeout <= 0 {
		return errors.New("relay: handshake timeout must be positive")
	}
	if c.OpenStreamTimeout <= 0 {
		return errors.New("relay: open-stream timeout must be positive")
	}
	if c.Liveness <= 0 || c.AnswerTimeout <= 0 || c.LeaseTTL <= 0 {
		return errors.New("relay: liveness, answer timeout and lease lifetime must be positive")
	}
	if c.FlowIdleTimeout <= 0 || c.MaxFlows <= 0 {
		return errors.New("relay: the UDP flow timeout and flow cap must be positive")
	}
	if c.RejoinWindow < 0 {
		return errors.New("relay: rejoin window must not be negative")
	}
	return nil
}

// MaxAgentStreams is how many streams a relay lets an agent open at once:
// the control stream and the datagram stream, with room for a datagram
// stream reopened while the old one closes. Relays pass it as the
// transport's MaxIncomingStreams.
const MaxAgentStreams = 4

// MinSecretLen is the shortest token secret accepted.
const MinSecretLen = 16

// Relay accepts agent sessions and gives their tunnels public ports.
type Relay struct {
	cfg     atomic.Pointer[RelayConfig] // swapped whole by Reload
	log     *slog.Logger
	pending chan struct{} // slots for sessions not yet authenticated
	// dummySecret keeps the proof check's cost the same for unknown keys.
	dummySecret string

	mu     sync.Mutex
	tokens map[[keyIDLen]byte]*tokenState
	groups map[leaseKey]*group
	ports  map[uint16]*group
	// finishing are closed groups whose TCP clients are still being
	// carried (a tunnel whose agents all drain closes its port at once):
	// Tunnels lists them until their last client ends, so what those
	// clients carry reaches the metrics.
	finishing map[*group]struct{}
	agents    map[*agentConn]struct{}
	leases    *leaseTable
	closing   bool
	ln        transport.Listener
	stopServe context.CancelFunc
	// serveCtx is Serve's: groups outlive the session that opened them.
	serveCtx context.Context

	leaseDirty chan struct{}
	saveMu     sync.Mutex

	nextTunnel atomic.Uint32
	wg         sync.WaitGroup

	handshakeFailures counterMap
	agentRefusals     counterMap
	clientRefusals    counterMap
	clientsTotal      atomic.Int64
	clientsActive     atomic.Int64
	udpDrops          atomic.Int64
}

// NewRelay validates cfg and returns a Relay ready to Serve.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{
		log:         log,
		pending:     make(chan struct{}, cfg.MaxPendingSessions),
		dummySecret: rand.Text(),
		groups:      make(map[leaseKey]*group),
		ports:       make(map[uint16]*group),
		finishing:   make(map[*group]struct{}),
		agents:      make(map[*agentConn]struct{}),
		leaseDirty:  make(chan struct{}, 1),
	}
	// A copy, so the caller's slice can change without touching the relay.
	cfg.Tokens = slices.Clone(cfg.Tokens)
	r.cfg.Store(&cfg)
	r.tokens = tokenStates(cfg.Tokens, nil)
	leases, err := loadLeases(cfg.LeaseFile, cfg.LeaseTTL, time.Now())
	if err != nil {
		// A damaged file must not keep the relay down: set it aside, so
		// nothing is lost, and start afresh.
		bad := cfg.LeaseFile + ".bad"
		os.Rename(cfg.LeaseFile, bad)
		log.Warn("port leases could not be read; starting with none", "err", err, "moved_to", bad)
	}
	r.leases = leases
	return r, nil
}

// tokenStates indexes tokens by key id, keeping the state (counts) of any
// token in old with the same secret, and giving it the new rules and id.
func tokenStates(tokens []Token, old map[[keyIDLen]byte]*tokenState) map[[keyIDLen]byte]*tokenState {
	m := make(map[[keyIDLen]byte]*tokenState, len(tokens))
	for i := range tokens {
		t := &tokens[i]
		k := KeyID(t.Secret)
		// Same secret, same token: its sessions, tunnels and counts carry
		// on, under a new id too (a rename).
		if ts, ok := old[k]; ok {
			ts.renamedFrom = ""
			if was := ts.token().ID; was != t.ID {
				ts.renamedFrom = was
			}
			ts.setToken(t)
			m[k] = ts
			continue
		}
		m[k] = newTokenState(t)
	}
	return m
}

func (r *Relay) config() *RelayConfig { return r.cfg.Load() }

// Serve accepts sessions from ln until ctx ends, then closes ln and every
// session and returns once they are gone. Shutdown ends it gracefully.
func (r *Relay) Serve(ctx context.Context, ln transport.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	r.ln, r.stopServe, r.serveCtx = ln, cancel, ctx
	r.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.closing = true
		// Tunnels waiting for their agents to return would hold Serve
		// for their rejoin window.
		for _, g := range r.groups {
			r.closeGroupLocked(g, "the relay is stopping")
		}
		r.mu.Unlock()
		ln.Close()
	})
	defer stop()
	saved := make(chan struct{})
	go func() {
		defer close(saved)
		r.leaseWriter(ctx)
	}()
	go r.bandwidthLoop(ctx)
	defer func() {
		r.wg.Wait()
		cancel()
		<-saved
		r.saveLeases() // the final state, after every tunnel closed
	}()
	for {
		s, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting sessions: %w", err)
		}
		select {
		case r.pending <- struct{}{}:
		default:
			// Too many sessions still authenticating: refuse rather than queue.
			s.CloseWithError(uint64(CodeLimit), "too many sessions in handshake")
			r.handshakeFailures.add("too-many-pending")
			r.log.Warn("agent refused: too many sessions in handshake", "agent", s.RemoteAddr().String(), "max", cap(r.pending))
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serveSession(ctx, s)
		}()
	}
}

// Shutdown stops the relay gracefully: it accepts no more sessions or
// clients, tells every agent, and waits for the clients in flight to finish
// or ctx to end, then closes every session, which makes Serve return. It
// returns ctx's error if clients were still connected when it ended.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closing = true
	ln, stopServe := r.ln, r.stopServe
	groups := make([]*group, 0, len(r.groups))
	for _, g := range r.groups {
		groups = append(groups, g)
	}
	agents := make([]*agentConn, 0, len(r.agents))
	for a := range r.agents {
		agents = append(agents, a)
	}
	// The clients queued on a port are taken, not reset (closeListeners);
	// those the accept loops took are counted once the loops end.
	var accepting []chan struct{}
	for _, g := range groups {
		g.closeListeners()
		if g.accepted != nil {
			accepting = append(accepting, g.accepted)
		}
	}
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, c := range accepting {
		select {
		case <-c:
		case <-ctx.Done():
		}
	}
	// At once, not one after another: a slow agent costs a second, not
	// a second each.
	var told sync.WaitGroup
	for _, a := range agents {
		told.Go(func() { a.notice(&Drain{}) })
	}
	told.Wait()
	r.log.Info("draining", "agents", len(agents), "tunnels", len(groups), "clients", r.activeClients())
	var err error
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for r.activeClients() > 0 && err == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
			err = ctx.Err()
			r.log.Warn("drain cut short", "clients_cut", r.activeClients(), "err", err)
		}
	}
	if stopServe != nil {
		stopServe()
	}
	return err
}

func (r *Relay) activeClients() int64 { return r.clientsActive.Load() }

// Tunnels lists the live tunnels, by port.
func (r *Relay) Tunnels() []TunnelInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]TunnelInfo, 0, len(r.groups)+len(r.finishing))
	for _, g := range r.groups {
		out = append(out, g.info())
	}
	for g := range r.finishing {
		if g.active.Load() == 0 {
			// Its last client is done, and group.finished, waiting for
			// r.mu, takes it off the list and hands on its counts.
			continue
		}
		out = append(out, g.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// Stats returns the relay's totals.
func (r *Relay) Stats() RelayStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := RelayStats{
		Agents:            map[string]int{},
		Tunnels:           len(r.groups),
		ClientsTotal:      r.clientsTotal.Load(),
		ClientsActive:     r.clientsActive.Load(),
		HandshakeFailures: r.handshakeFailures.snapshot(),
		AgentRefusals:     r.agentRefusals.snapshot(),
		ClientRefusals:    r.clientRefusals.snapshot(),
		UDPDrops:          r.udpDrops.Load(),
		TokenRefusals:     map[string]map[string]int64{},
	}
	for _, ts := range r.tokens {
		if m := ts.refusals.snapshot(); len(m) > 0 {
			st.TokenRefusals[ts.token().ID] = m
		}
	}
	for _, g := range r.groups {
		if u := g.udp.Load(); u != nil {
			st.UDPFlows += u.flowCount()
		}
	}
	for a := range r.agents {
		st.Agents[a.sess.Kind()]++
	}
	return st
}

// agentConn is one authenticated agent session.
type agentConn struct {
	r        *Relay
	sess     transport.Session
	ctl      transport.Stream
	token    *tokenState
	instance [instanceLen]byte
	// base is the session's logger; logp adds the token's id, which a
	// reload that renames the token changes (read with logger).
	base *slog.Logger
	logp atomic.Pointer[slog.Logger]
	// welcomed is set once the agent authenticated, before its WELCOME:
	// from then on the streams it opens are served (acceptStreams).
	welcomed atomic.Bool

	// wmu serialises control frames: a channel with room for one, so
	// notice can give up waiting for it.
	wmu chan struct{}
	// members are this session's places in groups, by tunnel id; guarded
	// by Relay.mu. byID holds the same for the datagram path, which must
	// not take Relay.mu per datagram.
	members map[uint32]*member
	byID    sync.Map
	link    *dgramLink
	// kicked is set by the reload that closes the session for its token
	// (guarded by Relay.mu): it stays among r.agents while its notice
	// goes out, and a reload after that one leaves it alone.
	kicked bool

	// paces: the agent keeps to LIMIT (REGISTER's bit), and a tunnel of
	// its was granted. limit is the share of its token's max_bandwidth it
	// was last given (0: none).
	paces atomic.Bool
	limit atomic.Uint64
	// canPace: a REGISTER of the agent's carried the bit. Set before the
	// REGISTER is served, so a reload that finds the tunnel finds it set.
	canPace atomic.Bool
	// down and downUDP count the bytes the relay passed on from the
	// agent's streams and datagrams to its clients (down is also the
	// stall guard's sign of a session that moves: datagrams pass a
	// stuck QUIC session's flow control). lastDown is their sum at the
	// last tick of bandwidthLoop, and used the rate since the one before
	// (bytes a second); both guarded by the token's shareMu.
	down, downUDP atomic.Int64
	lastDown      int64
	used          uint64

	// saveLease asks register to write the lease table before it replies;
	// refused says the latest REGISTER was refused. Only the control
	// loop's goroutine touches them.
	saveLease, refused bool
	// leased is what the tunnels this session opened did to the lease
	// table, undone when it ends with a goodbye right after a refusal;
	// guarded by Relay.mu.
	leased []leaseChange

	// suspect is set when the agent missed a probe or a stream answer:
	// groups send it new clients only when no other member can take them.
	// A PONG, or a stream it answers, clears it (alive); while it is set
	// the probe keeps pinging. Set only by markSuspect.
	suspect atomic.Bool
	probing atomic.Bool
	// waiting are the clients whose stream to this agent waits for its
	// answer (group.carry): marking the agent suspect ends their waits, so
	// they go to another member at once. Guarded by waitMu, which
	// markSuspect holds too.
	waitMu  sync.Mutex
	waiting map[*pendingAnswer]struct{}
	// registering: a REGISTER is being served; its agent is alive and is
	// not probed until the reply is sent.
	registering atomic.Bool
	lastPong    atomic.Int64  // unix nanoseconds
	pong        chan struct{} // a PONG arrived (room for one: never blocks)
	fastest     fastestRTT    // answers()'s round trips
	guard       *stallGuard   // the writes to this agent's clients
	since       time.Time
}

// TransportHandshakeFailed counts, among the handshake failures, a
// connection that failed in the transport's own handshake, before a session
// reached Serve: garbage or a failed TLS handshake ("tls": on QUIC, a TLS
// alert either way, a wrong ALPN, a protocol error or a peer closing the
// connection), one too slow ("timeout": on QUIC, quic-go's handshake idle
// or handshake timeout too), one closed at once because
// transport.Options.MaxHandshakes others were in their handshake
// ("too-many-handshakes"), or a peer that hung up without a word
// ("abandoned"). It is the onErr of transport.Listen.
func (r *Relay) TransportHandshakeFailed(addr net.Addr, err error) {
	if errors.Is(err, context.Canceled) {
		return // the listener closing, not the peer failing
	}
	reason := "tls"
	var ne net.Error
	switch {
	case errors.Is(err, transport.ErrTooManyHandshakes):
		reason = "too-many-handshakes"
	case errors.Is(err, transport.ErrPeerHungUp):
		// Mostly an agent on --transport auto whose other attempt came
		// up first.
		reason = "abandoned"
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		// smux's own timeout too: a peer through TLS that never opens
		// the signal stream; and quic-go's IdleTimeoutError and
		// HandshakeTimeoutError.
		reason = "timeout"
	}
	r.handshakeFailures.add(reason)
	kind := transport.KindTCP
	if _, ok := addr.(*net.UDPAddr); ok {
		kind = transport.KindQUIC
	}
	r.log.Debug("transport handshake failed", "remote", addr.String(), "transport", kind, "reason", reason, "err", err)
}

func (r *Relay) serveSession(ctx context.Context, s transport.Session) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	log := r.log.With("agent", s.RemoteAddr().String(), "transport", s.Kind())
	if transport.ViaProxy(s) {
		// The address is the proxy's, which other agents may share.
		log = log.With("via_proxy", true)
	}

	a, err := r.handshake(ctx, s, log)
	<-r.pending
	if err != nil {
		var sent *sentRefusal
		if !errors.As(err, &sent) {
			reason, level := "aborted", slog.LevelInfo
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
				reason = "timeout"
			case errors.Is(err, transport.ErrPeerHungUp):
				// Counted, but no failure worth a log line.
				reason, level = "abandoned", slog.LevelDebug
			}
			r.handshakeFailures.add(reason)
			log.Log(ctx, level, "agent handshake failed", "err", err)
		}
		return
	}
	if ref := r.admitAgent(a); ref != nil {
		a.refuse(ref.Code, ref.Text)
		return
	}
	defer r.forgetAgent(a)
	a.logger().Info("agent connected")
	a.guard = newStallGuard(a.answers, windowFills(s), a.logger)
	go a.guard.watch(s.Done())
	// From here on, a shutdown is announced before the session goes.
	stop()
	stopNotice := context.AfterFunc(ctx, func() {
		a.notice(&Error{Code: CodeShutdown, Text: "the relay is shutting down"})
		s.CloseWithError(uint64(CodeShutdown), "the relay is shutting down")
	})
	defer stopNotice()
	defer a.link.close()
	err = a.controlLoop(ctx)
	// The end of the control stream is a goodbye; anything else may be an
	// agent on its way back.
	goodbye := errors.Is(err, io.EOF)
	// A stopping relay keeps no port open for the agent to come back to.
	// (Serve's ctx may end this session before Serve marks it closing.)
	if dropped := r.dropMembers(a, goodbye || ctx.Err() != nil); goodbye {
		if a.refused {
			// The agent stops on that refusal (an agent that retries
			// does not say goodbye): it never went live, and its user,
			// who was shown no address, fixes the refused tunnel and
			// runs it again. Leases its tunnels took would reserve
			// ports no one was told of, and cost the token leases it
			// has: put the table back as it was.
			r.undoLeases(a)
		}
		a.finishClients(ctx, dropped)
	}
	var sent *sentRefusal
	switch {
	case errors.As(err, &sent):
	case err == nil || errors.Is(err, io.EOF) || transport.IsClosed(err) || ctx.Err() != nil:
		a.logger().Info("agent disconnected")
	case errors.Is(err, os.ErrDeadlineExceeded):
		a.logger().Warn("agent disconnected: silent too long", "liveness", r.config().Liveness)
	default:
		a.logger().Warn("agent disconnected", "err", err)
	}
}

// admitAgent records a, replacing any session with the same token and
// instance: the agent came back before the relay noticed it had gone.
func (r *Relay) admitAgent(a *agentConn) *RefusedError {
	var old []*agentConn
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return &RefusedError{Code: CodeShutdown, Text: "the relay is shutting down"}
	}
	// A reload between the handshake's token lookup and here must not let
	// a revoked or changed token in.
	if ref := r.tokenCurrentLocked(a); ref != nil {
		r.mu.Unlock()
		return ref
	}
	// Again, under r.mu: a reload that renamed the token since the
	// handshake named it did not find a among r.agents to rename.
	a.setLogger()
	if a.instance != ([instanceLen]byte{}) {
		for o := range r.agents {
			if o.instance == a.instance && o.token == a.token {
				old = append(old, o)
			}
		}
	}
	r.agents[a] = struct{}{}
	r.mu.Unlock()
	for _, o := range old {
		o.logger().Info("agent session replaced by a newer one from the same agent", "new", a.sess.RemoteAddr().String())
		o.sess.CloseWithError(uint64(CodeShutdown), "replaced by a newer session from the same agent")
	}
	return nil
}

func (r *Relay) forgetAgent(a *agentConn) {
	r.mu.Lock()
	delete(r.agents, a)
	r.mu.Unlock()
	if a.paces.Load() {
		r.shareBandwidth(a.token, false) // one session fewer to share it
	}
}

// shareBandwidth gives each of ts's sessions that keep to LIMIT its share
// of the token's max_bandwidth, and tells each one whose share changed. A
// token's limit is the relay's to enforce whatever its agents do (its
// paces); the shares keep an agent from sending what the relay would only
// hold back, without holding back one that is busy while the others idle.
// measure (the once-a-second tick) takes each session's use since the
// last tick first; the other calls, as a session comes or goes or a
// reload changes the limit, share by the last tick's.
func (r *Relay) shareBandwidth(ts *tokenState, measure bool) {
	r.mu.Lock()
	var sessions []*agentConn
	for a := range r.agents {
		if a.token == ts && a.paces.Load() {
			sessions = append(sessions, a)
		}
	}
	r.mu.Unlock()
	ts.shareMu.Lock()
	defer ts.shareMu.Unlock()
	now := time.Now()
	if measure {
		secs := now.Sub(ts.measured).Seconds()
		for _, a := range sessions {
			down := a.down.Load() + a.downUDP.Load()
			if secs > 0 && !ts.measured.IsZero() {
				a.used = uint64(float64(down-a.lastDown) / secs)
			}
			a.lastDown = down
		}
		ts.measured = now
	}
	used := make([]uint64, len(sessions))
	held := make([]uint64, len(sessions))
	for i, a := range sessions {
		used[i], held[i] = a.used, a.limit.Load()
	}
	for i, share := range shares(ts.token().MaxBandwidth, used, held) {
		a := sessions[i]
		if old := a.limit.Load(); share != old && (old == 0 || share == 0 || absDiff(share, old) > old/20) {
			a.limit.Store(share)
			go a.sendLimit()
		}
	}
}

// shares splits rate (bytes a second; 0: no limit) among sessions that
// used used[i] of their last shares held[i]. A session using less than
// half of its share is light, and gets an even share (rate/n), room to
// grow into before the next tick; the busy ones split what the light ones
// leave, and never get less than an even share. The sum can pass rate
// for a tick as light sessions pick up, by at most the light ones' even
// shares: the relay holds that much back for a second.
func shares(rate uint64, used, held []uint64) []uint64 {
	n := uint64(len(used))
	out := make([]uint64, n)
	if rate == 0 || n <= 1 {
		for i := range out {
			out[i] = rate
		}
		return out
	}
	even := max(rate/n, 1)
	isBusy := make([]bool, n)
	var busy, lightUse uint64
	for i := range used {
		if isBusy[i] = held[i] > 0 && used[i] >= held[i]/2; isBusy[i] {
			busy++
		} else {
			lightUse += min(used[i], even)
		}
	}
	for i := range used {
		out[i] = even
		if isBusy[i] {
			out[i] = max(even, (rate-min(lightUse, rate))/busy)
		}
	}
	return out
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// bandwidthLoop reshares each limited token's bandwidth every second, by
// how its sessions used their shares, until ctx ends.
func (r *Relay) bandwidthLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		var limited []*tokenState
		for _, ts := range r.tokens {
			if ts.token().MaxBandwidth > 0 {
				limited = append(limited, ts)
			}
		}
		r.mu.Unlock()
		for _, ts := range limited {
			r.shareBandwidth(ts, true)
		}
	}
}

// cannotPace says why an agent that does not keep to LIMIT may carry no
// tunnel of tok, which has a bandwidth limit.
func cannotPace(tok *Token) string {
	return fmt.Sprintf("token %q has a bandwidth limit (max_bandwidth) that this agent is too old to keep to: upgrade relayctl", tok.ID)
}

// sendLimit tells the agent its share as it is when the frame goes out
// (of two racing, the later says the latest), trying again while the
// control stream is too busy to take it.
func (a *agentConn) sendLimit() {
	for {
		if a.noticeOf(func() Message { return &Limit{Rate: a.limit.Load()} }, noticeWait) {
			return
		}
		select {
		case <-a.sess.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// handshake runs hello, challenge, auth and welcome on the control stream.
func (r *Relay) handshake(ctx context.Context, s transport.Session, log *slog.Logger) (*agentConn, error) {
	cfg := r.config()
	deadline := time.Now().Add(cfg.HandshakeTimeout)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	a := &agentConn{r: r, sess: s, base: log, wmu: make(chan struct{}, 1), pong: make(chan struct{}, 1), members: make(map[uint32]*member), since: time.Now(), link: newDgramLink(s)}
	go a.receiveDatagrams(ctx)
	ctl, err := s.AcceptStream(hctx)
	if err != nil {
		if hctx.Err() == nil {
			// The agent ended the session before opening its control
			// stream: mostly --transport auto's other attempt, once one
			// came up first; as a peer gone in the transport's handshake.
			err = fmt.Errorf("%w: %w", transport.ErrPeerHungUp, err)
		}
		return nil, fmt.Errorf("waiting for control stream: %w", err)
	}
	ctl.SetDeadline(deadline)
	a.ctl = ctl
	go a.acceptStreams(ctx)

	m, err := ReadMessage(ctl)
	if err != nil {
		return nil, fmt.Errorf("reading hello: %w", err)
	}
	hello, ok := m.(*Hello)
	if !ok {
		return nil, a.refuse(CodeProtocol, fmt.Sprintf("expected HELLO, got message type %#x", m.msgType()))
	}
	if hello.Version != ProtocolVersion {
		return nil, a.refuse(CodeBadVersion, fmt.Sprintf(
			"protocol version mismatch: the relay (%s) speaks version %d, the agent (%s) speaks version %d; upgrade the older of the two",
			cfg.Software, ProtocolVersion, hello.Software, hello.Version))
	}
	ch := Challenge{Version: ProtocolVersion, Software: cfg.Software}
	rand.Read(ch.Nonce[:])
	if err := a.send(&ch); err != nil {
		return nil, fmt.Errorf("sending challenge: %w", err)
	}
	if m, err = ReadMessage(ctl); err != nil {
		return nil, fmt.Errorf("reading auth: %w", err)
	}
	auth, ok := m.(*Auth)
	if !ok {
		return nil, a.refuse(CodeProtocol, fmt.Sprintf("expected AUTH, got message type %#x", m.msgType()))
	}
	ekm, err := sessionBinding(s)
	if err != nil {
		return nil, a.refuse(CodeInternal, "relay could not bind authentication to the TLS session")
	}
	r.mu.Lock()
	ts, known := r.tokens[hello.KeyID]
	r.mu.Unlock()
	secret := r.dummySecret
	if known {
		secret = ts.token().Secret
	}
	want := Proof(secret, ch.Nonce, ekm)
	if !hmac.Equal(want[:], auth.Proof[:]) || !known {
		return nil, a.refuse(CodeUnauthorized, "token not accepted: check the token (--token or --token-file, token or token_file in agent.toml, or RELAY_TOKEN) against the relay's tokens: the [[tokens]] in its relay.toml, or the token file in its state directory when relay.toml defines none")
	}
	a.token = ts
	a.instance = hello.Instance
	a.setLogger()
	// Before the WELCOME goes out: the agent may open its datagram
	// stream as soon as it reads it.
	a.welcomed.Store(true)
	if err := a.send(&Welcome{PublicHost: cfg.PublicHost}); err != nil {
		return nil, fmt.Errorf("sending welcome: %w", err)
	}
	ctl.SetDeadline(time.Time{})
	return a, nil
}

// logger is the session's logger, with its token's id once it has one.
func (a *agentConn) logger() *slog.Logger {
	if l := a.logp.Load(); l != nil {
		return l
	}
	return a.base
}

// setLogger names the token, as it is called now, on the session's lines.
func (a *agentConn) setLogger() { a.logp.Store(a.base.With("token", a.token.token().ID)) }

// send writes m, giving up after the liveness timeout: an agent that stops
// reading must not hold the control stream (and a shutdown) for ever.
func (a *agentConn) send(m Message) error {
	a.wmu <- struct{}{}
	defer func() { <-a.wmu }()
	// Set under wmu: a deadline moved while another frame is being
	// written does not reach that frame on TLS+smux (transport's Write).
	a.ctl.SetWriteDeadline(time.Now().Add(a.r.config().Liveness))
	return WriteMessage(a.ctl, m)
}

// notice sends m without letting a stuck agent hold up the caller long:
// it gives up after noticeWait waiting for a writer stuck before it, as
// well as on its own write. It reports whether m went out.
func (a *agentConn) notice(m Message) bool {
	return a.noticeWithin(m, noticeWait)
}

// noticeWithin is notice, waiting at most wait.
func (a *agentConn) noticeWithin(m Message, wait time.Duration) bool {
	return a.noticeOf(func() Message { return m }, wait)
}

// silentNoticeWait bounds the notice to an agent dropped as silent.
const silentNoticeWait = 100 * time.Millisecond

// noticeOf is notice of the message build makes once the control stream
// is this notice's: a frame that must say the latest state (MOVED) reads
// it there, so of two such notices racing, the one written last says it.
func (a *agentConn) noticeOf(build func() Message, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case a.wmu <- struct{}{}:
	case <-t.C:
		a.logger().Debug("control stream busy; notice not sent", "type", fmt.Sprintf("%T", build()))
		return false
	}
	defer func() { <-a.wmu }()
	a.ctl.SetWriteDeadline(time.Now().Add(wait))
	return WriteMessage(a.ctl, build()) == nil
}

// answers pings the agent and reports whether its PONG came back within
// the answer timeout: whether the agent's data still reaches the relay. It
// reports true when it cannot tell.
func (a *agentConn) answers() bool {
	if a.registering.Load() {
		return true // see controlLoop's Register
	}
	sent := time.Now().UnixNano()
	if !a.notice(&Ping{Data: uint64(sent)}) {
		return true // the stuck direction is the relay's, not the agent's
	}
	cfg := a.r.config()
	wait := pongWait(cfg.AnswerTimeout, a.fastest.get(), cfg.Liveness)
	ok := pongSince(&a.lastPong, a.pong, sent, wait, max(wait, cfg.Liveness/3), a.down.Load, a.sess.Done())
	if a.lastPong.Load() >= sent {
		a.fastest.observe(time.Duration(time.Now().UnixNano() - sent))
	}
	return ok
}

// noticeWait bounds a notice: a DRAIN, a PING or a last ERROR.
const noticeWait = time.Second

// sentRefusal is a refusal this relay sent and logged.
type sentRefusal struct{ *RefusedError }

func (e *sentRefusal) Unwrap() error { return e.RefusedError }

// refuse logs why the session ends, tells the agent, and closes it. The
// agent closes its end on reading the ERROR; waiting for that (briefly)
// keeps the frame from being lost to a reset.
func (a *agentConn) refuse(code ErrorCode, text string) error {
	a.logger().Warn("agent refused", "code", code.String(), "reason", text)
	a.r.agentRefusals.add(code.String())
	if a.token == nil {
		a.r.handshakeFailures.add(code.String())
	} else {
		a.token.refusals.add(code.String())
	}
	a.wmu <- struct{}{}
	a.ctl.SetWriteDeadline(time.Now().Add(2 * time.Second))
	err := WriteMessage(a.ctl, &Error{Code: code, Text: text})
	<-a.wmu
	if err == nil {
		a.ctl.CloseWrite()
		a.ctl.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, io.LimitReader(a.ctl, 64<<10))
	}
	a.sess.CloseWithError(uint64(code), text)
	return &sentRefusal{&RefusedError{Code: code, Text: text}}
}

func (a *agentConn) controlLoop(ctx context.Context) error {
	for {
		// An agent pings every keepalive; silence this long means the
		// peer, or the path to it, is gone (a pulled cable, a suspended
		// laptop, a half-open TCP connection).
		a.ctl.SetReadDeadline(time.Now().Add(a.r.config().Liveness))
		m, err := ReadMessage(a.ctl)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				return a.refuse(CodeProtocol, err.Error())
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Mostly the agent is gone and this reaches no one. An
				// agent that is there pings too rarely (its keepalive
				// is over the relay's liveness) and would otherwise
				// reconnect over and over, told nothing. CodeInternal:
				// every agent version retries on it, and logs the text.
				// Over QUIC the close can overtake the notice; its
				// reason says the same.
				liveness := a.r.config().Liveness
				text := fmt.Sprintf("the relay heard nothing from this agent for %v (relayd's idle_timeout) and closes the session: if this repeats, the agent's keepalive must be well under %v", liveness, liveness)
				// Briefly: a dead agent's full window must not hold up
				// handing its tunnels' clients to the group's others.
				a.noticeWithin(&Error{Code: CodeInternal, Text: text}, silentNoticeWait)
				a.sess.CloseWithError(uint64(CodeInternal), text)
			}
			return err
		}
		switch m := m.(type) {
		case *Register:
			// A group that this registration joins may probe the agent
			// before the reply is out; a PING then would reach an agent
			// of an older version before its REGISTERED, which it takes
			// for a protocol error. The mark narrows that window (a probe
			// already past its check, or a tunnel registered earlier in
			// the session, can still send one); the agent's own fix is
			// in Agent.expect. A reply stuck behind a full stream keeps
			// probes off for at most the liveness timeout.
			a.registering.Store(true)
			if m.Paces {
				a.canPace.Store(true)
			}
			reply := a.register(ctx, m)
			_, a.refused = reply.(*Error)
			err := a.send(reply)
			a.registering.Store(false)
			if err != nil {
				return err
			}
			if _, ok := reply.(*Registered); ok && m.Paces && !a.paces.Swap(true) {
				// One more session shares the token's bandwidth.
				a.r.shareBandwidth(a.token, false)
			}
		case *Ping:
			if err := a.send(&Pong{Data: m.Data}); err != nil {
				return err
			}
		case *Pong:
			a.lastPong.Store(time.Now().UnixNano())
			select {
			case a.pong <- struct{}{}:
			default:
			}
			a.alive()
		case *Drain:
			a.r.drainMembers(a, m.Tunnel)
		case *Error:
			return &RefusedError{Code: m.Code, Text: m.Text}
		default:
			return a.refuse(CodeProtocol, fmt.Sprintf("unexpected message type %#x from agent", m.msgType()))
		}
	}
}

// probe pings the agent and marks it suspect unless it answers within the
// answer timeout; while it is suspect, it pings again each answer timeout,
// so an agent that comes back (a thawed process, a path that carries
// packets again) is heard from. Groups probe members when another member
// joins and when one fails to answer a stream, so a dead member stops
// getting clients long before the liveness timeout closes its session.
func (a *agentConn) probe() {
	if (a.registering.Load() && !a.suspect.Load()) || !a.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			a.pingUntilAnswered()
			a.probing.Store(false)
			// A mark that came while this probe was ending found it
			// still running: take it on.
			select {
			case <-a.sess.Done():
				return
			default:
			}
			if !a.suspect.Load() || !a.probing.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// pingUntilAnswered pings the agent each answer timeout until it answers
// one, is no longer suspect, or its session ends; an unanswered ping marks
// it suspect. While a REGISTER is served the agent is alive and gets no
// PING (see controlLoop's Register): that round only waits.
func (a *agentConn) pingUntilAnswered() {
	var timer *time.Timer
	for {
		sent := time.Now().UnixNano()
		registering := a.registering.Load()
		if !registering {
			a.notice(&Ping{Data: uint64(sent)})
		}
		wait := a.r.config().AnswerTimeout
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-a.sess.Done():
			return
		}
		if a.lastPong.Load() >= sent {
			return
		}
		if !registering && a.markSuspect() {
			a.logger().Warn("agent did not answer a probe; sending its clients elsewhere until it does")
		}
		if !a.suspect.Load() {
			return
		}
	}
}

// unanswered: a client's stream to the agent went unanswered for the answer
// timeout. From now on its groups send it new clients only when no other
// member can take them, and clients waiting for its answer go elsewhere at
// once, until it answers a probe or a stream.
func (a *agentConn) unanswered() {
	if a.markSuspect() {
		a.logger().Warn("agent did not answer a new client's stream; sending clients to the other members until it answers")
	}
	a.probe()
}

// markSuspect marks the agent suspect and ends the waits of the clients
// waiting for its answer. It reports whether the agent was not suspect.
func (a *agentConn) markSuspect() bool {
	a.waitMu.Lock()
	defer a.waitMu.Unlock()
	if a.suspect.Swap(true) {
		return false
	}
	for w := range a.waiting {
		w.aborted = true
		w.st.SetReadDeadline(time.Now())
	}
	return true
}

// alive clears the suspect mark: the agent answered a ping or a stream.
func (a *agentConn) alive() {
	if a.suspect.Load() && a.suspect.CompareAndSwap(true, false) {
		a.logger().Info("agent answers again")
	}
}

// pendingAnswer is a client waiting for the agent's answer on st.
type pendingAnswer struct {
	st      transport.Stream
	aborted bool // by markSuspect; guarded by agentConn.waitMu
}

// awaitAnswer counts in a client waiting for the agent's answer on st,
// chosen while the agent was (wasSuspect) or was not suspect. A client
// that chose an agent not suspect then, but marked since, does not wait:
// awaitAnswer returns nil. Otherwise the caller reads the answer and then
// calls answerDone.
func (a *agentConn) awaitAnswer(st transport.Stream, wasSuspect bool) *pendingAnswer {
	a.waitMu.Lock()
	defer a.waitMu.Unlock()
	if !wasSuspect && a.suspect.Load() {
		return nil
	}
	w := &pendingAnswer{st: st}
	if a.waiting == nil {
		a.waiting = make(map[*pendingAnswer]struct{})
	}
	a.waiting[w] = struct{}{}
	return w
}

// answerDone counts w out and clears st's read deadline; after it no
// markSuspect touches st. It reports whether markSuspect ended the wait.
func (a *agentConn) answerDone(w *pendingAnswer) (aborted bool) {
	a.waitMu.Lock()
	delete(a.waiting, w)
	aborted = w.aborted
	a.waitMu.Unlock()
	w.st.SetReadDeadline(time.Time{})
	return aborted
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether name is a valid tunnel name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

func (a *agentConn) register(ctx context.Context, m *Register) Message {
	fail := func(code ErrorCode, format string, args ...any) Message {
		text := fmt.Sprintf(format, args...)
		a.logger().Warn("tunnel refused", "name", m.Name, "code", code.String(), "reason", text)
		a.r.agentRefusals.add(code.String())
		a.token.refusals.add(code.String())
		return &Error{Request: m.Request, Code: code, Text: text}
	}
	if !ValidName(m.Name) {
		return fail(CodeBadRequest, "tunnel name %q is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", m.Name)
	}
	if ref := a.token.token().allows(m.Name, m.Protos); ref != nil {
		// Checked again in join, under the lock a reload holds; this
		// one keeps the refusal ahead of a bad protocol set's.
		return fail(ref.Code, "%s", ref.Text)
	}
	if m.Protos == 0 || m.Protos&^(ProtoTCP|ProtoUDP) != 0 {
		return fail(CodeUnsupported, "protocol set %#x is not one this relay carries (tcp, udp, or both)", m.Protos)
	}
	if tok := a.token.token(); tok.MaxBandwidth > 0 && !m.Paces {
		// Its data over the limit would wait unread in its session's
		// window until the session stalled (protocol.go, LIMIT).
		return fail(CodeForbidden, "%s", cannotPace(tok))
	}
	allow, err := ParsePrefixes(m.Allow)
	if err != nil {
		return fail(CodeBadRequest, "allow list: %v", err)
	}
	deny, err := ParsePrefixes(m.Deny)
	if err != nil {
		return fail(CodeBadRequest, "deny list: %v", err)
	}
	mem, port, err := a.r.join(ctx, a, m, allow, deny)
	if err != nil {
		var ref *RefusedError
		if errors.As(err, &ref) {
			return fail(ref.Code, "%s", ref.Text)
		}
		return fail(CodeInternal, "relay failed to open a port: %v", err)
	}
	if a.saveLease {
		a.saveLease = false
		a.r.saveLeases()
	}
	return &Registered{Request: m.Request, Tunnel: mem.id, Protos: mem.g.protos, Port: port}
}

// join puts a in the group for (its token, m.Name), opening the group (and
// its public port) if there is none, and returns the port.
func (r *Relay) join(ctx context.Context, a *agentConn, m *Register, allow, deny []netip.Prefix) (*member, uint16, error) {
	// The ports are read under r.mu: Reload holds it to replace them and
	// close the tunnels they leave out, so none is opened or joined on a
	// port it just took away.
	r.mu.Lock()
	defer r.mu.Unlock()
	tok := a.token.token()
	cfg := r.config()
	allowed, whose := cfg.Ports, "this relay allows"
	if len(tok.Ports) > 0 {
		allowed, whose = tok.Ports, fmt.Sprintf("token %q may use (its ports rule)", tok.ID)
	}
	want := PortRange{m.PortLow, m.PortHigh}
	cands := allowed
	if m.PortLow != 0 {
		if m.PortHigh < m.PortLow {
			return nil, 0, &RefusedError{Code: CodeBadRequest, Text: fmt.Sprintf("port range %d-%d is empty", m.PortLow, m.PortHigh)}
		}
		cands = allowed.Intersect(want)
		if len(cands) == 0 || (want.Low == want.High && !allowed.Contains(m.PortLow)) {
			return nil, 0, &RefusedError{Code: CodePortNotAllowed, Text: fmt.Sprintf(
				"port %s is outside the ports %s (%s): ask for one of those, or none", want, whose, allowed)}
		}
	}
	key := leaseKey{tok.ID, m.Name}

	if r.closing {
		return nil, 0, &RefusedError{Code: CodeShutdown, Text: "the relay is shutting down"}
	}
	if ref := r.tokenCurrentLocked(a); ref != nil {
		return nil, 0, ref
	}
	if ref := tok.allows(m.Name, m.Protos); ref != nil {
		return nil, 0, ref
	}
	g := r.groups[key]
	if g != nil && !allowed.Contains(g.port) {
		// Reload closes the tunnels on ports the relay stopped offering;
		// one left over must not hand its port on to the agents joining.
		if len(g.members) > 0 {
			return nil, 0, &RefusedError{Code: CodeShutdown, Text: fmt.Sprintf(
				"tunnel %s is on port %d, outside the ports %s (%s): try again once it has moved", m.Name, g.port, whose, allowed)}
		}
		r.closeGroupLocked(g, fmt.Sprintf("port %d is no longer among the ports %s", g.port, whose))
		g = nil
	}
	if g != nil {
		// A tunnel without a lease is one agent's test (relayctl bench):
		// sharing a port with one would send real clients to the test,
		// or the test's traffic to a real server. Its own agent may still
		// come back to it within the rejoin window.
		switch {
		case m.NoLease && (!g.noLease || g.liveMembersLocked() > 0):
			return nil, 0, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"tunnel %s is already open for another agent of this token, and a tunnel without a lease shares its port with none: pick another --name",
				m.Name)}
		case !m.NoLease && g.noLease:
			return nil, 0, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"tunnel %s is open without a lease for another agent of this token (relayctl bench), and shares its port with none: pick another --name, or try again once it ends",
				m.Name)}
		}
		if g.protos != m.Protos {
			return nil, 0, &RefusedError{Code: CodeBadRequest, Text: fmt.Sprintf(
				"tunnel %s is already open for %s; this agent asked for %s: use the same --proto to join it",
				m.Name, protoNames(g.protos), protoNames(m.Protos))}
		}
		if m.PortLow != 0 && !cands.Contains(g.port) {
			return nil, 0, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"tunnel %s is already open on port %d (another agent with this token holds it): ask for port %d or none to join it",
				m.Name, g.port, g.port)}
		}
		for _, o := range g.members {
			if o.agent == a {
				return nil, 0, &RefusedError{Code: CodeBadRequest, Text: fmt.Sprintf("tunnel %s is already registered on this session", m.Name)}
			}
		}
		mem := g.addMemberLocked(a, allow, deny)
		mem.want = want
		a.logger().Info("agent joined tunnel", "name", g.key.Name, "port", g.port, "members", len(g.members))
		return mem, g.port, nil
	}
	if tok.MaxTunnels > 0 && a.token.tunnels >= tok.MaxTunnels {
		return nil, 0, &RefusedError{Code: CodeLimit, Text: fmt.Sprintf(
			"token %q has %d tunnel(s) open, its max_tunnels = %d: close one first", tok.ID, a.token.tunnels, tok.MaxTunnels)}
	}
	var dropped []keyedLease
	if !m.NoLease && tok.MaxTunnels > 0 {
		// A token holds at most max_tunnels leases: one registering name
		// after name would otherwise fill the relay's ports with leases
		// of its own, and then take other tokens' idle ones. The tunnel
		// of a new name takes the place of the token's longest-idle one.
		for {
			n, old, ok := r.leases.ownIdle(tok.ID, key)
			if n < tok.MaxTunnels || !ok {
				break
			}
			dropped = append(dropped, keyedLease{old, r.leases.m[old]})
			r.leases.drop(old)
		}
	}
	capped := len(dropped)
	port, ln, pc, err := r.bindLocked(key, cands, want, cfg.BindHost, m.Protos, m.NoLease, &dropped)
	if err != nil {
		// A tunnel turned down takes no one's place: the leases dropped
		// for it are their holders' again.
		for _, d := range dropped {
			r.leases.restore(d.k, d.l)
		}
		var ref *RefusedError
		if errors.As(err, &ref) && ref.Code == CodeNoPortFree && !m.NoLease {
			// What to do, which a reload's use of the same text (the
			// operator's doing) leaves out.
			hint := "try again once one is free, or ask the relay's operator for more ports"
			if m.PortLow != 0 {
				hint = "ask for a wider --port range, or leave --port out"
			}
			err = &RefusedError{Code: ref.Code, Text: ref.Text + ": " + hint}
		}
		return nil, 0, err
	}
	for _, d := range dropped[:capped] {
		a.logger().Info("the token holds max_tunnels port leases; dropping its longest-idle one for a new tunnel",
			"name", m.Name, "dropped", d.k.Name, "port", d.l.Port, "max_tunnels", tok.MaxTunnels)
		r.markLeasesDirty()
	}
	g = &group{
		r: r, key: key, token: a.token, port: port, ln: ln, protos: m.Protos, noLease: m.NoLease, since: time.Now(),
		joined: make(chan struct{}),
	}
	g.setLogger()
	r.groups[key] = g
	r.ports[port] = g
	a.token.tunnels++
	if !m.NoLease {
		prev := r.leases.m[key]
		changed := r.leases.take(key, port)
		if changed {
			// A new promise goes to disk before the agent hears of it, so
			// a relay killed right after still keeps it.
			a.saveLease = true
		}
		if changed || len(dropped) > 0 {
			a.leased = append(a.leased, leaseChange{key: key, prev: prev, dropped: dropped})
		}
		r.markLeasesDirty()
	}
	mem := g.addMemberLocked(a, allow, deny)
	mem.want = want
	a.logger().Info("tunnel open", "name", m.Name, "port", port, "protos", protoNames(m.Protos), "lease", !m.NoLease)
	g.serveLocked(ln, pc)
	return mem, port, nil
}

// serveLocked starts serving the group's public sockets. It serves with the
// relay's context, not a session's: the session may end while other
// members, or the agent's next session, carry on with the port.
func (g *group) serveLocked(ln net.Listener, pc *net.UDPConn) {
	r, gctx := g.r, g.r.serveCtx
	if ln != nil {
		accepted := make(chan struct{})
		g.accepted = accepted
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			g.serve(gctx, ln, accepted)
		}()
	}
	if pc != nil {
		u := newUDPPort(pc)
		g.udp.Store(u)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			g.serveUDP(gctx, u)
		}()
	}
}

// bindLocked picks and binds a public port for key, for TCP, UDP or both
// on the same number: its lease's, if that fits the request; the requested
// one; or a free one among cands that no other tunnel holds a lease on.
// With noLease, it takes no port a lease holds, key's own included: a test
// must not answer on a port real clients know. The idle leases it drops to
// take their port are added to dropped, if not nil.
func (r *Relay) bindLocked(key leaseKey, cands PortSet, want PortRange, host string, protos uint8, noLease bool, dropped *[]keyedLease) (uint16, net.Listener, *net.UDPConn, error) {
	now := time.Now()
	listen := func(port uint16) (net.Listener, *net.UDPConn, error) {
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		var ln net.Listener
		if protos&ProtoTCP != 0 {
			var err error
			if ln, err = listenTCP(addr); err != nil {
				return nil, nil, err
			}
		}
		if protos&ProtoUDP == 0 {
			return ln, nil, nil
		}
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		pc, err := net.ListenUDP("udp", ua)
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			return nil, nil, err
		}
		tuneUDPSocket(pc, r.log)
		return ln, pc, nil
	}
	// reserved reports the holder of port's lease, if that keeps port
	// from this tunnel.
	reserved := func(port uint16) (leaseKey, bool) {
		holder, ok := r.leases.holder(port, now)
		return holder, ok && (holder != key || noLease)
	}
	if l, ok := r.leases.get(key, now); !noLease && ok && cands.Contains(l.Port) && r.ports[l.Port] == nil {
		ln, pc, err := listen(l.Port)
		if err == nil {
			return l.Port, ln, pc, nil
		}
		r.log.Warn("the port leased to a tunnel could not be bound; choosing another", "tunnel", key.Name, "token", key.Token, "port", l.Port, "err", err)
	}
	if want.Low != 0 && want.Low == want.High {
		port := want.Low
		if r.ports[port] != nil {
			return 0, nil, nil, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"port %d is already taken by another tunnel on this relay: choose another --port, or leave it out", port)}
		}
		if holder, ok := reserved(port); ok {
			l := r.leases.m[holder]
			return 0, nil, nil, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"port %d is reserved for another tunnel until %s: choose another --port, or leave it out",
				port, l.Released.Add(r.leases.ttl).UTC().Format(time.RFC3339))}
		}
		ln, pc, err := listen(port)
		if err != nil {
			return 0, nil, nil, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
				"port %d is in use on the relay host: choose another --port, or leave it out", port)}
		}
		return port, ln, pc, nil
	}
	n := cands.Size()
	start := 0
	if n > 1 {
		b, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
		start = int(b.Int64())
	}
	var lastErr error
	for i := range n {
		port := cands.Nth((start + i) % n)
		if r.ports[port] != nil {
			continue
		}
		if _, ok := reserved(port); ok {
			continue
		}
		ln, pc, err := listen(port)
		if err != nil {
			lastErr = err
			continue
		}
		return port, ln, pc, nil
	}
	// Every free port is promised to a tunnel that is away: take the one
	// away the longest rather than turn this tunnel down; but not for a
	// tunnel without a lease, a test that is no reason to break a promise.
	for !noLease {
		old, ok := r.leases.oldestIdle(func(p uint16) bool { return cands.Contains(p) && r.ports[p] == nil })
		if !ok {
			break
		}
		l := r.leases.m[old]
		r.leases.drop(old)
		if dropped != nil {
			*dropped = append(*dropped, keyedLease{old, l})
		}
		port := l.Port
		ln, pc, err := listen(port)
		if err != nil {
			lastErr = err
			continue
		}
		r.log.Info("reusing the port of the longest-idle lease", "port", port, "was", old.Name, "was_token", old.Token)
		return port, ln, pc, nil
	}
	if lastErr != nil {
		r.log.Warn("no public port could be bound", "ports", cands.String(), "last_err", lastErr)
	}
	if noLease {
		return 0, nil, nil, &RefusedError{Code: CodeNoPortFree, Text: fmt.Sprintf(
			"every port it may use (%s) is in use or leased to a tunnel that is away, and a tunnel without a lease takes none of those", cands)}
	}
	return 0, nil, nil, &RefusedError{Code: CodeNoPortFree, Text: fmt.Sprintf("every port it may use (%s) is in use", cands)}
}

// protoNames spells a protocol set as --proto does: "tcp", "udp", "tcp,udp".
func protoNames(p uint8) string {
	var names []string
	if p&ProtoTCP != 0 {
		names = append(names, "tcp")
	}
	if p&ProtoUDP != 0 {
		names = append(names, "udp")
	}
	return strings.Join(names, ",")
}

// acceptStreams serves the streams the agent opens after its control
// stream, until ctx (the session's) ends. Once it is welcomed, the only one
// it has a use for is its datagram stream. One opened before that is closed
// at once: nothing would read it until the handshake ended, and TLS+smux,
// which does not hold a peer to its stream windows, would meanwhile keep
// whatever the peer sends on it, up to the session's whole receive window
// (64 MiB) for each of max_pending_sessions sessions that never
// authenticate. (receiveDatagrams runs from the same moment, for the
// same reason.)
func (a *agentConn) acceptStreams(ctx context.Context) {
	for {
		st, err := a.sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		if !a.welcomed.Load() {
			st.Close()
			continue
		}
		go a.serveAgentStream(st)
	}
}

// serveAgentStream serves a stream the agent opened: its datagram stream,
// or nothing.
func (a *agentConn) serveAgentStream(st transport.Stream) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(a.r.config().HandshakeTimeout))
	var b [1]byte
	if _, err := io.ReadFull(st, b[:]); err != nil || b[0] != DatagramStreamMarker {
		return
	}
	st.SetReadDeadline(time.Time{})
	readDatagramStream(st, a.deliverUDP)
}

// drainMembers stops new clients to a's member for tunnel id (0: all of
// a's). A group whose every member drains closes its public port; clients
// in flight finish.
func (r *Relay) drainMembers(a *agentConn, id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for mid, m := range a.members {
		if id != 0 && mid != id {
			continue
		}
		if m.draining.Swap(true) {
			continue
		}
		a.logger().Info("agent draining tunnel", "name", m.g.key.Name, "clients", m.active.Load())
		if m.g.liveMembersLocked() == 0 {
			r.closeGroupLocked(m.g, "its agents are draining")
		}
	}
}

// tokenCurrentLocked refuses a whose token was revoked, or given another
// secret, by a reload since it authenticated. Its other rules, and its
// id, change in place.
func (r *Relay) tokenCurrentLocked(a *agentConn) *RefusedError {
	tok := a.token.token()
	if _, ok := r.tokens[KeyID(tok.Secret)]; ok {
		return nil
	}
	if r.rotatedLocked(tok.ID) {
		return &RefusedError{Code: CodeUnauthorized, Text: fmt.Sprintf("token %q has a new secret on the relay: ask the relay's operator for it", tok.ID)}
	}
	return &RefusedError{Code: CodeUnauthorized, Text: fmt.Sprintf("token %q was revoked on the relay: ask the relay's operator for a new one", tok.ID)}
}

// rotatedLocked reports whether the token of the running configuration
// with the id, whose old secret is no longer known, is that token given a
// new secret: not when another token, renamed by the latest reload, took
// the id (that one was revoked, and its id's secret is another user's).
func (r *Relay) rotatedLocked(id string) bool {
	for _, o := range r.tokens {
		if o.token().ID == id {
			return o.renamedFrom == ""
		}
	}
	return false
}

// dropMembers takes every member of a's session out of its group.
func (r *Relay) dropMembers(a *agentConn, goodbye bool) []*member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropMembersLocked(a, goodbye)
}

// dropMembersLocked is dropMembers with Relay.mu held. Members dropped with
// goodbye close their group at once when no live member is left; others
// leave it open for the rejoin window.
func (r *Relay) dropMembersLocked(a *agentConn, goodbye bool) []*member {
	if goodbye && a.instance != ([instanceLen]byte{}) {
		// The agent is back only to leave (refused on a tunnel, it stops):
		// what waits for it from an earlier session will not see it again,
		// and closes unless another agent that vanished may still return.
		now := time.Now()
		for _, g := range r.groups {
			if _, ok := g.away[a.instance]; !ok || g.token != a.token {
				continue
			}
			delete(g.away, a.instance)
			if g.orphan != nil && len(g.members) == 0 && !g.awaitsLocked(now) {
				r.closeGroupLocked(g, "its agent came back only to leave")
			}
		}
	}
	var dropped []*member
	for id, m := range a.members {
		delete(a.members, id)
		a.byID.Delete(id)
		if goodbye {
			m.draining.Store(true)
		}
		m.g.removeMemberLocked(m)
		dropped = append(dropped, m)
	}
	return dropped
}

// undoLeases puts back what the tunnels a's session opened did to the
// lease table, as far as no one has used it since: a tunnel still open (an
// agent joined it) keeps its lease, and a lease is restored only where its
// key and port have none.
func (r *Relay) undoLeases(a *agentConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	const why = "the agent stopped on a refusal: "
	for i := len(a.leased) - 1; i >= 0; i-- {
		c := a.leased[i]
		if r.groups[c.key] != nil {
			continue
		}
		if l, ok := r.leases.m[c.key]; ok && (c.prev == nil || l.Port != c.prev.Port) {
			r.leases.drop(c.key)
			a.logger().Info(why+"dropping the port lease its tunnel took", "name", c.key.Name, "port", l.Port)
		}
		if c.prev != nil {
			r.leases.restore(c.key, c.prev)
		}
		for _, d := range c.dropped {
			if r.leases.restore(d.k, d.l) {
				a.logger().Info(why+"a port lease dropped for its tunnel is back", "name", c.key.Name, "was_token", d.k.Token, "was", d.k.Name, "port", d.l.Port)
			}
		}
	}
	if len(a.leased) > 0 {
		r.markLeasesDirty()
	}
	a.leased = nil
}

// closeGroupLocked closes g's public port and starts its lease's lifetime.
func (r *Relay) closeGroupLocked(g *group, why string) {
	if g.closed {
		return
	}
	g.closed = true
	g.closeListeners()
	// Set before the count is read: a client ending meanwhile then
	// either is counted out already, or sees it and calls finished.
	g.shut.Store(true)
	if g.active.Load() > 0 {
		r.finishing[g] = struct{}{}
	}
	if g.orphan != nil {
		g.orphan.Stop()
	}
	close(g.joined)
	delete(r.groups, g.key)
	delete(r.ports, g.port)
	g.token.tunnels--
	if !g.noLease {
		r.leases.release(g.key, time.Now())
		r.markLeasesDirty()
	}
	// What the tunnel carried, for logs that answer who used what
	// without a line per client; clients still open are counted again
	// when they are done (group.finished).
	args := []any{"why", why, "clients_total", g.total.Load(), "bytes_in", g.bytesIn.Load(), "bytes_out", g.bytesOut.Load()}
	if n := g.active.Load(); n > 0 {
		args = append(args, "clients_open", n)
	}
	g.logger().Info("tunnel closed", args...)
}

func (r *Relay) markLeasesDirty() {
	select {
	case r.leaseDirty <- struct{}{}:
	default:
	}
}

// leaseWriter saves the lease table whenever it changed, coalescing bursts
// (a thousand agents reconnecting at once) into a few writes.
func (r *Relay) leaseWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.leaseDirty:
			r.saveLeases()
		}
	}
}

func (r *Relay) saveLeases() {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	data, file := r.leases.snapshot(), r.leases.file
	r.mu.Unlock()
	if err := saveLeases(file, data); err != nil {
		r.log.Error("port leases not saved; they will not survive a restart", "err", err)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
