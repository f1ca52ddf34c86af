package main

// Tests of the relayd binary as a process: the contract scripts rely on
// (DESIGN.md): check's exit codes and messages, fingerprint, version, the
// generated token, signals.

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/transport"
)

// writeConfig writes text to a relay.toml of the test's own and returns
// its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCheckSample also checks that --config works before the command, as
// relayd --help lists it, and from RELAYD_CONFIG.
func TestCheckSample(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"check", "--config", samplePath}},
		{nil, []string{"--config", samplePath, "check"}},
		{nil, []string{"-c", samplePath, "check"}},
		{[]string{"RELAYD_CONFIG=" + samplePath}, []string{"check"}},
		{[]string{"RELAYD_CONFIG=/nonexistent/relay.toml"}, []string{"--config", samplePath, "check"}},
	} {
		cmd := strings.Join(slices.Concat(tt.env, []string{"relayd"}, tt.args), " ")
		out, errOut, code := pt.Run(t, tt.env, pt.RelaydBin, tt.args...)
		if code != 0 {
			t.Errorf("%s: exit %d\nstderr: %s", cmd, code, errOut)
			continue
		}
		if want := samplePath + ": ok ("; !strings.HasPrefix(out, want) {
			t.Errorf("%s: stdout %q, want %q…", cmd, out, want)
		}
	}
}

// TestCheckBadConfigs runs `relayd check` on each of badConfigs: exit 1 and
// one line naming the file, line and key. relayd itself refuses them the
// same way.
func TestCheckBadConfigs(t *testing.T) {
	t.Parallel()
	for _, tt := range badConfigs {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, tt.text)
			for _, args := range [][]string{{"check", "--config", path}, {"--config", path, "check"}, {"--config", path}} {
				out, errOut, code := pt.Run(t, nil, pt.RelaydBin, args...)
				if code != 1 {
					t.Errorf("relayd %s: exit %d, want 1", strings.Join(args, " "), code)
				}
				if slices.Contains(args, "check") && out != "" {
					t.Errorf("relayd check: stdout %q, want nothing", out)
				}
				want := "relayd: " + wantPrefix(path, tt.line, tt.key)
				if got := pt.LastLine(errOut); !strings.HasPrefix(got, want) || !strings.Contains(got, tt.msg) {
					t.Errorf("relayd %s: stderr ends %q, want %q…%q", strings.Join(args, " "), got, want, tt.msg)
				}
			}
		})
	}
}

// TestExtraArguments: a command that takes no argument refuses one with
// exit 2 and a line naming it (check used to ignore it, so `relayd check
// relay.toml` said nothing of the file it did not read).
func TestExtraArguments(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--config", samplePath, "extra"},
			`relayd: check takes no arguments (got "extra"): it reads the file given with --config FILE`},
		{[]string{"check", "relay.toml"},
			`relayd: check takes no arguments (got "relay.toml"): it reads the file given with --config FILE`},
		{[]string{"--config", samplePath, "check", "a", "b"},
			`relayd: check takes no arguments (got "a"): it reads the file given with --config FILE`},
		{[]string{"fingerprint", "relay.toml"},
			`relayd: fingerprint takes no arguments (got "relay.toml"): it reads the file given with --config FILE`},
		{[]string{"version", "--json"}, "relayd: unknown flag --json (see relayd version --help)"},
		{[]string{"check", "--confg", samplePath}, "relayd: unknown flag --confg: did you mean --config? (see relayd check --help)"},
		{[]string{"--cnfig", samplePath}, "relayd: unknown flag --cnfig: did you mean --config? (see relayd --help)"},
		{[]string{"check", "--config"}, "relayd: flag --config needs a value (see relayd check --help)"},
		{[]string{"version", "extra"}, `relayd: version takes no arguments (got "extra")`},
		{[]string{"--config", samplePath, "serve"}, `relayd: unexpected argument "serve" (commands: check, fingerprint, version)`},
		{[]string{"help", "serve"}, `relayd: no command "serve" to show help for (commands: check, fingerprint, version)`},
	} {
		out, errOut, code := pt.Run(t, nil, pt.RelaydBin, tt.args...)
		if got := pt.LastLine(errOut); code != 2 || out != "" || got != tt.want {
			t.Errorf("relayd %s: exit %d, stdout %q, stderr ends %q\nwant exit 2, nothing, %q",
				strings.Join(tt.args, " "), code, out, got, tt.want)
		}
	}
}

