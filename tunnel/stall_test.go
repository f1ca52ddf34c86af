package tunnel

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/syncbuf"
	"github.com/relaytun/relay/transport"
)

// smallWindows makes a few stalled streams fill a session, as sixteen do
// with the defaults.
func smallWindows(o *transport.Options) {
	o.StreamWindow = 64 << 10
	o.SessionWindow = 256 << 10
}

// stallSetup runs a relay and an agent with small windows and a liveness
// well above what the guard needs (stallGrace, a tick, and the answer
// timeout), with two tunnels: first to first's server, then to an echo.
func stallSetup(t *testing.T, kind string, first func(net.Conn)) (*testRelay, *testAgent) {
	r := startRelayWith(t, func(c *RelayConfig) { c.Liveness = 12 * time.Second }, smallWindows)
	cfg := r.agentConfig(kind, startServer(t, first), startServer(t, echo))
	smallWindows(&cfg.TransportOptions)
	cfg.TransportOptions.IdleTimeout = 12 * time.Second
	cfg.TransportOptions.KeepAlive = time.Second
	return r, mustRunAgent(t, cfg)
}

// echoWorks sends through the agent's second tunnel, giving the guard
// until within to clear the session: a round of the guard takes up to
// stallGrace, stallInterval and the answer timeout (5 s), and the
// connections not yet stuck when it reset the others may need another.
func echoWorks(t *testing.T, a *testAgent, within time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", a.Public(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(within))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo through the agent's other tunnel: %q, %v", b, err)
	}
}

// outlastsStall waits for the session's windows to fill, then checks that
// the agent's other tunnel works, that who logged the reset, and that the
// agent's one session survived.
func outlastsStall(t *testing.T, r *testRelay, a *testAgent, who string, log *syncbuf.Buffer) {
	t.Helper()
	time.Sleep(3 * time.Second) // the sockets and then the windows fill
	echoWorks(t, a, 15*time.Second)
	// Under load the sockets fill slowly: the guard's round starts
	// only once they have.
	waitFor(t, "the "+who+" to log the reset", 15*time.Second, func() bool {
		return strings.Contains(log.String(), "reset connections that stopped reading")
	})
	for range 3 {
		echoWorks(t, a, 15*time.Second) // a round of the guard or two
	}
	if s := r.Log.String(); strings.Contains(s, "agent disconnected") || strings.Count(s, "agent connected") != 1 {
		t.Fatalf("the agent's session did not survive:\n%s", s)
	}
}

// TestStalledClientsAreReset: public clients that stop reading a large
// response fill the session's window on the relay. Before the guard,
// nothing then moved on the session, its PINGs included, until the
// liveness timeout dropped it with every tunnel. Now the stalled clients
// get an RST and the agent's other tunnel keeps working, on one session.
func TestStalledClientsAreReset(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const size = 32 << 20
		r, a := stallSetup(t, kind, func(c net.Conn) {
			defer c.Close()
			c.Write(make([]byte, size))
		})
		var slow []net.Conn
		for range 8 {
			c, err := net.Dial("tcp", a.Public(0))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			slow = append(slow, c)
		}
		outlastsStall(t, r, a, "relay", r.Log)
		// A reset client learns that it did not get everything; the
		// others get all of it.
		reset := 0
		for i, c := range slow {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := io.Copy(io.Discard, c)
			switch {
			case errors.Is(err, syscall.ECONNRESET):
				reset++
			case err != nil || n != size:
				t.Errorf("client %d read %d of %d bytes, %v; want them all or a reset", i, n, size, err)
			}
		}
		if reset == 0 {
			t.Error("no client was reset")
		}
	})
}

// TestStalledLocalServerIsReset: the same on the agent, for a local server
// that stops reading what clients upload.
func TestStalledLocalServerIsReset(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		stop := make(chan struct{})
		r, a := stallSetup(t, kind, func(c net.Conn) {
			defer c.Close()
			<-stop // never reads
		})
		t.Cleanup(func() { close(stop) }) // before the server's own cleanup waits for it
		for range 8 {
			c, err := net.Dial("tcp", a.Public(0))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
		outlastsStall(t, r, a, "agent", a.Log)
	})
}

// TestPausedClientIsKept: one client that stops reading for longer than
// the guard's grace, on a session that keeps moving, is a paused download,
// not a threat: it keeps its connection and gets every byte once it reads.
func TestPausedClientIsKept(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const size = 8 << 20 // more than the socket buffers and the stream's window
		r := startRelay(t, nil)
		srv := startServer(t, func(c net.Conn) {
			defer c.Close()
			c.Write(make([]byte, size))
			c.(*net.TCPConn).CloseWrite()
		})
		a := mustRunAgent(t, r.agentConfig(kind, srv))
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(stallGrace + 3*stallInterval)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, c)
		if err != nil || n != size {
			t.Fatalf("a client paused for %v then read %d bytes, %v; want all %d", stallGrace+3*stallInterval, n, err, size)
		}
		if strings.Contains(r.Log.String(), "reset connections") {
			t.Fatalf("the relay reset a paused client on a moving session:\n%s", r.Log.String())
		}
	})
}

