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
	// BindHost is the address public tunnel ports listen on ("" or
	// "0.0.0.0": every IPv4 address; "::": every address).
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
	return nil
}

// MaxAgentStreams is how many streams a relay lets an agent open at once:
// the control stream, with room to spare. Relays pass it as the transport's
// MaxIncomingStreams.
const MaxAgentStreams = 4

// MinSecretLen is the shortest token secret accepted.
const MinSecretLen = 16

// Relay accepts agent sessions and gives their tunnels public ports.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	tokens  map[[keyIDLen]byte]*tokenState
	pending chan struct{} // slots for sessions not yet authenticated
	// dummySecret keeps the proof check's cost the same for unknown keys.
	dummySecret string

	mu      sync.Mutex
	ports   map[uint16]*relayTunnel
	closing bool

	nextTunnel atomic.Uint32
	wg         sync.WaitGroup
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
		cfg:         cfg,
		log:         log,
		tokens:      make(map[[keyIDLen]byte]*tokenState),
		pending:     make(chan struct{}, cfg.MaxPendingSessions),
		dummySecret: rand.Text(),
		ports:       make(map[uint16]*relayTunnel),
	}
	// A copy, so the caller's slice can change without touching the relay.
	r.cfg.Tokens = slices.Clone(cfg.Tokens)
	for i := range r.cfg.Tokens {
		t := &r.cfg.Tokens[i]
		r.tokens[KeyID(t.Secret)] = &tokenState{tok: t}
	}
	return r, nil
}

// Serve accepts sessions from ln until ctx ends, then closes ln and every
// session and returns once they are gone.
func (r *Relay) Serve(ctx context.Context, ln transport.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.closing = true
		r.mu.Unlock()
		ln.Close()
	})
	defer stop()
	defer r.wg.Wait()
	for {
		s, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting sessions: %w", err)
		}
		select {
		case r.pending <- struct{}{}:
		default:
			// Too many sessions still authenticating: refuse rather than queue.
			s.CloseWithError(uint64(CodeLimit), "too many sessions in handshake")
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

// TunnelInfo describes one live tunnel.
type TunnelInfo struct {
	ID        uint32
	Name      string
	TokenID   string
	Port      uint16
	Transport string
	Agent     string
	Since     time.Time
	// Connections is how many public clients are connected now.
	Connections int64
	// Refused counts public clients turned away, by reason (Refused*).
	Refused map[string]int64
}

// Tunnels lists the live tunnels, by port.
func (r *Relay) Tunnels() []TunnelInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]TunnelInfo, 0, len(r.ports))
	for _, t := range r.ports {
		out = append(out, TunnelInfo{
			ID: t.id, Name: t.name, TokenID: t.agent.token.tok.ID, Port: t.port,
			Transport: t.agent.sess.Kind(), Agent: t.agent.sess.RemoteAddr().String(), Since: t.since,
			Connections: t.active.Load(), Refused: t.gate.counts(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// agentConn is one authenticated agent session.
type agentConn struct {
	r     *Relay
	sess  transport.Session
	ctl   transport.Stream
	token *tokenState
	log   *slog.Logger

	wmu     sync.Mutex // serialises control frames
	mu      sync.Mutex
	tunnels map[uint32]*relayTunnel
}

func (r *Relay) serveSession(ctx context.Context, s transport.Session) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	log := r.log.With("agent", s.RemoteAddr().String(), "transport", s.Kind())

	a, err := r.handshake(ctx, s, log)
	<-r.pending
	if err != nil {
		var sent *sentRefusal
		if !errors.As(err, &sent) {
			log.Info("agent handshake failed", "err", err)
		}
		return
	}
	a.log.Info("agent connected")
	// From here on, a shutdown is announced before the session goes.
	stop()
	stopNotice := context.AfterFunc(ctx, func() {
		a.ctl.SetWriteDeadline(time.Now().Add(time.Second))
		a.send(&Error{Code: CodeShutdown, Text: "the relay is shutting down"})
		s.CloseWithError(uint64(CodeShutdown), "the relay is shutting down")
	})
	defer stopNotice()
	// Only the relay opens streams after the control stream.
	go func() {
		for {
			st, err := s.AcceptStream(ctx)
			if err != nil {
				return
			}
			st.Close()
		}
	}()
	err = a.controlLoop(ctx)
	a.closeTunnels()
	var sent *sentRefusal
	switch {
	case errors.As(err, &sent):
	case err == nil || errors.Is(err, io.EOF) || transport.IsClosed(err) || ctx.Err() != nil:
		a.log.Info("agent disconnected")
	default:
		a.log.Warn("agent disconnected", "err", err)
	}
}

// handshake runs hello, challenge, auth and welcome on the control stream.
func (r *Relay) handshake(ctx context.Context, s transport.Session, log *slog.Logger) (*agentConn, error) {
	deadline := time.Now().Add(r.cfg.HandshakeTimeout)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ctl, err := s.AcceptStream(hctx)
	if err != nil {
		return nil, fmt.Errorf("waiting for control stream: %w", err)
	}
	ctl.SetDeadline(deadline)
	a := &agentConn{r: r, sess: s, ctl: ctl, log: log, tunnels: make(map[uint32]*relayTunnel)}

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
			r.cfg.Software, ProtocolVersion, hello.Software, hello.Version))
	}
	ch := Challenge{Version: ProtocolVersion, Software: r.cfg.Software}
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
	ts, known := r.tokens[hello.KeyID]
	secret := r.dummySecret
	if known {
		secret = ts.tok.Secret
	}
	want := Proof(secret, ch.Nonce, ekm)
	if !hmac.Equal(want[:], auth.Proof[:]) || !known {
		return nil, a.refuse(CodeUnauthorized, "token not accepted: check --token (or RELAY_TOKEN) against the [[tokens]] in the relay's relay.toml")
	}
	a.token = ts
	a.log = log.With("token", ts.tok.ID)
	if err := a.send(&Welcome{PublicHost: r.cfg.PublicHost}); err != nil {
		return nil, fmt.Errorf("sending welcome: %w", err)
	}
	ctl.SetDeadline(time.Time{})
	return a, nil
}

