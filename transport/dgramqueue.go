package transport

import (
	"context"
	"sync"
)

// datagramQueue holds the datagrams a TLS+smux session received until
// ReceiveDatagram takes them: at most max, newer ones dropped beyond that.
// Unlike a channel of that capacity, its storage grows with use and goes
// when it empties, so the many idle sessions of a busy relay hold none.
type datagramQueue struct {
	mu    sync.Mutex
	q     [][]byte
	head  int
	max   int
	ready chan struct{} // capacity 1: something was pushed
}

func newDatagramQueue(max int) *datagramQueue {
	return &datagramQueue{max: max, ready: make(chan struct{}, 1)}
}

// push queues p, or drops it when the queue is full.
func (d *datagramQueue) push(p []byte) {
	d.mu.Lock()
	if len(d.q)-d.head >= d.max {
		d.mu.Unlock()
		return
	}
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
