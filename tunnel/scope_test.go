package tunnel

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/relaytun/relay/transport"
)

const gameSecret = "game-secret-0123456789"

// A token's names, ports and max_tunnels rules each refuse with their own
// sentence, and a freed tunnel slot can be used again.
func TestTokenScope(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		// Each transport's relay gets its own block: the subtests run at once.
		base := uint16(42000)
		if kind == TransportTCP {
			base = 43000
		}
		r := startRelay(t, func(c *RelayConfig) {
			c.Ports = PortSet{{base, base + 999}}
			c.Tokens = append(c.Tokens, Token{ID: "games", Secret: gameSecret,
				Names: []string{"game-*"}, Ports: PortSet{{base + 100, base + 109}}, MaxTunnels: 2})
		})
		local := startServer(t, echo)
		game := func(name string, ports PortRange) AgentConfig {
			cfg := r.agentConfig(kind, local)
			cfg.Token = gameSecret
			cfg.Tunnels[0].Name = name
			cfg.Tunnels[0].Ports = ports
			return cfg
		}
		_, err := runAgent(t, game("web", PortRange{}))
		if !isRefused(err, CodeForbidden) || !strings.Contains(err.Error(), `"web"`) || !strings.Contains(err.Error(), "names rule allows only game-*") {
			t.Fatalf("name outside scope: %v", err)
		}
		_, err = runAgent(t, game("game-a", PortRange{base + 500, base + 500}))
		if !isRefused(err, CodePortNotAllowed) || !strings.Contains(err.Error(), fmt.Sprintf(`token "games" may use (its ports rule) (%d-%d)`, base+100, base+109)) {
			t.Fatalf("port outside the token's ports: %v", err)
		}
		a := mustRunAgent(t, game("game-a", PortRange{}))
		if p := a.Endpoints[0].Port; p < base+100 || p > base+109 {
			t.Fatalf("tunnel got port %d, outside the token's %d-%d", p, base+100, base+109)
		}
		b := game("game-b", PortRange{})
		b.Tunnels[0].Ports = PortRange{base + 100, base + 109}
		mustRunAgent(t, b)
		_, err = runAgent(t, game("game-c", PortRange{}))
		if !isRefused(err, CodeLimit) || !strings.Contains(err.Error(), "max_tunnels") {
			t.Fatalf("third tunnel: %v, want a max_tunnels refusal", err)
		}
		// The other token is not limited by this one's count.
		mustRunAgent(t, r.agentConfig(kind, local))
		a.Stop()
		waitFor(t, "the slot to free", 5*time.Second, func() bool {
			_, err := runAgent(t, game("game-c", PortRange{}))
			return err == nil
		})
	})
}

// holdClient connects to addr and proves the connection reaches the local
// server, leaving it open.
func holdClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialPublic(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("held client got no echo: %v", err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// refusedAtOnce reports whether a new client of addr is closed without
// reaching the local server.
func refusedAtOnce(t *testing.T, addr string) bool {
	t.Helper()
	c := dialPublic(t, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil
}

func refusals(r *testRelay, reason string) int64 {
	var n int64
	for _, ti := range r.Relay.Tunnels() {
		n += ti.Refused[reason]
	}
	return n
}

// max_connections caps the token's open public connections, across its
// tunnels; a closed connection frees its slot.
func TestTokenMaxConnections(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxConnections = 2 })
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo), startServer(t, echo)))
		c1 := holdClient(t, a.Public(0))
		holdClient(t, a.Public(1))
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("a third connection over max_connections = 2 reached the server")
		}
		if n := refusals(r, RefusedTokenConns); n != 1 {
			t.Fatalf("token_conns refusals = %d, want 1", n)
		}
		c1.Close()
		waitFor(t, "the slot to free", 5*time.Second, func() bool {
			return r.Relay.Tunnels()[0].Active+r.Relay.Tunnels()[1].Active < 2
		})
		holdClient(t, a.Public(1))
	})
}

