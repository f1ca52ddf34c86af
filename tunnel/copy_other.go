//go:build !unix

package tunnel

import (
	"io"
	"net"
	"sync/atomic"
)

// copyFromSocket is copy_unix.go's raw-socket copy; elsewhere a socket is
// read like any other source.
func copyFromSocket(dst io.Writer, tc *net.TCPConn, live *atomic.Int64) (int64, error) {
	return copyAdaptive(dst, tc, live)
}
