package tunnel

import (
	"context"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/transport"
)

// A half-open path (a pulled cable, a suspended laptop: nothing arrives and
// nothing says so) is noticed by both sides within their liveness timeout;
// once the path carries packets again the agent is back on its port.
func TestHalfOpenPath(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		h := newRelayHost(t, fastLivenessRelay, fastLivenessOpts)
		r := h.start()
		p := newProxy(t, kind, r.Addr)
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "h:"))
		cfg.Relay = p.Addr()
		fastRetry(&cfg)
		fastLivenessAgent(&cfg)
		a := liveAgentUp(t, cfg)
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Fatal(err)
		}

		p.Silence()
		start := time.Now()
		waitFor(t, "the relay to drop the silent agent", 15*time.Second, func() bool { return agentCount(r.Relay) == 0 })
		waitFor(t, "the agent to drop the silent session", 15*time.Second, func() bool { return !a.connected() })
		t.Logf("%s: both sides dropped the session %v after the path went silent (liveness %v)", kind, time.Since(start).Round(time.Millisecond), testIdle)
		if !strings.Contains(r.Log.String(), `msg="agent disconnected`) {
			t.Errorf("the relay did not log the agent's end")
		}
		if !strings.Contains(a.Log.String(), `msg="connection to the relay lost; reconnecting"`) {
			t.Errorf("the agent did not log the lost session")
		}

		p.Restore()
		waitFor(t, "the agent to come back", 20*time.Second, func() bool { return a.connected() && agentCount(r.Relay) == 1 })
		if got := a.Status().Tunnels[0].Public; got != a.eps[0].URL() {
			t.Errorf("after the outage the tunnel is %s, want %s", got, a.eps[0].URL())
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Fatalf("after the outage: %v", err)
		}
		// The agent noticed the loss only after the liveness timeout of
		// silence: since_heard, from the relay's last answer, holds that
		// silence, which after, from the notice, leaves out.
		m := regexp.MustCompile(`msg=reconnected .*since_heard=(\S+)\n`).FindStringSubmatch(a.Log.String())
		if m == nil {
			t.Fatalf("no reconnected line with since_heard=:\n%s", a.Log)
		}
		if heard, err := time.ParseDuration(m[1]); err != nil || heard < testIdle {
			t.Errorf("since_heard=%s (%v), want at least the %v of silence before the agent gave up", m[1], err, testIdle)
		}
	})
}

// groupAgent runs an agent in the group "grp" serving local.
func groupAgent(t *testing.T, relayAddr string, r *testRelay, kind, local string, mod func(*AgentConfig)) *liveAgent {
	t.Helper()
	cfg := r.agentConfig(kind, local)
	cfg.Tunnels[0].Name = "grp"
	cfg.Relay = relayAddr
	fastRetry(&cfg)
	if mod != nil {
		mod(&cfg)
	}
	return liveAgentUp(t, cfg)
}

// groupOfTwo starts two members of one tunnel, A behind the proxy pa and
// B direct, each with an echo server tagged "A:" or "B:", and holds a
// client on B (closed at the test's end), so that least connections sends
// the next client to A. It returns once B's joining probe of A is answered.
func groupOfTwo(t *testing.T, r *testRelay, kind string) (pa pathProxy, a, b *liveAgent, held *heldClient) {
	t.Helper()
	pa = newProxy(t, kind, r.Addr)
	a = groupAgent(t, pa.Addr(), r, kind, proctest.StartEcho(t, "A:"), nil)
	b = groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "B:"), nil)
	if a.eps[0].Port != b.eps[0].Port {
		t.Fatalf("the members got ports %d and %d", a.eps[0].Port, b.eps[0].Port)
	}
	held = holdTag(t, b.Public(0), "B:")
	t.Cleanup(func() { held.c.Close() })
	time.Sleep(100 * time.Millisecond)
	return pa, a, b, held
}

// holdTag holds clients of addr until one reaches the server tagged tag.
func holdTag(t *testing.T, addr, tag string) *heldClient {
	t.Helper()
	for range 50 {
		h := hold(t, addr, len(tag))
		if h.tag == tag {
			return h
		}
		h.c.Close()
	}
	t.Fatalf("50 clients of %s and none reached %q", addr, tag)
	return nil
}

