package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytun/relay/transport"
)

// group is one public tunnel: a port, and the agents (members) serving it.
// One agent is a group of one; agents registering the same name with the
// same token share the port, and new clients go to the member with the
// fewest (TCP connections and UDP flows together), round robin among
// equals.
type group struct {
	r     *Relay
	key   leaseKey
	token *tokenState
	// port and ln are guarded by Relay.mu: a reload may move the tunnel
	// to another port (moveLocked).
	port uint16
	ln   net.Listener // nil for a UDP-only tunnel
	// accepted is closed once the loop accepting on ln accepts no more:
	// every client it took is counted by then.
	accepted chan struct{}
	// movedWhy is why the latest move did, for its MOVED; guarded by
	// Relay.mu.
	movedWhy string
	// udp is the public UDP socket and its flows; nil for a TCP-only
	// tunnel. A move replaces it, and the old flows end with the old port.
	udp atomic.Pointer[udpPort]
	// udpDrops counts the datagrams dropped since the tunnel opened, on
	// every socket it had.
	udpDrops atomic.Int64
	// protos are the tunnel's protocols (ProtoTCP, ProtoUDP).
	protos uint8
	since  time.Time
	// logp names the tunnel, its port and token in its log lines; a move
	// replaces it (logger).
	logp atomic.Pointer[slog.Logger]
	gate atomic.Pointer[clientGate]
	// ips are the per-IP counts every gate of the group shares.
	ips ipTable
	traffic
	refused counterMap
	// noLease: the tunnel keeps no port lease (Register.NoLease).
	noLease bool

	// size is len(members), for readers without Relay.mu.
	size atomic.Int32
	// shut is closed, for a client's end to read without Relay.mu: a
	// closed group with TCP clients left is in Relay.finishing until the
	// last of them ends (finished).
	shut atomic.Bool

	// Guarded by Relay.mu.
	members     []*member
	allow, deny []netip.Prefix // the latest member's lists
	rr          int
	closed      bool
	orphan      *time.Timer
	// away are the agent instances that left without a goodbye and have
	// not come back, with when they left and the ports they asked for:
	// the agents the rejoin window waits for (those away longer than it
	// are not counted on), and a move keeps to.
	away   map[[instanceLen]byte]awayAgent
	joined chan struct{} // closed, and replaced, when a member joins
}

// awayAgent is a member that left its group without a goodbye.
type awayAgent struct {
	left time.Time
	want PortRange // as member.want
}

// member is one agent session's place in a group.
type member struct {
	id     uint32 // the tunnel id in this member's stream headers
	g      *group
	agent  *agentConn
	since  time.Time
	active atomic.Int64
	// flows counts the UDP flows pinned to the member (guarded, for
	// writers, by the flows' udpPort.mu): pick weighs them with active,
	// so players spread over the members as connections do.
	flows atomic.Int64
	// localDownUntil (unix nanoseconds) is set when the member's agent
	// could not reach its local server for a client: until then pick
	// tries the other members first. With no clients on it, the member
	// would otherwise have the least load and be every client's first
	// try, each costing a round trip and a line in the agent's log.
	localDownUntil atomic.Int64
	draining       atomic.Bool
	gone           atomic.Bool // out of the group: its UDP flows move
	// want is the port range the member's agent asked for (0-0: any); a
	// move keeps the tunnel within every member's.
	want PortRange
}

func (g *group) logger() *slog.Logger { return g.logp.Load() }

func (g *group) setLogger() {
	g.logp.Store(g.r.log.With("tunnel", g.key.Name, "port", g.port, "token", g.key.Token))
}

// closeListeners closes the public socket(s), with Relay.mu held. The
// TCP clients still in the listener's accept queue, whose connect already
// succeeded, are accepted and carried like any other, not reset
// (closeListener), and counted before it returns, so a drain waits for
// them.
func (g *group) closeListeners() {
	switch {
	case g.ln == nil:
	case g.r.serveCtx.Err() != nil:
		// The relay stops at once, not in a drain: the clients it took
		// would be cut straight away, and Serve may be waiting on r.wg
		// already, with nothing left to keep its count above zero, so
		// adding them to it is not safe.
		g.ln.Close()
	default:
		var summary refusalSummary
		closeListener(g.ln, func(c net.Conn) { g.take(g.r.serveCtx, c, &g.r.wg, &summary) })
	}
	if u := g.udp.Load(); u != nil {
		u.pc.Close()
	}
}