// TestLogFlags: --log-level and --log-format override [log]. A value they
// do not take stops relayd with exit 2 and a line naming the flag, before
// it binds anything (without --config, relayd would listen on the embedded
// default, 0.0.0.0:7000).
func TestLogFlags(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "bogus"}, `relayd: --log-level: "bogus" is not debug, info, warn or error`},
		{[]string{"--log-level", ""}, `relayd: --log-level: "" is not debug, info, warn or error`},
		{[]string{"--log-format", "xml"}, `relayd: --log-format: "xml" is not text or json`},
		{[]string{"--config", samplePath, "--log-format", "xml"}, `relayd: --log-format: "xml" is not text or json`},
	} {
		out, errOut, code := pt.Run(t, nil, pt.RelaydBin, tt.args...)
		if code != 2 || out != "" || errOut != tt.want+"\n" {
			t.Errorf("relayd %s: exit %d, stdout %q, stderr %q\nwant exit 2, nothing, %q",
				strings.Join(tt.args, " "), code, out, errOut, tt.want)
		}
	}

	// --log-format json wins over [log] format = "text".
	config, _, _, _ := pt.WriteRelaydConfig(t, pt.TokensTOML+"\n[log]\nformat = \"text\"\n")
	p := pt.Start(t, nil, pt.RelaydBin, "--config", config, "--log-format", "json")
	p.WaitFor(&p.Stderr, regexp.MustCompile(`(?m)^\{"time":"[^"]+","level":"INFO","msg":"relayd listening","listen":"127\.0\.0\.1:\d+"`), pt.StartTimeout)
	pt.Stopped(t, p, syscall.SIGTERM)
	for _, line := range strings.Split(strings.TrimSuffix(p.Stderr.String(), "\n"), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("with --log-format json, relayd logged a line that is not JSON: %q", line)
		}
	}
}

// TestCheckListenConfigs: `relayd check` refuses each of listenBadConfigs
// and publicHostBadConfigs with exit 1 and the whole message, naming the file it read.
func TestCheckListenConfigs(t *testing.T) {
	t.Parallel()
	for _, tt := range slices.Concat(listenBadConfigs, publicHostBadConfigs) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, tt.text)
			out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", path)
			want := "relayd: " + path + strings.TrimPrefix(tt.want, "bad.toml")
			if got := pt.LastLine(errOut); code != 1 || out != "" || got != want {
				t.Errorf("exit %d, stdout %q, stderr ends %q\nwant exit 1, nothing, %q", code, out, got, want)
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope.toml")
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no config", []string{"check"}, 2, "check needs --config FILE"},
		{"missing file", []string{"check", "--config", missing}, 1, missing},
		{"missing file before check", []string{"--config", missing, "check"}, 1, missing},
		{"missing file before fingerprint", []string{"--config", missing, "fingerprint"}, 1, missing},
		{"stray argument", []string{"serve"}, 2, `"serve"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := pt.Run(t, nil, pt.RelaydBin, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if got := pt.LastLine(errOut); !strings.HasPrefix(got, "relayd: ") || !strings.Contains(got, tt.want) {
				t.Errorf("stderr ends %q, want \"relayd: …%s…\"", got, tt.want)
			}
		})
	}
}

// writeCertPair writes a self-signed certificate and its key, as PEM
// files in dir, and returns their paths.
func writeCertPair(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	keyFile = filepath.Join(dir, name+".key")
	key, _, err := transport.LoadOrCreateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := transport.SelfSignedCertificate(key, "relay.example.com")
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, dir, name+".pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})), 0o644)
	return certFile, keyFile
}

// TestCheckCertFile: relayd reads cert_file and key_file only at start, and
// check reads them too, so that it does not pass a file relayd then
// refuses to start with; either refuses one that does not load with a
// line pointing at cert_file.
func TestCheckCertFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeCertPair(t, dir, "a")
	_, otherKey := writeCertPair(t, dir, "b")
	garbage := writeFile(t, dir, "garbage.pem", "not PEM\n", 0o644)
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		name, cert, key, want string
	}{
		{"missing cert", missing, key, "loading certificate: open " + missing + ": no such file or directory (key_file is " + key + ")"},
		{"missing key", cert, missing, "loading certificate: open " + missing + ": no such file or directory (key_file is " + missing + ")"},
		{"not PEM", garbage, key, "loading certificate: tls: failed to find any PEM data in certificate input (key_file is " + key + ")"},
		{"key of another certificate", cert, otherKey, "loading certificate: tls: private key does not match public key (key_file is " + otherKey + ")"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\ncert_file = %q\nkey_file = %q\n", tt.cert, tt.key))
			want := "relayd: " + path + ":3: relay.cert_file: " + tt.want
			for _, cmd := range []string{"check", "fingerprint"} {
				out, errOut, code := pt.Run(t, nil, pt.RelaydBin, cmd, "--config", path)
				if got := pt.LastLine(errOut); code != 1 || out != "" || got != want {
					t.Errorf("relayd %s: exit %d, stdout %q, stderr ends %q\nwant exit 1, nothing, %q", cmd, code, out, got, want)
				}
			}
		})
	}
	path := writeConfig(t, fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\ncert_file = %q\nkey_file = %q\n", cert, key))
	if out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", path); code != 0 || !strings.HasPrefix(out, path+": ok (") {
		t.Errorf("relayd check of a loadable pair: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	config, stateDir, _, _ := pt.WriteRelaydConfig(t, "")
	var first string
	for i := range 2 {
		out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "fingerprint", "--config", config)
		if code != 0 {
			t.Fatalf("run %d: exit %d, stderr %q", i+1, code, errOut)
		}
		if !regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}\n$`).MatchString(out) {
			t.Fatalf("run %d printed %q, want one line SHA256:…", i+1, out)
		}
		// The run that makes the key says so, and where: run from a shell
		// beside a relay whose key is elsewhere (a systemd unit's
		// $STATE_DIRECTORY), it prints a key no relay serves.
		wantErr := ""
		if i == 0 {
			wantErr = "relayd: no key was there yet, so this made one: " + filepath.Join(stateDir, "relay.key") +
				"; a relayd already running with another state_dir has another key (a systemd unit's is in its $STATE_DIRECTORY: STATE_DIRECTORY=/var/lib/relayd relayd fingerprint --config FILE)\n"
		}
		if errOut != wantErr {
			t.Errorf("run %d: stderr %q, want %q", i+1, errOut, wantErr)
		}
		if i == 0 {
			first = out
		} else if out != first {
			t.Errorf("the fingerprint changed: %q then %q", first, out)
		}
		fi, err := os.Stat(filepath.Join(stateDir, "relay.key"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("relay.key has mode %v, want 0600", fi.Mode().Perm())
		}
	}
	// relayd serves with the key it printed.
	r := pt.StartRelayd(t, config, stateDir)
	if r.FP+"\n" != first {
		t.Errorf("relayd runs with %s, but fingerprint printed %q", r.FP, first)
	}
}

