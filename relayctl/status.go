package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/relaytun/relay/internal/bitrate"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

var statusCommand = &cli.Command{
	Name:      "status",
	Usage:     "show the tunnels of the running agents (relayctl expose or run)",
	ArgsUsage: " ",
	Description: "Asks every running agent of this user over its control socket (see --control on expose)\n" +
		"and prints each tunnel: name, public and local address, transport, relay round-trip time,\n" +
		"open connections, bytes in (clients to the local server) and out, how long the session\n" +
		"has been up, and UDP datagrams dropped (DROPS, for an agent that dropped any). Tunnels\n" +
		"are in name order (game-9 before game-10), each agent under its first.\n" +
		"Exits 1 when no agent is running.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "control", Usage: "ask only the agent serving the unix socket `PATH` (its --control); default: every agent found"},
		&cli.BoolFlag{Name: "json", Usage: "print a JSON list with one object per agent"},
		&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "redraw every second until Ctrl-C; off a terminal, print a dated snapshot every second"},
	},
	Action: statusAction,
}

func statusAction(c *cli.Context) error {
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("status takes no arguments (got %q); pick an agent with --control PATH", c.Args().First()), exitUsage)
	}
	path, asJSON := c.String("control"), c.Bool("json")
	if c.IsSet("control") && path == "" {
		return cli.Exit("--control needs the PATH of an agent's control socket", exitUsage)
	}
	if !c.Bool("watch") {
		sts, err := queryAgents(c.Context, path)
		if err != nil {
			return cli.Exit(err.Error(), exitFailure)
		}
		return writeStatus(c.App.Writer, sts, asJSON)
	}

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tty := isTerminal(c.App.Writer)
	for first := true; ; first = false {
		var b bytes.Buffer
		sts, err := queryAgents(ctx, path)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case asJSON:
		case tty:
			// Home and clear: a plain redraw any terminal understands.
			b.WriteString("\x1b[H\x1b[2J")
			fmt.Fprintf(&b, "%s   (every 1s; Ctrl-C to stop)\n\n", time.Now().Format(time.TimeOnly))
		default:
			// A file or a pipe keeps every snapshot: escape codes would
			// be noise there, and the date tells them apart.
			if !first {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "%s\n", time.Now().Format(time.DateTime))
		}
		switch {
		case err != nil && asJSON:
			json.NewEncoder(&b).Encode(map[string]string{"error": err.Error()})
		case err != nil:
			fmt.Fprintf(&b, "%s\n", err)
		case asJSON:
			json.NewEncoder(&b).Encode(sts) // one line a second
		default:
			writeStatus(&b, sts, false)
		}
		c.App.Writer.Write(b.Bytes())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// queryAgents asks the agent at path, or every agent found when path is "".
func queryAgents(ctx context.Context, path string) ([]controlStatus, error) {
	if path != "" {
		st, err := queryAgent(ctx, path)
		if err != nil {
			return nil, fmt.Errorf("no agent answers on %s: %v: is relayctl running with --control %s?", path, oneLine(err.Error()), path)
		}
		out := []controlStatus{st}
		sortStatus(out)
		return out, nil
	}
	dirs, looked := controlDirs()
	var out []controlStatus
	// A socket is asked once, though a note may name one found as well.
	asked := map[string]bool{}
	ask := func(sock string) (controlStatus, error) {
		key := sock
		if abs, err := filepath.Abs(sock); err == nil {
			key = abs
		}
		if asked[key] {
			return controlStatus{}, errAsked
		}
		asked[key] = true
		return queryAgent(ctx, sock)
	}
	for _, dir := range dirs {
		socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
		for _, s := range socks {
			pid, named := filePID(s, ".sock")
			if named && !processAlive(pid) {
				os.Remove(s) // its agent is gone
				continue
			}
			st, err := ask(s)
			if err != nil {
				if named && errors.Is(err, syscall.ECONNREFUSED) {
					os.Remove(s) // nothing listens: the PID is another process now
				}
				continue
			}
			out = append(out, st)
		}
		notes, _ := filepath.Glob(filepath.Join(dir, "*"+noteSuffix))
		for _, n := range notes {
			pid, named := filePID(n, noteSuffix)
			if !named {
				continue
			}
			if !processAlive(pid) {
				os.Remove(n) // its agent is gone
				continue
			}
			sock, ok := readNote(n)
			if !ok {
				continue
			}
			st, err := ask(sock)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
					os.Remove(n) // the PID is another process now, or the socket was removed
				}
				continue
			}
			out = append(out, st)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no relayctl agent is running (looked in %s): start one with relayctl expose or relayctl run, "+
			"or ask one by its socket: relayctl status --control PATH", strings.Join(looked, ", "))
	}
	sortStatus(out)
	return out, nil
}

// errAsked is a socket status has asked already.
var errAsked = errors.New("asked already")

// sortStatus puts the agents in the order of their tunnels' names, each
// agent's tunnels in name order too. A user scans the table for a name,
// and a tunnel keeps its place when its agent restarts under another PID,
// which matters to status --watch. Numbers in names compare by value, so
// game-9 comes before game-10. Agents with the same names (a group on one
// machine) go by relay, then PID.
func sortStatus(sts []controlStatus) {
	for _, st := range sts {
		sortTunnels(st.Tunnels) // an agent from before this sent them in its own order
	}
	slices.SortFunc(sts, func(a, b controlStatus) int {
		return cmp.Or(
			slices.CompareFunc(a.Tunnels, b.Tunnels, func(x, y controlTunnel) int { return compareNames(x.Name, y.Name) }),
			strings.Compare(a.Relay, b.Relay),
			cmp.Compare(a.PID, b.PID))
	})
}

