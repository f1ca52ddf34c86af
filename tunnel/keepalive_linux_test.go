package tunnel

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// sockopt reads one of c's socket options.
func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// A client's connection takes keep-alive from the listener, since net no
// longer sets it on each one.
func TestClientsInheritKeepAlive(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := listenTCP(addr)
			if err != nil {
				t.Skip(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			on := sockopt(t, s, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			idle := sockopt(t, s, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
			interval := sockopt(t, s, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
			count := sockopt(t, s, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
			if on != 1 || idle != keepAliveIdle || interval != keepAliveInterval || count != keepAliveCount {
				t.Fatalf("accepted client: keep-alive %d, idle %d s, interval %d s, count %d; want 1, %d, %d, %d",
					on, idle, interval, count, keepAliveIdle, keepAliveInterval, keepAliveCount)
			}
			if nd := sockopt(t, s, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); nd != 1 {
				t.Fatalf("accepted client: TCP_NODELAY %d, want 1", nd)
			}
		})
	}
}

// An agent's connection to a server on this host goes without keep-alive.
func TestNoKeepAliveToLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skip(err)
			}
			defer ln.Close()
			c, err := dialLocal(context.Background(), ln.Addr().String(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if on := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); on != 0 {
				t.Fatalf("keep-alive %d on a connection to %v, want 0", on, c.RemoteAddr())
			}
		})
	}
}
