package tunnel

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Keep-alive for TCP connections to clients and to local servers not on a
// loopback address: net's defaults. A peer that vanished is found in
// 15 + 9×15 s.
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

var keepAliveConfig = net.KeepAliveConfig{
	Enable:   true,
	Idle:     keepAliveIdle * time.Second,
	Interval: keepAliveInterval * time.Second,
	Count:    keepAliveCount,
}

// keepAliveListener sets keep-alive on each connection it accepts, as net
// does, for a listener whose clients do not take it from the listening
// socket (listenTCP).
type keepAliveListener struct{ *net.TCPListener }

func (l keepAliveListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	c.SetKeepAliveConfig(keepAliveConfig)
	return c, nil
}

// dialLocal connects an agent to its local server. A server on a loopback
// address cannot go without its kernel ending the connection, so there
// keep-alive would only cost four system calls per client; one elsewhere
// can lose power or link in silence. (net sets TCP_NODELAY on every TCP
// connection.)
func dialLocal(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		keepAliveUnlessLoopback(tc, addrPort(tc.RemoteAddr()).Addr())
	}
	return c, nil
}

// keepAliveUnlessLoopback turns keep-alive on for c, connected to remote,
// unless remote is a loopback address.
func keepAliveUnlessLoopback(c *net.TCPConn, remote netip.Addr) {
	if remote.Unmap().IsLoopback() {
		return
	}
	c.SetKeepAliveConfig(keepAliveConfig)
}
