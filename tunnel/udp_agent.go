package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// agentFlow is one public client of a UDP tunnel, seen by the local server
// as the peer of its own local socket.
type agentFlow struct {
	conn *net.UDPConn
	last atomic.Int64 // unix nanoseconds, of a datagram either way
	// heard is when its client last sent a datagram (unix nanoseconds):
	// the relay ends a flow whose client is quiet, whatever the server
	// sends, so at the flow cap a flow quiet that way goes first.
	heard atomic.Int64
	in    atomic.Int64 // bytes to the local server
	// header, when set, is the PROXY v2 header that goes in front of the
	// flow's next datagram; taken once sent.
	header atomic.Pointer[[]byte]
	// proxyHeader is the flow's PROXY v2 header (nil without one), set
	// again in header when the local server refuses a datagram: a server
	// that was down, or restarted, has not seen it, and one that reads
	// the header (Geyser) ignores a peer that never sent it.
	proxyHeader []byte
	// refused: the local server refused a datagram since it last sent
	// one, which was logged.
	refused atomic.Bool
	// tooBig: a datagram too large to carry the PROXY header was dropped,
	// which was logged (once per flow).
	tooBig atomic.Bool
	// hmu serialises the flow's writes while it has a PROXY header (see
	// deliverUDP).
	hmu sync.Mutex
}

// localRefused notes that the local server refused one of f's datagrams
// (nothing listens on its UDP port: down, or restarting): logged once
// until it answers again, and the PROXY header goes in front of the next
// datagram again. The flow stays, so the player carries on once the
// server is back.
func (a *Agent) localRefused(t *agentTunnel, client netip.AddrPort, f *agentFlow, err error) {
	if f.proxyHeader != nil {
		h := f.proxyHeader
		f.header.Store(&h)
	}
	if !f.refused.Swap(true) {
		a.log.Warn("udp datagrams not delivered: the local server refused them (is it running, on this UDP port?); the flow stays open",
			"tunnel", t.spec.Name, "client", client.String(), "local", t.spec.Local, "err", err)
	}
}

// agentUDP is an agent tunnel's flows. They outlive sessions: after a
// reconnect the local server still sees each player at the same address.
type agentUDP struct {
	mu    sync.Mutex
	flows map[netip.AddrPort]*agentFlow
	// evictAfter: no flow's client is quiet enough to close before then
	// (unix nanoseconds), so evictQuietLocked need not look. Guarded by
	// mu.
	evictAfter int64
	drops      atomic.Int64
	// noFlow counts the datagrams dropped for want of a flow since the
	// last warning of it, at warnedNoFlow (unix nanoseconds).
	noFlow       atomic.Int64
	warnedNoFlow atomic.Int64
}

// DefaultMaxFlows is AgentConfig.MaxFlows's default. Each flow holds a
// local socket, one file descriptor (Go raises the soft limit on them to
// the hard one at start, on Linux typically 524288 or more), so it can be
// far above any relay's max_udp_flows: the relay's limit is the one a
// user meets, and counts and logs its refusals.
const DefaultMaxFlows = 65536

// flowQuiet is how long a flow's client must have sent nothing for the
// flow to be closed to make room for a new client, when the tunnel is at
// its flow cap or out of file descriptors (and the agent's flow timeout,
// if shorter). Games send several datagrams a second while they play and
// give up on a silent peer well before 30 s; a flow quiet that long
// outlives its player only on the server's traffic, and the relay has
// likely ended its side already.
const flowQuiet = 30 * time.Second

// noFlowWarnEvery spaces the warnings of datagrams dropped for want of a
// flow, per tunnel: a full tunnel drops every new client's datagrams.
const noFlowWarnEvery = time.Minute

