package tunnel

// Measurements of the relay over an emulated real network (internal/impair
// between the agent and the relay): time to first byte, one stream's
// throughput, liveness under loss, a blackholed path, UDP under a small
// path MTU, the latency of small requests and game datagrams beside a bulk
// transfer on a slow uplink. They take minutes and print numbers rather than assert, so
// they run only when asked:
//
//	RELAY_NETSIM=1 go test ./tunnel -run NetSim -v -timeout 30m

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/impair"
	"github.com/relaytun/relay/transport"
)

func netsim(t *testing.T) {
	if os.Getenv("RELAY_NETSIM") == "" {
		t.Skip("a measurement: RELAY_NETSIM=1 runs it")
	}
}

// simProxy is an impair proxy for kind's transport.
type simProxy interface {
	Addr() string
	Set(up, down impair.Config)
	Blackhole(on bool)
	Stats() (up, down impair.Stats)
	Close() error
}

func newSimProxy(t testing.TB, kind, target string, c impair.Config) simProxy {
	t.Helper()
	var p simProxy
	var err error
	if kind == TransportTCP {
		p, err = impair.NewTCP(target, c, c)
	} else {
		p, err = impair.NewUDP(target, c, c)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestNetSimTTFB: a new client's time to first byte, server speaks first
// and client speaks first, at 50 ms RTT; also with a group of two.
func TestNetSimTTFB(t *testing.T) {
	netsim(t)
	greet := startServer(t, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("hello\n"))
		io.Copy(io.Discard, c)
	})
	ech := startServer(t, echo)
	for _, kind := range kinds {
		for _, members := range []int{1, 2} {
			r := startRelay(t, nil)
			p := newSimProxy(t, kind, r.Addr, impair.Config{Delay: 25 * time.Millisecond})
			var ta *testAgent
			for range members {
				cfg := r.agentConfig(kind, greet, ech)
				cfg.Relay = p.Addr()
				ta = mustRunAgent(t, cfg)
			}
			time.Sleep(500 * time.Millisecond)
			var g, e []time.Duration
			b := make([]byte, 1)
			for range 15 {
				start := time.Now()
				c, err := net.Dial("tcp", ta.Public(0))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, b); err != nil {
					t.Fatal(err)
				}
				g = append(g, time.Since(start))
				c.Close()
				start = time.Now()
				c, err = net.Dial("tcp", ta.Public(1))
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte("x"))
				if _, err := io.ReadFull(c, b); err != nil {
					t.Fatal(err)
				}
				e = append(e, time.Since(start))
				c.Close()
			}
			t.Logf("%s, %d member(s), 50 ms RTT: server-first TTFB median %v (min %v), client-first median %v (min %v)",
				kind, members, median(g).Round(100*time.Microsecond), slices.Min(g).Round(100*time.Microsecond),
				median(e).Round(100*time.Microsecond), slices.Min(e).Round(100*time.Microsecond))
		}
	}
}

