package tunnel

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startTaggedUDPEcho runs a UDP server on loopback that sends every
// datagram back to its sender with tag in front: which member's server a
// flow reached.
func startTaggedUDPEcho(t *testing.T, tag string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
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
			c, err := net.Dial("udp", public)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
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

		c, err := net.Dial("udp", public)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
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
