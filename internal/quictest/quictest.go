// Package quictest makes the failed QUIC handshakes that tests of a QUIC
// listener's failure counts need.
package quictest

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// StallHandshake starts a QUIC handshake with addr, offering alpn, whose
// client sends its first datagram and nothing after it: to the server, a
// handshake that never completes.
func StallHandshake(t testing.TB, addr, alpn string) {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: &firstDatagramOnly{PacketConn: uc}}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tlsConf := &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{alpn}, InsecureSkipVerify: true}
	if c, err := tr.Dial(ctx, ua, tlsConf, &quic.Config{}); err == nil {
		c.CloseWithError(0, "")
		t.Fatal("a handshake with only its first datagram sent completed")
	}
}

// firstDatagramOnly sends the first datagram written to it and drops the
// rest.
type firstDatagramOnly struct {
	net.PacketConn
	sent atomic.Bool
}

func (c *firstDatagramOnly) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.sent.Swap(true) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}

// GarbageInitial is a datagram with a valid QUIC v1 Initial header (long
// header, version 1, 8-byte connection IDs, no token) and a payload that
// does not decrypt.
func GarbageInitial() []byte {
	p := make([]byte, 1200)
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	h := []byte{0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0}
	n := len(p) - len(h) - 2
	h = append(h, 0x40|byte(n>>8), byte(n))
	copy(p, h)
	return p
}
