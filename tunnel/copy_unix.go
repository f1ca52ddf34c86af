//go:build unix

package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/relaytun/relay/internal/rawfd"
)

// copyFromSocket copies from a TCP socket, holding a buffer only while the
// socket has bytes to read: the read is a raw one, and when it would block
// the buffer goes back to the pool before the wait for readability.
func copyFromSocket(dst io.Writer, tc *net.TCPConn, live *atomic.Int64) (written int64, err error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return copyAdaptive(dst, tc, live)
	}
	var (
		buf  *[]byte
		pool = &smallBufs // the pool buf comes from, and the next one
		n    int
		rerr error
	)
	defer func() {
		if buf != nil {
			pool.Put(buf)
		}
	}()
	read := func(fd uintptr) bool {
		if buf == nil {
			buf = pool.Get().(*[]byte)
		}
		n, rerr = rawfd.Read(fd, *buf)
		if rerr == syscall.EAGAIN {
			pool.Put(buf)
			buf = nil
			return false // wait for readability, holding nothing
		}
		return true
	}
	for {
		if err := rc.Read(read); err != nil {
			return written, err
		}
		switch {
		case rerr != nil:
			return written, readError(tc, rerr)
		case n <= 0:
			return written, nil // EOF
		}
		w, werr := writeAll(dst, (*buf)[:n], live)
		written += int64(w)
		if werr != nil {
			buf = nil // the stream may still read it: see writeAll
			return written, werr
		}
		if next := nextPool(pool, n, len(*buf)); next != pool {
			pool.Put(buf)
			buf, pool = nil, next
		}
	}
}

// nextPool is the pool for the next read after one of n bytes into a buffer
// of size from pool: the big one once a small buffer filled, the small one
// again once reads come in small.
func nextPool(pool *sync.Pool, n, size int) *sync.Pool {
	switch {
	case pool == &smallBufs && n == size:
		return &bigBufs
	case pool == &bigBufs && n <= smallBufSize:
		return &smallBufs
	}
	return pool
}

// readError is the error net would have returned for a failed read of tc.
func readError(tc *net.TCPConn, err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: os.NewSyscallError("read", err)}
}
