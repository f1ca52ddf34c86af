package tunnel

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
)

const (
	oldSecret = "old-secret-0123456789"
	chgSecret = "chg-secret-0123456789"
	newSecret = "new-secret-0123456789"
)

// tokenAgent is the config of an agent for local with secret and a tunnel
// named name.
func tokenAgent(r *testRelay, kind, local, secret, name string) AgentConfig {
	cfg := r.agentConfig(kind, local)
	cfg.Token = secret
	cfg.Tunnels[0].Name = name
	fastRetry(&cfg)
	return cfg
}

// Reload adds a token (usable at once), revokes one (its agent stops with
// a refusal that says so), changes one (its agent reconnects to the same
// port), and leaves the other token's tunnel and its client in flight
// alone.
func TestReloadTokens(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens = append(c.Tokens, Token{ID: "old", Secret: oldSecret}, Token{ID: "chg", Secret: chgSecret})
		})
		local := proctest.StartEcho(t, "k:")
		keep := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "keep"))
		old := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "old"))
		chg := liveAgentUp(t, tokenAgent(r, kind, local, chgSecret, "chg"))
		held := hold(t, keep.Public(0), 2)
		if err := startAgent(t, tokenAgent(r, kind, local, newSecret, "new")).wait(t, 20*time.Second); !isRefused(err, CodeUnauthorized) {
			t.Fatalf("a token not yet added: %v, want unauthorized", err)
		}

		cfg := *r.Relay.config()
		cfg.Tokens = []Token{
			{ID: "test", Secret: testSecret},
			{ID: "chg", Secret: chgSecret, MaxConnections: 100},
			{ID: "new", Secret: newSecret},
		}
		res, err := r.Relay.Reload(cfg)
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if got := fmt.Sprint(res.TokensAdded, res.TokensRemoved, res.TokensChanged, res.SessionsClosed); got != "[new] [old] [chg] 2" {
			t.Errorf("Reload result %+v, want added [new], removed [old], changed [chg], 2 sessions closed", res)
		}

		// Revoked: Run ends with the reason, no retry.
		err = old.wait(t, 20*time.Second)
		if !isRefused(err, CodeUnauthorized) || err.Error() != `token "old" was revoked on the relay: ask the relay's operator for a new one` {
			t.Errorf("the revoked token's agent: Run returned %v; want an unauthorized refusal saying token \"old\" was revoked and what to do", err)
		}
		if strings.Contains(old.Log.String(), "reconnecting") {
			t.Errorf("the revoked token's agent said it was reconnecting:\n%s", old.Log)
		}

		// Changed: back at once on the same port, OnReady not called again.
		waitFor(t, "the changed token's agent to reconnect", 20*time.Second, func() bool {
			return chg.Status().Reconnects == 1 && chg.connected()
		})
		if got := chg.Status().Tunnels[0].Public; got != chg.eps[0].URL() {
			t.Errorf("the changed token's tunnel moved from %s to %s", chg.eps[0].URL(), got)
		}
		if n := chg.readies.Load(); n != 1 {
			t.Errorf("OnReady called %d times for the changed token's agent, want once", n)
		}
		if _, err := visit(chg.Public(0), 2); err != nil {
			t.Errorf("the changed token's tunnel: %v", err)
		}

		// Added: works at once.
		n := liveAgentUp(t, tokenAgent(r, kind, local, newSecret, "new"))
		if _, err := visit(n.Public(0), 2); err != nil {
			t.Errorf("the new token's tunnel: %v", err)
		}

		// Untouched.
		if err := held.finish(256 << 10); err != nil {
			t.Errorf("the unaffected tunnel's client in flight: %v", err)
		}
		if st := keep.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the unaffected agent: %+v, want its first session still up", st)
		}
	})
}

// An invalid configuration is refused with the reason, and nothing
// changes: the same config, sessions, tunnels and clients in flight.
func TestReloadInvalid(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.StartEcho(t, "v:")
		a := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "v"))
		held := hold(t, a.Public(0), 2)
		before := r.Relay.config()
		for _, tc := range []struct {
			mod  func(*RelayConfig)
			want string
		}{
			{func(c *RelayConfig) { c.Tokens = nil }, "relay: no tokens configured"},
			{func(c *RelayConfig) { c.Tokens = append(c.Tokens, Token{ID: "test", Secret: newSecret}) }, `relay: token id "test" is used twice`},
			{func(c *RelayConfig) { c.Tokens = []Token{{ID: "test", Secret: "short"}} }, `relay: token "test": secret is shorter than 16 characters`},
			{func(c *RelayConfig) { c.Ports = nil }, "relay: no public ports configured"},
			{func(c *RelayConfig) { c.Liveness = 0 }, "relay: liveness, answer timeout and lease lifetime must be positive"},
		} {
			cfg := *before
			cfg.Tokens = slices.Clone(cfg.Tokens)
			tc.mod(&cfg)
			if _, err := r.Relay.Reload(cfg); err == nil || err.Error() != tc.want {
				t.Errorf("Reload: %v, want %q", err, tc.want)
			}
		}
		if r.Relay.config() != before {
			t.Error("a refused Reload replaced the configuration")
		}
		if err := held.finish(64 << 10); err != nil {
			t.Errorf("client in flight across refused reloads: %v", err)
		}
		if st := a.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("agent %+v, want its first session still up", st)
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Error(err)
		}
		liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "v2"))
	})
}

// A reload that takes a tunnel's port away from the relay's ports moves the
// tunnel: its agent reconnects to another port and, the address having
// changed, calls OnReady again.
func TestReloadMovesPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, r.agentConfig(kind, proctest.StartEcho(t, "m:")))
		p := a.eps[0].Port
		cfg := *r.Relay.config()
		cfg.Ports = nil
		if p > 1024 {
			cfg.Ports = append(cfg.Ports, PortRange{1024, p - 1})
		}
		if p < 65535 {
			cfg.Ports = append(cfg.Ports, PortRange{p + 1, 65535})
		}
		res, err := r.Relay.Reload(cfg)
		if err != nil || res.SessionsClosed != 1 {
			t.Fatalf("Reload: %+v, %v; want one session closed", res, err)
		}
		eps := a.waitReady(t)
		if eps[0].Port == p {
			t.Fatalf("the tunnel is still on port %d, which the relay no longer offers", p)
		}
		if n := a.readies.Load(); n != 2 {
			t.Errorf("OnReady called %d times, want twice", n)
		}
		if !strings.Contains(a.Log.String(), "the relay gave different public addresses than before") {
			t.Error("the agent did not warn that its address changed")
		}
		if want := fmt.Sprintf("port %d is no longer among the relay's ports; reconnect for another", p); !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %q", want)
		}
		if _, err := visit(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(eps[0].Port))), 2); err != nil {
			t.Error(err)
		}
	})
}

// A reloaded lease lifetime applies to the leases already held.
func TestReloadLeaseDuration(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, _ := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}} })
		local := proctest.StartEcho(t, "d:")
		a, err := leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		if _, err := leasedAgent(t, r, kind, "b", local, PortRange{x, x}); !isRefused(err, CodePortTaken) {
			t.Fatalf("b asking for a's leased port: %v, want port-taken", err)
		}
		cfg := *r.Relay.config()
		cfg.LeaseTTL = time.Millisecond
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // past the new lifetime
		if _, err := leasedAgent(t, r, kind, "b", local, PortRange{x, x}); err != nil {
			t.Fatalf("b asking for port %d after the lease lifetime was cut to 1ms: %v", x, err)
		}
	})
}