// Per-IP connection and rate limits turn away the excess at once and count
// it; other clients are untouched.
func TestPerIPLimits(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Clients = ClientLimits{MaxConnsPerIP: 3} })
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		for range 3 {
			holdClient(t, a.Public(0))
		}
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("a 4th connection from one IP reached the server with per-IP max 3")
		}
		if n := refusals(r, RefusedPerIPConns); n != 1 {
			t.Fatalf("per_ip_conns refusals = %d, want 1", n)
		}
		waitFor(t, "the refusal summary in the log", 5*time.Second, func() bool {
			return strings.Contains(r.Log.String(), `msg="public clients refused so far" `) &&
				strings.Contains(r.Log.String(), "by_reason=map[per_ip_conns:1]")
		})

		// Rate: 20 connections at once against 2/s with a burst of 5.
		r2 := startRelay(t, func(c *RelayConfig) { c.Clients = ClientLimits{RatePerIP: 2, BurstPerIP: 5} })
		b := mustRunAgent(t, r2.agentConfig(kind, startServer(t, echo)))
		ok := 0
		start := time.Now()
		for range 20 {
			if !refusedAtOnce(t, b.Public(0)) {
				ok++
			}
		}
		// The burst, plus what the rate refilled while the loop ran.
		most := 5 + int(math.Ceil(2*time.Since(start).Seconds()))
		if ok < 5 || ok > most {
			t.Fatalf("%d of 20 rapid connections got through at 2/s with burst 5; want 5 to %d", ok, most)
		}
		if n := refusals(r2, RefusedPerIPRate); n != int64(20-ok) {
			t.Fatalf("per_ip_rate refusals = %d, want %d", n, 20-ok)
		}
	})
}

// A token's per-IP rate comes with its own burst; its burst alone applies
// to the relay's rate (relay.toml: a [[tokens]] per_ip_burst with [limits]
// per_ip_rate).
func TestTokenRateAndBurst(t *testing.T) {
	for _, tt := range []struct {
		name         string
		relay, token ClientLimits
		rate         rate.Limit
		burst        int
	}{
		{"relay's rate", ClientLimits{RatePerIP: 10}, ClientLimits{}, 10, 20},
		{"relay's rate and burst", ClientLimits{RatePerIP: 10, BurstPerIP: 30}, ClientLimits{}, 10, 30},
		{"token's burst alone", ClientLimits{RatePerIP: 10}, ClientLimits{BurstPerIP: 50}, 10, 50},
		{"token's burst over the relay's", ClientLimits{RatePerIP: 10, BurstPerIP: 30}, ClientLimits{BurstPerIP: 50}, 10, 50},
		{"token's rate alone", ClientLimits{RatePerIP: 10, BurstPerIP: 30}, ClientLimits{RatePerIP: 0.5}, 0.5, 1},
		{"token's rate and burst", ClientLimits{RatePerIP: 10, BurstPerIP: 30}, ClientLimits{RatePerIP: 2, BurstPerIP: 5}, 2, 5},
		{"token's burst, no rate", ClientLimits{}, ClientLimits{BurstPerIP: 50}, 0, 0},
	} {
		g := newClientGate([]ClientLimits{tt.relay, tt.token, {}}, nil, &ipTable{})
		if g.rate != tt.rate || g.burst != tt.burst {
			t.Errorf("%s: rate %v, burst %d; want %v, %d", tt.name, g.rate, g.burst, tt.rate, tt.burst)
		}
	}

	// Through a relay: the token's burst of 3 at the relay's rate of one
	// connection in 1000 s (whose own burst is 1).
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Clients = ClientLimits{RatePerIP: 0.001}
			c.Tokens[0].Clients = ClientLimits{BurstPerIP: 3}
		})
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		for range 3 {
			holdClient(t, a.Public(0))
		}
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("a 4th connection from one IP got through with the token's per-IP burst of 3")
		}
		if n := refusals(r, RefusedPerIPRate); n != 1 {
			t.Fatalf("per_ip_rate refusals = %d, want 1", n)
		}
	})
}

// New rules for a tunnel's clients (a reload, a member with its own allow
// list) keep the per-IP counts: an IP holding max_conns_per_ip connections
// stays refused, and closing them frees exactly their slots.
func TestPerIPLimitsAcrossNewRules(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Clients = ClientLimits{MaxConnsPerIP: 2} })
		local := startServer(t, echo)
		a := mustRunAgent(t, r.agentConfig(kind, local))
		held := []net.Conn{holdClient(t, a.Public(0)), holdClient(t, a.Public(0))}

		// The same cap, with an unrelated change beside it.
		cfg := *r.Relay.config()
		cfg.Clients.Deny = pfx("192.0.2.0/24")
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("with 2 connections open and max_conns_per_ip = 2, a 3rd was admitted after a reload")
		}
		second := r.agentConfig(kind, local) // the same tunnel name: it joins the group
		second.Tunnels[0].Allow = pfx("127.0.0.0/8")
		mustRunAgent(t, second)
		if n := len(r.Relay.Tunnels()[0].Members); n != 2 {
			t.Fatalf("the tunnel has %d members, want 2", n)
		}
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("with 2 connections open and max_conns_per_ip = 2, a 3rd was admitted after a member with its own allow list joined")
		}
		if n := refusals(r, RefusedPerIPConns); n != 2 {
			t.Fatalf("per_ip_conns refusals = %d, want 2", n)
		}

		for _, c := range held {
			c.Close()
		}
		waitFor(t, "the held connections to end", 5*time.Second, func() bool { return r.Relay.Tunnels()[0].Active == 0 })
		holdClient(t, a.Public(0))
		holdClient(t, a.Public(0))
		if !refusedAtOnce(t, a.Public(0)) {
			t.Fatal("after the 2 old connections closed and 2 new ones opened, a 3rd was admitted")
		}
	})
}