func (g *group) addMemberLocked(a *agentConn, allow, deny []netip.Prefix) *member {
	m := &member{id: g.r.nextTunnel.Add(1), g: g, agent: a, since: time.Now()}
	others := g.members
	g.members = append(g.members, m)
	g.size.Store(int32(len(g.members)))
	a.members[m.id] = m
	a.byID.Store(m.id, m)
	delete(g.away, a.instance)
	if g.orphan != nil {
		g.orphan.Stop()
		g.orphan = nil
	}
	if g.gate.Load() == nil || !slices.Equal(allow, g.allow) || !slices.Equal(deny, g.deny) {
		if g.gate.Load() != nil {
			g.logger().Info("client allow/deny lists replaced by the latest agent's", "allow", allow, "deny", deny)
		}
		g.allow, g.deny = allow, deny
		g.rebuildGateLocked()
	}
	close(g.joined)
	g.joined = make(chan struct{})
	// A member that is gone but not yet timed out would get a share of the
	// new clients: ask the others to show they are alive.
	for _, o := range others {
		if o.agent != a {
			o.agent.probe()
		}
	}
	return m
}

// rebuildGateLocked applies the relay's, the token's and the members'
// client limits. Only the rules change: the per-IP counts carry over, so
// clients already connected still count against the new limits.
func (g *group) rebuildGateLocked() {
	cfg := g.r.config()
	layers := []ClientLimits{cfg.Clients, g.token.token().Clients, {Allow: g.allow, Deny: g.deny}}
	g.gate.Store(newClientGate(layers, g.token, &g.ips, &g.refused, &g.r.clientRefusals))
}

func (g *group) removeMemberLocked(m *member) {
	i := slices.Index(g.members, m)
	if i < 0 {
		return
	}
	g.members = slices.Delete(g.members, i, i+1)
	g.size.Store(int32(len(g.members)))
	m.gone.Store(true)
	window := g.r.config().RejoinWindow
	if !m.draining.Load() && m.agent.instance != ([instanceLen]byte{}) && window > 0 {
		// Left without a goodbye: it may come back.
		now := time.Now()
		for inst, aw := range g.away {
			if now.Sub(aw.left) > window {
				delete(g.away, inst)
			}
		}
		if g.away == nil {
			g.away = make(map[[instanceLen]byte]awayAgent)
		}
		g.away[m.agent.instance] = awayAgent{left: now, want: m.want}
	}
	if g.closed || g.liveMembersLocked() > 0 {
		return
	}
	if len(g.members) > 0 {
		// Only draining members are left: no one takes new clients.
		g.r.closeGroupLocked(g, "its agents are draining")
		return
	}
	if m.draining.Load() || g.r.closing || window == 0 {
		g.r.closeGroupLocked(g, "its last agent left")
		return
	}
	// The agent vanished without saying goodbye: it is likely reconnecting.
	// Keep the port, and hold new clients, for a while.
	g.logger().Info("tunnel has no agent; keeping its port open for one to return", "window", window)
	g.orphan = time.AfterFunc(window, func() {
		g.r.mu.Lock()
		defer g.r.mu.Unlock()
		if len(g.members) == 0 {
			g.r.closeGroupLocked(g, "no agent came back")
		}
	})
}

// awaitsLocked reports whether an agent that left g without a goodbye
// within the rejoin window may still come back.
func (g *group) awaitsLocked(now time.Time) bool {
	window := g.r.config().RejoinWindow
	for _, aw := range g.away {
		if now.Sub(aw.left) <= window {
			return true
		}
	}
	return false
}

func (g *group) liveMembersLocked() int {
	n := 0
	for _, m := range g.members {
		if !m.draining.Load() {
			n++
		}
	}
	return n
}

func (g *group) info() TunnelInfo {
	ti := TunnelInfo{
		Name: g.key.Name, TokenID: g.key.Token, Protos: strings.Split(protoNames(g.protos), ","), Port: g.port, Since: g.since,
		Active: g.active.Load(), Total: g.total.Load(), BytesIn: g.bytesIn.Load(), BytesOut: g.bytesOut.Load(),
		Refused: g.refused.snapshot(), Closed: g.closed,
	}
	if u := g.udp.Load(); u != nil {
		ti.UDPFlows, ti.UDPDrops = u.flowCount(), g.udpDrops.Load()
	}
	for _, m := range g.members {
		ti.Members = append(ti.Members, MemberInfo{
			Agent: m.agent.sess.RemoteAddr().String(), Transport: m.agent.sess.Kind(), ViaProxy: transport.ViaProxy(m.agent.sess), Since: m.since,
			Active: m.active.Load(), UDPFlows: m.flows.Load(), Draining: m.draining.Load(),
		})
	}
	return ti
}

