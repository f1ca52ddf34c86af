//go:build !linux

package tunnel

import "net"

// setSocketBuffer sets c's send (write) or receive buffer to size; where
// the kernel does not report what it granted, it trusts the request.
func setSocketBuffer(c *net.UDPConn, write bool, size int) int {
	var err error
	if write {
		err = c.SetWriteBuffer(size)
	} else {
		err = c.SetReadBuffer(size)
	}
	if err != nil {
		return 0
	}
	return size
}