// deliverUDP hands a datagram from the relay to its flow's local socket,
// opening the flow first if it is new.
func (a *Agent) deliverUDP(p []byte, byID map[uint32]*agentTunnel) {
	h, payload, err := ParseDatagram(p)
	if err != nil {
		return
	}
	t, ok := byID[h.Tunnel]
	if !ok || t.udp == nil {
		return
	}
	now := time.Now().UnixNano()
	f, err := a.flow(t, h.Client, now)
	if err != nil {
		a.noFlow(t, err)
		return
	}
	f.last.Store(now)
	n := len(payload)
	if f.proxyHeader != nil {
		// The two delivery paths (datagram frames, and the stream that
		// carries large ones) may hand the flow datagrams at once: the
		// one that takes the header must be written first, and if it
		// fails, put it back before another is written without it.
		f.hmu.Lock()
		defer f.hmu.Unlock()
	}
	hp := f.header.Swap(nil)
	if hp != nil {
		// PROXY v2 for UDP: the header rides in front of the flow's first
		// datagram, which is how Geyser and Velocity read it.
		payload = append(*hp, payload...)
	}
	if _, err := f.conn.Write(payload); err != nil {
		t.udp.drops.Add(1)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			// A refusal the socket noted for an earlier datagram fails
			// this one, unsent.
			a.localRefused(t, h.Client, f, err)
		case hp != nil:
			// Not sent: the header goes in front of the next one. Sent
			// alone, or left off this one, it would not be in front of
			// the first datagram the server gets, the one Geyser reads
			// it from.
			f.header.CompareAndSwap(nil, hp)
			if (errors.Is(err, syscall.EMSGSIZE) || len(payload) > MaxDatagram) && !f.tooBig.Swap(true) {
				// Only a datagram within a few dozen bytes of the
				// largest: said once per flow, since every such one
				// fails until the header has gone in front of another.
				a.log.Warn("udp datagram dropped: with the PROXY header in front it is larger than a UDP datagram can be; the header goes in front of the flow's next datagram instead",
					"tunnel", t.spec.Name, "client", h.Client.String(), "bytes", n, "header_bytes", len(*hp), "err", err)
			}
		}
		return
	}
	f.in.Add(int64(n))
	t.bytesIn.Add(int64(n))
}

