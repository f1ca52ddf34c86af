package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestStatusWatchTerminal: on a terminal, status --watch redraws in place:
// each snapshot clears the screen and starts with the time and how to
// stop. (Off a terminal it prints plain snapshots: TestStatus.)
func TestStatusWatchTerminal(t *testing.T) {
	t.Parallel()
	ptm, pts := openPTY(t)
	// No agent needed: the redraw is the same for the error it shows.
	sock := filepath.Join(t.TempDir(), "none.sock")
	cmd := exec.Command(pt.RelayctlBin, "status", "--watch", "--control", sock)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TMPDIR=" + t.TempDir()}
	cmd.Env = append(cmd.Env, pt.CoverEnv()...)
	cmd.Stdout, cmd.Stderr = pts, pts
	screen, done := startOnPTY(t, cmd, ptm, pts)
	// The terminal turns each \n into \r\n.
	frame := `\x1b\[H\x1b\[2J\d\d:\d\d:\d\d   \(every 1s; Ctrl-C to stop\)\r\n\r\n` +
		regexp.QuoteMeta("no agent answers on "+sock+": connect: no such file or directory: is relayctl running with --control "+sock+"?") + `\r\n`
	re := regexp.MustCompile(`^` + frame + frame)
	for deadline := time.Now().Add(pt.StartTimeout); !re.MatchString(screen.String()); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal did not show two redraws within %v:\n%q", pt.StartTimeout, screen.String())
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(pt.ExitTimeout):
		t.Fatalf("status --watch did not exit after SIGINT:\n%q", screen.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGINT, want 0", code)
	}
}
