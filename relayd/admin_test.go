package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/relaytun/relay/tunnel"
)

const adminToken = "admin-token-0123456789"

func TestAdminConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("\n  "+adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, text  string
		listen, tok string
	}{
		{"default", "", defaultAdminListen, ""},
		{"off", "[admin]\nlisten = \"\"\n", "", ""},
		{"off with a token", "[admin]\nlisten = \"\"\ntoken = \"" + adminToken + "\"\n", "", adminToken},
		{"loopback v6", "[admin]\nlisten = \"[::1]:7001\"\n", "[::1]:7001", ""},
		{"localhost", "[admin]\nlisten = \"localhost:0\"\n", "localhost:0", ""},
		{"127/8", "[admin]\nlisten = \"127.0.0.2:9100\"\n", "127.0.0.2:9100", ""},
		{"everywhere with a token", "[admin]\nlisten = \"0.0.0.0:7001\"\ntoken = \"" + adminToken + "\"\n", "0.0.0.0:7001", adminToken},
		// A relative token_file starts at relay.toml's folder; whitespace goes.
		{"token_file", "[admin]\nlisten = \":7001\"\ntoken_file = \"admin.token\"\n", ":7001", adminToken},
	} {
		c, err := ParseConfig(filepath.Join(dir, "relay.toml"), tt.text)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if c.Admin.Listen != tt.listen || c.Admin.token != tt.tok {
			t.Errorf("%s: listen %q, token %q; want %q, %q", tt.name, c.Admin.Listen, c.Admin.token, tt.listen, tt.tok)
		}
	}
}

// adminBadConfigs are the mistakes in [admin], checked as badConfigs are;
// TestCheckAdminBadConfigs runs `relayd check` on each too.
var adminBadConfigs = []struct {
	name, text string
	line       int
	key, msg   string
}{
	{"listen without port", "[admin]\nlisten = \"127.0.0.1\"\n", 2, "admin.listen", `"127.0.0.1" is not host:port (for example "127.0.0.1:7001"), or "" to turn the admin API off`},
	{"listen port a name", "[admin]\n\nlisten = \"127.0.0.1:http\"\n", 3, "admin.listen", `"127.0.0.1:http": "http" is not a port number from 1 to 65535 (or 0, for a free one)`},
	{"listen a number", "[admin]\nlisten = 7001\n", 2, "admin.listen", "want a string, got an integer"},
	{"everywhere without a token", "[admin]\nlisten = \"0.0.0.0:7001\"\n", 2, "admin.listen",
		`"0.0.0.0:7001" can be reached from other machines, so the admin API needs a bearer token: set [admin] token or token_file, or listen on 127.0.0.1`},
	{"empty host without a token", "[admin]\nlisten = \":7001\"\n", 2, "admin.listen", "needs a bearer token"},
	{"host name without a token", "[admin]\nlisten = \"relay.example.com:7001\"\n", 2, "admin.listen", "needs a bearer token"},
	{"public address without a token", "[admin]\nlisten = \"[2001:db8::1]:7001\"\n", 2, "admin.listen", "needs a bearer token"},
	{"token too short", "[admin]\ntoken = \"short\"\n", 2, "admin.token", "the admin token must be at least 16 characters"},
	{"token with a space", "[admin]\ntoken = \"" + adminToken + " \"\n", 2, "admin.token",
		"the admin token has whitespace at its start or end, which the admin API and token_file leave out: remove it"},
	{"token and token_file", "[admin]\ntoken = \"" + adminToken + "\"\ntoken_file = \"admin.token\"\n", 3, "admin.token_file", "both token and token_file are set: keep one"},
	{"token_file missing", "[admin]\ntoken_file = \"no-such.token\"\n", 2, "admin.token_file", "no-such.token: no such file"},
	{"unknown key", "[admin]\nlisten = \"127.0.0.1:7001\"\ntokn = \"x\"\n", 3, "admin.tokn", "unknown key"},
}

func TestAdminConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range adminBadConfigs {
		_, err := ParseConfig("bad.toml", tt.text)
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: error %v, want a *ConfigError", tt.name, err)
			continue
		}
		if ce.Line != tt.line || ce.Key != tt.key || !strings.Contains(ce.Msg, tt.msg) {
			t.Errorf("%s: got %q\nwant bad.toml:%d: %s: …%s…", tt.name, err, tt.line, tt.key, tt.msg)
		}
	}

	// A token_file too short to be a token.
	dir := t.TempDir()
	path := filepath.Join(dir, "short.token")
	os.WriteFile(path, []byte("short\n"), 0o600)
	_, err := ParseConfig(filepath.Join(dir, "relay.toml"), "[admin]\ntoken_file = \"short.token\"\n")
	if err == nil || !strings.HasSuffix(err.Error(), ":2: admin.token_file: the admin token must be at least 16 characters (try `openssl rand -base64 24`)") {
		t.Errorf("short token_file: %v", err)
	}
}

// TestBindError: each cause of a failed listen gets its own advice, and
// one with no advice to give is left as it is.
func TestBindError(t *testing.T) {
	bind := func(errno syscall.Errno) error {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 80},
			Err: os.NewSyscallError("bind", errno)}
	}
	for _, tt := range []struct {
		errno syscall.Errno
		want  string
	}{
		{syscall.EADDRINUSE, "listen tcp 192.0.2.1:80: bind: address already in use: stop whatever holds that port, or change [relay] listen"},
		{syscall.EACCES, "listen tcp 192.0.2.1:80: bind: permission denied: ports below 1024 need root or the CAP_NET_BIND_SERVICE capability " +
			"(AmbientCapabilities= in a systemd unit): run relayd with either, or change [relay] listen to a port from 1024 up"},
		{syscall.EADDRNOTAVAIL, "listen tcp 192.0.2.1:80: bind: cannot assign requested address: " +
			"no interface of this machine has that address (behind NAT, the public one is not among them): change [relay] listen to one it has"},
		{syscall.EINVAL, "listen tcp 192.0.2.1:80: bind: invalid argument"},
	} {
		err := bindError(fmt.Errorf("listening: %w", bind(tt.errno)), "[relay] listen")
		if want := "listening: " + tt.want; err.Error() != want {
			t.Errorf("%v:\n got %q\nwant %q", tt.errno, err, want)
		}
		if !errors.Is(err, tt.errno) {
			t.Errorf("%v: the error no longer wraps it", tt.errno)
		}
	}
}

// TestListenAdmin: an address relay.toml sets must be bound; the default
// may be taken, which turns the admin API off with a line in the log.
func TestListenAdmin(t *testing.T) {
	t.Parallel()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()

	cfg, err := ParseConfig("relay.toml", "[admin]\nlisten = \""+addr+"\"\n")
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	ln, err := listenAdmin(cfg, log)
	want := "admin API: listen tcp " + addr + ": bind: address already in use: stop whatever holds that port, or change [admin] listen (\"\" turns the admin API off)"
	if ln != nil || err == nil || err.Error() != want {
		t.Errorf("listen set and taken: %v, %v\nwant the error %q", ln, err, want)
	}

	// Not in relay.toml: the default, here standing in for 127.0.0.1:7001.
	cfg, _ = ParseConfig("relay.toml", "[relay]\nports = \"20000\"\n")
	cfg.Admin.Listen = addr
	if ln, err := listenAdmin(cfg, log); ln != nil || err != nil {
		t.Errorf("default taken: %v, %v; want neither a listener nor an error", ln, err)
	}
	if !strings.Contains(logBuf.String(), `msg="admin API off: its default address is in use; set [admin] listen to a free address, or \"\" to silence this" listen=`+addr) {
		t.Errorf("default taken: the log says\n%s", logBuf.String())
	}

	logBuf.Reset()
	cfg.Admin.Listen = ""
	if ln, err := listenAdmin(cfg, log); ln != nil || err != nil || !strings.Contains(logBuf.String(), "admin API off ([admin] listen is empty)") {
		t.Errorf("listen empty: %v, %v, log %q", ln, err, logBuf.String())
	}
}

