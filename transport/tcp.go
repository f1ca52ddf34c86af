package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relaytun/relay/internal/rawfd"
	"github.com/xtaci/smux"
)

// TLS+smux sessions.
//
// smux has no stream resets and no datagrams, and its own half-close (FIN)
// discards data still unread when the second FIN of a stream meets the
// first (smux v1.5.56 stream.tryHalfCloseCleanup). So this transport never
// uses smux's CloseWrite: half-close, reset and datagrams travel on a signal
// stream that the dialer opens before anything else and both sides read for
// the life of the session. It starts with the 4 bytes "RSIG" from the dialer,
// then carries frames in both directions:
//
//	+--------+----------------+-----------------+
//	| type:1 | length:2 (BE)  | payload:length  |
//	+--------+----------------+-----------------+
//
//	type 1 RESET     payload: stream id:4 (BE). The sender closed the stream
//	                 before reading to its end: the receiver's writes on it
//	                 fail from now on, blocked ones at once. Its reads go on
//	                 to the sender's end of data, as with QUIC's STOP_SENDING.
//	type 2 DATAGRAM  payload: the datagram (at most MaxTCPDatagram bytes).
//	type 3 FIN       payload: stream id:4 (BE). The sender will write no
//	                 more on the stream (CloseWrite).
//	type 4 ABORT     payload: stream id:4 (BE). The sender gave up on the
//	                 stream (Abort): the receiver's reads fail from now on,
//	                 data still buffered or on its way is dropped, and its
//	                 writes fail as after a RESET. Sent only to a peer that
//	                 offered it in ALPN (abortsALPNSuffix, records.go):
//	                 builds before it close the session on an unknown type.
//
// A FIN is written only after every data frame before it has been written to
// the connection, and the receiving session queues data frames before it
// reads the signal stream's next bytes, so a stream's data is always
// buffered by the time its FIN is seen. Any other type, or a RESET or FIN
// whose length is not 4, closes the session. Datagrams on this transport
// are reliable and ordered, so one slow datagram delays the ones behind it
// (head-of-line blocking); QUIC has no such delay.

const (
	sigMagic      = "RSIG"
	sigReset      = 1
	sigDatagram   = 2
	sigFIN        = 3
	sigAbort      = 4
	sigHeaderSize = 3
	smuxFrameSize = 32 << 10
	// MaxTCPDatagram is the largest datagram the TCP transport carries.
	MaxTCPDatagram = 65535
)

func smuxConfig(o Options) *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2
	c.KeepAliveInterval = o.KeepAlive
	c.KeepAliveTimeout = o.IdleTimeout
	c.MaxFrameSize = smuxFrameSize
	c.MaxStreamBuffer = o.StreamWindow
	c.MaxReceiveBuffer = o.SessionWindow
	return c
}

// TCPDialer dials TLS+smux sessions.
type TCPDialer struct {
	TLS     *tls.Config
	Options Options
	// Proxy, when set, is an HTTP, HTTPS or SOCKS5 proxy (ParseProxy) to
	// reach the relay through.
	Proxy *url.URL
	// proxyRoots, for tests, are the certificates an https:// proxy's may
	// be signed by; nil: the system's.
	proxyRoots *x509.CertPool
}

func (d *TCPDialer) Kind() string { return KindTCP }

// Dial connects to addr over TCP, runs the TLS handshake and starts smux.
func (d *TCPDialer) Dial(ctx context.Context, addr string) (Session, error) {
	if err := d.Options.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.Options.HandshakeTimeout)
	defer cancel()
	var nd net.Dialer
	var raw net.Conn
	var err error
	if d.Proxy != nil {
		raw, err = dialProxy(ctx, &nd, d.Proxy, addr, d.proxyRoots)
		if err != nil {
			return nil, &ProxyError{Proxy: d.Proxy.Redacted(), Err: err}
		}
	} else if raw, err = nd.DialContext(ctx, "tcp", addr); err != nil {
		return nil, err
	}
	setTCPOptions(raw)
	bc := newBatchConn(raw)
	tlsConf := d.TLS
	if d.Proxy != nil {
		bc.quickAck.Store(true)
		tlsConf = offerViaProxy(tlsConf)
	}
	if !d.Options.plainTLS {
		tlsConf = offerRecords(tlsConf, !d.Options.noAborts)
	}
	tc := tls.Client(bc, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		bc.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	conn, err := switchToRecords(ctx, bc, tc, true)
	if err != nil {
		bc.Close()
		return nil, err
	}
	ms, err := smux.Client(conn, smuxConfig(d.Options))
	if err != nil {
		conn.Close()
		return nil, err
	}
	sig, err := ms.OpenStream()
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("opening signal stream: %w", err)
	}
	if _, err := sig.Write([]byte(sigMagic)); err != nil {
		ms.Close()
		return nil, fmt.Errorf("opening signal stream: %w", err)
	}
	return newSmuxSession(ms, tc, conn, sig, true, d.Options), nil
}

