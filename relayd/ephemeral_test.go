package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/tunnel"
)

// TestEphemeralOverlap: the ports of [relay] ports the kernel may hand to
// an outgoing connection, its reserved ports left out; none, no warning.
func TestEphemeralOverlap(t *testing.T) {
	for _, tt := range []struct {
		ports, rng, reserved string
		want                 string // the overlap; "" for no warning
	}{
		{"20000-29999", "32768\t60999\n", "\n", ""},
		{"30000-40000", "32768\t60999\n", "\n", "32768-40000"},
		{"24100-24109,40000,50000-50010", "32768\t60999\n", "", "40000,50000-50010"},
		{"40000-40010", "32768\t60999\n", "40000-40004,40006\n", "40005,40007-40010"},
		{"40000-40010", "32768\t60999\n", "39000-41000\n", ""},
		{"40000-40010", "garbage", "", ""},
		{"40000-40010", "60999 32768", "", ""},
	} {
		set, err := tunnel.ParsePortSet(tt.ports)
		if err != nil {
			t.Fatal(err)
		}
		w := ephemeralOverlap(set, tt.rng, tt.reserved)
		switch {
		case tt.want == "" && w != nil:
			t.Errorf("%s in %q less %q: overlap %s, want none", tt.ports, tt.rng, tt.reserved, w.overlap)
		case tt.want != "" && (w == nil || w.overlap.String() != tt.want):
			t.Errorf("%s in %q less %q: %+v, want overlap %s", tt.ports, tt.rng, tt.reserved, w, tt.want)
		}
	}
	w := ephemeralOverlap(tunnel.PortSet{{Low: 40000, High: 40002}}, "32768 60999", "")
	if want := "pick [relay] ports outside 32768-60999 (the default 20000-29999 is), or keep the kernel off them: sysctl -w net.ipv4.ip_local_reserved_ports=40000-40002"; w.fix() != want {
		t.Errorf("fix: %q\nwant %q", w.fix(), want)
	}
	// The sysctl sets the whole list: the ports reserved already stay in
	// it; and a range that takes in the default does not call it outside.
	w = ephemeralOverlap(tunnel.PortSet{{Low: 40000, High: 40002}}, "10000 60999", "50000-50009,8080\n")
	if want := "pick [relay] ports outside 10000-60999, or keep the kernel off them: sysctl -w net.ipv4.ip_local_reserved_ports=8080,40000-40002,50000-50009"; w.fix() != want {
		t.Errorf("fix: %q\nwant %q", w.fix(), want)
	}
}

// TestCheckWarnsEphemeral: relayd check, relayd at start, and a reload
// that changes [relay] ports warn about public ports inside this machine's
// ephemeral range.
func TestCheckWarnsEphemeral(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(ephemeralFiles[0])
	if err != nil {
		t.Skipf("no %s here: %v", ephemeralFiles[0], err)
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(data), &lo, &hi); err != nil || hi-lo < 100 {
		t.Skipf("ephemeral range %q", data)
	}
	// Ports in the range's middle, unlikely to be reserved.
	p := (lo + hi) / 2
	ports := fmt.Sprintf("%d-%d", p, p+9)
	if ephemeralWarning(ports) == nil {
		t.Skipf("ports %s are reserved here", ports)
	}
	path := filepath.Join(t.TempDir(), "relay.toml")
	write := func(ports string) {
		t.Helper()
		cfg := fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\nports = %q\nstate_dir = %q\n\n%s", ports, filepath.Join(filepath.Dir(path), "state"), pt.TokensTOML)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ports)
	out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "check", "--config", path)
	want := fmt.Sprintf("relayd: warning: %s: [relay] ports overlap the range the kernel takes outgoing connections' local ports from: "+
		"an outgoing connection may take a tunnel's port while nothing listens on it, and the tunnel, back, gets another (%s of them): "+
		"pick [relay] ports outside %d-%d", path, ports, lo, hi)
	if code != 0 || !strings.HasPrefix(out, path+": ok") || !strings.Contains(errOut, want) {
		t.Errorf("relayd check: exit %d\nstdout: %s\nstderr: %s\nwant exit 0, ok, and a warning starting %q", code, out, errOut, want)
	}
	r := pt.StartRelayd(t, path, filepath.Join(filepath.Dir(path), "state"))
	warning := regexp.QuoteMeta(`level=WARN msg="[relay] ports overlap the range the kernel takes outgoing connections' local ports from: `)
	r.WaitFor(&r.Stderr, regexp.MustCompile(warning), pt.StartTimeout)

	// A reload that leaves the ports as they were says nothing of them
	// again; one that changes them, to ports the kernel may hand out too,
	// warns with the new ports.
	r.Signal(syscall.SIGHUP)
	r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded" file=\S+ changed="" `), pt.StartTimeout)
	moved := fmt.Sprintf("%d-%d", p+10, p+19)
	if ephemeralWarning(moved) == nil {
		t.Skipf("ports %s are reserved here", moved)
	}
	write(moved)
	r.Signal(syscall.SIGHUP)
	r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded" file=\S+ changed=relay.ports `), pt.StartTimeout)
	got := regexp.MustCompile(warning+`.* ports=(\S+) `).FindAllStringSubmatch(r.Stderr.String(), -1)
	if len(got) != 2 || got[0][1] != ports || got[1][1] != moved {
		t.Errorf("relayd warned about the ephemeral range %d times, for %q; want twice: at start for %s, at the reload for %s\n%s",
			len(got), got, ports, moved, r.Stderr.String())
	}
}
