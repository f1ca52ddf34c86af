package transport

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

func quicConfig(o Options) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           o.HandshakeTimeout,
		MaxIdleTimeout:                 o.IdleTimeout,
		KeepAlivePeriod:                o.KeepAlive,
		MaxIncomingStreams:             int64(o.MaxIncomingStreams),
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     uint64(min(512<<10, o.StreamWindow)),
		MaxStreamReceiveWindow:         uint64(o.StreamWindow),
		InitialConnectionReceiveWindow: uint64(min(1<<20, o.SessionWindow)),
		MaxConnectionReceiveWindow:     uint64(o.SessionWindow),
		EnableDatagrams:                true,
		// QUIC's floor, not quic-go's 1280: a path whose MTU leaves less
		// than 1280 bytes of UDP payload (an IPv6 tunnel at the 1280-byte
		// minimum carries 1232) otherwise never completes a handshake.
		// Path MTU discovery raises the size from there in a few round
		// trips.
		InitialPacketSize: 1200,
	}
}

// QUICDialer dials QUIC sessions.
type QUICDialer struct {
	TLS     *tls.Config
	Options Options
}

func (d *QUICDialer) Kind() string { return KindQUIC }

// Dial opens a QUIC session to addr ("host:port").
func (d *QUICDialer) Dial(ctx context.Context, addr string) (Session, error) {
	if err := d.Options.Validate(); err != nil {
		return nil, err
	}
	c, err := dialQUIC(ctx, addr, d.TLS, quicConfig(d.Options))
	if err != nil {
		var te *quic.TransportError
		if errors.As(err, &te) {
			// A TransportError also matches net.ErrClosed, but a failed
			// dial is not the quiet end of a session.
			return nil, &dialError{err: te}
		}
		return nil, fmt.Errorf("quic: %w", err)
	}
	return newQUICSession(c), nil
}

// dialQUIC is quic.DialAddr on a socket of our own, so that it receives
// with GRO (gro_linux.go). The socket lives as long as the connection.
func dialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: newGROConn(uc)}
	c, err := tr.Dial(ctx, ua, tlsConf, conf)
	if err != nil {
		tr.Close()
		uc.Close()
		return nil, err
	}
	context.AfterFunc(c.Context(), func() {
		tr.Close()
		uc.Close()
	})
	return c, nil
}

// quicListener adapts *quic.Listener. Closing it stops new sessions only:
// the sessions it accepted share its socket, which is closed once the last
// of them ends.
type quicListener struct {
	l     *quic.Listener
	tr    *quic.Transport
	pc    net.PacketConn
	onErr func(net.Addr, error)

	closing atomic.Bool // set before the quic.Listener closes
	mu      sync.Mutex
	live    int
	closed  bool
}

// ListenQUIC listens for QUIC sessions on pc, which it then owns. onErr,
// when not nil, hears about connections whose handshake failed.
func ListenQUIC(pc net.PacketConn, tlsConf *tls.Config, o Options, onErr func(net.Addr, error)) (Listener, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	if uc, ok := pc.(*net.UDPConn); ok {
		tr.Conn = newGROConn(uc)
	}
	if len(o.ResetKey) > 0 {
		k := quic.StatelessResetKey(sha256.Sum256(append([]byte("relay stateless reset\x00"), o.ResetKey...)))
		tr.StatelessResetKey = &k
	}
	ql := &quicListener{tr: tr, pc: pc, onErr: onErr}
	if onErr != nil {
		tr.ConnContext = ql.connContext
	}
	l, err := tr.Listen(tlsConf, quicConfig(o))
	if err != nil {
		return nil, fmt.Errorf("quic: %w", err)
	}
	ql.l = l
	return ql, nil
}

// quic-go's Listener.Accept returns only connections whose handshake
// completed: one that failed (a TLS alert either way, a wrong ALPN, a
// protocol error, a peer gone silent) ends inside quic-go, unseen. What
// quic-go does show is the context it gives Transport.ConnContext, once per
// connection from the first Initial on, which it cancels with the
// connection's error when the connection ends, handshake or not. So each
// connection gets a quicHandshake, reachable from its Conn.Context(): Accept
// and the context's end race to settle it, and if the end wins, the
// handshake failed and onErr hears the error. This costs a context and an
// AfterFunc per connection and nothing per packet (a Config.Tracer, the
// other way to see a connection close, makes quic-go build a qlog event for
// every packet sent and received).
type quicHandshake struct {
	settled atomic.Bool
}