// fakeRelay serves fixed snapshots.
type fakeRelay struct {
	tunnels []tunnel.TunnelInfo
	stats   tunnel.RelayStats
}

func (f *fakeRelay) Tunnels() []tunnel.TunnelInfo { return f.tunnels }
func (f *fakeRelay) Stats() tunnel.RelayStats     { return f.stats }

var since = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func newFakeRelay() *fakeRelay {
	return &fakeRelay{
		tunnels: []tunnel.TunnelInfo{{
			Name: "web", TokenID: "alice", Protos: []string{"tcp"}, Port: 20001, Since: since,
			Members: []tunnel.MemberInfo{{Agent: "203.0.113.5:40000", Transport: "quic", Since: since, Active: 2}},
			Active:  2, Total: 7, BytesIn: 1000, BytesOut: 5000, Refused: map[string]int64{"deny": 3},
		}},
		stats: tunnel.RelayStats{
			Agents: map[string]int{"quic": 1}, Tunnels: 1, ClientsActive: 2, ClientsTotal: 7,
			HandshakeFailures: map[string]int64{"timeout": 1}, AgentRefusals: map[string]int64{"unauthorized": 4, "limit": 3},
			UDPFlows: 8, UDPDrops: 9, TokenRefusals: map[string]map[string]int64{"alice": {"limit": 2}, "bob": {"limit": 1}},
		},
	}
}

func get(t *testing.T, h http.Handler, path, auth string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestAdminJSON pins the JSON the API serves, key by key.
func TestAdminJSON(t *testing.T) {
	t.Parallel()
	h := adminHandler(newFakeRelay(), "relay.example.com", "", notDraining)
	w := get(t, h, "/api/v1/tunnels", "")
	const wantTunnels = `[
  {
    "name": "web",
    "token": "alice",
    "protocols": [
      "tcp"
    ],
    "public": "relay.example.com:20001",
    "agents": [
      {
        "address": "203.0.113.5:40000",
        "transport": "quic",
        "via_proxy": false,
        "since": "2026-11-21T10:00:00Z",
        "active": 2,
        "udp_flows": 0,
        "draining": false
      }
    ],
    "active": 2,
    "total": 7,
    "bytes_in": 1000,
    "bytes_out": 5000,
    "refused": {
      "deny": 3
    },
    "udp_flows": 0,
    "udp_drops": 0,
    "since": "2026-11-21T10:00:00Z",
    "closed": false
  }
]
`
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" || w.Body.String() != wantTunnels {
		t.Errorf("/api/v1/tunnels: %d %q\n%s\nwant 200 application/json\n%s", w.Code, w.Header().Get("Content-Type"), w.Body, wantTunnels)
	}

	w = get(t, h, "/api/v1/stats", "")
	var st map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatalf("/api/v1/stats: %v\n%s", err, w.Body)
	}
	ver, _ := st["version"].(map[string]any)
	delete(st, "version")
	if _, err := time.Parse(time.RFC3339, st["started"].(string)); err != nil {
		t.Errorf("started: %v", err)
	}
	delete(st, "started")
	got, _ := json.Marshal(st)
	const wantStats = `{"agent_refusals":{"limit":3,"unauthorized":4},"agent_refusals_by_token":{"alice":{"limit":2},"bob":{"limit":1}},"agents":{"quic":1,"tcp":0},"client_refusals":{},"clients_active":2,"clients_total":7,"handshake_failures":{"timeout":1},"tunnels":1,"udp_drops":9,"udp_flows":8}`
	if string(got) != wantStats {
		t.Errorf("/api/v1/stats without version and started:\n got %s\nwant %s", got, wantStats)
	}
	if ver["protocol"] != float64(tunnel.ProtocolVersion) || ver["go"] != runtime.Version() || ver["version"] == "" || len(ver) != 4 {
		t.Errorf("/api/v1/stats version = %v, want version, commit, go %s and protocol %d", ver, runtime.Version(), tunnel.ProtocolVersion)
	}

	// No tunnels is an empty list, not null.
	if w := get(t, adminHandler(&fakeRelay{}, "h", "", notDraining), "/api/v1/tunnels", ""); w.Body.String() != "[]\n" {
		t.Errorf("no tunnels: %q, want []", w.Body)
	}
}

