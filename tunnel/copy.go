package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/relaytun/relay/transport"
)

// The copy loop's buffers. A connection copies through a big pooled buffer
// only while bytes are moving: an idle connection holds none.
//
//   - From a TCP socket (the public client on the relay, the local server on
//     the agent), the loop waits for the socket to be readable without any
//     buffer and takes one only to read (copy_unix.go).
//   - Either way, reads start in a small buffer and move up to a big one
//     once a read fills the small one (bulk data), back down once reads
//     come in small again: a burst of new connections, each with a short
//     request, leaves no pool of big buffers behind.
//   - From a transport stream, which cannot wait without a buffer, it holds
//     a small one while it waits.
const (
	bigBufSize   = 128 << 10
	smallBufSize = 1 << 10
)

var (
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
)

type closeWriter interface{ CloseWrite() error }

// JoinStats reports what a Join carried.
type JoinStats struct {
	// AToB and BToA count bytes written to b and to a.
	AToB, BToA int64
	// Err is the first failure other than a clean EOF, if any.
	Err error
}

// Join copies a to b and b to a until both directions end, then closes both.
// EOF from one side becomes CloseWrite on the other, so the other direction
// keeps flowing (a client that half-closes still gets its whole reply). Any
// other failure, or a side without CloseWrite, closes both at once so neither
// end waits on a peer that is gone.
func Join(a, b net.Conn) JoinStats { return JoinCounting(a, b, nil, nil) }

// JoinCounting is Join that also adds the bytes written to b and to a to
// aToB and bToA (either may be nil) as they flow, so a long connection shows
// in the totals before it ends.
//
// The caller's goroutine copies a to b and one more goroutine copies b to a,
// so a joined pair costs one goroutine beyond the caller's.
func JoinCounting(a, b net.Conn, aToB, bToA *atomic.Int64) JoinStats {
	j := &join{a: a, b: b, aToB: aToB, bToA: bToA, left: 2}
	done := make(chan struct{})
	go func() {
		defer close(done)
		j.pipe(a, b, &j.st.BToA, bToA)
	}()
	j.pipe(b, a, &j.st.AToB, aToB)
	<-done
	a.Close()
	b.Close()
	return j.st
}

// StartJoin is JoinCounting from new goroutines: it returns at once, and
// done (if not nil) runs, on one of them, once both directions have ended and
// both connections are closed. When ctx ends first, both connections are
// closed (done still runs). The caller's goroutine may end meanwhile, so a
// long-lived connection costs just the copies' goroutines, whose stacks stay
// small: the caller's grew with whatever it did before (dialing, logging),
// and a blocked goroutine's stack shrinks back only at a collection, by
// half each time.
//
// When a is a TCP socket, its direction holds no goroutine while a has
// nothing to read (pump_linux.go): an idle pair costs one goroutine.
func StartJoin(ctx context.Context, a, b net.Conn, aToB, bToA *atomic.Int64, done func(JoinStats)) {
	startJoin(ctx, a, b, aToB, bToA, nil, joinPaces{}, done)
}

// joinPaces are the paces the writes to a and to b keep to (nil: none),
// and sentA (if not nil) counts the writes to a too.
type joinPaces struct {
	toA, toB *pace
	sentA    *atomic.Int64
}

