package tunnel

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/transport"
)

// noLeaseAgent is leasedAgent for a tunnel without a lease.
func noLeaseAgent(t *testing.T, r *testRelay, kind, name, local string) (*liveAgent, error) {
	t.Helper()
	cfg := r.agentConfig(kind, local)
	cfg.Tunnels[0].Name, cfg.Tunnels[0].NoLease = name, true
	return liveOrRefused(t, cfg)
}

// leasesHeld is the relay's lease table, as name → lease.
func leasesHeld(r *Relay) map[string]lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]lease{}
	for k, l := range r.leases.m {
		m[k.Name] = *l
	}
	return m
}

// A tunnel without a lease leaves none behind, however often it comes and
// goes; it takes the port no lease holds, even one of its own name, and
// when only an idle lease's port is left it is refused rather than take
// it.
func TestNoLeaseLeavesNoLease(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, y := twoFreePorts(t)
		file := filepath.Join(t.TempDir(), "leases.json")
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}, {y, y}}; c.LeaseFile = file })
		local := proctest.StartEcho(t, "n:")
		keep, err := leasedAgent(t, r, kind, "keep", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		pk := keep.eps[0].Port
		stopAgent(t, r, keep)
		before := leasesHeld(r.Relay)
		free := x + y - pk

		for i := range 3 {
			name := fmt.Sprintf("bench-%d", i)
			a, err := noLeaseAgent(t, r, kind, name, local)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := a.eps[0].Port; got != free {
				t.Errorf("%s got port %d; want %d, the one no lease holds", name, got, free)
			}
			if _, err := visit(a.Public(0), 2); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			stopAgent(t, r, a)
		}
		// Not even keep's own name takes keep's port: its clients know it.
		a, err := noLeaseAgent(t, r, kind, "keep", local)
		if err != nil {
			t.Fatalf("keep without a lease: %v", err)
		}
		if got := a.eps[0].Port; got != free {
			t.Errorf("keep without a lease got port %d; want %d, not its lease's", got, free)
		}
		stopAgent(t, r, a)
		if after := leasesHeld(r.Relay); len(after) != 1 || after["keep"] != before["keep"] {
			t.Errorf("leases after four tunnels without one: %v; want keep's alone, as before: %v", after, before)
		}
		if re := regexp.MustCompile(`msg="tunnel open" .*name=bench-0 port=\d+ protos=tcp lease=false`); !re.MatchString(r.Log.String()) {
			t.Errorf("relay log has no line matching %s", re)
		}

		// The free port taken by a live tunnel: only keep's idle one is left.
		other, err := leasedAgent(t, r, kind, "other", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = noLeaseAgent(t, r, kind, "bench-full", local)
		want := fmt.Sprintf("tunnel bench-full (%s): every port it may use (%s) is in use or leased to a tunnel that is away, and a tunnel without a lease takes none of those",
			local, r.Relay.config().Ports)
		if !isRefused(err, CodeNoPortFree) || err.Error() != want {
			t.Fatalf("without a lease, with keep's idle port alone left: %v; want %q", err, want)
		}
		if got := leasesHeld(r.Relay)["keep"]; got != before["keep"] {
			t.Errorf("keep's lease became %+v, was %+v", got, before["keep"])
		}
		other.Stop()
	})
}

// A tunnel without a lease shares its port with no other agent: it joins
// no tunnel of the same name, with a lease or without, and none joins it.
func TestNoLeaseSharesNoPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.StartEcho(t, "s:")
		if _, err := leasedAgent(t, r, kind, "web", local, PortRange{}); err != nil {
			t.Fatal(err)
		}
		_, err := noLeaseAgent(t, r, kind, "web", local)
		want := fmt.Sprintf("tunnel web (%s): tunnel web is already open for another agent of this token, and a tunnel without a lease shares its port with none: pick another --name", local)
		if !isRefused(err, CodePortTaken) || err.Error() != want {
			t.Errorf("without a lease, joining a tunnel with one: %v; want %q", err, want)
		}

		if _, err := noLeaseAgent(t, r, kind, "solo", local); err != nil {
			t.Fatal(err)
		}
		_, err = noLeaseAgent(t, r, kind, "solo", local)
		want = fmt.Sprintf("tunnel solo (%s): tunnel solo is already open for another agent of this token, and a tunnel without a lease shares its port with none: pick another --name", local)
		if !isRefused(err, CodePortTaken) || err.Error() != want {
			t.Errorf("without a lease, joining another without one: %v; want %q", err, want)
		}
		_, err = leasedAgent(t, r, kind, "solo", local, PortRange{})
		want = fmt.Sprintf("tunnel solo (%s): tunnel solo is open without a lease for another agent of this token (relayctl bench), and shares its port with none: pick another --name, or try again once it ends", local)
		if !isRefused(err, CodePortTaken) || err.Error() != want {
			t.Errorf("with a lease, joining a tunnel without one: %v; want %q", err, want)
		}
	})
}

