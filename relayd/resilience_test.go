package main

// Tests of resilience with real processes (issue 4): agents and relays
// killed with SIGKILL and started again, a group losing a member under load,
// SIGTERM during transfers, and SIGHUP reloads.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// transports are the --transport values every process test runs over.
var transports = []string{"quic", "tcp"}

func forTransports(t *testing.T, body func(t *testing.T, kind string)) {
	t.Helper()
	t.Parallel()
	for _, kind := range transports {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			body(t, kind)
		})
	}
}

// exposeArgs are relayctl expose's arguments for local through r with
// secret over kind, plus more.
func exposeArgs(r *pt.Relayd, kind, secret, local string, more ...string) []string {
	return append([]string{local, "--relay", r.Addr, "--token", secret, "--fingerprint", r.FP, "--transport", kind}, more...)
}

// An agent killed with SIGKILL and started again with the same command gets
// the same port: the lease belongs to the token and the name derived from
// the local address, and the stale session does not stand in the way.
func TestAgentKilledComesBackOnItsPort(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, pt.TokensTOML)
		local := pt.StartEcho(t, "k9:")
		args := exposeArgs(r, kind, pt.TestSecret, local)
		p, urls := pt.StartExpose(t, 1, nil, args...)
		pt.CheckEcho(t, urls[0], "k9:", 1024)
		p.Kill()
		_, again := pt.StartExpose(t, 1, nil, args...)
		if again[0] != urls[0] {
			t.Fatalf("after kill -9 and a new start the tunnel is %s, want %s", again[0], urls[0])
		}
		pt.CheckEcho(t, again[0], "k9:", 1024)
	})
}

// relayd killed with SIGKILL and started again (same key, address and
// state_dir): the agent returns by itself, on the same port, without
// printing a new address. Over QUIC it learns of the restart from the new
// relayd's stateless reset (derived from the relay key) at its next
// keepalive; over TCP from the closed connection, then its backoff.
func TestRelaydKilledAgentReturns(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelaydPinned(t, nil, pt.TokensTOML)
		local := pt.StartEcho(t, "rk:")
		agent, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		pt.CheckEcho(t, urls[0], "rk:", 1024)
		// The lease is written a moment after the tunnel opens (writes are
		// batched); a relay killed before that forgets the port.
		waitLeaseSaved(t, r, urls[0])
		// Let the session fall idle (its acknowledgements sent): from here
		// on the agent sends only its keepalive.
		time.Sleep(300 * time.Millisecond)
		r.Kill()
		r.Restart(t)
		start := time.Now()
		agent.WaitFor(&agent.Stderr, regexp.MustCompile(`msg=reconnected`), 40*time.Second)
		t.Logf("%s: the agent was back %v after relayd restarted", kind, time.Since(start).Round(time.Millisecond))
		if kind == "quic" && !strings.Contains(agent.Stderr.String(), "received a stateless reset") {
			t.Errorf("the QUIC agent did not learn of the restart from a stateless reset:\n%s", agent.Stderr.String())
		}
		pt.CheckEcho(t, urls[0], "rk:", 1024)
		if out := agent.Stdout.String(); out != urls[0]+"\n" {
			t.Errorf("relayctl's stdout is %q; want only the address it printed at first", out)
		}
	})
}

