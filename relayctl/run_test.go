package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/tomlconf"
	"github.com/relaytun/relay/tunnel"
)

// clearTokenEnv keeps the test's own environment out of agent.toml's
// token fallback.
func clearTokenEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"RELAY_TOKEN", "RELAY_TOKEN_FILE", "RELAY_PROXY"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// TestSampleAgentFile: examples/agent.toml parses, and means what its
// comments say.
func TestSampleAgentFile(t *testing.T) {
	clearTokenEnv(t)
	data, err := os.ReadFile("../examples/agent.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "relay.token"), []byte("sample-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := loadAgentFile(path)
	if err != nil {
		t.Fatalf("the sample agent.toml: %v", err)
	}
	c := p.cfg
	if c.Relay != "relay.example.com:7000" || c.Token != "sample-secret" || c.Transport != tunnel.TransportAuto {
		t.Errorf("relay %q, token %q, transport %q", c.Relay, c.Token, c.Transport)
	}
	if p.drainTimeout != 30*time.Second {
		t.Errorf("drain timeout %v, want 30s", p.drainTimeout)
	}
	want := []tunnel.TunnelSpec{
		{Name: "minecraft", Local: "localhost:25565", Ports: tunnel.PortRange{Low: 25565, High: 25565},
			Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Protos: tunnel.ProtoTCP},
		{Name: "localhost-8080", Local: "localhost:8080", Protos: tunnel.ProtoTCP},
	}
	if !reflect.DeepEqual(c.Tunnels, want) {
		t.Errorf("tunnels\n got %+v\nwant %+v", c.Tunnels, want)
	}
}

func TestAgentFile(t *testing.T) {
	clearTokenEnv(t)
	dir := t.TempDir()
	secret := pt.WriteSecret(t, "  from-a-file ")
	if err := os.WriteFile(filepath.Join(dir, "tok"), []byte("relative-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp := "SHA256:" + strings.Repeat("A", 43)
	check := func(t *testing.T, text string, env map[string]string, want func(p *agentPlan) string) {
		t.Helper()
		for k, v := range env {
			t.Setenv(k, v)
		}
		p, err := parseAgentFile(filepath.Join(dir, "agent.toml"), text)
		if err != nil {
			t.Fatal(err)
		}
		if msg := want(p); msg != "" {
			t.Error(msg)
		}
	}

	t.Run("numbers for local and port, a relay without a port", func(t *testing.T) {
		check(t, "relay = \"r.example\"\ntoken = \"s\"\n[[tunnels]]\nlocal = 8080\nport = 25565\n", nil, func(p *agentPlan) string {
			spec := p.cfg.Tunnels[0]
			if p.cfg.Relay != "r.example:7000" || spec.Name != "localhost-8080" || spec.Local != "localhost:8080" || spec.Ports != (tunnel.PortRange{Low: 25565, High: 25565}) {
				return fmt.Sprintf("relay %q, tunnel %+v", p.cfg.Relay, spec)
			}
			return ""
		})
	})
	t.Run("every key", func(t *testing.T) {
		text := `relay = "[::1]:7100"
token_file = "tok"
fingerprint = "` + fp + `"
transport = "tcp"
max_retries = 5
retry_max_delay = "1m"
wait_for_relay = true
drain_timeout = "0s"

[log]
level = "debug"
format = "json"

[[tunnels]]
name = "game"
local = "192.168.1.5:25565"
port = "24000-24009"
proto = "tcp"
allow = ["10.0.0.0/8", "192.0.2.7"]
`
		check(t, text, nil, func(p *agentPlan) string {
			c := p.cfg
			spec := c.Tunnels[0]
			switch {
			case c.Relay != "[::1]:7100", c.Token != "relative-secret", c.Transport != tunnel.TransportTCP, p.drainTimeout != 0:
				return fmt.Sprintf("relay %q, token %q, transport %q, drain %v", c.Relay, c.Token, c.Transport, p.drainTimeout)
			case c.Verifier.Pin == nil:
				return "fingerprint not pinned"
			case !p.log.Enabled(t.Context(), -4):
				return "log level is not debug"
			case spec.Name != "game" || spec.Local != "192.168.1.5:25565" || spec.Ports != (tunnel.PortRange{Low: 24000, High: 24009}) || len(spec.Allow) != 2:
				return fmt.Sprintf("tunnel %+v", spec)
			}
			return retryMismatch(c, 5, time.Minute, true)
		})
	})
	t.Run("proxy_protocol", func(t *testing.T) {
		text := "relay = \"r\"\ntoken = \"s\"\n" +
			"[[tunnels]]\nlocal = \"1\"\nproxy_protocol = \"v1\"\n" +
			"[[tunnels]]\nlocal = \"2\"\nproxy_protocol = \"2\"\nproto = \"udp\"\n" +
			"[[tunnels]]\nlocal = \"3\"\nproxy_protocol = \"v2\"\nproto = \"tcp,udp\"\n" +
			"[[tunnels]]\nlocal = \"4\"\n"
		check(t, text, nil, func(p *agentPlan) string {
			var got []int
			for _, spec := range p.cfg.Tunnels {
				got = append(got, spec.ProxyProtocol)
			}
			if want := []int{1, 2, 2, 0}; !slices.Equal(got, want) {
				return fmt.Sprintf("PROXY protocol versions %v, want %v", got, want)
			}
			return ""
		})
	})
	t.Run("transparent", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("transparent is refused off Linux")
		}
		text := "relay = \"r\"\ntoken = \"s\"\n" +
			"[[tunnels]]\nlocal = \"1\"\ntransparent = true\nproto = \"tcp,udp\"\n" +
			"[[tunnels]]\nlocal = \"2\"\n"
		check(t, text, nil, func(p *agentPlan) string {
			if got := []bool{p.cfg.Tunnels[0].Transparent, p.cfg.Tunnels[1].Transparent}; !slices.Equal(got, []bool{true, false}) {
				return fmt.Sprintf("transparent %v, want [true false]", got)
			}
			return ""
		})
	})
	t.Run("defaults", func(t *testing.T) {
		check(t, "relay = \"r:1\"\ntoken = \"s\"\nknown_relays = \"known\"\n[[tunnels]]\nlocal = \"1\"\n", nil, func(p *agentPlan) string {
			if kr := p.cfg.Verifier.KnownRelays; kr != filepath.Join(dir, "known") {
				return fmt.Sprintf("known_relays %q, want it beside agent.toml", kr)
			}
			if p.cfg.Transport != tunnel.TransportAuto || p.drainTimeout != 30*time.Second {
				return fmt.Sprintf("transport %q, drain %v", p.cfg.Transport, p.drainTimeout)
			}
			return retryMismatch(p.cfg, 0, 30*time.Second, false)
		})
	})
	const noToken = "relay = \"r:1\"\n[[tunnels]]\nlocal = \"1\"\n"
	t.Run("RELAY_TOKEN", func(t *testing.T) {
		check(t, noToken, map[string]string{"RELAY_TOKEN": "env-secret"}, func(p *agentPlan) string {
			if p.cfg.Token != "env-secret" {
				return fmt.Sprintf("token %q, want RELAY_TOKEN's", p.cfg.Token)
			}
			return ""
		})
	})
	t.Run("RELAY_TOKEN_FILE", func(t *testing.T) {
		check(t, noToken, map[string]string{"RELAY_TOKEN_FILE": secret}, func(p *agentPlan) string {
			if p.cfg.Token != "from-a-file" {
				return fmt.Sprintf("token %q, want RELAY_TOKEN_FILE's", p.cfg.Token)
			}
			return ""
		})
	})
	t.Run("the file's token before RELAY_TOKEN", func(t *testing.T) {
		check(t, "token = \"file-secret\"\n"+noToken, map[string]string{"RELAY_TOKEN": "env-secret", "RELAY_TOKEN_FILE": secret}, func(p *agentPlan) string {
			if p.cfg.Token != "file-secret" {
				return fmt.Sprintf("token %q, want the file's", p.cfg.Token)
			}
			return ""
		})
	})
}

// TestAgentFileProxy: agent.toml's proxy, or RELAY_PROXY when the file has
// none, reaches the agent's config.
func TestAgentFileProxy(t *testing.T) {
	clearTokenEnv(t)
	const base = "relay = \"r:7000\"\ntoken = \"s\"\nfingerprint = \"SHA256:" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n"
	const tunnels = "[[tunnels]]\nlocal = \"8080\"\n"
	for _, tt := range []struct{ env, file, want string }{
		{"", "", ""},
		{"", "proxy = \"http://u:p@127.0.0.1:3128\"\n", "http://u:p@127.0.0.1:3128"},
		{"socks5://127.0.0.1:1080", "", "socks5://127.0.0.1:1080"},
		{"socks5://127.0.0.1:1080", "proxy = \"http://127.0.0.1:3128\"\n", "http://127.0.0.1:3128"},
	} {
		t.Setenv("RELAY_PROXY", tt.env)
		p, err := parseAgentFile("agent.toml", base+tt.file+tunnels)
		if err != nil {
			t.Fatalf("env %q, file %q: %v", tt.env, tt.file, err)
		}
		got := ""
		if p.cfg.Proxy != nil {
			got = p.cfg.Proxy.String()
		}
		if got != tt.want {
			t.Errorf("env %q, file %q: proxy %q, want %q", tt.env, tt.file, got, tt.want)
		}
	}
}

func TestAgentFileErrors(t *testing.T) {
	clearTokenEnv(t)
	const head = "relay = \"r:7000\"\ntoken = \"s\"\n"
	const one = "[[tunnels]]\nlocal = \"8080\"\n"
	missing := filepath.Join(t.TempDir(), "missing")
	seventeen := `"10.0.0.0/8"` + strings.Repeat(`, "10.0.0.0/8"`, 16)
	for _, tt := range []struct {
		name, text string
		want       string // the whole message, or its start
	}{
		{"syntax", head + "[[tunnels]\n", "bad.toml:4: expected end of table array name"},
		{"unknown key", head + "tokn = \"x\"\n" + one, "bad.toml:3: tokn: unknown key (see the sample examples/agent.toml for the keys there are)"},
		{"unknown key in the second tunnel", head + one + one + "lcal = \"1\"\n", "bad.toml:7: tunnels.lcal: unknown key"},
		{"unknown table", head + "[logs]\nlevel = \"info\"\n" + one, "bad.toml:3: logs: unknown key"},
		{"wrong type", "relay = 7000\n", "bad.toml:1: relay: want a string, got an integer"},
		{"bare number duration", head + "drain_timeout = 30\n" + one, `bad.toml:3: drain_timeout: 30 has no unit: give one, as in "30s"`},
		{"no relay", "token = \"s\"\n" + one, "bad.toml: relay is required: the relay's HOST:PORT"},
		{"relay URL", "relay = \"tcp://r:7000\"\ntoken = \"s\"\n" + one, `bad.toml:1: relay: "tcp://r:7000": not a URL: give HOST:PORT, without tcp://`},
		{"no token", "relay = \"r\"\n" + one, "bad.toml: token or token_file (or RELAY_TOKEN or RELAY_TOKEN_FILE in the environment) is required"},
		{"token and token_file", head + "token_file = \"x\"\n" + one, "bad.toml:3: token and token_file are both set"},
		{"token_file missing", "relay = \"r\"\ntoken_file = \"" + missing + "\"\n" + one, "bad.toml:2: token_file: cannot read " + missing + ": no such file or directory"},
		{"transport", head + "transport = \"udp\"\n" + one, `bad.toml:3: transport: "udp" is not auto, quic or tcp`},
		{"proxy", head + "proxy = \"http://proxy.example\"\n" + one, `bad.toml:3: proxy: "proxy.example" is not HOST:PORT: a proxy URL needs the proxy's port`},
		{"proxy with quic", head + "transport = \"quic\"\nproxy = \"socks5://127.0.0.1:1080\"\n" + one,
			"bad.toml:4: proxy carries TCP only, and QUIC needs UDP: set transport to tcp, or auto (which then means tcp)"},
		{"fingerprint", head + "fingerprint = \"abc\"\n" + one, "bad.toml:3: fingerprint: "},
		{"max_retries", head + "max_retries = -1\n" + one, "bad.toml:3: max_retries: -1: must be 0 (retry forever) or more"},
		{"retry_max_delay", head + "retry_max_delay = \"100ms\"\n" + one, "bad.toml:3: retry_max_delay: 100ms: must be at least 500ms"},
		{"drain_timeout", head + "drain_timeout = \"-1s\"\n" + one, "bad.toml:3: drain_timeout: -1s: must be a duration"},
		{"drain_timeout too large", head + "drain_timeout = \"100000000h\"\n" + one,
			`bad.toml:3: drain_timeout: "100000000h" is too large: a duration can be at most 2562047h47m16s (about 292 years)`},
		{"keepalive", head + "keepalive = \"0s\"\n" + one, `bad.toml:3: keepalive: 0s: must be a positive duration such as "5s"`},
		{"idle_timeout", head + "keepalive = \"5s\"\nidle_timeout = \"5s\"\n" + one, "bad.toml:4: idle_timeout: 5s: must be longer than the keepalive (5s), so a live relay is never taken for dead"},
		// With one of the two left out, its default is named and the other blamed.
		{"idle_timeout alone", head + "idle_timeout = \"3s\"\n" + one,
			"bad.toml:3: idle_timeout: 3s: must be longer than the keepalive (5s, its default; set keepalive too), so a live relay is never taken for dead"},
		{"keepalive alone", head + "keepalive = \"20s\"\n" + one,
			"bad.toml:3: keepalive: 20s: must be shorter than idle_timeout (15s, its default; set idle_timeout too), so a live relay is never taken for dead"},
		{"udp_flow_timeout", head + "udp_flow_timeout = \"-1s\"\n" + one, `bad.toml:3: udp_flow_timeout: -1s: must be a positive duration such as "120s"`},
		{"log level", head + "[log]\nlevel = \"loud\"\n" + one, `bad.toml:4: log.level: "loud" is not debug, info, warn or error`},
		{"log format", head + "[log]\nformat = \"xml\"\n" + one, `bad.toml:4: log.format: "xml" is not text or json`},
		{"no tunnels", head, "bad.toml: tunnels: no tunnel: add a [[tunnels]] table"},
		{"no local", head + one + "[[tunnels]]\nname = \"x\"\n", "bad.toml:5: tunnels.local: missing: the local server's PORT or HOST:PORT"},
		{"bad local", head + "[[tunnels]]\nlocal = \"notaport\"\n", `bad.toml:4: tunnels.local: "notaport" is not PORT or HOST:PORT`},
		{"local port too big", head + "[[tunnels]]\nlocal = 70000\n", `bad.toml:4: tunnels.local: "70000": port must be 1-65535`},
		{"local not a string", head + "[[tunnels]]\nlocal = 1.5\n", "bad.toml:4: tunnels.local: 1.5 is not a port number or a string"},
		{"local range reversed", head + "[[tunnels]]\nlocal = \"9000-8000\"\n", `bad.toml:4: tunnels.local: "9000-8000": port range "9000-8000": 8000 is below 9000`},
		{"bad name", head + one + "name = \"no spaces\"\n", `bad.toml:5: tunnels.name: tunnel name "no spaces" is invalid`},
		{"name twice", head + one + "name = \"a\"\n" + one + "name = \"a\"\n", `bad.toml:8: tunnels.name: tunnel name "a" is already taken by tunnel 1`},
		{"made name twice", head + one + "[[tunnels]]\nlocal = \"localhost:8080\"\n", `bad.toml:5: tunnels.name: tunnel name "localhost-8080" (made from local "localhost:8080"; set name) is already taken by tunnel 1`},
		{"bad port", head + one + "port = \"eighty\"\n", "bad.toml:5: tunnels.port: "},
		{"range without ports", head + "[[tunnels]]\nlocal = \"2456-2458\"\n", "bad.toml:3: tunnels.port: local 2456-2458 is a range of 3 ports: give a public range of the same length within the relay's ports (e.g. 2456-2458, if it allows those), so the offsets between them are kept"},
		{"range of other length", head + "[[tunnels]]\nlocal = \"2456-2458\"\nport = \"3000-3001\"\n", "bad.toml:5: tunnels.port: local 2456-2458 is a range of 3 ports"},
		{"port twice", head + one + "port = \"20000\"\n[[tunnels]]\nlocal = \"9090\"\nport = 20000\n", "bad.toml:8: tunnels.port: port 20000 is already asked for by tunnel 1"},
		{"proxy v1 on udp", head + one + "proto = \"udp\"\nproxy_protocol = \"v1\"\n", "bad.toml:6: tunnels.proxy_protocol: v1 has no form for UDP: use v2 (Geyser, Velocity and HAProxy read it)"},
		{"bad proto", head + one + "proto = \"sctp\"\n", `bad.toml:5: tunnels.proto: "sctp" is not tcp, udp or tcp,udp`},
		{"bad allow", head + one + "allow = [\"nope\"]\n", `bad.toml:5: tunnels.allow: "nope" is not an IP address or CIDR prefix`},
		{"too many deny", head + one + "deny = [" + seventeen + "]\n", "bad.toml:5: tunnels.deny: 17 prefixes given, at most 16"},
		// A range names each port's tunnel NAME-PORT: a name of 60
		// characters makes names too long. (The check is the agent's own,
		// on the names made, so the line names no key.)
		{"range name too long", head + "[[tunnels]]\nlocal = \"2456-2458\"\nport = \"3000-3002\"\nname = \"" + strings.Repeat("a", 60) + "\"\n",
			`bad.toml: tunnel name "` + strings.Repeat("a", 60) + `-2456" is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseAgentFile("bad.toml", tt.text)
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %+v", tt.text, p.cfg)
			}
			var ce *tomlconf.Error
			if !errors.As(err, &ce) {
				t.Errorf("error %q is a %T, want a *tomlconf.Error", err, err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error\n %q\nwant it to start with\n %q", err, tt.want)
			}
		})
	}
}

// TestRun: relayctl run puts every [[tunnels]] table on the relay, prints
// one line for each, and serves its status; SIGTERM ends it with exit 0.
func TestRun(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	a, b := pt.StartEcho(t, "a:"), pt.StartEcho(t, "b:")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(pt.TestSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "agent.toml")
	text := fmt.Sprintf("relay = %q\ntoken_file = \"token\"\nfingerprint = %q\ntransport = \"tcp\"\n\n"+
		"[[tunnels]]\nlocal = %q\nname = \"a\"\n\n[[tunnels]]\nlocal = %q\nport = \"%d-%d\"\n", r.Addr, r.FP, a, b, r.Low, r.High)
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "control.sock")
	p, urls := pt.StartRelayctl(t, 2, nil, "run", "--config", config, "--control", sock)
	pt.CheckEcho(t, urls[0], "a:", 64<<10)
	pt.CheckEcho(t, urls[1], "b:", 64<<10)
	// relayctl status sees both.
	if sts := statusJSON(t, nil, "--control", sock); len(sts) != 1 {
		t.Errorf("relayctl status: %v, want one agent", sts)
	} else if tunnels, _ := sts[0]["tunnels"].([]any); len(tunnels) != 2 {
		t.Errorf("relayctl status: tunnels %v, want two", sts[0]["tunnels"])
	}
	pt.Stopped(t, p, syscall.SIGTERM)
}

// TestRunWaitForRelay: with wait_for_relay, run keeps trying a relay that
// is down, and comes up once it is back.
func TestRunWaitForRelay(t *testing.T) {
	t.Parallel()
	r := pt.NewRelaydPinned(t, nil, pt.TokensTOML)
	pt.Stopped(t, r.Proc, syscall.SIGTERM)
	local := pt.StartEcho(t, "wait:")
	config := filepath.Join(t.TempDir(), "agent.toml")
	text := fmt.Sprintf("relay = %q\ntoken = %q\nfingerprint = %q\ntransport = \"tcp\"\nwait_for_relay = true\nretry_max_delay = \"1s\"\n\n"+
		"[[tunnels]]\nlocal = %q\n", r.Addr, pt.TestSecret, r.FP, local)
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p := pt.Start(t, nil, pt.RelayctlBin, "run", "--config", config)
	p.WaitFor(&p.Stderr, regexp.MustCompile(`retrying`), pt.StartTimeout)
	r.Restart(t)
	url := p.WaitFor(&p.Stdout, regexp.MustCompile(`^tcp://\S+`), pt.StartTimeout)[0]
	pt.CheckEcho(t, url, "wait:", 4096)
	pt.Stopped(t, p, syscall.SIGINT)
}

// TestRunErrors: a bad agent.toml or command line exits 2 with one line
// naming the file, line and key.
func TestRunErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(bad, []byte("relay = \"127.0.0.1:1\"\ntoken = \"s\"\n\n[[tunnels]]\nlocal = \"8080\"\nprot = \"tcp\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("relay = \"127.0.0.1:1\"\ntoken = \"s\"\nfingerprint = \"SHA256:"+strings.Repeat("A", 43)+"\"\n\n[[tunnels]]\nlocal = \"8080\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"--config", bad}, bad + ":6: tunnels.prot: unknown key"},
		{"no config", nil, "run needs --config FILE"},
		{"missing file", []string{"--config", filepath.Join(dir, "none.toml")}, "reading " + filepath.Join(dir, "none.toml") + ": no such file"},
		{"an argument", []string{"--config", bad, "8080"}, `unexpected argument "8080"`},
		{"nothing after --", []string{"--config", good, "--"}, "nothing follows --"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, append([]string{"run"}, tt.args...)...)
			if code != exitUsage || out != "" {
				t.Errorf("exit %d, stdout %q; want %d and nothing", code, out, exitUsage)
			}
			if last := pt.LastLine(errOut); last != "relayctl: "+tt.want && !strings.HasPrefix(last, "relayctl: "+tt.want) {
				t.Errorf("stderr ends %q, want \"relayctl: %s…\"", last, tt.want)
			}
		})
	}
}

// retryMismatch says how c's reconnect settings differ from those given.
func retryMismatch(c tunnel.AgentConfig, maxRetries int, maxDelay time.Duration, wait bool) string {
	if c.MaxRetries != maxRetries || c.RetryMaxDelay != maxDelay || c.WaitForRelay != wait {
		return fmt.Sprintf("max retries %d, retry max delay %v, wait for relay %v; want %d, %v, %v",
			c.MaxRetries, c.RetryMaxDelay, c.WaitForRelay, maxRetries, maxDelay, wait)
	}
	return ""
}

// FuzzParseAgentFile: agent.toml as anyone may write it. parseAgentFile
// never panics, and every error names the file.
func FuzzParseAgentFile(f *testing.F) {
	sample, err := os.ReadFile("../examples/agent.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(sample))
	f.Add("relay = \"relay.example.com:7000\"\ntoken = \"0123456789abcdef\"\n\n[[tunnels]]\nlocal = \"2456-2458\"\nproto = \"udp\"\nport = \"0\"\n")
	f.Add("relay = \"r:7000\"\ntoken = \"x\"\n[[tunnels]]\nlocal = 8080\nport = 27001\nname = \"web\"\nproxy_protocol = \"v2\"\n")
	f.Fuzz(func(t *testing.T, data string) {
		plan, err := parseAgentFile("a.toml", data)
		if err != nil && (plan != nil || !strings.HasPrefix(err.Error(), "a.toml")) {
			t.Fatalf("parseAgentFile: %v, %v; want no plan and an error naming the file", plan, err)
		}
	})
}

// FuzzParseLocalRange: a LOCAL as anyone may type it. What parses has a
// host and an ordered range of ports from 1.
func FuzzParseLocalRange(f *testing.F) {
	for _, s := range []string{"8080", "localhost:8080", "[::1]:8080", "2456-2458", "host:1-70000", "http://x:1-2", "::1:2456-2458", "9000-8000", ":8080", "0-5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, r, err := parseLocalRange(s)
		if err != nil {
			return
		}
		if r.Low < 1 || r.Low > r.High || host == "" {
			t.Fatalf("parseLocalRange(%q) = %q, %v", s, host, r)
		}
	})
}
