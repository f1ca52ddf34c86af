package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/looptest"
)

// TestBatchConnOrderAndClose checks that bytes written in many small and
// large writes arrive whole and in order, and that Close sends what is still
// queued before the peer sees EOF.
func TestBatchConnOrderAndClose(t *testing.T) {
	a, b := looptest.TCPPair(t)
	bc := newBatchConn(a)
	var want bytes.Buffer
	got := make(chan []byte, 1)
	go func() {
		p, _ := io.ReadAll(b)
		got <- p
	}()
	for i := range 300 {
		p := randBytes(1 + (i*7919)%(3*maxBatch/2))
		if i%3 == 0 {
			p = p[:1+i%40]
		}
		want.Write(p)
		if n, err := bc.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if !bytes.Equal(p, want.Bytes()) {
			t.Fatalf("received %d bytes, want %d (or the same length, different bytes)", len(p), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("peer never saw EOF")
	}
	if _, err := bc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if _, err := bc.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
}

// TestBatchConnCloseUnblocksRead checks that Close wakes a blocked Read.
func TestBatchConnCloseUnblocksRead(t *testing.T) {
	a, _ := looptest.TCPPair(t)
	bc := newBatchConn(a)
	done := make(chan error, 1)
	go func() {
		_, err := bc.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	bc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// TestBatchConnWriteError checks that a socket that fails makes later
// Writes fail instead of queueing for ever.
func TestBatchConnWriteError(t *testing.T) {
	a, b := looptest.TCPPair(t)
	bc := newBatchConn(a)
	b.SetLinger(0)
	b.Close() // the peer resets the connection
	p := make([]byte, 64<<10)
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = bc.Write(p)
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
	bc.Close()
	select {
	case <-bc.finished:
	case <-time.After(5 * time.Second):
		t.Fatal("flusher still running after Close")
	}
}