// TestNetSimBulk: one stream's throughput, download and upload, at 50 and
// 150 ms RTT with no bandwidth cap.
func TestNetSimBulk(t *testing.T) {
	netsim(t)
	const dur = 6 * time.Second
	chunk := make([]byte, 64<<10)
	src := startServer(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(dur + 5*time.Second))
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	sink := startServer(t, func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	rtts := []time.Duration{50 * time.Millisecond, 150 * time.Millisecond}
	if v := os.Getenv("RELAY_NETSIM_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		rtts = []time.Duration{d}
	}
	only := os.Getenv("RELAY_NETSIM_KIND")
	for _, rtt := range rtts {
		for _, kind := range kinds {
			if only != "" && kind != only {
				continue
			}
			var win int
			fmt.Sscan(os.Getenv("RELAY_NETSIM_WINDOW"), &win)
			setWin := func(o *transport.Options) {
				if win > 0 {
					o.StreamWindow, o.SessionWindow = win, max(o.SessionWindow, 2*win)
				}
			}
			r := startRelayWith(t, nil, setWin)
			p := newSimProxy(t, kind, r.Addr, impair.Config{Delay: rtt / 2})
			cfg := r.agentConfig(kind, src, sink)
			cfg.Relay = p.Addr()
			setWin(&cfg.TransportOptions)
			ta := mustRunAgent(t, cfg)
			// Download: the local server sends.
			c, err := net.Dial("tcp", ta.Public(0))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			c.SetReadDeadline(start.Add(dur))
			n, _ := io.Copy(io.Discard, c)
			down := float64(n) * 8 / time.Since(start).Seconds() / 1e6
			c.Close()
			// Upload: the client sends.
			c, err = net.Dial("tcp", ta.Public(1))
			if err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			var sent int64
			for time.Since(start) < dur {
				m, err := c.Write(chunk)
				sent += int64(m)
				if err != nil {
					break
				}
			}
			c.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(c)
			up := float64(sent) * 8 / time.Since(start).Seconds() / 1e6
			c.Close()
			pu, pd := p.Stats()
			t.Logf("%s, RTT %v: one stream down %.0f Mbit/s, up %.0f Mbit/s (server counted %s bytes of %d); proxy up %+v down %+v",
				kind, rtt, down, up, got, sent, pu, pd)
			ta.Stop()
			r.Stop()
		}
	}
}

// TestNetSimLiveness: sessions on a 300 ms RTT path losing 3% of UDP
// packets, with a request every half second and one bulk download, for
// RELAY_NETSIM_MINUTES (2); counts reconnects and failed requests.
func TestNetSimLiveness(t *testing.T) {
	netsim(t)
	minutes := 2.0
	fmt.Sscan(os.Getenv("RELAY_NETSIM_MINUTES"), &minutes)
	dur := time.Duration(minutes * float64(time.Minute))
	ech := startServer(t, echo)
	chunk := make([]byte, 32<<10)
	src := startServer(t, func(c net.Conn) {
		defer c.Close()
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	var wg sync.WaitGroup
	for _, kind := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := startRelay(t, nil)
			c := impair.Config{Delay: 150 * time.Millisecond, Rate: 2 << 20, Queue: 512 << 10}
			if kind == TransportQUIC {
				c.Loss = 0.03
			}
			p := newSimProxy(t, kind, r.Addr, c)
			cfg := r.agentConfig(kind, ech, src)
			cfg.Relay = p.Addr()
			cfg.TransportOptions = DefaultAgentConfig().TransportOptions
			ta := mustRunAgent(t, cfg)
			var bulk atomic.Int64
			stop := make(chan struct{})
			go func() {
				buf := make([]byte, 64<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.Dial("tcp", ta.Public(1))
					if err != nil {
						time.Sleep(time.Second)
						continue
					}
					go func() { <-stop; c.Close() }()
					for {
						n, err := c.Read(buf)
						bulk.Add(int64(n))
						if err != nil {
							break
						}
					}
					c.Close()
				}
			}()
			var ok, failed int
			var slowest time.Duration
			end := time.Now().Add(dur)
			for time.Now().Before(end) {
				start := time.Now()
				err := func() error {
					c, err := net.Dial("tcp", ta.Public(0))
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(20 * time.Second))
					c.Write([]byte("ping"))
					_, err = io.ReadFull(c, make([]byte, 4))
					return err
				}()
				if err != nil {
					failed++
				} else {
					ok++
					slowest = max(slowest, time.Since(start))
				}
				time.Sleep(500 * time.Millisecond)
			}
			close(stop)
			st := ta.agent.Status()
			up, down := p.Stats()
			t.Logf("%s, 300 ms RTT, 2 MB/s, loss %.0f%%, %v: reconnects %d, requests ok %d failed %d (slowest %v), bulk %.2f MB/s, rtt now %v; stalls reset: relay %d agent %d; proxy up %+v down %+v",
				kind, c.Loss*100, dur, st.Reconnects, ok, failed, slowest.Round(time.Millisecond),
				float64(bulk.Load())/dur.Seconds()/1e6, st.RTT.Round(time.Millisecond),
				strings.Count(r.Log.String(), "stopped reading"), strings.Count(ta.Log.String(), "stopped reading"), up, down)
			if st.Reconnects > 0 {
				t.Logf("%s agent log:\n%s", kind, ta.Log)
			}
		}()
	}
	wg.Wait()
}

