package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestSystemdUnits runs systemd-analyze verify over the units in
// examples/systemd, pointed at the binaries just built, when systemd is
// installed (apt-get install systemd).
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze on this machine")
	}
	dir := t.TempDir()
	var units []string
	for src, dst := range map[string]string{"relayd.service": "relayd.service", "relayctl@.service": "relayctl@test.service"} {
		data, err := os.ReadFile(filepath.Join("..", "examples", "systemd", src))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.NewReplacer("/usr/local/bin/relayd", pt.RelaydBin, "/usr/local/bin/relayctl", pt.RelayctlBin).Replace(string(data))
		path := filepath.Join(dir, dst)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, path)
		if src == "relayctl@.service" {
			// The unit's comment says how to run a config with
			// transparent = true: that variant must verify too.
			text = strings.NewReplacer("#ExecStartPre=", "ExecStartPre=",
				"CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_ADMIN\n",
				"AmbientCapabilities=\n", "AmbientCapabilities=CAP_NET_ADMIN\n").Replace(text)
			if !strings.Contains(text, "ExecStartPre=+") || strings.Count(text, "=CAP_NET_ADMIN\n") != 2 {
				t.Fatal("relayctl@.service no longer has the transparent lines this test turns on")
			}
			path := filepath.Join(dir, "relayctl@transparent.service")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			units = append(units, path)
		}
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, units...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
