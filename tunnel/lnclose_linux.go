package tunnel

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// closeListener closes a tunnel's public TCP listener without resetting
// the clients queued in it. Closing a listening socket resets every
// connection in its accept queue: clients whose connect had already
// succeeded, and who may have sent their request. So what is queued is
// accepted first and handed to take, and the socket stops listening with
// the next system call (shutdown: from then on a new client is refused at
// once), leaving no time for another client to queue but the instant
// between the two calls. A handshake still under way (the client's ACK
// not yet back, a round trip on a real network; none on loopback) is
// reset, as it always was.
func closeListener(ln net.Listener, take func(net.Conn)) {
	tl, keepAlive := ln.(*net.TCPListener), false
	if k, ok := ln.(keepAliveListener); ok {
		tl, keepAlive = k.TCPListener, true
	}
	if tl == nil {
		ln.Close()
		return
	}
	var queued []net.Conn
	if rc, err := tl.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			for {
				// The socket is non-blocking: EAGAIN once the queue is empty.
				nfd, _, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
					continue
				}
				if err != nil {
					break
				}
				f := os.NewFile(uintptr(nfd), "")
				c, err := net.FileConn(f)
				f.Close()
				if err == nil {
					queued = append(queued, c)
				}
			}
			// Out of LISTEN now, not when Close's last reference to the
			// socket goes (the accept loop's, once it wakes up).
			unix.Shutdown(int(fd), unix.SHUT_RD)
		})
	}
	ln.Close()
	for _, c := range queued {
		if tc, ok := c.(*net.TCPConn); ok && keepAlive {
			tc.SetKeepAliveConfig(keepAliveConfig)
		}
		take(c)
	}
}