// startJoin is StartJoin with the writes to a watched by guard (if not
// nil), and both directions' writes kept to their paces.
func startJoin(ctx context.Context, a, b net.Conn, aToB, bToA *atomic.Int64, guard *stallGuard, paces joinPaces, done func(JoinStats)) {
	j := &join{a: a, b: b, aToB: aToB, bToA: bToA, left: 2, done: done, paces: paces}
	j.mu.Lock() // the pump and stop are set before either direction may end
	if guard != nil {
		j.guard = guard
		j.toA = guard.add(a, func() { j.abort(errStalled) })
	}
	if paces != (joinPaces{}) {
		j.paceEnd = make(chan struct{})
	}
	go j.run(a, b, &j.st.BToA, bToA)
	if tc, ok := a.(*net.TCPConn); ok {
		j.pump, ok = startPump(j.pacedB.wrap(j.paceEnd, b, paces.toB, nil), tc, aToB, func(written int64, err error) {
			j.ended(b, &j.st.AToB, written, err)
			j.directionDone()
		})
		if !ok {
			go j.run(b, a, &j.st.AToB, aToB)
		}
	} else {
		go j.run(b, a, &j.st.AToB, aToB)
	}
	j.stop = context.AfterFunc(ctx, j.shutdown)
	j.mu.Unlock()
}

// join is one joined pair in flight.
type join struct {
	a, b       net.Conn
	aToB, bToA *atomic.Int64
	done       func(JoinStats)
	pump       *pump       // a's direction, when it runs without a goroutine
	stop       func() bool // StartJoin's hook on its context
	guard      *stallGuard // watches toA, the writes to a, when not nil
	toA        *stallWriter
	paces      joinPaces
	// The writes to a and b, kept to their paces; a write waiting for its
	// pace ends when paceEnd (made when paces are set) is closed, with
	// the pair.
	pacedA, pacedB pacedBufferWriter
	paceEnd        chan struct{}

	mu       sync.Mutex
	st       JoinStats
	left     int // directions still copying
	shut     bool
	paceDone bool // paceEnd is closed
}

// run copies one direction for StartJoin.
func (j *join) run(dst, src net.Conn, n *int64, live *atomic.Int64) {
	j.pipe(dst, src, n, live)
	j.directionDone()
}

// directionDone counts one direction out; the last closes both connections
// and calls done.
func (j *join) directionDone() {
	j.mu.Lock()
	j.left--
	last := j.left == 0
	stop := j.stop
	st := j.st // the context's hook may still be in abort
	j.mu.Unlock()
	if !last {
		return
	}
	if stop != nil {
		stop()
	}
	if j.guard != nil {
		j.guard.remove(j.toA)
	}
	j.endPaces()
	j.a.Close()
	j.b.Close()
	if j.done != nil {
		j.done(st)
	}
}

// shutdown cuts the pair when its context ends, unless both directions
// have finished already and the pair is closing as it should.
func (j *join) shutdown() {
	j.mu.Lock()
	finished := j.left == 0
	j.mu.Unlock()
	if !finished {
		j.abort(errCut)
	}
}

// errCut ends a pair whose context ended first: a drain's time ran out,
// the tunnel closed, the relay or agent stopped, or the session under it
// ended. The connection did not finish, so both ends get a reset, not an
// end they could take for a complete transfer.
var errCut = errors.New("cut: its tunnel or session ended before it did")

// abort records err (the first one wins) and closes both connections, so
// the other direction stops too. A failure (err not nil) resets both rather
// than closing them: a TCP side gets an RST and a transport stream is
// aborted, so neither end takes what it got for the whole of it.
func (j *join) abort(err error) {
	j.mu.Lock()
	if j.st.Err == nil {
		j.st.Err = err
	}
	shut := j.shut
	j.shut = true
	j.mu.Unlock()
	if !shut {
		j.endPaces()
		if err != nil {
			resetConn(j.a)
			resetConn(j.b)
		} else {
			j.a.Close()
			j.b.Close()
		}
		if j.pump != nil {
			j.pump.wake() // a parked pump learns of the close from its read
		}
	}
}

// endPaces ends the writes waiting for their paces, once.
func (j *join) endPaces() {
	if j.paceEnd == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.paceDone {
		j.paceDone = true
		close(j.paceEnd)
	}
}

// resetConn ends c as a failure: an RST for a TCP socket, an abort for a
// stream, a plain close otherwise.
func resetConn(c net.Conn) {
	switch c := c.(type) {
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
	case interface{ Abort() error }:
		c.Abort()
	default:
		c.Close()
	}
}