// switchToRecords returns what smux is to run on: the TLS connection, or,
// when the handshake chose records (records.go), c with records.
func switchToRecords(ctx context.Context, c *batchConn, tc *tls.Conn, dialer bool) (io.ReadWriteCloser, error) {
	if !usesRecords(tc.ConnectionState()) {
		return frameConn{tc}, nil
	}
	rc, err := newRecordConn(c, tc.ConnectionState(), dialer)
	if err != nil {
		return nil, err
	}
	if !dialer {
		return rc, rc.sendHello()
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(past) })
	err = rc.readHello()
	if !stop() {
		return nil, fmt.Errorf("records: waiting for the hello: %w", ctx.Err())
	}
	return rc, err
}

// tcpListener accepts TLS+smux sessions. Handshakes run in their own
// goroutines, at most Options.MaxHandshakes at once, each bounded by
// Options.HandshakeTimeout, so slow or silent peers cannot stall Accept.
type tcpListener struct {
	ln    net.Listener
	tls   *tls.Config
	opts  Options
	ready chan Session
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
	// OnHandshakeError, if set, is told why a handshake failed.
	onErr func(net.Addr, error)
}

// ListenTCP serves TLS+smux on ln, which it then owns. onErr, when not nil,
// hears about failed handshakes (for logs and metrics).
func ListenTCP(ln net.Listener, tlsConf *tls.Config, o Options, onErr func(net.Addr, error)) (Listener, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tlsConf = markViaProxy(tlsConf)
	if !o.plainTLS {
		tlsConf = serveRecords(tlsConf, !o.noAborts)
	}
	l := &tcpListener{
		ln:    ln,
		tls:   tlsConf,
		opts:  o,
		ready: make(chan Session),
		slots: make(chan struct{}, o.MaxHandshakes),
		done:  make(chan struct{}),
		onErr: onErr,
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func (l *tcpListener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if RetryAccept(err, &backoff, l.done) {
				continue
			}
			l.Close()
			return
		}
		backoff = 0
		select {
		case l.slots <- struct{}{}:
		default:
			// Too many handshakes in progress: refuse rather than queue.
			c.Close()
			l.handshakeFailed(c.RemoteAddr(), ErrTooManyHandshakes)
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			setTCPOptions(c)
			c := newBatchConn(c)
			s, err := l.handshake(c)
			<-l.slots
			if err != nil {
				c.Close()
				l.handshakeFailed(c.RemoteAddr(), err)
				return
			}
			select {
			case l.ready <- s:
			case <-l.done:
				s.Close()
			}
		}()
	}
}

// ErrTooManyHandshakes is what a TCP listener's onErr hears for a
// connection it closed at once because Options.MaxHandshakes others were
// in their handshake, and a QUIC listener's for one quic-go refused because
// the connections that finished their handshake but were not yet accepted
// filled its queue.
var ErrTooManyHandshakes = errors.New("too many handshakes in progress")

// ErrPeerHungUp is what a listener's onErr hears for a peer that closed the
// connection in its handshake without a word (no TLS alert, no QUIC error
// code): mostly a dialer whose attempt over the other transport came up
// first.
var ErrPeerHungUp = errors.New("the peer hung up")

func (l *tcpListener) handshakeFailed(a net.Addr, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		err = fmt.Errorf("%w: %w", ErrPeerHungUp, err)
	}
	if l.onErr != nil {
		l.onErr(a, err)
	}
}

