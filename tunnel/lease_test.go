package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/syncbuf"
)

func TestLeaseTableExpiry(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tb, err := loadLeases("", time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	away, live := leaseKey{"tok", "away"}, leaseKey{"tok", "live"}
	tb.take(away, 2000)
	tb.take(live, 2001)
	tb.release(away, t0)

	if l, ok := tb.get(away, t0.Add(59*time.Minute)); !ok || l.Port != 2000 {
		t.Fatalf("get before expiry = %v, %v; want port 2000", l, ok)
	}
	if k, ok := tb.holder(2000, t0.Add(59*time.Minute)); !ok || k != away {
		t.Fatalf("holder(2000) before expiry = %v, %v; want %v", k, ok, away)
	}
	if _, ok := tb.holder(2000, t0.Add(time.Hour)); ok {
		t.Fatal("holder(2000) at the lease's end still reports it held")
	}
	if _, ok := tb.get(away, t0.Add(time.Hour)); ok {
		t.Fatal("get at the lease's end still returns it")
	}
	if len(tb.m) != 1 || len(tb.port) != 1 {
		t.Fatalf("the expired lease is still in the table: %v %v", tb.m, tb.port)
	}
	// A live tunnel's lease does not run out.
	if l, ok := tb.get(live, t0.Add(1000*time.Hour)); !ok || l.Port != 2001 {
		t.Fatalf("live lease: get = %v, %v; want port 2001", l, ok)
	}
	// Taking a port another key held ends that key's lease.
	tb.take(away, 2001)
	if _, ok := tb.m[live]; ok {
		t.Fatal("two keys hold port 2001")
	}
	if k, _ := tb.holder(2001, t0); k != away || len(tb.port) != 1 {
		t.Fatalf("after take: holder(2001) = %v, ports %v", k, tb.port)
	}
}

// TestLeaseTableRename: two tokens that swap ids swap their leases, and a
// renamed token's lease takes the place of one left by a token gone under
// the id it takes; the port index follows.
func TestLeaseTableRename(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tb, err := loadLeases("", time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	tb.take(leaseKey{"a", "x"}, 2000)
	tb.take(leaseKey{"b", "x"}, 2001)
	tb.take(leaseKey{"c", "y"}, 2002)
	tb.take(leaseKey{"gone", "y"}, 2003) // a token gone; "c" takes its id
	tb.release(leaseKey{"gone", "y"}, t0)
	tb.rename(map[string]string{"a": "b", "b": "a", "c": "gone"})
	want := map[leaseKey]uint16{{"b", "x"}: 2000, {"a", "x"}: 2001, {"gone", "y"}: 2002}
	if len(tb.m) != len(want) || len(tb.port) != len(want) {
		t.Fatalf("after the renames: leases %v, ports %v; want %v", tb.m, tb.port, want)
	}
	for k, port := range want {
		if l, ok := tb.get(k, t0); !ok || l.Port != port {
			t.Errorf("lease %v = %v, %v; want port %d", k, l, ok, port)
		}
		if h, ok := tb.holder(port, t0); !ok || h != k {
			t.Errorf("holder(%d) = %v, %v; want %v", port, h, ok, k)
		}
	}
	if _, ok := tb.holder(2003, t0); ok {
		t.Error("port 2003, the gone token's, is still held")
	}
}

func TestOldestIdleLease(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tb, _ := loadLeases("", time.Hour, t0)
	for i, name := range []string{"newer", "older", "live", "oldest-elsewhere"} {
		tb.take(leaseKey{"tok", name}, uint16(3000+i))
	}
	tb.release(leaseKey{"tok", "newer"}, t0.Add(2*time.Minute))
	tb.release(leaseKey{"tok", "older"}, t0.Add(time.Minute))
	tb.release(leaseKey{"tok", "oldest-elsewhere"}, t0)
	k, ok := tb.oldestIdle(func(p uint16) bool { return p != 3003 })
	if !ok || k.Name != "older" {
		t.Fatalf("oldestIdle = %v, %v; want the lease idle longest among the allowed ports (older)", k, ok)
	}
	if _, ok := tb.oldestIdle(func(p uint16) bool { return p == 3002 }); ok {
		t.Fatal("oldestIdle offered a live tunnel's port")
	}
}

func writeLeaseFile(t *testing.T, v any) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "leases.json")
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	default:
		data, _ = json.Marshal(v)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadLeases(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	ttl := 24 * time.Hour
	file := leaseFile{Version: 1, Leases: []leaseEntry{
		{Token: "a", Name: "fresh", Port: 20001, Released: at(-time.Hour)},
		{Token: "a", Name: "expired", Port: 20002, Released: at(-ttl)},
		{Token: "a", Name: "live", Port: 20003},                            // live when the relay stopped
		{Token: "a", Name: "future", Port: 20004, Released: at(time.Hour)}, // a clock that went back
		{Token: "a", Name: "no-port", Port: 0},
		{Token: "a", Name: "bad name!", Port: 20005},
		{Token: "", Name: "no-token", Port: 20006},
		// Two keys on one port (a hand edit): the one used last stays,
		// whichever comes first in the file.
		{Token: "a", Name: "dup-old", Port: 20007, Released: at(-2 * time.Hour)},
		{Token: "b", Name: "dup-new", Port: 20007, Released: at(-time.Minute)},
		{Token: "b", Name: "dup2-new", Port: 20008, Released: at(-time.Minute)},
		{Token: "a", Name: "dup2-old", Port: 20008, Released: at(-2 * time.Hour)},
		// One key twice: its latest port stays.
		{Token: "a", Name: "twice", Port: 20009, Released: at(-2 * time.Hour)},
		{Token: "a", Name: "twice", Port: 20010, Released: at(-time.Minute)},
		{Token: "a", Name: "twice2", Port: 20012, Released: at(-time.Minute)},
		{Token: "a", Name: "twice2", Port: 20011, Released: at(-2 * time.Hour)},
	}}
	tb, err := loadLeases(writeLeaseFile(t, file), ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[leaseKey]lease{
		{"a", "fresh"}:    {20001, now.Add(-time.Hour)},
		{"a", "live"}:     {20003, now},
		{"a", "future"}:   {20004, now},
		{"b", "dup-new"}:  {20007, now.Add(-time.Minute)},
		{"b", "dup2-new"}: {20008, now.Add(-time.Minute)},
		{"a", "twice"}:    {20010, now.Add(-time.Minute)},
		{"a", "twice2"}:   {20012, now.Add(-time.Minute)},
	}
	got := map[leaseKey]lease{}
	for k, l := range tb.m {
		got[k] = *l
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("loaded\n%v\nwant\n%v", got, want)
	}
	if len(tb.port) != len(want) {
		t.Errorf("port index %v has %d entries, want %d", tb.port, len(tb.port), len(want))
	}
	for k, l := range tb.m {
		if tb.port[l.Port] != k {
			t.Errorf("port index says %d is %v's, the lease says %v's", l.Port, tb.port[l.Port], k)
		}
	}
	for p, k := range tb.port {
		if l := tb.m[k]; l == nil || l.Port != p {
			t.Errorf("port index says %d is %v's, but that key's lease is %v", p, k, l)
		}
	}
	// Every port the table indexes can be asked about without harm.
	for p := range tb.port {
		tb.holder(p, now.Add(2*ttl))
	}

	// No file yet: no leases, no error.
	if tb, err := loadLeases(filepath.Join(t.TempDir(), "none.json"), ttl, now); err != nil || len(tb.m) != 0 {
		t.Errorf("missing file: %v, %d leases; want none and no error", err, len(tb.m))
	}
}

func TestLoadLeasesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"corrupt", `{"version": 1, "leases": [{"token": "a", "na`, "reading port leases from %s: unexpected end of JSON input"},
		{"not json", "\x00\x01garbage", "reading port leases from %s: invalid character"},
		{"newer version", `{"version": 2, "leases": []}`, "reading port leases from %s: format version 2, this build reads 1"},
		{"no version", `{"leases": []}`, "reading port leases from %s: format version 0, this build reads 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLeaseFile(t, tc.data)
			tb, err := loadLeases(path, time.Hour, time.Now())
			if want := fmt.Sprintf(tc.want, path); err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %v, want one starting %q", err, want)
			}
			if tb == nil || len(tb.m) != 0 || tb.file != path {
				t.Fatalf("table %+v: want an empty one that saves to %s", tb, path)
			}
		})
	}
}