// Two agents with one name and token share a port, and clients reach both.
func TestGroupSharesPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "A:"), nil)
		b := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "B:"), nil)
		if a.eps[0].Port != b.eps[0].Port {
			t.Fatalf("the members got ports %d and %d, want one shared port", a.eps[0].Port, b.eps[0].Port)
		}
		if ti := r.Relay.Tunnels(); len(ti) != 1 || len(ti[0].Members) != 2 {
			t.Fatalf("relay tunnels %+v, want one with two members", ti)
		}
		seen := map[string]int{}
		for range 20 {
			tag, err := visit(a.Public(0), 2)
			if err != nil {
				t.Fatal(err)
			}
			seen[tag]++
		}
		if seen["A:"] == 0 || seen["B:"] == 0 {
			t.Errorf("20 clients reached the members %v; want both to get some", seen)
		}
		// Least connections: with a client held on one member, the next
		// clients go to the other.
		held := hold(t, a.Public(0), 2)
		other := map[string]string{"A:": "B:", "B:": "A:"}[held.tag]
		for i := range 3 {
			// The client sees its end a moment before the relay does.
			waitFor(t, "the relay to count only the held client", 10*time.Second, func() bool {
				ti := r.Relay.Tunnels()
				return len(ti) == 1 && ti[0].Active == 1
			})
			if tag, err := visit(a.Public(0), 2); err != nil || tag != other {
				t.Errorf("client %d with one held on %s reached %q, %v; want the idle member %s", i, held.tag, tag, err, other)
			}
		}
		if err := held.finish(1 << 10); err != nil {
			t.Error(err)
		}
	})
}

// clientLoop runs visits to addr from n goroutines until stopped, counting
// the successes by tag and keeping every failure of a visit that started
// after mark: a visit in flight on a member when it dies may die with it.
type clientLoop struct {
	ok     atomic.Int64
	marked atomic.Int64 // unix nanoseconds; 0 until mark
	mu     sync.Mutex
	tags   map[string]int
	fails  []error
	early  int // failures of visits that started before mark
	stop   chan struct{}
	wg     sync.WaitGroup
}

func startClientLoop(addr string, tagLen, n int) *clientLoop {
	l := &clientLoop{tags: map[string]int{}, stop: make(chan struct{})}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now().UnixNano()
				tag, err := visit(addr, tagLen)
				l.mu.Lock()
				switch m := l.marked.Load(); {
				case err == nil:
					l.tags[tag]++
				case m == 0 || start < m:
					l.early++
				default:
					l.fails = append(l.fails, err)
				}
				l.mu.Unlock()
				if err == nil {
					l.ok.Add(1)
				}
				// A steady stream, not a flood: a few hundred clients
				// over the seconds a loss takes to notice.
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	return l
}

// mark starts the time after which no visit may fail.
func (l *clientLoop) mark() { l.marked.Store(time.Now().UnixNano()) }

// waitOK waits until n more visits succeeded, or one failed.
func (l *clientLoop) waitOK(t *testing.T, n int64, what string) {
	t.Helper()
	target := l.ok.Load() + n
	waitFor(t, what, 60*time.Second, func() bool {
		l.mu.Lock()
		failed := len(l.fails) > 0
		l.mu.Unlock()
		return failed || l.ok.Load() >= target
	})
}

// end stops the loop and returns the successes by tag, the failures after
// mark, and the count of failures before it.
func (l *clientLoop) end() (map[string]int, []error, int) {
	close(l.stop)
	l.wg.Wait()
	return l.tags, l.fails, l.early
}

// suspectRE matches the relay's line for an agent it marks suspect: by a
// client's stream left unanswered, or by a probe.
var suspectRE = regexp.MustCompile(`msg="agent did not answer (a new client's stream|a probe);`)