// waitLeaseSaved waits until relayd's lease file holds the port of url.
func waitLeaseSaved(t *testing.T, r *pt.Relayd, url string) {
	t.Helper()
	_, port, _ := strings.Cut(pt.HostPort(t, url), ":")
	want := regexp.MustCompile(`"port": ` + port + `\b`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(filepath.Join(r.StateDir, "leases.json"))
		if want.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/leases.json does not hold port %s after 10 s:\n%s", r.StateDir, port, data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Three agents serve one name; one is killed with SIGKILL while new
// clients keep coming: no client that arrives after the kill fails.
func TestGroupMemberKilled(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, pt.TokensTOML)
		var members []*pt.Proc
		var url string
		for i := range 3 {
			local := pt.StartEcho(t, fmt.Sprintf("m%d:", i))
			p, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local, "--name", "grp")...)
			if i > 0 && urls[0] != url {
				t.Fatalf("member %d got %s, want the group's %s", i, urls[0], url)
			}
			url = urls[0]
			members = append(members, p)
		}

		var (
			mu     sync.Mutex
			tags   = map[string]int{}
			fails  []error
			early  int
			marked atomic.Int64
			ok     atomic.Int64
			stop   = make(chan struct{})
			wg     sync.WaitGroup
		)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now().UnixNano()
					tag, err := pt.Visit(url, 3, 512)
					mu.Lock()
					switch m := marked.Load(); {
					case err == nil:
						tags[tag]++
						ok.Add(1)
					case m == 0 || start < m:
						early++ // in flight on the member when it died
					default:
						fails = append(fails, err)
					}
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
		waitOK := func(n int64, what string) {
			t.Helper()
			target := ok.Load() + n
			deadline := time.Now().Add(60 * time.Second)
			for ok.Load() < target {
				mu.Lock()
				failed := len(fails) > 0
				mu.Unlock()
				if failed {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("timed out waiting for %s", what)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		waitOK(15, "clients before the kill")
		members[0].Kill()
		marked.Store(time.Now().UnixNano())
		waitOK(40, "clients after the kill")
		close(stop)
		wg.Wait()
		t.Logf("%s: clients per member %v; %d in flight on the killed member", kind, tags, early)
		for i, err := range fails {
			if i < 5 {
				t.Errorf("a client after the kill failed: %v", err)
			}
		}
		if len(fails) > 0 {
			t.Fatalf("%d clients that came after the kill failed", len(fails))
		}
		if tags["m0:"] == 0 || tags["m1:"] == 0 || tags["m2:"] == 0 {
			t.Errorf("clients per member %v: want every member to have had some", tags)
		}
		if kind == "quic" && early == 0 && !regexp.MustCompile(`msg="agent did not answer (a new client's stream|a probe);`).MatchString(r.Stderr.String()) {
			// kill -9 leaves a QUIC session silent: with no client of its
			// own left (least connections would otherwise keep new ones
			// away), the killed member was offered clients, and the relay
			// must have marked it suspect for a stream left unanswered (or
			// a probe).
			t.Error("relayd never marked the killed member suspect")
		}
	})
}

// SIGTERM during transfers: relayd refuses new clients at once, every
// transfer in flight completes byte-identical, and relayd exits 0.
func TestSIGTERMDrainsTransfers(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, "drain_timeout = \"60s\"\n\n"+pt.TokensTOML)
		local := pt.StartEcho(t, "tr:")
		agent, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		var xs []*pt.Transfer
		for i := range 4 {
			xs = append(xs, pt.StartTransfer(t, urls[0], "tr:", (1<<20)+i*7919))
		}
		r.Signal(syscall.SIGTERM)
		r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="stopping: draining clients \(signal again to stop now\)" signal=terminated drain_timeout=1m0s`), pt.StartTimeout)
		waitRefused(t, urls[0])
		agent.WaitFor(&agent.Stderr, regexp.MustCompile(`the relay is shutting down: clients in flight continue`), pt.StartTimeout)
		if r.Exited() {
			t.Fatal("relayd exited with transfers in flight")
		}
		for _, x := range xs {
			x.Resume()
		}
		for i, x := range xs {
			if err := x.Done(30 * time.Second); err != nil {
				t.Errorf("transfer %d across SIGTERM: %v", i, err)
			}
		}
		if code := r.Wait(pt.ExitTimeout); code != 0 {
			t.Errorf("relayd exited %d after draining, want 0", code)
		}
		if errOut := r.Stderr.String(); !strings.Contains(errOut, "relayd stopped") || strings.Contains(errOut, "drain cut short") {
			t.Errorf("relayd's log should end with \"relayd stopped\", without a cut-short drain:\n%s", errOut)
		}
	})
}

// waitRefused waits until nothing listens on url's port.
func waitRefused(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !pt.Refused(url) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts clients 10 s into the drain", url)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A second SIGTERM stops relayd at once, cutting what is in flight.
func TestSecondSignalStops(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, "drain_timeout = \"10m\"\n\n"+pt.TokensTOML)
		local := pt.StartEcho(t, "ss:")
		_, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		x := pt.StartTransfer(t, urls[0], "ss:", 64<<10)
		r.Signal(syscall.SIGTERM)
		r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="stopping: draining clients`), pt.StartTimeout)
		r.Signal(syscall.SIGTERM)
		// ExitTimeout (10 s) is far below the 10 min drain_timeout.
		if code := r.Wait(pt.ExitTimeout); code != 0 {
			t.Errorf("relayd exited %d after a second signal, want 0", code)
		}
		for _, want := range []string{`msg="second signal: stopping now" signal=terminated`, `msg="relayd stopped"`} {
			if !strings.Contains(r.Stderr.String(), want) {
				t.Errorf("relayd's log does not say %s", want)
			}
		}
		if err := x.Done(20 * time.Second); err == nil {
			t.Error("the transfer in flight completed, though relayd stopped at once")
		}
	})
}