// A lease file relayd cannot read does not keep it down: the relay starts
// with no leases, and the file is set aside as .bad, not overwritten.
func TestNewRelayDamagedLeaseFile(t *testing.T) {
	for _, data := range []string{"{garbage", `{"version": 7, "leases": []}`} {
		path := writeLeaseFile(t, data)
		logs := &syncbuf.Buffer{}
		cfg := DefaultRelayConfig()
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret}}
		cfg.LeaseFile = path
		cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
		r, err := NewRelay(cfg)
		if err != nil {
			t.Fatalf("NewRelay with a damaged lease file: %v", err)
		}
		if len(r.leases.m) != 0 {
			t.Errorf("%q: the relay starts with leases %v", data, r.leases.m)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%q: %s is still there (%v); want it moved aside", data, path, err)
		}
		if kept, err := os.ReadFile(path + ".bad"); err != nil || string(kept) != data {
			t.Errorf("%q: %s.bad holds %q, %v; want the damaged file", data, path, kept, err)
		}
		want := `level=WARN msg="port leases could not be read; starting with none" err="reading port leases from ` + path
		if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "moved_to="+path+".bad") {
			t.Errorf("%q: log\n%s\nwant a warning %s… moved_to=%s.bad", data, logs, want, path)
		}
	}
}