// A tunnel's gates share its per-IP counts: a connection admitted by one
// gate counts against the next and releases into the same count; a lowered
// cap refuses new connections only; rate allowances carry over too.
func TestClientGateCountsOutliveGate(t *testing.T) {
	var ips ipTable
	gate := func(l ClientLimits) *clientGate { return newClientGate([]ClientLimits{l}, nil, &ips) }
	ip := netip.MustParseAddr("192.0.2.1")
	admit := func(g *clientGate, want string) func() {
		t.Helper()
		release, reason := g.admit(ip)
		if reason != want {
			t.Fatalf("admit: refused %q, want %q", reason, want)
		}
		return release
	}

	open := gate(ClientLimits{})
	r1, r2 := admit(open, ""), admit(open, "")
	three := gate(ClientLimits{MaxConnsPerIP: 3})
	r3 := admit(three, "") // the two admitted without a cap count
	admit(three, RefusedPerIPConns)
	one := gate(ClientLimits{MaxConnsPerIP: 1})
	admit(one, RefusedPerIPConns)
	r1()
	r1() // a second call is a no-op
	r2()
	admit(one, RefusedPerIPConns) // r3 is still open
	r3()
	admit(one, "")()
	if n := len(ips.perIP); n != 0 {
		t.Fatalf("%d IPs left in the table with no connection open, want 0", n)
	}

	slow := ClientLimits{RatePerIP: 0.001, BurstPerIP: 2}
	admit(gate(slow), "")()
	admit(gate(slow), "")()
	slow.Deny = pfx("198.51.100.0/24")
	admit(gate(slow), RefusedPerIPRate)
	admit(gate(ClientLimits{}), "")()
}

// Allow and deny lists from the relay, the token and the agent all apply.
func TestAllowDeny(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		local := startServer(t, echo)
		for _, tc := range []struct {
			name         string
			relay, token ClientLimits
			agent        TunnelSpec
			admitted     bool
		}{
			{name: "agent allows other nets", agent: TunnelSpec{Allow: pfx("10.0.0.0/8")}},
			{name: "agent denies loopback", agent: TunnelSpec{Deny: pfx("127.0.0.0/8")}},
			{name: "agent allows loopback", agent: TunnelSpec{Allow: pfx("127.0.0.1/32")}, admitted: true},
			{name: "relay denies, agent allows", relay: ClientLimits{Deny: pfx("127.0.0.1/32")}, agent: TunnelSpec{Allow: pfx("127.0.0.0/8")}},
			{name: "token allows other nets", token: ClientLimits{Allow: pfx("192.0.2.0/24")}},
			{name: "all allow", relay: ClientLimits{Allow: pfx("127.0.0.0/8")}, token: ClientLimits{Allow: pfx("127.0.0.1/32")}, admitted: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := startRelay(t, func(c *RelayConfig) {
					c.Clients = tc.relay
					c.Tokens[0].Clients = tc.token
				})
				cfg := r.agentConfig(kind, local)
				cfg.Tunnels[0].Allow, cfg.Tunnels[0].Deny = tc.agent.Allow, tc.agent.Deny
				a := mustRunAgent(t, cfg)
				if got := !refusedAtOnce(t, a.Public(0)); got != tc.admitted {
					t.Fatalf("admitted = %v, want %v", got, tc.admitted)
				}
				if want := map[bool]int64{true: 0, false: 1}[tc.admitted]; refusals(r, RefusedDenied) != want {
					t.Fatalf("denied count = %d, want %d", refusals(r, RefusedDenied), want)
				}
			})
		}
	})
}

func pfx(ss ...string) []netip.Prefix {
	p, err := ParsePrefixes(ss)
	if err != nil {
		panic(err)
	}
	return p
}

