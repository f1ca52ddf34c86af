package main

// The admin API of a real relayd, after real traffic through real agents.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	pt "github.com/relaytun/relay/internal/proctest"
)

var adminRE = regexp.MustCompile(`msg="admin API listening" admin=(127\.0\.0\.1:\d+)`)

// adminTOML turns the admin API on at a free loopback port.
const adminTOML = "[admin]\nlisten = \"127.0.0.1:0\"\n"

// startAdminRelayd starts a relayd with adminTOML plus extra and returns
// it with its admin API's base URL.
func startAdminRelayd(t *testing.T, extra string) (*pt.Relayd, string) {
	t.Helper()
	r := pt.NewRelayd(t, adminTOML+extra)
	// relayd logs the admin address before it says it is listening.
	m := adminRE.FindStringSubmatch(r.Stderr.String())
	if m == nil {
		t.Fatalf("relayd did not log the admin address:\n%s", r.Stderr.String())
	}
	return r, "http://" + m[1]
}

// fetch GETs url with the bearer token (if any) and returns the status and body.
func fetch(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// scrape reads /metrics with the Prometheus text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := fetch(t, base+"/metrics", "")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

// value is the sample of family name whose labels include want, or -1.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && labels[want[i]] == want[i+1]
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return -1
}

// sum adds up every sample of family name.
func sum(fams map[string]*dto.MetricFamily, name string) float64 {
	var n float64
	for _, m := range fams[name].GetMetric() {
		n += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return n
}

// TestMetricsAfterTraffic sends known byte counts through a tunnel over
// each transport and reads them back from /metrics (parsed as Prometheus
// would) and /api/v1/tunnels; /api/v1/stats and /healthz along the way.
func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	r, base := startAdminRelayd(t, pt.TokensTOML)

	sizes := []int{300_000, 1, 0} // one client each; 0 sends nothing, half-closes
	type tun struct {
		name, transport, tag, url string
		in, out                   int
	}
	tuns := []*tun{{name: "m-quic", transport: "quic", tag: "Q:"}, {name: "m-tcp", transport: "tcp", tag: "T:"}}
	for _, tu := range tuns {
		local := pt.StartEcho(t, tu.tag)
		_, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP,
			"--transport", tu.transport, "--name", tu.name)
		tu.url = urls[0]
		for _, n := range sizes {
			pt.CheckEcho(t, tu.url, tu.tag, n)
			tu.in += n
			tu.out += len(tu.tag) + n
		}
	}
	// A tunnel whose clients are all turned away, and a refused agent.
	denied := pt.StartEcho(t, "D:")
	_, urls := pt.StartExpose(t, 1, nil, denied, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP,
		"--transport", "tcp", "--name", "m-denied", "--deny", "127.0.0.0/8")
	pt.CheckTurnedAway(t, urls[0])
	if _, _, code := pt.Run(t, nil, pt.RelayctlBin, "expose", denied, "--relay", r.Addr, "--token", "wrong-secret-0123456789",
		"--fingerprint", r.FP); code != 3 {
		t.Errorf("expose with a wrong token: exit %d, want 3", code)
	}

	// The relay counts a connection once both of its directions end, a
	// moment after the client saw its EOF: wait until nothing is open.
	var fams map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; {
		fams = scrape(t, base)
		if value(fams, "relayd_client_connections") == 0 && value(fams, "relayd_client_connections_total") == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %v connections open, %v in total; want 0 and 6",
				value(fams, "relayd_client_connections"), value(fams, "relayd_client_connections_total"))
		}
		time.Sleep(50 * time.Millisecond)
	}

	for _, tu := range tuns {
		l := []string{"tunnel", tu.name, "token", "test"}
		for _, c := range []struct {
			metric string
			want   float64
		}{
			{"relayd_tunnel_in_bytes_total", float64(tu.in)},
			{"relayd_tunnel_out_bytes_total", float64(tu.out)},
			{"relayd_tunnel_client_connections_total", float64(len(sizes))},
			{"relayd_tunnel_client_connections", 0},
			{"relayd_tunnel_agents", 1},
			{"relayd_tunnel_udp_flows", 0},
			{"relayd_tunnel_udp_dropped_total", 0},
		} {
			if got := value(fams, c.metric, l...); got != c.want {
				t.Errorf("%s{tunnel=%q}: %v, want %v", c.metric, tu.name, got, c.want)
			}
		}
	}
	for _, c := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"relayd_agent_sessions", []string{"transport", "quic"}, 1},
		{"relayd_agent_sessions", []string{"transport", "tcp"}, 2},
		{"relayd_tunnels", nil, 3},
		{"relayd_udp_flows", nil, 0},
		{"relayd_udp_dropped_total", nil, 0},
		{"relayd_build_info", []string{"protocol", "1", "goversion", runtime.Version()}, 1},
	} {
		if got := value(fams, c.metric, c.labels...); got != c.want {
			t.Errorf("%s%v: %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	if n := value(fams, "relayd_tunnel_client_refusals_total", "tunnel", "m-denied"); n < 1 {
		t.Errorf("relayd_tunnel_client_refusals_total{tunnel=m-denied}: %v, want at least 1", n)
	}
	if n := sum(fams, "relayd_client_refusals_total"); n < 1 {
		t.Errorf("relayd_client_refusals_total: %v in all, want at least 1", n)
	}
	if n := sum(fams, "relayd_agent_refusals_total") + sum(fams, "relayd_agent_handshake_failures_total"); n < 1 {
		t.Errorf("relayd_agent_refusals_total and _handshake_failures_total: %v in all after a wrong token, want at least 1", n)
	}
	for name, typ := range map[string]dto.MetricType{
		"relayd_tunnel_in_bytes_total": dto.MetricType_COUNTER, "relayd_client_connections": dto.MetricType_GAUGE,
		"go_goroutines": dto.MetricType_GAUGE, "process_open_fds": dto.MetricType_GAUGE,
	} {
		if f := fams[name]; f == nil || f.GetType() != typ || f.GetHelp() == "" {
			t.Errorf("%s: %v, want a %v with help", name, f, typ)
		}
	}

	// The same numbers as JSON.
	code, body := fetch(t, base+"/api/v1/tunnels", "")
	var list []map[string]any
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		t.Fatalf("/api/v1/tunnels: %d %v\n%s", code, err, body)
	}
	wantKeys := "active agents bytes_in bytes_out closed name protocols public refused since token total udp_drops udp_flows"
	for _, tu := range tuns {
		i := slices.IndexFunc(list, func(m map[string]any) bool { return m["name"] == tu.name })
		if i < 0 {
			t.Errorf("/api/v1/tunnels has no %s:\n%s", tu.name, body)
			continue
		}
		tj := list[i]
		if k := pt.Keys(tj); k != wantKeys {
			t.Errorf("%s has keys %s, want %s", tu.name, k, wantKeys)
		}
		agents, _ := tj["agents"].([]any)
		if tj["bytes_in"] != float64(tu.in) || tj["bytes_out"] != float64(tu.out) || tj["total"] != float64(len(sizes)) ||
			tj["token"] != "test" || tj["public"] != pt.HostPort(t, tu.url) || fmt.Sprint(tj["protocols"]) != "[tcp]" || len(agents) != 1 {
			t.Errorf("%s: %v\nwant bytes %d in, %d out, %d clients, token test, public %s, protocols [tcp], one agent",
				tu.name, tj, tu.in, tu.out, len(sizes), pt.HostPort(t, tu.url))
			continue
		}
		a, _ := agents[0].(map[string]any)
		if k := pt.Keys(a); k != "active address draining since transport udp_flows via_proxy" || a["transport"] != tu.transport || a["udp_flows"] != 0.0 {
			t.Errorf("%s: agent %v, want its address, since, active, draining, udp_flows 0 and transport %s", tu.name, a, tu.transport)
		}
		if _, err := time.Parse(time.RFC3339, fmt.Sprint(tj["since"])); err != nil {
			t.Errorf("%s: since: %v", tu.name, err)
		}
	}

	code, body = fetch(t, base+"/api/v1/stats", "")
	var st struct {
		Agents        map[string]int `json:"agents"`
		Tunnels       int            `json:"tunnels"`
		ClientsActive *int64         `json:"clients_active"`
		ClientsTotal  int64          `json:"clients_total"`
		Version       struct {
			Version, Commit, Go string
			Protocol            int
		} `json:"version"`
	}
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("/api/v1/stats: %d %v\n%s", code, err, body)
	}
	if st.Agents["quic"] != 1 || st.Agents["tcp"] != 2 || st.Tunnels != 3 || st.ClientsActive == nil || *st.ClientsActive != 0 ||
		st.ClientsTotal != 6 || st.Version.Protocol != 1 || st.Version.Go != runtime.Version() || st.Version.Version == "" {
		t.Errorf("/api/v1/stats:\n%s\nwant agents quic 1 tcp 2, 3 tunnels, 0 clients active, 6 in total, protocol 1, %s", body, runtime.Version())
	}

	if code, body := fetch(t, base+"/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
}

