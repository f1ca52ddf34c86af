package main

// The control socket: a running agent serves its status as JSON over HTTP
// on a unix socket, for `relayctl status`. By default each agent makes
// DIR/PID.sock, where DIR is the first of
//
//	$RUNTIME_DIRECTORY                 set by systemd's RuntimeDirectory=
//	$XDG_RUNTIME_DIR/relayctl          a login session's private folder
//	$TMPDIR/relayctl-UID               made 0700, and refused if another user owns it
//	%TEMP%\relayctl                    on Windows, where %TEMP% is the user's own
//
// so `relayctl status` can find every agent of its user (and of the system's
// units, under /run/relayctl) without being told where. The socket is 0600
// in a 0700 folder: only the agent's user (and root) can read the status.
//
// An agent given --control PATH leaves DIR/PID.control instead, a note
// holding PATH made absolute, so status finds it there too. status follows
// a note only if its own user wrote it: root reading a unit's folder must
// not be sent to any socket the unit's user names.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/tunnel"
)

// controlFlag is --control for the commands that run an agent.
func controlFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "control",
		Usage: "serve `PATH`, a unix socket, for relayctl status (which finds it unasked); \"\" serves none " +
			"(default: PID.sock in $RUNTIME_DIRECTORY under systemd, else $XDG_RUNTIME_DIR/relayctl, else $TMPDIR/relayctl-UID)",
	}
}

// systemControlDir holds the folders of the system's relayctl@ units
// (RuntimeDirectory=relayctl/%i), which status looks through as well.
const systemControlDir = "/run/relayctl"

// controlStatus is what GET /v1/status returns, and `relayctl status --json`
// prints (one per agent). Fields are only ever added.
type controlStatus struct {
	PID        int       `json:"pid"`
	Version    string    `json:"version"`
	Control    string    `json:"control"` // the socket's path
	Relay      string    `json:"relay"`
	Proxy      string    `json:"proxy,omitempty"` // --proxy, its password as xxxxx; absent: none
	Transport  string    `json:"transport"`       // "quic" or "tcp"; "" while not connected
	Connected  bool      `json:"connected"`
	Since      time.Time `json:"since"` // when the session came up
	Uptime     float64   `json:"uptime_seconds"`
	RTT        *float64  `json:"rtt_ms"` // null while not connected, or not measured yet
	Reconnects int       `json:"reconnects"`
	// LimitBPS is what the relay lets the agent send, in bits a second
	// (its token's max_bandwidth, or its share of it); null: no limit.
	LimitBPS *uint64 `json:"limit_bps"`
	// Draining: stopping; the relay sends it no new clients, and it
	// exits once those connected are done (or --drain-timeout passes).
	Draining bool            `json:"draining"`
	Tunnels  []controlTunnel `json:"tunnels"`
}

type controlTunnel struct {
	Name       string   `json:"name"`
	Public     string   `json:"public"`      // tcp://HOST:PORT; both URLs, space-separated, for tcp,udp
	PublicURLs []string `json:"public_urls"` // Public as a list; [] until the relay granted the tunnel
	Local      string   `json:"local"`
	Active     int64    `json:"active"`
	Total      int64    `json:"total"`
	BytesIn    int64    `json:"bytes_in"` // clients → local server
	BytesOut   int64    `json:"bytes_out"`
	// UDPDrops counts the UDP datagrams the agent dropped (the relay
	// counts its own); absent while none.
	UDPDrops int64 `json:"udp_drops,omitempty"`
	// Closed is why the relay closed the tunnel for good (a reload of its
	// rules); absent while it is open.
	Closed string `json:"closed,omitempty"`
}

// publicURLs splits a tunnel's space-separated public URLs into a list,
// never nil, so JSON shows [] rather than null.
func publicURLs(public string) []string {
	return append([]string{}, strings.Fields(public)...)
}

// statusSource is the agent as the control socket sees it.
type statusSource interface {
	Status() tunnel.AgentStatus
}

func newControlStatus(st tunnel.AgentStatus, path string, now time.Time) controlStatus {
	cs := controlStatus{
		PID: os.Getpid(), Version: buildinfo.Read().Version, Control: path,
		Relay: st.Relay, Proxy: st.Proxy, Transport: st.Transport, Connected: st.Connected, Since: st.Since,
		Reconnects: st.Reconnects, Draining: st.Draining, Tunnels: []controlTunnel{},
	}
	if !cs.Connected {
		cs.Transport = ""
	}
	// Without a session, a round trip would describe a path that is gone.
	if cs.Connected && st.RTT > 0 {
		rtt := float64(st.RTT.Microseconds()) / 1000
		cs.RTT = &rtt
	}
	if cs.Connected && st.Limit > 0 {
		bps := 8 * st.Limit
		cs.LimitBPS = &bps
	}
	if st.Connected && !st.Since.IsZero() {
		cs.Uptime = now.Sub(st.Since).Round(time.Millisecond).Seconds()
	}
	for _, t := range st.Tunnels {
		cs.Tunnels = append(cs.Tunnels, controlTunnel{Name: t.Name, Public: t.Public, PublicURLs: publicURLs(t.Public),
			Local: t.Local, Active: t.Active, Total: t.Total, BytesIn: t.BytesIn, BytesOut: t.BytesOut, UDPDrops: t.UDPDrops, Closed: t.Closed})
	}
	sortTunnels(cs.Tunnels)
	return cs
}

