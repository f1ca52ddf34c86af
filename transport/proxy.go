package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	xproxy "golang.org/x/net/proxy"
)

// Reaching the relay through a proxy, for agents on networks whose only way
// out is one: an HTTP proxy's CONNECT (RFC 9110, 9.3.6, with Basic
// credentials), over TLS to the proxy for https://, or SOCKS5 (RFC 1928,
// with RFC 1929's user and password). All carry one TCP connection, so
// only TLS+smux goes through them; QUIC needs UDP. The session runs on the
// socket to the proxy itself, once the proxy has connected it onwards, so
// the TCP socket's fast paths (raw reads, TCP_NOTSENT_LOWAT) work as they
// do on a direct connection; through an https:// proxy it runs inside the
// TLS to the proxy, which the relay's TLS cannot skip.

// ParseProxy checks a proxy URL as a user writes it:
// http://[USER:PASS@]HOST:PORT, https://…, socks5://… or socks5h://… (both
// SOCKS schemes let the proxy resolve the relay's name).
func ParseProxy(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" || !strings.Contains(s, "://") {
		return nil, errors.New("not a proxy URL: give http://HOST:PORT or socks5://HOST:PORT")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("scheme %q is not http, https, socks5 or socks5h", u.Scheme)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("a proxy URL has no path or query: give SCHEME://HOST:PORT")
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%q is not HOST:PORT: a proxy URL needs the proxy's port", u.Host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return nil, fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	u.Path = ""
	return u, nil
}

// ProxyError is a proxy that did not connect the relay: it could not be
// reached, refused, or did not answer in time.
type ProxyError struct {
	Proxy string // its URL, with the password shown as xxxxx
	Err   error
}

func (e *ProxyError) Error() string { return "proxy " + e.Proxy + ": " + e.Err.Error() }

func (e *ProxyError) Unwrap() error { return e.Err }

// dialProxy returns a TCP connection to addr made by proxy p: the socket
// itself, or for an https:// proxy the TLS connection to it. roots are
// the certificates an https:// proxy's may be signed by; nil: the system's.
func dialProxy(ctx context.Context, nd *net.Dialer, p *url.URL, addr string, roots *x509.CertPool) (net.Conn, error) {
	c, err := dialVia(ctx, nd, p, addr, roots)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(ctx.Err(), context.Canceled):
		return nil, ctx.Err()
	case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
		// ctx's deadline, met as such or as the socket's: x/net's SOCKS
		// dialer sets it on the socket.
		return nil, fmt.Errorf("the proxy did not answer in time: %w", context.DeadlineExceeded)
	}
	return nil, err
}

func dialVia(ctx context.Context, nd *net.Dialer, p *url.URL, addr string, roots *x509.CertPool) (net.Conn, error) {
	if p.Scheme == "http" || p.Scheme == "https" {
		return dialConnect(ctx, nd, p, addr, roots)
	}
	var auth *xproxy.Auth
	if p.User != nil {
		pass, _ := p.User.Password()
		auth = &xproxy.Auth{User: p.User.Username(), Password: pass}
	}
	// x/net's SOCKS dialer hands back the socket wrapped in a type of its
	// own, with nothing buffered in it; keep the socket itself.
	var raw net.Conn
	forward := contextDialer(func(ctx context.Context, network, a string) (net.Conn, error) {
		c, err := nd.DialContext(ctx, network, a)
		raw = c
		return c, err
	})
	d, err := xproxy.SOCKS5("tcp", p.Host, auth, forward)
	if err != nil {
		return nil, err
	}
	if _, err := d.(xproxy.ContextDialer).DialContext(ctx, "tcp", addr); err != nil {
		return nil, socksError(err, addr, p.User != nil)
	}
	return raw, nil
}

type contextDialer func(ctx context.Context, network, addr string) (net.Conn, error)

func (f contextDialer) Dial(network, addr string) (net.Conn, error) {
	return f(context.Background(), network, addr)
}

func (f contextDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// socksError drops the "socks connect tcp PROXY->RELAY:" x/net puts in
// front (the caller names the proxy), says what a reply code means, and
// what to do about a refusal of credentials.
func socksError(err error, addr string, withUser bool) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "unknown error "):
		// x/net's words for a reply other than success (RFC 1928, 6).
		return fmt.Errorf("the proxy could not connect to %s: %s", addr, strings.TrimPrefix(msg, "unknown error "))
	case strings.Contains(msg, "no acceptable authentication methods") && !withUser:
		return fmt.Errorf("%w (the proxy wants a user and password: socks5://USER:PASS@HOST:PORT)", err)
	case strings.Contains(msg, "username/password authentication failed"):
		return fmt.Errorf("%w (the proxy did not accept the URL's user and password)", err)
	}
	return err
}

