package transport

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestDatagramQueue: FIFO order, drops beyond the limit, bounded storage
// while it never empties, and pop's ways out.
func TestDatagramQueue(t *testing.T) {
	d := newDatagramQueue(4)
	ctx := context.Background()
	done := make(chan struct{})
	for i := range 6 {
		d.push([]byte{byte(i)})
	}
	for want := range 4 {
		p, err := d.pop(ctx, done)
		if err != nil || p[0] != byte(want) {
			t.Fatalf("pop: %v %v, want [%d]", p, err, want)
		}
	}
	// A consumer one behind a producer for a long time.
	next := 0
	for i := range 10000 {
		d.push([]byte{byte(i)})
		if i > 0 {
			p, _ := d.pop(ctx, done)
			if p[0] != byte(next) {
				t.Fatalf("got %d, want %d", p[0], byte(next))
			}
			next++
		} else {
			next = 0
		}
		if cap(d.q) > 16 {
			t.Fatalf("storage grew to %d slots with at most 2 waiting", cap(d.q))
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	d.pop(ctx, done) // the last one
	if _, err := d.pop(cctx, done); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pop on an empty queue: %v, want the context's error", err)
	}
	close(done)
	if _, err := d.pop(ctx, done); !errors.Is(err, ErrClosed) {
		t.Errorf("pop after done: %v, want ErrClosed", err)
	}
}

// A queue holds max datagrams of a usual size, but not max of the largest:
// those a peer sends faster than they are taken stop at max*2 KiB bytes.
func TestDatagramQueueBytes(t *testing.T) {
	d := newDatagramQueue(64)
	for range 64 {
		d.push(make([]byte, 1500))
	}
	if n := len(d.q) - d.head; n != 64 {
		t.Fatalf("%d datagrams of 1500 bytes queued, want 64", n)
	}
	ctx, done := context.Background(), make(chan struct{})
	for range 64 {
		d.pop(ctx, done)
	}
	for range 64 {
		d.push(make([]byte, MaxTCPDatagram))
	}
	if n := len(d.q) - d.head; n*MaxTCPDatagram > 64*datagramQueueShare {
		t.Fatalf("%d datagrams of %d bytes queued: %d bytes, over %d", n, MaxTCPDatagram, n*MaxTCPDatagram, 64*datagramQueueShare)
	}
	// Taking them makes room again.
	for len(d.q)-d.head > 0 {
		d.pop(ctx, done)
	}
	d.push(make([]byte, MaxTCPDatagram))
	if n := len(d.q) - d.head; n != 1 {
		t.Fatalf("%d datagrams queued after the queue emptied, want 1", n)
	}
	// A queue smaller than 32 still takes one of the largest.
	d = newDatagramQueue(4)
	d.push(make([]byte, MaxTCPDatagram))
	if n := len(d.q) - d.head; n != 1 {
		t.Fatalf("%d datagrams of %d bytes queued in an empty queue of 4, want 1", n, MaxTCPDatagram)
	}
}
