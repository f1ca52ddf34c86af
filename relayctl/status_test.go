package main

// relayctl status against running agents, and the control socket they serve.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/tunnel"
)

// statusJSON runs relayctl status --json with args and env and decodes it.
func statusJSON(t *testing.T, env []string, args ...string) []map[string]any {
	t.Helper()
	out, errOut, code := pt.Run(t, env, pt.RelayctlBin, append([]string{"status", "--json"}, args...)...)
	var sts []map[string]any
	if err := json.Unmarshal([]byte(out), &sts); code != 0 || err != nil {
		t.Fatalf("relayctl status --json %s: exit %d, %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, err, out, errOut)
	}
	return sts
}

func TestStatus(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "S:")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	// tcp,udp: a tunnel with two public URLs.
	agent := pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--proto", "tcp,udp", "--relay", r.Addr, "--token", pt.TestSecret,
		"--fingerprint", r.FP, "--transport", "tcp", "--name", "st", "--control", sock)
	urls := agent.WaitFor(&agent.Stdout, regexp.MustCompile(`^(tcp://127\.0\.0\.1:\d+)\n(udp://127\.0\.0\.1:\d+)\n`), pt.StartTimeout)[1:]
	public := urls[0] + " " + urls[1]
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, %v; want mode 0600", fi, err)
	}
	const big, small = 100_000, 5
	pt.CheckEcho(t, urls[0], "S:", big)
	pt.CheckEcho(t, urls[0], "S:", small)
	wantIn, wantOut := float64(big+small), float64(2*len("S:")+big+small)

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		// The agent counts a connection's bytes as they pass; ask its socket
		// until the last of them is in, then ask through the CLI.
		for deadline := time.Now().Add(10 * time.Second); ; {
			cs, err := queryAgent(context.Background(), sock)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs.Tunnels) == 1 && cs.Tunnels[0].BytesIn == int64(wantIn) && cs.Tunnels[0].BytesOut == int64(wantOut) && cs.Tunnels[0].Active == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 10s: %+v; want one tunnel with bytes_in %v, bytes_out %v, active 0", cs, wantIn, wantOut)
			}
			time.Sleep(50 * time.Millisecond)
		}
		sts := statusJSON(t, nil, "--control", sock)
		if len(sts) != 1 {
			t.Fatalf("status --control printed %d agents, want 1: %v", len(sts), sts)
		}
		st := sts[0]
		tuns, _ := st["tunnels"].([]any)
		if len(tuns) != 1 {
			t.Fatalf("status: %d tunnels, want 1: %v", len(tuns), st)
		}
		tun := tuns[0].(map[string]any)
		if tun["bytes_in"] != wantIn || tun["bytes_out"] != wantOut {
			t.Errorf("status --json: bytes in %v, out %v; want %v, %v", tun["bytes_in"], tun["bytes_out"], wantIn, wantOut)
		}
		if k := pt.Keys(st); k != "connected control draining limit_bps pid reconnects relay rtt_ms since transport tunnels uptime_seconds version" {
			t.Errorf("agent keys: %s", k)
		}
		if st["pid"] != float64(agent.Pid()) || st["control"] != sock || st["relay"] != r.Addr || st["connected"] != true ||
			st["transport"] != "tcp" || st["reconnects"] != 0.0 || st["draining"] != false || !(st["rtt_ms"].(float64) > 0) || st["uptime_seconds"].(float64) < 0 {
			t.Errorf("agent: %v\nwant pid %d, control %s, relay %s, connected over tcp", st, agent.Pid(), sock, r.Addr)
		}
		if k := pt.Keys(tun); k != "active bytes_in bytes_out local name public public_urls total" {
			t.Errorf("tunnel keys: %s", k)
		}
		if tun["name"] != "st" || tun["public"] != public || tun["local"] != local || tun["total"] != 2.0 {
			t.Errorf("tunnel: %v\nwant name st, public %q, local %s, total 2", tun, public, local)
		}
		if got, want := fmt.Sprint(tun["public_urls"]), fmt.Sprint([]any{urls[0], urls[1]}); got != want {
			t.Errorf("public_urls %s, want %s", got, want)
		}
	})

	t.Run("text", func(t *testing.T) {
		t.Parallel()
		out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "status", "--control", sock)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if code != 0 || len(lines) != 3 {
			t.Fatalf("exit %d, stdout:\n%s\nstderr: %s\nwant 3 lines", code, out, errOut)
		}
		// The version is "devel", or a pseudo-version when Go stamps the
		// build from a git checkout (-buildvcs): whatever `version` says.
		vout, _, _ := pt.Run(t, nil, pt.RelayctlBin, "version")
		vf := strings.Fields(vout)
		if len(vf) < 2 {
			t.Fatalf("relayctl version: %q", vout)
		}
		head := fmt.Sprintf("agent %d (relayctl %s) → %s, connected, reconnects 0  [%s]", agent.Pid(), vf[1], r.Addr, sock)
		if lines[0] != head {
			t.Errorf("first line %q, want %q", lines[0], head)
		}
		if f := strings.Fields(lines[1]); strings.Join(f, " ") != "NAME PUBLIC LOCAL TRANSPORT RTT ACTIVE IN OUT UPTIME" {
			t.Errorf("header %q", lines[1])
		}
		row := regexp.MustCompile(`^st +` + regexp.QuoteMeta(public) + ` +` + regexp.QuoteMeta(local) + ` +tcp +[0-9.]+ms +\d+ +[0-9.]+ (B|KiB) +[0-9.]+ (B|KiB) +\S+$`)
		if !row.MatchString(lines[2]) {
			t.Errorf("row %q does not match %s", lines[2], row)
		}
	})

	t.Run("watch", func(t *testing.T) {
		t.Parallel()
		// Off a terminal (stdout is a pipe here): dated snapshots, a blank
		// line between them, no escape codes. On one, see
		// TestStatusWatchTerminal.
		p := pt.Start(t, nil, pt.RelayctlBin, "status", "--watch", "--control", sock)
		vout, _, _ := pt.Run(t, nil, pt.RelayctlBin, "version")
		head := fmt.Sprintf("agent %d (relayctl %s) → %s, connected, reconnects 0  [%s]", agent.Pid(), strings.Fields(vout)[1], r.Addr, sock)
		snap := `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n` + regexp.QuoteMeta(head) + `\n` +
			`NAME +PUBLIC +LOCAL +TRANSPORT +RTT +ACTIVE +IN +OUT +UPTIME\n` +
			`st +` + regexp.QuoteMeta(public) + ` +` + regexp.QuoteMeta(local) + ` +tcp [^\n]*\n`
		p.WaitFor(&p.Stdout, regexp.MustCompile(`^`+snap+`\n`+snap), pt.StartTimeout)
		pt.Stopped(t, p, syscall.SIGINT)
		if out := p.Stdout.String(); strings.Contains(out, "\x1b") {
			t.Errorf("status --watch into a pipe wrote escape codes:\n%q", out)
		}

		// With --json, one line of JSON a second.
		p = pt.Start(t, nil, pt.RelayctlBin, "status", "--watch", "--json", "--control", sock)
		line := `\[\{"pid":` + strconv.Itoa(agent.Pid()) + `,[^\n]*"name":"st"[^\n]*\}\]\n`
		p.WaitFor(&p.Stdout, regexp.MustCompile(`^`+line+line), pt.StartTimeout)
		pt.Stopped(t, p, syscall.SIGTERM)
	})

	t.Run("socket taken", func(t *testing.T) {
		t.Parallel()
		_, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "expose", local, "--relay", r.Addr, "--token", pt.TestSecret,
			"--fingerprint", r.FP, "--control", sock)
		want := "relayctl: --control " + sock + ": another relayctl is serving this socket: give each agent a --control of its own, or leave --control out (each then gets PID.sock)"
		if code != 1 || pt.LastLine(errOut) != want {
			t.Errorf("exit %d, stderr ends %q; want 1, %q", code, pt.LastLine(errOut), want)
		}
	})

	t.Run("stale socket replaced", func(t *testing.T) {
		t.Parallel()
		// A socket an agent left behind (killed), nothing listening on it.
		stale := filepath.Join(t.TempDir(), "stale.sock")
		ln, err := net.Listen("unix", stale)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		// A name of its own: two subtests exposing local under its
		// default name would make one group, and a client of this one
		// could go to the other's agent as its test ends and kills it.
		p, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--control", stale, "--name", "stale")
		pt.CheckEcho(t, urls[0], "S:", 10)
		if sts := statusJSON(t, nil, "--control", stale); len(sts) != 1 || sts[0]["pid"] != float64(p.Pid()) {
			t.Errorf("status --control %s: %v; want the new agent, %d", stale, sts, p.Pid())
		}
	})

	t.Run("folder not private", func(t *testing.T) {
		t.Parallel()
		// $TMPDIR/relayctl-UID that others may enter is not used; the
		// tunnel works all the same.
		tmp := t.TempDir()
		dir := filepath.Join(tmp, "relayctl-"+strconv.Itoa(os.Getuid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755) // whatever the umask
		p, urls := pt.StartExpose(t, 1, []string{"TMPDIR=" + tmp}, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--name", "private")
		pt.CheckEcho(t, urls[0], "S:", 10)
		want := `level=WARN msg="no control socket, so relayctl status will not see this agent" err="` + dir + ` is not a folder that only this user can use: remove it"`
		if !strings.Contains(p.Stderr.String(), want) {
			t.Errorf("stderr:\n%s\nwant %s", p.Stderr.String(), want)
		}
		if socks, _ := filepath.Glob(filepath.Join(dir, "*")); len(socks) > 0 {
			t.Errorf("sockets made in %s: %v", dir, socks)
		}
	})
}

// TestStatusFindsAgents: with no --control, status finds every agent of
// the user, in $XDG_RUNTIME_DIR/relayctl and in $TMPDIR/relayctl-UID, and
// one started with --control elsewhere by the note it leaves there; lists
// them in the order of their tunnels' names (not of their PIDs: the agents
// start in the other order), and removes the sockets and notes of agents
// that are gone; once none runs, it exits 1 saying where it looked.
func TestStatusFindsAgents(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "F:")
	runtimeDir, tmp := t.TempDir(), t.TempDir()
	env := []string{"XDG_RUNTIME_DIR=" + runtimeDir, "TMPDIR=" + tmp}
	userDir := filepath.Join(runtimeDir, "relayctl")
	tmpDir := filepath.Join(tmp, "relayctl-"+strconv.Itoa(os.Getuid()))

	expose := func(env []string, args ...string) *pt.Proc {
		p, _ := pt.StartExpose(t, 1, env, append([]string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}, args...)...)
		return p
	}
	a := expose(env, "--name", "game-10")
	b := expose([]string{"TMPDIR=" + tmp}, "--name", "game-9") // no $XDG_RUNTIME_DIR
	expose(env, "--name", "no-socket", "--control", "")
	customSock := filepath.Join(t.TempDir(), "custom.sock")
	c := expose(env, "--name", "custom", "--control", customSock)
	note := filepath.Join(userDir, strconv.Itoa(c.Pid())+".control")
	if b, err := os.ReadFile(note); err != nil || string(b) != customSock+"\n" {
		t.Errorf("note %s: %q, %v; want %q", note, b, err, customSock+"\n")
	}
	if fi, err := os.Stat(note); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("note %s: %v, %v; want mode 0600", note, fi, err)
	}
	for dir, mode := range map[string]os.FileMode{userDir: 0o700, tmpDir: 0o700} {
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want a folder with mode %v", dir, fi, err, mode)
		}
	}

	// Two sockets whose agents are gone: a PID no process has, and this
	// test's own PID, with nothing listening.
	deadPID := filepath.Join(userDir, "4194999.sock")
	if err := os.WriteFile(deadPID, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	noListener := filepath.Join(tmpDir, strconv.Itoa(os.Getpid())+".sock")
	ln, err := net.Listen("unix", noListener)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	// Two notes whose agents are gone: a PID no process has, and this
	// test's own PID, naming a socket that is not there.
	deadNote := filepath.Join(userDir, "4194998.control")
	noSocket := filepath.Join(tmpDir, strconv.Itoa(os.Getpid())+".control")
	for _, n := range []string{deadNote, noSocket} {
		if err := os.WriteFile(n, []byte(filepath.Join(t.TempDir(), "gone.sock")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A note another user wrote is not followed: root would otherwise
	// connect wherever a unit's user tells it.
	var foreignNote string
	var foreignDials atomic.Int32
	if os.Getuid() == 0 {
		foreignSock := filepath.Join(t.TempDir(), "foreign.sock")
		fl, err := net.Listen("unix", foreignSock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fl.Close() })
		go func() {
			for {
				c, err := fl.Accept()
				if err != nil {
					return
				}
				foreignDials.Add(1)
				c.Close()
			}
		}()
		foreignNote = filepath.Join(userDir, strconv.Itoa(os.Getpid())+".control")
		if err := os.WriteFile(foreignNote, []byte(foreignSock+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreignNote, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("not root: cannot write another user's note")
	}

	sts := statusJSON(t, env)
	var got []string
	for _, st := range sts {
		tun := st["tunnels"].([]any)[0].(map[string]any)
		got = append(got, fmt.Sprintf("%v %v %v", st["pid"], tun["name"], st["control"]))
	}
	want := []string{
		fmt.Sprintf("%d custom %s", c.Pid(), customSock),
		fmt.Sprintf("%d game-9 %s/%d.sock", b.Pid(), tmpDir, b.Pid()),
		fmt.Sprintf("%d game-10 %s/%d.sock", a.Pid(), userDir, a.Pid()),
	}
	if !slices.Equal(got, want) {
		t.Errorf("status found\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, s := range []string{deadPID, noListener, deadNote, noSocket} {
		if _, err := os.Lstat(s); err == nil {
			t.Errorf("status left the stale socket or note %s", s)
		}
	}
	if foreignNote != "" {
		if n := foreignDials.Load(); n != 0 {
			t.Errorf("status followed another user's note: %d connections to the socket it names", n)
		}
		if _, err := os.Lstat(foreignNote); err != nil {
			t.Errorf("another user's note: %v; want it left alone", err)
		}
		os.Remove(foreignNote)
	}

	// Stopped agents take their sockets and notes with them.
	pt.Stopped(t, a, syscall.SIGTERM)
	pt.Stopped(t, b, syscall.SIGINT)
	pt.Stopped(t, c, syscall.SIGTERM)
	for _, dir := range []string{userDir, tmpDir} {
		if socks, _ := filepath.Glob(filepath.Join(dir, "*")); len(socks) > 0 {
			t.Errorf("left in %s: %v", dir, socks)
		}
	}
	out, errOut, code := pt.Run(t, env, pt.RelayctlBin, "status")
	want0 := "relayctl: no relayctl agent is running (looked in " + userDir + ", " + tmpDir + ", /run/relayctl/*): " +
		"start one with relayctl expose or relayctl run, or ask one by its socket: relayctl status --control PATH\n"
	if code != 1 || out != "" || errOut != want0 {
		t.Errorf("no agent: exit %d, stdout %q, stderr %q\nwant 1, nothing, %q", code, out, errOut, want0)
	}
}

// TestStatusDisconnected: while its agent has no session, a tunnel shows
// no transport, round trip or uptime: "-" in the table, null rtt_ms in
// JSON, not what the last session measured.
func TestStatusDisconnected(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	local := pt.StartEcho(t, "D:")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP,
		"--transport", "tcp", "--name", "down", "--control", sock)
	waitStatus := func(what string, ok func(controlStatus) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			cs, err := queryAgent(context.Background(), sock)
			if err == nil && ok(cs) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 10s, no %s: %+v, %v", what, cs, err)
			}
		}
	}
	waitStatus("round trip measured", func(cs controlStatus) bool { return cs.Connected && cs.RTT != nil && *cs.RTT > 0 })
	r.Proc.Signal(syscall.SIGKILL)
	r.Proc.Wait(pt.ExitTimeout)
	waitStatus("disconnected agent", func(cs controlStatus) bool { return !cs.Connected })

	st := statusJSON(t, nil, "--control", sock)[0]
	if rtt, ok := st["rtt_ms"]; !ok || rtt != nil || st["connected"] != false || st["transport"] != "" || st["uptime_seconds"] != 0.0 {
		t.Errorf("status --json: rtt_ms %v, connected %v, transport %q, uptime_seconds %v; want null, false, \"\", 0",
			st["rtt_ms"], st["connected"], st["transport"], st["uptime_seconds"])
	}
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "status", "--control", sock)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("exit %d, stdout:\n%s\nstderr: %s\nwant 3 lines", code, out, errOut)
	}
	// The public address stays: the agent asks for it again when it is back.
	want := []string{"down", urls[0], local, "-", "-", "0", "0", "B", "0", "B", "-"}
	if got := strings.Fields(lines[2]); !slices.Equal(got, want) {
		t.Errorf("row %q, want the fields %q", lines[2], want)
	}
	if !strings.Contains(lines[0], fmt.Sprintf("agent %d ", agent.Pid())) || !strings.Contains(lines[0], ", connecting, ") {
		t.Errorf("first line %q: want agent %d, connecting", lines[0], agent.Pid())
	}
}

