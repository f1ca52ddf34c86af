package tunnel

import (
	"bufio"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/transport"
)

// sendN answers every connection with n bytes, then closes it.
func sendN(n int) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		c.Write(make([]byte, n))
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// countIn reads a connection to its end and answers how many bytes came.
func countIn(c net.Conn) {
	defer c.Close()
	n, _ := io.Copy(io.Discard, c)
	io.WriteString(c, strconv.FormatInt(n, 10)+"\n")
}

// limitedRelay runs a relay whose token has max_bandwidth rate (bytes a
// second), and an agent with two tunnels: downloads of size bytes, and an
// upload counter. Liveness is short, and windows small: an agent that sent
// faster than the relay passes its data on would fill its session's
// window, and its PINGs would wait behind a window's worth of data, which
// at a slow rate takes longer than the liveness.
func limitedRelay(t *testing.T, kind string, rate uint64, size int) (*testRelay, *testAgent) {
	r := startRelayWith(t, func(c *RelayConfig) {
		c.Tokens[0].MaxBandwidth = rate
		fastLivenessRelay(c)
	}, tinyWindows)
	cfg := r.agentConfig(kind, startServer(t, sendN(size)), startServer(t, countIn))
	tinyWindows(&cfg.TransportOptions)
	fastLivenessAgent(&cfg)
	return r, mustRunAgent(t, cfg)
}

// tinyWindows lets a session hold no more unread than one stream.
func tinyWindows(o *transport.Options) {
	o.StreamWindow = 64 << 10
	o.SessionWindow = 64 << 10
}

// TestMaxBandwidth: a token's max_bandwidth holds each way, over all its
// clients together, and the agent keeps to its LIMIT so that the relay
// holds nothing back. Without that, over TLS+smux, eight downloads send
// a stream window each (512 KiB), the session's window takes 64 KiB of it,
// and its PINGs wait behind the rest, 3.5 s at 128 KiB/s: the session is
// dropped as silent.
func TestMaxBandwidth(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const rate, size, clients = 128 << 10, 64 << 10, 8
		r, a := limitedRelay(t, kind, rate, size)
		waitFor(t, "the agent to hear its LIMIT", 5*time.Second, func() bool {
			return strings.Contains(a.Log.String(), `limit="1.0 Mbit/s"`)
		})

		start := time.Now()
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				c, err := net.Dial("tcp", a.Public(0))
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if n, err := io.Copy(io.Discard, c); n != size || err != nil {
					t.Errorf("download: %d bytes, %v; want %d", n, err, size)
				}
			})
		}
		wg.Wait()
		// The bucket starts full (paceBurst), and the rest comes at the
		// rate: a lower bound that a slow machine only adds to.
		total := clients * size
		if d, least := time.Since(start), minPaced(total, rate); d < least {
			t.Errorf("%d bytes down in %v at max_bandwidth %d B/s; the limit allows no less than %v", total, d, rate, least)
		}

		const up = 384 << 10
		start = time.Now()
		c, err := net.Dial("tcp", a.Public(1))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(make([]byte, up)); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != strconv.Itoa(up)+"\n" {
			t.Fatalf("upload: the server counted %q, %v; want %d", line, err, up)
		}
		if d, least := time.Since(start), minPaced(up, rate); d < least {
			t.Errorf("%d bytes up in %v at max_bandwidth %d B/s; the limit allows no less than %v", up, d, rate, least)
		}

		if s := r.Log.String(); strings.Contains(s, "agent disconnected") || strings.Count(s, "agent connected") != 1 {
			t.Fatalf("the agent's session did not last:\n%s", s)
		}
	})
}

// minPaced is the least time n bytes take at rate bytes a second, with a
// full bucket to start.
func minPaced(n int, rate uint64) time.Duration {
	return time.Duration(float64(n-paceBurst(rate)) / float64(rate) * float64(time.Second))
}

