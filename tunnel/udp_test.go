package tunnel

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/relaytun/relay/internal/proctest"
)

// udpEcho runs a UDP server on loopback that sends every datagram back to
// its sender, and records the peers it saw.
type udpEcho struct {
	Addr  string
	mu    sync.Mutex
	peers map[string]int
	first map[string][]byte // each peer's first datagram
}

func startUDPEcho(t testing.TB) *udpEcho {
	t.Helper()
	pc := listenUDP(t)
	e := &udpEcho{Addr: pc.LocalAddr().String(), peers: map[string]int{}, first: map[string][]byte{}}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			if e.peers[from.String()] == 0 {
				e.first[from.String()] = bytes.Clone(buf[:n])
			}
			e.peers[from.String()]++
			e.mu.Unlock()
			pc.WriteTo(buf[:n], from)
		}
	}()
	return e
}

func (e *udpEcho) peerCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.peers)
}

// dialUDP is a client socket "connected" to addr, closed when the test
// ends.
func dialUDP(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// listenUDP is a server socket on loopback, closed when the test ends.
func listenUDP(t testing.TB) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// expectDropped sends a datagram from c, whose flow the relay should
// drop (what says which), and fails if anything comes back within 500 ms.
func expectDropped(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.Write([]byte("dropped?"))
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("%s: got %d bytes back; want the datagram dropped", what, n)
	}
}

// udpAgentConfig is agentConfig for a UDP (or TCP and UDP) tunnel.
func (r *testRelay) udpAgentConfig(kind string, protos uint8, locals ...string) AgentConfig {
	cfg := r.agentConfig(kind, locals...)
	for i := range cfg.Tunnels {
		cfg.Tunnels[i].Protos = protos
	}
	return cfg
}

func endpointFor(t *testing.T, a *testAgent, proto string) string {
	t.Helper()
	for _, e := range a.Endpoints {
		if e.Proto == proto {
			return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
		}
	}
	t.Fatalf("no %s endpoint among %+v", proto, a.Endpoints)
	return ""
}

// exchange sends p from c and waits for the same bytes back, resending a
// few times: datagrams may be lost, never altered.
func exchange(t *testing.T, c net.Conn, p []byte) {
	t.Helper()
	buf := make([]byte, len(p)+1)
	for try := 0; try < 5; try++ {
		if _, err := c.Write(p); err != nil {
			t.Fatalf("sending %d bytes: %v", len(p), err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break // lost: send again
			}
			if n == len(p) && bytes.Equal(buf[:n], p) {
				return
			}
			if n != len(p) {
				t.Fatalf("sent %d bytes, got a datagram of %d back: altered in flight", len(p), n)
			}
			// An earlier duplicate of a resend: keep reading.
		}
	}
	t.Fatalf("no echo of a %d-byte datagram after 5 tries", len(p))
}

// TestUDPEcho: datagrams of every size up to 1472, and 8000 (too large for
// a QUIC datagram), pass intact both ways on both transports, over 20
// concurrent flows, each a distinct peer of the local server.
func TestUDPEcho(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		srv := startUDPEcho(t)
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, srv.Addr))
		if len(a.Endpoints) != 1 || a.Endpoints[0].Proto != "udp" || a.Endpoints[0].URL()[:6] != "udp://" {
			t.Fatalf("endpoints %+v, want one udp://", a.Endpoints)
		}
		public := endpointFor(t, a, "udp")
		const flows = 20
		var wg sync.WaitGroup
		for i := range flows {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("udp", public)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				for _, size := range []int{1, 512, 1200, 1350, 1472, 8000} {
					p := make([]byte, size)
					rand.Read(p)
					p[0] = byte(i)
					exchange(t, c, p)
				}
			}()
		}
		wg.Wait()
		if n := srv.peerCount(); n != flows {
			t.Errorf("the local server saw %d peers, want %d (one per flow)", n, flows)
		}
		ti := r.Relay.Tunnels()
		if len(ti) != 1 || ti[0].UDPFlows != flows {
			t.Errorf("relay reports %+v, want one tunnel with %d flows", ti, flows)
		}
	})
}

