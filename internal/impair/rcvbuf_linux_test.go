package impair

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// The proxy's sockets that read each way get that way's RecvBuffer (which
// Linux doubles for its bookkeeping); with none, the kernel's own.
func TestTCPRecvBuffer(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := target.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	const up, down = 16 << 10, 24 << 10
	p, err := NewTCP(target.Addr().String(), Config{RecvBuffer: up}, Config{RecvBuffer: down})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	(<-accepted).Close()

	rcvbuf := func(c net.Conn) int {
		t.Helper()
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var n int
		var serr error
		rc.Control(func(fd uintptr) { n, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF) })
		if serr != nil {
			t.Fatal(serr)
		}
		return n
	}
	var conns []net.Conn
	for deadline := time.Now().Add(5 * time.Second); len(conns) < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy holds %d connections, want 2", len(conns))
		}
		conns = conns[:0]
		p.mu.Lock()
		for pc := range p.conns {
			conns = append(conns, pc)
		}
		p.mu.Unlock()
	}
	for _, pc := range conns {
		want := 2 * down // the one to the target
		if pc.LocalAddr().String() == p.Addr() {
			want = 2 * up // the one the client dialed
		}
		if got := rcvbuf(pc); got != want {
			t.Errorf("%v → %v: SO_RCVBUF %d, want %d", pc.LocalAddr(), pc.RemoteAddr(), got, want)
		}
	}
	if got := rcvbuf(c); got == 2*up || got == 2*down {
		t.Errorf("the client's own socket has SO_RCVBUF %d too", got)
	}
}
