package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
)

// listenTCP listens on addr for a tunnel's clients, with keep-alive on.
//
// Linux gives an accepted socket the options of its listener, so keep-alive
// is set here, once, instead of by net on every client: four system calls
// per connection, 3% of relayd's CPU when clients connect for one request.
// The settings are net's defaults.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				for _, o := range [...]struct{ level, opt, v int }{
					{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
				} {
					if serr = syscall.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
						serr = fmt.Errorf("setting keep-alive: %w", serr)
						return
					}
				}
			})
			return errors.Join(err, serr)
		},
	}

	return lc.Listen(context.Background(), "tcp", addr)
}