type quicHandshakeKey struct{}

func (l *quicListener) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	h := &quicHandshake{}
	addr := info.RemoteAddr
	context.AfterFunc(ctx, func() {
		if h.settled.Swap(true) || l.closing.Load() {
			return // accepted, or refused because the listener is closing
		}
		err := context.Cause(ctx)
		if errors.Is(err, &quic.TransportError{ErrorCode: quic.ConnectionRefused}) {
			// quic-go's own refusal: finished handshakes waiting for
			// Accept filled its queue. It refuses with the same error,
			// nothing to tell them apart by, when the listener closes
			// (not counted, above) and when a new connection's ID is
			// one a connection holds already; but the latter never ends
			// this context: quic-go v0.65 closes that connection before
			// it starts it, then waits for an end that never comes
			// (quic-go issue 5848).
			err = fmt.Errorf("%w: %w", ErrTooManyHandshakes, err)
		}
		if peerGaveUp(err) {
			err = fmt.Errorf("%w: %w", ErrPeerHungUp, err)
		}
		l.onErr(addr, fmt.Errorf("quic handshake: %w", err))
	})
	return context.WithValue(ctx, quicHandshakeKey{}, h), nil
}

// peerGaveUp reports whether err is the peer closing a connection in its
// handshake with Session.Close's code 0, which before the handshake ends
// travels as the transport error APPLICATION_ERROR (RFC 9000, 10.2.3).
func peerGaveUp(err error) bool {
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) {
		return appErr.Remote && appErr.ErrorCode == 0
	}
	var tErr *quic.TransportError
	return errors.As(err, &tErr) && tErr.Remote && tErr.ErrorCode == quic.ApplicationErrorErrorCode
}

func (l *quicListener) Accept(ctx context.Context) (Session, error) {
	for {
		c, err := l.l.Accept(ctx)
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) {
				return nil, ErrClosed
			}
			return nil, err
		}
		if h, ok := c.Context().Value(quicHandshakeKey{}).(*quicHandshake); ok && h.settled.Swap(true) {
			continue // it ended while queued, and was counted as a failure
		}
		l.mu.Lock()
		l.live++
		l.mu.Unlock()
		context.AfterFunc(c.Context(), func() {
			l.mu.Lock()
			l.live--
			last := l.closed && l.live == 0
			l.mu.Unlock()
			if last {
				l.closeSocket()
			}
		})
		return newQUICSession(c), nil
	}
}

func (l *quicListener) Addr() net.Addr { return l.l.Addr() }

func (l *quicListener) Close() error {
	l.closing.Store(true)
	err := l.l.Close()
	l.mu.Lock()
	first := !l.closed
	l.closed = true
	idle := l.live == 0
	l.mu.Unlock()
	if first && idle {
		l.closeSocket()
	}
	return err
}

func (l *quicListener) closeSocket() {
	l.tr.Close()
	l.pc.Close()
}

type quicSession struct {
	c *quic.Conn
}

func newQUICSession(c *quic.Conn) *quicSession { return &quicSession{c: c} }

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, s.wrapErr(err)
	}
	return &quicStream{s: st, conn: s.c}, nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, s.wrapErr(err)
	}
	return &quicStream{s: st, conn: s.c}, nil
}

func (s *quicSession) SendDatagram(p []byte) error {
	err := s.c.SendDatagram(p)
	if err == nil {
		return nil // no errors.As on the hot path: it allocates
	}
	var tooLarge *quic.DatagramTooLargeError
	if errors.As(err, &tooLarge) {
		return &DatagramTooLargeError{Size: len(p), Max: int(tooLarge.MaxDatagramPayloadSize)}
	}
	return s.wrapErr(err)
}

func (s *quicSession) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	p, err := s.c.ReceiveDatagram(ctx)
	return p, s.wrapErr(err)
}

func (s *quicSession) ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error) {
	cs := s.c.ConnectionState().TLS
	return cs.ExportKeyingMaterial(label, context, length)
}

func (s *quicSession) ConnectionState() tls.ConnectionState { return s.c.ConnectionState().TLS }
func (s *quicSession) LocalAddr() net.Addr                  { return s.c.LocalAddr() }
func (s *quicSession) RemoteAddr() net.Addr                 { return s.c.RemoteAddr() }
func (s *quicSession) Kind() string                         { return KindQUIC }
func (s *quicSession) Done() <-chan struct{}                { return s.c.Context().Done() }