func notDraining() bool { return false }

// TestHealthz: /healthz answers 200 "ok" until relayd drains, then 503
// "draining", token or not; the rest of the API answers as before.
func TestHealthz(t *testing.T) {
	t.Parallel()
	var draining bool
	for _, token := range []string{"", adminToken} {
		h := adminHandler(newFakeRelay(), "h", token, func() bool { return draining })
		for _, tt := range []struct {
			draining bool
			code     int
			body     string
		}{{false, 200, "ok\n"}, {true, 503, "draining\n"}} {
			draining = tt.draining
			w := get(t, h, "/healthz", "")
			if w.Code != tt.code || w.Body.String() != tt.body || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Errorf("token %q, draining %v: %d %q (%s), want %d %q as text/plain",
					token, tt.draining, w.Code, w.Body, w.Header().Get("Content-Type"), tt.code, tt.body)
			}
			if w := get(t, h, "/api/v1/stats", "Bearer "+adminToken); w.Code != 200 {
				t.Errorf("token %q, draining %v: /api/v1/stats %d, want 200", token, tt.draining, w.Code)
			}
		}
	}
}

// TestAdminAuth: with a token, everything but /healthz needs it.
func TestAdminAuth(t *testing.T) {
	t.Parallel()
	h := adminHandler(newFakeRelay(), "h", adminToken, notDraining)
	for _, tt := range []struct {
		path, auth string
		code       int
		body       string
	}{
		{"/healthz", "", 200, "ok\n"},
		{"/metrics", "", 401, "missing bearer token: send the header \"Authorization: Bearer TOKEN\" with [admin] token\n"},
		{"/api/v1/tunnels", "Basic YWRtaW46YWRtaW4=", 401, "missing bearer token"},
		{"/api/v1/stats", "Bearer wrong-token-0123456789", 401, "wrong bearer token: it does not match [admin] token\n"},
		{"/api/v1/stats", "Bearer " + adminToken[:len(adminToken)-1], 401, "wrong bearer token"},
		{"/api/v1/stats", "Bearer " + adminToken, 200, `"clients_total": 7`},
		{"/api/v1/stats", "bearer " + adminToken, 200, `"clients_total": 7`},
		{"/api/v1/stats", adminToken, 401, "missing bearer token"},
		{"/metrics", "Bearer " + adminToken, 200, "relayd_tunnels 1\n"},
		{"/nope", "Bearer " + adminToken, 404, "404 page not found"},
		{"/nope", "", 401, "missing bearer token"},
	} {
		w := get(t, h, tt.path, tt.auth)
		if w.Code != tt.code || !strings.Contains(w.Body.String(), tt.body) {
			t.Errorf("GET %s (Authorization %q): %d %q, want %d …%q…", tt.path, tt.auth, w.Code, w.Body, tt.code, tt.body)
		}
		if tt.code == 401 && w.Header().Get("WWW-Authenticate") != `Bearer realm="relayd"` {
			t.Errorf("GET %s: 401 without WWW-Authenticate: Bearer", tt.path)
		}
	}
	// Only GET (and HEAD).
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	h.ServeHTTP(w, req)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %d, want 405", w.Code)
	}
}