// pipe copies src to dst, then half-closes dst; n receives the count.
func (j *join) pipe(dst, src net.Conn, n *int64, live *atomic.Int64) {
	var w io.Writer = dst
	if j.toA != nil && dst == j.a {
		w = j.toA
	}
	if dst == j.a {
		w = j.pacedA.wrap(j.paceEnd, w, j.paces.toA, j.paces.sentA)
	} else {
		w = j.pacedB.wrap(j.paceEnd, w, j.paces.toB, nil)
	}
	written, err := copyConn(w, src, live)
	j.ended(dst, n, written, err)
}

// ended records a direction's count and, at its EOF, half-closes dst; a
// failure closes both connections.
func (j *join) ended(dst net.Conn, n *int64, written int64, err error) {
	j.mu.Lock()
	*n = written
	j.mu.Unlock()
	if err != nil {
		j.abort(err)
		return
	}
	cw, ok := dst.(closeWriter)
	if !ok {
		j.abort(nil)
		return
	}
	if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
		j.abort(err)
	}
}

// copyConn copies src to dst until src's EOF (a nil error) or a failure,
// adding the bytes written to live (if not nil) as it goes.
func copyConn(dst io.Writer, src net.Conn, live *atomic.Int64) (int64, error) {
	if tc, ok := src.(*net.TCPConn); ok {
		return copyFromSocket(dst, tc, live)
	}
	if ss, ok := src.(*statusStream); ok {
		// Take the agent's status byte, then copy from the stream itself.
		if _, err := ss.Read(nil); err == io.EOF {
			return 0, nil // the status, then the end: nothing to copy
		} else if err != nil {
			return 0, err
		}
		src = ss.Stream
	}
	if wt, ok := src.(io.WriterTo); ok {
		// A TLS+smux stream writes from the frames it received: no
		// buffer of ours, none held while it waits.
		if live != nil {
			dst = &countingWriter{dst, live}
		}
		return wt.WriteTo(dst)
	}
	return copyAdaptive(dst, src, live)
}

// copyAdaptive copies through a small buffer, and a big one while reads
// fill the small one.
func copyAdaptive(dst io.Writer, src io.Reader, live *atomic.Int64) (written int64, err error) {
	small := smallBufs.Get().(*[]byte)
	var big *[]byte
	defer func() {
		if small != nil {
			smallBufs.Put(small)
		}
		if big != nil {
			bigBufs.Put(big)
		}
	}()
	for {
		buf := *small
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := writeAll(dst, buf[:n], live)
			written += int64(w)
			if werr != nil {
				// The stream may still read buf: drop it, not pool it.
				small, big = nil, nil
				return written, werr
			}
		}
		switch {
		case rerr == io.EOF:
			return written, nil
		case rerr != nil:
			return written, rerr
		case big == nil && n == len(buf):
			big = bigBufs.Get().(*[]byte)
		case big != nil && n <= smallBufSize:
			bigBufs.Put(big)
			big = nil
		}
	}
}

// writeAll writes p to dst, counting what it wrote in live. A stream that
// can send from p itself gets it to send (transport.BufferWriter): after a
// failure, the caller drops p rather than reuse it.
func writeAll(dst io.Writer, p []byte, live *atomic.Int64) (int, error) {
	var n int
	var err error
	if bw := bufferWriter(dst); bw != nil {
		n, err = bw.WriteBuffer(p)
	} else {
		n, err = dst.Write(p)
	}
	if n > 0 && live != nil {
		live.Add(int64(n))
	}
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// bufferWriter is the stream under dst that sends from the caller's
// buffer, or nil.
func bufferWriter(dst io.Writer) transport.BufferWriter {
	if ss, ok := dst.(*statusStream); ok {
		dst = ss.Stream
	}
	bw, _ := dst.(transport.BufferWriter)
	return bw
}

// countingWriter adds what it writes to n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