// saveLeases replaces the file whole: a reader sees the old table or the
// new, never a mix, and no temporary file stays behind.
func TestSaveLeasesAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.json")
	now := time.Now()
	tables := make([][]byte, 2)
	for i := range tables {
		tb, _ := loadLeases(path, time.Hour, now)
		for p := range 200 * (i + 1) {
			tb.take(leaseKey{"tok", "t" + strconv.Itoa(p)}, uint16(20000+p))
		}
		tables[i] = tb.snapshot()
	}
	if err := saveLeases(path, tables[0]); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(path)
			if err == nil && !bytes.Equal(data, tables[0]) && !bytes.Equal(data, tables[1]) {
				err = fmt.Errorf("a reader saw %d bytes that are neither table", len(data))
			}
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
		}
	}()
	for i := range 40 {
		if err := saveLeases(path, tables[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d files, want leases.json alone", len(entries))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("leases.json: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	tb, err := loadLeases(path, time.Hour, now)
	if err != nil || len(tb.m) != 400 {
		t.Errorf("reading back: %v, %d leases; want 400", err, len(tb.m))
	}
	if err := saveLeases(filepath.Join(dir, "missing", "leases.json"), tables[0]); err == nil ||
		!strings.HasPrefix(err.Error(), "saving port leases: ") {
		t.Errorf("saving into a missing directory: %v, want an error starting \"saving port leases: \"", err)
	}
}

// leasedAgent runs an agent for one tunnel named name (asking for ports,
// if not zero) and returns it live, or the error that stopped it.
func leasedAgent(t *testing.T, r *testRelay, kind, name, local string, ports PortRange) (*liveAgent, error) {
	t.Helper()
	cfg := r.agentConfig(kind, local)
	cfg.Tunnels[0].Name, cfg.Tunnels[0].Ports = name, ports
	return liveOrRefused(t, cfg)
}

// liveOrRefused runs an agent for cfg's one tunnel and returns it live, or
// the error that stopped it.
func liveOrRefused(t *testing.T, cfg AgentConfig) (*liveAgent, error) {
	t.Helper()
	a := startAgent(t, cfg)
	select {
	case a.eps = <-a.ready:
		return a, nil
	case <-a.done:
		return nil, a.err
	case <-time.After(20 * time.Second):
		t.Fatalf("agent for %s neither live nor refused within 20 s", cfg.Tunnels[0].Name)
	}
	return nil, nil
}

// stopAgent stops a and waits until the relay has closed its tunnels.
func stopAgent(t *testing.T, r *testRelay, a *liveAgent) {
	t.Helper()
	a.Stop()
	waitFor(t, "the relay to close the tunnel", 10*time.Second, func() bool { return len(r.Relay.Tunnels()) == 0 })
}

// A token with max_tunnels = 2 holds at most two port leases: a third
// tunnel name, once the first two are away, takes the place of the lease
// idle the longest, and the other stays.
func TestLeasesCappedByMaxTunnels(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxTunnels = 2 })
		local := proctest.StartEcho(t, "m:")
		leased := func() string {
			r.Relay.mu.Lock()
			defer r.Relay.mu.Unlock()
			var names []string
			for k := range r.Relay.leases.m {
				names = append(names, k.Name)
			}
			slices.Sort(names)
			return strings.Join(names, ",")
		}
		ports := map[string]uint16{}
		for _, name := range []string{"a", "b"} {
			a, err := leasedAgent(t, r, kind, name, local, PortRange{})
			if err != nil {
				t.Fatal(err)
			}
			ports[name] = a.eps[0].Port
			stopAgent(t, r, a) // a's lease is released first, so idle longer
		}
		if _, err := leasedAgent(t, r, kind, "c", local, PortRange{}); err != nil {
			t.Fatal(err)
		}
		if got := leased(); got != "b,c" {
			t.Errorf("leases with a and b away and c open: %s; want b,c (a's, idle longest, dropped)", got)
		}
		if !regexp.MustCompile(`msg="the token holds max_tunnels port leases; dropping its longest-idle one for a new tunnel" .* name=c dropped=a port=` +
			strconv.Itoa(int(ports["a"])) + " max_tunnels=2\n").MatchString(r.Log.String()) {
			t.Errorf("the relay did not log the dropped lease:\n%s", r.Log)
		}
		// b comes back to its port; c's own lease stays its.
		b, err := leasedAgent(t, r, kind, "b", local, PortRange{})
		if err != nil || b.eps[0].Port != ports["b"] {
			t.Fatalf("b back: %v, %v; want its leased port %d", b, err, ports["b"])
		}
		if got := leased(); got != "b,c" {
			t.Errorf("leases with b and c open: %s; want b,c", got)
		}
	})
}