func (a *agentConn) send(m Message) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return WriteMessage(a.ctl, m)
}

// sentRefusal is a refusal this relay sent and logged.
type sentRefusal struct{ *RefusedError }

func (e *sentRefusal) Unwrap() error { return e.RefusedError }

// refuse logs why the session ends, tells the agent, and closes it. The
// agent closes its end on reading the ERROR; waiting for that (briefly)
// keeps the frame from being lost to a reset.
func (a *agentConn) refuse(code ErrorCode, text string) error {
	a.log.Warn("agent refused", "code", code.String(), "reason", text)
	a.ctl.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if err := a.send(&Error{Code: code, Text: text}); err == nil {
		a.ctl.CloseWrite()
		a.ctl.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, io.LimitReader(a.ctl, 64<<10))
	}
	a.sess.CloseWithError(uint64(code), text)
	return &sentRefusal{&RefusedError{Code: code, Text: text}}
}

func (a *agentConn) controlLoop(ctx context.Context) error {
	for {
		m, err := ReadMessage(a.ctl)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				return a.refuse(CodeProtocol, err.Error())
			}
			return err
		}
		switch m := m.(type) {
		case *Register:
			reply := a.register(ctx, m)
			if err := a.send(reply); err != nil {
				return err
			}
		case *Ping:
			if err := a.send(&Pong{Data: m.Data}); err != nil {
				return err
			}
		case *Pong:
		case *Error:
			return &RefusedError{Code: m.Code, Text: m.Text}
		default:
			return a.refuse(CodeProtocol, fmt.Sprintf("unexpected message type %#x from agent", m.msgType()))
		}
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether name is a valid tunnel name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

