package transport

import (
	"crypto/tls"
	"errors"
	"math/bits"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// batchConn is the TCP connection under a TLS+smux session's TLS layer. smux
// writes one frame at a time, and TLS turns each into one or more records,
// each of which would be a write system call of its own. batchConn queues the
// records instead, and one flusher goroutine writes whatever has queued up in
// a single call: records made while a write is in progress (other streams'
// frames, the next 16 KiB of a large frame) leave together in the next one.
// The sender encrypts while the flusher writes, so the two overlap.
//
// A connection that has been quiet for batchGap writes inline instead: a
// lone request gains nothing from the queue, and the hand-off to the
// flusher would cost it latency.
//
// A Write returns once its bytes are queued (or written); a later Write reports a failure
// of the socket. Close sends what is queued (for at most closeLinger) before
// it closes the socket, as the kernel does with its own send buffer, but
// reads fail at once.
type batchConn struct {
	net.Conn

	mu       sync.Mutex
	room     sync.Cond // signalled when the flusher takes the queue
	queue    *[]byte   // nil when empty; from batchBufs
	writing  bool      // a socket write is in progress
	last     int64     // when the last socket write ended, unix nanoseconds
	limit    int       // the queue's bound, minBatch to maxBatch
	notSent  int       // the socket's TCP_NOTSENT_LOWAT as set (notsent.go); -1: none
	err      error     // the socket's write error, sticky
	closed   bool
	kick     chan struct{} // wakes the flusher; capacity 1
	finished chan struct{} // closed when the flusher is gone
	// quickAck: the session goes through a proxy (quickack.go).
	quickAck atomic.Bool
	// readEnded: a read of the session failed other than by a deadline,
	// here or in the session's TLS above (frameConn.Read). The session's
	// cut reads it: the end may be a TLS close_notify (the proxy's, the
	// peer's on plain TLS) on a socket that stays open a while. Only the
	// session reads, and none of its read errors but a deadline's is
	// followed by more data.
	readEnded atomic.Bool
}

const (
	// maxBatch and minBatch bound the bytes queued ahead of the socket: a
	// full queue makes Write wait, so a slow peer pushes back on smux's
	// sender. The queue is first in, first out, in front of the socket's
	// own unsent bytes (notsent.go), so every frame waits for all of it,
	// while smux, behind it, takes each stream in turn: on a 20 Mbit/s
	// uplink 256 KiB is 105 ms. So the bound follows the socket (see
	// flush): maxBatch where it takes bytes fast (loopback, a fast link:
	// larger writes, fewer system calls); minBatch, where it starts, on
	// a slow link: one of smux's largest frames with its records'
	// overhead (13 ms at 20 Mbit/s). The flusher takes the whole queue,
	// so the sender fills the next one while it writes.
	maxBatch = 256 << 10
	minBatch = smuxFrameSize + 1<<10
	// batchDrain is how long the socket may take to send the queue, or
	// its own unsent bytes, at the rate it takes bytes; batchRateWindow
	// is the least time over which that rate is measured.
	batchDrain      = 5 * time.Millisecond
	batchRateWindow = 20 * time.Millisecond
	// closeLinger bounds how long Close waits to send what is queued.
	closeLinger = 2 * time.Second
	// batchGap is how long after the last socket write a Write goes
	// straight to the socket.
	batchGap = 20 * time.Microsecond
)

// batchBufs hold queued bytes; an idle connection holds none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, limit: minBatch, notSent: -1, kick: make(chan struct{}, 1), finished: make(chan struct{})}
	b.room.L = &b.mu
	if setNotSentLowat(c, minNotSent) {
		b.notSent = minNotSent
	}
	go b.flush()
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	if err := b.write(len(p), p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeFill is Write for bytes made in place: fill appends n bytes to its
// argument, which is the queue when one is building (so a record is sealed
// straight into it), else a pooled buffer written at once.
func (b *batchConn) writeFill(n int, fill func([]byte) []byte) error {
	return b.write(n, nil, fill)
}

// write writes p, or what fill appends (n bytes either way).
func (b *batchConn) write(n int, p []byte, fill func([]byte) []byte) error {
	b.mu.Lock()
	for b.queue != nil && len(*b.queue)+n > b.limit && b.err == nil && !b.closed {
		b.room.Wait()
	}
	switch {
	case b.err != nil:
		err := b.err
		b.mu.Unlock()
		return err
	case b.closed:
		b.mu.Unlock()
		return net.ErrClosed
	}
	if b.queue == nil && !b.writing {
		if now := time.Now().UnixNano(); now-b.last > int64(batchGap) {
			if fill == nil {
				_, err := b.writeInline(p)
				return err
			}
			bp := batchBufs.Get().(*[]byte)
			buf := fill(slices.Grow((*bp)[:0], n))
			_, err := b.writeInline(buf)
			if cap(buf) <= 4*maxBatch {
				*bp = buf[:0]
				batchBufs.Put(bp)
			}
			return err
		}
	}
	if b.queue == nil {
		b.queue = batchBufs.Get().(*[]byte)
		if !b.writing {
			b.kickFlusher()
		}
	}
	q := slices.Grow(*b.queue, n)
	if fill != nil {
		q = fill(q)
	} else {
		q = append(q, p...)
	}
	*b.queue = q
	b.mu.Unlock()
	return nil
}

// isClosed reports whether Close was called.
func (b *batchConn) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// writeInline writes p to the socket from the caller's goroutine; b.mu is
// held on entry and released on return.
func (b *batchConn) writeInline(p []byte) (int, error) {
	b.writing = true
	b.mu.Unlock()
	n, err := b.Conn.Write(p)
	b.mu.Lock()
	b.writing = false
	b.last = time.Now().UnixNano()
	if err != nil && b.err == nil {
		b.err = err
	}
	if b.queue != nil || b.closed || b.err != nil {
		b.kickFlusher()
	}
	b.room.Broadcast()
	b.mu.Unlock()
	return n, err
}

func (b *batchConn) kickFlusher() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// flush writes the queue whenever it is not empty, until the connection is
// closed and the queue sent, or the socket fails; then it closes the socket.
//
// It also measures the socket, over windows of batchRateWindow at least:
// in a window where the flusher spent half its time or more in writes,
// the socket held the bytes back, and the rate at which it took them
// while it wrote sets the queue's bound and the socket's unsent bytes
// (what it sends in batchDrain at that rate). A window with less is left
// out: whatever sets the pace, it is not the socket, and on a slow link
// waiting for a bulk transfer the bounds must stay where they are.
func (b *batchConn) flush() {
	defer close(b.finished)
	defer b.closeSocket()
	var (
		window  time.Time     // when the window began
		written int           // bytes written in it
		busy    time.Duration // time spent writing in it
	)
	for {
		b.mu.Lock()
		for b.writing || (b.queue == nil && !b.closed && b.err == nil) {
			b.mu.Unlock()
			<-b.kick
			b.mu.Lock()
		}
		q := b.queue
		b.queue = nil
		if q == nil || b.err != nil {
			b.mu.Unlock()
			return // closed and everything sent, or the socket failed
		}
		b.writing = true
		b.room.Broadcast()
		b.mu.Unlock()
		start := time.Now()
		if window.IsZero() {
			window = start
		}
		_, err := b.Conn.Write(*q)
		end := time.Now()
		written += len(*q)
		busy += end.Sub(start)
		if cap(*q) <= 4*maxBatch {
			*q = (*q)[:0]
			batchBufs.Put(q)
		}
		limit := 0
		if d := end.Sub(window); d >= batchRateWindow {
			if 2*busy >= d {
				limit = drainBytes(written, busy, minBatch, maxBatch)
				if n := notSentFor(written, busy); b.notSent >= 0 && n != b.notSent && setNotSentLowat(b.Conn, n) {
					b.notSent = n
				}
			}
			window, written, busy = end, 0, 0
		}
		b.mu.Lock()
		if limit > 0 {
			b.limit = limit
		}
		b.writing = false
		b.last = end.UnixNano()
		if err != nil && b.err == nil {
			b.err = err
		}
		b.room.Broadcast()
		b.mu.Unlock()
	}
}

// drainBytes is what a socket that took n bytes in d of writing takes in
// batchDrain: from lo to hi.
func drainBytes(n int, d time.Duration, lo, hi int) int {
	if d <= 0 {
		return hi
	}
	return int(min(max(int64(n)*int64(batchDrain)/int64(d), int64(lo)), int64(hi)))
}

// notSentFor is the TCP_NOTSENT_LOWAT for a socket that took n bytes in
// d of writing: what it takes in batchDrain, at least minNotSent, in
// powers of two (so that a rate that wavers changes it only when it
// halves or doubles); from maxNotSent on, 0: the system's default, no
// bound unless its administrator set one.
func notSentFor(n int, d time.Duration) int {
	b := drainBytes(n, d, minNotSent, maxNotSent)
	if b >= maxNotSent {
		return 0
	}
	return 1 << (bits.Len(uint(b)) - 1)
}

func (b *batchConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if n > 0 && b.quickAck.Load() {
		quickAck(b.Conn)
	}
	if err != nil {
		b.readFailed(err)
		b.mu.Lock()
		closed := b.closed
		b.mu.Unlock()
		if closed {
			return n, net.ErrClosed
		}
	}
	return n, err
}

// readFailed notes err, a read's failure here or in the session's TLS
// above, as the session's end (readEnded) unless a deadline caused it.
func (b *batchConn) readFailed(err error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		b.readEnded.Store(true)
	}
}

// closeSocket closes the connection; beneath TLS to an https:// proxy, the
// socket itself: TLS's Close would first send a close_notify, under a
// write deadline of its own (5 s) past closeLinger's.
func (b *batchConn) closeSocket() {
	if tc, ok := b.Conn.(*tls.Conn); ok {
		tc.NetConn().Close()
		return
	}
	b.Conn.Close()
}

// Close stops reads at once and lets the flusher send what is queued, for
// at most closeLinger, before it closes the socket.
func (b *batchConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return net.ErrClosed
	}
	b.closed = true
	b.room.Broadcast()
	b.kickFlusher()
	b.mu.Unlock()
	b.Conn.SetReadDeadline(past)
	b.Conn.SetWriteDeadline(time.Now().Add(closeLinger))
	return nil
}

