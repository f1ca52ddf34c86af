package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proxytest"
)

var proxyKinds = []string{proxytest.HTTP, proxytest.HTTPS, proxytest.SOCKS5}

// dialVia dials s over TLS+smux through the proxy at proxyURL, trusting
// proxytest's certificate for an https:// one.
func (s *testServer) dialVia(t *testing.T, proxyURL string, o Options) (Session, error) {
	t.Helper()
	return s.dialViaRoots(t, proxyURL, o, proxytest.Roots())
}

// dialViaRoots is dialVia trusting roots (nil: the system's).
func (s *testServer) dialViaRoots(t *testing.T, proxyURL string, o Options, roots *x509.CertPool) (Session, error) {
	t.Helper()
	p, err := ParseProxy(proxyURL)
	if err != nil {
		t.Fatalf("ParseProxy(%q): %v", proxyURL, err)
	}
	tlsConf, err := (&Verifier{Pin: s.pin}).ClientTLSConfig(s.addr, testALPN)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := (&TCPDialer{TLS: tlsConf, Options: o, Proxy: p, proxyRoots: roots}).Dial(ctx, s.addr)
	if err == nil {
		t.Cleanup(func() { sess.Close() })
	}
	return sess, err
}

// TestDialThroughProxy: a session through each kind of proxy, with and
// without credentials, carries streams both ways, and the proxy was asked
// for the relay.
func TestDialThroughProxy(t *testing.T) {
	for _, kind := range proxyKinds {
		for _, user := range []string{"", "alice"} {
			t.Run(kind+"/user="+user, func(t *testing.T) {
				t.Parallel()
				s := newTestServer(t, testOptions(), nil)
				px := proxytest.Start(t, kind, proxytest.Config{User: user, Password: "s3cr:t@"})
				c, err := s.dialVia(t, px.URL(), testOptions())
				if err != nil {
					t.Fatalf("Dial through %s: %v", px.URL(), err)
				}
				srv := s.accept(t)
				a, b := openPair(t, c, srv)
				exchange(t, a, b, "hello through the proxy", "and back")
				b2, a2 := openPair(t, srv, c)
				exchange(t, b2, a2, "from the relay", "ok")
				if got := px.Targets(); len(got) != 1 || got[0] != s.addr {
					t.Errorf("the proxy was asked for %q, want [%s]", got, s.addr)
				}
			})
		}
	}
}

// TestViaProxyQuickAck: both ends of a session through a proxy acknowledge
// reads at once (quickack.go), with records and with plain TLS, and
// ViaProxy says so; a direct session's do not, nor a QUIC one's.
func TestViaProxyQuickAck(t *testing.T) {
	for _, plain := range []bool{false, true} {
		o := testOptions()
		o.plainTLS = plain
		s := newTestServer(t, o, nil)
		px := proxytest.Start(t, proxytest.HTTP, proxytest.Config{Nagle: true})
		pxs := proxytest.Start(t, proxytest.HTTPS, proxytest.Config{Nagle: true})
		for _, via := range []string{"", px.URL(), pxs.URL()} {
			var c Session
			var err error
			if via != "" {
				c, err = s.dialVia(t, via, o)
			} else {
				c, err = s.dialWith(t, KindTCP, &Verifier{Pin: s.pin}, testALPN)
			}
			if err != nil {
				t.Fatalf("plain TLS %v, via a proxy %q: %v", plain, via, err)
			}
			srv := s.accept(t)
			a, b := openPair(t, c, srv)
			exchange(t, a, b, "ping", "pong")
			for side, sess := range map[string]Session{"dialer": c, "listener": srv} {
				ss := sess.(*smuxSession)
				if got := ss.tc.NetConn().(*batchConn).quickAck.Load(); got != (via != "") {
					t.Errorf("plain TLS %v, via a proxy %q: the %s's quickAck is %v", plain, via, side, got)
				}
				if got := ViaProxy(sess); got != (via != "") {
					t.Errorf("plain TLS %v, via a proxy %q: the %s's ViaProxy is %v", plain, via, side, got)
				}
				if got := ss.tc.ConnectionState().NegotiatedProtocol; got == viaProxyALPN {
					t.Errorf("the listener chose %q", got)
				}
				if _, isRecords := ss.conn.(*recordConn); isRecords == plain {
					t.Errorf("plain TLS %v, but the session runs on %T", plain, ss.conn)
				}
			}
		}
	}
	q, qs := newTestServer(t, testOptions(), nil).connect(t, KindQUIC)
	if ViaProxy(q) || ViaProxy(qs) {
		t.Error("a QUIC session says it went through a proxy")
	}
}

