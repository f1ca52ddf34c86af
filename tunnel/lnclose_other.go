//go:build !linux

package tunnel

import "net"

// closeListener closes a tunnel's public TCP listener. Elsewhere than on
// Linux the clients still queued in it are reset.
func closeListener(ln net.Listener, _ func(net.Conn)) { ln.Close() }