// TestUDPFlowExpiry: a flow idle for the flow timeout goes on both sides,
// and the client's next datagram opens a new one.
func TestUDPFlowExpiry(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.FlowIdleTimeout = 300 * time.Millisecond })
		srv := startUDPEcho(t)
		cfg := r.udpAgentConfig(kind, ProtoUDP, srv.Addr)
		cfg.FlowIdleTimeout = 300 * time.Millisecond
		a := mustRunAgent(t, cfg)
		c, err := net.Dial("udp", endpointFor(t, a, "udp"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, []byte("one"))
		waitFor(t, "the relay to expire the flow", 10*time.Second, func() bool { return r.Relay.Tunnels()[0].UDPFlows == 0 })
		waitFor(t, "the agent to log the flow closed", 10*time.Second, func() bool { return bytes.Contains([]byte(a.Log.String()), []byte("udp flow closed")) })
		exchange(t, c, []byte("two"))
		if n := srv.peerCount(); n != 2 {
			t.Errorf("the local server saw %d peers, want 2: the flow after expiry has a new socket", n)
		}
	})
}

// TestUDPFlowLimit: a tunnel at its flow cap drops datagrams from new
// clients and counts them; existing flows carry on.
func TestUDPFlowLimit(t *testing.T) {
	r := startRelay(t, func(c *RelayConfig) { c.MaxFlows = 2 })
	srv := startUDPEcho(t)
	a := mustRunAgent(t, r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr))
	public := endpointFor(t, a, "udp")
	var conns []net.Conn
	for range 3 {
		conns = append(conns, dialUDP(t, public))
	}
	exchange(t, conns[0], []byte("a"))
	exchange(t, conns[1], []byte("b"))
	expectDropped(t, conns[2], "the third flow, at the cap")
	if got := r.Relay.Tunnels()[0].Refused[RefusedFlowLimit]; got == 0 {
		t.Errorf("refusals %v, want %s counted", r.Relay.Tunnels()[0].Refused, RefusedFlowLimit)
	}
	if want := `msg="public clients refused so far" `; !strings.Contains(r.Log.String(), want) || !strings.Contains(r.Log.String(), "by_reason=map[flow_limit:") {
		t.Errorf("the relay's log has no %s by_reason=map[flow_limit:…] line", want)
	}
	exchange(t, conns[0], []byte("still"))
}

// TestUDPPerIPLimit: a UDP flow counts as a connection against the per-IP
// cap; a client over it is dropped, and the tunnel's refusals are summed
// up in the log at info, as for TCP.
func TestUDPPerIPLimit(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Clients = ClientLimits{MaxConnsPerIP: 1} })
		srv := startUDPEcho(t)
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, srv.Addr))
		public := endpointFor(t, a, "udp")
		var conns []net.Conn
		for range 2 {
			conns = append(conns, dialUDP(t, public))
		}
		exchange(t, conns[0], []byte("a"))
		expectDropped(t, conns[1], "a second flow from the IP, at the per-IP cap of 1")
		want := fmt.Sprintf(`level=INFO msg="public clients refused so far" tunnel=%s port=%d token=test by_reason=map[per_ip_conns:1] latest=%s`,
			a.Endpoints[0].Name, a.Endpoints[0].Port, conns[1].LocalAddr())
		if !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay's log has no line %s", want)
		}
		exchange(t, conns[0], []byte("still"))
	})
}

// TestTCPAndUDPOnOnePort: one tunnel, both protocols, one port number, both
// working at once.
func TestTCPAndUDPOnOnePort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		udpSrv := startUDPEcho(t)
		// The same port number for the local TCP echo server.
		_, port, _ := net.SplitHostPort(udpSrv.Addr)
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Skipf("TCP port %s is taken: %v", port, err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go echo(c)
			}
		}()
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoTCP|ProtoUDP, udpSrv.Addr))
		tcpAddr, udpAddr := endpointFor(t, a, "tcp"), endpointFor(t, a, "udp")
		if tcpAddr != udpAddr {
			t.Fatalf("tcp at %s, udp at %s: want one port number", tcpAddr, udpAddr)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			c := dialPublic(t, tcpAddr)
			p := make([]byte, 256<<10)
			rand.Read(p)
			go func() { c.Write(p); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, p) {
				t.Errorf("tcp echo: %d bytes, %v", len(got), err)
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
			for i := range 50 {
				exchange(t, c, []byte(fmt.Sprintf("datagram %d", i)))
			}
		}()
		wg.Wait()
	})
}

