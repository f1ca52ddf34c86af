package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestRestartOnly sorts relay.toml's keys into those a reload applies and
// those that wait for a restart, which SIGHUP warns about.
func TestRestartOnly(t *testing.T) {
	const base = "[relay]\n"
	started, err := ParseConfig("relay.toml", base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		text       string
		overridden []string
		want       []string
	}{
		{text: ""},
		{text: `listen = "127.0.0.1:0"`, want: []string{"relay.listen"}},
		{text: `state_dir = "/nonexistent/relayd"`, want: []string{"relay.state_dir"}},
		{text: `handshake_timeout = "20s"`, want: []string{"relay.handshake_timeout"}},
		{text: `idle_timeout = "20s"`, want: []string{"relay.idle_timeout"}},
		{text: `keepalive = "2s"`, want: []string{"relay.keepalive"}},
		{text: `max_handshakes = 8`, want: []string{"relay.max_handshakes"}},
		{text: "[limits]\nmax_pending_sessions = 8", want: []string{"limits.max_pending_sessions"}},
		{text: "[log]\nlevel = \"debug\"", want: []string{"log.level"}},
		{text: "[log]\nlevel = \"debug\"", overridden: []string{"log.level"}},
		{text: "[log]\nformat = \"json\"", want: []string{"log.format"}},
		{text: "[log]\nformat = \"json\"", overridden: []string{"log.level", "log.format"}},
		{text: "[admin]\nlisten = \"[::1]:0\"", want: []string{"admin.listen"}},
		{text: "[admin]\ntoken = \"admin-token-0123456789\"", want: []string{"admin.token"}},
		{text: `handshake_timeout = "20s"` + "\n[admin]\nlisten = \"\"", want: []string{"relay.handshake_timeout", "admin.listen"}},
		// A reload applies these.
		{text: `ports = "20000-20009"`},
		{text: `public_host = "relay.example.com"`},
		{text: `lease_duration = "1h"`},
		{text: `rejoin_window = "0s"`},
		{text: `drain_timeout = "1s"`},
		{text: `udp_flow_timeout = "10s"`},
		{text: "[limits]\nper_ip_connections = 4\nmax_udp_flows = 8"},
		{text: "[[tokens]]\nid = \"a\"\nsecret = \"token-secret-0123456789\""},
	} {
		next, err := ParseConfig("relay.toml", base+tt.text+"\n")
		if err != nil {
			t.Fatalf("%q: %v", tt.text, err)
		}
		if got := restartOnly(started, next, tt.overridden); !slices.Equal(got, tt.want) {
			t.Errorf("%q, overridden %q: restartOnly = %q, want %q", tt.text, tt.overridden, got, tt.want)
		}
	}
}

// TestChangedKeys names each key a reload sees changed, [limits]' inline
// client keys and durations included, and leaves [[tokens]] to the
// relay's reload result.
func TestChangedKeys(t *testing.T) {
	base, err := ParseConfig("relay.toml", "[relay]\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		text string
		want []string
	}{
		{"[relay]\n", nil},
		{"[relay]\nrejoin_window = \"1s\"\nports = \"20000-20009\"\n", []string{"relay.ports", "relay.rejoin_window"}},
		{"[limits]\nper_ip_connections = 4\nallow = [\"10.0.0.0/8\"]\nmax_udp_flows = 8\n", []string{"limits.per_ip_connections", "limits.allow", "limits.max_udp_flows"}},
		{"[log]\nlevel = \"debug\"\n[admin]\nlisten = \"\"\n", []string{"log.level", "admin.listen"}},
		{"[[tokens]]\nid = \"a\"\nsecret = \"token-secret-0123456789\"\nmax_connections = 3\n", nil},
	} {
		next, err := ParseConfig("relay.toml", tt.text)
		if err != nil {
			t.Fatalf("%q: %v", tt.text, err)
		}
		if got := changedKeys(base, next); !slices.Equal(got, tt.want) {
			t.Errorf("%q: changedKeys = %q, want %q", tt.text, got, tt.want)
		}
	}
}