// TestFingerprintConfigFirst: `relayd --config FILE fingerprint` prints the
// key of FILE's state_dir, as `relayd fingerprint --config FILE` does, and
// makes no key in the default state dir. It used to print (and create) the
// default one, so agents pinned a key the relay never served.
func TestFingerprintConfigFirst(t *testing.T) {
	t.Parallel()
	config, _, _, _ := pt.WriteRelaydConfig(t, "")
	xdg := t.TempDir()
	env := []string{"XDG_STATE_HOME=" + xdg}
	want, errOut, code := pt.Run(t, env, pt.RelaydBin, "fingerprint", "--config", config)
	if code != 0 {
		t.Fatalf("relayd fingerprint --config: exit %d, stderr %q", code, errOut)
	}
	for _, args := range [][]string{
		{"--config", config, "fingerprint"},
		{"-c", config, "fingerprint"},
		{"--config=" + config, "fingerprint"},
	} {
		out, errOut, code := pt.Run(t, env, pt.RelaydBin, args...)
		if code != 0 || out != want {
			t.Errorf("relayd %s: exit %d, printed %q (stderr %q), want exit 0 and %q", strings.Join(args, " "), code, out, errOut, want)
		}
	}
	if _, err := os.Stat(filepath.Join(xdg, "relayd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the default state dir %s/relayd was created (stat: %v)", xdg, err)
	}
}

var agentLineRE = regexp.MustCompile(`relayctl expose --relay (127\.0\.0\.1:\d+) --token (\S+) --fingerprint (SHA256:\S+)`)

