package main

// Tests of the relayctl binary against a real relayd, over loopback: the
// contract scripts rely on (DESIGN.md): stdout lines, exit codes, one-line
// refusals on stderr, signals.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/proxytest"
)

// TestExpose carries bytes end to end over each transport, with the flags
// after LOCAL.
func TestExpose(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, kind := range []string{"quic", "tcp", "auto"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			local := pt.StartEcho(t, kind+":")
			p, urls := pt.StartExpose(t, 1, nil, local,
				"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			checkPort(t, urls[0], r)
			pt.CheckEcho(t, urls[0], kind+":", 256<<10)
			pt.CheckEcho(t, urls[0], kind+":", 1) // a second client on the same tunnel
			if kind != "auto" && !strings.Contains(p.Stderr.String(), "transport="+kind) {
				t.Errorf("relayctl --transport %s did not log transport=%s:\n%s", kind, kind, p.Stderr.String())
			}
			if strings.Count(p.Stdout.String(), "\n") != 1 {
				t.Errorf("stdout is %q, want exactly one line", p.Stdout.String())
			}
		})
	}
}

// TestExposeThroughProxy: expose reaches the relay through an HTTP, HTTPS
// or SOCKS5 proxy, given by --proxy or RELAY_PROXY, over TCP even with
// --transport auto, and shows the proxy's password nowhere.
func TestExposeThroughProxy(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, kind := range []string{proxytest.HTTP, proxytest.HTTPS, proxytest.SOCKS5} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			px := proxytest.Start(t, kind, proxytest.Config{User: "alice", Password: "pr0xy-secret", Nagle: kind == proxytest.SOCKS5})
			local := pt.StartEcho(t, kind+":")
			sock := filepath.Join(t.TempDir(), "agent.sock")
			args := []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--control", sock}
			var env []string
			switch kind {
			case proxytest.HTTP:
				args = append(args, "--proxy", px.URL())
			case proxytest.HTTPS:
				// Trusting the proxy's certificate as a user would on Linux;
				// Go reads no SSL_CERT_FILE on macOS and Windows.
				if runtime.GOOS != "linux" {
					t.Skip("SSL_CERT_FILE is read on Linux")
				}
				args = append(args, "--proxy", px.URL())
				env = []string{"SSL_CERT_FILE=" + proxytest.CAFile(t)}
			default:
				env = []string{"RELAY_PROXY=" + px.URL()}
			}
			p, urls := pt.StartExpose(t, 1, env, args...)
			pt.CheckEcho(t, urls[0], kind+":", 256<<10)
			if got := px.Targets(); len(got) != 1 || got[0] != r.Addr {
				t.Errorf("the proxy was asked for %q, want [%s]", got, r.Addr)
			}
			logs := p.Stderr.String()
			if !strings.Contains(logs, "transport=tcp") || !strings.Contains(logs, "proxy="+kind+"://alice:xxxxx@"+px.Addr) {
				t.Errorf("relayctl did not log transport=tcp and the proxy without its password:\n%s", logs)
			}
			if strings.Contains(logs+p.Stdout.String(), "pr0xy-secret") {
				t.Errorf("relayctl shows the proxy's password:\n%s", logs)
			}
			// status names the proxy, without its password too.
			sts := statusJSON(t, nil, "--control", sock)
			if len(sts) != 1 || sts[0]["proxy"] != kind+"://alice:xxxxx@"+px.Addr {
				t.Errorf("status --json: %v; want proxy %s://alice:xxxxx@%s", sts, kind, px.Addr)
			}
			// The relay, which sees the proxy's address, says where it came from.
			if !strings.Contains(r.Stderr.String(), "agent=127.0.0.1:") || !strings.Contains(r.Stderr.String(), "via_proxy=true") {
				t.Errorf("relayd did not log via_proxy=true:\n%s", r.Stderr.String())
			}
		})
	}
}

// checkPort checks that url's port is in r's range.
func checkPort(t *testing.T, url string, r *pt.Relayd) {
	t.Helper()
	port, _ := strconv.Atoi(pt.URLRE.FindStringSubmatch(url)[1])
	if port < r.Low || port > r.High {
		t.Errorf("%s: port outside the relay's ports %d-%d", url, r.Low, r.High)
	}
}