const (
	oldSecret = "old-secret-0123456789"
	newSecret = "new-secret-0123456789"
)

func tokenTOML(id, secret string) string {
	return fmt.Sprintf("[[tokens]]\nid = %q\nsecret = %q\n\n", id, secret)
}

// A SIGHUP whose token ports rule takes a tunnel's port away moves the
// tunnel without a reconnect: relayd logs tunnels_moved=1, relayctl prints
// the new address on stdout and logs the move, a transfer on the old port
// finishes, the old port refuses new clients and the new one serves.
func TestSIGHUPMovesTunnel(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, pt.TokensTOML)
		local := pt.StartEcho(t, "mv:")
		p, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		x := pt.StartTransfer(t, urls[0], "mv:", 256<<10)
		port, _ := strconv.Atoi(pt.URLRE.FindStringSubmatch(urls[0])[1])
		r.TakePortAway(t, port)
		r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded" .*changed=tokens.test.ports .*tunnels_moved=1 tunnels_closed=0 sessions_closed=0`), pt.StartTimeout)
		moved := p.WaitFor(&p.Stdout, regexp.MustCompile(`^[^\n]*\n([^\n]*)\n`), pt.StartTimeout)[1]
		if moved == urls[0] || !pt.URLRE.MatchString(moved) {
			t.Fatalf("relayctl printed %q after the move from %s; want another tcp:// address", moved, urls[0])
		}
		p.WaitFor(&p.Stderr, regexp.MustCompile(`level=WARN msg="the relay moved a tunnel to another public port; clients connected on the old one carry on" .*was=`+
			regexp.QuoteMeta(urls[0])+` now=`+regexp.QuoteMeta(moved)+` reason="port \d+ is no longer among the ports its token \\"test\\" may use"`), pt.StartTimeout)
		x.Resume()
		if err := x.Done(30 * time.Second); err != nil {
			t.Errorf("the transfer on the old port: %v", err)
		}
		if !pt.Refused(urls[0]) {
			t.Errorf("the old address %s still takes clients", urls[0])
		}
		pt.CheckEcho(t, moved, "mv:", 1024)
		if strings.Contains(p.Stderr.String(), "reconnect") {
			t.Errorf("relayctl reconnected across the move:\n%s", p.Stderr.String())
		}
	})
}

