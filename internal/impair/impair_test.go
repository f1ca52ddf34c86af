package impair

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestUDP(t *testing.T) {
	const delay = 20 * time.Millisecond
	p, err := NewUDP(udpEcho(t), Config{Delay: delay, MaxPacket: 1232}, Config{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	roundTrip := func(n int) (time.Duration, bool) {
		t.Helper()
		msg := bytes.Repeat([]byte{byte(n)}, n)
		start := time.Now()
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(delay*2 + 500*time.Millisecond))
		m, err := c.Read(buf)
		if err != nil {
			return 0, false
		}
		if !bytes.Equal(buf[:m], msg) {
			t.Fatalf("echo of %d bytes came back as %d different ones", n, m)
		}
		return time.Since(start), true
	}
	if d, ok := roundTrip(1232); !ok || d < 2*delay {
		t.Fatalf("1232 bytes: round trip %v, arrived %v; want at least %v", d, ok, 2*delay)
	}
	if _, ok := roundTrip(1233); ok {
		t.Fatal("a packet over MaxPacket came through")
	}
	p.Blackhole(true)
	if _, ok := roundTrip(100); ok {
		t.Fatal("a packet came through the blackhole")
	}
	p.Blackhole(false)
	if _, ok := roundTrip(100); !ok {
		t.Fatal("nothing came through once the blackhole was off")
	}
	up, _ := p.Stats()
	if up.TooLarge != 1 || up.Blackhole != 1 || up.Passed != 2 {
		t.Fatalf("up stats %+v; want 2 passed, 1 too large, 1 blackholed", up)
	}

	p.Set(Config{}, Config{Stop: true})
	if _, ok := roundTrip(100); ok {
		t.Fatal("a packet came back through a stopped direction")
	}
	if _, down := p.Stats(); down.Blackhole != 1 {
		t.Fatalf("down stats %+v; want 1 dropped", down)
	}

	p.Set(Config{Loss: 1}, Config{})
	if _, ok := roundTrip(100); ok {
		t.Fatal("a packet came through 100% loss")
	}
	if up, _ := p.Stats(); up.Lost != 1 {
		t.Fatalf("up stats %+v; want 1 lost", up)
	}
}

// TestUDPReorder checks held-back packets are overtaken and the others
// keep their order.
func TestUDPReorder(t *testing.T) {
	p, err := NewUDP(udpEcho(t), Config{Reorder: 0.3, ReorderDelay: 30 * time.Millisecond}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 100
	for i := range n {
		c.Write([]byte{byte(i)})
	}
	var got []byte
	buf := make([]byte, 16)
	for len(got) < n {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, err := c.Read(buf)
		if err != nil {
			break
		}
		got = append(got, buf[:m]...)
	}
	up, _ := p.Stats()
	if len(got) != n || up.Reordered == 0 {
		t.Fatalf("%d of %d came back, %d held back", len(got), n, up.Reordered)
	}
	inOrder := 0
	for i := 1; i < n; i++ {
		if got[i] > got[i-1] {
			inOrder++
		}
	}
	if inOrder == n-1 {
		t.Fatal("no packet was overtaken")
	}
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	const delay = 20 * time.Millisecond
	cfg := Config{Delay: delay, Rate: 8 << 20, Window: 256 << 10}
	p, err := NewTCP(ln.Addr().String(), cfg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*delay {
		t.Fatalf("round trip %v; want at least %v", d, 2*delay)
	}

	// Bytes sent during a blackhole arrive, in order, once it is off.
	p.Blackhole(true)
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := c.Read(b); n > 0 {
		t.Fatal("a byte came through the blackhole")
	}
	p.Blackhole(false)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("%d bytes came back for %d sent, or different ones", len(got), len(msg))
	}
}

func TestRefusesOtherTargets(t *testing.T) {
	if _, err := NewUDP("192.0.2.1:9", Config{}, Config{}); err == nil {
		t.Error("NewUDP took a target that is not loopback")
	}
	if _, err := NewTCP("192.0.2.1:9", Config{}, Config{}); err == nil {
		t.Error("NewTCP took a target that is not loopback")
	}
}