// TestPongWait: the guard waits for its PONG the answer timeout, or four
// of the path's fastest round trips on a slow path, and never a third of
// the liveness timeout or more. Before, it waited four of the latest round
// trip, which a stall itself lengthens: one PONG held up 3 s made the next
// round wait 12 s, and the liveness timeout dropped the session the guard
// was there to keep.
func TestPongWait(t *testing.T) {
	const answer, liveness = 2 * time.Second, 15 * time.Second
	for _, tt := range []struct {
		name    string
		samples []time.Duration
		want    time.Duration
	}{
		{"no round trip yet", nil, answer},
		{"a fast path", []time.Duration{time.Millisecond, 3 * time.Millisecond}, answer},
		{"a slow path", []time.Duration{900 * time.Millisecond, 800 * time.Millisecond, time.Second}, 3200 * time.Millisecond},
		{"a PONG held up by a stall", []time.Duration{time.Millisecond, 3 * time.Second}, answer},
		{"a path slower than liveness allows", []time.Duration{3 * time.Second}, liveness / 3},
		{"nonsense samples", []time.Duration{0, -time.Second}, answer},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var f fastestRTT
			for _, d := range tt.samples {
				f.observe(d)
			}
			if got := pongWait(answer, f.get(), liveness); got != tt.want {
				t.Errorf("after round trips %v: waits %v for a PONG, want %v", tt.samples, got, tt.want)
			}
			f.reset()
			if got := pongWait(answer, f.get(), liveness); got != answer {
				t.Errorf("after a reset: waits %v, want %v", got, answer)
			}
		})
	}
}

// TestPongSinceWaitsOnAMovingSession: a PONG later than the wait still
// counts while the peer's streams keep bringing data (a congested path,
// where the PING waits in a queue behind that data), up to most; on a
// session that brings nothing, or only a trickle, the wait is the wait.
func TestPongSinceWaitsOnAMovingSession(t *testing.T) {
	t.Parallel()
	run := func(rate float64, pongAfter, most time.Duration) bool {
		var last atomic.Int64
		pong := make(chan struct{}, 1)
		t0 := time.Now()
		sent := t0.UnixNano()
		received := func() int64 { return int64(time.Since(t0).Seconds() * rate) }
		timer := time.AfterFunc(pongAfter, func() {
			last.Store(time.Now().UnixNano())
			pong <- struct{}{}
		})
		defer timer.Stop()
		return pongSince(&last, pong, sent, 200*time.Millisecond, most, received, nil)
	}
	if !run(1<<20, time.Second, 20*time.Second) {
		t.Error("a PONG 1 s late on a session bringing 1 MiB/s was taken for a stuck session")
	}
	if run(0, 5*time.Second, 20*time.Second) {
		t.Error("a session bringing nothing was given more than its wait")
	}
	if run(movingRate/4, 5*time.Second, 20*time.Second) {
		t.Error("a session bringing a trickle (what stuck readers free) was given more than its wait")
	}
	if run(1<<20, 10*time.Second, 500*time.Millisecond) {
		t.Error("a moving session's wait went past most")
	}
}

// windowed is a session with fixed windows, as TLS+smux's are.
type windowed struct {
	transport.Session
	stream, session int
}

func (w windowed) Windows() (int, int) { return w.stream, w.session }

// TestWindowFills: on a session with fixed windows, fewer stalled
// connections than the session window's worth of stream windows cannot
// fill it; where windows are tuned (QUIC), any number may.
func TestWindowFills(t *testing.T) {
	fills := windowFills(windowed{stream: 4 << 20, session: 64 << 20})
	if fills(15) || !fills(16) || !fills(40) {
		t.Errorf("4 MiB streams, 64 MiB session: fills(15, 16, 40) = %v, %v, %v; want false, true, true", fills(15), fills(16), fills(40))
	}
	if any := windowFills(&stubSession{kind: "quic"}); !any(1) {
		t.Error("a session without fixed windows: one stalled connection was taken as unable to fill it")
	}
}

// TestStallGuardLeavesFewStalledAlone: a late PONG with one connection
// stalled, on a session whose window one connection cannot fill, is a
// congested path's (the PING queued behind the session's data), not a
// stuck session's: the guard leaves the connection be. Before, it reset
// a client reading slowly beside a download filling the agent's uplink.
func TestStallGuardLeavesFewStalledAlone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fills bool
	}{{"cannot fill", false}, {"can fill", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newStallGuard(func() bool { return false }, func(int) bool { return tc.fills }, func() *slog.Logger { return slog.New(slog.DiscardHandler) })
			c, peer := net.Pipe() // nothing reads peer: writes to c block
			defer peer.Close()
			reset := make(chan struct{})
			w := g.add(c, func() { close(reset); c.Close() })
			go w.Write([]byte("stuck"))
			done := make(chan struct{})
			defer close(done)
			go g.watch(done)
			select {
			case <-reset:
				if !tc.fills {
					t.Fatal("the guard reset a stalled connection that could not fill the session's window")
				}
			case <-time.After(stallGrace + 3*stallInterval):
				if tc.fills {
					t.Fatal("the guard left a stalled connection that could fill the window, with its PONG late")
				}
			}
		})
	}
}

// TestAgentTooQuietIsTold: an agent that pings less often than the relay's
// liveness is dropped as silent, and hears why, so its user can mend its
// keepalive instead of watching it reconnect over and over.
func TestAgentTooQuietIsTold(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = time.Second })
		cfg := r.agentConfig(kind, startServer(t, echo))
		cfg.TransportOptions.KeepAlive, cfg.TransportOptions.IdleTimeout = 3*time.Second, 10*time.Second
		a := mustRunAgent(t, cfg)
		waitFor(t, "the relay to drop the agent as silent", 10*time.Second, func() bool {
			return strings.Contains(r.Log.String(), "agent disconnected: silent too long")
		})
		want := "the relay heard nothing from this agent for 1s (relayd's idle_timeout) and closes the session: if this repeats, the agent's keepalive must be well under 1s"
		waitFor(t, "the agent to say why", 10*time.Second, func() bool {
			return strings.Contains(a.Log.String(), want)
		})
	})
}
