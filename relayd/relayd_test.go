package main

// Tests of the relayd binary as a process: the contract scripts rely on
// (DESIGN.md): check's exit codes and messages, fingerprint, version, the
// generated token, signals.

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

func TestVersion(t *testing.T) {
	t.Parallel()
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "version")
	if code != 0 {
		t.Fatalf("relayd version: exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "relayd ") || !strings.Contains(lines[0], "protocol 1") {
		t.Fatalf("relayd version printed %q, want one line naming relayd and protocol 1", out)
	}
}

func TestCheckSample(t *testing.T) {
	t.Parallel()
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", samplePath)
	if code != 0 {
		t.Fatalf("relayd check --config %s: exit %d\nstderr: %s", samplePath, code, errOut)
	}
	if !strings.Contains(out, "ok") {
		t.Errorf("stdout %q does not say ok", out)
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
			path := filepath.Join(t.TempDir(), "relay.toml")
			if err := os.WriteFile(path, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"check", "--config", path}, {"--config", path}} {
				out, errOut, code := pt.Run(t, nil, pt.RelaydBin, args...)
				if code != 1 {
					t.Errorf("relayd %s: exit %d, want 1", strings.Join(args, " "), code)
				}
				if args[0] == "check" && out != "" {
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

func TestCheckUsage(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope.toml")
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no config", []string{"check"}, 2, "--config"},
		{"missing file", []string{"check", "--config", missing}, 1, missing},
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

var agentLineRE = regexp.MustCompile(`relayctl expose --relay (127\.0\.0\.1:\d+) --token (\S+) --fingerprint (SHA256:\S+)`)

// TestGeneratedToken: with no [[tokens]], relayd makes a token, keeps it in
// state_dir/token and prints a relayctl line that works; a restart keeps it.
func TestGeneratedToken(t *testing.T) {
	t.Parallel()
	config, stateDir, _, _ := pt.WriteRelaydConfig(t, "")
	r := pt.StartRelayd(t, config, stateDir)
	m := r.WaitFor(&r.Stdout, agentLineRE, pt.StartTimeout)
	addr, token, fp := m[1], m[2], m[3]
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
	if out := r.Stdout.String(); strings.Contains(out, token) {
		t.Errorf("restart printed the token on stdout (not a terminal): %q", out)
	}
	p = pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--token", token, "--fingerprint", fp, "--transport", "tcp")
	url = p.WaitFor(&p.Stdout, regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+\n`), pt.StartTimeout)[0]
	pt.CheckEcho(t, strings.TrimSpace(url), "gen:", 4096)
}

// TestStopOnSignal: SIGTERM and SIGINT stop relayd with exit 0, with an
// agent connected; the agent then stops with exit 1 and says why.
func TestStopOnSignal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sig       syscall.Signal
		transport string
	}{{syscall.SIGTERM, "quic"}, {syscall.SIGINT, "quic"}, {syscall.SIGTERM, "tcp"}, {syscall.SIGINT, "tcp"}} {
		t.Run(tc.sig.String()+"/"+tc.transport, func(t *testing.T) {
			t.Parallel()
			r := pt.NewRelayd(t, pt.TokensTOML)
			local := pt.StartEcho(t, "")
			agent := pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--token", pt.TestSecret,
				"--fingerprint", r.FP, "--transport", tc.transport)
			agent.WaitFor(&agent.Stdout, regexp.MustCompile(`^tcp://`), pt.StartTimeout)
			begin := time.Now()
			pt.Stopped(t, r.Proc, tc.sig)
			if d := time.Since(begin); d > 5*time.Second {
				t.Errorf("relayd took %v to stop", d)
			}
			if !strings.Contains(r.Stderr.String(), "relayd stopped") {
				t.Errorf("stderr does not say \"relayd stopped\":\n%s", r.Stderr.String())
			}
			if code := agent.Wait(pt.ExitTimeout); code != 1 {
				t.Errorf("relayctl exited with %d when the relay stopped, want 1", code)
			}
			if got := pt.LastLine(agent.Stderr.String()); !strings.HasPrefix(got, "relayctl: ") || !strings.Contains(got, "shutting down") {
				t.Errorf("relayctl's stderr ends %q, want \"relayctl: … shutting down …\"", got)
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
	if got := pt.LastLine(errOut); !strings.HasPrefix(got, "relayd: ") || !strings.Contains(got, "[relay] listen") ||
		!strings.Contains(got, ln.Addr().String()) {
		t.Errorf("stderr ends %q, want \"relayd: …%s…[relay] listen…\"", got, ln.Addr())
	}
}
