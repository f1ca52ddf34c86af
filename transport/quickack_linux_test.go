package transport

import (
	"crypto/tls"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestQuickAckReachesTheSocket: quickAck sets TCP_QUICKACK on the socket
// itself, beneath the TLS to an https:// proxy too. Setting the option to
// 0 puts a socket in delayed-ACK ("pingpong") mode, which reads back as 0.
func TestQuickAckReachesTheSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	rc, err := raw.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opt := func(set int) int {
		var v int
		rc.Control(func(fd uintptr) {
			if set >= 0 {
				unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, set)
			}
			v, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK)
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for name, c := range map[string]net.Conn{"socket": raw, "TLS to a proxy": tls.Client(raw, &tls.Config{})} {
		if got := opt(0); got != 0 {
			t.Fatalf("TCP_QUICKACK reads %d after setting 0", got)
		}
		quickAck(c)
		if got := opt(-1); got != 1 {
			t.Errorf("%s: TCP_QUICKACK is %d after quickAck, want 1", name, got)
		}
	}
}
