package main

// Tests of the relayctl binary against a real relayd, over loopback: the
// contract scripts rely on (DESIGN.md): stdout lines, exit codes, one-line
// refusals on stderr, signals.

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

func TestVersion(t *testing.T) {
	t.Parallel()
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "version")
	if code != 0 {
		t.Fatalf("relayctl version: exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "relayctl ") || !strings.Contains(lines[0], "protocol 1") {
		t.Fatalf("relayctl version printed %q, want one line naming relayctl and protocol 1", out)
	}
}

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
		{"port taken", nil, append([]string{local, "--port", taken}, ok...), exitRefused, "already taken"},
		{"relay unreachable", nil, []string{local, "--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP}, exitFailure, "could not reach the relay"},
		{"relay unreachable tcp", nil, []string{local, "--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp"}, exitFailure, "could not reach the relay"},
		{"no relay", nil, []string{local, "--token", pt.TestSecret, "--fingerprint", r.FP}, exitUsage, "--relay"},
		{"no token", nil, []string{local, "--relay", r.Addr, "--fingerprint", r.FP}, exitUsage, "--token"},
		{"no local", nil, ok, exitUsage, "LOCAL"},
		{"local not a port", nil, append([]string{"notaport"}, ok...), exitUsage, `"notaport"`},
		{"local port too big", nil, append([]string{"70000"}, ok...), exitUsage, "1-65535"},
		{"host port too big", nil, append([]string{"localhost:70000"}, ok...), exitUsage, "1-65535"},
		{"bad transport", nil, append([]string{local, "--transport", "bogus"}, ok...), exitUsage, `"bogus"`},
		{"udp", nil, append([]string{local, "--proto", "udp"}, ok...), exitUsage, "not in this build"},
		{"tcp and udp", nil, append([]string{local, "--proto", "tcp,udp"}, ok...), exitUsage, "not in this build"},
		{"bad proto", nil, append([]string{local, "--proto", "sctp"}, ok...), exitUsage, `"sctp"`},
		{"bad fingerprint", nil, []string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", "SHA256:nope"}, exitUsage, "--fingerprint"},
		{"bad fingerprint env", []string{"RELAY_FINGERPRINT=abc"}, []string{local, "--relay", r.Addr, "--token", pt.TestSecret}, exitUsage, "--fingerprint"},
		{"bad name", nil, append([]string{local, "--name", "no spaces!"}, ok...), exitUsage, "--name"},
		{"bad port", nil, append([]string{local, "--port", "eighty"}, ok...), exitUsage, "--port"},
		{"one port two locals", nil, append([]string{local, local, "--port", taken}, ok...), exitUsage, "--port"},
		{"unknown flag", nil, append([]string{local, "--bogus-flag", "x"}, ok...), exitUsage, "bogus-flag"},
		{"bad log level", nil, append([]string{local, "--log-level", "loud"}, ok...), exitUsage, "--log-level"},
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
