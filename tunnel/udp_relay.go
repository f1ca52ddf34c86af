package tunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// udpFlow is one public client address sending to a UDP tunnel, pinned to
// the member that carries it while that member lasts.
type udpFlow struct {
	member atomic.Pointer[member]
	last   atomic.Int64 // unix nanoseconds of the client's latest datagram
	// back is when the member last sent the client a datagram (or the flow
	// came to it): a member silent while its client is not may be dead.
	back    atomic.Int64
	release func()
	// recheck: before then, a flow on a suspect member stays put without
	// asking the group for another (serveUDP's goroutine only).
	recheck int64
}

// udpPort is a group's public UDP socket and its flows.
type udpPort struct {
	pc *net.UDPConn

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow

	refusals refusalSummary

	// resweep wakes sweepFlows when a reload changes the flow timeout:
	// its round, timed by the old one, may be minutes away.
	resweep chan struct{}
}

func newUDPPort(pc *net.UDPConn) *udpPort {
	return &udpPort{pc: pc, flows: make(map[netip.AddrPort]*udpFlow), resweep: make(chan struct{}, 1)}
}

// timeoutChanged tells the sweep that the flow timeout changed.
func (u *udpPort) timeoutChanged() {
	select {
	case u.resweep <- struct{}{}:
	default: // one is pending already
	}
}

func (u *udpPort) flowCount() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return int64(len(u.flows))
}