// TestGeneratedToken: with no [[tokens]], relayd makes a token, keeps it in
// state_dir/token and prints a relayctl line that works; a restart keeps it.
func TestGeneratedToken(t *testing.T) {
	t.Parallel()
	config, stateDir, _, _ := pt.WriteRelaydConfig(t, "")
	r := pt.StartRelayd(t, config, stateDir)
	m := r.WaitFor(&r.Stdout, agentLineRE, pt.StartTimeout)
	addr, token, fp := m[1], m[2], m[3]
	if made := "relay.toml defines no token, so relayd made one (kept in " + filepath.Join(stateDir, "token") + ")."; !strings.Contains(r.Stdout.String(), made) {
		t.Errorf("the first start does not say %q:\n%s", made, r.Stdout.String())
	}
	if addr != r.Addr || fp != r.FP {
		t.Errorf("printed --relay %s --fingerprint %s; relayd listens on %s with %s", addr, fp, r.Addr, r.FP)
	}
	tokenPath := filepath.Join(stateDir, "token")
	data, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(data)) != token {
		t.Errorf("%s holds %q, but relayd printed --token %s", tokenPath, data, token)
	}
	if fi, _ := os.Stat(tokenPath); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", tokenPath, fi.Mode().Perm())
	}
	if strings.Contains(r.Stderr.String(), token) {
		t.Errorf("the token appears in the log:\n%s", r.Stderr.String())
	}

	// The printed line works.
	local := pt.StartEcho(t, "gen:")
	p := pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--relay", addr, "--token", token, "--fingerprint", fp)
	url := p.WaitFor(&p.Stdout, regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+\n`), pt.StartTimeout)[0]
	pt.CheckEcho(t, strings.TrimSpace(url), "gen:", 4096)
	pt.Stopped(t, p, syscall.SIGTERM)
	pt.Stopped(t, r.Proc, syscall.SIGTERM)

	// A restart reuses the token, and does not print it into a log.
	r = pt.StartRelayd(t, config, stateDir)
	r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="using the generated token"`), pt.StartTimeout)
	if again, _ := os.ReadFile(tokenPath); string(again) != string(data) {
		t.Errorf("restart changed %s from %q to %q", tokenPath, data, again)
	}
	if r.FP != fp {
		t.Errorf("restart changed the fingerprint from %s to %s", fp, r.FP)
	}
	if out := r.Stdout.String(); strings.Contains(out, token) || strings.Contains(out, "made one") {
		t.Errorf("restart printed the token, or that it made one, on stdout (not a terminal): %q", out)
	}
	p = pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--token", token, "--fingerprint", fp, "--transport", "tcp")
	url = p.WaitFor(&p.Stdout, regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+\n`), pt.StartTimeout)[0]
	pt.CheckEcho(t, strings.TrimSpace(url), "gen:", 4096)
}

// TestGeneratedTokenAfterFailedStart: a first start without [[tokens]]
// that cannot bind keeps no token, so the next start prints its relayctl
// line as a new token's even off a terminal, where a reused token is only
// logged by its file (as a service's first start would otherwise never
// show it).
func TestGeneratedTokenAfterFailedStart(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	config, stateDir, _, _ := pt.WriteRelaydConfig(t, "")
	good, _ := os.ReadFile(config)
	taken := strings.Replace(string(good), `listen = "127.0.0.1:0"`, `listen = "`+ln.Addr().String()+`"`, 1)
	if err := os.WriteFile(config, []byte(taken), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "--config", config); code != 1 || out != "" {
		t.Fatalf("relayd on a taken port: exit %d, stdout %q (stderr %q), want exit 1 and nothing", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "token")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed start left a token file (stat: %v)", err)
	}
	if err := os.WriteFile(config, good, 0o600); err != nil {
		t.Fatal(err)
	}
	r := pt.StartRelayd(t, config, stateDir)
	r.WaitFor(&r.Stdout, agentLineRE, pt.StartTimeout)
	if made := "so relayd made one"; !strings.Contains(r.Stdout.String(), made) {
		t.Errorf("the first start that listens does not say %q:\n%s", made, r.Stdout.String())
	}
}

// TestSIGHUPTokenless: a reload of a relay.toml that still defines no
// [[tokens]] keeps the generated token, and its agents' tunnels carry on;
// a reload that takes away every token of a relayd started with some is
// refused with a line saying what to do (it said "relay: no tokens
// configured"), and the token keeps working.
func TestSIGHUPTokenless(t *testing.T) {
	t.Parallel()
	const admin = "[admin]\nlisten = \"127.0.0.1:0\"\n"
	t.Run("generated token kept", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, "")
		token := r.WaitFor(&r.Stdout, agentLineRE, pt.StartTimeout)[2]
		local := pt.StartEcho(t, "gen:")
		agent, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", token, "--fingerprint", r.FP, "--transport", "tcp")
		r.RewriteConfig(t, "[limits]\nper_ip_connections = 20\n\n"+admin)
		r.Signal(syscall.SIGHUP)
		r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded" file=\S+ changed=limits.per_ip_connections tokens_added="" tokens_removed="" tokens_changed="" tokens_renamed="" tunnels_moved=0 tunnels_closed=0 sessions_closed=0`), pt.StartTimeout)
		pt.CheckEcho(t, urls[0], "gen:", 1024)
		_, more := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", token, "--fingerprint", r.FP, "--transport", "tcp", "--name", "more")
		pt.CheckEcho(t, more[0], "gen:", 1024)
		if errOut := agent.Stderr.String(); strings.Contains(errOut, "reconnect") || strings.Contains(errOut, "relayctl: ") {
			t.Errorf("the agent of the generated token did not carry on across the reload:\n%s", errOut)
		}
	})
	t.Run("every token removed", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, pt.TokensTOML)
		r.RewriteConfig(t, admin)
		r.Signal(syscall.SIGHUP)
		want := `level=ERROR msg="reload failed; the running configuration stays" file=` + r.Config +
			` err="relay.toml defines no [[tokens]] now, and a reload cannot take every token away: add one, or restart relayd to have it make a token of its own"`
		r.WaitFor(&r.Stderr, regexp.MustCompile(regexp.QuoteMeta(want)), pt.StartTimeout)
		local := pt.StartEcho(t, "kept:")
		_, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp")
		pt.CheckEcho(t, urls[0], "kept:", 1024)
		if out := r.Stdout.String(); out != "" {
			t.Errorf("relayd printed %q on stdout; want no generated token from a reload", out)
		}
	})
}