// TestCollectorLint runs Prometheus' own linter over the relay's metrics,
// with two tunnels that share a name and token (a group): they must merge
// into one series rather than fail the scrape.
func TestCollectorLint(t *testing.T) {
	t.Parallel()
	f := newFakeRelay()
	second := f.tunnels[0]
	// The second is one whose port closed as its agents drain, while the
	// name is open again: listed apart until its clients finish.
	second.Port, second.BytesIn, second.Refused, second.Closed = 20002, 1, map[string]int64{"deny": 1, "rate": 2}, true
	f.tunnels = append(f.tunnels, second)
	c := newRelayCollector(f)
	problems, err := testutil.CollectAndLint(c)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	const want = `
# HELP relayd_tunnel_in_bytes_total Bytes from the tunnel's public clients to its agents.
# TYPE relayd_tunnel_in_bytes_total counter
relayd_tunnel_in_bytes_total{token="alice",tunnel="web"} 1001
# HELP relayd_tunnel_client_refusals_total Public clients of the tunnel turned away, by reason.
# TYPE relayd_tunnel_client_refusals_total counter
relayd_tunnel_client_refusals_total{reason="deny",token="alice",tunnel="web"} 4
relayd_tunnel_client_refusals_total{reason="rate",token="alice",tunnel="web"} 2
# HELP relayd_tunnel_agents Agents serving the tunnel.
# TYPE relayd_tunnel_agents gauge
relayd_tunnel_agents{token="alice",tunnel="web"} 2
# HELP relayd_agent_sessions Authenticated agent sessions online.
# TYPE relayd_agent_sessions gauge
relayd_agent_sessions{transport="quic"} 1
relayd_agent_sessions{transport="tcp"} 0
# HELP relayd_token_agent_refusals_total Refusals sent to the agents of a token, by error code.
# TYPE relayd_token_agent_refusals_total counter
relayd_token_agent_refusals_total{reason="limit",token="alice"} 2
relayd_token_agent_refusals_total{reason="limit",token="bob"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "relayd_tunnel_in_bytes_total",
		"relayd_tunnel_client_refusals_total", "relayd_tunnel_agents", "relayd_agent_sessions", "relayd_token_agent_refusals_total"); err != nil {
		t.Error(err)
	}
	// The snapshot the relay handed out is left as it was.
	if f.tunnels[0].Refused["deny"] != 3 || len(f.tunnels[0].Members) != 1 {
		t.Errorf("merging changed the relay's snapshot: %+v", f.tunnels[0])
	}
}

// TestAdminWarnings: relayd warns when every user can read the admin
// token, in token_file or inline in relay.toml.
func TestAdminWarnings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	config := filepath.Join(dir, "relay.toml")
	for _, tt := range []struct {
		name, text string
		mode       os.FileMode // of the file holding the token
		want       string      // the warning, "" for none
	}{
		{"token_file 0644", "[admin]\ntoken_file = \"admin.token\"\n", 0o644,
			"the admin token_file can be read by every user: " + tokenFile + " 0644: chmod 600 " + tokenFile + " (or 640 with relayd's group)"},
		{"token_file 0640", "[admin]\ntoken_file = \"admin.token\"\n", 0o640, ""},
		{"inline 0604", "[admin]\ntoken = \"" + adminToken + "\"\n", 0o604,
			"the config file holds the admin token and every user can read it: " + config + " 0604: chmod 600 " + config +
				" (or 640 with relayd's group), or move the token to a file named by [admin] token_file"},
		{"inline 0600", "[admin]\ntoken = \"" + adminToken + "\"\n", 0o600, ""},
		// A token's secret inline as well: readableSecrets' own warning says it.
		{"inline with a secret", "[admin]\ntoken = \"" + adminToken + "\"\n\n[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\n", 0o644,
			"the config file holds token secrets and every user can read it: " + config + " 0644: chmod 600 " + config +
				" (or 640 with relayd's group), or move each secret to a file of its own named by secret_file"},
	} {
		holder := config
		if strings.Contains(tt.text, "token_file") {
			holder = tokenFile
		}
		os.WriteFile(tokenFile, []byte(adminToken), 0o600)
		os.WriteFile(config, []byte(tt.text), 0o600)
		os.Chmod(holder, tt.mode)
		cfg, err := LoadConfig(config)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []string
		for _, w := range readableSecrets(cfg) {
			got = append(got, fmt.Sprintf("%s: %s %04o: %s", w.msg, w.file, w.mode, w.fix))
		}
		if want := []string{tt.want}; (tt.want == "" && len(got) > 0) || (tt.want != "" && !slices.Equal(got, want)) {
			t.Errorf("%s: warnings %q, want %q", tt.name, got, tt.want)
		}
	}
}
