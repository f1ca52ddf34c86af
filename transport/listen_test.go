package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xtaci/smux"
)

// handshakeErrors collects what a listener reports through onErr.
type handshakeErrors struct {
	mu   sync.Mutex
	errs []error
	ch   chan struct{} // gets a token per error
}

func newHandshakeErrors() *handshakeErrors {
	return &handshakeErrors{ch: make(chan struct{}, 1024)}
}

func (h *handshakeErrors) onErr(_ net.Addr, err error) {
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
	h.ch <- struct{}{}
}

// wait waits for n reports and returns all reports so far.
func (h *handshakeErrors) wait(t *testing.T, n int) []error {
	t.Helper()
	for range n {
		select {
		case <-h.ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("onErr called fewer than %d times in 10s", n)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.errs...)
}

// rawDial opens a plain TCP connection to the listener.
func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the server closed c within d: reads end with
// EOF or a reset rather than our own deadline.
func closedByPeer(c net.Conn, d time.Duration) (bool, error) {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, err
	}
	return true, err
}

// stillOpen reports whether the server has not closed c yet.
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	c.SetReadDeadline(time.Time{})
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// closedWithin reports whether the server closed a stalled client within d.
type closedWithin func(d time.Duration) (bool, error)

func connClosedWithin(c net.Conn) closedWithin {
	return func(d time.Duration) (bool, error) { return closedByPeer(c, d) }
}

// stalledConns opens one connection per way a TCP client can stall or fail
// before its session is ready.
func stalledConns(t *testing.T, srv *testServer) map[string]closedWithin {
	t.Helper()
	conns := map[string]closedWithin{}

	conns["silent"] = connClosedWithin(rawDial(t, srv.addr))

	garbage := rawDial(t, srv.addr)
	garbage.Write([]byte("GET / HTTP/1.1\r\nHost: relay\r\n\r\n"))
	conns["garbage"] = connClosedWithin(garbage)

	partial := rawDial(t, srv.addr)
	partial.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a ClientHello record header, then nothing
	conns["partial TLS record"] = connClosedWithin(partial)

	clientTLS, err := (&Verifier{Pin: srv.pin}).ClientTLSConfig(srv.addr, testALPN)
	if err != nil {
		t.Fatal(err)
	}
	tlsOnly := tls.Client(rawDial(t, srv.addr), clientTLS)
	if err := tlsOnly.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	conns["TLS without smux"] = connClosedWithin(tlsOnly)

	// smux started, but no signal stream, or one with the wrong preamble.
	for _, preamble := range []string{"", "HTTP"} {
		tc := tls.Client(rawDial(t, srv.addr), clientTLS)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		ms, err := smux.Client(tc, smuxConfig(srv.opts))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ms.Close() })
		name := "smux without a signal stream"
		if preamble != "" {
			st, err := ms.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			st.Write([]byte(preamble))
			name = "signal stream with a bad preamble"
		}
		// AcceptStream fails once the server closes the connection.
		conns[name] = func(d time.Duration) (bool, error) {
			ms.SetDeadline(time.Now().Add(d))
			_, err := ms.AcceptStream()
			if errors.Is(err, smux.ErrTimeout) {
				return false, err
			}
			if err == nil {
				return false, errors.New("the server opened a stream")
			}
			return true, err
		}
	}
	return conns
}

// TestTCPHandshakeTimeout: connections that never finish the TLS+smux
// handshake are closed by HandshakeTimeout and reported through onErr.
// (TestTCPStalledHandshakesDoNotBlockAccept shows that real clients get in
// meanwhile.)
func TestTCPHandshakeTimeout(t *testing.T) {
	t.Parallel()
	o := testOptions()
	o.HandshakeTimeout = 300 * time.Millisecond
	herrs := newHandshakeErrors()
	srv := newTestServer(t, o, herrs.onErr)

	conns := stalledConns(t, srv)
	for name, closedWithin := range conns {
		closed, err := closedWithin(10 * time.Second)
		if !closed {
			t.Errorf("%s: still open 10s after connecting (HandshakeTimeout %v): %v", name, o.HandshakeTimeout, err)
		}
	}
	errs := herrs.wait(t, len(conns))
	for _, err := range errs {
		if err == nil {
			t.Error("onErr called with a nil error")
		}
	}

}