// TestNetSimBlackhole: the path between agent and relay carries nothing
// for a while (RELAY_NETSIM_OUTAGES, "8s,40s"), with the default timeouts;
// logs when each side notices, what a connected client and a new one see,
// and when and on which port the agent is back.
func TestNetSimBlackhole(t *testing.T) {
	netsim(t)
	outages := []time.Duration{8 * time.Second, 40 * time.Second}
	if v := os.Getenv("RELAY_NETSIM_OUTAGES"); v != "" {
		outages = nil
		for _, f := range strings.Split(v, ",") {
			d, err := time.ParseDuration(f)
			if err != nil {
				t.Fatal(err)
			}
			outages = append(outages, d)
		}
	}
	ech := startServer(t, echo)
	var wg sync.WaitGroup
	for _, outage := range outages {
		for _, kind := range kinds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defaults := func(o *transport.Options) { *o = transport.DefaultOptions(); o.MaxIncomingStreams = MaxAgentStreams }
				r := startRelayWith(t, nil, defaults)
				p := newSimProxy(t, kind, r.Addr, impair.Config{Delay: 25 * time.Millisecond})
				cfg := r.agentConfig(kind, ech)
				cfg.Relay = p.Addr()
				cfg.TransportOptions = transport.DefaultOptions()
				ta := mustRunAgent(t, cfg)
				public := ta.Public(0)
				held, err := net.Dial("tcp", public)
				if err != nil {
					t.Error(err)
					return
				}
				held.Write([]byte("x"))
				io.ReadFull(held, make([]byte, 1))
				var lines []string
				var mu sync.Mutex
				note := func(f string, args ...any) {
					mu.Lock()
					lines = append(lines, fmt.Sprintf(f, args...))
					mu.Unlock()
				}
				t0 := time.Now()
				since := func() time.Duration { return time.Since(t0).Round(100 * time.Millisecond) }
				p.Blackhole(true)
				go func() {
					_, err := held.Read(make([]byte, 1))
					note("%v held client's read ends: %v", since(), err)
				}()
				go func() {
					time.Sleep(min(outage/2, 20*time.Second))
					start := time.Now()
					c, err := net.Dial("tcp", public)
					if err != nil {
						note("%v new client: dial: %v", since(), err)
						return
					}
					defer c.Close()
					c.Write([]byte("y"))
					c.SetReadDeadline(time.Now().Add(90 * time.Second))
					_, err = io.ReadFull(c, make([]byte, 1))
					note("%v new client (connected at %v): read after %v: %v", since(), time.Since(t0).Round(100*time.Millisecond)-time.Since(start).Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond), err)
				}()
				agentDown, relayDown := false, false
				for time.Since(t0) < outage {
					if !agentDown && !ta.agent.Status().Connected {
						agentDown = true
						note("%v agent notices", since())
					}
					if !relayDown && agentCount(r.Relay) == 0 {
						relayDown = true
						note("%v relay drops the session", since())
					}
					time.Sleep(50 * time.Millisecond)
				}
				p.Blackhole(false)
				note("%v path back", since())
				back := time.Now()
				for !ta.agent.Status().Connected && time.Since(back) < 2*time.Minute {
					time.Sleep(50 * time.Millisecond)
				}
				st := ta.agent.Status()
				note("%v agent connected %v, %v after the path came back; public %s (was %s); reconnects %d",
					since(), st.Connected, time.Since(back).Round(100*time.Millisecond), st.Tunnels[0].Public, "tcp://"+public, st.Reconnects)
				if c, err := net.Dial("tcp", public); err == nil {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					c.Write([]byte("z"))
					_, err := io.ReadFull(c, make([]byte, 1))
					note("%v a client on the old port after: %v", since(), err)
					c.Close()
				} else {
					note("%v a client on the old port after: %v", since(), err)
				}
				time.Sleep(time.Second)
				mu.Lock()
				t.Logf("%s, outage %v:\n  %s", kind, outage, strings.Join(lines, "\n  "))
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
}

