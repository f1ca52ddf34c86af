package transport

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relaytun/relay/internal/looptest"
	"github.com/relaytun/relay/internal/proxytest"
)

// Both ends of a TLS+smux session bound their socket's unsent bytes from
// the start, on records and on plain TLS alike, and through an https://
// proxy on the socket beneath the TLS to it.
func TestNotSentLowat(t *testing.T) {
	for _, plain := range []bool{false, true} {
		t.Run(map[bool]string{false: "records", true: "plain TLS"}[plain], func(t *testing.T) {
			o := testOptions()
			o.plainTLS = plain
			s := newTestServer(t, o, nil)
			c, sv := s.connect(t, KindTCP)
			checkNotSentLowat(t, plain, c, sv)
			px := proxytest.Start(t, proxytest.HTTPS, proxytest.Config{})
			c, err := s.dialVia(t, px.URL(), o)
			if err != nil {
				t.Fatal(err)
			}
			checkNotSentLowat(t, plain, c, s.accept(t))
		})
	}
}

func checkNotSentLowat(t *testing.T, plain bool, c, sv Session) {
	t.Helper()
	for _, end := range []struct {
		name string
		s    Session
	}{{"dialer", c}, {"listener", sv}} {
		ss := end.s.(*smuxSession)
		if ss.records() == plain {
			t.Fatalf("%s: records %v", end.name, ss.records())
		}
		var bc *batchConn
		switch conn := ss.conn.(type) {
		case *recordConn:
			bc = conn.raw
		case frameConn:
			bc = conn.NetConn().(*batchConn)
		default:
			t.Fatalf("%s: smux runs on a %T", end.name, conn)
		}
		sock, ok := tcpSocket(bc.Conn)
		if !ok {
			t.Fatalf("%s: no TCP socket beneath a %T", end.name, bc.Conn)
		}
		if got := notSentLowat(t, sock); got != minNotSent {
			t.Errorf("%s on a %T: TCP_NOTSENT_LOWAT %d, want %d", end.name, bc.Conn, got, minNotSent)
		}
	}
}

// The bounds on a socket's unsent bytes and on the queue in front of them
// open up while a fast reader takes everything, and close again when a
// slow one holds the bytes back.
func TestNotSentLowatFollowsSocket(t *testing.T) {
	a, b := looptest.TCPPair(t)
	b.SetReadBuffer(64 << 10) // the reader's kernel holds little
	bc := newBatchConn(a)
	defer bc.Close()
	var pause atomic.Int64 // between the reader's 4 KiB reads
	go func() {
		buf := make([]byte, 4<<10)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
			time.Sleep(time.Duration(pause.Load()))
		}
	}()
	p := make([]byte, smuxFrameSize)
	for _, phase := range []struct {
		name  string
		pause time.Duration
		ok    func(notSent, limit int) bool
		want  string
	}{
		{"fast reader", 0, func(n, l int) bool { return (n == 0 || n >= 16*minNotSent) && l >= 4*minBatch },
			"no bound or a large one, and a large queue"},
		{"2 MB/s", 2 * time.Millisecond, func(n, l int) bool { return n == minNotSent && l == minBatch },
			"the least of each"},
	} {
		pause.Store(int64(phase.pause))
		var n, l int
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
			if _, err := bc.Write(p); err != nil {
				t.Fatal(err)
			}
			n = notSentLowat(t, a)
			bc.mu.Lock()
			l = bc.limit
			bc.mu.Unlock()
			if phase.ok(n, l) {
				break
			}
		}
		if !phase.ok(n, l) {
			t.Errorf("%s: TCP_NOTSENT_LOWAT %d and queue bound %d; want %s", phase.name, n, l, phase.want)
		}
	}
}

func notSentLowat(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var gerr error
	rc.Control(func(fd uintptr) {
		n, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return n
}