func (s *quicSession) CloseWithError(code uint64, reason string) error {
	return s.c.CloseWithError(quic.ApplicationErrorCode(code), reason)
}

func (s *quicSession) Close() error { return s.CloseWithError(0, "") }

// wrapErr makes a closed session look like net.ErrClosed to callers, keeping
// the peer's reason in the message.
func (s *quicSession) wrapErr(err error) error {
	if err == nil {
		return nil
	}
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	switch {
	case errors.As(err, &appErr):
		e := &closedError{msg: "session closed", code: uint64(appErr.ErrorCode), byPeer: appErr.Remote}
		if appErr.ErrorMessage != "" {
			e.msg += ": " + appErr.ErrorMessage
		}
		return e
	case errors.As(err, &idle):
		return &closedError{msg: "session timed out"}
	}
	if s.c.Context().Err() != nil {
		return fmt.Errorf("%v: %w", err, net.ErrClosed)
	}
	return err
}

// closedError is net.ErrClosed that says why, without net's own words ("use
// of closed network connection"), which read as a fault of ours in the logs
// it ends up in. code is CloseWithError's, when byPeer.
type closedError struct {
	msg    string
	code   uint64
	byPeer bool
}

func (e *closedError) Error() string { return e.msg }
func (e *closedError) Unwrap() error { return net.ErrClosed }

// PeerClosed reports the code the peer gave CloseWithError, when err is the
// end of a session it closed and the transport carries the code (QUIC's
// does; TLS+smux's does not, and reports false).
func PeerClosed(err error) (code uint64, ok bool) {
	var e *closedError
	if errors.As(err, &e) && e.byPeer {
		return e.code, true
	}
	return 0, false
}

// quicStream adds CloseWrite and a both-ways Close to a QUIC stream. quic-go's
// own Close only ends the send direction, and must not run concurrently with
// Write; wmu enforces that.
type quicStream struct {
	s    *quic.Stream
	conn *quic.Conn

	wmu       sync.Mutex
	closeOnce sync.Once
}

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.s.Read(p)
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		// The peer reset its sending side: an Abort, or a Close that
		// interrupted its Write. Either way the data did not all come.
		return n, ErrAborted
	}
	return n, quicStreamErr(err)
}

func (s *quicStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.s.Write(p)
	return n, quicStreamErr(err)
}

// CloseWrite sends FIN after everything written so far.
func (s *quicStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.s.Close()
}

// Close stops reading (the peer's writes fail) and ends the send direction:
// with FIN when no Write is in progress, otherwise by resetting it so the
// blocked Write returns.
func (s *quicStream) Close() error {
	s.closeOnce.Do(func() {
		s.s.CancelRead(0)
		if s.wmu.TryLock() {
			s.s.Close()
			s.wmu.Unlock()
		} else {
			s.s.CancelWrite(0)
		}
	})
	return nil
}

// Abort resets both directions: the peer's reads fail (RESET_STREAM) and
// its writes too (STOP_SENDING).
func (s *quicStream) Abort() error {
	s.closeOnce.Do(func() {
		s.s.CancelRead(abortCode)
		s.s.CancelWrite(abortCode)
	})
	return nil
}

// abortCode is the application error code of an Abort's resets.
const abortCode = 1

func (s *quicStream) LocalAddr() net.Addr                { return s.conn.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr               { return s.conn.RemoteAddr() }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.s.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }

// quicStreamErr maps stream cancellation to net.ErrClosed, so callers need
// not know quic-go's error types.
func quicStreamErr(err error) error {
	if err == nil {
		return nil
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		return fmt.Errorf("stream %s: %w", se.Error(), net.ErrClosed)
	}
	if errors.Is(err, quic.ErrStreamClosed) {
		return fmt.Errorf("stream closed: %w", net.ErrClosed)
	}
	return err
}

// dialError reports a QUIC handshake failure, unwrapping to its cause (a
// *IdentityError, a TLS alert) but not to net.ErrClosed.
type dialError struct{ err *quic.TransportError }

func (e *dialError) Error() string { return "quic: " + e.err.Error() }

func (e *dialError) Unwrap() []error {
	var out []error
	for _, c := range e.err.Unwrap() {
		if c != nil && c != net.ErrClosed {
			out = append(out, c)
		}
	}
	return out
}
