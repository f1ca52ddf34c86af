package proctest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// NewRelaydPinned starts a relayd on a fixed loopback port, so that it can
// be restarted (Restart) at the address its agents know. relayKeys are more
// lines for the [relay] table ("drain_timeout = \"2s\""); extra follows it.
func NewRelaydPinned(t testing.TB, relayKeys []string, extra string) *Relayd {
	t.Helper()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	low, high := portRange()
	addr := ClosedPort(t)
	path := filepath.Join(dir, "relay.toml")
	cfg := fmt.Sprintf("[relay]\nlisten = %q\nports = \"%d-%d\"\nstate_dir = %q\n%s\n\n%s\n%s",
		addr, low, high, stateDir, strings.Join(relayKeys, "\n"), extra, adminTOML(extra))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := StartRelayd(t, path, stateDir)
	r.Low, r.High = low, high
	return r
}

// Restart starts relayd again from the same config and state, once the
// previous process has exited.
func (r *Relayd) Restart(t testing.TB) {
	t.Helper()
	if !r.exited() {
		t.Fatal("Restart: relayd is still running")
	}
	n := StartRelayd(t, r.Config, r.StateDir)
	if n.Addr != r.Addr {
		t.Fatalf("restarted relayd listens on %s, not %s", n.Addr, r.Addr)
	}
	r.Proc = n.Proc
}

// adminTOML gives a test relayd an admin API on a port of its own, unless
// extra has an [admin] table: relayds started in parallel would otherwise
// race for the default 127.0.0.1:7001. It goes last, so that extra may
// begin with more [relay] keys.
func adminTOML(extra string) string {
	if strings.Contains(extra, "[admin]") {
		return ""
	}
	return "[admin]\nlisten = \"127.0.0.1:0\"\n\n"
}