// serve accepts the clients of ln, the tunnel's listener until a move
// replaces and closes it. It closes accepted once it accepts no more.
func (g *group) serve(ctx context.Context, ln net.Listener, accepted chan<- struct{}) {
	var summary refusalSummary
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(accepted)
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			// Out of file descriptors: the port must keep serving once
			// some are free again.
			if transport.RetryAccept(err, &backoff, ctx.Done()) {
				g.logger().Warn("accepting clients failed; retrying", "err", err, "in", backoff)
				continue
			}
			return
		}
		backoff = 0
		g.take(ctx, c, &wg, &summary)
	}
}

// take admits client c, accepted on the tunnel's port, and carries it on
// a goroutine that wg counts; a refusal is noted in summary.
func (g *group) take(ctx context.Context, c net.Conn, wg *sync.WaitGroup, summary *refusalSummary) {
	client := addrPort(c.RemoteAddr())
	release, reason := g.gate.Load().admit(client.Addr())
	if reason != "" {
		// Closed at once, before any work: a flood costs an accept
		// and a close.
		c.Close()
		g.logger().Debug("client refused", "client", client.String(), "reason", reason)
		summary.note(g, client)
		return
	}
	g.active.Add(1)
	g.total.Add(1)
	g.r.clientsTotal.Add(1)
	g.r.clientsActive.Add(1)
	wg.Add(1)
	go g.carry(ctx, c, func() {
		release()
		g.r.clientsActive.Add(-1)
		if g.active.Add(-1) == 0 && g.shut.Load() {
			g.finished()
		}
		wg.Done()
	})
}

// finished runs when g, closed with clients left (Relay.finishing), carries no
// TCP client any more: it leaves the relay's finishing list, and its counts
// go to the tunnel of its name still listed, if any, so that the metrics,
// which sum the two, never go down (Prometheus would take that for a
// restart, and count the other's traffic twice).
func (g *group) finished() {
	r := g.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.finishing[g]; !ok {
		return
	}
	delete(r.finishing, g)
	g.logger().Info("closed tunnel's last client is done", "clients_total", g.total.Load(), "bytes_in", g.bytesIn.Load(), "bytes_out", g.bytesOut.Load())
	heir := r.groups[g.key]
	for o := range r.finishing {
		if heir != nil {
			break
		}
		if o.key == g.key {
			heir = o
		}
	}
	if heir != nil {
		heir.total.Add(g.total.Load())
		heir.bytesIn.Add(g.bytesIn.Load())
		heir.bytesOut.Add(g.bytesOut.Load())
		heir.udpDrops.Add(g.udpDrops.Load())
		for reason, n := range g.refused.snapshot() {
			heir.refused.addN(reason, n)
		}
	}
}

