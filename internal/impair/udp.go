package impair

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// UDP forwards datagrams from each client address to a target, through a
// socket of its own per client, impairing each direction.
type UDP struct {
	pc     *net.UDPConn
	target *net.UDPAddr
	up     *link // client to target
	down   *link // target to client
	black  atomic.Bool

	mu     sync.Mutex
	flows  map[string]*udpFlow
	closed bool
	wg     sync.WaitGroup
}

type udpFlow struct {
	conn   *net.UDPConn // to the target
	toUp   *schedule
	toDown *schedule
}

// NewUDP listens on 127.0.0.1 (a free port) and forwards to target, a
// loopback "host:port"; up impairs what clients send, down what the
// target answers.
func NewUDP(target string, up, down Config) (*UDP, error) {
	ta, err := loopbackUDP(target)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	bigBuffers(pc)
	p := &UDP{pc: pc, target: ta, up: newLink(up), down: newLink(down), flows: map[string]*udpFlow{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func loopbackUDP(addr string) (*net.UDPAddr, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	if !ua.IP.IsLoopback() {
		return nil, fmt.Errorf("impair: target %s is not a loopback address", addr)
	}
	return ua, nil
}

// Addr is the proxy's "127.0.0.1:port".
func (p *UDP) Addr() string { return p.pc.LocalAddr().String() }

// Set changes both directions' impairment for the packets that come next.
func (p *UDP) Set(up, down Config) {
	p.up.set(up)
	p.down.set(down)
}

// Blackhole drops every packet both ways while on, on flows open now and
// new ones alike.
func (p *UDP) Blackhole(on bool) { p.black.Store(on) }

// Stats returns the counts of each direction.
func (p *UDP) Stats() (up, down Stats) { return p.up.snapshot(), p.down.snapshot() }

// Close stops the proxy and its flows.
func (p *UDP) Close() error {
	p.mu.Lock()
	p.closed = true
	for _, f := range p.flows {
		f.conn.Close()
		f.toUp.close()
		f.toDown.close()
	}
	p.mu.Unlock()
	err := p.pc.Close()
	p.wg.Wait()
	return err
}

func (p *UDP) serve() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.pc.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		f := p.flow(from)
		if f == nil {
			continue
		}
		p.pass(p.up, f.toUp, buf[:n])
	}
}

// flow returns from's flow, making it on its first packet.
func (p *UDP) flow(from *net.UDPAddr) *udpFlow {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	key := from.String()
	if f, ok := p.flows[key]; ok {
		return f
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, p.target)
	if err != nil {
		return nil
	}
	bigBuffers(c)
	to := *from
	f := &udpFlow{conn: c}
	f.toUp = newSchedule(func(b []byte) { c.Write(b) })
	f.toDown = newSchedule(func(b []byte) { p.pc.WriteToUDP(b, &to) })
	p.flows[key] = f
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP port unreachable from a target that is away
			}
			p.pass(p.down, f.toDown, buf[:n])
		}
	}()
	return f
}

// pass applies l's impairment to one packet and schedules what is left of
// it.
func (p *UDP) pass(l *link, s *schedule, b []byte) {
	now := time.Now()
	l.mu.Lock()
	cfg := l.cfg
	switch {
	case p.black.Load() || cfg.Stop:
		l.stats.Blackhole++
		l.mu.Unlock()
		return
	case cfg.MaxPacket > 0 && len(b) > cfg.MaxPacket:
		l.stats.TooLarge++
		l.mu.Unlock()
		return
	case cfg.Loss > 0 && l.rng.Float64() < cfg.Loss:
		l.stats.Lost++
		l.mu.Unlock()
		return
	}
	at, full := l.departureLocked(now, len(b))
	if full {
		l.stats.Overflow++
		l.mu.Unlock()
		return
	}
	due := at.Add(cfg.Delay)
	if cfg.Reorder > 0 && l.rng.Float64() < cfg.Reorder {
		l.stats.Reordered++
		due = due.Add(cfg.ReorderDelay)
	}
	l.stats.Passed++
	l.mu.Unlock()
	s.add(due, append([]byte(nil), b...))
}

// bigBuffers asks for socket buffers that hold a burst of a fast flow, so
// that the proxy itself loses none (the kernel caps them at rmem_max and
// wmem_max).
func bigBuffers(c *net.UDPConn) {
	c.SetReadBuffer(8 << 20)
	c.SetWriteBuffer(8 << 20)
}
