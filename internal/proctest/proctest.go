// Package proctest runs the real relayd and relayctl binaries as processes
// for the relayd and relayctl tests: it builds them once per test binary
// (Main), starts and watches them (Start, Run, Proc), and provides what the
// tests around them need (a relayd with its own public ports, echo servers,
// tunnels checked end to end).
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/syncbuf"
)

// Paths of the binaries Main builds.
var (
	RelaydBin   string
	RelayctlBin string
)

// The public ports relayds started by a test binary hand out: blocks of
// portBlock ports from portBase on, one block per relayd, so parallel tests
// never share a public port. Each package passes its own portBase to Main
// (the relayd package uses 61000-62999 and the relayctl package 63000-64999,
// both above Linux's ephemeral range).
const (
	portBlocks = 100
	portBlock  = 20
)

var (
	portBase  int
	nextBlock atomic.Int64
)

// Timeouts for things that take milliseconds when all is well.
const (
	StartTimeout = 15 * time.Second
	ExitTimeout  = 10 * time.Second
)

// Main is the body of a TestMain: it builds relayd and relayctl, hands out
// public ports from base on, runs the tests and exits. The test's package
// must sit directly below the module root.
func Main(m *testing.M, base int) {
	dir, err := os.MkdirTemp("", "relay-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		// Built without -race (GOFLAGS from the environment still applies):
		// the tests watch the processes from outside.
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
			"github.com/relaytun/relay/relayd", "github.com/relaytun/relay/relayctl")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building relayd and relayctl: %v\n%s", err, out)
			return 1
		}
		RelaydBin = filepath.Join(dir, "relayd")
		RelayctlBin = filepath.Join(dir, "relayctl")
		portBase = base
		nextBlock.Store(rand.Int64N(portBlocks)) // differ from a concurrent run of this package
		return m.Run()
	}()
	os.Exit(code)
}

// portRange returns the first and last port of a block of public ports no
// other relayd in this test binary uses.
func portRange() (low, high int) {
	b := nextBlock.Add(1) % portBlocks
	low = portBase + int(b)*portBlock
	return low, low + portBlock - 1
}

// Buffer collects a process's output.
type Buffer = syncbuf.Buffer

// Proc is a running relayd or relayctl.
type Proc struct {
	Stdout Buffer
	Stderr Buffer

	t    testing.TB
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// testEnv is the environment of every process: the caller's, without the
// variables relayd and relayctl read, and with a private home so no test
// touches the user's known_relays or state.
func testEnv(t testing.TB, extra ...string) []string {
	t.Helper()
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "RELAY"), k == "HOME", k == "STATE_DIRECTORY",
			strings.HasPrefix(k, "XDG_"):
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"XDG_STATE_HOME="+filepath.Join(home, ".state"), "TMPDIR="+home)
	env = append(env, CoverEnv()...)
	return append(env, extra...)
}

// CoverEnv is what a process needs in its environment to write its
// coverage where RELAY_COVERDIR says: with GOFLAGS=-cover the binaries are
// built to count, but go test points GOCOVERDIR at a directory of its own,
// removed when the test binary exits.
func CoverEnv() []string {
	if d := os.Getenv("RELAY_COVERDIR"); d != "" {
		return []string{"GOCOVERDIR=" + d}
	}
	return nil
}

// Start runs bin with args; env entries ("K=V") are added to an environment
// stripped of the variables relayd and relayctl read, with a private HOME.
// The process is killed when the test ends, and its output logged if the
// test failed.
func Start(t testing.TB, env []string, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, name: filepath.Base(bin), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = testEnv(t, env...)
	p.cmd.Stdout = &p.Stdout
	p.cmd.Stderr = &p.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if len(CoverEnv()) > 0 {
			// A killed process writes no coverage: ask first.
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(2 * time.Second):
			}
		}
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s %s\n--- stdout:\n%s--- stderr:\n%s", p.name, strings.Join(args, " "), p.Stdout.String(), p.Stderr.String())
		}
	})
	return p
}

// Run runs bin to completion and returns its stdout, stderr and exit code.
func Run(t testing.TB, env []string, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := Start(t, env, bin, args...)
	code = p.Wait(ExitTimeout)
	return p.Stdout.String(), p.Stderr.String(), code
}