// TestMaxBandwidthShared: the token's limit is split among its sessions,
// and a reload that changes or lifts it reaches them.
func TestMaxBandwidthShared(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const rate = 1 << 20 // 8.4 Mbit/s
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = rate })
		first := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		heard := func(a *testAgent, what string) {
			t.Helper()
			waitFor(t, what, 5*time.Second, func() bool { return strings.Contains(a.Log.String(), what) })
		}
		heard(first, `limit="8.4 Mbit/s"`)
		if st := first.agent.Status(); st.Limit != rate {
			t.Errorf("status: limit %d B/s, want %d", st.Limit, rate)
		}
		second := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		heard(second, `limit="4.2 Mbit/s"`)
		heard(first, `limit="4.2 Mbit/s"`)
		second.Stop()
		waitFor(t, "the first agent's share back whole", 10*time.Second, func() bool {
			return strings.Count(first.Log.String(), `limit="8.4 Mbit/s"`) == 2
		})

		cfg := *r.Relay.config()
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret, MaxBandwidth: rate / 2}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		heard(first, `limit="4.2 Mbit/s"`)
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		heard(first, "the relay lifted its bandwidth limit on this agent")
		if first.agent.pace.on.Load() {
			t.Error("the agent still paces after the limit was lifted")
		}
	})
}

// TestMaxBandwidthRefusesAgentThatCannotPace: an agent without REGISTER's
// paces bit (one older than LIMIT) is refused a tunnel of a token with a
// limit, saying why, rather than let it stall its own session.
func TestMaxBandwidthRefusesAgentThatCannotPace(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = 1 << 20 })
		ctl := authenticate(t, dialRaw(t, r, kind))
		ctl.SetDeadline(time.Now().Add(5 * time.Second))
		if err := WriteMessage(ctl, &Register{Request: 1, Name: "old", Protos: ProtoTCP}); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMessage(ctl)
		if err != nil {
			t.Fatal(err)
		}
		want := &Error{Request: 1, Code: CodeForbidden, Text: `token "test" has a bandwidth limit (max_bandwidth) that this agent is too old to keep to: upgrade relayctl`}
		if e, ok := m.(*Error); !ok || *e != *want {
			t.Fatalf("got %#v, want %#v", m, want)
		}
		// The same agent with the bit is served, and hears its LIMIT.
		if err := WriteMessage(ctl, &Register{Request: 2, Name: "new", Protos: ProtoTCP, Paces: true}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []byte{typeRegistered, typeLimit} {
			m, err := ReadMessage(ctl)
			if err != nil {
				t.Fatal(err)
			}
			if m.msgType() != want {
				t.Fatalf("got %#v, want a message of type %#x", m, want)
			}
			if l, ok := m.(*Limit); ok && l.Rate != 1<<20 {
				t.Fatalf("LIMIT %d, want %d", l.Rate, 1<<20)
			}
		}
	})
}

// TestPacesOnAnOlderRelay: a relay from before LIMIT refuses the paces
// bit as a protocol set it does not carry; the agent registers again
// without it, and runs unpaced.
func TestPacesOnAnOlderRelay(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		cfg, regs := olderRelay(t, kind)
		cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: "second", Local: "127.0.0.1:2"})
		a, err := runAgent(t, cfg)
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		if len(a.Endpoints) != 2 {
			t.Fatalf("endpoints %+v, want two", a.Endpoints)
		}
		// Once refused, the session asks no more.
		if got := registerBits(regs, 3); got != "paces plain plain" {
			t.Errorf("REGISTERs asked %s; want paces, then plain twice", got)
		}
	})
}