// carry finds a member for client c, opens a stream to it and joins the
// two. When another member could take the client, it first waits (briefly)
// for the member's answer, so a member that died, or whose local server is
// down, costs the client a retry instead of the connection. A member that
// leaves a client unanswered is marked suspect: new clients go to the
// others, and clients still waiting for it stop waiting, so one client pays
// the answer timeout, not every client sent there until a probe fails.
// finish runs once the client is done: at carry's return, or once the
// joined pair ends.
func (g *group) carry(ctx context.Context, c net.Conn, finish func()) {
	growStack()
	client := addrPort(c.RemoteAddr())
	cfg := g.r.config()
	deadline := time.Now().Add(cfg.OpenStreamTimeout)
	// A dead agent session must not leave clients hanging.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	joined := false
	defer func() {
		if !joined {
			stop()
			finish()
		}
	}()
	var tried []*member
	unreachable := false
	for {
		m, alternatives, suspect, closed := g.pick(tried)
		if m == nil {
			if len(tried) == 0 && !closed && g.waitMember(ctx, deadline) {
				continue
			}
			c.Close()
			switch {
			case unreachable:
				g.logger().Info("client closed: the agent could not reach its local server", "client", client.String())
			case len(tried) > 0:
				g.logger().Warn("client dropped: no agent answered", "client", client.String(), "tried", len(tried))
			default:
				g.logger().Warn("client dropped: the tunnel has no agent", "client", client.String())
			}
			return
		}
		tried = append(tried, m)
		st, err := m.open(ctx, client, deadline)
		if err != nil {
			g.logger().Debug("could not open a stream to an agent", "client", client.String(), "agent", m.agent.sess.RemoteAddr().String(), "err", err)
			continue
		}
		var peer net.Conn = &statusStream{Stream: st, agent: m.agent}
		if alternatives {
			// The deadline is set before the wait is counted in, so that
			// markSuspect's, which ends the wait, comes after it.
			answer := min(time.Until(deadline), cfg.AnswerTimeout)
			answerBy := time.Now().Add(answer)
			st.SetReadDeadline(answerBy)
			w := m.agent.awaitAnswer(st, suspect)
			if w == nil && !g.healthyLeft(tried) {
				// Marked suspect since pick chose it, but no member
				// that is not suspect is left to try: this one is
				// still the client's best chance.
				w = m.agent.awaitAnswer(st, true)
			}
			if w == nil {
				// Marked suspect since pick chose it: another member
				// takes the client.
				st.Close()
				continue
			}
			var b [1]byte
			_, err := io.ReadFull(st, b[:])
			aborted := m.agent.answerDone(w)
			for err != nil && aborted && time.Now().Before(answerBy) && !g.healthyLeft(tried) {
				// A mark ended the wait, but the other members are
				// suspect too (or tried): going to one of them would
				// give up an answer that may still come in time.
				st.SetReadDeadline(answerBy)
				w = m.agent.awaitAnswer(st, true)
				_, err = io.ReadFull(st, b[:])
				aborted = m.agent.answerDone(w)
			}
			if err != nil {
				st.Close()
				if errors.Is(err, os.ErrDeadlineExceeded) && !aborted {
					if answer < cfg.AnswerTimeout {
						// The client's own deadline cut the wait short:
						// that says little about the agent, so only
						// ask it (marked if it misses the PING).
						m.agent.probe()
					} else {
						m.agent.unanswered()
					}
				}
				g.logger().Debug("agent did not answer; trying another", "client", client.String(), "agent", m.agent.sess.RemoteAddr().String(), "err", err)
				continue
			}
			m.agent.alive()
			if b[0] != StatusConnected {
				st.Close()
				unreachable = true
				m.localDownUntil.Store(time.Now().Add(localDownBackoff).UnixNano())
				continue
			}
			m.localDownUntil.Store(0)
			peer = st
		}
		m.active.Add(1)
		start := time.Now()
		// The copies run on goroutines of their own, and this one ends.
		joined = true
		stop() // the join closes c when ctx ends
		startJoin(ctx, c, peer, &g.bytesIn, &g.bytesOut, m.agent.guard, joinPaces{toA: g.token.down, toB: g.token.up, sentA: &m.agent.down}, func(stats JoinStats) {
			m.active.Add(-1)
			if errors.Is(stats.Err, errLocalUnreachable) {
				g.logger().Info("client closed: the agent could not reach its local server", "client", client.String())
			} else {
				g.logger().Debug("client closed", "client", client.String(), "duration", time.Since(start).Round(time.Millisecond),
					"bytes_in", stats.AToB, "bytes_out", stats.BToA, "err", stats.Err)
			}
			finish()
		})
		return
	}
}

// pick chooses the member for the next client among those not yet tried:
// live members the fewest clients (TCP connections and UDP flows), round
// robin among equals; suspect ones
// only when nothing else is left, and draining ones only when every
// member drains (a client accepted before the port closed). alternatives reports whether another
// member remains should this one fail; suspect, that m was chosen among
// suspect members; closed, that the group is gone.
func (g *group) pick(tried []*member) (m *member, alternatives, suspect, closed bool) {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	var healthy, localDown, suspects, draining []*member
	now := time.Now().UnixNano()
	for _, c := range g.members {
		if slices.Contains(tried, c) {
			continue
		}
		if c.draining.Load() {
			draining = append(draining, c)
			continue
		}
		switch until := c.localDownUntil.Load(); {
		case c.agent.suspect.Load():
			suspects = append(suspects, c)
		case until > now:
			localDown = append(localDown, c)
		default:
			healthy = append(healthy, c)
		}
	}
	cands := healthy
	if len(cands) == 0 {
		// Their agents answer; their local servers may be back.
		cands = localDown
	}
	if len(cands) == 0 {
		cands = suspects
	}
	others, suspect := len(healthy)+len(localDown)+len(suspects), len(healthy)+len(localDown) == 0
	if len(cands) == 0 {
		// Every member drains, so the port is closed, and this client
		// was accepted before it was (in flight, or queued in the
		// listener): its agents still serve what they have, this one
		// too, rather than have it reset.
		cands, others, suspect = draining, len(draining), false
	}
	if len(cands) == 0 {
		return nil, false, false, g.closed
	}
	if len(tried) == 0 {
		// One turn per client: a retry turning it too would, with two
		// members and one failing, start every client at the same one.
		g.rr++
	}
	load := func(c *member) int64 { return c.active.Load() + c.flows.Load() }
	for i := range cands {
		c := cands[(g.rr+i)%len(cands)]
		if m == nil || load(c) < load(m) {
			m = c
		}
	}
	return m, others > 1, suspect, g.closed
}