// CheckVersion runs bin's version command and checks its one line: the
// program's name, its version and commit, the protocol version and the Go
// toolchain it was built with; that --version prints the same; and that
// an argument is a usage error.
func CheckVersion(t *testing.T, bin, name string) {
	t.Helper()
	out, errOut, code := Run(t, nil, bin, "version")
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + ` \S+ \(commit \S+, protocol 1, ` + regexp.QuoteMeta(runtime.Version()) + ` \S+/\S+\)\n$`)
	if code != 0 || !re.MatchString(out) {
		t.Errorf("%s version: exit %d, stdout %q, stderr %q; want 0 and one line matching %s", name, code, out, errOut, re)
	}
	// --version prints the same line (it was an unknown flag).
	if flagOut, flagErr, code := Run(t, nil, bin, "--version"); code != 0 || flagOut != out || flagErr != "" {
		t.Errorf("%s --version: exit %d, stdout %q, stderr %q; want 0 and %q, as the version command", name, code, flagOut, flagErr, out)
	}
	// The help names the version too (urfave/cli hides that section
	// along with its own --version flag, which the apps replace).
	if help, _, code := Run(t, nil, bin, "--help"); code != 0 || !strings.Contains(help, "\nVERSION:\n   ") {
		t.Errorf("%s --help: exit %d, no VERSION: section:\n%s", name, code, help)
	}
	for _, args := range [][]string{{"version", "extra"}, {"--version", "extra"}, {"--version", "version"}} {
		out, errOut, code = Run(t, nil, bin, args...)
		if want := fmt.Sprintf("%s: %s takes no arguments (got %q)\n", name, args[0], args[1]); code != 2 || out != "" || errOut != want {
			t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want 2, nothing, %q", name, strings.Join(args, " "), code, out, errOut, want)
		}
	}
}

func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %v\nstderr:\n%s", p.name, timeout, p.Stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signalling %s: %v", p.name, err)
	}
}

// WaitFor polls buf until re matches, failing the test if the process exits
// first or timeout passes. It returns the submatches.
func (p *Proc) WaitFor(buf *Buffer, re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(buf.String()); m != nil {
			return m
		}
		if p.exited() {
			// One last look: output may have landed just before the exit.
			if m := re.FindStringSubmatch(buf.String()); m != nil {
				return m
			}
			p.t.Fatalf("%s exited (code %d) before printing %q\nstdout:\n%s\nstderr:\n%s",
				p.name, p.cmd.ProcessState.ExitCode(), re, p.Stdout.String(), p.Stderr.String())
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %v\nstdout:\n%s\nstderr:\n%s",
				p.name, re, timeout, p.Stdout.String(), p.Stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Relayd is a running relayd.
type Relayd struct {
	*Proc
	Addr     string // 127.0.0.1:PORT agents dial
	FP       string // its key's fingerprint
	StateDir string
	Config   string // path of its relay.toml
	Low      int    // its public ports; set by NewRelayd only
	High     int
}

// TestSecret is the secret of the token in TokensTOML.
const TestSecret = "test-secret-0123456789"

// TokensTOML is a [[tokens]] table with TestSecret.
const TokensTOML = "[[tokens]]\nid = \"test\"\nsecret = \"" + TestSecret + "\"\n"

// WriteRelaydConfig writes a relay.toml listening on 127.0.0.1:0 with its
// own block of public ports and state_dir, plus extra.
func WriteRelaydConfig(t testing.TB, extra string) (path, stateDir string, low, high int) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	low, high = portRange()
	path = filepath.Join(dir, "relay.toml")
	cfg := fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\nports = \"%d-%d\"\nstate_dir = %q\n\n%s\n%s", low, high, stateDir, extra, adminTOML(extra))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, stateDir, low, high
}

var listeningRE = regexp.MustCompile(`msg="relayd listening" listen=(127\.0\.0\.1:\d+) .*fingerprint=(SHA256:\S+)`)

// StartRelayd starts relayd on config and waits until it listens.
func StartRelayd(t testing.TB, config, stateDir string) *Relayd {
	t.Helper()
	p := Start(t, nil, RelaydBin, "--config", config)
	m := p.WaitFor(&p.Stderr, listeningRE, StartTimeout)
	return &Relayd{Proc: p, Addr: m[1], FP: m[2], StateDir: stateDir, Config: config}
}

// NewRelayd starts a relayd with a fresh config holding extra (e.g.
// TokensTOML).
func NewRelayd(t testing.TB, extra string) *Relayd {
	t.Helper()
	path, stateDir, low, high := WriteRelaydConfig(t, extra)
	r := StartRelayd(t, path, stateDir)
	r.Low, r.High = low, high
	return r
}

// URLRE matches a tunnel's public address as relayctl prints it; the
// submatch is the port.
var URLRE = regexp.MustCompile(`^tcp://127\.0\.0\.1:(\d+)$`)

// StartRelayctl starts relayctl with args (a command, such as run, and its
// arguments) and env, and waits for n lines on stdout, each checked
// against URLRE.
func StartRelayctl(t testing.TB, n int, env []string, args ...string) (*Proc, []string) {
	t.Helper()
	p := Start(t, env, RelayctlBin, args...)
	lines := p.WaitFor(&p.Stdout, regexp.MustCompile(`^(?:[^\n]*\n){`+strconv.Itoa(n)+`}`), StartTimeout)
	urls := strings.Split(strings.TrimSuffix(lines[0], "\n"), "\n")
	for _, u := range urls {
		if !URLRE.MatchString(u) {
			t.Fatalf("relayctl printed %q, want a line matching %s", u, URLRE)
		}
	}
	return p, urls
}