// TestProxyProtocol: the local server reads the client's real address from
// a PROXY header: v1 and v2 before a TCP connection's bytes, v2 in front of
// a UDP flow's first datagram. go-proxyproto parses each.
func TestProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("tcp/v%d", v), func(t *testing.T) {
			t.Parallel()
			r := startRelay(t, nil)
			headers := make(chan *proxyproto.Header, 1)
			local := startServer(t, func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				h, err := proxyproto.Read(br)
				if err != nil {
					t.Errorf("reading the PROXY header: %v", err)
					return
				}
				headers <- h
				io.Copy(c, br)
			})
			cfg := r.agentConfig(TransportQUIC, local)
			cfg.Tunnels[0].ProxyProtocol = v
			a := mustRunAgent(t, cfg)
			c := dialPublic(t, a.Public(0))
			c.Write([]byte("hi"))
			c.CloseWrite()
			got, _ := io.ReadAll(c)
			if string(got) != "hi" {
				t.Errorf("echo %q, want %q: the header must not reach the client", got, "hi")
			}
			h := <-headers
			src, _, ok := h.TCPAddrs()
			if !ok || h.Version != byte(v) || src.String() != c.LocalAddr().String() {
				t.Errorf("header v%d %v, want v%d with source %s", h.Version, h.SourceAddr, v, c.LocalAddr())
			}
		})
	}
	t.Run("udp/v2", func(t *testing.T) {
		t.Parallel()
		r := startRelay(t, nil)
		srv := startUDPEcho(t)
		cfg := r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr)
		cfg.Tunnels[0].ProxyProtocol = 2
		a := mustRunAgent(t, cfg)
		c, err := net.Dial("udp", endpointFor(t, a, "udp"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("first"))
		waitFor(t, "the first datagram", 5*time.Second, func() bool { return srv.peerCount() == 1 })
		srv.mu.Lock()
		var first []byte
		for _, p := range srv.first {
			first = p
		}
		srv.mu.Unlock()
		br := bufio.NewReader(bytes.NewReader(first))
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Fatalf("reading the PROXY header from the first datagram %q: %v", first, err)
		}
		rest, _ := io.ReadAll(br)
		src, _, ok := h.UDPAddrs()
		if !ok || src.String() != c.LocalAddr().String() || string(rest) != "first" {
			t.Errorf("header %v then %q; want source %s then %q", h.SourceAddr, rest, c.LocalAddr(), "first")
		}
		// The echo server sent the first datagram back, header and all;
		// later datagrams carry no header, so their echo is what was sent.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 256)); err != nil || n != len(first) {
			t.Fatalf("echo of the first datagram: %d bytes, %v; want %d", n, err, len(first))
		}
		exchange(t, c, []byte("second"))
	})
}

// TestUDPRefusals: what the relay and the agent refuse, with their reasons.
func TestUDPRefusals(t *testing.T) {
	r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].DenyUDP = true })
	srv := startUDPEcho(t)
	_, err := runAgent(t, r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr))
	if !isRefused(err, CodeForbidden) || !strings.HasSuffix(err.Error(), `token "test" may not open UDP tunnels (its udp rule is false): use --proto tcp, or ask the relay's operator for a token that may`) {
		t.Errorf("UDP with a token that denies it: %v, want forbidden naming the udp rule and what to do", err)
	}
	cfg := r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr)
	cfg.Tunnels[0].ProxyProtocol = 1
	if _, err := NewAgent(cfg); err == nil || !bytes.Contains([]byte(err.Error()), []byte("v1 has no form for UDP")) {
		t.Errorf("PROXY v1 on UDP: %v, want a refusal naming v2", err)
	}
}

// TestUnsolicitedDatagramDropped: an agent cannot make the relay send to a
// client that has no flow.
func TestUnsolicitedDatagramDropped(t *testing.T) {
	r := startRelay(t, nil)
	srv := startUDPEcho(t)
	mustRunAgent(t, r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr))
	victim, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	r.Relay.mu.Lock()
	var a *agentConn
	for c := range r.Relay.agents {
		a = c
	}
	var id uint32
	for mid := range a.members {
		id = mid
	}
	r.Relay.mu.Unlock()
	before := r.Relay.Stats().UDPDrops
	p := AppendStreamHeader(nil, StreamHeader{Tunnel: id, Client: netip.MustParseAddrPort(victim.LocalAddr().String())})
	a.deliverUDP(append(p, "spoofed"...))
	victim.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := victim.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("the relay sent %d bytes to an address with no flow", n)
	}
	if r.Relay.Stats().UDPDrops != before+1 {
		t.Errorf("drops %d, want %d", r.Relay.Stats().UDPDrops, before+1)
	}
}

func FuzzParseDatagram(f *testing.F) {
	f.Add(AppendStreamHeader(nil, StreamHeader{Tunnel: 7, Client: netip.MustParseAddrPort("192.0.2.1:5")}))
	f.Add(append(AppendStreamHeader(nil, StreamHeader{Tunnel: 1, Client: netip.MustParseAddrPort("[2001:db8::1]:443")}), "payload"...))
	f.Add([]byte{1, 0, 0, 0, 1, 9})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, payload, err := ParseDatagram(p)
		if err != nil {
			return
		}
		// What parses re-encodes to the same bytes (IPv4-mapped IPv6 is
		// sent as IPv4, its canonical form).
		again := append(AppendStreamHeader(nil, h), payload...)
		if p[5] == 4 && !bytes.Equal(again, p) {
			t.Fatalf("round trip %x → %+v → %x", p, h, again)
		}
		if len(payload) > len(p) {
			t.Fatal("payload longer than the datagram")
		}
	})
}