// TestPrintAgentLine: the sentence above the relayctl line says whether
// this start made the token or reuses one an earlier run made (a restart
// used to say "made one" too); off a terminal a reused token is only
// logged, by its file.
func TestPrintAgentLine(t *testing.T) {
	cfg, err := ParseConfig("relay.toml", "[relay]\npublic_host = \"relay.example.com\"\n")
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.IPv4zero, Port: 7000}
	const secret, fp, dir = "generated-secret-0123456789", "SHA256:FKRT", "/var/lib/relayd"
	cmd := "  relayctl expose --relay relay.example.com:7000 --token " + secret + " --fingerprint " + fp + " localhost:8080\n\n"
	for _, tc := range []struct {
		name             string
		tty, created     bool
		wantOut, wantLog string
	}{
		{"made now, terminal", true, true,
			"\nrelay.toml defines no token, so relayd made one (kept in /var/lib/relayd/token).\nOn the machine with the server to share, run:\n\n" + cmd, ""},
		{"made now, not a terminal", false, true,
			"\nrelay.toml defines no token, so relayd made one (kept in /var/lib/relayd/token).\nOn the machine with the server to share, run:\n\n" + cmd, ""},
		{"made earlier, terminal", true, false,
			"\nrelay.toml defines no token, so relayd uses the one it made on an earlier run (kept in /var/lib/relayd/token).\nOn the machine with the server to share, run:\n\n" + cmd, ""},
		{"made earlier, not a terminal", false, false,
			"", `level=INFO msg="using the generated token" file=/var/lib/relayd/token`},
	} {
		var out, logs strings.Builder
		log := slog.New(slog.NewTextHandler(&logs, nil))
		printAgentLine(&out, tc.tty, log, cfg, addr, secret, fp, tc.created, dir)
		if out.String() != tc.wantOut {
			t.Errorf("%s: printed\n%q\nwant\n%q", tc.name, out.String(), tc.wantOut)
		}
		if got := logs.String(); tc.wantLog == "" && got != "" || !strings.Contains(got, tc.wantLog) {
			t.Errorf("%s: logged %q, want %q", tc.name, got, tc.wantLog)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("%s: the secret is in the log: %q", tc.name, logs.String())
		}
	}
}

// TestAdvertisedHost: the relayctl line names public_host, else the listen
// host when it is one, else, for a wildcard, one of this machine's global
// IPv4 addresses, or the placeholder RELAY_HOST on a machine with none
// (which of the two depends on the machine the test runs on).
func TestAdvertisedHost(t *testing.T) {
	var global []string
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() && n.IP.To4() != nil {
			global = append(global, n.IP.String())
		}
	}
	for _, tt := range []struct{ text, want string }{
		{"public_host = \"relay.example.com\"", "relay.example.com"},
		{"listen = \"192.0.2.1:7000\"", "192.0.2.1"},
		{"listen = \"[2001:db8::1]:7000\"", "2001:db8::1"},
		{"listen = \"relay.internal:7000\"", "relay.internal"},
		{"listen = \"0.0.0.0:7000\"", ""},
		{"listen = \"[::]:7000\"", ""},
		{"listen = \":7000\"", ""},
	} {
		cfg, err := ParseConfig("relay.toml", "[relay]\n"+tt.text+"\n")
		if err != nil {
			t.Fatalf("%s: %v", tt.text, err)
		}
		got := advertisedHost(cfg)
		switch {
		case tt.want != "":
			if got != tt.want {
				t.Errorf("%s: advertised %q, want %q", tt.text, got, tt.want)
			}
		case len(global) == 0 && got != "RELAY_HOST":
			t.Errorf("%s on a machine with no global IPv4 address: advertised %q, want RELAY_HOST", tt.text, got)
		case len(global) > 0 && !slices.Contains(global, got):
			t.Errorf("%s: advertised %q, want one of this machine's global IPv4 addresses %q", tt.text, got, global)
		}
	}
}

// TestStopOnSignal: SIGTERM and SIGINT stop relayd with exit 0, with an
// agent connected. The agent is told, stays up, and when relayd starts
// again it comes back by itself on the same port.
func TestStopOnSignal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sig       syscall.Signal
		transport string
	}{{syscall.SIGTERM, "quic"}, {syscall.SIGINT, "quic"}, {syscall.SIGTERM, "tcp"}, {syscall.SIGINT, "tcp"}} {
		t.Run(tc.sig.String()+"/"+tc.transport, func(t *testing.T) {
			t.Parallel()
			r := pt.NewRelaydPinned(t, nil, pt.TokensTOML)
			local := pt.StartEcho(t, "back:")
			agent, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret,
				"--fingerprint", r.FP, "--transport", tc.transport)
			pt.Stopped(t, r.Proc, tc.sig)
			if !strings.Contains(r.Stderr.String(), "relayd stopped") {
				t.Errorf("stderr does not say \"relayd stopped\":\n%s", r.Stderr.String())
			}
			agent.WaitFor(&agent.Stderr, regexp.MustCompile(`relay is shutting down`), pt.StartTimeout)
			r.Restart(t)
			agent.WaitFor(&agent.Stderr, regexp.MustCompile(`msg=reconnected`), pt.StartTimeout)
			pt.CheckEcho(t, urls[0], "back:", 4096)
			if out := agent.Stdout.String(); out != urls[0]+"\n" {
				t.Errorf("relayctl's stdout is %q; want the one address it printed at first", out)
			}
		})
	}
}

