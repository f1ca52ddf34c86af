package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

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
}

// Endpoint is a tunnel the relay granted.
type Endpoint struct {
	Name  string
	Local string
	Host  string
	Port  uint16
}

// URL is the address clients use: "tcp://host:port".
func (e Endpoint) URL() string {
	return "tcp://" + net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
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
	// OnReady, if set, is called once with every tunnel, when all are live.
	OnReady func([]Endpoint)
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
	}
	if c.FallbackDelay <= 0 || c.HandshakeTimeout <= 0 || c.DialLocalTimeout <= 0 {
		return errors.New("agent timeouts must be positive")
	}
	return c.TransportOptions.Validate()
}

// Agent keeps one session with a relay and carries its tunnels' clients to
// local servers.
type Agent struct {
	cfg AgentConfig
	log *slog.Logger

	mu      sync.Mutex
	tunnels map[uint32]TunnelSpec
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
	return &Agent{cfg: cfg, log: log}, nil
}

// Run connects, registers every tunnel, and carries clients until ctx ends
// (returning nil) or the session fails. A refusal by the relay is a
// *RefusedError; a relay that fails verification is a
// *transport.IdentityError.
func (a *Agent) Run(ctx context.Context) error {
	sess, err := a.dial(ctx)
	if err != nil {
		return err
	}
	defer sess.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	log := a.log.With("relay", a.cfg.Relay, "transport", sess.Kind())

	ctl, welcome, err := a.handshake(ctx, sess)
	if err != nil {
		return err
	}
	eps, err := a.register(ctl, welcome)
	if err != nil {
		return err
	}
	for _, e := range eps {
		log.Info("tunnel live", "name", e.Name, "local", e.Local, "public", e.URL())
	}
	if a.cfg.OnReady != nil {
		a.cfg.OnReady(eps)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctlErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctlErr <- a.controlLoop(ctl)
		sess.Close()
	}()
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			sess.Close()
			if cerr := <-ctlErr; cerr != nil && !transport.IsClosed(cerr) {
				var ref *RefusedError
				if errors.As(cerr, &ref) {
					return cerr
				}
				return fmt.Errorf("%w: %v", ErrSessionClosed, cerr)
			}
			return fmt.Errorf("%w: %v", ErrSessionClosed, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.carry(ctx, st)
		}()
	}
}

