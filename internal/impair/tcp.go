package impair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TCP forwards TCP connections to a target, delaying and pacing the bytes
// each way. Loss, reordering and MaxPacket do not apply: TCP hides them
// (as delay, which Delay and Rate stand for).
type TCP struct {
	ln     net.Listener
	target string
	up     *link // client to target
	down   *link // target to client
	black  atomic.Bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	quit   chan struct{} // closed by Close
	wg     sync.WaitGroup
}

// NewTCP listens on 127.0.0.1 (a free port) and forwards each connection
// to target, a loopback "host:port"; up impairs what clients send, down
// what the target answers.
func NewTCP(target string, up, down Config) (*TCP, error) {
	ta, err := net.ResolveTCPAddr("tcp", target)
	if err != nil {
		return nil, err
	}
	if !ta.IP.IsLoopback() {
		return nil, fmt.Errorf("impair: target %s is not a loopback address", target)
	}
	// The sockets that read get their RecvBuffer before they connect, so
	// that the window they offer from the first is the one they keep.
	lc := net.ListenConfig{Control: recvBuffer(up.RecvBuffer)}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &TCP{ln: ln, target: ta.String(), up: newLink(up), down: newLink(down), conns: map[net.Conn]struct{}{}, quit: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's "127.0.0.1:port".
func (p *TCP) Addr() string { return p.ln.Addr().String() }

// Set changes both directions' impairment for the bytes read next.
func (p *TCP) Set(up, down Config) {
	p.up.set(up)
	p.down.set(down)
}

// Blackhole, while on, delivers nothing either way: the bytes wait in the
// proxy (and, once its Window is full, in the senders' sockets), and go on
// once it is off, as TCP's retransmissions would bring them. Connections
// made meanwhile are accepted, but carry nothing until then.
func (p *TCP) Blackhole(on bool) { p.black.Store(on) }

// Stats returns the bytes passed each way.
func (p *TCP) Stats() (up, down Stats) { return p.up.snapshot(), p.down.snapshot() }

// Close stops the proxy and closes its connections.
func (p *TCP) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	if !p.closed {
		close(p.quit)
	}
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *TCP) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *TCP) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

func (p *TCP) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := p.down.dialer().Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			c.Close()
			up.Close()
			return
		}
		var left sync.WaitGroup
		left.Add(2)
		p.wg.Add(3)
		go func() {
			defer p.wg.Done()
			left.Wait()
			p.untrack(c, up)
		}()
		go func() { defer p.wg.Done(); defer left.Done(); p.pump(c, up, p.up) }()
		go func() { defer p.wg.Done(); defer left.Done(); p.pump(up, c, p.down) }()
	}
}

// pump copies src to dst through l's delay and rate cap, then passes on
// src's end: a FIN as a FIN, an error as a close.
func (p *TCP) pump(src, dst net.Conn, l *link) {
	var (
		mu       sync.Mutex
		room     = sync.NewCond(&mu)
		inFlight int64
		broken   bool
	)
	finished := make(chan struct{})
	var ended error
	s := newSchedule(func(b []byte) {
		if b == nil {
			if ended == io.EOF {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			} else {
				dst.Close()
			}
			close(finished)
			return
		}
		for (p.black.Load() || l.stopped()) && !p.isClosed() {
			time.Sleep(2 * time.Millisecond)
		}
		_, err := dst.Write(b)
		if err != nil {
			// The far end is gone: so is this connection, both ways.
			src.Close()
			dst.Close()
		}
		mu.Lock()
		inFlight -= int64(len(b))
		if err != nil {
			broken = true
		}
		room.Broadcast()
		mu.Unlock()
	})
	defer s.close()
	var last time.Time
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			due := p.admit(l, n)
			if due.Before(last) {
				due = last // bytes never overtake earlier ones
			}
			last = due
			mu.Lock()
			for inFlight > 0 && inFlight+int64(n) > l.window() && !broken && !p.isClosed() {
				room.Wait()
			}
			inFlight += int64(n)
			stop := broken
			mu.Unlock()
			if stop {
				src.Close()
				return
			}
			s.add(due, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.EOF
			}
			ended = err
			s.add(last, nil)
			select {
			case <-finished:
			case <-p.quit:
			}
			return
		}
	}
}

// dialer dials the sockets that read the bytes going l's way.
func (l *link) dialer() *net.Dialer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &net.Dialer{Control: recvBuffer(l.cfg.RecvBuffer)}
}

func (l *link) window() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg.window()
}

// admit waits until l's queue has room for n bytes, books them, and
// returns when they are due at the far end.
func (p *TCP) admit(l *link, n int) time.Time {
	for {
		now := time.Now()
		l.mu.Lock()
		at, full := l.departureLocked(now, n)
		if !full {
			l.stats.Passed += int64(n)
			due := at.Add(l.cfg.Delay)
			l.mu.Unlock()
			return due
		}
		l.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

func (p *TCP) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}