func TestExposeFromEnvironment(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "env:")
	_, urls := pt.StartExpose(t, 1,
		[]string{"RELAY_ADDR=" + r.Addr, "RELAY_TOKEN=" + pt.TestSecret, "RELAY_FINGERPRINT=" + r.FP}, local)
	pt.CheckEcho(t, urls[0], "env:", 4096)
}

func TestExposeTwoLocals(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	a, b := pt.StartEcho(t, "A:"), pt.StartEcho(t, "B:")
	// The flags sit between and after the LOCALs.
	_, urls := pt.StartExpose(t, 2, nil, a, "--relay", r.Addr, "--token", pt.TestSecret, b, "--fingerprint", r.FP)
	if urls[0] == urls[1] {
		t.Fatalf("both tunnels got %s", urls[0])
	}
	// One line per LOCAL, in the order given.
	pt.CheckEcho(t, urls[0], "A:", 8192)
	pt.CheckEcho(t, urls[1], "B:", 8192)
}

// TestRefusals checks every way expose can refuse: exit code, one line on
// stderr starting with "relayctl: " that says why, nothing on stdout.
func TestRefusals(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "")

	// A tunnel holding a port, for --port already taken.
	_, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP)
	taken := pt.URLRE.FindStringSubmatch(urls[0])[1]
	wrongFP := "SHA256:" + strings.Repeat("A", 43)
	down := pt.ClosedPort(t)
	tokenFile := pt.WriteSecret(t, pt.TestSecret)
	emptyFile := pt.WriteSecret(t, "  ")
	missingFile := filepath.Join(t.TempDir(), "no-token")
	seventeen := strings.TrimSuffix(strings.Repeat("10.0.0.0/8,", 17), ",")
	forbidding := proxytest.Start(t, proxytest.HTTP, proxytest.Config{Status: 403})
	locked := proxytest.Start(t, proxytest.SOCKS5, proxytest.Config{User: "alice", Password: "pw"})
	untrusted := proxytest.Start(t, proxytest.HTTPS, proxytest.Config{})

	ok := []string{"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"wrong token", nil, []string{local, "--relay", r.Addr, "--token", "not-the-right-secret", "--fingerprint", r.FP}, exitRefused, "token not accepted"},
		{"wrong fingerprint", nil, []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", wrongFP}, exitUnverified, "fingerprint"},
		{"wrong fingerprint tcp", nil, []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", wrongFP, "--transport", "tcp"}, exitUnverified, "fingerprint"},
		{"port outside range", nil, append([]string{local, "--port", strconv.Itoa(r.Low - 1)}, ok...), exitRefused, "outside the ports"},
		{"port range outside", nil, append([]string{local, "--port", "1024-1030"}, ok...), exitRefused, "outside the ports"},
		{"port taken", nil, append([]string{local, "--port", taken, "--name", "other"}, ok...), exitRefused, "already taken"},
		{"relay unreachable", nil, []string{local, "--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP}, exitFailure, "could not reach the relay"},
		{"relay unreachable tcp", nil, []string{local, "--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp"}, exitFailure, "could not reach the relay"},
		{"gave up", nil, []string{local, "--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp", "--wait-for-relay", "--max-retries", "2"}, exitFailure, "gave up reconnecting to the relay after 3 attempts"},
		{"no relay", nil, []string{local, "--token", pt.TestSecret, "--fingerprint", r.FP}, exitUsage, "--relay"},
		{"no token", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP}, exitUsage, "--token or --token-file"},
		{"token and token file", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token", pt.TestSecret, "--token-file", tokenFile}, exitUsage, "--token and --token-file are both set"},
		{"token env and token file", []string{"RELAY_TOKEN=" + pt.TestSecret}, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token-file", tokenFile}, exitUsage, "--token and --token-file are both set"},
		{"token and token file env", []string{"RELAY_TOKEN_FILE=" + tokenFile}, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token", pt.TestSecret}, exitUsage, "--token and --token-file are both set"},
		{"token file missing", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token-file", missingFile}, exitUsage, "--token-file: cannot read " + missingFile + ": no such file"},
		{"token file empty", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token-file", emptyFile}, exitUsage, "--token-file: " + emptyFile + " is empty"},
		{"token file a folder", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token-file", filepath.Dir(emptyFile)}, exitUsage, "--token-file: cannot read " + filepath.Dir(emptyFile)},
		{"token file wrong secret", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--token-file", pt.WriteSecret(t, "not-the-right-secret")}, exitRefused, "token not accepted"},
		{"bad allow", nil, append([]string{local, "--allow", "10.0.0.0/8", "--allow", "nope"}, ok...), exitUsage, `--allow: "nope" is not an IP address or CIDR prefix`},
		{"bad deny in a list", nil, append([]string{local, "--deny", "10.0.0.0/8,10.0.0.0/40"}, ok...), exitUsage, `--deny: "10.0.0.0/40" is not`},
		{"too many deny", nil, append([]string{local, "--deny", seventeen}, ok...), exitUsage, "--deny: 17 prefixes given, at most 16"},
		{"no local", nil, ok, exitUsage, "LOCAL"},
		{"local not a port", nil, append([]string{"notaport"}, ok...), exitUsage, `"notaport"`},
		{"local port too big", nil, append([]string{"70000"}, ok...), exitUsage, "1-65535"},
		{"host port too big", nil, append([]string{"localhost:70000"}, ok...), exitUsage, "1-65535"},
		{"bad transport", nil, append([]string{local, "--transport", "bogus"}, ok...), exitUsage, `"bogus"`},
		{"proxy v1 on udp", nil, append([]string{local, "--proto", "udp", "--proxy-protocol", "v1"}, ok...), exitUsage, "--proxy-protocol: v1 has no form for UDP"},
		{"keepalive not below idle", nil, append([]string{local, "--idle-timeout", "5s", "--keepalive", "5s"}, ok...), exitUsage, "--idle-timeout: 5s: must be longer than the keepalive (5s), so"},
		{"idle timeout below the default keepalive", nil, append([]string{local, "--idle-timeout", "3s"}, ok...), exitUsage,
			"--idle-timeout: 3s: must be longer than the keepalive (5s, its default; set --keepalive too), so a live relay is never taken for dead"},
		{"keepalive above the default idle timeout", nil, append([]string{local, "--keepalive", "20s"}, ok...), exitUsage,
			"--keepalive: 20s: must be shorter than --idle-timeout (15s, its default; set --idle-timeout too), so a live relay is never taken for dead"},
		{"zero flow timeout", nil, append([]string{local, "--udp-flow-timeout", "0s"}, ok...), exitUsage, "--udp-flow-timeout: 0s: must be a positive duration"},
		{"transparent with a PROXY header", nil, append([]string{local, "--transparent", "--proxy-protocol", "v2"}, ok...), exitUsage, onLinux("transparent and a PROXY header both give the server the client's address: use one")},
		{"transparent to another machine", nil, append([]string{"192.168.1.5:25565", "--transparent"}, ok...), exitUsage, onLinux("transparent needs the local server on this machine's loopback (localhost, 127.0.0.1 or [::1]), where its replies to a client's address come back to the agent; 192.168.1.5 is not")},
		{"bad proxy version", nil, append([]string{local, "--proxy-protocol", "v3"}, ok...), exitUsage, `--proxy-protocol: "v3" is not v1 or v2`},
		{"range without ports", nil, append([]string{"2456-2458"}, ok...), exitUsage, "range of 3 ports"},
		{"range of other length", nil, append([]string{"2456-2458", "--port", "3000-3001"}, ok...), exitUsage, "same length"},
		{"range reversed", nil, append([]string{"9000-8000", "--port", "3000-3001"}, ok...), exitUsage, `LOCAL: "9000-8000": port range "9000-8000": 8000 is below 9000`},
		{"range port too big", nil, append([]string{"localhost:1-70000"}, ok...), exitUsage, `LOCAL: "localhost:1-70000": port range "1-70000": "70000" is not a port number from 1 to 65535`},
		{"range after a URL", nil, append([]string{"http://localhost:2456-2458", "--port", "3000-3002"}, ok...), exitUsage,
			`LOCAL: "http://localhost:2456" is not PORT or HOST:PORT (not a URL: give it without http://, for example localhost:8080)`},
		{"bad proto", nil, append([]string{local, "--proto", "sctp"}, ok...), exitUsage, `"sctp"`},
		{"bad fingerprint", nil, []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", "SHA256:nope"}, exitUsage, "--fingerprint"},
		{"bad fingerprint env", []string{"RELAY_FINGERPRINT=abc"}, []string{local, "--relay", r.Addr, "--token", pt.TestSecret}, exitUsage, "--fingerprint"},
		{"bad name", nil, append([]string{local, "--name", "no spaces!"}, ok...), exitUsage, "--name"},
		{"bad port", nil, append([]string{local, "--port", "eighty"}, ok...), exitUsage, "--port"},
		{"one port two locals", nil, append([]string{local, local, "--port", taken}, ok...), exitUsage, "--port"},
		{"unknown flag", nil, append([]string{local, "--bogus-flag", "x"}, ok...), exitUsage, "bogus-flag"},
		{"bad log level", nil, append([]string{local, "--log-level", "loud"}, ok...), exitUsage, "--log-level"},
		{"bad proxy", nil, append([]string{local, "--proxy", "proxy.example:3128"}, ok...), exitUsage, "--proxy: not a proxy URL: give http://HOST:PORT or socks5://HOST:PORT"},
		{"bad proxy env", []string{"RELAY_PROXY=socks4://127.0.0.1:1080"}, append([]string{local}, ok...), exitUsage, `--proxy: scheme "socks4" is not http, https, socks5 or socks5h`},
		{"proxy with quic", nil, append([]string{local, "--proxy", "http://127.0.0.1:3128", "--transport", "quic"}, ok...), exitUsage,
			"--proxy carries TCP only, and QUIC needs UDP: set --transport to tcp, or auto (which then means tcp)"},
		{"proxy down", nil, append([]string{local, "--proxy", "http://" + down}, ok...), exitFailure,
			"could not reach the relay at " + r.Addr + " over tcp: proxy http://" + down + ": dial tcp " + down + ": connect: connection refused"},
		{"proxy refuses", nil, append([]string{local, "--proxy", forbidding.URL()}, ok...), exitFailure,
			"proxy " + forbidding.URL() + ": the proxy refused to connect to " + r.Addr + ": 403 Forbidden (many proxies allow CONNECT only to port 443"},
		{"proxy wants a password", nil, append([]string{local, "--proxy", locked.URLWith("alice", "wrong-secret")}, ok...), exitFailure,
			"proxy socks5://alice:xxxxx@" + locked.Addr + ": username/password authentication failed (the proxy did not accept the URL's user and password)"},
		{"proxy certificate not trusted", nil, append([]string{local, "--proxy", untrusted.URL()}, ok...), exitFailure,
			"proxy " + untrusted.URL() + ": TLS to the proxy: tls: failed to verify certificate: x509: certificate signed by unknown authority (this machine does not trust the proxy's certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := pt.Run(t, tt.env, pt.RelayctlBin, append([]string{"expose"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d", code, tt.code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if strings.Contains(errOut, "wrong-secret") {
				t.Errorf("stderr shows the proxy's password:\n%s", errOut)
			}
			last := pt.LastLine(errOut)
			if !strings.HasPrefix(last, "relayctl: ") || !strings.Contains(last, tt.want) {
				t.Errorf("last line of stderr is %q, want \"relayctl: …%s…\"\nstderr:\n%s", last, tt.want, errOut)
			}
		})
	}
}

// TestStopOnSignal: SIGINT and SIGTERM end expose with exit 0, and the relay
// then closes the public port.
func TestStopOnSignal(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, tc := range []struct {
		sig       syscall.Signal
		transport string
	}{{syscall.SIGINT, "quic"}, {syscall.SIGTERM, "quic"}, {syscall.SIGINT, "tcp"}, {syscall.SIGTERM, "tcp"}} {
		t.Run(tc.sig.String()+"/"+tc.transport, func(t *testing.T) {
			t.Parallel()
			local := pt.StartEcho(t, "x")
			p, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", tc.transport)
			pt.CheckEcho(t, urls[0], "x", 16)
			pt.Stopped(t, p, tc.sig)
			if errOut := p.Stderr.String(); strings.Contains(errOut, "relayctl: ") {
				t.Errorf("stderr reports an error after %v:\n%s", tc.sig, errOut)
			}
			// A drain can last drain_timeout: the line says how to end it.
			if errOut := p.Stderr.String(); !strings.Contains(errOut, "(signal again to close them now)") {
				t.Errorf("stderr after %v does not say a second signal closes open connections:\n%s", tc.sig, errOut)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				c, err := net.DialTimeout("tcp", pt.HostPort(t, urls[0]), time.Second)
				if err != nil {
					break
				}
				c.Close()
				if time.Now().After(deadline) {
					t.Fatalf("%s still accepts connections 5s after relayctl stopped", urls[0])
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestTrustOnFirstUse: with no --fingerprint, the first connection records
// the relay's key in --known-relays; a different key later is refused.
func TestTrustOnFirstUse(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "tofu:")
	known := filepath.Join(t.TempDir(), "sub", "known_relays")
	args := []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--known-relays", known}

	p, urls := pt.StartExpose(t, 1, nil, args...)
	pt.CheckEcho(t, urls[0], "tofu:", 1024)
	if errOut := p.Stderr.String(); !regexp.MustCompile(`level=WARN .*first use`).MatchString(errOut) {
		t.Errorf("no warning about trusting on first use:\n%s", errOut)
	}
	pt.Stopped(t, p, syscall.SIGTERM)
	data, err := os.ReadFile(known)
	if err != nil {
		t.Fatal(err)
	}
	if want := r.Addr + " " + r.FP + "\n"; string(data) != want {
		t.Fatalf("known relays file is %q, want %q", data, want)
	}

	// The recorded key matches: no warning this time.
	p, urls = pt.StartExpose(t, 1, nil, args...)
	pt.CheckEcho(t, urls[0], "tofu:", 1024)
	if strings.Contains(p.Stderr.String(), "first use") {
		t.Errorf("warned about first use on the second connection:\n%s", p.Stderr.String())
	}
	pt.Stopped(t, p, syscall.SIGINT)

	// Another key recorded for this address: refused, naming the file.
	other := "# relays\n" + r.Addr + " SHA256:" + strings.Repeat("A", 43) + "\n"
	if err := os.WriteFile(known, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, append([]string{"expose"}, args...)...)
	if code != exitUnverified {
		t.Errorf("exit code %d, want %d", code, exitUnverified)
	}
	if out != "" {
		t.Errorf("stdout %q, want nothing", out)
	}
	if last := pt.LastLine(errOut); !strings.HasPrefix(last, "relayctl: ") || !strings.Contains(last, known+":2") {
		t.Errorf("last line of stderr is %q, want \"relayctl: …\" naming %s:2", last, known)
	}
	if data, _ := os.ReadFile(known); string(data) != other {
		t.Errorf("known relays file changed to %q", data)
	}
}

// TestTokenFile: --token-file and RELAY_TOKEN_FILE carry the secret, so it
// shows in no process list.
func TestTokenFile(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "file:")
	file := pt.WriteSecret(t, "\n  "+pt.TestSecret+"  \n") // whitespace around it is dropped
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flag", nil, []string{"--token-file", file}},
		{"env", []string{"RELAY_TOKEN_FILE=" + file}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A name each: under one name the two would be a group, and
			// a client of one could reach the other's agent as it ends.
			p, urls := pt.StartExpose(t, 1, tc.env, append([]string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--name", tc.name}, tc.args...)...)
			pt.CheckEcho(t, urls[0], "file:", 4096)
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.Pid()))
			if err == nil && strings.Contains(string(cmdline), pt.TestSecret) {
				t.Errorf("the secret is on relayctl's command line: %q", cmdline)
			}
			if strings.Contains(p.Stderr.String(), pt.TestSecret) {
				t.Errorf("relayctl logged the secret:\n%s", p.Stderr.String())
			}
		})
	}
}

// TestScopedTokens: a token's names, ports and max_tunnels are enforced,
// and a refusal exits 3 with one line naming the rule.
func TestScopedTokens(t *testing.T) {
	t.Parallel()
	const (
		gameSecret = "game-secret-0123456789"
		oneSecret  = "one-secret-0123456789"
		portSecret = "port-secret-0123456789"
	)
	var scoped int
	r := pt.NewRelaydFunc(t, func(low, high int) string {
		// The other tokens keep off the scoped port, so the subtests,
		// which run at once, never take it from "port".
		scoped = low + 5
		others := fmt.Sprintf("%d-%d", low, scoped-1)
		return fmt.Sprintf("[[tokens]]\nid = \"game\"\nsecret = %q\nnames = [\"game-*\"]\nports = %q\n\n"+
			"[[tokens]]\nid = \"one\"\nsecret = %q\nmax_tunnels = 1\nports = %q\n\n"+
			"[[tokens]]\nid = \"port\"\nsecret_file = %q\nports = \"%d\"\n",
			gameSecret, others, oneSecret, others, pt.WriteSecret(t, portSecret), scoped)
	})
	local := pt.StartEcho(t, "scope:")
	args := func(secret string, more ...string) []string {
		return append([]string{"expose", local, "--relay", r.Addr, "--fingerprint", r.FP, "--token", secret}, more...)
	}
	refused := func(t *testing.T, args []string, want ...string) {
		t.Helper()
		out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, args...)
		if code != exitRefused {
			t.Errorf("exit %d, want %d", code, exitRefused)
		}
		if out != "" {
			t.Errorf("stdout %q, want nothing", out)
		}
		last := pt.LastLine(errOut)
		if !strings.HasPrefix(last, "relayctl: the relay refused: ") {
			t.Errorf("stderr ends %q, want \"relayctl: the relay refused: …\"", last)
		}
		for _, w := range want {
			if !strings.Contains(last, w) {
				t.Errorf("stderr ends %q, want it to say %q", last, w)
			}
		}
	}

	t.Run("names", func(t *testing.T) {
		t.Parallel()
		refused(t, args(gameSecret, "--name", "web"), `"web"`, "names", "game-*")
		refused(t, args(gameSecret), `"127.0.0.1-`, "names") // the name made from LOCAL
		_, urls := pt.StartExpose(t, 1, nil, args(gameSecret, "--name", "game-1")[1:]...)
		pt.CheckEcho(t, urls[0], "scope:", 1024)
	})
	t.Run("max_tunnels", func(t *testing.T) {
		t.Parallel()
		first, urls := pt.StartExpose(t, 1, nil, args(oneSecret)[1:]...)
		pt.CheckEcho(t, urls[0], "scope:", 1024)
		refused(t, args(oneSecret, "--name", "second"), "max_tunnels") // the same name would join the first
		// Two LOCALs in one session count as two.
		pt.Stopped(t, first, syscall.SIGTERM)
		local2 := pt.StartEcho(t, "")
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, errOut, code := pt.Run(t, nil, pt.RelayctlBin, args(oneSecret, local2)...)
			if code == exitRefused && strings.Contains(pt.LastLine(errOut), "max_tunnels") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("two LOCALs with max_tunnels = 1: exit %d, stderr ends %q; want a max_tunnels refusal", code, pt.LastLine(errOut))
			}
			time.Sleep(50 * time.Millisecond) // the first tunnel's release may lag its agent's exit
		}
	})
	t.Run("ports", func(t *testing.T) {
		t.Parallel()
		refused(t, args(portSecret, "--port", strconv.Itoa(scoped+1)), "ports rule", strconv.Itoa(scoped))
		_, urls := pt.StartExpose(t, 1, nil, args(portSecret)[1:]...)
		if want := fmt.Sprintf("tcp://127.0.0.1:%d", scoped); urls[0] != want {
			t.Errorf("got %s, want %s: the token's only port", urls[0], want)
		}
		pt.CheckEcho(t, urls[0], "scope:", 1024)
	})
}

// TestAllowDeny: --allow and --deny reach the relay, which turns away the
// clients they exclude.
func TestAllowDeny(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, tc := range []struct {
		name  string
		flags []string
		ok    bool
	}{
		{"deny loopback", []string{"--deny", "127.0.0.1"}, false},
		{"deny list", []string{"--deny", "192.0.2.0/24, 127.0.0.0/8"}, false},
		{"allow elsewhere", []string{"--allow", "10.0.0.0/8", "--allow", "192.0.2.1"}, false},
		{"allow loopback", []string{"--allow", "10.0.0.0/8,127.0.0.0/8"}, true},
		{"allow but deny", []string{"--allow", "127.0.0.0/8", "--deny", "127.0.0.1/32"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := pt.StartEcho(t, "ad:"), pt.StartEcho(t, "ad:")
			_, urls := pt.StartExpose(t, 2, nil, append([]string{a, b, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}, tc.flags...)...)
			for _, u := range urls { // every tunnel gets the lists
				if tc.ok {
					pt.CheckEcho(t, u, "ad:", 1024)
				} else {
					pt.CheckTurnedAway(t, u)
				}
			}
		})
	}
}

// onLinux is want where --transparent works; elsewhere relayctl refuses
// the flag before anything else about it.
func onLinux(want string) string {
	if runtime.GOOS != "linux" {
		return "transparent needs Linux (IP_TRANSPARENT)"
	}
	return want
}
