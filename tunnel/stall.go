package tunnel

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytun/relay/transport"
)

// A client that stops reading (on the relay) or a local server that stops
// reading (on the agent) leaves its stream's data unread in the transport,
// up to the stream's window, and every stream of a session shares the
// session's window: about sixteen such connections fill it, after which
// nothing moves on that session, its control stream included, until the
// liveness timeout drops it with every tunnel and client it carries. So
// anyone able to open a few connections to a tunnel serving a large
// response could take an agent off the relay.
//
// A stallGuard watches the writes into one session's TCP sockets. While
// one of them has been blocked for stallGrace, it asks every
// stallInterval whether the peer's data still gets through (a PING and its
// PONG within the answer timeout, or four round trips of a slow path).
// When it does not, the connections whose writes are blocked are what
// holds the window: they are reset (their TCP side gets an RST, their
// stream is aborted and its window returned), and the session carries on.
// For alertFor after that, writes count as stalled sooner (alertGrace), so
// that more such connections, refilling the window, go in seconds rather
// than one round of the guard each. A paused download is left alone,
// however long, as long as the session keeps moving.
type stallGuard struct {
	// alert is until when the guard, having found the session stuck,
	// counts a write as stalled after alertGrace rather than stallGrace:
	// connections that stop reading refill the window as soon as the
	// first ones are reset, and each round freezes the session.
	alert time.Time

	// answers pings the peer and reports whether its answer came back in
	// time; it reports true when it cannot tell (its own PING could not
	// be sent, so the blocked direction is the other one).
	answers func() bool
	// fills reports whether n stalled connections' unread data could
	// fill the session's window; when it cannot, they are not what holds
	// the session up, whatever its PONG's delay says.
	fills func(n int) bool
	log   func() *slog.Logger // read per use: a rename changes the token on it

	mu      sync.Mutex
	writers map[*stallWriter]struct{}
}

const (
	stallGrace    = 2 * time.Second
	stallInterval = time.Second
	alertGrace    = stallGrace / 4
	alertFor      = 30 * time.Second
)

// errStalled ends a connection the guard reset.
var errStalled = errors.New("reset: it stopped reading while its unread data held up the session")

func newStallGuard(answers func() bool, fills func(n int) bool, log func() *slog.Logger) *stallGuard {
	return &stallGuard{answers: answers, fills: fills, log: log, writers: make(map[*stallWriter]struct{})}
}

// windowFills is the stall guard's fills for sess. A TLS+smux session's
// windows are fixed, and a stream holds at most its window unread: fewer
// stalled connections than the session window's worth of stream windows
// (sixteen, by default) cannot be what fills it, and a late PONG then is
// a congested path's (over TLS+smux the PING waits behind every byte
// queued on the connection: seconds, on a full home uplink). QUIC tunes
// its windows, starting small, so there any number may.
func windowFills(sess transport.Session) func(n int) bool {
	w, ok := sess.(interface{ Windows() (stream, session int) })
	if !ok {
		return func(int) bool { return true }
	}
	stream, session := w.Windows()
	return func(n int) bool { return n*stream >= session }
}

// watch checks the writers until done closes.
func (g *stallGuard) watch(done <-chan struct{}) {
	t := time.NewTicker(stallInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		grace := stallGrace
		if now.Before(g.alert) {
			grace = alertGrace
		}
		stalled := g.stalled(now, grace)
		if len(stalled) == 0 || !g.fills(len(stalled)) || g.answers() {
			continue
		}
		g.alert = time.Now().Add(alertFor)
		// The peer's PONG did not come back in time: reset what was
		// stalled before the PING went and is stuck in the same write.
		n := 0
		for _, s := range stalled {
			if s.w.since.Load() == s.since {
				// Its own goroutine: an abort may write to the peer,
				// and the guard must not wait on a stuck session.
				go s.w.reset()
				n++
			}
		}
		if n > 0 {
			g.log().Warn("reset connections that stopped reading: their unread data held up the session", "connections", n)
		}
	}
}

