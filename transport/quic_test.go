package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/relaytun/relay/internal/quictest"
)

// TestQUICHandshakeFailures: a QUIC handshake that fails never reaches
// quic-go's Accept, but the listener's onErr hears of it, with quic-go's
// error: the relay's TLS alert (a wrong ALPN), the client's (it does not
// trust the relay), and the handshake idle timeout (a client gone silent
// after its first packet, or an Initial that never decrypts). A session
// that completes does not count, open or closed, nor does a handshake the
// listener's Close cuts short.
func TestQUICHandshakeFailures(t *testing.T) {
	t.Parallel()
	o := testOptions()
	o.HandshakeTimeout = 500 * time.Millisecond
	herrs := newHandshakeErrors()
	srv := newTestServer(t, o, herrs.onErr)

	good, err := srv.dialWith(t, KindQUIC, &Verifier{Pin: srv.pin}, testALPN)
	if err != nil {
		t.Fatalf("dialing with the right ALPN and pin: %v", err)
	}
	srv.accept(t).Close()
	good.Close()

	wrongALPN, _ := (&Verifier{Pin: srv.pin}).ClientTLSConfig(srv.addr, "h3")
	untrusted := &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{testALPN}, RootCAs: x509.NewCertPool()}
	for i, tc := range []struct {
		name   string
		conf   *tls.Config
		remote bool // whose alert: the client's
	}{{"a wrong ALPN", wrongALPN, false}, {"a client that does not trust the relay", untrusted, true}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if s, err := srv.dialer(t, KindQUIC, tc.conf).Dial(ctx, srv.addr); err == nil {
			s.Close()
			t.Errorf("%s: dial succeeded", tc.name)
		}
		cancel()
		errs := herrs.wait(t, 1)
		var te *quic.TransportError
		if len(errs) != i+1 || !errors.As(errs[i], &te) || te.Remote != tc.remote || !te.ErrorCode.IsCryptoError() {
			t.Errorf("after %s: %v, want one more failure, a TLS alert (remote: %v)", tc.name, errs, tc.remote)
		} else if i == 0 && te.ErrorCode != 0x100+120 {
			t.Errorf("after %s: %v, want no_application_protocol (0x178)", tc.name, te)
		}
	}

	quictest.StallHandshake(t, srv.addr, testALPN)
	sendUDP(t, srv.addr, quictest.GarbageInitial())
	sendUDP(t, srv.addr, []byte("GET / HTTP/1.0\r\n\r\n")) // no Initial: dropped
	errs := herrs.wait(t, 2)[2:]
	for _, err := range errs {
		var idle *quic.IdleTimeoutError
		if !errors.As(err, &idle) {
			t.Errorf("after a silent client or a garbage Initial: %v, want a *quic.IdleTimeoutError", err)
		}
	}

	// A handshake in progress when the listener closes is refused by
	// quic-go, which is no failure of the peer's.
	quictest.StallHandshake(t, srv.addr, testALPN)
	time.Sleep(100 * time.Millisecond)
	srv.ln.Close()
	time.Sleep(2 * o.HandshakeTimeout)
	herrs.mu.Lock()
	defer herrs.mu.Unlock()
	if len(herrs.errs) != 4 {
		t.Errorf("onErr heard %d failures, want 4: %v", len(herrs.errs), herrs.errs)
	}
}

// sendUDP sends one datagram to addr.
func sendUDP(t testing.TB, addr string, p []byte) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
}