func (a *agentConn) register(ctx context.Context, m *Register) Message {
	fail := func(code ErrorCode, format string, args ...any) Message {
		text := fmt.Sprintf(format, args...)
		a.log.Warn("tunnel refused", "name", m.Name, "code", code.String(), "reason", text)
		return &Error{Request: m.Request, Code: code, Text: text}
	}
	if !ValidName(m.Name) {
		return fail(CodeBadRequest, "tunnel name %q is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", m.Name)
	}
	tok := a.token.tok
	if !matchName(tok.Names, m.Name) {
		return fail(CodeForbidden, "token %q may not use the tunnel name %q: its names rule allows only %s; pick a --name that matches",
			tok.ID, m.Name, strings.Join(tok.Names, ", "))
	}
	if m.Protos&ProtoUDP != 0 && tok.DenyUDP {
		return fail(CodeForbidden, "token %q may not open UDP tunnels (its udp rule is false)", tok.ID)
	}
	if m.Protos != ProtoTCP {
		return fail(CodeUnsupported, "this relay carries TCP tunnels only; protocol set %#x was requested", m.Protos)
	}
	allow, err := ParsePrefixes(m.Allow)
	if err != nil {
		return fail(CodeBadRequest, "allow list: %v", err)
	}
	deny, err := ParsePrefixes(m.Deny)
	if err != nil {
		return fail(CodeBadRequest, "deny list: %v", err)
	}
	gate := newClientGate([]ClientLimits{a.r.cfg.Clients, tok.Clients, {Allow: allow, Deny: deny}}, a.token)
	t, err := a.r.allocate(a, m, gate)
	if err != nil {
		var ref *RefusedError
		if errors.As(err, &ref) {
			return fail(ref.Code, "%s", ref.Text)
		}
		return fail(CodeInternal, "relay failed to open a port: %v", err)
	}
	a.mu.Lock()
	a.tunnels[t.id] = t
	a.mu.Unlock()
	a.log.Info("tunnel open", "name", t.name, "port", t.port)
	a.r.wg.Add(1)
	go func() {
		defer a.r.wg.Done()
		t.serve(ctx)
	}()
	return &Registered{Request: m.Request, Tunnel: t.id, Protos: ProtoTCP, Port: t.port}
}

func (a *agentConn) closeTunnels() {
	a.mu.Lock()
	ts := make([]*relayTunnel, 0, len(a.tunnels))
	for _, t := range a.tunnels {
		ts = append(ts, t)
	}
	a.tunnels = map[uint32]*relayTunnel{}
	a.mu.Unlock()
	for _, t := range ts {
		a.r.release(t)
	}
}

// allocate picks and binds a public port for m: the requested one, or a
// free one within the requested range, or any free allowed port.
func (r *Relay) allocate(a *agentConn, m *Register, gate *clientGate) (*relayTunnel, error) {
	tok := a.token.tok
	allowed, whose := r.cfg.Ports, "this relay allows"
	if len(tok.Ports) > 0 {
		allowed, whose = tok.Ports, fmt.Sprintf("token %q may use (its ports rule)", tok.ID)
	}
	cands := allowed
	single := m.PortLow != 0 && m.PortLow == m.PortHigh
	if m.PortLow != 0 {
		if m.PortHigh < m.PortLow {
			return nil, &RefusedError{Code: CodeBadRequest, Text: fmt.Sprintf("port range %d-%d is empty", m.PortLow, m.PortHigh)}
		}
		want := PortRange{m.PortLow, m.PortHigh}
		cands = allowed.Intersect(want)
		if len(cands) == 0 || (single && !allowed.Contains(m.PortLow)) {
			return nil, &RefusedError{Code: CodePortNotAllowed, Text: fmt.Sprintf(
				"port %s is outside the ports %s (%s): ask for one of those, or none", want, whose, allowed)}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return nil, &RefusedError{Code: CodeShutdown, Text: "the relay is shutting down"}
	}
	if tok.MaxTunnels > 0 && a.token.tunnels >= tok.MaxTunnels {
		return nil, &RefusedError{Code: CodeLimit, Text: fmt.Sprintf(
			"token %q has %d tunnel(s) open, its max_tunnels = %d: close one first", tok.ID, a.token.tunnels, tok.MaxTunnels)}
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
		if _, used := r.ports[port]; used {
			if single {
				return nil, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
					"port %d is already taken by another tunnel on this relay: choose another --port, or leave it out", port)}
			}
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.cfg.BindHost, strconv.Itoa(int(port))))
		if err != nil {
			lastErr = err
			if single {
				return nil, &RefusedError{Code: CodePortTaken, Text: fmt.Sprintf(
					"port %d is in use on the relay host: choose another --port, or leave it out", port)}
			}
			continue
		}
		t := &relayTunnel{
			id: r.nextTunnel.Add(1), name: m.Name, port: port, ln: ln, agent: a, gate: gate,
			since: time.Now(), log: a.log.With("tunnel", m.Name, "port", port),
		}
		r.ports[port] = t
		a.token.tunnels++
		return t, nil
	}
	if lastErr != nil {
		r.log.Warn("no public port could be bound", "ports", cands.String(), "last_err", lastErr)
	}
	return nil, &RefusedError{Code: CodeNoPortFree, Text: fmt.Sprintf("every allowed port in %s is in use", cands)}
}