// dialConnect asks an HTTP proxy to CONNECT to addr.
func dialConnect(ctx context.Context, nd *net.Dialer, p *url.URL, addr string, roots *x509.CertPool) (net.Conn, error) {
	raw, err := nd.DialContext(ctx, "tcp", p.Host)
	if err != nil {
		return nil, err
	}
	// The handshake's reads and writes end with ctx: a proxy that never
	// answers would otherwise hold the dial past its timeout.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	c := raw
	if p.Scheme == "https" {
		c, err = proxyTLS(raw, p, roots)
	}
	if err == nil {
		c, err = connect(c, p, addr)
	}
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return c, nil
}

// proxyTLS runs the TLS handshake with an https:// proxy, checking its
// certificate as a browser would: for the URL's host, against roots.
func proxyTLS(raw net.Conn, p *url.URL, roots *x509.CertPool) (net.Conn, error) {
	tc := tls.Client(raw, &tls.Config{ServerName: p.Hostname(), RootCAs: roots, NextProtos: []string{"http/1.1"}})
	err := tc.Handshake()
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var record tls.RecordHeaderError
	switch {
	case err == nil:
		return tc, nil
	case errors.As(err, &unknown):
		return nil, fmt.Errorf("TLS to the proxy: %w (this machine does not trust the proxy's certificate: "+
			"add the certificate of the authority that signed it to the system's, or on Linux name a PEM file holding it in SSL_CERT_FILE)", err)
	case errors.As(err, &hostname):
		return nil, fmt.Errorf("TLS to the proxy: %w (give the proxy's URL with a name its certificate holds)", err)
	case errors.As(err, &record) && record.Conn != nil:
		// Set only for a first record that is no TLS at all (an HTTP
		// answer, say), not for other malformed records.
		return nil, fmt.Errorf("TLS to the proxy: %w (the proxy does not speak TLS on that port: give http://%s)", err, p.Host)
	}
	return nil, fmt.Errorf("TLS to the proxy: %w", err)
}

func connect(c net.Conn, p *url.URL, addr string) (net.Conn, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", addr, addr)
	if p.User != nil {
		pass, _ := p.User.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(p.User.Username() + ":" + pass))
		fmt.Fprintf(&b, "Proxy-Authorization: Basic %s\r\n", cred)
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	// The relay says nothing before the agent's TLS hello, so all a proxy
	// sends before it is its answer; anything more is a proxy that
	// misbehaves, and is refused rather than lost from the TLS stream.
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		// TLS servers (Go's, OpenSSL's) close on a request in the clear
		// without a word.
		if p.Scheme == "http" && (err == io.EOF || err == io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("reading the proxy's answer: %w (the proxy closed the connection without one; if it expects TLS, give https://%s)", err, p.Host)
		}
		return nil, fmt.Errorf("reading the proxy's answer: %w", err)
	}
	// The body is left alone: a 2xx answer to CONNECT has none (RFC 9110
	// says to ignore a Content-Length there, and reading one would wait for
	// the relay), and after any other the connection is closed.
	if resp.StatusCode/100 != 2 {
		return nil, connectRefused(resp.Status, resp.StatusCode, addr, p)
	}
	if n := br.Buffered(); n > 0 {
		return nil, fmt.Errorf("the proxy sent %d bytes after its answer to CONNECT, before the relay could speak", n)
	}
	return c, nil
}

// connectRefused says why proxy p may have refused, and what to try.
func connectRefused(status string, code int, addr string, p *url.URL) error {
	hint := ""
	// 407 is the standard answer; some proxies (tinyproxy) send 401.
	auth := code == http.StatusProxyAuthRequired || code == http.StatusUnauthorized
	switch {
	case auth && p.User != nil:
		hint = " (the proxy did not accept the URL's user and password)"
	case auth:
		hint = " (the proxy wants a user and password: " + p.Scheme + "://USER:PASS@HOST:PORT)"
	case code == http.StatusBadRequest && p.Scheme == "http":
		// nginx's and Go's answer to a request in the clear on a TLS port.
		hint = " (if the proxy expects TLS, give https://" + p.Host + ")"
	case code == http.StatusForbidden || code == http.StatusMethodNotAllowed:
		if _, port, _ := net.SplitHostPort(addr); port != "443" {
			hint = " (many proxies allow CONNECT only to port 443: ask the relay's operator for a relay on 443)"
		}
	}
	return fmt.Errorf("the proxy refused to connect to %s: %s%s", addr, status, hint)
}