// SIGHUP re-reads relay.toml: an added token works at once, while the
// other token's tunnel and its transfer in flight carry on, though that
// token's limits and the relay's changed (in place); the reload's log line
// names what changed; a revoked
// token's relayctl exits 3 with a line that says so; an invalid file leaves
// relayd running on the old config, with the file and line in the log.
func TestSIGHUPReload(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, pt.TokensTOML+"\n"+tokenTOML("old", oldSecret))
		local := pt.StartEcho(t, "hu:")
		keep, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local, "--name", "keep")...)
		x := pt.StartTransfer(t, urls[0], "hu:", 256<<10)
		old, _ := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, oldSecret, local, "--name", "old")...)
		if _, errOut, code := pt.Run(t, nil, pt.RelayctlBin, append([]string{"expose"}, exposeArgs(r, kind, newSecret, local)...)...); code != 3 {
			t.Fatalf("a token not yet in relay.toml: exit %d, want 3\n%s", code, errOut)
		}

		reloads := 0
		reload := func() {
			t.Helper()
			reloads++
			r.Signal(syscall.SIGHUP)
			want := regexp.MustCompile(fmt.Sprintf(`(?s)(?:(?:msg="relay.toml reloaded"|msg="reload failed; the running configuration stays").*){%d}`, reloads))
			r.WaitFor(&r.Stderr, want, pt.StartTimeout)
		}
		// The kept token's limits change too: in place, its tunnel and
		// transfer carry on.
		r.RewriteConfig(t, "[limits]\nper_ip_connections = 20\n\n"+pt.TokensTOML+"max_connections = 50\n\n"+tokenTOML("new", newSecret))
		reload()
		want := `msg="relay.toml reloaded" file=` + r.Config + ` changed=limits.per_ip_connections,tokens.test.max_connections tokens_added=new tokens_removed=old tokens_changed=test tokens_renamed="" tunnels_moved=0 tunnels_closed=1 sessions_closed=1`
		if !strings.Contains(r.Stderr.String(), want) {
			t.Fatalf("relayd did not log %s:\n%s", want, r.Stderr.String())
		}

		// Revoked.
		if code := old.Wait(20 * time.Second); code != 3 {
			t.Errorf("the revoked token's relayctl exited %d, want 3", code)
		}
		want = `relayctl: the relay refused: token "old" was revoked on the relay: ask the relay's operator for a new one`
		if got := pt.LastLine(old.Stderr.String()); got != want {
			t.Errorf("the revoked token's relayctl ends with\n%s\nwant\n%s", got, want)
		}
		// Added.
		_, newURLs := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, newSecret, local, "--name", "new")...)
		pt.CheckEcho(t, newURLs[0], "hu:", 1024)
		// Untouched.
		x.Resume()
		if err := x.Done(30 * time.Second); err != nil {
			t.Errorf("the other token's transfer across the reload: %v", err)
		}
		pt.CheckEcho(t, urls[0], "hu:", 1024)
		if strings.Contains(keep.Stderr.String(), "reconnecting") {
			t.Errorf("the kept token's relayctl reconnected across the reload:\n%s", keep.Stderr.String())
		}

		// Invalid: the error names the file and line; nothing changes.
		r.RewriteConfig(t, "bogus_key = 1\n\n"+pt.TokensTOML)
		reload()
		line := regexp.MustCompile(`level=ERROR msg="reload failed; the running configuration stays" file=(\S+) err="(\S+?):(\d+): relay\.bogus_key: unknown key`).FindStringSubmatch(r.Stderr.String())
		if line == nil || line[1] != r.Config || line[2] != r.Config || line[3] != "5" {
			t.Errorf("relayd's log does not say the reload failed at %s:5, relay.bogus_key:\n%s", r.Config, r.Stderr.String())
		}
		if r.Exited() {
			t.Fatal("relayd exited on an invalid relay.toml")
		}
		pt.CheckEcho(t, urls[0], "hu:", 1024)
		pt.CheckEcho(t, newURLs[0], "hu:", 1024)
		_, more := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, newSecret, local, "--name", "new2")...)
		pt.CheckEcho(t, more[0], "hu:", 1024)
		if strings.Contains(keep.Stderr.String(), "reconnect") {
			t.Errorf("the untouched tunnel's relayctl reconnected:\n%s", keep.Stderr.String())
		}
	})
}