func (l *tcpListener) handshake(c *batchConn) (*smuxSession, error) {
	deadline := time.Now().Add(l.opts.HandshakeTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	go func() {
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	tc := tls.Server(c, l.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	conn, err := switchToRecords(ctx, c, tc, false)
	if err != nil {
		return nil, err
	}
	ms, err := smux.Server(conn, smuxConfig(l.opts))
	if err != nil {
		return nil, err
	}
	ms.SetDeadline(deadline)
	sig, err := ms.AcceptStream()
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("waiting for signal stream: %w", err)
	}
	sig.SetReadDeadline(deadline)
	var magic [len(sigMagic)]byte
	if _, err := io.ReadFull(sig, magic[:]); err != nil || string(magic[:]) != sigMagic {
		ms.Close()
		if err == nil {
			err = errors.New("bad signal stream preamble")
		}
		return nil, fmt.Errorf("waiting for signal stream: %w", err)
	}
	if !stop() {
		// The deadline fired between the last read and now.
		ms.Close()
		return nil, fmt.Errorf("handshake: %w", ctx.Err()) // timed out, or the listener closing
	}
	c.SetDeadline(time.Time{})
	sig.SetReadDeadline(time.Time{})
	ms.SetDeadline(time.Time{})
	return newSmuxSession(ms, tc, conn, sig, false, l.opts), nil
}

func (l *tcpListener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-l.ready:
		return s, nil
	case <-l.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *tcpListener) Addr() net.Addr { return l.ln.Addr() }

func (l *tcpListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

type smuxSession struct {
	ms     *smux.Session
	tc     *tls.Conn          // the handshake's: state, addresses
	conn   io.ReadWriteCloser // what smux runs on: tc, or records after it
	sig    *smux.Stream
	client bool
	opts   Options
	aborts bool // the peer understands ABORT

	sigMu    sync.Mutex // serialises frames on sig
	sigBuf   []byte     // the last signal frame's buffer, reused; under sigMu
	accepted chan *smuxStream
	dgrams   *datagramQueue

	mu          sync.Mutex
	streams     map[uint32]*smuxStream
	maxPeerID   uint32                  // highest stream id the peer opened that we registered
	peerStreams int                     // streams the peer opened that are registered
	early       map[uint32]byte         // signals that arrived before their stream was registered
	lingering   map[uint32]*smux.Stream // aborted here, waiting for the peer's FIN
	sigErr      error                   // what ended the signal loop
	// skipped are peer ids below maxPeerID not seen yet: streams opened
	// at once can reach us out of id order, and a signal for one of those
	// must wait for it like one for an id above maxPeerID.
	skipped map[uint32]struct{}
	// Our own streams have the same gap: smux sends a stream's SYN inside
	// OpenStream, before we can register it, so the peer's answer (a
	// RESET from a peer over its stream limit) can come first. maxOwnID
	// and ownSkipped mark the ids that may still be on their way to
	// registration, as maxPeerID and skipped do for the peer's.
	maxOwnID   uint32
	ownSkipped map[uint32]struct{}

	done      chan struct{}
	closeOnce sync.Once
}

const maxEarly = 4096

func newSmuxSession(ms *smux.Session, tc *tls.Conn, conn io.ReadWriteCloser, sig *smux.Stream, client bool, o Options) *smuxSession {
	s := &smuxSession{
		ms:       ms,
		tc:       tc,
		conn:     conn,
		sig:      sig,
		client:   client,
		opts:     o,
		aborts:   strings.HasSuffix(tc.ConnectionState().NegotiatedProtocol, abortsALPNSuffix),
		accepted: make(chan *smuxStream, 64),
		dgrams:   newDatagramQueue(o.DatagramQueue),
		streams:  make(map[uint32]*smuxStream),
		early:    make(map[uint32]byte),
		skipped:  make(map[uint32]struct{}),
		done:     make(chan struct{}),

		ownSkipped: make(map[uint32]struct{}),
		lingering:  make(map[uint32]*smux.Stream),
	}
	// The agent's first stream is the signal stream; its data streams
	// follow it. (The relay's first is id 2, counted from 0.)
	if client {
		s.maxOwnID = sig.ID()
	} else {
		s.maxPeerID = sig.ID()
	}
	// Both loops close the session when smux's ends: signalLoop's reads
	// fail, and acceptLoop's accept does.
	go s.acceptLoop()
	go s.signalLoop()
	return s
}

// acceptLoop registers every stream the peer opens before handing it out, so
// a RESET for it can always find it.
func (s *smuxSession) acceptLoop() {
	for {
		st, err := s.ms.AcceptStream()
		if err != nil {
			// Let the signal loop deliver what arrived before the end
			// (cutAfterSignals waits for the same).
			select {
			case <-s.done:
			case <-time.After(time.Second):
			}
			s.Close()
			return
		}
		w := newSmuxStream(st, s)
		id := st.ID()
		s.mu.Lock()
		s.maxPeerID = markArrived(s.skipped, s.maxPeerID, id)
		if s.peerStreams >= s.opts.MaxIncomingStreams {
			delete(s.early, id)
			s.mu.Unlock()
			w.Close()
			continue
		}
		s.streams[id] = w
		s.peerStreams++
		early := s.early[id]
		delete(s.early, id)
		s.mu.Unlock()
		w.signal(early)
		select {
		case s.accepted <- w:
		case <-s.done:
			w.Close()
			return
		case <-s.ms.CloseChan():
			w.Close()
			s.Close()
			return
		}
	}
}

// markArrived records that stream id is registered, given the highest id
// of its side registered so far, and returns the new highest. Stream ids go
// up by 2 on each side; the ones jumped over are on their way and go into
// skipped (up to maxEarly of them).
func markArrived(skipped map[uint32]struct{}, highest, id uint32) uint32 {
	delete(skipped, id)
	if id <= highest {
		return highest
	}
	for j := highest + 2; j < id && len(skipped) < maxEarly; j += 2 {
		skipped[j] = struct{}{}
	}
	return id
}

func (s *smuxSession) signalLoop() {
	defer s.Close()
	// Room for the signals and a full-size UDP datagram; a larger one
	// gets a buffer of its own, so an idle session holds 2 KiB, not 64.
	buf := make([]byte, 2<<10)
	for {
		// Settled: a FIN signal just before the end is a clean end.
		typ, payload, err := readSignal(settledReader{s.sig}, buf)
		if err != nil {
			s.mu.Lock()
			s.sigErr = err
			s.mu.Unlock()
			return
		}
		switch typ {
		case sigReset, sigFIN, sigAbort:
			s.handleStreamSignal(binary.BigEndian.Uint32(payload), typ)
		case sigDatagram:
			s.dgrams.push(bytes.Clone(payload)) // dropped when full, as a datagram may be
		}
	}
}

// errSignal is a signal frame this side does not understand.
var errSignal = errors.New("malformed signal frame")

// readSignal reads one signal frame into buf (at least sigHeaderSize bytes;
// a payload that does not fit gets a slice of its own) and returns its type
// and payload. An unknown type, or a RESET or FIN whose payload is not 4
// bytes, is an error.
func readSignal(r io.Reader, buf []byte) (typ byte, payload []byte, err error) {
	hdr := buf[:sigHeaderSize] // read into buf: a local array would escape
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, nil, err
	}
	typ, n := hdr[0], int(binary.BigEndian.Uint16(hdr[1:]))
	switch typ {
	case sigReset, sigFIN, sigAbort:
		if n != 4 {
			return 0, nil, fmt.Errorf("%w: type %d with %d payload bytes", errSignal, typ, n)
		}
	case sigDatagram:
	default:
		return 0, nil, fmt.Errorf("%w: unknown type %d", errSignal, typ)
	}
	// The payload overwrites the header in buf.
	if n > len(buf) {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return 0, nil, fmt.Errorf("%w: truncated: %w", errSignal, err)
	}
	return typ, buf[:n], nil
}

// ours reports whether id belongs to a stream this side opened: smux clients
// use odd ids, servers even ones.
func (s *smuxSession) ours(id uint32) bool { return (id%2 == 1) == s.client }

// Bits of a stream's received signals.
const (
	gotReset byte = 1 << iota
	gotFIN
	gotAbort
)

func (s *smuxSession) handleStreamSignal(id uint32, typ byte) {
	bit := gotReset
	switch typ {
	case sigFIN:
		bit = gotFIN
	case sigAbort:
		bit = gotAbort
	}
	s.mu.Lock()
	st := s.streams[id]
	if st == nil && len(s.early) < maxEarly && s.onItsWay(id) {
		s.early[id] |= bit
	}
	crossed := s.lingering[id]
	s.mu.Unlock()
	if crossed != nil && typ == sigAbort {
		crossed.Close() // both ends aborted: neither waits for the other
	}
	if st != nil {
		st.signal(bit)
	}
}

// onItsWay reports whether id may be a stream not registered yet, rather
// than one already forgotten. Under s.mu.
func (s *smuxSession) onItsWay(id uint32) bool {
	highest, skipped := s.maxPeerID, s.skipped
	if s.ours(id) {
		highest, skipped = s.maxOwnID, s.ownSkipped
	}
	if id > highest {
		return true
	}
	_, ok := skipped[id]
	return ok
}

func (s *smuxSession) streamSignal(typ byte, id uint32) error {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], id)
	return s.writeSignal(typ, p[:])
}