// TestPacedWriter: writes keep to the pace in pieces of its burst, a
// lifted pace lets them through at once, and the connection's end stops a
// waiting write.
func TestPacedWriter(t *testing.T) {
	p := newPace()
	var got strings.Builder
	var sizes []int
	w := paced(nil, writerFunc(func(b []byte) (int, error) {
		sizes = append(sizes, len(b))
		return got.Write(b)
	}), p, nil)
	if n, err := w.Write([]byte("unpaced")); n != 7 || err != nil || len(sizes) != 1 {
		t.Fatalf("unpaced write: %d, %v in %d pieces", n, err, len(sizes))
	}
	p.set(64 << 10)
	burst := paceBurst(64 << 10)
	sizes = nil
	data := strings.Repeat("x", 2*burst+5)
	if n, err := w.Write([]byte(data)); n != len(data) || err != nil {
		t.Fatalf("paced write: %d, %v", n, err)
	}
	if want := []int{burst, burst, 5}; len(sizes) != 3 || sizes[0] != want[0] || sizes[1] != want[1] || sizes[2] != want[2] {
		t.Errorf("pieces %v, want %v", sizes, want)
	}
	if got.String() != "unpaced"+data {
		t.Error("the bytes written differ from those given")
	}

	end := make(chan struct{})
	stuck := paced(end, io.Discard, p, nil)
	p.set(64 << 10)
	stuck.Write(make([]byte, burst)) // empties the bucket
	done := make(chan error, 1)
	go func() { _, err := stuck.Write(make([]byte, burst)); done <- err }()
	close(end)
	select {
	case err := <-done:
		if err != errPaceEnded {
			t.Errorf("a write whose connection ended: %v, want %v", err, errPaceEnded)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write waiting for its pace did not end with its connection")
	}

	d := newPace()
	d.set(64 << 10)
	if !d.allow(burst) || d.allow(burst) {
		t.Error("datagrams: a full bucket should take one burst, and then refuse the next")
	}
	p.set(0)
	if !p.allow(1 << 30) {
		t.Error("a lifted pace refused a datagram")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// The paced writer keeps a stream's WriteBuffer, so pacing does not cost
// the copy loop its send from the caller's buffer.
var _ transport.BufferWriter = (*pacedBufferWriter)(nil)

// TestShares: light sessions get an even share, busy ones split what the
// light ones leave, never less than even.
func TestShares(t *testing.T) {
	for _, tc := range []struct {
		name             string
		rate             uint64
		used, held, want []uint64
	}{
		{"no limit", 0, []uint64{5, 0}, []uint64{0, 0}, []uint64{0, 0}},
		{"alone", 900, []uint64{0}, []uint64{0}, []uint64{900}},
		{"new sessions", 900, []uint64{0, 0, 0}, []uint64{0, 0, 0}, []uint64{300, 300, 300}},
		{"one busy", 900, []uint64{300, 0, 0}, []uint64{300, 300, 300}, []uint64{900, 300, 300}},
		{"one busy, one light using some", 900, []uint64{300, 100, 0}, []uint64{300, 300, 300}, []uint64{800, 300, 300}},
		{"all busy", 900, []uint64{300, 300, 300}, []uint64{300, 300, 300}, []uint64{300, 300, 300}},
		{"busy one below half", 900, []uint64{400, 800}, []uint64{900, 900}, []uint64{450, 500}},
		{"one light, one busy", 900, []uint64{100, 600}, []uint64{300, 900}, []uint64{450, 800}},
		{"a light one over even counts as even", 900, []uint64{500, 450}, []uint64{1200, 450}, []uint64{450, 450}},
		{"more sessions than bytes a second", 2, []uint64{1, 1, 1, 5}, []uint64{4, 4, 4, 5}, []uint64{1, 1, 1, 1}},
	} {
		if got := shares(tc.rate, tc.used, tc.held); !slices.Equal(got, tc.want) {
			t.Errorf("%s: shares(%d, used %v, held %v) = %v, want %v", tc.name, tc.rate, tc.used, tc.held, got, tc.want)
		}
	}
}

// TestMaxBandwidthFollowsUse: of two agents of a token, the one carrying a
// download while the other idles gets the whole limit within a few ticks.
func TestMaxBandwidthFollowsUse(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const rate = 1 << 20 // 8.4 Mbit/s
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = rate })
		endless := func(c net.Conn) {
			defer c.Close()
			b := make([]byte, 32<<10)
			for {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}
		busy := mustRunAgent(t, r.agentConfig(kind, startServer(t, endless)))
		mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		waitFor(t, "the busy agent's even share", 5*time.Second, func() bool {
			return strings.Contains(busy.Log.String(), `limit="4.2 Mbit/s"`)
		})
		c, err := net.Dial("tcp", busy.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go io.Copy(io.Discard, c)
		waitFor(t, "the busy agent's share to grow to the whole limit", 15*time.Second, func() bool {
			return strings.Count(busy.Log.String(), `limit="8.4 Mbit/s"`) == 2
		})
	})
}

// TestMaxBandwidthUDP: datagrams over a token's max_bandwidth are dropped
// and counted, each way: of a burst of 200, no more get through than the
// bucket and the rate allow over the time it took.
func TestMaxBandwidthUDP(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const rate, size, burst = 64 << 10, 1200, 200
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = rate })
		srv := startUDPEcho(t)
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, srv.Addr))
		waitFor(t, "the agent to hear its LIMIT", 5*time.Second, func() bool {
			return strings.Contains(a.Log.String(), `limit="524 kbit/s"`)
		})
		c := dialUDP(t, endpointFor(t, a, "udp"))
		exchange(t, c, []byte("flow")) // the flow is up before the burst
		start := time.Now()
		p := make([]byte, size)
		for range burst {
			c.Write(p)
		}
		back := 0
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			if _, err := c.Read(p); err != nil {
				break
			}
			back++
		}
		allowed := (paceBurst(rate) + int(time.Since(start).Seconds()*rate)) / size
		if back == 0 || back > allowed {
			t.Errorf("%d of %d datagrams of %d bytes came back; max_bandwidth %d B/s allows 1 to %d", back, burst, size, rate, allowed)
		}
		if drops := r.Relay.Tunnels()[0].UDPDrops; drops == 0 {
			t.Error("the relay counted no UDP drops")
		}
	})
}