// A relay older than the no-lease bit refuses it as a protocol set it
// does not carry; the agent says so and registers again without it.
func TestNoLeaseOnAnOlderRelay(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		cfg, regs := olderRelay(t, kind)
		cfg.Tunnels[0].NoLease = true
		a, err := runAgent(t, cfg)
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		if len(a.Endpoints) != 1 || a.Endpoints[0].Port != 12345 {
			t.Fatalf("endpoints %+v, want port 12345", a.Endpoints)
		}
		// The bit LIMIT's goes first (pace_test.go), then no lease's.
		if got := registerBits(regs, 3); got != "paces+no-lease no-lease plain" {
			t.Errorf("REGISTERs asked %s; want paces+no-lease, no-lease, then plain", got)
		}
		if want := `level=WARN msg="the relay is older than this agent and keeps a lease for every tunnel: this one will hold its port after it closes"`; !strings.Contains(a.Log.String(), want) {
			t.Errorf("agent log lacks %s:\n%s", want, a.Log)
		}
	})
}

// olderRelay is a relay from before REGISTER's no-lease and paces bits: it
// refuses a REGISTER with either as an unsupported protocol set (relay.go's
// protocol check, before the bits existed), and grants the rest port 12345.
// Every REGISTER it reads goes to regs.
func olderRelay(t *testing.T, kind string) (AgentConfig, chan Register) {
	regs := make(chan Register, 8)
	cfg := fakeRelay(t, kind, func(ctl transport.Stream) {
		greet(ctl, "relayd 0.9")
		for {
			m, err := ReadMessage(ctl)
			if err != nil {
				return
			}
			reg, ok := m.(*Register)
			if !ok {
				continue
			}
			regs <- *reg
			if reg.NoLease || reg.Paces {
				wire := reg.Protos
				if reg.NoLease {
					wire |= flagNoLease
				}
				if reg.Paces {
					wire |= flagPaces
				}
				WriteMessage(ctl, &Error{Request: reg.Request, Code: CodeUnsupported,
					Text: fmt.Sprintf("protocol set %#x is not one this relay carries (tcp, udp, or both)", wire)})
				continue
			}
			WriteMessage(ctl, &Registered{Request: reg.Request, Tunnel: 1, Protos: reg.Protos, Port: 12345})
		}
	})
	return cfg, regs
}

// registerBits names the bits of the first n REGISTERs on regs.
func registerBits(regs chan Register, n int) string {
	var out []string
	for range n {
		select {
		case reg := <-regs:
			var bits []string
			if reg.Paces {
				bits = append(bits, "paces")
			}
			if reg.NoLease {
				bits = append(bits, "no-lease")
			}
			if len(bits) == 0 {
				bits = append(bits, "plain")
			}
			out = append(out, strings.Join(bits, "+"))
		case <-time.After(5 * time.Second):
			out = append(out, "(none)")
		}
	}
	return strings.Join(out, " ")
}

// An agent whose session is lost comes back to its tunnel without a lease
// on the same port, within the rejoin window: that is its own tunnel, not
// another agent's.
func TestNoLeaseRejoins(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "j:"))
		cfg.Tunnels[0].NoLease = true
		fastRetry(&cfg)
		a := liveAgentUp(t, cfg)
		closeAgentSessions(r.Relay)
		waitFor(t, "the agent to reconnect", 20*time.Second, func() bool {
			return a.Status().Reconnects == 1 && a.connected()
		})
		if got := a.Status().Tunnels[0].Public; got != a.eps[0].URL() {
			t.Errorf("after the reconnect the tunnel is %s, want %s", got, a.eps[0].URL())
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Error(err)
		}
		if n := len(leasesHeld(r.Relay)); n != 0 {
			t.Errorf("the relay holds %d leases, want none", n)
		}
	})
}