// flow returns t's flow for client, opening a local socket for a new one.
// At the flow cap, or out of file descriptors, it first closes the flows
// whose clients have been quiet a while (evictQuietLocked), if any.
func (a *Agent) flow(t *agentTunnel, client netip.AddrPort, now int64) (*agentFlow, error) {
	u := t.udp
	u.mu.Lock()
	f := u.flows[client]
	if f != nil {
		// Under the lock that eviction takes: a flow whose client speaks
		// again is not closed under the datagram.
		f.heard.Store(now)
	}
	full := f == nil && len(u.flows) >= a.cfg.MaxFlows && !a.evictQuietLocked(t)
	u.mu.Unlock()
	if f != nil {
		return f, nil
	}
	if full {
		return nil, &flowCapError{max: a.cfg.MaxFlows}
	}
	// Resolving and dialing outside the lock: a slow resolver must not
	// hold up every other flow's datagrams.
	conn, err := a.dialFlow(context.Background(), t, client)
	if err != nil && outOfFiles(err) {
		u.mu.Lock()
		evicted := a.evictQuietLocked(t)
		u.mu.Unlock()
		if evicted {
			conn, err = a.dialFlow(context.Background(), t, client)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening a local socket for the flow: %w", err)
	}
	tuneUDPSocket(conn, a.log)
	u.mu.Lock()
	defer u.mu.Unlock()
	if f := u.flows[client]; f != nil {
		// Opened meanwhile by the other delivery path (datagram stream).
		conn.Close()
		return f, nil
	}
	f = &agentFlow{conn: conn}
	f.last.Store(now)
	f.heard.Store(now)
	if t.spec.ProxyProtocol == 2 {
		hdr := proxyproto.HeaderProxyFromAddrs(2, net.UDPAddrFromAddrPort(client), a.publicAddr(t, "udp", client))
		b, err := hdr.Format()
		if err != nil {
			conn.Close()
			return nil, err
		}
		// Clipped: deliverUDP appends the payload to the header, which
		// must not write into proxyHeader.
		f.proxyHeader = slices.Clip(b)
		f.header.Store(&b)
	}
	u.flows[client] = f
	t.total.Add(1)
	t.active.Add(1)
	a.log.Info("udp flow opened", "tunnel", t.spec.Name, "client", client.String())
	// Flows are not clients Drain waits for: UDP has nothing in flight
	// to finish, and a flow lasts until it idles out. Run's end closes
	// them.
	a.flows.Add(1)
	go func() {
		defer a.flows.Done()
		a.serveFlow(t, client, f)
	}()
	return f, nil
}

// evictQuietLocked closes t's flows whose clients have sent nothing for
// flowQuiet (or the flow timeout, if shorter), to make room for new
// clients, and reports whether it closed any. All of them at once: a full
// tunnel that new clients keep trying would otherwise look through every
// flow for each. Called with t.udp.mu held.
func (a *Agent) evictQuietLocked(t *agentTunnel) bool {
	u := t.udp
	now := time.Now().UnixNano()
	if now < u.evictAfter {
		return false
	}
	quiet := int64(min(flowQuiet, a.cfg.FlowIdleTimeout))
	// No flow opened from now on is quiet enough before now+quiet.
	next := now + quiet
	n := 0
	for c, f := range u.flows {
		heard := f.heard.Load()
		if now-heard < quiet {
			next = min(next, heard+quiet)
			continue
		}
		// Gone from the table at once, so its place is free now; its
		// serveFlow ends on the closed socket.
		delete(u.flows, c)
		f.conn.Close()
		n++
	}
	u.evictAfter = next
	if n > 0 {
		a.log.Info("udp flows closed to make room for new clients: their clients have been quiet a while",
			"tunnel", t.spec.Name, "closed", n, "quiet_for", time.Duration(quiet))
	}
	return n > 0
}

// flowCapError is a new client's datagram dropped at the tunnel's flow
// cap, with no flow quiet enough to close.
type flowCapError struct{ max int }

func (e *flowCapError) Error() string {
	return fmt.Sprintf("the tunnel is at its flow cap of %d", e.max)
}

// outOfFiles reports whether err is the process or the system out of
// file descriptors.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// noFlow counts a datagram dropped because no flow could be opened for
// its client, and warns with the reason and the fix, at most once per
// noFlowWarnEvery per tunnel, with how many were dropped since the last
// warning (this one included).
func (a *Agent) noFlow(t *agentTunnel, err error) {
	u := t.udp
	// Counted in the status after the warning, so whoever sees the count
	// can find the line.
	defer u.drops.Add(1)
	u.noFlow.Add(1)
	now, last := time.Now().UnixNano(), u.warnedNoFlow.Load()
	if last != 0 && now-last < int64(noFlowWarnEvery) || !u.warnedNoFlow.CompareAndSwap(last, now) {
		return
	}
	var msg string
	switch {
	case errors.As(err, new(*flowCapError)):
		msg = fmt.Sprintf("udp datagrams from new clients dropped: the tunnel has as many flows as this agent opens (%d), and none is quiet enough to close; more agents exposing it with the same --name share its players", a.cfg.MaxFlows)
	case outOfFiles(err):
		msg = "udp datagrams from new clients dropped: the agent is out of file descriptors, one of which each flow's local socket holds; raise its open-file limit (ulimit -n, or LimitNOFILE= in its systemd unit)"
	default:
		msg = "udp datagrams from new clients dropped: no local socket could be opened for their flows; check the tunnel's local address"
	}
	a.log.Warn(msg, "tunnel", t.spec.Name, "dropped", u.noFlow.Swap(0), "err", err)
}

// serveFlow sends the local server's replies on f to its client until the
// flow is idle for the flow timeout.
func (a *Agent) serveFlow(t *agentTunnel, client netip.AddrPort, f *agentFlow) {
	start := time.Now()
	var out int64
	defer func() {
		t.udp.mu.Lock()
		if t.udp.flows[client] == f { // not if evicted, and replaced since
			delete(t.udp.flows, client)
		}
		t.udp.mu.Unlock()
		f.conn.Close()
		t.active.Add(-1)
		a.log.Info("udp flow closed", "tunnel", t.spec.Name, "client", client.String(),
			"duration", time.Since(start).Round(time.Millisecond), "bytes_in", f.in.Load(), "bytes_out", out)
	}()
	// A byte more than a tunnel carries: see serveUDP.
	buf := make([]byte, maxStreamHeader+MaxDatagram+1)
	var hdr [maxStreamHeader]byte
	idle := a.cfg.FlowIdleTimeout
	for {
		// The deadline moves with traffic both ways, so a flow the client
		// keeps alive stays even when the server is quiet.
		last := time.Unix(0, f.last.Load())
		f.conn.SetReadDeadline(last.Add(idle))
		n, err := f.conn.Read(buf[maxStreamHeader:])
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, f.last.Load())) < idle {
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED from a server not (yet) listening: keep the
			// flow; the client may retry.
			a.localRefused(t, client, f, err)
			continue
		}
		f.refused.Store(false)
		f.last.Store(time.Now().UnixNano())
		if n > MaxDatagram {
			// Logged first: whoever sees the count can find the line.
			a.log.Debug("udp datagram from the local server dropped: larger than a tunnel carries",
				"tunnel", t.spec.Name, "client", client.String(), "max_bytes", MaxDatagram)
			t.udp.drops.Add(1)
			continue
		}
		link := a.link.Load()
		if link == nil {
			t.udp.drops.Add(1) // between sessions
			continue
		}
		if !a.pace.allow(n) {
			t.udp.drops.Add(1) // over the relay's LIMIT
			continue
		}
		h := AppendStreamHeader(hdr[:0], StreamHeader{Tunnel: t.id.Load(), Client: client})
		s := maxStreamHeader - len(h)
		copy(buf[s:], h)
		if err := link.send(buf[s : maxStreamHeader+n]); err != nil {
			t.udp.drops.Add(1)
			continue
		}
		out += int64(n)
		t.bytesOut.Add(int64(n))
	}
}