// TestStopOnSignalIdle: the same with no agent.
func TestStopOnSignalIdle(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			r := pt.NewRelayd(t, pt.TokensTOML)
			pt.Stopped(t, r.Proc, sig)
			if !strings.Contains(r.Stderr.String(), "relayd stopped") {
				t.Errorf("stderr does not say \"relayd stopped\":\n%s", r.Stderr.String())
			}
			// The listen port is free again.
			ln, err := net.Listen("tcp", r.Addr)
			if err != nil {
				t.Errorf("listen address still held after relayd stopped: %v", err)
			} else {
				ln.Close()
			}
		})
	}
}

// TestListenPortInUse: a listen port another program holds stops relayd with
// exit 1 and a line that points at [relay] listen.
func TestListenPortInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	config, _, _, _ := pt.WriteRelaydConfig(t, pt.TokensTOML)
	data, _ := os.ReadFile(config)
	data = []byte(strings.Replace(string(data), `listen = "127.0.0.1:0"`, `listen = "`+ln.Addr().String()+`"`, 1))
	if err := os.WriteFile(config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "--config", config)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout %q, want nothing", out)
	}
	addr := ln.Addr().String()
	want := "relayd: listening on tcp " + addr + ": listen tcp " + addr + ": bind: address already in use: stop whatever holds that port, or change [relay] listen"
	if got := pt.LastLine(errOut); got != want {
		t.Errorf("stderr ends %q, want %q", got, want)
	}
}

// TestListenAddressNotHere: a listen address that is not this machine's
// stops relayd with exit 1 and a line that says so, not that something
// holds the port (which it used to say for every failure to listen).
// 192.0.2.1 (TEST-NET-1) is on no interface here: binding it fails with
// EADDRNOTAVAIL, and nothing is sent.
func TestListenAddressNotHere(t *testing.T) {
	t.Parallel()
	const notHere = "192.0.2.1:0"
	for _, tt := range []struct {
		name, extra, want string
	}{
		{"relay", "",
			"relayd: listening on tcp " + notHere + ": listen tcp " + notHere + ": bind: cannot assign requested address: " +
				"no interface of this machine has that address (behind NAT, the public one is not among them): change [relay] listen to one it has"},
		{"admin", "[admin]\nlisten = \"" + notHere + "\"\ntoken = \"" + adminToken + "\"\n",
			"relayd: admin API: listen tcp " + notHere + ": bind: cannot assign requested address: " +
				"no interface of this machine has that address (behind NAT, the public one is not among them): change [admin] listen to one it has (\"\" turns the admin API off)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			config, _, _, _ := pt.WriteRelaydConfig(t, tt.extra+"\n"+pt.TokensTOML)
			if tt.name == "relay" {
				data, _ := os.ReadFile(config)
				data = []byte(strings.Replace(string(data), `listen = "127.0.0.1:0"`, `listen = "`+notHere+`"`, 1))
				if err := os.WriteFile(config, data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "--config", config)
			if got := pt.LastLine(errOut); code != 1 || out != "" || got != tt.want {
				t.Errorf("exit %d, stdout %q, stderr ends %q\nwant exit 1, nothing, %q", code, out, got, tt.want)
			}
		})
	}
}

// TestSecretPermissionWarning: relayd warns at start and at each reload,
// and relayd check warns too, when relay.toml holds a secret and every
// user can read it, or everyone can read a secret_file; they stay quiet
// when only relayd's user can.
func TestSecretPermissionWarning(t *testing.T) {
	t.Parallel()
	const fileSecret = "file-secret-0123456789"
	for _, tt := range []struct {
		name       string
		configMode os.FileMode
		fileMode   os.FileMode // 0: the secret is inline
		warn       string      // the warning's file ("config" or "secret"), or ""
	}{
		{"inline 0644", 0o644, 0, "config"},
		{"inline 0640", 0o640, 0, ""},
		{"inline 0604", 0o604, 0, "config"},
		{"inline 0600", 0o600, 0, ""},
		{"secret_file 0644", 0o644, 0o644, "secret"},
		{"secret_file 0600", 0o644, 0o600, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			extra := pt.TokensTOML
			secretPath := ""
			if tt.fileMode != 0 {
				secretPath = pt.WriteSecret(t, fileSecret)
				if err := os.Chmod(secretPath, tt.fileMode); err != nil {
					t.Fatal(err)
				}
				extra = "[[tokens]]\nid = \"f\"\nsecret_file = \"" + secretPath + "\"\n"
			}
			config, stateDir, _, _ := pt.WriteRelaydConfig(t, extra)
			if err := os.Chmod(config, tt.configMode); err != nil {
				t.Fatal(err)
			}
			r := pt.StartRelayd(t, config, stateDir)
			r.Signal(syscall.SIGHUP)
			r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded"`), pt.StartTimeout)
			errOut := r.Stderr.String()
			_, checkErr, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", config)
			if code != 0 {
				t.Errorf("relayd check: exit %d, want 0\nstderr: %s", code, checkErr)
			}
			var want, wantCheck string
			switch tt.warn {
			case "config":
				want = fmt.Sprintf(`level=WARN msg="the config file holds token secrets and every user can read it" file=%s mode=%04o fix="chmod 600 %s (or 640 with relayd's group), or move each secret to a file of its own named by secret_file"`,
					config, tt.configMode, config)
				wantCheck = fmt.Sprintf("relayd: warning: %s: the config file holds token secrets and every user can read it (mode %04o): chmod 600 %s (or 640 with relayd's group), or move each secret to a file of its own named by secret_file\n",
					config, tt.configMode, config)
			case "secret":
				want = fmt.Sprintf(`level=WARN msg="the secret_file of token \"f\" can be read by every user" file=%s mode=%04o fix="chmod 600 %s (or 640 with relayd's group)"`,
					secretPath, tt.fileMode, secretPath)
				wantCheck = fmt.Sprintf("relayd: warning: %s: the secret_file of token \"f\" can be read by every user (mode %04o): chmod 600 %s (or 640 with relayd's group)\n",
					secretPath, tt.fileMode, secretPath)
			}
			// Once at start, before relayd listens; once at the reload.
			start, reloaded, _ := strings.Cut(errOut, `msg="relayd listening"`)
			for i, part := range []string{start, reloaded} {
				warnings := regexp.MustCompile(`(?m)^.*level=WARN.*$`).FindAllString(part, -1)
				switch {
				case want == "" && len(warnings) > 0:
					t.Errorf("warned with the file readable by its owner alone:\n%s", strings.Join(warnings, "\n"))
				case want != "" && (len(warnings) != 1 || warnings[0][strings.Index(warnings[0], "level="):] != want):
					t.Errorf("warnings at the %s:\n%s\nwant one:\n%s", []string{"start", "reload"}[i], strings.Join(warnings, "\n"), want)
				}
			}
			if checkErr != wantCheck {
				t.Errorf("relayd check: stderr %q\nwant %q", checkErr, wantCheck)
			}
			if strings.Contains(errOut, pt.TestSecret) || strings.Contains(errOut, fileSecret) {
				t.Errorf("a secret appears in relayd's log:\n%s", errOut)
			}
		})
	}
}

