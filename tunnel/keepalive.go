package tunnel

import (
	"context"
	"net"
	"time"
)

// Keep-alive for TCP connections to clients and to local servers on other
// hosts: net's defaults, in seconds. A peer that vanished is found in
// 15 + 9×15 s.
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

// dialLocal connects an agent to its local server, with keep-alive on only
// when the server is on another host, whose power or link can fail in
// silence. A server on this host cannot go without its kernel ending the
// connection, so there keep-alive would only cost four system calls per
// client. (net sets TCP_NODELAY on every TCP connection.)
func dialLocal(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok || addrPort(tc.RemoteAddr()).Addr().Unmap().IsLoopback() {
		return c, nil
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable:   true,
		Idle:     keepAliveIdle * time.Second,
		Interval: keepAliveInterval * time.Second,
		Count:    keepAliveCount,
	})
	return c, nil
}