// serveUDP reads the public socket and sends each datagram to the member
// carrying its flow, opening flows (within the tunnel's client limits and
// flow cap) for new client addresses.
//
// u is the tunnel's socket until a move replaces and closes it; the flows
// end with it.
func (g *group) serveUDP(ctx context.Context, u *udpPort) {
	stop := make(chan struct{})
	defer close(stop)
	go g.sweepFlows(u, stop)
	// Room in front of the payload for the header, so each datagram is
	// sent from one buffer without a copy; and a byte more than a tunnel
	// carries, so a larger datagram (IPv6 allows 65527 bytes) shows as
	// too large rather than arriving cut to fit.
	buf := make([]byte, maxStreamHeader+MaxDatagram+1)
	var hdr [maxStreamHeader]byte
	for {
		n, client, err := u.pc.ReadFromUDPAddrPort(buf[maxStreamHeader:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		if n > MaxDatagram {
			// Logged first: whoever sees the count can find the line.
			g.logger().Debug("udp datagram dropped: larger than a tunnel carries", "client", client.String(), "max_bytes", MaxDatagram)
			g.dropUDP()
			continue
		}
		now := time.Now().UnixNano()
		f := g.flow(u, client, now)
		if f == nil {
			g.dropUDP()
			continue
		}
		f.last.Store(now)
		if !g.token.up.allow(n) {
			g.dropUDP() // over the token's max_bandwidth
			continue
		}
		m := f.member.Load()
		if now-f.back.Load() > int64(g.r.config().AnswerTimeout) && !m.agent.suspect.Load() && g.size.Load() > 1 {
			// Its client talks, the member has not answered for a while:
			// ask the agent (one PING per answer timeout at most). Should
			// it miss the PING, it is marked suspect and flow moves its
			// flows to a member that answers, long before the session's
			// liveness timeout would drop it. A lone member has no one to
			// hand its flows to, and a one-way flow would ping it for
			// nothing.
			m.agent.probe()
		}
		h := AppendStreamHeader(hdr[:0], StreamHeader{Tunnel: m.id, Client: client})
		start := maxStreamHeader - len(h)
		copy(buf[start:], h)
		if err := m.agent.link.send(buf[start : maxStreamHeader+n]); err != nil {
			g.dropUDP()
			continue
		}
		g.bytesIn.Add(int64(n))
	}
}

func (g *group) dropUDP() {
	g.udpDrops.Add(1)
	g.r.udpDrops.Add(1)
}

// flow returns client's flow, opening one if the tunnel admits it; nil
// drops the datagram. now is the datagram's arrival, in unix nanoseconds.
func (g *group) flow(u *udpPort, client netip.AddrPort, now int64) *udpFlow {
	u.mu.Lock()
	f := u.flows[client]
	// A draining member keeps the flows it has (the player stays on its
	// server) and gets no new ones; a member gone hands them on, and so
	// does a suspect one when another member answers. That is asked at most
	// every 100 ms per flow: pick takes the relay's lock.
	if m := f.get(); m != nil && !m.gone.Load() && (!m.agent.suspect.Load() || now < f.recheck) {
		u.mu.Unlock()
		return f
	}
	if f == nil && len(u.flows) >= g.r.config().MaxFlows {
		u.mu.Unlock()
		g.refused.add(RefusedFlowLimit)
		g.r.clientRefusals.add(RefusedFlowLimit)
		u.refusals.note(g, client)
		return nil
	}
	u.mu.Unlock()
	// The client's limits first: a flood of refused datagrams must not
	// take the relay's lock, which pick does. Only serveUDP's goroutine
	// opens flows, so none can appear meanwhile.
	var release func()
	if f == nil {
		var reason string
		if release, reason = g.gate.Load().admit(client.Addr()); reason != "" {
			u.refusals.note(g, client)
			return nil
		}
	}
	m, _, suspect, _ := g.pick(nil)
	if m == nil {
		if release != nil {
			release()
		}
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if f != nil {
		// Its member left, or is suspect: the flow moves, keeping its
		// place. pick gives a suspect member back only when no other
		// answers: then a flow whose member is still in the group stays
		// (another suspect member is no better, and pick's round robin
		// would move the flow on each recheck).
		f.recheck = now + int64(100*time.Millisecond)
		if cur := f.member.Load(); suspect && !cur.gone.Load() {
			return f
		}
		if old := f.member.Swap(m); old != m {
			old.flows.Add(-1)
			m.flows.Add(1)
			f.back.Store(now)
			g.logger().Debug("UDP flow moved to another member", "client", client.String(), "agent", m.agent.sess.RemoteAddr().String())
		}
		return f
	}
	f = &udpFlow{release: release}
	f.back.Store(now)
	f.member.Store(m)
	m.flows.Add(1)
	u.flows[client] = f
	g.total.Add(1)
	g.r.clientsTotal.Add(1)
	return f
}

// get is the flow's member, or nil for a flow not yet set up.
func (f *udpFlow) get() *member {
	if f == nil {
		return nil
	}
	return f.member.Load()
}

// sweepFlows closes flows idle for the flow timeout. It looks every
// eighth of the timeout in force, read afresh each round: a reload may
// change it, and wakes the sweep (resweep) so a shorter one applies at
// once rather than after the round the old one timed.
func (g *group) sweepFlows(u *udpPort, stop <-chan struct{}) {
	interval := func() time.Duration { return max(g.r.config().FlowIdleTimeout/8, 50*time.Millisecond) }
	t := time.NewTimer(interval())
	defer t.Stop()
	for {
		select {
		case <-stop:
			u.mu.Lock()
			for c, f := range u.flows {
				delete(u.flows, c)
				f.member.Load().flows.Add(-1)
				f.release()
			}
			u.mu.Unlock()
			return
		case <-u.resweep:
		case <-t.C:
		}
		cut := time.Now().Add(-g.r.config().FlowIdleTimeout).UnixNano()
		u.mu.Lock()
		for c, f := range u.flows {
			if f.last.Load() < cut {
				delete(u.flows, c)
				f.member.Load().flows.Add(-1)
				f.release()
			}
		}
		u.mu.Unlock()
		t.Reset(interval())
	}
}

// deliverUDP sends an agent's datagram to its client, if the client has a
// live flow on that tunnel carried by this agent's member: an agent cannot
// aim the relay at anyone else.
func (a *agentConn) deliverUDP(p []byte) {
	h, payload, err := ParseDatagram(p)
	if err != nil {
		a.r.udpDrops.Add(1)
		return
	}
	v, ok := a.byID.Load(h.Tunnel)
	if !ok {
		a.r.udpDrops.Add(1)
		return
	}
	mem := v.(*member)
	g := mem.g
	u := g.udp.Load()
	if u == nil {
		a.r.udpDrops.Add(1)
		return
	}
	u.mu.Lock()
	f := u.flows[h.Client]
	u.mu.Unlock()
	if f == nil {
		g.dropUDP()
		return
	}
	if cur := f.member.Load(); cur != mem && !cur.gone.Load() {
		// The flow moved to another member that is still in the group
		// (this one was found unanswering): a player hears one server,
		// and the flow's silence is its own member's. (A flow whose
		// member left, as when its agent's session was lost, hears the
		// agent back on its new session before the player speaks again.)
		g.dropUDP()
		return
	}
	if !g.token.down.allow(len(payload)) {
		g.dropUDP() // over the token's max_bandwidth
		return
	}
	a.downUDP.Add(int64(len(payload)))
	// Only the client's datagrams keep a flow alive: otherwise an agent
	// could keep sending, from the relay's address, to someone who once
	// sent one spoofed datagram.
	if _, err := u.pc.WriteToUDPAddrPort(payload, h.Client); err != nil {
		g.dropUDP()
		return
	}
	f.back.Store(time.Now().UnixNano())
	g.bytesOut.Add(int64(len(payload)))
}

// receiveDatagrams delivers the agent's transport datagrams until the
// session ends. It runs from the start of the handshake: left unread, what
// an agent sends before it is welcomed would wait in the transport's queue
// until the handshake deadline. Those name no tunnel of the session, and
// are dropped (and counted) as any such.
func (a *agentConn) receiveDatagrams(ctx context.Context) {
	for {
		p, err := a.sess.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		a.deliverUDP(p)
	}
}
