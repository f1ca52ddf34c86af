package tunnel

import (
	"context"
	"net"
	"net/netip"
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

// checkKeepAlive fails unless c has keep-alive on with our settings.
func checkKeepAlive(t *testing.T, c net.Conn) {
	t.Helper()
	on := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	idle := sockopt(t, c, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
	interval := sockopt(t, c, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
	count := sockopt(t, c, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	if on != 1 || idle != keepAliveIdle || interval != keepAliveInterval || count != keepAliveCount {
		t.Fatalf("keep-alive %d, idle %d s, interval %d s, count %d; want 1, %d, %d, %d",
			on, idle, interval, count, keepAliveIdle, keepAliveInterval, keepAliveCount)
	}
}

// listenOrSkip listens on addr, skipping only IPv6 where it is missing.
func listenOrSkip(t *testing.T, addr string, listen func(string) (net.Listener, error)) net.Listener {
	t.Helper()
	ln, err := listen(addr)
	if err != nil {
		if addr[0] == '[' {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptOne dials ln (over MPTCP when mptcp, which the kernel may turn
// into plain TCP) and returns the accepted side.
func acceptOne(t *testing.T, ln net.Listener, mptcp bool) net.Conn {
	t.Helper()
	var d net.Dialer
	d.SetMultipathTCP(mptcp)
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A tunnel's clients have keep-alive and TCP_NODELAY, over IPv4 and IPv6,
// from plain TCP and MPTCP clients. The settings are net's defaults, so
// this checks that clients have them, not who set them; the next test
// checks that the listener, not each connection, does here.
func TestClientsHaveKeepAlive(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		for _, mptcp := range []bool{false, true} {
			t.Run(addr+map[bool]string{false: "/tcp", true: "/mptcp"}[mptcp], func(t *testing.T) {
				s := acceptOne(t, listenOrSkip(t, addr, listenTCP), mptcp)
				checkKeepAlive(t, s)
				if nd := sockopt(t, s, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); nd != 1 {
					t.Fatalf("TCP_NODELAY %d, want 1", nd)
				}
			})
		}
	}
}

// On this kernel clients take keep-alive from the listening socket, so
// listenTCP's listener is net's own, setting nothing per connection.
func TestListenerKeepAliveIsInherited(t *testing.T) {
	if !inheritsKeepAlive() {
		t.Fatal("the loopback probe found keep-alive not copied to accepted sockets")
	}
	ln := listenOrSkip(t, "127.0.0.1:0", listenTCP)
	if _, ok := ln.(*net.TCPListener); !ok {
		t.Fatalf("listenTCP gave a %T, want *net.TCPListener", ln)
	}
	// Without the listener's settings its clients would have none.
	plain := listenOrSkip(t, "127.0.0.1:0", func(a string) (net.Listener, error) {
		return (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", a)
	})
	if on := sockopt(t, acceptOne(t, plain, false), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); on != 0 {
		t.Fatalf("a listener with keep-alive off gave a client keep-alive %d", on)
	}
}

// Where clients do not take keep-alive from the listener, the fallback
// sets it on each.
func TestKeepAliveListenerSetsEach(t *testing.T) {
	ln := listenOrSkip(t, "127.0.0.1:0", func(a string) (net.Listener, error) {
		l, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", a)
		if err != nil {
			return nil, err
		}
		return keepAliveListener{l.(*net.TCPListener)}, nil
	})
	checkKeepAlive(t, acceptOne(t, ln, false))
}

// An agent's connection to a server on a loopback address goes without
// keep-alive; to one elsewhere it has it.
func TestLocalKeepAlive(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln := listenOrSkip(t, addr, func(a string) (net.Listener, error) { return net.Listen("tcp", a) })
			c, err := dialLocal(context.Background(), ln.Addr().String(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if on := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); on != 0 {
				t.Fatalf("keep-alive %d on a connection to %v, want 0", on, c.RemoteAddr())
			}
			// Tests send only to loopback, so the decision for another
			// host is checked on this connection, told the address.
			keepAliveUnlessLoopback(c.(*net.TCPConn), netip.MustParseAddr("::ffff:127.0.0.1"))
			if on := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); on != 0 {
				t.Fatalf("keep-alive %d for an IPv4-mapped loopback address, want 0", on)
			}
			keepAliveUnlessLoopback(c.(*net.TCPConn), netip.MustParseAddr("192.0.2.10"))
			checkKeepAlive(t, c)
		})
	}
}