func (s *smuxSession) writeSignal(typ byte, payload []byte) error {
	if len(payload) > MaxTCPDatagram {
		return &DatagramTooLargeError{Size: len(payload), Max: MaxTCPDatagram}
	}
	s.sigMu.Lock()
	defer s.sigMu.Unlock()
	frame := append(s.sigBuf[:0], typ, 0, 0)
	binary.BigEndian.PutUint16(frame[1:], uint16(len(payload)))
	frame = append(frame, payload...)
	_, err := s.sig.Write(frame)
	if err != nil {
		// smux may still read a frame it queued: never reuse this one.
		s.sigBuf = nil
		return s.wrapErr(err)
	}
	if cap(frame) <= 2<<10 {
		s.sigBuf = frame // kept for the next frame: no allocation per datagram
	}
	return nil
}

func (s *smuxSession) OpenStream(ctx context.Context) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.ms.OpenStream()
	if err != nil {
		return nil, s.wrapErr(err)
	}
	w := newSmuxStream(st, s)
	id := st.ID()
	s.mu.Lock()
	s.maxOwnID = markArrived(s.ownSkipped, s.maxOwnID, id)
	s.streams[id] = w
	early := s.early[id]
	delete(s.early, id)
	s.mu.Unlock()
	w.signal(early)
	return w, nil
}