// serveUnixHTTP serves handler on a unix socket in a folder of its own,
// until the test ends, and returns the socket's path.
func serveUnixHTTP(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "other.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

// TestStatusErrors: mistakes with status and --control, each one line.
func TestStatusErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.sock")
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	// Sockets of other programs, that speak HTTP but are no agent (a
	// --control given the wrong path). The line said "the agent answered".
	notFound := serveUnixHTTP(t, http.NotFound)
	notJSON := serveUnixHTTP(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello\n") })
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no agent there", []string{"status", "--control", missing}, 1,
			"relayctl: no agent answers on " + missing + ": connect: no such file or directory: is relayctl running with --control " + missing + "?"},
		{"empty control", []string{"status", "--control", ""}, 2, "relayctl: --control needs the PATH of an agent's control socket"},
		{"argument", []string{"status", "web"}, 2, `relayctl: status takes no arguments (got "web"); pick an agent with --control PATH`},
		{"not an agent", []string{"status", "--control", notFound}, 1,
			"relayctl: no agent answers on " + notFound + ": what answers there said 404 Not Found: is relayctl running with --control " + notFound + "?"},
		{"not an agent's answer", []string{"status", "--control", notJSON}, 1,
			"relayctl: no agent answers on " + notJSON + ": what answers there sent no agent status (invalid character 'h' looking for beginning of value): is relayctl running with --control " + notJSON + "?"},
		{"control not a socket", []string{"expose", "8080", "--relay", pt.ClosedPort(t), "--token", pt.TestSecret, "--control", file}, 1,
			"relayctl: --control " + file + ": a file that is not a socket is in the way"},
		{"control folder missing", []string{"expose", "8080", "--relay", pt.ClosedPort(t), "--token", pt.TestSecret, "--control", filepath.Join(dir, "no", "a.sock")}, 1,
			"relayctl: --control " + filepath.Join(dir, "no", "a.sock") + ": listen unix " + filepath.Join(dir, "no", "a.sock") + ": bind: no such file or directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, tt.args...)
			if code != tt.code || out != "" || pt.LastLine(errOut) != tt.want {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant %d, nothing, %q", code, out, errOut, tt.code, tt.want)
			}
		})
	}

	// --watch --json prints why as JSON, a line a second, while no agent
	// answers, and goes on until stopped.
	t.Run("watch json, no agent", func(t *testing.T) {
		t.Parallel()
		p := pt.Start(t, nil, pt.RelayctlBin, "status", "--watch", "--json", "--control", missing)
		line := p.WaitFor(&p.Stdout, regexp.MustCompile(`^[^\n]*\n`), pt.StartTimeout)[0]
		want, _ := json.Marshal(map[string]string{"error": "no agent answers on " + missing + ": connect: no such file or directory: is relayctl running with --control " + missing + "?"})
		if line != string(want)+"\n" {
			t.Errorf("first line %q, want %q", line, want)
		}
		pt.Stopped(t, p, syscall.SIGINT)
	})
}