// TestTCPStalledHandshakesDoNotBlockAccept: a session is accepted while
// stalled handshakes are still pending.
func TestTCPStalledHandshakesDoNotBlockAccept(t *testing.T) {
	t.Parallel()
	o := testOptions()
	o.HandshakeTimeout = 20 * time.Second
	srv := newTestServer(t, o, nil)

	silent := []net.Conn{rawDial(t, srv.addr), rawDial(t, srv.addr), rawDial(t, srv.addr)}
	partial := rawDial(t, srv.addr)
	partial.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00})

	for _, kind := range kinds {
		c, s := srv.connect(t, kind)
		a, b := openPair(t, c, s)
		exchange(t, a, b, "not", "blocked")
	}
	for i, c := range append(silent, partial) {
		if !stillOpen(c) {
			t.Errorf("stalled connection %d was closed before the real sessions were accepted", i)
		}
	}
}

// TestTCPMaxHandshakes: beyond MaxHandshakes pending handshakes, new
// connections are closed at once (not after HandshakeTimeout), and capacity
// returns when a pending one goes away.
func TestTCPMaxHandshakes(t *testing.T) {
	t.Parallel()
	o := testOptions()
	o.HandshakeTimeout = time.Minute // anything closed during the test was refused, not timed out
	o.MaxHandshakes = 2
	herrs := newHandshakeErrors()
	srv := newTestServer(t, o, herrs.onErr)

	s1, s2 := rawDial(t, srv.addr), rawDial(t, srv.addr)
	extra := rawDial(t, srv.addr)
	if closed, err := closedByPeer(extra, 10*time.Second); !closed {
		t.Fatalf("third connection with MaxHandshakes 2: still open after 10s: %v", err)
	}
	errs := herrs.wait(t, 1)
	if !strings.Contains(errs[0].Error(), "too many handshakes") {
		t.Errorf("onErr: %v; want it to say too many handshakes", errs[0])
	}
	if !stillOpen(s1) || !stillOpen(s2) {
		t.Error("a pending handshake within the limit was closed")
	}

	// QUIC is not limited by TCP handshakes.
	srv.connect(t, KindQUIC)

	// Freeing a slot lets a real TCP client in.
	s1.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := srv.dialWith(t, KindTCP, &Verifier{Pin: srv.pin}, testALPN)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP dial after a slot was freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.accept(t)
	if !stillOpen(s2) {
		t.Error("the other pending handshake was closed")
	}
}

// flakyListener fails its first Accepts the way a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails > 0
	if fail {
		l.fails--
	}
	l.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestTCPListenerSurvivesTemporaryAcceptErrors: running out of file
// descriptors for a moment (EMFILE, as under a connection flood) must not
// stop the TCP listener for good, as it does not stop net/http's Server.
func TestTCPListenerSurvivesTemporaryAcceptErrors(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil) // for its certificate
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ListenTCP(&flakyListener{Listener: tl, fails: 3}, ServerTLSConfig(srv.cert, testALPN), testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := tl.Addr().String()
	tlsConf, _ := (&Verifier{Pin: srv.pin}).ClientTLSConfig(addr, testALPN)
	dialTCP(t, ln, addr, tlsConf) // after the temporary accept errors
}