// TestChangedTokenKeys: a token in both configs (by id) has its changed
// keys named as tokens.ID.key, the secret too when only its secret_file's
// content changed.
func TestChangedTokenKeys(t *testing.T) {
	const tok = "[[tokens]]\nid = \"a\"\n"
	base, err := ParseConfig("relay.toml", tok+"secret = \"token-secret-0123456789\"\nmax_connections = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	next, err := ParseConfig("relay.toml", tok+"secret = \"other-secret-0123456789\"\nnames = [\"g-*\"]\nmax_connections = 3\nmax_tunnels = 2\n\n"+
		"[[tokens]]\nid = \"b\"\nsecret = \"b-secret-0123456789abc\"\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tokens.a.secret", "tokens.a.names", "tokens.a.max_tunnels", "tokens.a.max_connections"}
	if got := changedKeys(base, next); !slices.Equal(got, want) {
		t.Errorf("changedKeys = %q, want %q", got, want)
	}
	// Renamed (same secret, new id): named by its new id.
	renamed, err := ParseConfig("relay.toml", "[[tokens]]\nid = \"c\"\nsecret = \"token-secret-0123456789\"\nmax_connections = 2\n")
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"tokens.c.id", "tokens.c.max_connections"}
	if got := changedKeys(base, renamed); !slices.Equal(got, want) {
		t.Errorf("changedKeys for a rename = %q, want %q", got, want)
	}

	// Two tokens swapping ids are two renames, as the relay takes them,
	// not two new secrets.
	two := "[[tokens]]\nid = \"a\"\nsecret = \"token-secret-0123456789\"\n[[tokens]]\nid = \"b\"\nsecret = \"b-secret-0123456789abc\"\n"
	pair, err := ParseConfig("relay.toml", two)
	if err != nil {
		t.Fatal(err)
	}
	swapped, err := ParseConfig("relay.toml", strings.NewReplacer(`"a"`, `"b"`, `"b"`, `"a"`).Replace(two))
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"tokens.b.id", "tokens.a.id"}
	if got := changedKeys(pair, swapped); !slices.Equal(got, want) {
		t.Errorf("changedKeys for swapped ids = %q, want %q", got, want)
	}

	dir := t.TempDir()
	file, secret := filepath.Join(dir, "relay.toml"), filepath.Join(dir, "a.secret")
	os.WriteFile(file, []byte(tok+"secret_file = \"a.secret\"\n"), 0o600)
	os.WriteFile(secret, []byte("first-secret-0123456789"), 0o600)
	before, err := LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(secret, []byte("second-secret-0123456789"), 0o600)
	after, err := LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedKeys(before, after); !slices.Equal(got, []string{"tokens.a.secret"}) {
		t.Errorf("a new secret_file content: changedKeys = %q, want [tokens.a.secret]", got)
	}

	// Where the secret is written is no change; its value is, wherever.
	os.WriteFile(filepath.Join(dir, "b.secret"), []byte("second-secret-0123456789\n"), 0o600)
	for _, tt := range []struct {
		name, text string
		want       []string
	}{
		{"from secret_file to secret, the same", tok + "secret = \"second-secret-0123456789\"\nmax_tunnels = 1\n", []string{"tokens.a.max_tunnels"}},
		{"to another file, the same", tok + "secret_file = \"b.secret\"\n", nil},
		{"from secret_file to another secret", tok + "secret = \"third-secret-0123456789\"\n", []string{"tokens.a.secret"}},
	} {
		os.WriteFile(file, []byte(tt.text), 0o600)
		next, err := LoadConfig(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := changedKeys(after, next); !slices.Equal(got, tt.want) {
			t.Errorf("%s: changedKeys = %q, want %q", tt.name, got, tt.want)
		}
		if got := changedKeys(next, after); !slices.Equal(got, tt.want) {
			t.Errorf("%s, back: changedKeys = %q, want %q", tt.name, got, tt.want)
		}
	}
}

var restartWarningRE = regexp.MustCompile(`level=WARN msg="changed in the config, but applies only after a restart" key=(\S+)`)