// TestSecretsNeverLogged: at debug level, through agents that authenticate
// (a secret inline and one from secret_file), one that fails, clients and
// a stop, no secret appears in relayd's or relayctl's output.
func TestSecretsNeverLogged(t *testing.T) {
	t.Parallel()
	const fileSecret = "file-secret-0123456789"
	const wrongSecret = "wrong-secret-0123456789"
	secretPath := pt.WriteSecret(t, fileSecret)
	r := pt.NewRelayd(t, "[log]\nlevel = \"debug\"\n\n"+pt.TokensTOML+
		"\n[[tokens]]\nid = \"fromfile\"\nsecret_file = \""+secretPath+"\"\n")
	local := pt.StartEcho(t, "s:")
	var agents []*pt.Proc
	for _, args := range [][]string{
		{"--token", pt.TestSecret, "--transport", "quic"},
		{"--token-file", secretPath, "--transport", "tcp"},
	} {
		p, urls := pt.StartExpose(t, 1, nil, append([]string{local, "--relay", r.Addr, "--fingerprint", r.FP, "--log-level", "debug"}, args...)...)
		pt.CheckEcho(t, urls[0], "s:", 1024)
		agents = append(agents, p)
	}
	_, wrongErr, code := pt.Run(t, nil, pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--fingerprint", r.FP,
		"--token", wrongSecret, "--log-level", "debug")
	if code != 3 {
		t.Errorf("wrong token: exit %d, want 3", code)
	}
	pt.Stopped(t, r.Proc, syscall.SIGTERM)
	if !strings.Contains(r.Stderr.String(), `token=fromfile`) {
		t.Errorf("relayd's debug log does not mention token=fromfile; is it logging at all?\n%s", r.Stderr.String())
	}
	outputs := map[string]string{"relayd stderr": r.Stderr.String(), "relayd stdout": r.Stdout.String(), "wrong-token relayctl": wrongErr}
	for i, p := range agents {
		pt.Stopped(t, p, syscall.SIGTERM)
		outputs[fmt.Sprintf("relayctl %d stderr", i+1)] = p.Stderr.String()
	}
	for name, out := range outputs {
		for _, s := range []string{pt.TestSecret, fileSecret, wrongSecret} {
			if strings.Contains(out, s) {
				t.Errorf("%s shows the secret %q:\n%s", name, s, out)
			}
		}
	}
}