// SetDeadline and SetWriteDeadline apply to the socket: a queued write that
// cannot finish in time fails the connection.
func (b *batchConn) SetDeadline(t time.Time) error {
	if err := b.SetReadDeadline(t); err != nil {
		return err
	}
	return b.SetWriteDeadline(t)
}

func (b *batchConn) SetReadDeadline(t time.Time) error {
	return b.setDeadline(b.Conn.SetReadDeadline, t)
}

func (b *batchConn) SetWriteDeadline(t time.Time) error {
	return b.setDeadline(b.Conn.SetWriteDeadline, t)
}

// setDeadline calls set unless the connection is closed: Close's own
// deadlines must stand.
func (b *batchConn) setDeadline(set func(time.Time) error, t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return net.ErrClosed
	}
	return set(t)
}

// setTCPOptions tunes a session's TCP connection. TCP_NODELAY is Go's
// default already; batchConn does the coalescing Nagle would, and bounds
// the socket's unsent bytes.
func setTCPOptions(c net.Conn) {
	tc, ok := tcpSocket(c)
	if !ok {
		return
	}
	tc.SetNoDelay(true)
}

// tcpSocket is the TCP socket beneath c: c itself, or the socket under
// the TLS to an https:// proxy. Socket options belong on it; reads and
// writes do not.
func tcpSocket(c net.Conn) (*net.TCPConn, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(*net.TCPConn)
	return sc, ok
}

