package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// copyBufSize is the buffer each direction of a joined pair borrows while it
// copies; buffers are pooled, so an idle connection holds none.
const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

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
func JoinCounting(a, b net.Conn, aToB, bToA *atomic.Int64) JoinStats {
	var (
		st   JoinStats
		wg   sync.WaitGroup
		once sync.Once
		mu   sync.Mutex
	)
	abort := func(err error) {
		mu.Lock()
		if st.Err == nil {
			st.Err = err
		}
		mu.Unlock()
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	pipe := func(dst, src net.Conn, n *int64, live *atomic.Int64) {
		defer wg.Done()
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		// Plain Reader/Writer wrappers keep io.CopyBuffer on our pooled
		// buffer instead of each side's ReadFrom/WriteTo allocating its own.
		var w io.Writer = writerOnly{dst}
		if live != nil {
			w = &countingWriter{dst, live}
		}
		written, err := io.CopyBuffer(w, readerOnly{src}, *bp)
		*n = written
		if err != nil {
			abort(err)
			return
		}
		cw, ok := dst.(closeWriter)
		if !ok {
			abort(nil)
			return
		}
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			abort(err)
		}
	}
	wg.Add(2)
	go pipe(b, a, &st.AToB, aToB)
	go pipe(a, b, &st.BToA, bToA)
	wg.Wait()
	a.Close()
	b.Close()
	return st
}

type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