// TestPaceChangeReachesWaits: a write already waiting for its pace takes
// up a new rate at once, raised or lifted, rather than wait out what the
// old rate gave it (at 1 B/s, a burst takes four and a half hours).
func TestPaceChangeReachesWaits(t *testing.T) {
	for _, change := range []struct {
		name string
		rate uint64
	}{{"raised", 1 << 30}, {"lifted", 0}} {
		t.Run(change.name, func(t *testing.T) {
			p := newPace()
			p.set(1)
			burst := paceBurst(1)
			p.lim.Load().ReserveN(time.Now(), burst) // the bucket is empty
			w := paced(nil, io.Discard, p, nil)
			done := make(chan error, 1)
			go func() { _, err := w.Write(make([]byte, 2*burst)); done <- err }()
			time.Sleep(50 * time.Millisecond) // the write waits
			p.set(change.rate)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("the waiting write: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("a write waiting at 1 B/s did not take up the pace %s meanwhile", change.name)
			}
		})
	}
}

// TestMaxBandwidthRaisedReachesWaits: a reload that raises a token's
// limit speeds up a download held back by the old one at once, on the
// agent (its LIMIT) and on the relay, rather than after the waits the
// old rate gave it.
func TestMaxBandwidthRaisedReachesWaits(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		const rate, size = 16, 256 << 10 // a 4 KiB read takes four minutes
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = rate })
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, sendN(size))))
		waitFor(t, "the agent to hear its LIMIT", 5*time.Second, func() bool { return a.agent.Status().Limit == rate })
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make(chan int64, 1)
		go func() { n, _ := io.Copy(io.Discard, c); got <- n }()
		time.Sleep(time.Second) // the download waits for its pace

		cfg := *r.Relay.config()
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret, MaxBandwidth: 1 << 30}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if n := <-got; n != size {
			t.Fatalf("download: %d of %d bytes within 30 s of the limit raised to 8.6 Gbit/s", n, size)
		}
	})
}