// TestNetSimUDPMTU: game datagrams of 1100-1472 bytes over a UDP tunnel
// whose agent path drops packets over a size: from the start (1280 bytes
// of UDP payload), and from the middle of a session that had found a
// larger MTU. Counts what arrives intact.
func TestNetSimUDPMTU(t *testing.T) {
	netsim(t)
	sizes := []int{1100, 1200, 1220, 1232, 1252, 1280, 1300, 1400, 1472}
	e := startUDPEcho(t)
	send := func(c net.Conn, size, n int, gap time.Duration) int {
		got := 0
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				c.SetReadDeadline(time.Now().Add(time.Second + gap))
				m, err := c.Read(buf)
				if err != nil {
					return
				}
				if m == size && buf[0] == byte(size) && buf[m-1] == byte(size) {
					got++
				}
			}
		}()
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(size)
		}
		for range n {
			c.Write(p)
			time.Sleep(gap)
		}
		<-done
		return got
	}
	for _, max := range []int{1280, 1252, 1232} {
		for _, kind := range kinds {
			r := startRelay(t, nil)
			p := newSimProxy(t, kind, r.Addr, impair.Config{Delay: 25 * time.Millisecond, MaxPacket: max})
			cfg := r.udpAgentConfig(kind, ProtoUDP, e.Addr)
			cfg.Relay = p.Addr()
			a := startAgent(t, cfg)
			select {
			case a.eps = <-a.ready:
			case <-time.After(20 * time.Second):
				up, down := p.Stats()
				t.Logf("%s, path drops UDP payloads over %d: no session within 20 s; proxy up %+v down %+v", kind, max, up, down)
				continue
			}
			c := dialUDP(t, a.Public(0))
			var res []string
			for _, size := range sizes {
				res = append(res, fmt.Sprintf("%d:%d/50", size, send(c, size, 50, 5*time.Millisecond)))
			}
			up, down := p.Stats()
			t.Logf("%s, path drops UDP payloads over %d from the start: %s; proxy dropped for size %d up %d down",
				kind, max, strings.Join(res, " "), up.TooLarge, down.TooLarge)
		}
	}
	// The path MTU shrinks in the middle of a session.
	for _, kind := range kinds {
		r := startRelay(t, nil)
		p := newSimProxy(t, kind, r.Addr, impair.Config{Delay: 25 * time.Millisecond})
		cfg := r.udpAgentConfig(kind, ProtoUDP, e.Addr)
		cfg.Relay = p.Addr()
		a := liveAgentUp(t, cfg)
		c := dialUDP(t, a.Public(0))
		warm := send(c, 1400, 100, 20*time.Millisecond)
		p.Set(impair.Config{Delay: 25 * time.Millisecond, MaxPacket: 1280}, impair.Config{Delay: 25 * time.Millisecond, MaxPacket: 1280})
		var res []string
		for range 10 {
			res = append(res, fmt.Sprint(send(c, 1400, 20, 50*time.Millisecond)))
		}
		up, down := p.Stats()
		t.Logf("%s, 1400-byte datagrams: %d/100 before the MTU drops to 1280; then per second (of 20): %s; proxy dropped for size %d up %d down",
			kind, warm, strings.Join(res, " "), up.TooLarge, down.TooLarge)
	}
}

