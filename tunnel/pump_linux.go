package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relaytun/relay/internal/rawfd"
)

// An idle TCP connection costs its copy goroutine's stack, 4 KiB, in each
// of relayd and relayctl: a third of what a held connection costs. A pump
// copies from a TCP socket without a goroutine while the socket has
// nothing to read: it registers the socket with a process-wide epoll set of
// its own and ends its goroutine; an event hands it to a worker goroutine.
//
// The set is edge-triggered and a socket stays in it while parking and
// waking, so going idle costs no system call: a pump that runs out of bytes
// marks itself parked with a compare-and-swap, and an event that arrives
// while it is still running marks it pending instead, which sends it back
// for another read. The set's own descriptor sits in Go's poller, so events
// wake an ordinary goroutine. A busy socket leaves the set and waits in
// Go's poller like any other (hot, below).

// Pump states. running → parked when a read finds nothing; parked → running
// on an event (a new goroutine); running → pending on an event that comes
// while it runs (one more read); pending → running on that read.
const (
	pumpRunning int32 = iota
	pumpPending
	pumpParked
	pumpDone
)

// pump copies src to dst, one direction of a join.
type pump struct {
	src  *net.TCPConn
	rc   syscall.RawConn
	dst  io.Writer
	live *atomic.Int64
	// end runs once, on the pump's goroutine, with what the copy carried
	// and the failure (nil at EOF).
	end func(written int64, err error)

	state      atomic.Int32
	id         uint64 // key in the poller's table; 0 until registered
	pool       *sync.Pool
	written    int64
	registered bool // in the pump set
	hot        bool // waiting in Go's poller, holding a place in hotPumps
	cooled     bool // left hot for quiet: park before going hot again
	deadline   time.Time
}

// startPump copies src to dst like copyFromSocket, holding no goroutine
// while src is idle; end runs when the copy is over. It reports false (and
// starts nothing) when this process has no epoll set to offer.
func startPump(dst io.Writer, src *net.TCPConn, live *atomic.Int64, end func(int64, error)) (*pump, bool) {
	if thePoller() == nil {
		return nil, false
	}
	rc, err := src.SyscallConn()
	if err != nil {
		return nil, false
	}
	p := &pump{src: src, rc: rc, dst: dst, live: live, end: end, pool: &smallBufs}
	dispatch(p)
	return p, true
}

// wake is an event for p: its socket became readable or closed.
func (p *pump) wake() {
	for {
		switch s := p.state.Load(); s {
		case pumpParked:
			if p.state.CompareAndSwap(s, pumpRunning) {
				dispatch(p)
				return
			}
		case pumpRunning:
			if p.state.CompareAndSwap(s, pumpPending) {
				return
			}
		default: // pending already, or done
			return
		}
	}
}

// park ends the pump's goroutine until the next event: it reports true when
// the goroutine may return, false when an event came meanwhile and the
// socket must be read again.
func (p *pump) park() (bool, error) {
	if !p.registered {
		if err := thePoller().add(p); err != nil {
			return false, err
		}
		p.registered = true
	}
	for {
		switch s := p.state.Load(); s {
		case pumpRunning:
			if p.state.CompareAndSwap(s, pumpParked) {
				return true, nil
			}
		case pumpPending:
			if p.state.CompareAndSwap(s, pumpRunning) {
				return false, nil
			}
		default:
			return false, nil
		}
	}
}

// run reads until the socket has nothing more, writing what it reads, then
// waits: hot, in Go's poller, or parked, in the pump set. It ends the copy
// at EOF or a failure.
func (p *pump) run() {
	var (
		buf  *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		buf = p.pool.Get().(*[]byte)
		n, rerr = rawfd.Read(fd, *buf)
		if rerr == syscall.EAGAIN {
			p.pool.Put(buf)
			buf = nil
			return !p.hot // a hot pump waits in Go's poller
		}
		return true
	}
	for {
		if p.hot {
			p.keepHot()
		}
		if err := p.rc.Read(read); err != nil {
			if !p.hot || !errors.Is(err, os.ErrDeadlineExceeded) {
				p.finish(err)
				return
			}
			// Quiet for a while: give the goroutine up.
			p.leaveHot()
			rerr = syscall.EAGAIN
		} else if rerr == syscall.EAGAIN && p.enterHot() {
			continue
		}
		if rerr == syscall.EAGAIN {
			ok, err := p.park()
			if err != nil {
				// No registration, no events: wait the ordinary way.
				p.finishBlocking()
				return
			}
			if ok {
				return
			}
			continue
		}
		if rerr != nil {
			p.pool.Put(buf)
			p.finish(readError(p.src, rerr))
			return
		}
		if n <= 0 {
			p.pool.Put(buf)
			p.finish(nil) // EOF
			return
		}
		w, werr := writeAll(p.dst, (*buf)[:n], p.live)
		p.written += int64(w)
		if werr != nil {
			// buf is dropped: the stream may still read it (writeAll).
			p.finish(werr)
			return
		}
		next := nextPool(p.pool, n, len(*buf))
		p.pool.Put(buf)
		buf = nil
		p.pool = next
	}
}

