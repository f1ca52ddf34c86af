package tunnel

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/relaytun/relay/transport"
)

// A pace is a byte rate shared by many connections and flows: on the
// relay, a token's max_bandwidth, one pace for each direction; on the
// agent, the session's share of it (LIMIT). Streams wait for it, and
// datagrams over it are dropped. Off (no limit), it costs a write one
// atomic load, so every connection can carry one and a reload that sets
// a limit reaches the connections already open.
type pace struct {
	on atomic.Bool
	// lim is the bucket at the rate in force: a change of rate puts a
	// new one in its place, whose burst never changes.
	lim atomic.Pointer[rate.Limiter]

	// mu guards rate, the rate set last (bytes a second; 0: none), and
	// changed, which a set that changes it closes and replaces: the
	// writes waiting then start over with the new bucket (or go, the
	// pace lifted), rather than wait out what the old one gave them (at
	// a low rate, minutes). What they had reserved goes with the old
	// bucket: they sent none of it.
	mu      sync.Mutex
	rate    uint64
	changed chan struct{}
}

func newPace() *pace {
	p := &pace{changed: make(chan struct{})}
	p.lim.Store(rate.NewLimiter(rate.Inf, 0))
	return p
}

// set makes the rate bytesPerSec, or no limit for 0.
func (p *pace) set(bytesPerSec uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bytesPerSec == p.rate {
		return // a reload that left it alone: the waits go on
	}
	p.rate = bytesPerSec
	if bytesPerSec == 0 {
		p.on.Store(false)
	} else {
		p.lim.Store(rate.NewLimiter(rate.Limit(bytesPerSec), paceBurst(bytesPerSec)))
		p.on.Store(true)
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// state is the pace's bucket (nil when it is off) and the channel its
// next change closes.
func (p *pace) state() (*rate.Limiter, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.on.Load() {
		return nil, nil
	}
	return p.lim.Load(), p.changed
}

// paceBurst is how many bytes may go at once: a tenth of a second's worth,
// at least 16 KiB so that a slow rate still moves whole frames and
// datagrams, at most 4 MiB.
func paceBurst(bytesPerSec uint64) int {
	return int(min(max(bytesPerSec/10, 16<<10), 4<<20))
}

// allow takes n bytes from the pace now, reporting false (taking nothing)
// when they are over it: a datagram then is dropped. A datagram larger
// than the burst (up to 64 KiB, at a low limit) takes a whole one when the
// bucket is full: otherwise it could never pass, however slowly sent.
func (p *pace) allow(n int) bool {
	if !p.on.Load() {
		return true
	}
	lim := p.lim.Load()
	return lim.AllowN(time.Now(), min(n, lim.Burst()))
}

// errPaceEnded is what a write waiting for its pace returns when its
// connection ends meanwhile.
var errPaceEnded = errors.New("pace: the connection ended while its write waited")

// take blocks until up to n bytes may go, and says how many: n, or the
// burst of the bucket in force when that is smaller (all n when the pace
// is off). It returns errPaceEnded if end is closed first. A take waiting
// when the rate changes starts over with the new bucket, its burst, or
// goes at once when the pace was lifted.
func (p *pace) take(end <-chan struct{}, n int) (int, error) {
	for {
		lim, changed := p.state()
		if lim == nil {
			return n, nil // off
		}
		k := min(n, lim.Burst()) // within this bucket's burst, which stays
		now := time.Now()
		r := lim.ReserveN(now, k)
		if d := r.DelayFrom(now); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-changed:
				t.Stop()
				continue
			case <-end:
				t.Stop()
				r.Cancel()
				return 0, errPaceEnded
			}
		}
		return k, nil
	}
}

// wrap makes pw the writer that keeps what is written to w to p (if not
// nil), adding what it wrote to sent (if not nil), and returns it; with
// neither, it returns w. A write waiting for p ends when end is closed.
// It keeps w's WriteBuffer (writeAll's way of sending from the caller's
// buffer) when w has one. A join holds one pw for each direction, so that
// pacing costs a connection no allocation.
func (pw *pacedBufferWriter) wrap(end <-chan struct{}, w io.Writer, p *pace, sent *atomic.Int64) io.Writer {
	if p == nil && sent == nil {
		return w
	}
	pw.pacedWriter = pacedWriter{end: end, w: w, p: p, sent: sent}
	if pw.bw = bufferWriter(w); pw.bw != nil {
		return pw
	}
	return &pw.pacedWriter
}

type pacedWriter struct {
	end  <-chan struct{}
	w    io.Writer
	p    *pace
	sent *atomic.Int64
}

func (w *pacedWriter) Write(b []byte) (int, error) { return w.count(w.write(b, w.w.Write)) }

func (w *pacedWriter) count(n int, err error) (int, error) {
	if w.sent != nil && n > 0 {
		w.sent.Add(int64(n))
	}
	return n, err
}

// write sends b through send in pieces of the pace's burst, each once the
// pace allows it, so a big write does not take the whole rate at once
// while other connections wait. A piece is sized by the bucket it waited
// for: one waiting when the rate is lowered goes in the new, smaller
// pieces, the first as soon as the new rate allows.
func (w *pacedWriter) write(b []byte, send func([]byte) (int, error)) (int, error) {
	written := 0
	for len(b) > 0 {
		if w.p == nil || !w.p.on.Load() {
			n, err := send(b)
			return written + n, err
		}
		k, err := w.p.take(w.end, len(b))
		if err != nil {
			return written, err
		}
		n, err := send(b[:k])
		written += n
		if err != nil {
			return written, err
		}
		b = b[k:]
	}
	return written, nil
}

type pacedBufferWriter struct {
	pacedWriter
	bw transport.BufferWriter
}

func (w *pacedBufferWriter) WriteBuffer(b []byte) (int, error) {
	return w.count(w.write(b, w.bw.WriteBuffer))
}
