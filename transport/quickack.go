package transport

import (
	"crypto/tls"
	"net"
	"slices"
)

// Sessions through a proxy acknowledge what they read at once.
//
// Many proxies (tinyproxy and microsocks among them) leave Nagle's
// algorithm on: of two small writes, the second waits until the first is
// acknowledged. The receiving kernel delays that acknowledgement (up to
// 40 ms on Linux) in the hope of sending it with a reply, so every exchange
// of small frames (a new stream's first bytes, datagrams) stalls at the
// proxy. relayctl bench through tinyproxy 1.11.1, microsocks 1.0.3 and a Go
// proxy with TCP_NODELAY off: 95-129 new connections a second and a UDP
// one-way delay of 2.4-3.3 ms; with both ends setting TCP_QUICKACK after
// each read, 1,979-2,050 and 0.46-0.54 ms (2,446 and 0.30 ms straight to
// the relay).
// The option lasts until the kernel next decides to delay, hence after
// every read.
//
// Both ends must: the dialer knows it went through a proxy, and tells the
// listener by offering viaProxyALPN beside its real protocols in the TLS
// handshake, which the listener never picks and an older relay ignores.
// A direct session sends no more acknowledgements than before: TCP_NODELAY
// at both ends leaves nothing to wait for them.
const viaProxyALPN = "relay-via-proxy"

// ViaProxy reports whether s goes through a proxy: its dialer was given
// one, or, on the listener's side, the dialer said so. A QUIC session
// never does.
func ViaProxy(s Session) bool {
	ss, ok := s.(*smuxSession)
	if !ok {
		return false
	}
	bc, ok := ss.tc.NetConn().(*batchConn)
	return ok && bc.quickAck.Load()
}

// offerViaProxy returns c offering viaProxyALPN last.
func offerViaProxy(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = append(slices.Clone(c.NextProtos), viaProxyALPN)
	return c
}

// markViaProxy returns base setting quickAck on the connection of a
// client that offers viaProxyALPN; base's own GetConfigForClient decides
// the rest.
func markViaProxy(base *tls.Config) *tls.Config {
	c := base.Clone()
	next := base.GetConfigForClient
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if bc, ok := hello.Conn.(*batchConn); ok && slices.Contains(hello.SupportedProtos, viaProxyALPN) {
			bc.quickAck.Store(true)
		}
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	return c
}

// quickAck acknowledges at once what c read: on the socket beneath, for a
// session inside TLS to an https:// proxy.
func quickAck(c net.Conn) {
	if sc, ok := tcpSocket(c); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(setQuickAck)
		}
	}
}
