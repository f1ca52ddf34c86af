// Package impair is a loopback proxy that makes a path look like a real
// network: delay, loss, reordering, a small path MTU, a bandwidth cap, and a
// blackhole switch. Tests and measurements put it between an agent and the
// relay's agent port, since the kernels they run on may have no netem.
//
// UDP (NewUDP) forwards each client address as a flow of its own, packet by
// packet: each packet may be lost, held back (reordered), or dropped for
// its size. TCP (NewTCP) forwards a byte stream, so it delays and paces the
// bytes each way but never loses or reorders them (TCP would resend them);
// a blackhole holds them until the path is back, as TCP's retransmissions
// would deliver them then.
//
// Both listen on 127.0.0.1 only and forward to a loopback target.
package impair

import (
	"container/heap"
	"math/rand/v2"
	"sync"
	"time"
)

// Config is one direction's impairment. The zero value passes everything
// at once.
type Config struct {
	// Delay is the one-way delay (half the round trip, when both
	// directions have it).
	Delay time.Duration
	// Loss is the probability (0-1) that a UDP packet is dropped.
	Loss float64
	// Reorder is the probability (0-1) that a UDP packet is held back by
	// ReorderDelay more than the others, so later ones overtake it.
	Reorder      float64
	ReorderDelay time.Duration
	// MaxPacket drops UDP packets with more payload than this (a small
	// path MTU: 1280 bytes of IPv6 is a 1232-byte UDP payload); 0: none.
	MaxPacket int
	// Rate caps the bytes per second; 0: no cap.
	Rate int64
	// Queue bounds the bytes waiting for the Rate cap (a router's
	// buffer): UDP packets beyond it are dropped, TCP readers wait.
	// 0: 256 KiB.
	Queue int
	// Stop carries nothing this way, as Blackhole does both ways: UDP
	// packets are dropped, TCP bytes wait until Set clears it.
	Stop bool
	// Window bounds the TCP bytes in the proxy (on the delay line and in
	// the queue), as a TCP window bounds a real path's bytes in flight:
	// readers wait for room. 0: 64 MiB.
	Window int
	// RecvBuffer is the receive buffer (SO_RCVBUF) of the proxy's sockets
	// that read the TCP bytes going this way (on Unix): up's is set when
	// NewTCP listens, down's as each connection to the target is made.
	// The kernel acknowledges what it buffers there, and grows the
	// buffer to megabytes on its own: behind a Rate cap, bytes the queue
	// has no room for would wait there, acknowledged, rather than unsent
	// in the sender's socket, where a real bottleneck leaves them (and
	// where TCP_NOTSENT_LOWAT bounds them). A small one (16 KiB) keeps
	// them in the sender. 0: the kernel's own.
	RecvBuffer int
}

func (c Config) window() int64 {
	if c.Window > 0 {
		return int64(c.Window)
	}
	return 64 << 20
}

func (c Config) queue() int64 {
	if c.Queue > 0 {
		return int64(c.Queue)
	}
	return 256 << 10
}

// Stats counts what one direction did with its packets (UDP) or bytes
// (TCP).
type Stats struct {
	Passed    int64 // packets (UDP) or bytes (TCP) delivered
	Lost      int64 // UDP packets dropped by Loss
	TooLarge  int64 // UDP packets dropped by MaxPacket
	Overflow  int64 // UDP packets dropped because the queue was full
	Blackhole int64 // UDP packets dropped while blackholed
	Reordered int64 // UDP packets held back
}

// link is the shared state of one direction: its config, the time the
// rate cap's queue empties, and its counts.
type link struct {
	mu    sync.Mutex
	cfg   Config
	free  time.Time // when the bottleneck is free again
	stats Stats
	rng   *rand.Rand
}

func newLink(cfg Config) *link {
	return &link{cfg: cfg, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

func (l *link) set(cfg Config) {
	l.mu.Lock()
	l.cfg = cfg
	l.mu.Unlock()
}

func (l *link) stopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg.Stop
}

func (l *link) snapshot() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// departure returns when n bytes that arrive now leave the bottleneck,
// and whether the queue has room for them (drop reports it has not).
func (l *link) departureLocked(now time.Time, n int) (at time.Time, drop bool) {
	if l.cfg.Rate <= 0 {
		return now, false
	}
	if l.free.Before(now) {
		l.free = now
	}
	backlog := int64(l.free.Sub(now)) * l.cfg.Rate / int64(time.Second)
	if backlog+int64(n) > l.cfg.queue() {
		return time.Time{}, true
	}
	l.free = l.free.Add(time.Duration(int64(n) * int64(time.Second) / l.cfg.Rate))
	return l.free, false
}

// item is a packet or a chunk of bytes due at a time.
type item struct {
	due time.Time
	seq uint64
	p   []byte
}

// schedule delivers items in the order of their due times (FIFO among
// equal ones), each at its time, by one goroutine: deliver is never
// called concurrently.
type schedule struct {
	mu      sync.Mutex
	h       itemHeap
	seq     uint64
	wake    chan struct{}
	closed  bool
	deliver func([]byte)
}

func newSchedule(deliver func([]byte)) *schedule {
	s := &schedule{wake: make(chan struct{}, 1), deliver: deliver}
	go s.run()
	return s
}

func (s *schedule) add(due time.Time, p []byte) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.seq++
	heap.Push(&s.h, item{due: due, seq: s.seq, p: p})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *schedule) close() {
	s.mu.Lock()
	s.closed = true
	s.h = nil
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *schedule) run() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		var wait time.Duration = time.Hour
		var ready [][]byte
		now := time.Now()
		for len(s.h) > 0 {
			if d := s.h[0].due.Sub(now); d > 0 {
				wait = d
				break
			}
			ready = append(ready, heap.Pop(&s.h).(item).p)
		}
		s.mu.Unlock()
		for _, p := range ready {
			s.deliver(p)
		}
		if len(ready) > 0 {
			continue
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-s.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
	}
}

type itemHeap []item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if h[i].due.Equal(h[j].due) {
		return h[i].seq < h[j].seq
	}
	return h[i].due.Before(h[j].due)
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
