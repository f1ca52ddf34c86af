package transport

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Test helpers shared by every test in the package: a relay listening on
// both transports on 127.0.0.1 port 0, and dialers for either kind.

const testALPN = "relay/1"

var kinds = []string{KindQUIC, KindTCP}

// testOptions are DefaultOptions with timeouts short enough for tests.
func testOptions() Options {
	o := DefaultOptions()
	o.HandshakeTimeout = 5 * time.Second
	return o
}

// testServer is a relay-side listener serving both transports.
type testServer struct {
	ln   Listener
	addr string // "127.0.0.1:port", the same port for UDP and TCP
	cert tls.Certificate
	pin  []byte // SHA-256 of the certificate's public key
	opts Options
}

// newTestServer listens on 127.0.0.1:0 with a self-signed certificate for a
// key kept in t.TempDir(), and closes the listener when t ends.
func newTestServer(t testing.TB, o Options, onErr func(net.Addr, error)) *testServer {
	t.Helper()
	return newTestServerOn(t, "127.0.0.1:0", o, onErr)
}

// newTestServerOn is newTestServer listening on addr.
func newTestServerOn(t testing.TB, addr string, o Options, onErr func(net.Addr, error)) *testServer {
	t.Helper()
	key, created, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "relay.key"))
	if err != nil {
		t.Fatalf("LoadOrCreateKey: %v", err)
	}
	if !created {
		t.Fatal("LoadOrCreateKey: created = false for a new file")
	}
	cert, err := SelfSignedCertificate(key, "127.0.0.1", "::1", "localhost")
	if err != nil {
		t.Fatalf("SelfSignedCertificate: %v", err)
	}
	ln, err := Listen(addr, ServerTLSConfig(cert, testALPN), o, onErr)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	pin, err := ParseFingerprint(Fingerprint(cert.Leaf))
	if err != nil {
		t.Fatalf("ParseFingerprint(Fingerprint(leaf)): %v", err)
	}
	return &testServer{ln: ln, addr: ln.Addr().String(), cert: cert, pin: pin, opts: o}
}

// dialer returns a dialer of the given kind using tlsConf.
func (s *testServer) dialer(t testing.TB, kind string, tlsConf *tls.Config) Dialer {
	t.Helper()
	switch kind {
	case KindQUIC:
		return &QUICDialer{TLS: tlsConf, Options: s.opts}
	case KindTCP:
		return &TCPDialer{TLS: tlsConf, Options: s.opts}
	}
	t.Fatalf("unknown transport kind %q", kind)
	return nil
}

// dialWith dials the server with verifier v offering ALPN alpn. A session it
// returns is closed when t ends.
func (s *testServer) dialWith(t testing.TB, kind string, v *Verifier, alpn string) (Session, error) {
	t.Helper()
	tlsConf, err := v.ClientTLSConfig(s.addr, alpn)
	if err != nil {
		t.Fatalf("ClientTLSConfig: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := s.dialer(t, kind, tlsConf).Dial(ctx, s.addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { sess.Close() })
	return sess, nil
}

// accept waits for the next session on the server and closes it when t ends.
func (s *testServer) accept(t testing.TB) Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := s.ln.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// dialTCP dials a TLS+smux session to ln at addr with tlsConf and accepts
// it there; both ends close when t ends.
func dialTCP(t testing.TB, ln Listener, addr string, tlsConf *tls.Config) (client, server Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := (&TCPDialer{TLS: tlsConf, Options: testOptions()}).Dial(ctx, addr)
	if err != nil {
		t.Fatalf("Dial %s: %v", addr, err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// connect dials with the pinned key and returns both ends of the session.
func (s *testServer) connect(t testing.TB, kind string) (client, server Session) {
	t.Helper()
	client, err := s.dialWith(t, kind, &Verifier{Pin: s.pin}, testALPN)
	if err != nil {
		t.Fatalf("dialing %s %s: %v", kind, s.addr, err)
	}
	server = s.accept(t)
	if server.Kind() != kind {
		t.Fatalf("server accepted a %q session, want %q", server.Kind(), kind)
	}
	return client, server
}

// newPair returns a connected (client, server) pair of the given kind, each
// on its own listener, torn down when t ends.
func newPair(t testing.TB, kind string) (client, server Session) {
	t.Helper()
	return newTestServer(t, testOptions(), nil).connect(t, kind)
}

// openPair opens a stream on a and accepts it on b. A QUIC stream is not
// announced to the peer until it carries data, so a one-byte preamble is sent
// and consumed.
func openPair(t testing.TB, a, b Session) (sa, sb Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := a.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	if _, err := sa.Write([]byte{0x5a}); err != nil {
		t.Fatalf("writing preamble: %v", err)
	}
	sb, err = b.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	var pre [1]byte
	sb.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := sb.Read(pre[:]); err != nil || pre[0] != 0x5a {
		t.Fatalf("reading preamble: %q, %v", pre, err)
	}
	sb.SetReadDeadline(time.Time{})
	t.Cleanup(func() { sa.Close(); sb.Close() })
	return sa, sb
}

// within fails t unless f returns within d; it returns f's error.
func within(t testing.TB, d time.Duration, what string, f func() error) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
		return nil
	}
}
