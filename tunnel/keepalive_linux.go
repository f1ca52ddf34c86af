package tunnel

import (
	"context"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// listenTCP listens on addr for a tunnel's clients, with keep-alive on for
// each.
//
// Linux gives an accepted socket the options of its listener, so keep-alive
// is set once, on the listening socket, instead of by net on every client:
// four system calls per connection, 3% of relayd's CPU when clients connect
// for one request. Where that does not hold (a kernel that refuses an
// option, as older ones do on MPTCP sockets, or one that does not copy them,
// as gVisor's does not), the listener sets it per connection, like net.
func listenTCP(addr string) (net.Listener, error) {
	ln, inherited, err := listenKeepAlive(addr)
	if err != nil {
		return nil, err
	}
	if !inherited || !inheritsKeepAlive() {
		return keepAliveListener{ln}, nil
	}
	return ln, nil
}

// listenKeepAlive listens on addr with keep-alive set on the listening
// socket; set reports whether every option took. It never fails for the
// options' sake: a refusal there is no reason to refuse a tunnel its port.
func listenKeepAlive(addr string) (ln *net.TCPListener, set bool, err error) {
	lc := net.ListenConfig{
		KeepAlive: -1,
		// net may call Control twice (MPTCP, then plain TCP); the last
		// call is the socket it listens on.
		Control: func(_, _ string, c syscall.RawConn) error {
			set = false
			c.Control(func(fd uintptr) { set = setKeepAlive(int(fd)) == nil })
			return nil
		},
	}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return l.(*net.TCPListener), set, nil
}

func setKeepAlive(fd int) error {
	for _, o := range [...]struct{ level, opt, v int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
	} {
		if err := syscall.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("setting keep-alive: %w", err)
		}
	}
	return nil
}

// inheritsKeepAlive reports whether this kernel copies a listener's
// keep-alive to the sockets it accepts, trying it once on loopback.
var inheritsKeepAlive = sync.OnceValue(func() bool {
	ln, set, err := listenKeepAlive("127.0.0.1:0")
	if err != nil || !set {
		return false
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return false
	}
	defer c.Close()
	s, err := ln.AcceptTCP()
	if err != nil {
		return false
	}
	defer s.Close()
	rc, err := s.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	rc.Control(func(fd uintptr) {
		on, err1 := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle, err2 := syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		ok = err1 == nil && err2 == nil && on == 1 && idle == keepAliveIdle
	})
	return ok
})