func (s *smuxSession) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case st := <-s.accepted:
		return st, nil
	case <-s.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *smuxSession) SendDatagram(p []byte) error { return s.writeSignal(sigDatagram, p) }

func (s *smuxSession) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	return s.dgrams.pop(ctx, s.done)
}

func (s *smuxSession) ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error) {
	if label == recordsLabel {
		return nil, errors.New("transport: the records' exporter label is reserved")
	}
	cs := s.tc.ConnectionState()
	return cs.ExportKeyingMaterial(label, context, length)
}

// ConnectionState is the handshake's, with the ALPN protocol as the caller
// named it (without the records suffix).
func (s *smuxSession) ConnectionState() tls.ConnectionState {
	cs := s.tc.ConnectionState()
	cs.NegotiatedProtocol = baseProto(cs.NegotiatedProtocol)
	return cs
}

// records reports whether the session runs on records of our own.
func (s *smuxSession) records() bool { _, ok := s.conn.(*recordConn); return ok }

func (s *smuxSession) LocalAddr() net.Addr  { return s.tc.LocalAddr() }
func (s *smuxSession) RemoteAddr() net.Addr { return s.tc.RemoteAddr() }
func (s *smuxSession) Kind() string         { return KindTCP }

// Windows returns the most a stream, and the session, hold unread: fixed,
// as smux does not tune them (QUIC does, which is why only this session
// tells). A stream's is at least smux's initial peer window, 256 KiB,
// which the sender assumes until our first window update.
func (s *smuxSession) Windows() (stream, session int) {
	return max(s.opts.StreamWindow, smuxInitialPeerWindow), s.opts.SessionWindow
}

// smuxInitialPeerWindow is smux's initialPeerWindow (frame.go).
const smuxInitialPeerWindow = 256 << 10

func (s *smuxSession) Done() <-chan struct{} { return s.done }

// CloseWithError closes the session. TLS+smux has no close reason on the
// wire; the tunnel protocol sends its own before closing.
func (s *smuxSession) CloseWithError(uint64, string) error { return s.Close() }

func (s *smuxSession) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.ms.Close()
		s.conn.Close()
	})
	return nil
}

func (s *smuxSession) wrapErr(err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-s.done:
		return fmt.Errorf("session closed: %w", net.ErrClosed)
	default:
	}
	if s.ms.IsClosed() || errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("session closed: %w", net.ErrClosed)
	}
	return err
}

func (s *smuxSession) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return s.ms.IsClosed()
	}
}

