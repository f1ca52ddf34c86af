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
		Usage: "serve `PATH`, a unix socket, for relayctl status; \"\" serves none " +
			"(default: PID.sock in $XDG_RUNTIME_DIR/relayctl, else $TMPDIR/relayctl-UID)",
	}
}

// systemControlDir holds the folders of the system's relayctl@ units
// (RuntimeDirectory=relayctl/%i), which status looks through as well.
const systemControlDir = "/run/relayctl"

// controlStatus is what GET /v1/status returns, and `relayctl status --json`
// prints (one per agent). Fields are only ever added.
type controlStatus struct {
	PID        int             `json:"pid"`
	Version    string          `json:"version"`
	Control    string          `json:"control"` // the socket's path
	Relay      string          `json:"relay"`
	Transport  string          `json:"transport"` // "quic" or "tcp"; "" while not connected
	Connected  bool            `json:"connected"`
	Since      time.Time       `json:"since"` // when the session came up
	Uptime     float64         `json:"uptime_seconds"`
	RTT        *float64        `json:"rtt_ms"` // null while not connected, or not measured yet
	Reconnects int             `json:"reconnects"`
	Tunnels    []controlTunnel `json:"tunnels"`
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
		Relay: st.Relay, Transport: st.Transport, Connected: st.Connected, Since: st.Since,
		Reconnects: st.Reconnects, Tunnels: []controlTunnel{},
	}
	if !cs.Connected {
		cs.Transport = ""
	}
	// Without a session, a round trip would describe a path that is gone.
	if cs.Connected && st.RTT > 0 {
		rtt := float64(st.RTT.Microseconds()) / 1000
		cs.RTT = &rtt
	}
	if st.Connected && !st.Since.IsZero() {
		cs.Uptime = now.Sub(st.Since).Round(time.Millisecond).Seconds()
	}
	for _, t := range st.Tunnels {
		cs.Tunnels = append(cs.Tunnels, controlTunnel{Name: t.Name, Public: t.Public, PublicURLs: publicURLs(t.Public),
			Local: t.Local, Active: t.Active, Total: t.Total, BytesIn: t.BytesIn, BytesOut: t.BytesOut})
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
			return nil, cli.Exit(fmt.Sprintf("--control %s: %v", path, err), exitFailure)
		}
		log.Warn("no control socket, so relayctl status will not see this agent", "err", err)
		return noop, nil
	}
	log.Debug("control socket ready", "control", path)

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
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

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
			return nil, errors.New("another relayctl is serving this socket")
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

// removeStale removes the PID.sock files in dir whose process is gone.
func removeStale(dir string) {
	socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	for _, s := range socks {
		if pid, ok := socketPID(s); ok && !processAlive(pid) {
			os.Remove(s)
		}
	}
}

// socketPID is the PID in a socket named PID.sock.
func socketPID(path string) (int, bool) {
	pid, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".sock"))
	return pid, err == nil && pid > 0
}
