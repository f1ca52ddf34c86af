// Package looptest has the loopback helpers that tests in more than one
// package need.
package looptest

import (
	"net"
	"testing"
)

// TCPPair returns the two ends of a new loopback TCP connection; both are
// closed when t ends.
func TCPPair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		c.Close()
		t.Fatal("accept failed")
	}
	a, b = c.(*net.TCPConn), s.(*net.TCPConn)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