// cut reports whether the session is closed or its connection has ended.
// smux gives a stream's reader io.EOF both for the peer's FIN and for the
// connection's end, and the session is marked closed only once the signal
// loop, on a goroutine of its own, has seen the end too.
func (s *smuxSession) cut() bool {
	if s.isClosed() {
		return true
	}
	bc, ok := s.tc.NetConn().(*batchConn)
	if !ok {
		return false
	}
	if bc.readEnded.Load() {
		return true
	}
	sc, ok := tcpSocket(bc.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	ended := false
	if err := rc.Control(func(fd uintptr) { ended = rawfd.Ended(fd) }); err != nil {
		return true // closed
	}
	return ended
}

func (s *smuxSession) linger(id uint32, st *smux.Stream) {
	s.mu.Lock()
	s.lingering[id] = st
	s.mu.Unlock()
}

func (s *smuxSession) unlinger(id uint32) {
	s.mu.Lock()
	delete(s.lingering, id)
	s.mu.Unlock()
}

func (s *smuxSession) forget(id uint32) {
	s.mu.Lock()
	if _, ok := s.streams[id]; ok && !s.ours(id) {
		s.peerStreams--
	}
	delete(s.streams, id)
	s.mu.Unlock()
}

// smuxStream is a smux stream whose half-close and reset travel on the
// signal stream. Deadlines are kept here: the stream wakes its own blocked
// Read or Write by moving smux's deadline into the past when a FIN or RESET
// arrives, then tells that wake-up from the caller's deadline.
type smuxStream struct {
	st   *smux.Stream
	sess *smuxSession

	// wmu is held for reading by Write and for writing by CloseWrite, so
	// the FIN follows every byte written before it.
	wmu sync.RWMutex

	mu            sync.Mutex
	readDeadline  time.Time
	writeDeadline time.Time
	peerFIN       bool // the peer's FIN signal arrived: all its data is buffered
	peerReset     bool // the peer stopped reading
	peerAborted   bool // the peer gave up: reads fail
	// readers counts Reads and WriteTos in progress, so that Abort's
	// linger reads only once they have left (enterRead).
	readers     sync.WaitGroup
	writeClosed bool
	readEOF     bool
	closed      bool
}

// writeBufs hold the copies smux writes from: one smux frame each, or a
// small write's from smallWriteBufs, so a burst of small writes (a
// thousand new clients' first requests) does not leave a pool of 32 KiB
// buffers behind.
var (
	writeBufs      = sync.Pool{New: func() any { b := make([]byte, smuxFrameSize); return &b }}
	smallWriteBufs = sync.Pool{New: func() any { b := make([]byte, smallWrite); return &b }}
)

const smallWrite = 2 << 10

// past is a deadline that has passed: it makes smux return at once.
var past = time.Unix(1, 0)

func newSmuxStream(st *smux.Stream, s *smuxSession) *smuxStream {
	return &smuxStream{st: st, sess: s}
}

func (s *smuxStream) signal(bits byte) {
	if bits == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if bits&gotFIN != 0 {
		s.peerFIN = true
		s.st.SetReadDeadline(past)
	}
	if bits&(gotReset|gotAbort) != 0 {
		s.peerReset = true
		s.st.SetWriteDeadline(past)
	}
	if bits&gotAbort != 0 {
		s.peerAborted = true
		s.st.SetReadDeadline(past)
	}
}

// enterRead counts a Read or WriteTo in, unless the stream is done for
// reading; the caller then calls readers.Done.
func (s *smuxStream) enterRead() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.peerAborted:
		return ErrAborted
	case s.closed:
		return net.ErrClosed
	}
	s.readers.Add(1)
	return nil
}

func (s *smuxStream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.enterRead(); err != nil {
		return 0, err
	}
	defer s.readers.Done()
	drained := false
	for {
		n, err := settledRead(s.st, p)
		if n > 0 {
			return n, nil
		}
		s.mu.Lock()
		switch {
		case s.peerAborted:
			s.mu.Unlock()
			return 0, ErrAborted
		case s.closed:
			s.mu.Unlock()
			return 0, net.ErrClosed
		case sessionEnd(err) && !s.peerFIN && s.cutAfterSignals():
			// smux reports a dead session as EOF (or the socket's
			// error): that is a cut, not an end.
			s.mu.Unlock()
			return 0, cutErr(err)
		case sessionEnd(err):
			// smux's own FIN: the peer closed the stream entirely; or
			// the session ended after the peer's FIN signal.
			s.readEOF = true
			s.mu.Unlock()
			return 0, io.EOF
		case s.peerFIN:
			// Every byte before the FIN was buffered when it arrived,
			// and smux's deadline stays in the past: one more empty
			// read means the data is all gone.
			if drained {
				s.readEOF = true
				s.mu.Unlock()
				return 0, io.EOF
			}
			drained = true
		case !s.readDeadline.IsZero() && !time.Now().Before(s.readDeadline):
			s.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		default:
			// Woken early, by a deadline since moved: wait again.
			s.st.SetReadDeadline(s.readDeadline)
		}
		s.mu.Unlock()
	}
}