// A connection in use waits for its next bytes in Go's poller, as a plain
// goroutine would: the pump set's extra hop (an event, a system call, a
// hand-off) costs a request/response workload 5-8% of its rate. Up to
// maxHot pumps per process are hot like that; one quiet for hotIdle parks.
// An idle connection so costs a goroutine for at most hotIdle, and a burst
// of connections at most maxHot goroutines.
const (
	maxHot  = 128
	hotIdle = time.Second
)

var hotPumps atomic.Int32

// enterHot makes p hot if a place is free; p has just read everything and
// is not parked, so only its own goroutine touches the fields.
func (p *pump) enterHot() bool {
	if p.cooled {
		// It left hot for quiet, then woke: it parks once more before
		// it may take a hot place again.
		p.cooled = false
		return false
	}
	if hotPumps.Add(1) > maxHot {
		hotPumps.Add(-1)
		return false
	}
	if p.registered {
		// Events for a hot pump would cost the hop it avoids.
		thePoller().remove(p)
		p.registered = false
	}
	p.hot = true
	return true
}

// keepHot moves p's read deadline hotIdle on, at most twice a hotIdle.
func (p *pump) keepHot() {
	now := time.Now()
	if p.deadline.Sub(now) < hotIdle/2 {
		p.deadline = now.Add(hotIdle)
		p.src.SetReadDeadline(p.deadline)
	}
}

func (p *pump) leaveHot() {
	if !p.hot {
		return
	}
	p.hot = false
	p.cooled = true
	hotPumps.Add(-1)
	p.deadline = time.Time{}
	p.src.SetReadDeadline(p.deadline)
}

// finishBlocking copies the rest with a goroutine that waits in Go's poller,
// as copyFromSocket does.
func (p *pump) finishBlocking() {
	w, err := copyFromSocket(p.dst, p.src, p.live)
	p.written += w
	p.finish(err)
}

func (p *pump) finish(err error) {
	p.leaveHot()
	p.state.Store(pumpDone)
	if p.registered {
		thePoller().remove(p)
	}
	p.end(p.written, err)
}

// Pumps run on a few long-lived worker goroutines, so the stack that writing
// into a transport stream grows is kept instead of grown anew at each wake;
// a pump finds a new goroutine only when every worker is busy (a stream
// write may wait on its peer for long, and must not hold up other pumps).
var (
	pumpJobs    = make(chan *pump)
	idleWorkers atomic.Int32
)

func dispatch(p *pump) {
	select {
	case pumpJobs <- p: // an idle worker takes it
	default:
		go pumpWorker(p)
	}
}

// pumpWorker runs p, then waits for more work while fewer than
// 4 × GOMAXPROCS other workers wait.
func pumpWorker(p *pump) {
	maxIdle := int32(4 * runtime.GOMAXPROCS(0))
	for {
		p.run()
		if idleWorkers.Add(1) > maxIdle {
			idleWorkers.Add(-1)
			return
		}
		p = <-pumpJobs
		idleWorkers.Add(-1)
	}
}

// poller is the process's epoll set for parked pumps.
type poller struct {
	epfd int

	mu    sync.Mutex
	next  uint64
	pumps map[uint64]*pump
}

var (
	pollerOnce sync.Once
	pollerInst *poller
)

// thePoller starts the process's poller on first use; nil if it cannot.
func thePoller() *poller {
	pollerOnce.Do(func() {
		p, err := newPoller()
		if err == nil {
			pollerInst = p
		}
	})
	return pollerInst
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	// Go's poller watches the set's descriptor: readable means events.
	f := os.NewFile(uintptr(epfd), "tunnel-pumps")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{epfd: epfd, pumps: make(map[uint64]*pump)}
	go p.loop(f, rc)
	return p, nil
}

func (p *poller) loop(f *os.File, rc syscall.RawConn) {
	defer f.Close()
	events := make([]unix.EpollEvent, 128)
	wake := make([]*pump, 0, 128)
	for {
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := unix.EpollWait(int(fd), events, 0)
				if err == unix.EINTR {
					continue
				}
				if n <= 0 {
					return false // drained: wait for the next edge
				}
				wake = wake[:0]
				p.mu.Lock()
				for _, ev := range events[:n] {
					if pm := p.pumps[eventID(ev)]; pm != nil {
						wake = append(wake, pm)
					}
				}
				p.mu.Unlock()
				for _, pm := range wake {
					pm.wake()
				}
				clear(wake)
				if n < len(events) {
					return false
				}
			}
		})
		if err != nil {
			// Only closing the set's descriptor fails here, and nothing
			// closes it but this return.
			return
		}
	}
}

func eventID(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// add registers pm's socket, edge-triggered: a socket already readable is
// reported at once, so nothing that arrived before is missed.
func (p *poller) add(pm *pump) error {
	p.mu.Lock()
	p.next++
	id := p.next
	p.pumps[id] = pm
	p.mu.Unlock()
	pm.id = id
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var cerr error
	err := pm.rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		p.mu.Lock()
		delete(p.pumps, id)
		p.mu.Unlock()
		return err
	}
	return nil
}

// remove forgets pm. Its socket leaves the set when it is closed; one still
// open (the other direction goes on) is taken out now.
func (p *poller) remove(pm *pump) {
	p.mu.Lock()
	delete(p.pumps, pm.id)
	p.mu.Unlock()
	pm.rc.Control(func(fd uintptr) {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}