// TestStatusLimit: an agent whose token has a max_bandwidth says what the
// relay lets it send: limit_bps in --json, "sending at most" in the table.
func TestStatusLimit(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML+"max_bandwidth = \"100M\"\n")
	local := pt.StartEcho(t, "L:")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent, _ := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--control", sock)
	// The relay's LIMIT comes on the session after the tunnel is live.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if cs, err := queryAgent(context.Background(), sock); err == nil && cs.LimitBPS != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after 10s, the agent reports no limit")
		}
	}
	if st := statusJSON(t, nil, "--control", sock)[0]; st["limit_bps"] != 100e6 {
		t.Errorf("status --json: limit_bps %v, want 100000000", st["limit_bps"])
	}
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "status", "--control", sock)
	if want := fmt.Sprintf(" → %s, connected, sending at most 100.0 Mbit/s, reconnects 0  [%s]\n", r.Addr, sock); code != 0 || !strings.Contains(out, want) {
		t.Errorf("status: exit %d, stdout:\n%s\nstderr: %s\nwant a line with %q", code, out, errOut, want)
	}
	if !strings.HasPrefix(out, fmt.Sprintf("agent %d ", agent.Pid())) {
		t.Errorf("status does not start with agent %d:\n%s", agent.Pid(), out)
	}
}