// WriteTo writes the stream's data to w as it arrives, straight from the
// frames smux received, until the peer's FIN (a nil error, as io.Copy
// expects) or a failure: the reader needs no buffer of its own, so an idle
// stream copied this way holds none. Its ends and errors are Read's.
func (s *smuxStream) WriteTo(w io.Writer) (int64, error) {
	if err := s.enterRead(); err != nil {
		return 0, err
	}
	defer s.readers.Done()
	rw := &recordingWriter{w: w}
	var total int64
	drained, ended := false, false
	for {
		n, err := s.st.WriteTo(rw)
		total += n
		if rw.err != nil {
			return total, rw.err // w failed, not the stream
		}
		if n > 0 {
			drained = false
		}
		if sessionEnd(err) && !ended {
			ended = true // data may wait behind the end: see settledRead
			continue
		}
		s.mu.Lock()
		switch {
		case s.peerAborted:
			s.mu.Unlock()
			return total, ErrAborted
		case s.closed:
			s.mu.Unlock()
			return total, net.ErrClosed
		case sessionEnd(err) && !s.peerFIN && s.cutAfterSignals():
			s.mu.Unlock()
			return total, cutErr(err)
		case sessionEnd(err):
			s.readEOF = true
			s.mu.Unlock()
			return total, nil
		case s.peerFIN:
			// As in Read: one more pass that finds nothing means the
			// data before the FIN is all written.
			if drained {
				s.readEOF = true
				s.mu.Unlock()
				return total, nil
			}
			drained = true
		case !s.readDeadline.IsZero() && !time.Now().Before(s.readDeadline):
			s.mu.Unlock()
			return total, os.ErrDeadlineExceeded
		default:
			s.st.SetReadDeadline(s.readDeadline)
		}
		s.mu.Unlock()
	}
}

// recordingWriter remembers w's failure, to tell it from the stream's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil {
		r.err = err
	} else if n < len(p) {
		r.err = io.ErrShortWrite
	}
	return n, r.err
}

func (s *smuxStream) Write(p []byte) (int, error) { return s.write(p, true) }

// WriteBuffer is Write from p itself, without Write's copy (see
// BufferWriter): once it returns nil p is the caller's again, but after an
// error smux may still read it.
func (s *smuxStream) WriteBuffer(p []byte) (int, error) { return s.write(p, false) }

func (s *smuxStream) write(p []byte, copied bool) (int, error) {
	s.wmu.RLock()
	defer s.wmu.RUnlock()
	written := 0
	for {
		s.mu.Lock()
		switch {
		case s.closed || s.writeClosed:
			s.mu.Unlock()
			return written, net.ErrClosed
		case s.peerReset:
			s.mu.Unlock()
			return written, fmt.Errorf("stream reset by peer: %w", net.ErrClosed)
		}
		if !s.writeDeadline.IsZero() && !time.Now().Before(s.writeDeadline) {
			s.mu.Unlock()
			return written, os.ErrDeadlineExceeded
		}
		s.mu.Unlock()
		// smux may still send (and so read) a frame queued when its
		// deadline fires, after Write has returned: unless the caller
		// handed p over, it gets a pooled copy, which goes back to the
		// pool only when smux is done with it.
		var n int
		var err error
		var pool *sync.Pool
		var bp *[]byte
		if copied {
			pool = &writeBufs
			if len(p)-written <= smallWrite {
				pool = &smallWriteBufs
			}
			bp = pool.Get().(*[]byte)
			c := copy(*bp, p[written:])
			n, err = s.st.Write((*bp)[:c])
		} else {
			n, err = s.st.Write(p[written:])
		}
		if err == nil {
			if bp != nil {
				pool.Put(bp)
			}
			written += n
			if written < len(p) {
				continue
			}
			return written, nil
		}
		written += n
		if !errors.Is(err, smux.ErrTimeout) {
			if errors.Is(err, io.ErrClosedPipe) {
				return written, net.ErrClosed
			}
			return written, err
		}
		// smux timed out on the caller's deadline as it stood when smux
		// last looked (it does not while a frame is queued), or on the
		// past one a RESET set. The frame it timed out on may wait in
		// smux's send queue and still go out, so the Write ends here even
		// if the caller has since moved its deadline later: writing the
		// rest again could send that frame twice.
		s.mu.Lock()
		reset := s.peerReset
		s.mu.Unlock()
		if reset {
			return written, fmt.Errorf("stream reset by peer: %w", net.ErrClosed)
		}
		return written, os.ErrDeadlineExceeded
	}
}

// CloseWrite sends FIN on the signal stream after everything written.
func (s *smuxStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if s.closed || s.writeClosed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.writeClosed = true
	s.mu.Unlock()
	return s.sess.streamSignal(sigFIN, s.st.ID())
}