// A tunnel the relay turns down costs its token no lease: the lease the
// max_tunnels cap would have dropped for it stays, and no drop is logged.
func TestLeaseCapKeepsLeaseOnRefusal(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens[0].MaxTunnels = 1
			c.Tokens = append(c.Tokens, Token{ID: "other", Secret: oldSecret})
		})
		local := proctest.StartEcho(t, "k:")
		a, err := leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		ocfg := r.agentConfig(kind, local)
		ocfg.Token = oldSecret
		o, err := liveOrRefused(t, ocfg)
		if err != nil {
			t.Fatal(err)
		}
		taken := o.eps[0].Port
		if _, err := leasedAgent(t, r, kind, "c", local, PortRange{Low: taken, High: taken}); err == nil {
			t.Fatalf("c on port %d, which other's tunnel holds, was let in", taken)
		}
		r.Relay.mu.Lock()
		_, kept := r.Relay.leases.m[leaseKey{"test", "a"}]
		r.Relay.mu.Unlock()
		if !kept {
			t.Error("the refused tunnel c cost test its lease of a")
		}
		if strings.Contains(r.Log.String(), "dropping its longest-idle one") {
			t.Errorf("the relay logged a lease dropped for a tunnel it refused:\n%s", r.Log)
		}
	})
}