// TestClientLimits: [limits] and a token's own limits reach the relay:
// clients over a limit are closed at once, the others served.
func TestClientLimits(t *testing.T) {
	t.Parallel()
	expose := func(t *testing.T, r *pt.Relayd, token, tag string) string {
		local := pt.StartEcho(t, tag)
		_, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", token, "--fingerprint", r.FP)
		return urls[0]
	}
	const other = "other-secret-0123456789"
	otherTOML := "[[tokens]]\nid = \"other\"\nsecret = \"" + other + "\"\n"

	t.Run("limits deny", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, "[limits]\ndeny = [\"10.0.0.0/8\", \"127.0.0.1\"]\n\n"+pt.TokensTOML)
		pt.CheckTurnedAway(t, expose(t, r, pt.TestSecret, "d:"))
	})
	t.Run("limits allow", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, "[limits]\nallow = [\"127.0.0.0/8\", \"::1\"]\n\n"+pt.TokensTOML)
		pt.CheckEcho(t, expose(t, r, pt.TestSecret, "a:"), "a:", 1024)
	})
	t.Run("token allow", func(t *testing.T) {
		t.Parallel()
		// Only the token with the allow list turns loopback away.
		r := pt.NewRelayd(t, pt.TokensTOML+"allow = [\"192.0.2.0/24\"]\n\n"+otherTOML)
		pt.CheckTurnedAway(t, expose(t, r, pt.TestSecret, "t:"))
		pt.CheckEcho(t, expose(t, r, other, "o:"), "o:", 1024)
	})
	t.Run("per_ip_connections", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, "[limits]\nper_ip_connections = 1\n\n"+pt.TokensTOML)
		url := expose(t, r, pt.TestSecret, "c:")
		first := pt.Hold(t, url, "c:")
		pt.CheckTurnedAway(t, url)
		first.Close()
		waitAdmitted(t, url, "c:")
	})
	t.Run("token per_ip_rate", func(t *testing.T) {
		t.Parallel()
		// One new connection per 100 s: the second at once is turned away.
		r := pt.NewRelayd(t, pt.TokensTOML+"per_ip_rate = 0.01\nper_ip_burst = 1\n")
		url := expose(t, r, pt.TestSecret, "r:")
		pt.CheckEcho(t, url, "r:", 16)
		pt.CheckTurnedAway(t, url)
	})
	t.Run("token max_connections", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, pt.TokensTOML+"max_connections = 1\n")
		a, b := expose(t, r, pt.TestSecret, "m:"), expose(t, r, pt.TestSecret, "n:")
		first := pt.Hold(t, a, "m:")
		pt.CheckTurnedAway(t, b) // another tunnel of the same token
		first.Close()
		waitAdmitted(t, b, "n:")
	})
}

// waitAdmitted retries a client until the tunnel at url admits it again
// (the relay frees a slot once the connection before it is fully closed).
func waitAdmitted(t *testing.T, url, tag string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", pt.HostPort(t, url), time.Second)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, len(tag))
			_, err = io.ReadFull(c, got)
			c.Close()
			if err == nil && string(got) == tag {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still turns clients away 5s after the first one closed: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHelpCommand: relayd help [COMMAND] prints the help, as --help does
// (it used to be refused as an unexpected argument), and --help anywhere
// on the line asks for it (urfave/cli took the other argument for a help
// topic: "No help topic for 'serve'", exit 3).
func TestHelpCommand(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string // on stdout; with "relayd: ", the whole of stderr and exit 2
	}{
		{[]string{"help"}, "COMMANDS:\n   check"},
		{[]string{"help", "check"}, "validate relay.toml"},
		{[]string{"check", "--help", "x"}, "validate relay.toml"},
		{[]string{"--config", samplePath, "check", "-h"}, "validate relay.toml"},
		{[]string{"--config", samplePath, "--help"}, "COMMANDS:\n   check"},
		{[]string{"--help", "serve"}, `relayd: no command "serve" to show help for (commands: check, fingerprint, version)`},
	} {
		out, errOut, code := pt.Run(t, nil, pt.RelaydBin, tt.args...)
		if msg, usage := strings.CutPrefix(tt.want, "relayd: "); usage {
			if code != 2 || out != "" || errOut != "relayd: "+msg+"\n" {
				t.Errorf("relayd %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", strings.Join(tt.args, " "), code, out, errOut, tt.want)
			}
			continue
		}
		if code != 0 || !strings.Contains(out, tt.want) {
			t.Errorf("relayd %s: exit %d, stdout %q, stderr %q; want exit 0 and %q", strings.Join(tt.args, " "), code, out, errOut, tt.want)
		}
	}
}

// TestSpacedSecretWarns: a secret with whitespace around it is accepted,
// since agents that send it as written (--token) have been let in, but
// check and a start warn of it: secret_file and --token-file leave it out.
func TestSpacedSecretWarns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "relay.toml")
	cfg := fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\nports = \"61000-61009\"\nstate_dir = %q\n\n[[tokens]]\nid = \"spaced\"\nsecret = \" %s \"\n",
		filepath.Join(dir, "state"), pt.TestSecret)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", path)
	want := fmt.Sprintf("relayd: warning: %s: token \"spaced\": the token's secret has whitespace at its start or end, which secret_file and relayctl's --token-file leave out: "+
		"only agents that give it as written (--token) get in; take it off, and tell the token's agents\n", path)
	if code != 0 || !strings.HasPrefix(out, path+": ok") || errOut != want {
		t.Errorf("relayd check: exit %d\nstdout: %s\nstderr: %q\nwant exit 0, ok, and %q", code, out, errOut, want)
	}
	r := pt.StartRelayd(t, path, filepath.Join(dir, "state"))
	r.WaitFor(&r.Stderr, regexp.MustCompile(`level=WARN msg="the token's secret has whitespace at its start or end, [^"]+" token=spaced file=`), pt.StartTimeout)
}