// release closes t's listener and frees its port for the next tunnel. The
// clients it carried end with the agent's session.
func (r *Relay) release(t *relayTunnel) {
	t.ln.Close()
	r.mu.Lock()
	if r.ports[t.port] == t {
		delete(r.ports, t.port)
		t.agent.token.tunnels--
	}
	r.mu.Unlock()
	t.log.Info("tunnel closed")
}

type relayTunnel struct {
	gate   *clientGate
	active atomic.Int64
	id     uint32
	name   string
	port   uint16
	ln     net.Listener
	agent  *agentConn
	since  time.Time
	log    *slog.Logger
}

func (t *relayTunnel) serve(ctx context.Context) {
	var lastSummary time.Time
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return
		}
		client := addrPort(c.RemoteAddr())
		release, reason := t.gate.admit(client.Addr())
		if reason != "" {
			// Closed at once, before any work: a flood costs an accept
			// and a close.
			c.Close()
			t.log.Debug("client refused", "client", client.String(), "reason", reason)
			// One line per 10 s at most, so a flood cannot flood the log.
			if now := time.Now(); now.Sub(lastSummary) >= 10*time.Second {
				lastSummary = now
				t.log.Info("public clients refused so far", "by_reason", t.gate.counts(), "latest", client.String())
			}
			continue
		}
		t.active.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer t.active.Add(-1)
			defer release()
			t.carry(ctx, c)
		}()
	}
}

// carry opens a stream to the agent for client c and joins the two.
func (t *relayTunnel) carry(ctx context.Context, c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	client := addrPort(c.RemoteAddr())
	octx, cancel := context.WithTimeout(ctx, t.agent.r.cfg.OpenStreamTimeout)
	st, err := t.agent.sess.OpenStream(octx)
	cancel()
	if err != nil {
		c.Close()
		t.log.Warn("client dropped: could not open a stream to the agent", "client", client.String(), "err", err)
		return
	}
	hdr := AppendStreamHeader(make([]byte, 0, maxStreamHeader), StreamHeader{Tunnel: t.id, Client: client})
	if _, err := st.Write(hdr); err != nil {
		c.Close()
		st.Close()
		t.log.Warn("client dropped: writing stream header", "client", client.String(), "err", err)
		return
	}
	// A dead agent session must not leave clients hanging.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	start := time.Now()
	stats := Join(c, &statusStream{Stream: st})
	if errors.Is(stats.Err, errLocalUnreachable) {
		t.log.Info("client closed: the agent could not reach its local server", "client", client.String())
		return
	}
	t.log.Debug("client closed", "client", client.String(), "duration", time.Since(start).Round(time.Millisecond),
		"bytes_in", stats.AToB, "bytes_out", stats.BToA, "err", stats.Err)
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

// statusStream consumes the agent's status byte before the first payload
// byte, turning a refusal into an error so Join closes the client at once.
// Only Join's stream-to-client direction reads it.
type statusStream struct {
	transport.Stream
	checked bool
}

func (s *statusStream) Read(p []byte) (int, error) {
	if !s.checked {
		var b [1]byte
		if _, err := io.ReadFull(s.Stream, b[:]); err != nil {
			return 0, fmt.Errorf("reading agent status: %w", err)
		}
		s.checked = true
		if b[0] != StatusConnected {
			return 0, errLocalUnreachable
		}
	}
	return s.Stream.Read(p)
}

var errLocalUnreachable = errors.New("the agent could not reach its local server")