// frameConn is the TLS connection as smux sees it. smux's sender writes a
// frame as header and payload through WriteBuffers when the connection has
// it; without, it copies both into a 64 KiB buffer of its own per session
// first. frameConn writes a large payload as it is, after its 8-byte header
// (a TLS record of its own: 22 bytes on the wire, no copy of the payload),
// and copies only small frames, whose two records would otherwise cost two
// system calls when the connection is quiet.
type frameConn struct{ *tls.Conn }

// frameCopyMax is the largest frame frameConn copies into one record.
const frameCopyMax = 4 << 10

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, frameCopyMax+16); return &b }}

func (c frameConn) WriteBuffers(v [][]byte) (int, error) {
	size := 0
	for _, b := range v {
		size += len(b)
	}
	if size <= frameCopyMax {
		bp := frameBufs.Get().(*[]byte)
		buf := (*bp)[:0]
		for _, b := range v {
			buf = append(buf, b...)
		}
		n, err := c.Conn.Write(buf)
		*bp = buf[:0]
		frameBufs.Put(bp)
		return n, err
	}
	n := 0
	for _, b := range v {
		m, err := c.Conn.Write(b)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Read notes, as batchConn.Read does, a read of the session's TLS that
// failed: the peer's close_notify ends the session's TLS while the
// socket beneath still reads.
func (c frameConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		if bc, ok := c.Conn.NetConn().(*batchConn); ok {
			bc.readFailed(err)
		}
	}
	return n, err
}