// TestDialProxyKeepsTheSocket: what the session runs on is the TCP socket
// itself, not a wrapper, so its fast paths (raw reads, TCP_NOTSENT_LOWAT)
// apply through a proxy too.
func TestDialProxyKeepsTheSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, kind := range proxyKinds {
		px := proxytest.Start(t, kind, proxytest.Config{})
		u, _ := ParseProxy(px.URL())
		c, err := dialProxy(context.Background(), &net.Dialer{}, u, ln.Addr().String(), proxytest.Roots())
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		// Through an https:// proxy, the TLS to it, on the socket.
		raw := c
		if tc, ok := c.(*tls.Conn); ok && kind == proxytest.HTTPS {
			raw = tc.NetConn()
		}
		if _, ok := raw.(*net.TCPConn); !ok {
			t.Errorf("%s: dialProxy returned a %T, want *net.TCPConn", kind, c)
		}
		c.Close()
	}
}

// TestDialProxyErrors: each way a proxy can fail says which proxy, what it
// said, and what to do, and never shows the password.
func TestDialProxyErrors(t *testing.T) {
	s := newTestServer(t, testOptions(), nil)
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	start := func(kind string, c proxytest.Config) *proxytest.Proxy { return proxytest.Start(t, kind, c) }
	short := testOptions()
	short.HandshakeTimeout = 300 * time.Millisecond
	cases := []struct {
		name string
		url  func() string
		opts Options
		want []string
		// system: trust only the system's certificates, not proxytest's.
		system bool
	}{
		{"not listening", func() string { return "http://" + closed }, testOptions(),
			[]string{"proxy http://" + closed + ": dial tcp " + closed + ": connect: connection refused"}, false},
		{"http needs credentials", func() string {
			return start(proxytest.HTTP, proxytest.Config{User: "u", Password: "p"}).URLWith("", "")
		}, testOptions(),
			[]string{"the proxy refused to connect to " + s.addr + ": 407 Proxy Authentication Required (the proxy wants a user and password: http://USER:PASS@HOST:PORT)"}, false},
		{"http wrong password", func() string {
			return start(proxytest.HTTP, proxytest.Config{User: "u", Password: "p"}).URLWith("u", "wrong-secret")
		}, testOptions(),
			[]string{"http://u:xxxxx@", ": 407 Proxy Authentication Required (the proxy did not accept the URL's user and password)"}, false},
		{"http unauthorized", func() string {
			return start(proxytest.HTTP, proxytest.Config{Status: 401}).URLWith("u", "wrong-secret")
		}, testOptions(),
			[]string{": 401 Unauthorized (the proxy did not accept the URL's user and password)"}, false},
		{"http forbidden", func() string { return start(proxytest.HTTP, proxytest.Config{Status: 403}).URL() }, testOptions(),
			[]string{"the proxy refused to connect to " + s.addr + ": 403 Forbidden (many proxies allow CONNECT only to port 443: ask the relay's operator for a relay on 443)"}, false},
		{"http bad gateway", func() string { return start(proxytest.HTTP, proxytest.Config{Status: 502}).URL() }, testOptions(),
			[]string{"the proxy refused to connect to " + s.addr + ": 502 Bad Gateway"}, false},
		{"http bytes after the answer", func() string { return start(proxytest.HTTP, proxytest.Config{Trailing: "early"}).URL() }, testOptions(),
			[]string{"the proxy sent 5 bytes after its answer to CONNECT, before the relay could speak"}, false},
		{"http silent", func() string { return start(proxytest.HTTP, proxytest.Config{Silent: true}).URL() }, short,
			[]string{"proxy http://127.0.0.1:", ": the proxy did not answer in time: context deadline exceeded"}, false},
		{"https untrusted", func() string { return start(proxytest.HTTPS, proxytest.Config{}).URL() }, testOptions(),
			[]string{"proxy https://127.0.0.1:", ": TLS to the proxy: tls: failed to verify certificate: x509: certificate signed by unknown authority " +
				"(this machine does not trust the proxy's certificate: add the certificate of the authority that signed it to the system's, " +
				"or on Linux name a PEM file holding it in SSL_CERT_FILE)"}, true},
		{"https wrong name", func() string {
			return strings.Replace(start(proxytest.HTTPS, proxytest.Config{}).URL(), "127.0.0.1", "localhost", 1)
		}, testOptions(),
			[]string{": TLS to the proxy: tls: failed to verify certificate: x509: certificate is not valid for any names, but wanted to match localhost " +
				"(give the proxy's URL with a name its certificate holds)"}, false},
		{"https to a proxy without TLS", func() string {
			return strings.Replace(start(proxytest.HTTP, proxytest.Config{}).URL(), "http:", "https:", 1)
		}, testOptions(),
			[]string{": TLS to the proxy: tls: first record does not look like a TLS handshake (the proxy does not speak TLS on that port: give http://127.0.0.1:"}, false},
		{"http to a proxy with TLS", func() string {
			return strings.Replace(start(proxytest.HTTPS, proxytest.Config{}).URL(), "https:", "http:", 1)
		}, testOptions(),
			[]string{": reading the proxy's answer: unexpected EOF (the proxy closed the connection without one; if it expects TLS, give https://127.0.0.1:"}, false},
		{"https needs credentials", func() string {
			return start(proxytest.HTTPS, proxytest.Config{User: "u", Password: "p"}).URLWith("", "")
		}, testOptions(),
			[]string{"proxy https://127.0.0.1:", "the proxy refused to connect to " + s.addr + ": 407 Proxy Authentication Required (the proxy wants a user and password: https://USER:PASS@HOST:PORT)"}, false},
		{"http bad request", func() string { return start(proxytest.HTTP, proxytest.Config{Status: 400}).URL() }, testOptions(),
			[]string{"the proxy refused to connect to " + s.addr + ": 400 Bad Request (if the proxy expects TLS, give https://127.0.0.1:"}, false},
		{"socks needs credentials", func() string {
			return start(proxytest.SOCKS5, proxytest.Config{User: "u", Password: "p"}).URLWith("", "")
		}, testOptions(),
			[]string{"no acceptable authentication methods (the proxy wants a user and password: socks5://USER:PASS@HOST:PORT)"}, false},
		{"socks wrong password", func() string {
			return start(proxytest.SOCKS5, proxytest.Config{User: "u", Password: "p"}).URLWith("u", "wrong-secret")
		}, testOptions(),
			[]string{"socks5://u:xxxxx@", "authentication failed (the proxy did not accept the URL's user and password)"}, false},
		{"socks refused", func() string { return start(proxytest.SOCKS5, proxytest.Config{Reply: 5}).URL() }, testOptions(),
			[]string{"proxy socks5://127.0.0.1:", ": the proxy could not connect to " + s.addr + ": connection refused"}, false},
		{"socks silent", func() string { return start(proxytest.SOCKS5, proxytest.Config{Silent: true}).URL() }, short,
			[]string{"proxy socks5://127.0.0.1:", ": the proxy did not answer in time: context deadline exceeded"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			roots := proxytest.Roots()
			if tc.system {
				roots = nil
			}
			_, err := s.dialViaRoots(t, tc.url(), tc.opts, roots)
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "wrong-secret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// TestParseProxy: the URLs a user may give, and the mistakes they may make.
func TestParseProxy(t *testing.T) {
	good := map[string]string{
		"http://127.0.0.1:3128":          "http://127.0.0.1:3128",
		"HTTP://proxy.example:8080/":     "http://proxy.example:8080",
		"http://u:p%40ss@[::1]:3128":     "http://u:p%40ss@[::1]:3128",
		"socks5://127.0.0.1:1080":        "socks5://127.0.0.1:1080",
		"socks5h://user@localhost:1080":  "socks5h://user@localhost:1080",
		"socks5://u:p@proxy.example:443": "socks5://u:p@proxy.example:443",
		"https://proxy.example:443":      "https://proxy.example:443",
		"HTTPS://u:p@10.0.0.1:8443":      "https://u:p@10.0.0.1:8443",
	}
	for in, want := range good {
		u, err := ParseProxy(in)
		if err != nil {
			t.Errorf("ParseProxy(%q): %v", in, err)
			continue
		}
		if u.String() != want {
			t.Errorf("ParseProxy(%q) = %q, want %q", in, u, want)
		}
	}
	bad := map[string]string{
		"127.0.0.1:3128":               "not a proxy URL: give http://HOST:PORT or socks5://HOST:PORT",
		"proxy.example":                "not a proxy URL: give http://HOST:PORT or socks5://HOST:PORT",
		"socks4://proxy.example:1080":  `scheme "socks4" is not http, https, socks5 or socks5h`,
		"https://proxy.example":        `"proxy.example" is not HOST:PORT: a proxy URL needs the proxy's port`,
		"http://proxy.example":         `"proxy.example" is not HOST:PORT: a proxy URL needs the proxy's port`,
		"http://:3128":                 `":3128" is not HOST:PORT: a proxy URL needs the proxy's port`,
		"http://proxy.example:0":       `port "0" is not a number from 1 to 65535`,
		"http://proxy.example:99999":   `port "99999" is not a number from 1 to 65535`,
		"http://proxy.example:80/path": "a proxy URL has no path or query: give SCHEME://HOST:PORT",
		"http://proxy.example:80?a=b":  "a proxy URL has no path or query: give SCHEME://HOST:PORT",
		"http://proxy example:80":      "not a proxy URL: give http://HOST:PORT or socks5://HOST:PORT",
	}
	for in, want := range bad {
		if _, err := ParseProxy(in); err == nil || err.Error() != want {
			t.Errorf("ParseProxy(%q) = %v, want %q", in, err, want)
		}
	}
}

// FuzzProxyAnswer: whatever an HTTP proxy answers CONNECT with, the dial
// either fails or hands over a connection with nothing of the answer left
// unread.
func FuzzProxyAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\nextra"))
	f.Add([]byte("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("garbage"))
	u, _ := url.Parse("http://u:p@127.0.0.1:1")
	f.Fuzz(func(t *testing.T, answer []byte) {
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			defer b.Close()
			buf := make([]byte, 4096)
			b.Read(buf) // the request
			b.Write(answer)
		}()
		c, err := connect(a, u, "relay.example:7000")
		if err != nil {
			return
		}
		if c != a {
			t.Fatalf("connect returned %v, not the connection it was given", c)
		}
	})
}

// TestProxyCutIsNotEOF: straight to the relay and through each kind of
// proxy, on records and on plain TLS, a stream's reader on the dialer's
// side tells the session's end from the peer's FIN, as
// TestSmuxCutIsNotEOF checks. The end may come as a TLS close_notify on
// a socket that stays open for a while: the proxy's, through an https://
// proxy (17 of 200 rounds read as a clean EOF before batchConn noted its
// failed reads), or the relay's session TLS, on plain TLS (6-24 of 50,
// direct or through any proxy, before frameConn noted them too).
func TestProxyCutIsNotEOF(t *testing.T) {
	for _, plain := range []bool{false, true} {
		for _, kind := range append([]string{"direct"}, proxyKinds...) {
			t.Run(fmt.Sprintf("%s/plain=%v", kind, plain), func(t *testing.T) {
				t.Parallel()
				o := testOptions()
				o.plainTLS = plain
				s := newTestServer(t, o, nil)
				var px *proxytest.Proxy
				if kind != "direct" {
					px = proxytest.Start(t, kind, proxytest.Config{})
				}
				for i := range 50 {
					var c Session
					var err error
					if px != nil {
						c, err = s.dialVia(t, px.URL(), o)
					} else {
						c, err = s.dialWith(t, KindTCP, &Verifier{Pin: s.pin}, testALPN)
					}
					if err != nil {
						t.Fatal(err)
					}
					srv := s.accept(t)
					_, b := openPair(t, srv, c)
					readsCut(t, i, b, func() { srv.Close() })
					c.Close()
				}
			})
		}
	}
}