// TestHealthzWhileDraining: after SIGTERM, while a client keeps the drain
// going, /healthz answers 503 "draining" (it used to answer 200 ok, so a
// load balancer kept sending agents to a relay on its way out); the rest
// of the API still answers. A second SIGTERM stops relayd with exit 0.
func TestHealthzWhileDraining(t *testing.T) {
	t.Parallel()
	r, base := startAdminRelayd(t, pt.TokensTOML) // the drain may last drain_timeout, 30 s
	local := pt.StartEcho(t, "h:")
	_, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP)
	pt.Hold(t, urls[0], "h:")
	if code, body := fetch(t, base+"/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz before SIGTERM: %d %q, want 200 \"ok\\n\"", code, body)
	}

	r.Signal(syscall.SIGTERM)
	r.WaitFor(&r.Stderr, regexp.MustCompile(`msg=draining agents=1 tunnels=1 clients=1`), pt.StartTimeout)
	if code, body := fetch(t, base+"/healthz", ""); code != 503 || body != "draining\n" {
		t.Errorf("/healthz while draining: %d %q, want 503 \"draining\\n\"", code, body)
	}
	if code, body := fetch(t, base+"/api/v1/stats", ""); code != 200 || !strings.Contains(body, `"clients_active": 1`) {
		t.Errorf("/api/v1/stats while draining: %d %q, want 200 with the client still open", code, body)
	}
	pt.Stopped(t, r.Proc, syscall.SIGTERM)
}

