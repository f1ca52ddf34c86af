package tunnel

import (
	"net"
	"syscall"
)

// setSocketBuffer sets c's send (write) or receive buffer to size and
// returns what the kernel granted, or 0 if it cannot tell.
func setSocketBuffer(c *net.UDPConn, write bool, size int) int {
	opt, force := syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE
	if write {
		opt, force = syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	got := 0
	rc.Control(func(fd uintptr) {
		get := func() int {
			// Linux reports twice the size asked for: its own overhead.
			v, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt)
			if err != nil {
				return 0
			}
			return v / 2
		}
		if got = get(); got >= size {
			return
		}
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, size)
		if got = get(); got >= size {
			return
		}
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, force, size)
		got = get()
	})
	return got
}