// A proof captured on one session is refused on another: it is bound to the
// first session's nonce and TLS keying material.
func TestProofReplay(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		s1 := dialRaw(t, r, kind)
		ctl1, _ := s1.OpenStream(context.Background())
		ctl1.SetDeadline(time.Now().Add(5 * time.Second))
		WriteMessage(ctl1, &Hello{Version: ProtocolVersion, KeyID: KeyID(testSecret)})
		m, err := ReadMessage(ctl1)
		if err != nil {
			t.Fatal(err)
		}
		ekm1, _ := sessionBinding(s1)
		captured := Proof(testSecret, m.(*Challenge).Nonce, ekm1)

		for _, variant := range []string{"captured proof", "new nonce, old session's keying material"} {
			s2 := dialRaw(t, r, kind)
			ctl2, _ := s2.OpenStream(context.Background())
			ctl2.SetDeadline(time.Now().Add(5 * time.Second))
			WriteMessage(ctl2, &Hello{Version: ProtocolVersion, KeyID: KeyID(testSecret)})
			m, err := ReadMessage(ctl2)
			if err != nil {
				t.Fatal(err)
			}
			proof := captured
			if variant != "captured proof" {
				proof = Proof(testSecret, m.(*Challenge).Nonce, ekm1)
			}
			WriteMessage(ctl2, &Auth{Proof: proof})
			m, err = ReadMessage(ctl2)
			if e, ok := m.(*Error); !ok || e.Code != CodeUnauthorized {
				t.Fatalf("%s: relay answered %#v, %v; want unauthorized", variant, m, err)
			}
			s2.Close()
		}
	})
}

// Sessions that connect but never authenticate are capped, and closed at
// the deadline.
func TestPendingSessionCap(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.MaxPendingSessions = 2 })
		held := []transport.Session{dialRaw(t, r, kind), dialRaw(t, r, kind)}
		waitFor(t, "two pending sessions", 5*time.Second, func() bool { return len(r.Relay.pending) == 2 })
		third := dialRaw(t, r, kind)
		select {
		case <-third.Done():
		case <-time.After(5 * time.Second):
			// TLS+smux learns of the close on its next read.
			if _, err := third.AcceptStream(context.Background()); err == nil {
				t.Fatal("a session over the pending cap was kept")
			}
		}
		for _, s := range held {
			s.Close()
		}
		waitFor(t, "slots to free", 5*time.Second, func() bool { return len(r.Relay.pending) == 0 })
		mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
	})
}

// 300 TCP connections that never finish a handshake are all closed by the
// deadline (or at once, past the handshake cap), while an existing tunnel
// keeps carrying its clients.
func TestIdleHandshakeFlood(t *testing.T) {
	r := startRelayWith(t, nil, func(o *transport.Options) { o.HandshakeTimeout = time.Second })
	a := mustRunAgent(t, r.agentConfig(TransportTCP, startServer(t, echo)))
	conns := make([]net.Conn, 0, 300)
	for range 300 {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	roundTrip(t, a.Public(0), "existing tunnel during the flood")
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				mu.Lock()
				open++ // the deadline above, not the relay, ended it
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if open > 0 {
		t.Fatalf("%d of 300 idle connections were still open 10 s later (handshake timeout 1 s)", open)
	}
	roundTrip(t, a.Public(0), "existing tunnel after the flood")
}

// A flood of public connections beyond the per-IP limit costs the relay
// little memory and does not stop another client's transfer.
func TestPublicFlood(t *testing.T) {
	r := startRelay(t, func(c *RelayConfig) { c.Clients = ClientLimits{MaxConnsPerIP: 50} })
	a := mustRunAgent(t, r.agentConfig(TransportQUIC, startServer(t, echo)))
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		want := make([]byte, 4<<20)
		go func() { c.Write(want); c.(*net.TCPConn).CloseWrite() }()
		n, err := io.Copy(io.Discard, c)
		if err == nil && n != int64(len(want)) {
			err = fmt.Errorf("echoed %d of %d bytes", n, len(want))
		}
		done <- err
	}()
	var conns []net.Conn
	for range 2000 {
		if c, err := net.Dial("tcp", a.Public(0)); err == nil {
			conns = append(conns, c)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer during the flood: %v", err)
	}
	// For the record, not a pass mark: throughput is measured by benchmarks.
	t.Logf("4 MiB echoed during a 2000-connection flood in %v", time.Since(start).Round(time.Millisecond))
	waitFor(t, "refusals to be counted", 10*time.Second, func() bool { return refusals(r, RefusedPerIPConns) >= 1900 })
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	for _, c := range conns {
		c.Close()
	}
	// Relay, agent, local server and 2000 client sockets share this process.
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 64<<20 {
		t.Fatalf("heap grew by %d MiB during a 2000-connection flood", grew>>20)
	}
}