// TestAdminTokenFile: a relayd with [admin] token_file answers only
// requests carrying it (but /healthz), and never logs it.
func TestAdminTokenFile(t *testing.T) {
	t.Parallel()
	path := pt.WriteSecret(t, adminToken)
	r, base := startAdminRelayd(t, fmt.Sprintf("token_file = %q\n\n%s", path, pt.TokensTOML))
	if !strings.Contains(r.Stderr.String(), `auth="bearer token"`) {
		t.Errorf("relayd does not log that the admin API wants a token:\n%s", r.Stderr.String())
	}
	for _, tt := range []struct {
		path, token string
		code        int
		body        string
	}{
		{"/metrics", "", 401, "missing bearer token: send the header \"Authorization: Bearer TOKEN\" with [admin] token\n"},
		{"/api/v1/tunnels", "wrong-token-0123456789", 401, "wrong bearer token: it does not match [admin] token\n"},
		{"/api/v1/tunnels", adminToken, 200, "[]\n"},
		{"/metrics", adminToken, 200, "relayd_tunnels 0\n"},
		{"/healthz", "", 200, "ok\n"},
	} {
		code, body := fetch(t, base+tt.path, tt.token)
		if code != tt.code || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s with token %q: %d %q, want %d …%q…", tt.path, tt.token, code, body, tt.code, tt.body)
		}
	}
	if strings.Contains(r.Stderr.String(), adminToken) {
		t.Errorf("relayd logged the admin token:\n%s", r.Stderr.String())
	}
}

// TestAdminListenInUse: an [admin] listen address another program holds
// stops relayd with exit 1 and one line that says what to change.
func TestAdminListenInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	config, _, _, _ := pt.WriteRelaydConfig(t, "[admin]\nlisten = \""+ln.Addr().String()+"\"\n\n"+pt.TokensTOML)
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "--config", config)
	want := "relayd: admin API: listen tcp " + ln.Addr().String() + ": bind: address already in use: stop whatever holds that port, or change [admin] listen (\"\" turns the admin API off)"
	if code != 1 || out != "" || pt.LastLine(errOut) != want {
		t.Errorf("exit %d, stdout %q, stderr ends %q\nwant exit 1, nothing, %q", code, out, pt.LastLine(errOut), want)
	}
}

// TestCheckAdminBadConfigs: relayd check refuses each of adminBadConfigs
// with exit 1 and the file, line and key.
func TestCheckAdminBadConfigs(t *testing.T) {
	t.Parallel()
	for _, tt := range adminBadConfigs {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, tt.text)
			out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", path)
			want := fmt.Sprintf("relayd: %s:%d: %s: ", path, tt.line, tt.key)
			if got := pt.LastLine(errOut); code != 1 || out != "" || !strings.HasPrefix(got, want) || !strings.Contains(got, tt.msg) {
				t.Errorf("exit %d, stdout %q, stderr ends %q\nwant exit 1, nothing, %q…%q", code, out, got, want, tt.msg)
			}
		})
	}
}