// TestMaxBandwidthReloadClosesAgentThatCannotPace: a reload that gives a
// token a limit closes, by CLOSED, the tunnels of its agents too old to
// keep to LIMIT, as a REGISTER of theirs would be refused: their data over
// the limit would wait in their sessions' windows, their PINGs behind it,
// until the relay dropped them as silent. An agent that paces keeps its
// tunnel, and hears its LIMIT.
func TestMaxBandwidthReloadClosesAgentThatCannotPace(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		ctl := authenticate(t, dialRaw(t, r, kind))
		ctl.SetDeadline(time.Now().Add(10 * time.Second))
		if err := WriteMessage(ctl, &Register{Request: 1, Name: "old", Protos: ProtoTCP}); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMessage(ctl)
		if err != nil {
			t.Fatal(err)
		}
		reg, ok := m.(*Registered)
		if !ok {
			t.Fatalf("got %#v, want REGISTERED", m)
		}
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))

		cfg := *r.Relay.config()
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret, MaxBandwidth: 1 << 20}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		want := &Closed{Tunnel: reg.Tunnel, Code: CodeForbidden, Text: `token "test" has a bandwidth limit (max_bandwidth) that this agent is too old to keep to: upgrade relayctl`}
		if m, err := ReadMessage(ctl); err != nil {
			t.Fatalf("after the reload that set a limit: %v; want %#v", err, want)
		} else if c, ok := m.(*Closed); !ok || *c != *want {
			t.Fatalf("after the reload that set a limit: %#v, want %#v", m, want)
		}
		if s := r.Log.String(); !strings.Contains(s, `msg="closing the agent's tunnel after reload" agent=`) || !strings.Contains(s, `name=old reason="token \"test\" has a bandwidth limit`) {
			t.Errorf("the relay did not log which tunnel it closed, and why:\n%s", s)
		}
		waitFor(t, "the agent that paces to hear its LIMIT", 5*time.Second, func() bool { return a.agent.Status().Limit == 1<<20 })
		if s := a.Log.String(); strings.Contains(s, "closed") {
			t.Errorf("the agent that paces lost its tunnel:\n%s", s)
		}
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		exchange(t, c, []byte("still open"))
	})
}

// TestPaceLoweredSplitsWaitingWrite: a write waiting for its pace when
// the rate is lowered goes on in pieces of the new burst, the first as
// soon as the new rate allows it, rather than wait for the whole piece
// the old burst allowed (at 1 Mbit/s after 20M, eight downloads' pieces
// of 250 KB each took 16 s before a byte went).
func TestPaceLoweredSplitsWaitingWrite(t *testing.T) {
	const high, low = 2_000_000, 160_000
	p := newPace()
	p.set(high)
	p.lim.Load().ReserveN(time.Now(), paceBurst(high)) // the bucket is empty
	end := make(chan struct{})
	defer close(end)
	first := make(chan int, 1)
	w := paced(end, writerFunc(func(b []byte) (int, error) {
		select {
		case first <- len(b):
		default:
		}
		return len(b), nil
	}), p, nil)
	go w.Write(make([]byte, paceBurst(high)))
	time.Sleep(50 * time.Millisecond) // the write waits for the old rate
	p.set(low)
	if n := <-first; n > paceBurst(low) {
		t.Errorf("after the rate was lowered, the waiting write sent a piece of %d bytes; the new burst is %d", n, paceBurst(low))
	}
}

// TestPaceAllowsDatagramOverBurst: a datagram larger than the burst (64
// KiB at 1 Mbit/s, whose burst is 16 KiB) passes when the bucket is full,
// as one burst, and not again until it has refilled.
func TestPaceAllowsDatagramOverBurst(t *testing.T) {
	p := newPace()
	p.set(125_000)
	if burst := paceBurst(125_000); burst >= 64<<10 {
		t.Fatalf("burst %d: the case needs a datagram over it", burst)
	}
	if !p.allow(64 << 10) {
		t.Fatal("a 64 KiB datagram was dropped by a full bucket")
	}
	if p.allow(64 << 10) {
		t.Error("a second 64 KiB datagram passed an empty bucket")
	}
}

// paced is wrap in a writer of its own, for the tests of one.
func paced(end <-chan struct{}, w io.Writer, p *pace, sent *atomic.Int64) io.Writer {
	return new(pacedBufferWriter).wrap(end, w, p, sent)
}
