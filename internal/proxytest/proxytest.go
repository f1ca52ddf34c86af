// Package proxytest runs the proxies agents may have to go through, an HTTP
// proxy's CONNECT (over TLS too) and SOCKS5, on loopback for tests. They connect only to
// loopback addresses, so a test cannot send anywhere else through them.
package proxytest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Kinds of proxy. HTTPS is HTTP's CONNECT over TLS, with a certificate
// only Roots (or the file CAFile writes) trusts.
const (
	HTTP   = "http"
	HTTPS  = "https"
	SOCKS5 = "socks5"
)

// Config says how a proxy behaves.
type Config struct {
	// User and Password are the credentials it requires; none when User
	// is empty.
	User, Password string
	// Status, for HTTP, answers every CONNECT with this status instead of
	// connecting; 0 connects.
	Status int
	// Trailing, for HTTP, is sent after a 200 answer, before anything from
	// the target.
	Trailing string
	// Reply, for SOCKS5, answers every request with this reply code instead
	// of connecting; 0 connects.
	Reply byte
	// Silent accepts connections and never answers.
	Silent bool
	// Nagle leaves Nagle's algorithm on (TCP_NODELAY off) on both of the
	// proxy's sockets, as tinyproxy and microsocks do.
	Nagle bool
}

// Proxy is a running proxy; it stops when the test ends.
type Proxy struct {
	Addr string // 127.0.0.1:PORT
	kind string
	cfg  Config

	mu      sync.Mutex
	targets []string
	conns   map[net.Conn]bool // open, to close when the test ends
}

// Start runs a proxy of kind (HTTP, HTTPS or SOCKS5) on 127.0.0.1.
func Start(t testing.TB, kind string, cfg Config) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), kind: kind, cfg: cfg, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.conns = nil
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !p.track(c) {
				return
			}
			if cfg.Nagle {
				c.(*net.TCPConn).SetNoDelay(false)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer p.untrack(c)
				if cfg.Silent {
					io.Copy(io.Discard, c)
					return
				}
				switch kind {
				case HTTP:
					p.serveHTTP(c)
				case HTTPS:
					tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{certificate()}})
					if tc.Handshake() == nil {
						p.serveHTTP(tc)
					}
				default:
					p.serveSOCKS(c)
				}
			}()
		}
	}()
	return p
}

// URL is the proxy's URL with the credentials it requires.
func (p *Proxy) URL() string {
	return p.URLWith(p.cfg.User, p.cfg.Password)
}

// URLWith is the proxy's URL with these credentials (none when user is "").
func (p *Proxy) URLWith(user, password string) string {
	if user == "" {
		return p.kind + "://" + p.Addr
	}
	return p.kind + "://" + user + ":" + password + "@" + p.Addr
}

// Targets are the addresses clients asked the proxy for, in order.
func (p *Proxy) Targets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// track adds c to the connections closed when the test ends; false (c
// closed) when it has ended.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) asked(target string) {
	p.mu.Lock()
	p.targets = append(p.targets, target)
	p.mu.Unlock()
}

func (p *Proxy) serveHTTP(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		// As squid and tinyproxy answer one (a TLS hello among them).
		fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.asked(req.Host)
	if p.cfg.User != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.cfg.User+":"+p.cfg.Password))
		if req.Header.Get("Proxy-Authorization") != want {
			fmt.Fprintf(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
			return
		}
	}
	if p.cfg.Status != 0 {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 5\r\n\r\nnope\n", p.cfg.Status, http.StatusText(p.cfg.Status))
		return
	}
	up, err := p.dial(req.Host)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer p.untrack(up)
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"+p.cfg.Trailing)
	pipe(c, br, up)
}

func (p *Proxy) serveSOCKS(c net.Conn) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil || hdr[0] != 5 {
		return
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return
	}
	want := byte(0) // no authentication
	if p.cfg.User != "" {
		want = 2 // user and password
	}
	if !strings.ContainsRune(string(methods), rune(want)) {
		c.Write([]byte{5, 0xff})
		return
	}
	c.Write([]byte{5, want})
	if want == 2 && !p.socksAuth(c) {
		return
	}
	var req [4]byte
	if _, err := io.ReadFull(c, req[:]); err != nil || req[1] != 1 {
		return
	}
	var host string
	switch req[3] {
	case 1, 4:
		ip := make([]byte, 4)
		if req[3] == 4 {
			ip = make([]byte, 16)
		}
		if _, err := io.ReadFull(c, ip); err != nil {
			return
		}
		a, _ := netip.AddrFromSlice(ip)
		host = a.String()
	case 3:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(c, name); err != nil {
			return
		}
		host = string(name)
	default:
		return
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return
	}
	target := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(port[:]))))
	p.asked(target)
	reply := func(code byte) { c.Write([]byte{5, code, 0, 1, 127, 0, 0, 1, 0, 0}) }
	if p.cfg.Reply != 0 {
		reply(p.cfg.Reply)
		return
	}
	up, err := p.dial(target)
	if err != nil {
		reply(5) // connection refused
		return
	}
	defer p.untrack(up)
	reply(0)
	pipe(c, c, up)
}

// socksAuth runs RFC 1929's exchange and reports whether it succeeded.
func (p *Proxy) socksAuth(c net.Conn) bool {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil || hdr[0] != 1 {
		return false
	}
	user := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, user); err != nil {
		return false
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return false
	}
	pass := make([]byte, n[0])
	if _, err := io.ReadFull(c, pass); err != nil {
		return false
	}
	if string(user) != p.cfg.User || string(pass) != p.cfg.Password {
		c.Write([]byte{1, 1})
		return false
	}
	c.Write([]byte{1, 0})
	return true
}

// dial connects to target if it is on loopback.
func (p *Proxy) dial(target string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	if a, err := netip.ParseAddr(host); (err != nil && host != "localhost") || (err == nil && !a.IsLoopback()) {
		return nil, fmt.Errorf("proxytest: %s is not on loopback", target)
	}
	c, err := net.Dial("tcp", target)
	if err != nil {
		return nil, err
	}
	if p.cfg.Nagle {
		c.(*net.TCPConn).SetNoDelay(false)
	}
	if !p.track(c) {
		return nil, net.ErrClosed
	}
	return c, nil
}

// pipe copies both ways between the client c (read through r) and up,
// passing each end's half-close on.
func pipe(c net.Conn, r io.Reader, up net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	done := make(chan struct{})
	go func() {
		io.Copy(c, up)
		c.(closeWriter).CloseWrite()
		close(done)
	}()
	io.Copy(up, r)
	up.(closeWriter).CloseWrite()
	<-done
}

// The HTTPS proxies' certificate, made once per test binary: a
// self-signed one for 127.0.0.1 and ::1 (not localhost, which tests use
// for a name it does not hold).
var (
	certOnce sync.Once
	cert     tls.Certificate
	certPEM  []byte
)

func certificate() tls.Certificate {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "proxytest"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	})
	return cert
}

// Roots trusts the HTTPS proxies' certificate, and nothing else.
func Roots() *x509.CertPool {
	certificate()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return pool
}

// CAFile writes the HTTPS proxies' certificate to a PEM file in a
// temporary folder of t's, for SSL_CERT_FILE, and returns its path.
func CAFile(t testing.TB) string {
	t.Helper()
	certificate()
	f := filepath.Join(t.TempDir(), "proxy-ca.pem")
	if err := os.WriteFile(f, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
