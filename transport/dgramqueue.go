package transport

import (
	"context"
	"sync"
)

// datagramQueue holds the datagrams a TLS+smux session received until
// ReceiveDatagram takes them: at most max, and at most
// max*datagramQueueShare bytes of them (MaxTCPDatagram for a small max),
// newer ones dropped beyond that.
// Unlike a channel of that capacity, its storage grows with use and goes
// when it empties, so the many idle sessions of a busy relay hold none.
type datagramQueue struct {
	mu       sync.Mutex
	q        [][]byte
	head     int
	max      int
	bytes    int // the bytes of the datagrams waiting
	maxBytes int
	ready    chan struct{} // capacity 1: something was pushed
}

// datagramQueueShare is the bytes a queue holds per datagram it may hold:
// room for max datagrams of a usual size (a game's, or a full Ethernet
// frame's), but not for max of 64 KiB, which a peer sending its largest
// datagrams faster than they are taken, or before anyone takes them,
// would otherwise pile up (64 MiB for the default 1024).
const datagramQueueShare = 2 << 10

func newDatagramQueue(max int) *datagramQueue {
	// Room for one of the largest at least: a small queue must not drop
	// every large datagram, however fast they are taken.
	maxBytes := max * datagramQueueShare
	if maxBytes < MaxTCPDatagram {
		maxBytes = MaxTCPDatagram
	}
	return &datagramQueue{max: max, maxBytes: maxBytes, ready: make(chan struct{}, 1)}
}

// push queues p, or drops it when the queue is full.
func (d *datagramQueue) push(p []byte) {
	d.mu.Lock()
	if len(d.q)-d.head >= d.max || d.bytes+len(p) > d.maxBytes {
		d.mu.Unlock()
		return
	}
	d.bytes += len(p)
	if d.head > 0 && len(d.q) == cap(d.q) {
		// Full to the end of its storage: move what waits to the front
		// rather than grow, so a queue that never empties stays bounded.
		n := copy(d.q, d.q[d.head:])
		clear(d.q[n:])
		d.q, d.head = d.q[:n], 0
	}
	d.q = append(d.q, p)
	d.mu.Unlock()
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// pop waits for the oldest datagram, until done is closed or ctx ends.
func (d *datagramQueue) pop(ctx context.Context, done <-chan struct{}) ([]byte, error) {
	for {
		d.mu.Lock()
		if d.head < len(d.q) {
			p := d.q[d.head]
			d.q[d.head] = nil
			d.head++
			d.bytes -= len(p)
			more := d.head < len(d.q)
			if !more {
				if cap(d.q) > 64 {
					d.q = nil // a burst is over: give its storage back
				} else {
					d.q = d.q[:0]
				}
				d.head = 0
			}
			d.mu.Unlock()
			if more {
				// Another waiter may take the next one.
				select {
				case d.ready <- struct{}{}:
				default:
				}
			}
			return p, nil
		}
		d.mu.Unlock()
		select {
		case <-d.ready:
		case <-done:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
