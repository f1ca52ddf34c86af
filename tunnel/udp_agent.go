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
	last atomic.Int64 // unix nanoseconds
	in   atomic.Int64 // bytes to the local server
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
	drops atomic.Int64
}

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
	f, err := a.flow(t, h.Client)
	if err != nil {
		t.udp.drops.Add(1)
		return
	}
	f.last.Store(time.Now().UnixNano())
	n := len(payload)
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
			// Not sent (too big with the header, say): the header goes
			// in front of the next one.
			f.header.CompareAndSwap(nil, hp)
		}
		return
	}
	f.in.Add(int64(n))
	t.bytesIn.Add(int64(n))
}

// flow returns t's flow for client, opening a local socket for a new one.
func (a *Agent) flow(t *agentTunnel, client netip.AddrPort) (*agentFlow, error) {
	u := t.udp
	u.mu.Lock()
	f, n := u.flows[client], len(u.flows)
	u.mu.Unlock()
	if f != nil {
		return f, nil
	}
	if n >= a.cfg.MaxFlows {
		return nil, fmt.Errorf("tunnel %s has %d flows, the most allowed", t.spec.Name, a.cfg.MaxFlows)
	}
	// Resolving and dialing outside the lock: a slow resolver must not
	// hold up every other flow's datagrams.
	conn, err := a.dialFlow(context.Background(), t, client)
	if err != nil {
		return nil, err
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
	f.last.Store(time.Now().UnixNano())
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

// serveFlow sends the local server's replies on f to its client until the
// flow is idle for the flow timeout.
func (a *Agent) serveFlow(t *agentTunnel, client netip.AddrPort, f *agentFlow) {
	start := time.Now()
	var out int64
	defer func() {
		t.udp.mu.Lock()
		delete(t.udp.flows, client)
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
			t.udp.drops.Add(1)
			a.log.Debug("udp datagram from the local server dropped: larger than a tunnel carries",
				"tunnel", t.spec.Name, "client", client.String(), "max_bytes", MaxDatagram)
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
