package tunnel

import (
	"context"
	"io"
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
	on  atomic.Bool
	lim *rate.Limiter
}

func newPace() *pace { return &pace{lim: rate.NewLimiter(rate.Inf, 0)} }

// set makes the rate bytesPerSec, or no limit for 0.
func (p *pace) set(bytesPerSec uint64) {
	if bytesPerSec == 0 {
		p.on.Store(false)
		p.lim.SetLimit(rate.Inf)
		return
	}
	p.lim.SetBurst(paceBurst(bytesPerSec))
	p.lim.SetLimit(rate.Limit(bytesPerSec))
	p.on.Store(true)
}

// paceBurst is how many bytes may go at once: a tenth of a second's worth,
// at least 16 KiB so that a slow rate still moves whole frames and
// datagrams, at most 4 MiB.
func paceBurst(bytesPerSec uint64) int {
	return int(min(max(bytesPerSec/10, 16<<10), 4<<20))
}

// allow takes n bytes from the pace now, reporting false (taking nothing)
// when they are over it: a datagram then is dropped.
func (p *pace) allow(n int) bool {
	return !p.on.Load() || p.lim.AllowN(time.Now(), n)
}

// wait blocks until n bytes may go, in steps no larger than the burst.
// It returns ctx's error if ctx ends first.
func (p *pace) wait(ctx context.Context, n int) error {
	for n > 0 && p.on.Load() {
		burst := p.lim.Burst()
		k := min(n, burst)
		if k <= 0 {
			return nil // turned off meanwhile
		}
		took, err := p.step(ctx, k, burst)
		if err != nil {
			return err
		}
		if took {
			n -= k
		}
	}
	return nil
}

// step waits for k bytes, chosen when the burst was burst. It reports
// false, and no error, when a reload shrank the burst under k meanwhile
// (rate.Limiter refuses a step over its burst): the caller takes a
// smaller one, rather than fail and cut its connection.
func (p *pace) step(ctx context.Context, k, burst int) (took bool, err error) {
	if err := p.lim.WaitN(ctx, k); err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if p.lim.Burst() != burst {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// paced wraps w so that what is written to it keeps to p (if not nil),
// adding what it wrote to sent (if not nil); with neither, it is w. It keeps w's
// WriteBuffer (writeAll's way of sending from the caller's buffer) when w
// has one.
func paced(ctx context.Context, w io.Writer, p *pace, sent *atomic.Int64) io.Writer {
	if p == nil && sent == nil {
		return w
	}
	pw := &pacedWriter{ctx: ctx, w: w, p: p, sent: sent}
	if bw := bufferWriter(w); bw != nil {
		return &pacedBufferWriter{pacedWriter: pw, bw: bw}
	}
	return pw
}

type pacedWriter struct {
	ctx  context.Context
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
// while other connections wait.
func (w *pacedWriter) write(b []byte, send func([]byte) (int, error)) (int, error) {
	written := 0
	for len(b) > 0 {
		if w.p == nil || !w.p.on.Load() {
			n, err := send(b)
			return written + n, err
		}
		k := min(len(b), max(w.p.lim.Burst(), 1))
		if err := w.p.wait(w.ctx, k); err != nil {
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
	*pacedWriter
	bw transport.BufferWriter
}

func (w *pacedBufferWriter) WriteBuffer(b []byte) (int, error) {
	return w.count(w.write(b, w.bw.WriteBuffer))
}
