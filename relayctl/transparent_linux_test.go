package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaytun/relay/internal/netnstest"
	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/transparent"
)

// TestWrapTransparentChecksFirst: with a command to wrap, the routes
// --transparent needs are checked before the command starts, not once
// the server it starts has loaded (a game server's world: minutes).
func TestWrapTransparentChecksFirst(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	started := filepath.Join(t.TempDir(), "started")
	_, stderr, code := pt.Run(t, nil, pt.RelayctlBin, "expose", "8090", "--transparent",
		"--relay", "127.0.0.1:1", "--token", pt.TestSecret, "--fingerprint", "SHA256:"+strings.Repeat("A", 43), "--control", "",
		"--", "sh", "-c", "touch "+started+"; sleep 3")
	if code != exitFailure || !strings.Contains(stderr, "add the routes, as root: "+transparent.Routes(false)) {
		t.Errorf("exit %d, stderr:\n%s\nwant %d and the routes to add", code, stderr, exitFailure)
	}
	if _, err := os.Stat(started); err == nil {
		t.Errorf("the command was started before the check")
	}
}