// An agent that stops because the relay refused one of its tunnels (what
// relayctl expose with several LOCALs does) leaves no lease behind for
// the tunnels it opened before that one: the user saw no address, and a
// run that fixes the refused LOCAL starts from the leases as they were.
// A new tunnel's lease is dropped, the lease the token's max_tunnels cap
// dropped for it is back, and a tunnel that had its lease keeps it.
func TestRefusedAgentLeavesNoLease(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens[0].Names = []string{"ok-*"}
			c.Tokens[0].MaxTunnels = 1
		})
		local := proctest.StartEcho(t, "u:")
		a, err := leasedAgent(t, r, kind, "ok-a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		before := leasesHeld(r.Relay)
		if len(before) != 1 || before["ok-a"].Port != a.eps[0].Port {
			t.Fatalf("leases %+v, want ok-a's alone, on %d", before, a.eps[0].Port)
		}

		refused := func(first string) {
			t.Helper()
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels = []TunnelSpec{{Name: first, Local: local}, {Name: "bad", Local: local}}
			want := fmt.Sprintf(`tunnel bad (%s): token "test" may not use the tunnel name "bad": its names rule allows only ok-*; pick a --name that matches (with several LOCALs, relayctl names each NAME-PORT)`, local)
			if err := startAgent(t, cfg).wait(t, 20*time.Second); !isRefused(err, CodeForbidden) || err.Error() != want {
				t.Fatalf("Run with %s and bad: %v, want the refusal %q", first, err, want)
			}
			waitFor(t, "the relay to close "+first, 10*time.Second, func() bool { return len(r.Relay.Tunnels()) == 0 })
		}

		// ok-b is new, and takes the place of ok-a's lease (max_tunnels
		// = 1); then bad is refused.
		refused("ok-b")
		waitFor(t, "the leases to be as before", 10*time.Second, func() bool { return reflect.DeepEqual(leasesHeld(r.Relay), before) })
		for _, want := range []string{
			`msg="the agent stopped on a refusal: dropping the port lease its tunnel took" .* token=test name=ok-b port=[0-9]+\n`,
			fmt.Sprintf(`msg="the agent stopped on a refusal: a port lease dropped for its tunnel is back" .* token=test name=ok-b was_token=test was=ok-a port=%d\n`, before["ok-a"].Port),
		} {
			if !regexp.MustCompile(want).MatchString(r.Log.String()) {
				t.Errorf("the relay did not log %s\n%s", want, r.Log)
			}
		}

		// ok-a had its lease before it was registered again: it keeps it.
		refused("ok-a")
		if got := leasesHeld(r.Relay); len(got) != 1 || got["ok-a"].Port != before["ok-a"].Port {
			t.Errorf("leases after ok-a and bad: %+v, want ok-a's alone, on %d", got, before["ok-a"].Port)
		}
	})
}

// A relay started again on the same lease file gives each (token, name) its
// port back, to a new agent process as much as to the old one.
func TestLeaseSurvivesRestart(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		leases := filepath.Join(t.TempDir(), "leases.json")
		withFile := func(c *RelayConfig) { c.LeaseFile = leases }
		local := proctest.StartEcho(t, "l:")
		r := startRelay(t, withFile)
		a, err := leasedAgent(t, r, kind, "keep", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		port := a.eps[0].Port
		stopAgent(t, r, a)
		r.Stop()
		data, _ := os.ReadFile(leases)
		var f leaseFile
		if err := json.Unmarshal(data, &f); err != nil || len(f.Leases) != 1 || f.Leases[0].Port != port ||
			f.Leases[0].Name != "keep" || f.Leases[0].Token != "test" || f.Leases[0].Released == nil {
			t.Fatalf("lease file after stop: %s (%v); want one released lease of test/keep on %d", data, err, port)
		}

		r = startRelay(t, withFile)
		a, err = leasedAgent(t, r, kind, "keep", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		if a.eps[0].Port != port {
			t.Fatalf("after the restart the tunnel got port %d, want its lease's %d", a.eps[0].Port, port)
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Fatal(err)
		}
	})
}

