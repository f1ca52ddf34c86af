package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Listen serves both transports on one port number: QUIC on UDP and TLS+smux
// on TCP. With port 0 it picks a number free on both. onErr, when not nil,
// hears about failed handshakes on both (see ListenTCP and ListenQUIC); it
// may be called from many goroutines at once.
func Listen(addr string, tlsConf *tls.Config, o Options, onErr func(net.Addr, error)) (Listener, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	var lastErr error
	// Port 0 picks a TCP port first; its UDP twin may be taken, so try again.
	for range 20 {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening on tcp %s: %w", addr, err)
		}
		udpAddr := net.JoinHostPort(host, fmt.Sprint(tl.Addr().(*net.TCPAddr).Port))
		pc, err := net.ListenPacket("udp", udpAddr)
		if err != nil {
			tl.Close()
			lastErr = fmt.Errorf("listening on udp %s: %w", udpAddr, err)
			if port == "0" {
				continue
			}
			return nil, lastErr
		}
		ql, err := ListenQUIC(pc, tlsConf, o, onErr)
		if err != nil {
			tl.Close()
			pc.Close()
			return nil, err
		}
		sl, err := ListenTCP(tl, tlsConf, o, onErr)
		if err != nil {
			ql.Close()
			tl.Close()
			return nil, err
		}
		return newMultiListener(sl, ql), nil
	}
	return nil, lastErr
}

// multiListener merges sessions from several listeners. Addr is the first's.
type multiListener struct {
	ls     []Listener
	ch     chan Session
	done   chan struct{}
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newMultiListener(ls ...Listener) *multiListener {
	ctx, cancel := context.WithCancel(context.Background())
	m := &multiListener{ls: ls, ch: make(chan Session), done: make(chan struct{}), ctx: ctx, cancel: cancel}
	for _, l := range ls {
		m.wg.Add(1)
		go m.pump(l)
	}
	return m
}

func (m *multiListener) pump(l Listener) {
	defer m.wg.Done()
	for {
		s, err := l.Accept(m.ctx)
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case m.ch <- s:
		case <-m.done:
			s.Close()
			return
		}
	}
}

func (m *multiListener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-m.ch:
		return s, nil
	case <-m.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }

func (m *multiListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		m.cancel()
		for _, l := range m.ls {
			err = errors.Join(err, l.Close())
		}
		m.wg.Wait()
	})
	return err
}

// RetryAccept decides what an accept loop does after err: for a temporary
// failure (out of file descriptors and the like) it waits, longer each time
// up to a second, and reports true, as net/http's Server.Serve does; for any
// other, or once done closes, false. backoff is the loop's own; reset it to
// zero after a successful accept.
func RetryAccept(err error, backoff *time.Duration, done <-chan struct{}) bool {
	var ne interface{ Temporary() bool }
	if !errors.As(err, &ne) || !ne.Temporary() {
		return false
	}
	*backoff = min(max(2**backoff, 5*time.Millisecond), time.Second)
	select {
	case <-time.After(*backoff):
		return true
	case <-done:
		return false
	}
}