// TestNetSimSlowClientOnCongestedUplink: a client that reads slowly (its
// writes on the relay block for seconds at a time) while another client's
// download fills the agent's uplink, whose router queues two seconds of
// data. The control round trip grows with the queue; the stall guard must
// not take that for a stuck session and reset the slow client.
func TestNetSimSlowClientOnCongestedUplink(t *testing.T) {
	netsim(t)
	endless := startServer(t, func(c net.Conn) {
		defer c.Close()
		b := make([]byte, 32<<10)
		for {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	})
	for _, kind := range kinds {
		r := startRelay(t, nil)
		link := impair.Config{Delay: 50 * time.Millisecond, Rate: 1 << 20, Queue: 2 << 20}
		p := newSimProxy(t, kind, r.Addr, link)
		cfg := r.agentConfig(kind, endless)
		cfg.Relay = p.Addr()
		a := mustRunAgent(t, cfg)
		fast, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		var fastBytes atomic.Int64
		go func() {
			b := make([]byte, 64<<10)
			for {
				n, err := fast.Read(b)
				fastBytes.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		slow, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		slow.(*net.TCPConn).SetReadBuffer(4 << 10)
		var slowBytes int64
		var slowErr error
		start := time.Now()
		b := make([]byte, 1<<10)
		for time.Since(start) < 40*time.Second {
			slow.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := slow.Read(b)
			slowBytes += int64(n)
			if err != nil {
				slowErr = err
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		fast.Close()
		slow.Close()
		resets := strings.Count(r.Log.String(), "reset connections that stopped reading")
		for _, l := range strings.Split(r.Log.String(), "\n") {
			if strings.Contains(l, "reset") || strings.Contains(l, "WARN") {
				t.Log(l)
			}
		}
		t.Logf("%s: 100 ms RTT, 8 Mbit/s uplink with 2 s of queue: fast client %.1f MB in %v; slow client %d bytes, ended by %v; relay guard resets logged: %d",
			kind, float64(fastBytes.Load())/1e6, time.Since(start).Round(time.Second), slowBytes, slowErr, resets)
	}
}

// TestNetSimLatencyUnderLoad: what bulk transfer through an agent does to
// the latency of the agent's other traffic on a home link: a 20 Mbit/s
// uplink and a 100 Mbit/s downlink, 40 ms round trip, a router that
// queues 75 ms each way. Measured at once (probeLatency): a 64-byte echo
// every 50 ms on a held TCP connection, a new connection's first echo
// every 250 ms, and a 100-byte game datagram every 20 ms echoed by a UDP
// server; when idle, during a download (a public client reading from a
// server behind the agent as fast as it can: the uplink is full) and
// during an upload (a client sending as fast as it can: the downlink is).
//
// Over TLS+smux the proxy's sockets read with a small receive buffer
// (impair.Config.RecvBuffer), so that bytes the router has no room for
// wait unsent in the sender's socket, as they do on a real link; the log
// shows how many did.
func TestNetSimLatencyUnderLoad(t *testing.T) {
	netsim(t)
	const (
		upRate   = 20e6 / 8 // bytes per second
		downRate = 100e6 / 8
		rtt      = 40 * time.Millisecond
		queue    = 75 * time.Millisecond
	)
	measure := 10 * time.Second
	if v := os.Getenv("RELAY_NETSIM_MEASURE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		measure = d
	}
	ech := startServer(t, echo)
	chunk := make([]byte, 32<<10)
	src := startServer(t, func(c net.Conn) {
		defer c.Close()
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	sink := startServer(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c)
	})
	u := startUDPEcho(t)
	only := os.Getenv("RELAY_NETSIM_KIND")
	for _, kind := range kinds {
		if only != "" && kind != only {
			continue
		}
		r := startRelay(t, nil)
		link := func(rate float64) impair.Config {
			return impair.Config{Delay: rtt / 2, Rate: int64(rate), Queue: int(rate * queue.Seconds()), RecvBuffer: 16 << 10}
		}
		var p simProxy
		var err error
		if kind == TransportTCP {
			p, err = impair.NewTCP(r.Addr, link(upRate), link(downRate))
		} else {
			p, err = impair.NewUDP(r.Addr, link(upRate), link(downRate))
		}
		if err != nil {
			t.Fatal(err)
		}
		cfg := r.agentConfig(kind, ech, src, sink)
		cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: "game", Local: u.Addr, Protos: ProtoUDP})
		cfg.Relay = p.Addr()
		cfg.TransportOptions = DefaultAgentConfig().TransportOptions
		ta := mustRunAgent(t, cfg)
		echoAddr, gameAddr := ta.Public(0), endpointFor(t, ta, "udp")
		time.Sleep(time.Second)

		type result struct {
			name   string
			s      latencySamples
			mbits  float64
			queues string
		}
		results := []result{{name: "idle", s: probeLatency(t, echoAddr, gameAddr, measure/2)}}
		for _, upload := range []bool{false, true} {
			res := result{name: "download"}
			target := ta.Public(1)
			if upload {
				res.name, target = "upload", ta.Public(2)
			}
			c, err := net.Dial("tcp", target)
			if err != nil {
				t.Fatal(err)
			}
			var moved atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				b := make([]byte, 64<<10)
				for {
					var n int
					var err error
					if upload {
						n, err = c.Write(b)
					} else {
						n, err = c.Read(b)
					}
					moved.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
			time.Sleep(3 * time.Second) // past slow start, the queues full
			from, start := moved.Load(), time.Now()
			stop := make(chan struct{})
			sampled := make(chan []sockQueues)
			go func() {
				// The connection through the proxy that carries the
				// bulk: the agent's to the proxy, or the proxy's to
				// the relay.
				addr := p.Addr()
				if upload {
					addr = r.Addr
				}
				_, port, _ := net.SplitHostPort(addr)
				var qs []sockQueues
				for {
					select {
					case <-stop:
						sampled <- qs
						return
					case <-time.After(250 * time.Millisecond):
					}
					if q, ok := tcpQueues(port); ok && kind == TransportTCP {
						qs = append(qs, q)
					}
				}
			}()
			res.s = probeLatency(t, echoAddr, gameAddr, measure)
			close(stop)
			qs := <-sampled
			res.mbits = float64(moved.Load()-from) * 8 / time.Since(start).Seconds() / 1e6
			c.Close()
			<-done
			if moved.Load() == 0 {
				t.Errorf("%s: the %s carried nothing", kind, res.name)
			}
			if len(qs) > 0 {
				// The sender's unacknowledged bytes (its unsent ones,
				// but for the few the proxy's socket holds) and the
				// proxy's unread ones.
				var sent, unread []int
				for _, q := range qs {
					if upload {
						sent, unread = append(sent, q.listener.tx), append(unread, q.dialer.rx)
					} else {
						sent, unread = append(sent, q.dialer.tx), append(unread, q.listener.rx)
					}
				}
				slices.Sort(sent)
				slices.Sort(unread)
				who := "agent's"
				if upload {
					who = "relay's"
				}
				res.queues = fmt.Sprintf("%s socket %d KiB queued (median; max %d), proxy's %d KiB unread (max %d)",
					who, sent[len(sent)/2]>>10, sent[len(sent)-1]>>10, unread[len(unread)/2]>>10, unread[len(unread)-1]>>10)
			}
			results = append(results, res)
		}

		t.Logf("%s: 20 Mbit/s up, 100 Mbit/s down, %v RTT, router queues %v; p50 / p99 / max", kind, rtt, queue)
		t.Logf("  %-10s %-24s %-24s %s", "", "64-byte echo, held conn", "new conn + first echo", "100-byte datagram echo")
		for _, res := range results {
			line := fmt.Sprintf("  %-10s %-24s %-24s %s (%d lost)", res.name, pcts(res.s.tcp), pcts(res.s.conn), pcts(res.s.udp), res.s.udpLost)
			if res.mbits > 0 {
				line += fmt.Sprintf("; %.1f Mbit/s", res.mbits)
			}
			t.Log(line)
			if res.queues != "" {
				t.Logf("  %-10s %s", "", res.queues)
			}
		}
		ta.Stop()
		r.Stop()
		p.Close()
	}
}

// latencySamples are the round trips probeLatency measured.
type latencySamples struct {
	tcp, conn, udp []time.Duration
	udpLost        int
}

// probeLatency measures, for d, at once: a 64-byte echo every 50 ms on a
// held connection to the TCP echo at tcpAddr, a new connection and its
// first byte's echo every 250 ms, and the echo of a 100-byte datagram
// sent to udpAddr every 20 ms. Replies must match what was sent.
func probeLatency(t *testing.T, tcpAddr, udpAddr string, d time.Duration) latencySamples {
	t.Helper()
	var s latencySamples
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	wg.Add(3)
	go func() {
		defer wg.Done()
		c, err := net.Dial("tcp", tcpAddr)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		msg, back := make([]byte, 64), make([]byte, 64)
		for i := 0; time.Now().Before(end); i++ {
			for j := range msg {
				msg[j] = byte(i + j)
			}
			start := time.Now()
			c.SetDeadline(start.Add(20 * time.Second))
			if _, err := c.Write(msg); err != nil {
				t.Error(err)
				return
			}
			if _, err := io.ReadFull(c, back); err != nil || string(back) != string(msg) {
				t.Errorf("held connection's echo %d: %v (or different bytes)", i, err)
				return
			}
			s.tcp = append(s.tcp, time.Since(start))
			time.Sleep(50 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(end) {
			start := time.Now()
			c, err := net.Dial("tcp", tcpAddr)
			if err != nil {
				t.Error(err)
				return
			}
			c.SetDeadline(start.Add(20 * time.Second))
			b := []byte{'q'}
			c.Write(b)
			_, err = io.ReadFull(c, b)
			c.Close()
			if err != nil || b[0] != 'q' {
				t.Errorf("new connection's echo: %v (or a different byte)", err)
				return
			}
			s.conn = append(s.conn, time.Since(start))
			time.Sleep(250 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		c, err := net.Dial("udp", udpAddr)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		var mu sync.Mutex
		var sent []time.Time
		received := make(chan struct{})
		go func() {
			defer close(received)
			b := make([]byte, 2048)
			for {
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, err := c.Read(b)
				if err != nil {
					return
				}
				seq := int(binary.BigEndian.Uint32(b))
				mu.Lock()
				ok := n == 100 && seq < len(sent) && b[99] == byte(seq)
				if ok {
					s.udp = append(s.udp, time.Since(sent[seq]))
				}
				mu.Unlock()
				if !ok {
					t.Errorf("datagram echo of %d bytes, sequence %d: not one that was sent", n, seq)
				}
			}
		}()
		p := make([]byte, 100)
		for seq := 0; time.Now().Before(end); seq++ {
			binary.BigEndian.PutUint32(p, uint32(seq))
			p[99] = byte(seq)
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
			c.Write(p)
			time.Sleep(20 * time.Millisecond)
		}
		<-received
		s.udpLost = len(sent) - len(s.udp)
		if len(s.udp) == 0 {
			t.Error("no datagram came back")
		}
	}()
	wg.Wait()
	return s
}

// pcts formats the median, 99th percentile and maximum of ds.
func pcts(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("%s / %s / %s ms", ms(s[len(s)/2]), ms(s[len(s)*99/100]), ms(s[len(s)-1]))
}

// sockQueues are the bytes queued in the two sockets of a loopback TCP
// connection: each one's unacknowledged bytes (sent or not) and unread
// ones.
type sockQueues struct{ dialer, listener struct{ tx, rx int } }

// tcpQueues reads /proc/net/tcp for the established connection to port
// (decimal); ok is false where there is no such file or connection.
func tcpQueues(port string) (q sockQueues, ok bool) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return q, false
	}
	var p int
	fmt.Sscan(port, &p)
	hexPort := fmt.Sprintf(":%04X", p)
	var dialer, listener bool
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || f[3] != "01" {
			continue
		}
		var tx, rx int
		if _, err := fmt.Sscanf(f[4], "%x:%x", &tx, &rx); err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(f[2], hexPort):
			q.dialer.tx, q.dialer.rx, dialer = tx, rx, true
		case strings.HasSuffix(f[1], hexPort):
			q.listener.tx, q.listener.rx, listener = tx, rx, true
		}
	}
	return q, dialer && listener
}
