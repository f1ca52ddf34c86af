package tunnel

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTaggedUDPEcho runs a UDP server on loopback that sends every
// datagram back to its sender with tag in front: which member's server a
// flow reached.
func startTaggedUDPEcho(t *testing.T, tag string) string {
	t.Helper()
	pc := listenUDP(t)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(tag), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().String()
}

// udpTag sends p from c until an echo comes back, and returns its tag.
func udpTag(c net.Conn, p []byte, d time.Duration) (string, bool) {
	buf := make([]byte, 2048)
	for end := time.Now().Add(d); time.Now().Before(end); {
		c.Write(p)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && n > len(p) && bytes.Equal(buf[n-len(p):n], p) {
			return string(buf[:n-len(p)]), true
		}
	}
	return "", false
}

// A UDP tunnel shared by two agents, one of them frozen: a player whose
// flow was on the frozen member gets answers from the live one once the
// relay has found the frozen one silent and unanswering (its client talks,
// it does not; it misses a PING), well before the session's liveness
// timeout (a minute here) drops it.
func TestUDPGroupFlowLeavesFrozenMember(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = time.Minute })
		answer := r.Relay.config().AnswerTimeout
		p := newProxy(t, kind, r.Addr)
		udp := func(c *AgentConfig) { c.Tunnels[0].Protos = ProtoUDP }
		a := groupAgent(t, p.Addr(), r, kind, startTaggedUDPEcho(t, "A:"), udp)
		groupAgent(t, r.Addr, r, kind, startTaggedUDPEcho(t, "B:"), udp)
		public := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.eps[0].Port)))

		// Flows from new client sockets until one is on A.
		var onA net.Conn
		for i := 0; i < 20 && onA == nil; i++ {
			c := dialUDP(t, public)
			if tag, ok := udpTag(c, []byte("hello"), 5*time.Second); ok && tag == "A:" {
				onA = c
			}
		}
		if onA == nil {
			t.Fatal("20 flows and none reached member A")
		}

		p.Freeze()
		start := time.Now()
		tag, ok := udpTag(onA, []byte("still there?"), 30*time.Second)
		took := time.Since(start)
		t.Logf("%s: the flow got an answer from %q %v after A froze (answer timeout %v)", kind, tag, took.Round(time.Millisecond), answer)
		if !ok || tag != "B:" {
			t.Fatalf("the flow of the frozen member: answer %q (%v) in 30 s, want B's, long before the 1 min liveness timeout", tag, ok)
		}
		if !strings.Contains(r.Log.String(), `msg="agent did not answer a probe; sending its clients elsewhere until it does"`) {
			t.Error("the relay did not log that it found member A unanswering")
		}
		p.Thaw()
	})
}

// A UDP tunnel whose members are all suspect (say both missed a probe
// while the relay's own path flapped): a flow stays on its member, as it
// does with one suspect member left alone. pick gives back a suspect member
// only when no member answers, and turns its round robin on every call, so
// a flow re-asked every 100 ms must not take that as a better member: the
// player would hop from server to server ten times a second.
func TestUDPGroupFlowStaysWhenEveryMemberIsSuspect(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = time.Minute })
		udp := func(c *AgentConfig) { c.Tunnels[0].Protos = ProtoUDP }
		a := groupAgent(t, r.Addr, r, kind, startTaggedUDPEcho(t, "A:"), udp)
		groupAgent(t, r.Addr, r, kind, startTaggedUDPEcho(t, "B:"), udp)
		public := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.eps[0].Port)))

		c := dialUDP(t, public)
		first, ok := udpTag(c, []byte("hello"), 5*time.Second)
		if !ok {
			t.Fatal("no answer to the flow's first datagram")
		}

		// Both members missed a probe: marked, and (nothing probing them
		// here) marked they stay. B's joining had A probed: let that end
		// first, or its next PING would clear A's mark.
		var agents []*agentConn
		r.Relay.mu.Lock()
		for ac := range r.Relay.agents {
			agents = append(agents, ac)
		}
		r.Relay.mu.Unlock()
		if len(agents) != 2 {
			t.Fatalf("%d agent sessions on the relay, want 2", len(agents))
		}
		waitFor(t, "no probe under way", 10*time.Second, func() bool {
			return !agents[0].probing.Load() && !agents[1].probing.Load()
		})
		for _, ac := range agents {
			ac.markSuspect()
		}

		tags := map[string]int{}
		for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
			if tag, ok := udpTag(c, []byte("ping"), time.Second); ok {
				tags[tag]++
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: flow first on %q; answers with both members suspect: %v", kind, first, tags)
		if !agents[0].suspect.Load() || !agents[1].suspect.Load() {
			t.Fatal("a member's mark was cleared during the test: it proved nothing")
		}
		for tag, n := range tags {
			if tag != first {
				t.Errorf("%d answers from %q: the flow left %q though no member that answers was left to take it", n, tag, first)
			}
		}
	})
}

// startTickingUDPServer runs a UDP server on loopback that, like a game
// server sending snapshots, sends tag to every address it has heard from,
// every 20 ms, whether or not that address still talks to it.
func startTickingUDPServer(t *testing.T, tag string) string {
	t.Helper()
	pc := listenUDP(t)
	var mu sync.Mutex
	peers := map[string]net.Addr{}
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			peers[from.String()] = from
			mu.Unlock()
		}
	}()
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			mu.Lock()
			for _, p := range peers {
				if _, err := pc.WriteTo([]byte(tag), p); errors.Is(err, net.ErrClosed) {
					mu.Unlock()
					return
				}
			}
			mu.Unlock()
		}
	}()
	return pc.LocalAddr().String()
}