// sortTunnels puts tunnels in name order, as sortStatus says.
func sortTunnels(ts []controlTunnel) {
	slices.SortFunc(ts, func(a, b controlTunnel) int {
		return cmp.Or(compareNames(a.Name, b.Name), strings.Compare(a.Local, b.Local))
	})
}

// compareNames compares a and b with each run of digits taken as a number,
// so web-9 < web-10 and the tunnels of a port range (valheim-2456…) stay in
// port order; names equal that way (web-09, web-9) fall back to bytes.
func compareNames(a, b string) int {
	x, y := a, b
	for x != "" && y != "" {
		nx, ny := digitRun(x), digitRun(y)
		if nx == 0 || ny == 0 {
			if x[0] != y[0] {
				return cmp.Compare(x[0], y[0])
			}
			x, y = x[1:], y[1:]
			continue
		}
		dx, dy := strings.TrimLeft(x[:nx], "0"), strings.TrimLeft(y[:ny], "0")
		if c := cmp.Or(cmp.Compare(len(dx), len(dy)), strings.Compare(dx, dy)); c != 0 {
			return c
		}
		x, y = x[nx:], y[ny:]
	}
	return cmp.Or(cmp.Compare(len(x), len(y)), strings.Compare(a, b))
}

// digitRun is the length of the run of ASCII digits s starts with.
func digitRun(s string) int {
	n := 0
	for n < len(s) && '0' <= s[n] && s[n] <= '9' {
		n++
	}
	return n
}

// controlDirs are the folders status looks through: this user's (where
// its agents put their sockets and notes, with or without
// $XDG_RUNTIME_DIR) and the system units'. looked names them for the user,
// the units' as one pattern, and $TMPDIR/relayctl-UID also where it is
// missing or, not being private, is not searched.
func controlDirs() (dirs, looked []string) {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		dirs = append(dirs, filepath.Join(d, "relayctl"))
	}
	looked = slices.Clone(dirs)
	if d, err := tempControlDir(false); err == nil {
		dirs = append(dirs, d)
	}
	looked = append(looked, tempControlPath())
	if runtime.GOOS != "windows" {
		units, _ := filepath.Glob(filepath.Join(systemControlDir, "*"))
		dirs = append(dirs, units...)
		looked = append(looked, filepath.Join(systemControlDir, "*"))
	}
	return dirs, looked
}

// queryAgent asks the agent serving the socket at path for its status.
func queryAgent(ctx context.Context, path string) (controlStatus, error) {
	var st controlStatus
	client := &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://relayctl/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			return st, oe.Err // "connect: connection refused", without the URL
		}
		return st, err
	}
	defer resp.Body.Close()
	// Not "the agent answered": the socket may be another program's (a
	// wrong --control), and the line starts "no agent answers on PATH".
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("what answers there said %s", resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("what answers there sent no agent status (%w)", err)
	}
	st.Control = path
	for i, t := range st.Tunnels {
		if t.PublicURLs == nil { // an agent from before public_urls
			st.Tunnels[i].PublicURLs = publicURLs(t.Public)
		}
	}
	return st, nil
}

// writeStatus prints the agents' status: JSON, or one table per agent.
func writeStatus(w io.Writer, sts []controlStatus, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(sts)
	}
	for i, st := range sts {
		if i > 0 {
			fmt.Fprintln(w)
		}
		state := "connecting"
		if st.Connected {
			state = "connected"
		}
		if st.Draining {
			state += ", draining"
		}
		if st.LimitBPS != nil {
			state += ", sending at most " + bitrate.Format(float64(*st.LimitBPS))
		}
		relay := st.Relay
		if st.Proxy != "" {
			relay += " via " + st.Proxy
		}
		fmt.Fprintf(w, "agent %d (relayctl %s) → %s, %s, reconnects %d  [%s]\n",
			st.PID, st.Version, relay, state, st.Reconnects, st.Control)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		// DROPS only for an agent that dropped UDP datagrams: most never
		// do, and their table stays as it was. Last, so the columns
		// before it keep their places.
		drops := slices.ContainsFunc(st.Tunnels, func(t controlTunnel) bool { return t.UDPDrops > 0 })
		dropsHead := ""
		if drops {
			dropsHead = "\tDROPS"
		}
		fmt.Fprintf(tw, "NAME\tPUBLIC\tLOCAL\tTRANSPORT\tRTT\tACTIVE\tIN\tOUT\tUPTIME%s\n", dropsHead)
		transport, rtt, up := "-", "-", "-"
		if st.Connected {
			transport = st.Transport
			if st.RTT != nil && *st.RTT > 0 { // an agent before null sent 0 for none
				rtt = formatRTT(*st.RTT)
			}
			up = (time.Duration(st.Uptime * float64(time.Second))).Round(time.Second).String()
		}
		for _, t := range st.Tunnels {
			public := t.Public
			switch {
			case t.Closed != "":
				public = "closed by the relay"
			case public == "":
				public = "-"
			}
			dropsCol := ""
			if drops {
				dropsCol = fmt.Sprintf("\t%d", t.UDPDrops)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s%s\n",
				t.Name, public, t.Local, transport, rtt, t.Active, formatBytes(t.BytesIn), formatBytes(t.BytesOut), up, dropsCol)
		}
		tw.Flush()
	}
	return nil
}

func formatRTT(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.0fms", ms)
}

// formatBytes is n in B, KiB, MiB… with three significant digits or so.
func formatBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n), ""
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= 1024
		unit = u
		if v < 1024 {
			break
		}
	}
	if v < 10 {
		return fmt.Sprintf("%.2f %s", v, unit)
	}
	if v < 100 {
		return fmt.Sprintf("%.1f %s", v, unit)
	}
	return fmt.Sprintf("%.0f %s", v, unit)
}