// StartExpose is StartRelayctl for relayctl expose with args.
func StartExpose(t testing.TB, n int, env []string, args ...string) (*Proc, []string) {
	t.Helper()
	return StartRelayctl(t, n, env, append([]string{"expose"}, args...)...)
}

// HostPort turns tcp://HOST:PORT into HOST:PORT.
func HostPort(t testing.TB, url string) string {
	t.Helper()
	hp, ok := strings.CutPrefix(url, "tcp://")
	if !ok {
		t.Fatalf("%q is not a tcp:// URL", url)
	}
	return hp
}

// Serve runs handle for every connection on a fresh loopback port until
// the test ends, and returns the port's address.
func Serve(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// StartEcho runs a TCP server on loopback that writes tag, then echoes what
// it reads and half-closes at EOF. It returns the server's address.
func StartEcho(t testing.TB, tag string) string {
	t.Helper()
	return Serve(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, tag)
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// CheckEcho sends a payload through the tunnel at url, half-closes, and
// expects tag and the payload back, then EOF.
func CheckEcho(t testing.TB, url, tag string, size int) {
	t.Helper()
	got, payload, err := echoRoundTrip(HostPort(t, url), size)
	if err != nil {
		t.Fatalf("through %s: %v", url, err)
	}
	want := append([]byte(tag), payload...)
	if !bytes.Equal(got, want) {
		t.Fatalf("through %s: got %d bytes, want %d (tag %q + payload); equal prefix %d bytes",
			url, len(got), len(want), tag, commonPrefix(got, want))
	}
}

// echoRoundTrip sends size random bytes to hp, half-closes, and reads
// everything back until EOF.
func echoRoundTrip(hp string, size int) (got, payload []byte, err error) {
	c, err := net.DialTimeout("tcp", hp, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	payload = make([]byte, size)
	for i := range payload {
		payload[i] = byte(rand.IntN(256))
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	if got, err = io.ReadAll(c); err != nil {
		return got, payload, fmt.Errorf("reading: %w (after %d bytes)", err, len(got))
	}
	if err := <-werr; err != nil {
		return got, payload, fmt.Errorf("writing: %w", err)
	}
	return got, payload, nil
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// LastLine is the last non-empty line of s.
func LastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// ClosedPort returns a loopback address nothing listens on (TCP or UDP).
func ClosedPort(t testing.TB) string {
	t.Helper()
	for range 200 {
		// Below the kernel's ephemeral range (32768 and up), where the
		// ports other tests' listeners on port 0 get: a port handed out
		// here as closed stays closed.
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(10000))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return addr
	}
	t.Fatal("no free loopback port")
	return ""
}

// Stopped sends sig to p and expects exit code 0 within ExitTimeout.
func Stopped(t testing.TB, p *Proc, sig syscall.Signal) {
	t.Helper()
	p.Signal(sig)
	if code := p.Wait(ExitTimeout); code != 0 {
		t.Fatalf("%s exited with %d after %v, want 0\nstderr:\n%s", p.name, code, sig, p.Stderr.String())
	}
}

// NewRelaydFunc is NewRelayd with extra made from the public ports the
// relayd gets (low-high), for tokens scoped to some of them.
func NewRelaydFunc(t testing.TB, extra func(low, high int) string) *Relayd {
	t.Helper()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	low, high := portRange()
	path := filepath.Join(dir, "relay.toml")
	cfg := fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\nports = \"%d-%d\"\nstate_dir = %q\n\n%s", low, high, stateDir, extra(low, high))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := StartRelayd(t, path, stateDir)
	r.Low, r.High = low, high
	return r
}

// WriteSecret writes secret and a newline to a new file readable by its
// owner alone, and returns its path.
func WriteSecret(t testing.TB, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Hold connects a client to the tunnel at url and waits for the first
// len(tag) bytes the server sends (its tag), proving the client was
// admitted. The connection stays open until the caller closes it.
func Hold(t testing.TB, url, tag string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", HostPort(t, url), 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(tag))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != tag {
		t.Fatalf("through %s: read %q, %v; want the server's %q", url, got, err, tag)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// CheckTurnedAway connects a client to the tunnel at url and expects the
// relay to close the connection at once, before the server says anything.
func CheckTurnedAway(t testing.TB, url string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", HostPort(t, url), 5*time.Second)
	if err != nil {
		return // refused before the accept: turned away too
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case len(got) > 0:
		t.Fatalf("through %s: the server answered %q; want the client turned away", url, got)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("through %s: the connection stayed open 5s; want it closed at once", url)
	}
}

// Pid is the process's id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Keys lists a decoded JSON object's keys, sorted and joined by spaces, for
// checking the shape of a status or admin answer in one comparison.
func Keys(m map[string]any) string {
	ks := slices.Sorted(maps.Keys(m))
	return strings.Join(ks, " ")
}
