package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestWrapTerminal: run in the foreground of a terminal, the command gets
// the terminal: it reads its console without being stopped, a Ctrl-Z stops
// relayctl with it (for the shell to see) and continuing relayctl
// continues it, and a Ctrl-C typed there reaches it once (not also through
// relayctl).
func TestWrapTerminal(t *testing.T) {
	t.Parallel()
	ptm, pts := openPTY(t)
	r := pt.NewRelayd(t, pt.TokensTOML)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	local := pt.ClosedPort(t)
	cmd := exec.Command(pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--", self)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TMPDIR=" + t.TempDir(), helperEnv + "=" + local, "HELPER_STDIN=1"}
	cmd.Env = append(cmd.Env, pt.CoverEnv()...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// A session of its own with the terminal as its controlling one, as a
	// shell would give it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	screen, done := startOnPTY(t, cmd, ptm, pts)
	waitFor := func(re string) string {
		t.Helper()
		deadline := time.Now().Add(pt.StartTimeout)
		for {
			if m := regexp.MustCompile(re).FindString(screen.String()); m != "" {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("the terminal did not show %q within %v:\n%s", re, pt.StartTimeout, screen.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	url := pt.URLRE.FindStringSubmatch(waitFor(`tcp://127\.0\.0\.1:\d+`))
	ptm.WriteString("console line\n")
	waitFor(`helper: read "console line"`)

	ptm.WriteString("\x1a") // Ctrl-Z
	waitState(t, cmd.Process.Pid, 'T')
	// As a shell's fg would: relayctl has the terminal already.
	cmd.Process.Signal(syscall.SIGCONT)
	ptm.WriteString("after fg\n")
	waitFor(`helper: read "after fg"`)
	pt.CheckEcho(t, url[0], "", 1024)

	ptm.WriteString("\x03") // Ctrl-C
	waitFor(`helper: got SIGINT`)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(pt.ExitTimeout):
		t.Fatalf("relayctl did not exit after SIGTERM:\n%s", screen.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit %d, want %d\n%s", code, 128+int(syscall.SIGTERM), screen.String())
	}
	if n := strings.Count(screen.String(), "helper: got SIGINT"); n != 1 {
		t.Errorf("the command got SIGINT %d times, want once:\n%s", n, screen.String())
	}
}

// startOnPTY starts cmd, whose standard files are the terminal's slave
// side pts, and collects what it shows on the master side ptm. done is
// closed once cmd has exited; a test that ends first kills it.
func startOnPTY(t *testing.T, cmd *exec.Cmd, ptm, pts *os.File) (*pt.Buffer, <-chan struct{}) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	pts.Close()
	screen := &pt.Buffer{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	return screen, done
}

// openPTY opens a pseudo-terminal: its master side, and its slave side to
// hand to a process.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("naming the pty: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pty: %v", err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// waitState waits until process pid is in state (as /proc shows it: 'T'
// for stopped).
func waitState(t *testing.T, pid int, state byte) {
	t.Helper()
	deadline := time.Now().Add(pt.StartTimeout)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ...: comm may hold spaces, not ')'.
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d is not in state %c within %v: %s", pid, state, pt.StartTimeout, stat)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
