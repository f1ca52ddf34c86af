package transport

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// groPair is a groConn on loopback and a plain socket that sends to it.
func groPair(t *testing.T) (*groConn, *net.UDPConn) {
	t.Helper()
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	g, ok := newGROConn(rc).(*groConn)
	if !ok {
		t.Skip("this kernel has no UDP_GRO")
	}
	// quic-go asks for each packet's TOS byte (for ECN); the test checks
	// that it reaches every packet of a burst.
	raw, _ := rc.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	sc, err := net.DialUDP("udp4", nil, rc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return g, sc
}

// sendBurst sends p as one GSO system call of seg-byte datagrams.
func sendBurst(t *testing.T, c *net.UDPConn, p []byte, seg int) {
	t.Helper()
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	if _, _, err := c.WriteMsgUDP(p, oob, nil); err != nil {
		t.Skipf("this kernel has no UDP GSO: %v", err)
	}
}

// readPackets reads n packets through ReadBatch, batch at a time, as quic-go
// does, into buffers of size bytes.
func readPackets(t *testing.T, g *groConn, n, batch, size int) []ipv4.Message {
	t.Helper()
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []ipv4.Message
	for len(got) < n {
		ms := make([]ipv4.Message, batch)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, size)}
			ms[i].OOB = make([]byte, 128)
		}
		k, err := g.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("ReadBatch after %d packets: %v", len(got), err)
		}
		got = append(got, ms[:k]...)
	}
	if len(got) != n {
		t.Fatalf("read %d packets, want %d", len(got), n)
	}
	return got
}

func TestGROConnSplitsBursts(t *testing.T) {
	g, sc := groPair(t)
	// Five 1000-byte packets and a 300-byte one in one burst, then a
	// lone datagram; each packet's bytes are its number.
	var burst []byte
	for i := range 6 {
		size := 1000
		if i == 5 {
			size = 300
		}
		burst = append(burst, bytes.Repeat([]byte{byte(i)}, size)...)
	}
	sendBurst(t, sc, burst, 1000)
	if _, err := sc.Write(bytes.Repeat([]byte{9}, 77)); err != nil {
		t.Fatal(err)
	}

	got := readPackets(t, g, 7, 4, 1452)
	want := []struct {
		b    byte
		size int
	}{{0, 1000}, {1, 1000}, {2, 1000}, {3, 1000}, {4, 1000}, {5, 300}, {9, 77}}
	for i, m := range got {
		p := m.Buffers[0][:m.N]
		if !bytes.Equal(p, bytes.Repeat([]byte{want[i].b}, want[i].size)) {
			t.Errorf("packet %d: %d bytes starting %v, want %d bytes of %d", i, m.N, p[:min(4, len(p))], want[i].size, want[i].b)
		}
		if m.Flags&unix.MSG_TRUNC != 0 {
			t.Errorf("packet %d: flagged truncated", i)
		}
		if a, ok := m.Addr.(*net.UDPAddr); !ok || a.Port != sc.LocalAddr().(*net.UDPAddr).Port {
			t.Errorf("packet %d: from %v, want %v", i, m.Addr, sc.LocalAddr())
		}
		// The TOS control message stays; UDP_GRO's does not reach quic-go.
		var levels []int32
		oob := m.OOB[:m.NN]
		for len(oob) > 0 {
			h, _, rest, err := unix.ParseOneSocketControlMessage(oob)
			if err != nil {
				t.Fatalf("packet %d: control messages: %v", i, err)
			}
			levels = append(levels, h.Level, h.Type)
			oob = rest
		}
		if len(levels) != 2 || levels[0] != unix.IPPROTO_IP || levels[1] != unix.IP_TOS {
			t.Errorf("packet %d: control messages (level, type) %v, want just IP_TOS", i, levels)
		}
	}
}

func TestGROConnTruncatesOversizedSegments(t *testing.T) {
	g, sc := groPair(t)
	sendBurst(t, sc, bytes.Repeat([]byte{7}, 4000), 2000)
	got := readPackets(t, g, 2, 8, 1452)
	for i, m := range got {
		if m.N != 1452 || m.Flags&unix.MSG_TRUNC == 0 {
			t.Errorf("packet %d: %d bytes, flags %#x; want 1452 bytes flagged MSG_TRUNC", i, m.N, m.Flags)
		}
	}
}

func TestGROConnDeadline(t *testing.T) {
	g, _ := groPair(t)
	g.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	ms := []ipv4.Message{{Buffers: [][]byte{make([]byte, 1452)}, OOB: make([]byte, 128)}}
	if _, err := g.ReadBatch(ms, 0); !os.IsTimeout(err) {
		t.Fatalf("ReadBatch past the deadline: %v, want a timeout", err)
	}
}

// A dialed QUIC session's socket is its own: it closes with the session,
// which frees its port.
func TestQUICDialClosesItsSocket(t *testing.T) {
	s := newTestServer(t, testOptions(), nil)
	for range 3 {
		c, _ := s.connect(t, KindQUIC)
		port := c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			u, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
			if err == nil {
				u.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("port %d still taken 5 s after its session closed: %v", port, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func FuzzSplitGRO(f *testing.F) {
	oob := make([]byte, unix.CmsgSpace(4)+unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], 1452)
	h = (*unix.Cmsghdr)(unsafe.Pointer(&oob[unix.CmsgSpace(4)]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	f.Add(oob)
	f.Add([]byte{})
	f.Add(oob[:10])
	f.Fuzz(func(t *testing.T, oob []byte) {
		seg, keep := splitGRO(oob, nil)
		if len(keep) > len(oob) {
			t.Fatalf("kept %d bytes of %d", len(keep), len(oob))
		}
		if seg != 0 && len(keep) == len(oob) {
			t.Fatalf("segment size %d found, but nothing was taken out", seg)
		}
	})
}