// A member of a group dies while new clients keep arriving: no client
// fails, and the other member's client in flight carries on. "cut" closes
// the member's path (TCP: what the kernel does for a killed process);
// "silent" stops it answering without a word (a pulled cable; QUIC after
// kill -9), which the relay notices by the answer timeout and a probe long
// before the liveness timeout. The dying member is the one that opened the
// group.
func TestGroupMemberLoss(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		for _, mode := range []string{"cut", "silent"} {
			t.Run(mode, func(t *testing.T) {
				if mode == "cut" && kind == TransportQUIC {
					t.Skip("a QUIC path cannot be closed from the middle; silent covers QUIC")
				}
				r := startRelayWith(t, func(c *RelayConfig) {
					fastLivenessRelay(c)
					c.AnswerTimeout = 500 * time.Millisecond
				}, fastLivenessOpts)
				p := newProxy(t, kind, r.Addr)
				a := groupAgent(t, p.Addr(), r, kind, proctest.StartEcho(t, "A:"), fastLivenessAgent)
				b := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "B:"), fastLivenessAgent)
				if a.eps[0].Port != b.eps[0].Port {
					t.Fatalf("the members got ports %d and %d", a.eps[0].Port, b.eps[0].Port)
				}
				held := holdTag(t, b.Public(0), "B:")

				loop := startClientLoop(b.Public(0), 2, 2)
				loop.waitOK(t, 20, "clients before the loss")
				// Strike while A has no client of its own (most of the
				// time): one in flight would keep least connections from
				// sending it new ones, and the probe would go untested.
				_, bPort, _ := net.SplitHostPort(b.session().LocalAddr().String())
				waitFor(t, "a moment with no client on A", 10*time.Second, func() bool {
					for _, ti := range r.Relay.Tunnels() {
						for _, m := range ti.Members {
							if _, port, _ := net.SplitHostPort(m.Agent); port != bPort && m.Active > 0 {
								return false
							}
						}
					}
					return true
				})
				if mode == "cut" {
					p.Cut()
				} else {
					p.Silence()
				}
				loop.mark()
				waitFor(t, "the relay to drop the lost member", 20*time.Second, func() bool { return agentCount(r.Relay) == 1 })
				loop.waitOK(t, 30, "clients after the loss")
				tags, fails, early := loop.end()
				t.Logf("%s/%s: clients per member %v; %d in flight on the lost member when it went", kind, mode, tags, early)
				for i, err := range fails {
					if i < 5 {
						t.Errorf("a client failed: %v", err)
					}
				}
				if len(fails) > 0 {
					t.Fatalf("%d of %d clients that came after the loss failed", len(fails), len(fails)+tags["A:"]+tags["B:"])
				}
				if tags["A:"] == 0 {
					t.Error("no client reached the lost member before it was lost: the test proved nothing")
				}
				if mode == "silent" && early == 0 && !suspectRE.MatchString(r.Log.String()) {
					t.Error("the relay never marked the silent member suspect")
				}
				if err := held.finish(256 << 10); err != nil {
					t.Errorf("the other member's client in flight: %v", err)
				}
			})
		}
	})
}

// A member of a group freezes (SIGSTOP, or a kill -9 that the relay has not
// noticed: its path carries nothing and closes nothing) while the other has
// a client connected, so least connections sends new clients to the frozen
// one. One client pays the answer timeout; the relay then sends the next
// ones straight to the live member. Once the frozen member answers again it
// gets new clients again.
func TestGroupFrozenMemberCostsOneClient(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		answer := r.Relay.config().AnswerTimeout
		p, _, b, held := groupOfTwo(t, r, kind)

		p.Freeze()
		const clients = 10
		var waited []int
		for i := range clients {
			start := time.Now()
			tag, err := visit(b.Public(0), 2)
			d := time.Since(start)
			if err != nil {
				t.Fatalf("client %d after the freeze: %v", i+1, err)
			}
			t.Logf("%s: client %d: %s after %v", kind, i+1, tag, d.Round(time.Millisecond))
			if d >= answer/2 {
				waited = append(waited, i+1)
			} else if len(waited) > 0 && tag != "B:" {
				t.Errorf("client %d reached %q, want the live member B", i+1, tag)
			}
		}
		t.Logf("%s: of %d clients, %v waited for the frozen member (answer timeout %v)", kind, clients, waited, answer)
		switch {
		case len(waited) == 0:
			t.Fatal("no client waited for the frozen member: the test proved nothing")
		case len(waited) > 1:
			t.Errorf("clients %v each waited at least %v; want only the first to wait for the frozen member", waited, answer/2)
		case waited[0] == clients:
			t.Error("only the last client reached the frozen member: the test proved nothing")
		}
		// Usually by the client's stream; by the probe B's joining sent,
		// when A froze before answering it.
		if !suspectRE.MatchString(r.Log.String()) {
			t.Error("the relay did not log that it stopped sending clients to the frozen member")
		}

		p.Thaw()
		waitFor(t, "a client to reach the thawed member", 20*time.Second, func() bool {
			tag, err := visit(b.Public(0), 2)
			if err != nil {
				t.Fatalf("a client after the thaw: %v", err)
			}
			return tag == "A:"
		})
		if !strings.Contains(r.Log.String(), `msg="agent answers again"`) {
			t.Error("the relay did not log that the thawed member answers again")
		}
		if err := held.finish(256 << 10); err != nil {
			t.Errorf("the live member's client in flight: %v", err)
		}
	})
}