// TestListenerClose: Accept fails with ErrClosed after Close, pending
// Accepts return, and sessions already accepted keep working on both
// transports, so a relay can stop accepting and then drain (like
// net/http's Server.Shutdown).
func TestListenerClose(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			srv := newTestServer(t, testOptions(), nil)
			c, s := srv.connect(t, kind)
			a, b := openPair(t, c, s)

			pending := make(chan error, 1)
			go func() { _, err := srv.ln.Accept(context.Background()); pending <- err }()
			time.Sleep(50 * time.Millisecond)
			if err := srv.ln.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case err := <-pending:
				if !errors.Is(err, ErrClosed) {
					t.Errorf("pending Accept after Close: %v; want ErrClosed", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("pending Accept still blocked 10s after Close")
			}
			if _, err := srv.ln.Accept(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("Accept after Close: %v; want ErrClosed", err)
			}
			if err := srv.ln.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			tlsConf, _ := (&Verifier{Pin: srv.pin}).ClientTLSConfig(srv.addr, testALPN)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if sess, err := srv.dialer(t, kind, tlsConf).Dial(ctx, srv.addr); err == nil {
				sess.Close()
				t.Error("dial after the listener closed succeeded")
			}

			// The established session is unaffected.
			for _, st := range []Stream{a, b} {
				st.SetDeadline(time.Now().Add(2 * time.Second))
			}
			if _, err := a.Write([]byte("still")); err != nil {
				t.Fatalf("Write on an established session after Listener.Close: %v", err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(b, buf); err != nil {
				t.Fatalf("Read on an established session after Listener.Close: %v", err)
			}
			if _, err := b.Write([]byte("there")); err != nil {
				t.Fatalf("reply Write after Listener.Close: %v", err)
			}
			if _, err := io.ReadFull(a, buf); err != nil {
				t.Fatalf("reading reply after Listener.Close: %v", err)
			}
		})
	}
}

func TestListenErrors(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	tlsConf := ServerTLSConfig(srv.cert, testALPN)

	// The port is taken (TCP and UDP).
	if ln, err := Listen(srv.addr, tlsConf, testOptions(), nil); err == nil {
		ln.Close()
		t.Error("Listen on a port in use succeeded")
	}
	if _, err := Listen("no-port", tlsConf, testOptions(), nil); err == nil || !strings.Contains(err.Error(), "no-port") {
		t.Errorf("Listen(no-port) = %v; want an error naming the address", err)
	}
	bad := testOptions()
	bad.KeepAlive = bad.IdleTimeout
	if _, err := Listen("127.0.0.1:0", tlsConf, bad, nil); err == nil {
		t.Error("Listen with invalid options succeeded")
	}
	for _, d := range []Dialer{&QUICDialer{Options: bad}, &TCPDialer{Options: bad}} {
		if _, err := d.Dial(context.Background(), srv.addr); err == nil || !strings.Contains(err.Error(), "keep-alive") {
			t.Errorf("%s Dial with invalid options: %v", d.Kind(), err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatalf("DefaultOptions().Validate() = %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"handshake", func(o *Options) { o.HandshakeTimeout = 0 }, "handshake timeout"},
		{"idle", func(o *Options) { o.IdleTimeout = -1 }, "idle timeout"},
		{"keepalive zero", func(o *Options) { o.KeepAlive = 0 }, "keep-alive"},
		{"keepalive too long", func(o *Options) { o.KeepAlive = o.IdleTimeout }, "keep-alive"},
		{"handshakes", func(o *Options) { o.MaxHandshakes = 0 }, "max handshakes"},
		{"streams", func(o *Options) { o.MaxIncomingStreams = 0 }, "max incoming streams"},
		{"stream window small", func(o *Options) { o.StreamWindow = 1 << 10 }, "stream window"},
		{"stream window big", func(o *Options) { o.StreamWindow = 2 << 30; o.SessionWindow = 2 << 30 }, "stream window"},
		{"session window", func(o *Options) { o.SessionWindow = o.StreamWindow - 1 }, "session window"},
		{"datagram queue", func(o *Options) { o.DatagramQueue = 0 }, "datagram queue"},
	} {
		o := DefaultOptions()
		tt.edit(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate() = %v; want an error about %s", tt.name, err, tt.want)
		}
	}
}

func TestIsClosed(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{ErrClosed, true},
		{net.ErrClosed, true},
		{context.Canceled, true},
		{errors.Join(errors.New("x"), net.ErrClosed), true},
		{io.EOF, false},
		{context.DeadlineExceeded, false},
		{errors.New("boom"), false},
	} {
		if got := IsClosed(tt.err); got != tt.want {
			t.Errorf("IsClosed(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