// A flow that left a frozen member for another hears only the member it is
// on now: when the frozen one thaws, its server, which still has the
// player, goes on sending to it, and the relay must not pass that on. A
// player would otherwise get two servers' packets mixed, and the flow's
// new member would seem to answer whenever the old one did.
func TestUDPGroupFlowHearsOnlyItsMember(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = time.Minute })
		p := newProxy(t, kind, r.Addr)
		udp := func(c *AgentConfig) { c.Tunnels[0].Protos = ProtoUDP }
		a := groupAgent(t, p.Addr(), r, kind, startTickingUDPServer(t, "A"), udp)
		groupAgent(t, r.Addr, r, kind, startTickingUDPServer(t, "B"), udp)
		public := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.eps[0].Port)))

		// next sends a datagram and returns the tag of the next one heard.
		buf := make([]byte, 64)
		next := func(c net.Conn) string {
			c.Write([]byte("input"))
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				return ""
			}
			return string(buf[:n])
		}
		var onA net.Conn
		for i := 0; i < 20 && onA == nil; i++ {
			c := dialUDP(t, public)
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
				if tag := next(c); tag != "" {
					if tag == "A" {
						onA = c
					}
					break
				}
			}
		}
		if onA == nil {
			t.Fatal("20 flows and none reached member A")
		}

		p.Freeze()
		moved := false
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && !moved; {
			moved = next(onA) == "B"
		}
		if !moved {
			t.Fatal("the flow of the frozen member A did not reach B within 30 s")
		}
		p.Thaw()
		heard := map[string]int{}
		for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
			heard[next(onA)]++
		}
		t.Logf("%s: after the flow moved to B and A thawed, heard %v", kind, heard)
		if heard["A"] > 0 {
			t.Errorf("%d datagrams from A's server reached the player after its flow moved to B", heard["A"])
		}
		if heard["B"] == 0 {
			t.Error("nothing from B after the move")
		}
	})
}

// A player who only listens (its flow is alive: it spoke within the flow
// timeout) keeps hearing the server after the agent's session is lost and
// the agent is back: the agent keeps the flow's local socket, and the
// relay passes on what the server sends through the new session, though
// the flow was set up through the old one and the player has said nothing
// since.
func TestUDPQuietFlowHearsAgentAfterReconnect(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		h := newRelayHost(t, fastLivenessRelay, fastLivenessOpts)
		r := h.start()
		p := newProxy(t, kind, r.Addr)
		cfg := r.udpAgentConfig(kind, ProtoUDP, startTickingUDPServer(t, "T"))
		cfg.Relay = p.Addr()
		fastRetry(&cfg)
		fastLivenessAgent(&cfg)
		a := liveAgentUp(t, cfg)
		public := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.eps[0].Port)))

		c := dialUDP(t, public)
		buf := make([]byte, 64)
		heard := func(d time.Duration) bool {
			c.SetReadDeadline(time.Now().Add(d))
			_, err := c.Read(buf)
			return err == nil
		}
		ok := false
		for i := 0; i < 50 && !ok; i++ {
			c.Write([]byte("join"))
			ok = heard(100 * time.Millisecond)
		}
		if !ok {
			t.Fatal("the player heard nothing from the server")
		}

		p.Silence()
		waitFor(t, "the relay to drop the silent agent", 15*time.Second, func() bool { return agentCount(r.Relay) == 0 })
		waitFor(t, "the agent to drop the silent session", 15*time.Second, func() bool { return !a.connected() })
		p.Restore()
		waitFor(t, "the agent to come back", 20*time.Second, func() bool { return a.connected() && agentCount(r.Relay) == 1 })
		// Drop what came before the outage.
		for heard(10 * time.Millisecond) {
		}
		if !heard(2 * time.Second) {
			t.Fatal("the quiet player heard nothing from the server in 2 s after the agent came back")
		}
	})
}

// New players go to the member with the fewest flows, as new connections
// go to the one with the fewest connections: a member that joins a group
// whose other member carries every player (the first instance back from a
// rolling upgrade, one that replaces a member that died) takes the next
// players, instead of half of them going on to the busy one. Each flow
// counts against its member from the start, so the players that a lost
// member hands on spread the same way.
func TestUDPGroupNewFlowsGoToFewestFlows(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		udp := func(c *AgentConfig) { c.Tunnels[0].Protos = ProtoUDP }
		a := groupAgent(t, r.Addr, r, kind, startTaggedUDPEcho(t, "A:"), udp)
		public := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.eps[0].Port)))
		for i := range 4 {
			if tag, ok := udpTag(dialUDP(t, public), []byte("hello"), 5*time.Second); !ok || tag != "A:" {
				t.Fatalf("flow %d, with A alone in the group: answer %q (%v), want A's", i, tag, ok)
			}
		}

		groupAgent(t, r.Addr, r, kind, startTaggedUDPEcho(t, "B:"), udp)
		var tags []string
		for range 3 {
			tag, ok := udpTag(dialUDP(t, public), []byte("hello"), 5*time.Second)
			if !ok {
				t.Fatal("a new flow got no answer")
			}
			tags = append(tags, tag)
		}
		ti := r.Relay.Tunnels()
		t.Logf("%s: A carries 4 flows, B joins: the next 3 went to %v; members %+v", kind, tags, ti[0].Members)
		for i, tag := range tags {
			if tag != "B:" {
				t.Errorf("new flow %d went to %q with A carrying %d flows and B %d: want B, the member with the fewest", i, tag, 4+i, i)
			}
		}
		var flows []int64
		for _, m := range ti[0].Members {
			flows = append(flows, m.UDPFlows)
		}
		if !slices.Equal(flows, []int64{4, 3}) {
			t.Errorf("the members' udp flows are %v, want [4 3]", flows)
		}
	})
}