// startControl serves agent's status on the control socket. A socket the
// user named that cannot be served stops relayctl; the default one only
// costs a warning, since the tunnels work without it.
func startControl(c *cli.Context, agent statusSource, log *slog.Logger) (stop func(), err error) {
	noop := func() {}
	path, named := c.String("control"), c.IsSet("control")
	if named && path == "" {
		return noop, nil
	}
	if !named {
		dir, err := controlDir(true)
		if err != nil {
			log.Warn("no control socket, so relayctl status will not see this agent", "err", err)
			return noop, nil
		}
		removeStale(dir)
		path = filepath.Join(dir, strconv.Itoa(os.Getpid())+".sock")
	}
	ln, err := listenControl(path)
	if err != nil {
		if named {
			msg := fmt.Sprintf("--control %s: %v", path, err)
			if errors.Is(err, errControlServed) {
				// Only for a PATH given: the default one is this PID's.
				msg += ": give each agent a --control of its own, or leave --control out (each then gets PID.sock)"
			}
			return nil, cli.Exit(msg, exitFailure)
		}
		log.Warn("no control socket, so relayctl status will not see this agent", "err", err)
		return noop, nil
	}
	log.Debug("control socket ready", "control", path)
	unnote := func() {}
	if named {
		unnote = noteControl(path, log)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(newControlStatus(agent.Status(), path, time.Now()))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	return func() {
		unnote()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

// noteSuffix ends the name of the note an agent with --control leaves
// where status looks: PID.control, holding the socket's absolute path.
const noteSuffix = ".control"

// noteControl writes PID.control for the socket at path in this user's
// control folder, and returns what removes it. Without the note the agent
// works all the same; status then needs to be given --control.
func noteControl(path string, log *slog.Logger) (remove func()) {
	noop := func() {}
	abs, err := filepath.Abs(path)
	if err != nil {
		log.Debug("relayctl status will find this agent only with --control", "err", err)
		return noop
	}
	dir, err := controlDir(true)
	if err != nil {
		log.Debug("relayctl status will find this agent only with --control", "err", err)
		return noop
	}
	removeStale(dir)
	note := filepath.Join(dir, strconv.Itoa(os.Getpid())+noteSuffix)
	// Written aside and renamed, so status never reads half a path (and,
	// finding no socket there, removes the note).
	tmp := note + ".tmp"
	if err := os.WriteFile(tmp, []byte(abs+"\n"), 0o600); err != nil {
		log.Debug("relayctl status will find this agent only with --control", "err", err)
		return noop
	}
	if err := os.Rename(tmp, note); err != nil {
		os.Remove(tmp)
		log.Debug("relayctl status will find this agent only with --control", "err", err)
		return noop
	}
	return func() { os.Remove(note) }
}

// readNote is the socket path a note names, if this user wrote the note
// and it holds an absolute path.
func readNote(note string) (string, bool) {
	fi, err := os.Lstat(note)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > 4096 || !ownedBySelf(fi) {
		return "", false
	}
	b, err := os.ReadFile(note)
	if err != nil {
		return "", false
	}
	path := strings.TrimSuffix(string(b), "\n")
	if !filepath.IsAbs(path) || strings.ContainsAny(path, "\n\x00") {
		return "", false
	}
	return path, true
}

// errControlServed is listenControl's error for a socket another agent
// serves.
var errControlServed = errors.New("another relayctl is serving this socket")

// listenControl listens on the unix socket path, readable by this user
// alone. A socket left there by an agent that is gone is replaced; a live
// one, or anything else at path, is an error.
func listenControl(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, errors.New("a file that is not a socket is in the way")
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, errControlServed
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The folder is private already; this covers a --control elsewhere.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// controlDir is the folder for this user's agents' sockets (see the top of
// this file), made if create is set.
func controlDir(create bool) (string, error) {
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0], nil
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		dir := filepath.Join(d, "relayctl")
		if create {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return "", err
			}
		}
		return dir, nil
	}
	return tempControlDir(create)
}

// removeStale removes the PID.sock sockets and PID.control notes in dir
// whose process is gone.
func removeStale(dir string) {
	for _, suffix := range []string{".sock", noteSuffix} {
		files, _ := filepath.Glob(filepath.Join(dir, "*"+suffix))
		for _, f := range files {
			if pid, ok := filePID(f, suffix); ok && !processAlive(pid) {
				os.Remove(f)
			}
		}
	}
}

// filePID is the PID in a file named PID followed by suffix.
func filePID(path, suffix string) (int, bool) {
	pid, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), suffix))
	return pid, err == nil && pid > 0
}