// Close ends both directions. Data written so far is still delivered, then
// smux's FIN; if the peer may still be writing, a RESET tells it to stop.
func (s *smuxStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	needReset := !s.readEOF && !s.peerFIN
	s.st.SetReadDeadline(past)
	s.mu.Unlock()
	id := s.st.ID()
	s.sess.forget(id)
	if needReset {
		// Best effort: on a dead session there is nobody to tell.
		s.sess.streamSignal(sigReset, id)
	}
	s.st.Close()
	return nil
}

// Abort sends ABORT and closes the stream, when the peer understands it;
// otherwise it is Close.
func (s *smuxStream) Abort() error {
	if !s.sess.aborts {
		return s.Close()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	peerAborted := s.peerAborted
	s.st.SetWriteDeadline(past)
	s.st.SetReadDeadline(past) // wakes our own blocked Read
	s.mu.Unlock()
	id := s.st.ID()
	s.sess.forget(id)
	if peerAborted {
		// The peer gave up first and waits for this end's FIN.
		s.st.Close()
		return nil
	}
	// The peer reads signals on a goroutine of their own, so smux's FIN
	// sent now could reach its reader before the ABORT, as a clean end.
	// The peer closes its end on reading the ABORT (or on an ABORT of its
	// own crossing this one, see handleStreamSignal); until then, or
	// abortLinger, this end reads and drops what still comes, then
	// closes: once our own Reads have left, woken by the past deadline.
	s.sess.linger(id, s.st)
	s.sess.streamSignal(sigAbort, id) // best effort, as Close's RESET
	go func() {
		s.readers.Wait()
		s.st.SetReadDeadline(time.Now().Add(abortLinger))
		io.Copy(io.Discard, s.st)
		s.sess.unlinger(id)
		s.st.Close()
	}()
	return nil
}

// abortLinger bounds how long an aborted stream waits for the peer to
// close its end.
const abortLinger = 10 * time.Second

func (s *smuxStream) LocalAddr() net.Addr  { return s.sess.LocalAddr() }
func (s *smuxStream) RemoteAddr() net.Addr { return s.sess.RemoteAddr() }

func (s *smuxStream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

func (s *smuxStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readDeadline = t
	if !s.peerFIN && !s.closed {
		s.st.SetReadDeadline(t)
	}
	return nil
}

// SetWriteDeadline passes t to smux, which reads it between frames: a
// deadline moved while a frame waits in smux's send queue changes nothing
// for that frame (see Write), so set it before writing.
func (s *smuxStream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeDeadline = t
	if !s.peerReset {
		s.st.SetWriteDeadline(t)
	}
	return nil
}

// sessionEnd reports whether a smux read error is an end: the stream's
// FIN, or the session's, which smux gives as io.EOF, the socket's error,
// or io.ErrClosedPipe once the session is closed. (The other is its
// timeout; a stream closed here is caught before.)
func sessionEnd(err error) bool {
	return !errors.Is(err, smux.ErrTimeout)
}

// settledRead reads st, taking the session's end for the answer only when
// a second read finds no data either. smux's reader waits for data and for
// the end alike and, when both have come by the time it looks, may report
// the end with data still buffered. Its ends are for good, so the second
// read returns at once.
func settledRead(st *smux.Stream, p []byte) (int, error) {
	n, err := st.Read(p)
	if n == 0 && err != nil && sessionEnd(err) {
		n, err = st.Read(p)
	}
	return n, err
}

// settledReader reads a smux stream with settledRead.
type settledReader struct{ st *smux.Stream }

func (r settledReader) Read(p []byte) (int, error) { return settledRead(r.st, p) }

// cutErr is a reader's error for a session cut under it.
func cutErr(err error) error {
	if err == io.EOF || errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("session closed: %w", net.ErrClosed)
	}
	return fmt.Errorf("session closed: %w: %w", err, net.ErrClosed)
}

// cutAfterSignals reports whether an EOF without the peer's FIN signal is
// the session's end (see cut). A FIN signal sent just before the end may
// still wait in the signal stream, so at a cut it first lets the signal
// loop deliver what came before the end (up to a second), then looks
// again. Called and returns with s.mu held.
func (s *smuxStream) cutAfterSignals() bool {
	if !s.sess.cut() {
		return false
	}
	s.mu.Unlock()
	select {
	case <-s.sess.done:
	case <-time.After(time.Second):
	}
	s.mu.Lock()
	return !s.peerFIN
}