// TestUDPLocalServerDown: datagrams a UDP tunnel's local server refuses
// (nothing listens on its port) are logged once until it answers again,
// the flow stays for when it is back, and a flow with a PROXY v2 header
// sends it again in front of the first datagram the server takes: the
// one that rode in front of a refused datagram never reached it, and a
// server reading headers (Geyser) ignores a peer that sent none.
func TestUDPLocalServerDown(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.ClosedPort(t)
		cfg := r.udpAgentConfig(kind, ProtoUDP, local)
		cfg.Tunnels[0].ProxyProtocol = 2
		a := mustRunAgent(t, cfg)
		c := dialUDP(t, endpointFor(t, a, "udp"))
		const warning = "the local server refused them"
		warnings := func() int { return strings.Count(a.Log.String(), warning) }
		refused := func(n int) func() bool {
			return func() bool {
				c.Write([]byte("anyone?"))
				return warnings() >= n
			}
		}
		waitFor(t, "the agent to log the refusal", 10*time.Second, refused(1))
		if !strings.Contains(a.Log.String(), "local="+local) {
			t.Errorf("the refusal does not name the local server %s:\n%s", local, a.Log)
		}
		for range 5 {
			c.Write([]byte("anyone?"))
		}

		// The server comes up: the flow carries on, header first.
		pc, err := net.ListenPacket("udp", local)
		if err != nil {
			t.Fatal(err)
		}
		firsts := proxyEchoUDP(t, pc, func(p []byte) bool { return string(p) != "anyone?" }) // sent while it was down
		exchange(t, c, []byte("back"))
		first := <-firsts
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(first)))
		if err != nil {
			t.Fatalf("the server's first datagram from the flow, %q, has no PROXY header: %v", first, err)
		}
		if src, _, ok := h.UDPAddrs(); !ok || src.String() != c.LocalAddr().String() {
			t.Errorf("PROXY header source %v, want the client %s", h.SourceAddr, c.LocalAddr())
		}
		if n := warnings(); n != 1 {
			t.Errorf("%d refusal lines for one outage, want 1:\n%s", n, a.Log)
		}

		// It answered, so the next outage is logged again.
		pc.Close()
		waitFor(t, "the agent to log the second outage", 10*time.Second, refused(2))
	})
}

func mustFormat(t *testing.T, h *proxyproto.Header) []byte {
	t.Helper()
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A datagram the local socket cannot send for a reason of its own (too
// big once the PROXY header rides in front of it) is a drop, not the local
// server refusing: the agent does not say the server refused, and the
// header, which went nowhere, rides in front of the next datagram. The
// agent warns of such a drop once per flow, and counts each.
func TestUDPLocalWriteErrorNotARefusal(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		pc := listenUDP(t)
		firsts := proxyEchoUDP(t, pc, nil)
		cfg := r.udpAgentConfig(kind, ProtoUDP, pc.LocalAddr().String())
		cfg.Tunnels[0].ProxyProtocol = 2
		a := mustRunAgent(t, cfg)
		c := dialUDP(t, endpointFor(t, a, "udp"))
		// The largest datagram there is: with the header in front, more
		// than a UDP socket sends. Twice: each fails, as the header stays
		// in front of the next.
		for range 2 {
			if _, err := c.Write(make([]byte, MaxDatagram)); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "both big datagrams dropped", 10*time.Second, func() bool { return a.agent.Status().Tunnels[0].UDPDrops == 2 })
		exchange(t, c, []byte("small"))
		want := fmt.Sprintf(`level=WARN msg="udp datagram dropped: with the PROXY header in front it is larger than a UDP datagram can be; the header goes in front of the flow's next datagram instead" tunnel=%s client=%s bytes=%d header_bytes=28 err=`,
			cfg.Tunnels[0].Name, c.LocalAddr(), MaxDatagram)
		if n := strings.Count(a.Log.String(), "with the PROXY header in front"); n != 1 || !strings.Contains(a.Log.String(), want) {
			t.Errorf("%d warnings for the flow's big datagrams; want one line %s", n, want)
		}
		if first := <-firsts; !bytes.HasSuffix(first, []byte("small")) {
			t.Fatalf("the server's first datagram from the flow is %d bytes, want the small one", len(first))
		} else if _, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(first))); err != nil {
			t.Errorf("the server's first datagram from the flow has no PROXY header: %v", err)
		}
		if strings.Contains(a.Log.String(), "the local server refused them") {
			t.Errorf("a datagram too big to send was logged as the local server refusing it:\n%s", a.Log)
		}
	})
}

