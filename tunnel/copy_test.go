package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/looptest"
)

// startedJoin is a StartJoin over two loopback TCP connections: bytes
// written to client come out of server and the other way round.
type startedJoin struct {
	client, server *net.TCPConn
	stats          chan JoinStats
}

func startJoined(t *testing.T, ctx context.Context) *startedJoin {
	t.Helper()
	client, a := looptest.TCPPair(t)
	b, server := looptest.TCPPair(t)
	sj := &startedJoin{client: client, server: server, stats: make(chan JoinStats, 1)}
	StartJoin(ctx, a, b, nil, nil, func(st JoinStats) { sj.stats <- st })
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return sj
}

func (sj *startedJoin) wait(t *testing.T) JoinStats {
	t.Helper()
	select {
	case st := <-sj.stats:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("the join never ended")
		return JoinStats{}
	}
}

// roundTrip sends msg from the client, echoes it at the server, and checks
// it comes back whole.
func (sj *startedJoin) roundTrip(t *testing.T, msg []byte) {
	t.Helper()
	if _, err := sj.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	sj.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(sj.server, got); err != nil {
		t.Fatalf("server read: %v", err)
	}
	if _, err := sj.server.Write(got); err != nil {
		t.Fatal(err)
	}
	sj.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(sj.client, got); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the message came back changed")
	}
}

// A half-close carries through: the client sends 3 MiB and its EOF, the
// server answers 2 MiB after reading it all, and the counts add up.
func TestStartJoinHalfClose(t *testing.T) {
	sj := startJoined(t, context.Background())
	up := make([]byte, 3<<20)
	down := make([]byte, 2<<20)
	rand.Read(up)
	rand.Read(down)
	go func() {
		sj.client.Write(up)
		sj.client.CloseWrite()
	}()
	got, err := io.ReadAll(sj.server)
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server read %d bytes (%v), want the %d sent", len(got), err, len(up))
	}
	go func() {
		sj.server.Write(down)
		sj.server.CloseWrite()
	}()
	got, err = io.ReadAll(sj.client)
	if err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client read %d bytes (%v), want the %d sent", len(got), err, len(down))
	}
	st := sj.wait(t)
	if st.AToB != int64(len(up)) || st.BToA != int64(len(down)) || st.Err != nil {
		t.Fatalf("stats %+v, want %d and %d bytes and no error", st, len(up), len(down))
	}
}

// Ending the context cuts the pair: both ends get a reset, not an end they
// could take for a complete transfer (before, a FIN), and done still runs
// with the cut for its error; whether the pair's pump waits hot or parked.
func TestStartJoinContextEnd(t *testing.T) {
	forEachPumpMode(t, testStartJoinContextEnd)
}

func testStartJoinContextEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	sj := startJoined(t, ctx)
	sj.roundTrip(t, []byte("hello"))
	cancel()
	if st := sj.wait(t); !errors.Is(st.Err, errCut) {
		t.Errorf("the pair's error: %v, want %v", st.Err, errCut)
	}
	for _, c := range []*net.TCPConn{sj.client, sj.server} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read after the context ended: %v, want a reset", err)
		}
	}
}

// The far side vanishing ends the pair while the client's side is idle.
func TestStartJoinPeerGone(t *testing.T) {
	forEachPumpMode(t, testStartJoinPeerGone)
}

func testStartJoinPeerGone(t *testing.T) {
	sj := startJoined(t, context.Background())
	sj.roundTrip(t, []byte("x"))
	sj.server.SetLinger(0)
	sj.server.Close() // a reset, not an EOF
	st := sj.wait(t)
	if st.Err == nil {
		t.Fatal("a reset ended the pair without an error")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func errString(err error) string {
	if err == nil {
		return "the message came back changed"
	}
	return err.Error()
}

// waitForGoroutines waits until at most n goroutines run.
func waitForGoroutines(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after %v, want at most %d", runtime.NumGoroutine(), d, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The context ending just as the pair ends by itself: done must read the
// stats while the context's hook may still be recording (a data race that
// -race caught in the quickstart example's test).
func TestStartJoinContextEndsWithThePair(t *testing.T) {
	for range 50 {
		ctx, cancel := context.WithCancel(context.Background())
		sj := startJoined(t, ctx)
		sj.client.Close()
		sj.server.Close()
		cancel()
		sj.wait(t)
	}
}

// keepingStream fails every write from the caller's buffer and keeps the
// buffer, as smux may after a failed WriteBuffer (a frame queued when a
// deadline fired still goes out).
type keepingStream struct {
	kept chan []byte
}

func (k *keepingStream) Write(p []byte) (int, error) { return 0, errors.New("unexpected Write") }

func (k *keepingStream) WriteBuffer(p []byte) (int, error) {
	k.kept <- p
	return 0, errors.New("stream gone")
}

// TestFailedBufferWriteDropsTheBuffer: a buffer a stream may still read
// after a failed WriteBuffer is not pooled for another connection to read
// into, by any of the copy loops: the socket's, the pump's and the
// adaptive one. One P, so that a buffer put back is the next one taken.
func TestFailedBufferWriteDropsTheBuffer(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	pooled := func(kept []byte) bool {
		var got []*[]byte
		defer func() {
			for _, b := range got {
				smallBufs.Put(b)
			}
		}()
		for range 8 {
			b := smallBufs.Get().(*[]byte)
			got = append(got, b)
			if &(*b)[:1][0] == &kept[:1][0] {
				return true
			}
		}
		return false
	}
	for _, loop := range []string{"socket", "pump", "adaptive"} {
		t.Run(loop, func(t *testing.T) {
			dst := &keepingStream{kept: make(chan []byte, 1)}
			done := make(chan error, 1)
			var src net.Conn
			switch loop {
			case "socket", "pump":
				client, tc := looptest.TCPPair(t)
				src = client
				if loop == "socket" {
					go func() { _, err := copyConn(dst, tc, nil); done <- err }()
				} else if _, ok := startPump(dst, tc, nil, func(_ int64, err error) { done <- err }); !ok {
					t.Skip("no pump on this system")
				}
			case "adaptive":
				a, b := net.Pipe()
				t.Cleanup(func() { a.Close(); b.Close() })
				src = a
				go func() { _, err := copyConn(dst, b, nil); done <- err }()
			}
			if _, err := src.Write([]byte("some bytes")); err != nil {
				t.Fatal(err)
			}
			var kept []byte
			select {
			case kept = <-dst.kept:
			case <-time.After(10 * time.Second):
				t.Fatal("the copy never wrote")
			}
			if err := <-done; err == nil {
				t.Fatal("the copy ended without the write's error")
			}
			if pooled(kept) {
				t.Fatal("the buffer the stream kept went back to the pool")
			}
		})
	}
}