// twoFreePorts returns two loopback ports nothing listens on, lower first.
func twoFreePorts(t *testing.T) (uint16, uint16) {
	t.Helper()
	port := func() uint16 {
		_, p, _ := strings.Cut(proctest.ClosedPort(t), ":")
		n, _ := strconv.Atoi(p)
		return uint16(n)
	}
	x := port()
	for {
		if y := port(); y != x {
			return min(x, y), max(x, y)
		}
	}
}

// With two ports: a leased port is not given to another name while a free
// one remains; once every port is leased, the lease idle longest is reused;
// once every port is live, the relay says so.
func TestLeasedPortsAndReuse(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, y := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}, {y, y}} })
		local := proctest.StartEcho(t, "u:")
		run := func(name string, ports PortRange) (*liveAgent, error) {
			return leasedAgent(t, r, kind, name, local, ports)
		}
		a, err := run("a", PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		pa := a.eps[0].Port
		stopAgent(t, r, a)
		b, err := run("b", PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		pb := b.eps[0].Port
		if pb == pa {
			t.Fatalf("b got port %d, which is leased to a, while %d was free", pb, x+y-pa)
		}
		stopAgent(t, r, b)

		// Asking for a's port by number: refused while the lease lasts.
		_, err = run("c", PortRange{pa, pa})
		if !isRefused(err, CodePortTaken) || !strings.Contains(err.Error(), fmt.Sprintf("port %d is reserved for another tunnel until ", pa)) ||
			!strings.HasSuffix(err.Error(), ": choose another --port, or leave it out") {
			t.Fatalf("c asking for a's port: %v; want a port-taken refusal saying it is reserved until when", err)
		}

		// Every port leased: c takes a's, idle longer than b's; d takes b's.
		c, err := run("c", PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		if c.eps[0].Port != pa {
			t.Errorf("c got port %d; want %d, a's lease, idle longest", c.eps[0].Port, pa)
		}
		if want := fmt.Sprintf(`msg="reusing the port of the longest-idle lease" port=%d was=a was_token=test`, pa); !strings.Contains(r.Log.String(), want) {
			t.Errorf("relay log does not say %s", want)
		}
		d, err := run("d", PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		if d.eps[0].Port != pb {
			t.Errorf("d got port %d; want %d, b's lease", d.eps[0].Port, pb)
		}
		if _, err := visit(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(pa))), 2); err != nil {
			t.Errorf("c's tunnel: %v", err)
		}

		// Every port live: a coming back is told, not given c's port, and
		// what to do.
		_, err = run("a", PortRange{})
		want := fmt.Sprintf("tunnel a (%s): every port it may use (%s) is in use: try again once one is free, or ask the relay's operator for more ports", local, r.Relay.config().Ports)
		if !isRefused(err, CodeNoPortFree) || err.Error() != want {
			t.Fatalf("a with every port live: %v; want %q", err, want)
		}
		_, err = run("a", PortRange{x, y})
		want = fmt.Sprintf("tunnel a (%s): every port it may use (%s) is in use: ask for a wider --port range, or leave --port out", local, r.Relay.config().Ports.Intersect(PortRange{x, y}))
		if !isRefused(err, CodeNoPortFree) || err.Error() != want {
			t.Fatalf("a asking for %d-%d with every port live: %v; want %q", x, y, err, want)
		}
	})
}

// An expired lease frees its port: another name may ask for it by number.
func TestLeaseExpiryFreesPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, _ := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}}; c.LeaseTTL = time.Millisecond })
		local := proctest.StartEcho(t, "e:")
		a, err := leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		time.Sleep(5 * time.Millisecond) // past the lease's lifetime
		b, err := leasedAgent(t, r, kind, "b", local, PortRange{x, x})
		if err != nil {
			t.Fatalf("asking for port %d after a's lease expired: %v", x, err)
		}
		if b.eps[0].Port != x {
			t.Fatalf("b got %d, want %d", b.eps[0].Port, x)
		}
		if strings.Contains(r.Log.String(), "reusing the port of the longest-idle lease") {
			t.Error("the relay reused an expired lease's port as if it were still leased")
		}
	})
}