// dial opens a session with the configured transport.
func (a *Agent) dial(ctx context.Context) (transport.Session, error) {
	tlsConf, err := a.cfg.Verifier.ClientTLSConfig(a.cfg.Relay, ALPN)
	if err != nil {
		return nil, err
	}
	q := &transport.QUICDialer{TLS: tlsConf, Options: a.cfg.TransportOptions}
	t := &transport.TCPDialer{TLS: tlsConf, Options: a.cfg.TransportOptions}
	switch a.cfg.Transport {
	case TransportQUIC:
		return dialOne(ctx, q, a.cfg.Relay)
	case TransportTCP:
		return dialOne(ctx, t, a.cfg.Relay)
	}
	return DialAuto(ctx, a.cfg.Relay, a.cfg.FallbackDelay, a.log, q, t)
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
// first fails, returning whichever session comes up first. A relay that
// fails verification ends the attempt: another transport would not help.
func DialAuto(ctx context.Context, addr string, delay time.Duration, log *slog.Logger, first, second transport.Dialer) (transport.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   transport.Session
		err error
	}
	results := make(chan result, 2)
	start := func(d transport.Dialer) {
		go func() {
			s, err := dialOne(ctx, d, addr)
			results <- result{s, err}
		}()
	}
	// closeLate closes whatever the attempts still pending bring.
	closeLate := func(pending int) {
		for range pending {
			if r := <-results; r.s != nil {
				r.s.Close()
			}
		}
	}
	start(first)
	started, done := 1, 0
	timer := time.NewTimer(delay)
	defer timer.Stop()
	var errs []error
	for {
		select {
		case <-timer.C:
			if started == 1 {
				log.Info("no answer over "+first.Kind()+" yet; trying "+second.Kind(), "relay", addr)
				start(second)
				started++
			}
		case r := <-results:
			done++
			if r.err == nil {
				go closeLate(started - done)
				return r.s, nil
			}
			var idErr *transport.IdentityError
			if errors.As(r.err, &idErr) {
				go closeLate(started - done)
				return nil, idErr
			}
			errs = append(errs, r.err)
			// Refused over TCP means the host answered with nothing on the
			// port: QUIC, on the same port number, will not do better.
			if started == 2 && errors.Is(r.err, syscall.ECONNREFUSED) {
				return nil, errors.Join(errs...)
			}
			if started == 1 {
				log.Info(first.Kind()+" failed; trying "+second.Kind(), "relay", addr, "err", r.err)
				start(second)
				started++
				continue
			}
			if done == started {
				return nil, errors.Join(errs...)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
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
	if err := WriteMessage(ctl, &Hello{Version: ProtocolVersion, Software: a.cfg.Software, KeyID: KeyID(a.cfg.Token)}); err != nil {
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
func (a *Agent) expect(ctl transport.Stream, what string) (Message, error) {
	m, err := ReadMessage(ctl)
	if err != nil {
		return nil, fmt.Errorf("waiting for %s from the relay: %w", what, err)
	}
	if e, ok := m.(*Error); ok {
		return nil, &RefusedError{Code: e.Code, Text: e.Text}
	}
	return m, nil
}

func (a *Agent) register(ctl transport.Stream, w *Welcome) ([]Endpoint, error) {
	host := w.PublicHost
	if host == "" {
		host, _, _ = net.SplitHostPort(a.cfg.Relay)
	}
	tunnels := make(map[uint32]TunnelSpec, len(a.cfg.Tunnels))
	eps := make([]Endpoint, 0, len(a.cfg.Tunnels))
	for i, t := range a.cfg.Tunnels {
		req := uint32(i + 1)
		err := WriteMessage(ctl, &Register{Request: req, Name: t.Name, Protos: ProtoTCP, PortLow: t.Ports.Low, PortHigh: t.Ports.High,
			Allow: prefixStrings(t.Allow), Deny: prefixStrings(t.Deny)})
		if err != nil {
			return nil, fmt.Errorf("registering %s: %w", t.Name, err)
		}
		m, err := a.expect(ctl, "REGISTERED")
		if err != nil {
			var ref *RefusedError
			if errors.As(err, &ref) {
				ref.Text = fmt.Sprintf("tunnel %s (%s): %s", t.Name, t.Local, ref.Text)
			}
			return nil, err
		}
		r, ok := m.(*Registered)
		if !ok || r.Request != req {
			return nil, fmt.Errorf("%w: unexpected reply to REGISTER", ErrFrame)
		}
		tunnels[r.Tunnel] = t
		eps = append(eps, Endpoint{Name: t.Name, Local: t.Local, Host: host, Port: r.Port})
	}
	ctl.SetDeadline(time.Time{})
	a.mu.Lock()
	a.tunnels = tunnels
	a.mu.Unlock()
	return eps, nil
}

// controlLoop answers pings and reports the relay's ERROR or the stream's
// end.
func (a *Agent) controlLoop(ctl transport.Stream) error {
	for {
		m, err := ReadMessage(ctl)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *Ping:
			if err := WriteMessage(ctl, &Pong{Data: m.Data}); err != nil {
				return err
			}
		case *Error:
			return &RefusedError{Code: m.Code, Text: m.Text}
		}
	}
}

// carry serves one client stream: read its header, dial the local server,
// report the outcome in the status byte, then join the two.
func (a *Agent) carry(ctx context.Context, st transport.Stream) {
	st.SetReadDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	h, err := ReadStreamHeader(st)
	if err != nil {
		st.Close()
		a.log.Warn("dropping stream with a bad header", "err", err)
		return
	}
	st.SetReadDeadline(time.Time{})
	a.mu.Lock()
	t, ok := a.tunnels[h.Tunnel]
	a.mu.Unlock()
	if !ok {
		st.Close()
		a.log.Warn("dropping stream for an unknown tunnel", "tunnel", h.Tunnel)
		return
	}
	log := a.log.With("tunnel", t.Name, "client", h.Client.String())
	d := net.Dialer{Timeout: a.cfg.DialLocalTimeout}
	local, err := d.DialContext(ctx, "tcp", t.Local)
	if err != nil {
		st.Write([]byte{StatusUnreachable})
		st.Close()
		log.Warn("client closed: the local server did not accept the connection", "local", t.Local, "err", err)
		return
	}
	if tc, ok := local.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if _, err := st.Write([]byte{StatusConnected}); err != nil {
		local.Close()
		st.Close()
		return
	}
	start := time.Now()
	stats := Join(local, st)
	log.Debug("client closed", "duration", time.Since(start).Round(time.Millisecond),
		"bytes_in", stats.BToA, "bytes_out", stats.AToB)
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
