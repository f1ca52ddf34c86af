//go:build unix

package impair

import "syscall"

// recvBuffer is a net.ListenConfig or net.Dialer Control that sets
// SO_RCVBUF to n before the socket connects; nil for n <= 0.
func recvBuffer(n int) func(network, address string, c syscall.RawConn) error {
	if n <= 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		}); cerr != nil {
			return cerr
		}
		return err
	}
}