// TestSIGHUPRestartWarnings: SIGHUP warns about every key that differs
// from what relayd runs with, on each reload while the file differs, and
// about none once the file agrees again. A key a flag overrides is never
// warned about. (Each reload used to compare with the file read before it:
// a second SIGHUP said nothing though the admin API still ran on the old
// address, and reverting the file warned.)
func TestSIGHUPRestartWarnings(t *testing.T) {
	t.Parallel()
	const original = pt.TokensTOML + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"
	config, stateDir, _, _ := pt.WriteRelaydConfig(t, original)
	p := pt.Start(t, nil, pt.RelaydBin, "--config", config, "--log-level", "info")
	p.WaitFor(&p.Stderr, regexp.MustCompile(`msg="relayd listening"`), pt.StartTimeout)
	r := &pt.Relayd{Proc: p, Config: config, StateDir: stateDir}

	changed := "handshake_timeout = \"20s\"\n\n" + pt.TokensTOML +
		"\n[admin]\nlisten = \"[::1]:0\"\n\n[log]\nlevel = \"debug\"\n"
	want := [][]string{
		{"relay.handshake_timeout", "admin.listen"}, // changed
		{"relay.handshake_timeout", "admin.listen"}, // unchanged since, still not what runs
		nil, // reverted
	}
	for i, text := range []string{changed, changed, original} {
		r.RewriteConfig(t, text)
		r.Signal(syscall.SIGHUP)
		r.WaitFor(&r.Stderr, regexp.MustCompile(fmt.Sprintf(`(?s)(?:msg="relay.toml reloaded".*){%d}`, i+1)), pt.StartTimeout)
	}
	// Each reload's warnings come before its "reloaded" line.
	parts := strings.Split(r.Stderr.String(), `msg="relay.toml reloaded"`)
	for i, w := range want {
		var got []string
		for _, m := range restartWarningRE.FindAllStringSubmatch(parts[i], -1) {
			got = append(got, m[1])
		}
		if !slices.Equal(got, w) {
			t.Errorf("reload %d warned about %q, want %q", i+1, got, w)
		}
	}
	if strings.Contains(r.Stderr.String(), "level=ERROR") {
		t.Errorf("relayd logged an error:\n%s", r.Stderr.String())
	}
}

// TestSignalsBeforeRunAndWithoutConfig: before the relay runs, SIGHUP is
// ignored and a stop signal stops at once (there is nothing to drain yet);
// a relayd on the embedded defaults (no --config) answers SIGHUP with a
// warning that there is no file to re-read, and carries on: no stop, no
// drain, the same state.
func TestSignalsBeforeRunAndWithoutConfig(t *testing.T) {
	run := func(st *runState, sigs ...os.Signal) (stops int, running *runState, draining bool) {
		ch := make(chan os.Signal, len(sigs))
		for _, s := range sigs {
			ch <- s
		}
		close(ch)
		var r atomic.Pointer[runState]
		r.Store(st)
		var d atomic.Bool
		handleSignals(ch, func() { stops++ }, &r, &d)
		return stops, r.Load(), d.Load()
	}

	if stops, _, draining := run(nil, syscall.SIGHUP); stops != 0 || draining {
		t.Errorf("SIGHUP before the relay runs: %d stops, draining %v; want it ignored", stops, draining)
	}
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		if stops, _, draining := run(nil, sig); stops != 1 || draining {
			t.Errorf("%v before the relay runs: %d stops, draining %v; want one stop, no drain", sig, stops, draining)
		}
	}

	var logs strings.Builder
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	def := DefaultConfig()
	st := &runState{started: &def, cfg: &def, log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: noTime}))}
	stops, running, draining := run(st, syscall.SIGHUP, syscall.SIGHUP)
	if stops != 0 || draining || running != st {
		t.Errorf("SIGHUP without --config: %d stops, draining %v, state replaced %v; want relayd to carry on as it was", stops, draining, running != st)
	}
	want := strings.Repeat(`level=WARN msg="reload asked, but relayd runs without --config: nothing to re-read"`+"\n", 2)
	if logs.String() != want {
		t.Errorf("SIGHUP twice without --config logged\n%s\nwant\n%s", logs.String(), want)
	}
}