// proxyEchoUDP serves pc as a UDP echo behind a PROXY-protocol agent: it
// sends each client's first datagram, as it arrived, on the channel it
// returns, and echoes every datagram, its PROXY header taken off, that
// echo (if not nil) allows, until pc is closed.
func proxyEchoUDP(t *testing.T, pc net.PacketConn, echo func(p []byte) bool) <-chan []byte {
	firsts := make(chan []byte, 64)
	go func() {
		buf := make([]byte, 65535)
		seen := map[string]bool{}
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if !seen[from.String()] {
				seen[from.String()] = true
				firsts <- bytes.Clone(p)
			}
			if h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(p))); err == nil {
				p = p[len(mustFormat(t, h)):]
			}
			if echo == nil || echo(p) {
				pc.WriteTo(p, from)
			}
		}
	}()
	return firsts
}

// TestUDPReloadFlowTimeout: a reload that shortens udp_flow_timeout ends
// idle flows by the new timeout, not after the sweep round the old one
// timed (an eighth of 120 s). The bound is generous, for slow machines,
// and still well under that 15 s.
func TestUDPReloadFlowTimeout(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.FlowIdleTimeout = 120 * time.Second })
		srv := startUDPEcho(t)
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, srv.Addr))
		exchange(t, dialUDP(t, endpointFor(t, a, "udp")), []byte("one"))
		rc := *r.Relay.config()
		rc.FlowIdleTimeout = 500 * time.Millisecond
		if _, err := r.Relay.Reload(rc); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the relay to expire the idle flow after the reload", 7*time.Second,
			func() bool { return r.Relay.Tunnels()[0].UDPFlows == 0 })
	})
}

// TestUDPOversizeIPv6: IPv6 lets a datagram carry up to 65527 bytes, more
// than a tunnel carries (MaxDatagram, IPv4's largest). One that large,
// from a client or from the local server, is dropped and counted, not
// delivered cut to 65507 bytes; one of 65507 bytes still passes intact
// both ways.
func TestUDPOversizeIPv6(t *testing.T) {
	if pc, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		pc.Close()
	}
	const oversize = 65520
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.BindHost = "::1" })
		// The local server echoes, answers "big?" with an oversize
		// datagram, and notes any datagram that is a cut oversize one.
		pc, err := net.ListenPacket("udp", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		big := bytes.Repeat([]byte{0xee}, oversize)
		var cut atomic.Int64
		go func() {
			buf := make([]byte, 65535)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				switch p := buf[:n]; {
				case string(p) == "big?":
					pc.WriteTo(big, from)
				case n > 0 && p[0] == 0xee:
					cut.Add(1)
				default:
					pc.WriteTo(p, from)
				}
			}
		}()
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, pc.LocalAddr().String()))
		c := dialUDP(t, net.JoinHostPort("::1", strconv.Itoa(int(a.Endpoints[0].Port))))
		exchange(t, c, []byte("hello"))

		// From the client.
		if _, err := c.Write(big); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the relay to count the oversize datagram dropped", 10*time.Second,
			func() bool { return r.Relay.Tunnels()[0].UDPDrops == 1 })
		if !strings.Contains(r.Log.String(), `msg="udp datagram dropped: larger than a tunnel carries"`) {
			t.Errorf("the relay logged no debug line for the oversize datagram")
		}

		// From the local server.
		if _, err := c.Write([]byte("big?")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the agent to count the oversize datagram dropped", 10*time.Second,
			func() bool { return a.agent.Status().Tunnels[0].UDPDrops == 1 })
		if !strings.Contains(a.Log.String(), `msg="udp datagram from the local server dropped: larger than a tunnel carries"`) {
			t.Errorf("the agent logged no debug line for the oversize datagram")
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(make([]byte, 65535)); err == nil {
			t.Errorf("the client got a datagram of %d bytes; want the oversize one dropped", n)
		}

		// The largest a tunnel carries passes intact, both ways.
		p := make([]byte, MaxDatagram)
		rand.Read(p)
		p[0] = 1
		exchange(t, c, p)
		exchange(t, c, []byte("after"))
		if n := cut.Load(); n != 0 {
			t.Errorf("the local server got %d cut oversize datagrams", n)
		}
	})
}