// localDownBackoff is how long a member whose agent could not reach its
// local server goes to the back of pick's queue.
const localDownBackoff = time.Second

// healthyLeft reports whether a member not in tried, not draining and not
// suspect could take a client.
func (g *group) healthyLeft(tried []*member) bool {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	for _, c := range g.members {
		if !c.draining.Load() && !slices.Contains(tried, c) && !c.agent.suspect.Load() {
			return true
		}
	}
	return false
}

// waitMember waits for a member to join, until deadline.
func (g *group) waitMember(ctx context.Context, deadline time.Time) bool {
	g.r.mu.Lock()
	joined, closed := g.joined, g.closed
	g.r.mu.Unlock()
	if closed {
		return false
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-joined:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// open opens a stream to m's agent for client and writes its header.
func (m *member) open(ctx context.Context, client netip.AddrPort, deadline time.Time) (transport.Stream, error) {
	octx, cancel := context.WithDeadline(ctx, deadline)
	st, err := m.agent.sess.OpenStream(octx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("opening a stream: %w", err)
	}
	hdr := AppendStreamHeader(make([]byte, 0, maxStreamHeader), StreamHeader{Tunnel: m.id, Client: client})
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, fmt.Errorf("writing the stream header: %w", err)
	}
	return st, nil
}

// statusStream consumes the agent's status byte before the first payload
// byte, turning a refusal into an error so Join closes the client at once;
// the byte shows the agent is alive. Only Join's stream-to-client direction
// reads it.
type statusStream struct {
	transport.Stream
	agent   *agentConn
	checked bool
}

func (s *statusStream) Read(p []byte) (int, error) {
	if !s.checked {
		var b [1]byte
		if _, err := io.ReadFull(s.Stream, b[:]); err != nil {
			return 0, fmt.Errorf("reading agent status: %w", err)
		}
		s.checked = true
		s.agent.alive()
		if b[0] != StatusConnected {
			return 0, errLocalUnreachable
		}
	}
	return s.Stream.Read(p)
}

var errLocalUnreachable = errors.New("the agent could not reach its local server")

// refusalSummary logs the tunnel's refusals of public clients so far, at
// most once per refusalLogEvery, so a flood cannot flood the log. A refusal
// within the interval after a line schedules one more line for its end, so
// the refusals after a line are in the log even when none follows them (a
// burst that stops, a reason seen only once). Each reader of a public
// socket (TCP accept loop, UDP read loop) has its own.
type refusalSummary struct {
	// after runs f after d; nil: time.AfterFunc. Tests replace it.
	after func(d time.Duration, f func())

	mu      sync.Mutex
	last    time.Time
	pending bool           // a line is scheduled for the interval's end
	latest  netip.AddrPort // the latest client refused, for that line
}

// refusalLogEvery is the least time between two refusal summaries of one
// reader.
const refusalLogEvery = 10 * time.Second

func (s *refusalSummary) note(g *group, latest netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest = latest
	if s.pending {
		return
	}
	wait := refusalLogEvery - time.Since(s.last)
	if wait <= 0 {
		s.logLocked(g)
		return
	}
	s.pending = true
	after := s.after
	if after == nil {
		after = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
	}
	after(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.pending = false
		s.logLocked(g)
	})
}

func (s *refusalSummary) logLocked(g *group) {
	s.last = time.Now()
	g.logger().Info("public clients refused so far", "by_reason", g.refused.snapshot(), "latest", s.latest.String())
}