// A draining member (Agent.Drain) gets no new clients, its clients in
// flight finish byte-identical, and then its Run returns nil.
func TestGroupDrainMember(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "A:"), nil)
		b := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "B:"), nil)
		held := holdTag(t, b.Public(0), "B:")

		drained := make(chan struct{})
		go func() {
			defer close(drained)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b.Drain(ctx)
		}()
		waitFor(t, "the relay to see the member draining", 10*time.Second, func() bool {
			ti := r.Relay.Tunnels()
			return len(ti) == 1 && len(ti[0].Members) == 2 && (ti[0].Members[0].Draining || ti[0].Members[1].Draining)
		})
		if !b.Status().Draining {
			t.Error("B's Status() does not say it is draining")
		}
		for i := range 10 {
			if tag, err := visit(b.Public(0), 2); err != nil || tag != "A:" {
				t.Fatalf("client %d during B's drain reached %q, %v; want A", i, tag, err)
			}
		}
		select {
		case <-drained:
			t.Fatal("Drain returned with a client in flight")
		default:
		}
		if err := held.finish(1 << 20); err != nil {
			t.Fatalf("B's client in flight: %v", err)
		}
		<-drained
		if err := b.wait(t, 10*time.Second); err != nil {
			t.Errorf("Run after Drain returned %v, want nil", err)
		}
		waitFor(t, "the drained member to leave", 10*time.Second, func() bool {
			ti := r.Relay.Tunnels()
			return len(ti) == 1 && len(ti[0].Members) == 1
		})
		if _, err := visit(b.Public(0), 2); err != nil {
			t.Errorf("the group after B left: %v", err)
		}
	})
}

// An agent whose path died comes back on a new path before the relay has
// noticed: its new session (same instance) replaces the old one, which
// would otherwise linger for the liveness timeout (an hour here) as a
// member that never answers.
func TestSameInstanceReplaces(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		long := func(o *transport.Options) { o.IdleTimeout, o.KeepAlive = time.Hour, 20*time.Minute }
		r := startRelayWith(t, func(c *RelayConfig) { c.Liveness = time.Hour }, long)
		p := newProxy(t, kind, r.Addr)
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "s:"))
		cfg.Relay = p.Addr()
		fastRetry(&cfg)
		long(&cfg.TransportOptions)
		a := liveAgentUp(t, cfg)

		// The old path goes silent, and the agent, as if its network
		// changed, drops the session; the relay hears nothing of it.
		p.SilenceExisting()
		a.session().Close()
		waitFor(t, "the agent to reconnect", 20*time.Second, func() bool { return a.Status().Reconnects == 1 && a.connected() })
		waitFor(t, "the relay to hold one session", 20*time.Second, func() bool { return agentCount(r.Relay) == 1 })
		if !strings.Contains(r.Log.String(), `msg="agent session replaced by a newer one from the same agent"`) {
			t.Error("the relay did not log the replacement")
		}
		ti := r.Relay.Tunnels()
		if len(ti) != 1 || len(ti[0].Members) != 1 || ti[0].Port != a.eps[0].Port {
			t.Fatalf("relay tunnels %+v, want one on port %d with one member", ti, a.eps[0].Port)
		}
		for range 3 {
			if _, err := visit(a.Public(0), 2); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// A member whose agent cannot reach its local server goes to the back of
// the queue for a while: with no clients on it, it has the least load,
// and used to be the first try of about every other client (round robin
// among equals), each refused there and sent on. Now the clients after
// the first refusal go straight to the member that serves.
func TestGroupMemberWithLocalDownTriedLast(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "A:"), nil)
		down := groupAgent(t, r.Addr, r, kind, proctest.ClosedPort(t), nil)
		if a.eps[0].Port != down.eps[0].Port {
			t.Fatalf("the members got ports %d and %d", a.eps[0].Port, down.eps[0].Port)
		}
		const clients = 20
		start := time.Now()
		for i := range clients {
			if tag, err := visit(a.Public(0), 2); err != nil || tag != "A:" {
				t.Fatalf("client %d: %q, %v", i+1, tag, err)
			}
		}
		// One refusal a backoff at most, and one to find out; without
		// the backoff, about every other client.
		refused := strings.Count(down.Log.String(), "the local server did not accept the connection")
		if most := 1 + int(time.Since(start)/localDownBackoff) + 1; refused > most {
			t.Errorf("%d of %d clients were first sent to the member whose local server is down; want at most %d", refused, clients, most)
		}
		if refused == 0 {
			t.Errorf("no client tried the member whose local server is down: the test shows nothing")
		}
	})
}