// TestSortStatus: agents in the order of their tunnels' names, numbers by
// value, then by relay and PID; each agent's tunnels in name order.
func TestSortStatus(t *testing.T) {
	t.Parallel()
	agent := func(pid int, relay string, names ...string) controlStatus {
		st := controlStatus{PID: pid, Relay: relay}
		for _, n := range names {
			st.Tunnels = append(st.Tunnels, controlTunnel{Name: n})
		}
		return st
	}
	sts := []controlStatus{
		agent(1, "r:7000", "web"),
		agent(2, "r:7000", "valheim-2458", "valheim-10000", "valheim-2456"),
		agent(3, "r:7000", "game-10"),
		agent(4, "r:7000", "game-9"),
		agent(5, "r:7000", "web"),
		agent(6, "a:7000", "web"),
		agent(7, "r:7000", "Web"),
		agent(8, "r:7000", "game-09"),
		agent(9, "r:7000", "game-9b"),
		agent(10, "r:7000"),
	}
	sortStatus(sts)
	var got []string
	for _, st := range sts {
		var names []string
		for _, tun := range st.Tunnels {
			names = append(names, tun.Name)
		}
		got = append(got, fmt.Sprintf("%d %s %s", st.PID, st.Relay, strings.Join(names, ",")))
	}
	want := []string{
		"10 r:7000 ",
		"7 r:7000 Web",
		"8 r:7000 game-09",
		"4 r:7000 game-9",
		"9 r:7000 game-9b",
		"3 r:7000 game-10",
		"2 r:7000 valheim-2456,valheim-2458,valheim-10000",
		"6 a:7000 web",
		"1 r:7000 web",
		"5 r:7000 web",
	}
	if !slices.Equal(got, want) {
		t.Errorf("order\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestFormatBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.00 KiB", 100_005: "97.7 KiB", 5 << 20: "5.00 MiB",
		300 << 30: "300 GiB", 2 << 50: "2.00 PiB",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestControlStatusPublicURLs: public_urls lists a tunnel's public URLs
// ([] before the relay granted any), beside public, their one string;
// udp_drops shows only for a tunnel that dropped datagrams.
func TestControlStatusPublicURLs(t *testing.T) {
	t.Parallel()
	cs := newControlStatus(tunnel.AgentStatus{Connected: true, Tunnels: []tunnel.AgentTunnelStatus{
		{Name: "a", Local: "localhost:1"},
		{Name: "b", Local: "localhost:2", Public: "tcp://relay.example.com:2 udp://relay.example.com:2", UDPDrops: 3},
		{Name: "c", Local: "localhost:3", Closed: "tunnel c (localhost:3): no longer allowed"},
	}}, "/c.sock", time.Now())
	got, err := json.Marshal(cs.Tunnels)
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"name":"a","public":"","public_urls":[],"local":"localhost:1","active":0,"total":0,"bytes_in":0,"bytes_out":0},` +
		`{"name":"b","public":"tcp://relay.example.com:2 udp://relay.example.com:2","public_urls":["tcp://relay.example.com:2","udp://relay.example.com:2"],` +
		`"local":"localhost:2","active":0,"total":0,"bytes_in":0,"bytes_out":0,"udp_drops":3},` +
		`{"name":"c","public":"","public_urls":[],"local":"localhost:3","active":0,"total":0,"bytes_in":0,"bytes_out":0,"closed":"tunnel c (localhost:3): no longer allowed"}]`
	if string(got) != want {
		t.Errorf("tunnels:\n%s\nwant\n%s", got, want)
	}
}

// TestWriteStatus: the table for an agent still connecting, with a tunnel
// not yet granted a public address, and for one that is up, with a tunnel
// the relay closed for good and one that dropped UDP datagrams (so its
// table, alone, has a DROPS column).
func TestWriteStatus(t *testing.T) {
	t.Parallel()
	sts := []controlStatus{
		{PID: 7, Version: "v1.0.0", Control: "/run/relayctl/a/7.sock", Relay: "relay.example.com:7000", Reconnects: 2,
			Tunnels: []controlTunnel{{Name: "web", Local: "localhost:8080"}}},
		{PID: 9, Version: "v1.0.0", Control: "/tmp/9.sock", Relay: "relay.example.com:7000", Proxy: "http://u:xxxxx@proxy.lan:3128", Connected: true, Transport: "quic", Draining: true,
			Uptime: 3725.4, RTT: new(18.44), LimitBPS: new(uint64(25e6)), Tunnels: []controlTunnel{
				{Name: "bedrock", Public: "udp://relay.example.com:19132", Local: "localhost:19132", Active: 5, BytesIn: 2048, BytesOut: 4096, UDPDrops: 76},
				{Name: "game", Public: "tcp://relay.example.com:24567", Local: "localhost:25565", Active: 3, BytesIn: 1 << 20, BytesOut: 5 << 30},
				{Name: "old", Local: "localhost:25566", Closed: `tunnel old (localhost:25566): its token "t"'s names rule no longer allows the name "old"`},
			}},
	}
	var b strings.Builder
	writeStatus(&b, sts, false)
	const want = `agent 7 (relayctl v1.0.0) → relay.example.com:7000, connecting, reconnects 2  [/run/relayctl/a/7.sock]
NAME  PUBLIC  LOCAL           TRANSPORT  RTT  ACTIVE  IN   OUT  UPTIME
web   -       localhost:8080  -          -    0       0 B  0 B  -

agent 9 (relayctl v1.0.0) → relay.example.com:7000 via http://u:xxxxx@proxy.lan:3128, connected, draining, sending at most 25.0 Mbit/s, reconnects 0  [/tmp/9.sock]
NAME     PUBLIC                         LOCAL            TRANSPORT  RTT   ACTIVE  IN        OUT       UPTIME  DROPS
bedrock  udp://relay.example.com:19132  localhost:19132  quic       18ms  5       2.00 KiB  4.00 KiB  1h2m5s  76
game     tcp://relay.example.com:24567  localhost:25565  quic       18ms  3       1.00 MiB  5.00 GiB  1h2m5s  0
old      closed by the relay            localhost:25566  quic       18ms  0       0 B       0 B       1h2m5s  0
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