// closeFlows ends every flow, for Run's return.
func (a *Agent) closeFlows() {
	for _, t := range a.tunnels {
		if t.udp == nil {
			continue
		}
		t.udp.mu.Lock()
		for _, f := range t.udp.flows {
			f.conn.Close()
		}
		t.udp.mu.Unlock()
	}
}

// receiveDatagrams delivers the relay's transport datagrams until the
// session ends.
func (a *Agent) receiveDatagrams(ctx context.Context, sess interface {
	ReceiveDatagram(context.Context) ([]byte, error)
}, byID map[uint32]*agentTunnel) {
	for {
		p, err := sess.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		a.deliverUDP(p, byID)
	}
}

// publicAddr is t's public address as a PROXY header's destination: the
// relay's IP as this agent reaches it, and the tunnel's public port. A
// header holds one address family, the client's; when the relay's differs,
// the destination is that family's unspecified address.
func (a *Agent) publicAddr(t *agentTunnel, proto string, client netip.AddrPort) net.Addr {
	a.mu.Lock()
	sess, port := a.sess, t.port
	a.mu.Unlock()
	var ip netip.Addr
	if sess != nil {
		ip = addrPort(sess.RemoteAddr()).Addr().Unmap()
	}
	if c := client.Addr().Unmap(); !ip.IsValid() || ip.Is4() != c.Is4() {
		ip = netip.IPv6Unspecified()
		if c.Is4() {
			ip = netip.IPv4Unspecified()
		}
	}
	ap := netip.AddrPortFrom(ip, port)
	if proto == "udp" {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}