type stalledWrite struct {
	w     *stallWriter
	since int64
}

// stalled returns the writes blocked for grace or longer at now.
func (g *stallGuard) stalled(now time.Time, grace time.Duration) []stalledWrite {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []stalledWrite
	for w := range g.writers {
		if since := w.since.Load(); since != 0 && now.UnixNano()-since >= int64(grace) {
			out = append(out, stalledWrite{w, since})
		}
	}
	return out
}

// add starts watching writes to c; reset runs if the guard gives up on it.
func (g *stallGuard) add(c net.Conn, reset func()) *stallWriter {
	w := &stallWriter{c: c, abort: reset}
	g.mu.Lock()
	g.writers[w] = struct{}{}
	g.mu.Unlock()
	return w
}

func (g *stallGuard) remove(w *stallWriter) {
	g.mu.Lock()
	delete(g.writers, w)
	g.mu.Unlock()
}

// stallWriter writes to a TCP socket and marks when a write began, until
// it returns.
type stallWriter struct {
	c     net.Conn
	since atomic.Int64 // unix nanoseconds; 0 when no write is in progress
	abort func()
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.since.Store(time.Now().UnixNano())
	n, err := w.c.Write(p)
	w.since.Store(0)
	return n, err
}

// reset ends the connection with an RST, which also tells a client that it
// did not get everything.
func (w *stallWriter) reset() {
	if tc, ok := w.c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	w.abort()
}

// fastestRTT is the shortest round trip seen on one session, in
// nanoseconds; 0 before the first. A stall delays PONGs too, so the latest
// round trip may be seconds long just when the guard needs its measure of
// the path: the fastest is the path's, and a stall cannot raise it.
type fastestRTT struct{ ns atomic.Int64 }

func (f *fastestRTT) observe(d time.Duration) {
	for {
		cur := f.ns.Load()
		if d <= 0 || (cur != 0 && int64(d) >= cur) || f.ns.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (f *fastestRTT) reset()             { f.ns.Store(0) }
func (f *fastestRTT) get() time.Duration { return time.Duration(f.ns.Load()) }

// pongWait is how long a guard waits for the PONG to its PING: the answer
// timeout, or four of the path's fastest round trips where those are
// longer (a slow path answers slowly even when it moves), but at most a
// third of the liveness timeout, so that the guard acts, and gets another
// round, before the session is given up as silent.
func pongWait(answer, fastest, liveness time.Duration) time.Duration {
	return max(answer, min(4*fastest, liveness/3))
}

// pongSince waits up to wait for a PONG at or after sent (unix
// nanoseconds, as last holds the latest PONG's arrival; pong is signalled
// at each). It reports whether one came, or true if done closes first: a
// session that ended is not a stuck one.
//
// A PONG can be late on a session that is not stuck at all: on a
// congested path (a home uplink filled by a download, its router queueing
// seconds of it) the PING waits behind the queue, over TLS+smux behind
// every byte the agent has sent. The guard then took a slow reader for a
// stuck one and reset it. So while the peer's streams keep bringing data
// (received, a count of their bytes, grows by movingRate or more a
// second), the wait goes on, a second at a time, up to most: a session
// whose window is full brings none, or only what its stuck readers free.
func pongSince(last *atomic.Int64, pong <-chan struct{}, sent int64, wait, most time.Duration, received func() int64, done <-chan struct{}) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	start, mark, step := time.Now(), received(), wait
	for last.Load() < sent {
		select {
		case <-pong:
		case <-timer.C:
			if last.Load() >= sent {
				return true
			}
			now, got := time.Now(), received()
			left := most - now.Sub(start)
			if left <= 0 || float64(got-mark) < movingRate*step.Seconds() {
				return false
			}
			step = min(time.Second, left)
			mark = got
			timer.Reset(step)
		case <-done:
			return true
		}
	}
	return true
}

// movingRate is the least a session's streams must bring, in bytes a
// second, for a late PONG to be taken for a congested path's.
const movingRate = 16 << 10
