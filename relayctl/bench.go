package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/relaytun/relay/internal/bitrate"
	"github.com/relaytun/relay/internal/gcfloor"
	"github.com/relaytun/relay/tunnel"
)

var benchCommand = &cli.Command{
	Name:      "bench",
	Usage:     "measure what a relay carries: throughput, round trips, new connections, UDP loss",
	ArgsUsage: " ",
	Description: "Starts a sink and echo server inside relayctl, exposes it through the relay (TCP and UDP on\n" +
		"one public port), and measures, through the relay and back: bulk throughput over 1 and\n" +
		"--streams connections, the round trip of a small message (p50, p99), new connections per\n" +
		"second, and the loss and jitter of 1200-byte UDP datagrams sent at --udp-rate. Each test runs\n" +
		"for --duration. The tunnel lasts as long as the bench and leaves no port lease on the relay.\n" +
		"Prints a table, or JSON with --json; progress goes to stderr. Exit codes are expose's:\n" +
		"1 unreachable, 2 usage, 3 refused (also when the relay closes the test's connections, as a\n" +
		"connection limit does), 4 unverified relay.",
	Flags: append(relayFlags(),
		&cli.StringFlag{Name: "name", Usage: "tunnel `NAME` on the relay, for a token whose names rule needs one (default: bench- and 6 random hex digits)"},
		&cli.IntFlag{Name: "streams", Value: 8, Usage: "parallel connections for the multi-stream throughput and new-connection tests (`N`)"},
		&cli.DurationFlag{Name: "duration", Value: 3 * time.Second, Usage: "how long each test runs (`DURATION`)"},
		&cli.StringFlag{Name: "udp-rate", Value: "100M", Usage: "UDP send rate in bits/s (`RATE`: 500k, 100M, 1G); 0 skips the UDP test"},
		&cli.BoolFlag{Name: "json", Usage: "print the results as one JSON object"},
		&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "debug, info, warn or error"},
	),
	Action: benchAction,
}

// benchDatagram is the size of the UDP test's datagrams: a game's or a
// VPN's, under every path's MTU.
const benchDatagram = 1200

// BenchResult is what relayctl bench --json prints.
type BenchResult struct {
	Relay     string  `json:"relay"`
	Transport string  `json:"transport"`
	Duration  float64 `json:"duration_seconds"`
	Streams   int     `json:"streams"`
	// Bulk throughput, bits per second, over one connection and over
	// Streams at once.
	Throughput1 float64 `json:"throughput_1_stream_bits_per_second"`
	ThroughputN float64 `json:"throughput_n_streams_bits_per_second"`
	// Round trips of a 64-byte message on one connection.
	RoundTripP50 float64 `json:"round_trip_p50_ms"`
	RoundTripP99 float64 `json:"round_trip_p99_ms"`
	RoundTrips   int     `json:"round_trips"`
	// New connections per second (connect, one byte there and back,
	// close), Streams at a time.
	NewConnections float64 `json:"new_connections_per_second"`
	// UDP is absent when the test was skipped (--udp-rate 0).
	UDP *BenchUDP `json:"udp,omitempty"`
	// Limit is the most the relay let this agent send at the end of a
	// test, bits per second (its token's max_bandwidth, or its share of
	// it, which grows while the agent uses it and falls back after);
	// absent when the relay set none. The figures then show the limit.
	Limit float64 `json:"relay_limit_bits_per_second,omitempty"`
}

// BenchUDP is the UDP test's outcome.
type BenchUDP struct {
	Rate     float64 `json:"rate_bits_per_second"`
	Size     int     `json:"datagram_bytes"`
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	Loss     float64 `json:"loss_percent"`
	Jitter   float64 `json:"jitter_ms"`
	// One-way delay through the relay (sender and receiver share a clock).
	DelayP50 float64 `json:"delay_p50_ms"`
	DelayP99 float64 `json:"delay_p99_ms"`
}

func benchAction(c *cli.Context) error {
	usage := func(format string, args ...any) error { return cli.Exit(fmt.Sprintf(format, args...), exitUsage) }
	if c.Args().Present() {
		return usage("bench takes no arguments (got %q): it serves its own sink and echo", c.Args().First())
	}
	streams, dur := c.Int("streams"), c.Duration("duration")
	if streams < 1 || streams > 256 {
		return usage("--streams %d: give 1 to 256", streams)
	}
	if dur < 100*time.Millisecond || dur > time.Hour {
		return usage("--duration %v: give 100ms to 1h", dur)
	}
	rate, err := parseRate(c.String("udp-rate"))
	if err != nil {
		return usage("--udp-rate: %v", err)
	}

	srv, err := startBenchServer()
	if err != nil {
		return cli.Exit(fmt.Sprintf("starting the bench server: %v", err), exitFailure)
	}
	defer srv.close()
	name := c.String("name")
	if name == "" {
		// A name of its own, so that two benches with one token can run
		// at once: the relay lets no agent join a tunnel without a lease.
		var suffix [3]byte
		rand.Read(suffix[:])
		name = "bench-" + hex.EncodeToString(suffix[:])
	}
	s := defaultSpec()
	s.setRelay(c)
	s.Log.Level = c.String("log-level")
	s.Tunnels = []tunnelSpec{{Name: name, Local: portString(srv.addr), Proto: "tcp,udp"}}
	if rate == 0 {
		s.Tunnels[0].Proto = "tcp"
	}
	plan, err := s.buildFromFlags()
	if err != nil {
		return err
	}
	// A test must not hold a port for a day, nor take the port of
	// someone's idle lease when the pool is full.
	plan.cfg.Tunnels[0].NoLease = true

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ready := make(chan []tunnel.Endpoint, 1)
	target := newBenchTarget()
	prog := newProgress(os.Stderr) // its total is set once the tests are known
	plan.cfg.OnReady = func(eps []tunnel.Endpoint) {
		was, now := target.set(eps)
		select {
		case ready <- eps:
		default:
		}
		// After a reload on the relay moved the tunnel (MOVED), the tests
		// go on at its new port.
		if was != "" && was != now {
			prog.log(fmt.Sprintf("the relay moved the test's tunnel from tcp://%s to tcp://%s; the tests go on there", was, now))
		}
	}
	gcfloor.Set(gcfloor.Relay)
	agent, err := tunnel.NewAgent(plan.cfg)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(runCtx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(stopWait):
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New("the agent stopped before its tunnel was live")
		}
		var ref *tunnel.RefusedError
		if rate > 0 && errors.As(err, &ref) && strings.Contains(ref.Text, "UDP") {
			ref.Text += "; --udp-rate 0 skips the UDP test"
		}
		return agentExit(err, plan.cfg.Relay)
	case <-ctx.Done():
		return cli.Exit("interrupted", exitFailure)
	}

	res := BenchResult{Relay: plan.cfg.Relay, Transport: agent.Status().Transport, Duration: dur.Seconds(), Streams: streams}
	steps := []struct {
		name string
		run  func(context.Context) (string, error)
	}{
		{"throughput, 1 stream", func(ctx context.Context) (string, error) {
			bps, err := benchThroughput(ctx, target, 1, dur)
			res.Throughput1 = bps
			return bitrate.Format(bps), err
		}},
		{fmt.Sprintf("throughput, %d streams", streams), func(ctx context.Context) (string, error) {
			bps, err := benchThroughput(ctx, target, streams, dur)
			res.ThroughputN = bps
			return bitrate.Format(bps), err
		}},
		{"round trip, 64 bytes", func(ctx context.Context) (string, error) {
			p50, p99, n, err := benchRoundTrip(ctx, target, dur)
			res.RoundTripP50, res.RoundTripP99, res.RoundTrips = ms(p50), ms(p99), n
			return fmt.Sprintf("p50 %.3f ms  p99 %.3f ms", ms(p50), ms(p99)), err
		}},
		{fmt.Sprintf("new connections, %d at a time", streams), func(ctx context.Context) (string, error) {
			rate, err := benchConnect(ctx, target, streams, dur)
			res.NewConnections = rate
			return fmt.Sprintf("%.0f /s", rate), err
		}},
	}
	if rate > 0 {
		steps = append(steps, struct {
			name string
			run  func(context.Context) (string, error)
		}{fmt.Sprintf("UDP %s, %d-byte datagrams", bitrate.Format(rate), benchDatagram), func(ctx context.Context) (string, error) {
			u, err := benchUDP(ctx, srv, target, rate, dur)
			res.UDP = u
			if u == nil {
				return "", err
			}
			return fmt.Sprintf("loss %.3f %%  jitter %.3f ms", u.Loss, u.Jitter), err
		}})
	}

	reconnects := agent.Status().Reconnects
	tcpAddr, _, _ := target.addrs()
	prog.total = len(steps)
	prog.log(fmt.Sprintf("benchmarking %s over %s through tcp://%s", res.Relay, res.Transport, tcpAddr))
	var lines [][2]string
	var limit uint64
	for i, st := range steps {
		end := prog.step(i, st.name, dur)
		out, err := st.run(ctx)
		if err != nil && ctx.Err() != nil {
			// The test's own error is a connection closed under it,
			// which would read as a failure of the path.
			err = errors.New("interrupted")
		}
		end(out, err)
		if err != nil {
			if ctx.Err() != nil {
				return cli.Exit("interrupted", exitFailure)
			}
			now := agent.Status()
			return benchFailed(st.name, err, !now.Connected || now.Reconnects != reconnects)
		}
		lines = append(lines, [2]string{st.name, out})
		// The share at the end of the bench alone could be the even
		// share an idle agent falls back to, below what the throughput
		// tests showed.
		limit = max(limit, agent.Status().Limit)
	}
	prog.finish()
	res.Limit = 8 * float64(limit)

	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "relay %s over %s, %s per test\n", res.Relay, res.Transport, dur)
	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t%s\n", l[0], l[1])
	}
	if res.UDP != nil {
		fmt.Fprintf(tw, "UDP one-way delay\tp50 %.3f ms  p99 %.3f ms (%d of %d datagrams arrived)\n", res.UDP.DelayP50, res.UDP.DelayP99, res.UDP.Received, res.UDP.Sent)
	}
	if res.Limit > 0 {
		fmt.Fprintf(tw, "note: the relay limits the token's bandwidth (max_bandwidth); this agent's share of it reached %s: the figures show the limit, not the path\n", bitrate.Format(res.Limit))
	}
	return tw.Flush()
}

// benchFailed is bench's exit for a test that failed with err; lost says
// the agent's session with the relay ended meanwhile.
func benchFailed(test string, err error, lost bool) error {
	msg := fmt.Sprintf("bench: %s: %s", test, oneLine(err.Error()))
	switch {
	case lost:
		return cli.Exit(msg+": the session with the relay was lost during the test; run the bench again", exitFailure)
	case closedByRelay(err):
		// The relay turns a client over a limit away by closing it as soon
		// as it connects, and tells neither the client nor the agent which
		// limit it was.
		return cli.Exit(fmt.Sprintf("bench: %s: the relay closed the test's connections (%s): a per-IP or per-token connection limit on the relay "+
			"may be the cause (per_ip_connections, per_ip_rate or max_connections; relayd logs which): the bench opens --streams connections at once, "+
			"and many in a row; ask the relay's operator",
			test, oneLine(err.Error())), exitRefused)
	}
	return cli.Exit(msg, exitFailure)
}

// closedByRelay reports whether err is a connection to the public port
// that the other end reset, or ended before the answer came.
func closedByRelay(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// parseRate reads a rate in bits per second: a number with an optional
// k, M or G (powers of 1000). Errors quote the rate as given, unit and all.
func parseRate(rate string) (float64, error) {
	r, err := bitrate.Parse(rate)
	if err != nil {
		return 0, fmt.Errorf("%q is not a rate such as 500k, 100M or 1G (0 skips the UDP test)", rate)
	}
	if r == 0 || r >= 8*benchDatagram {
		if r > 100e9 {
			return 0, fmt.Errorf("%q is more than 100G: give 100G or less", rate)
		}
		return r, nil
	}
	return 0, fmt.Errorf("%q is below one %d-byte datagram a second: give %gk or more (0 skips the UDP test)", rate, benchDatagram, 8*benchDatagram/1e3)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// progress shows which test runs: a line redrawn in place on a terminal,
// else one line per test, written as it ends with its result.
type progress struct {
	w     io.Writer
	tty   bool
	total int
	mu    sync.Mutex
}

func newProgress(f *os.File) *progress {
	return &progress{w: f, tty: term.IsTerminal(int(f.Fd()))}
}

func (p *progress) log(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s\n", msg)
		return
	}
	fmt.Fprintf(p.w, "relayctl bench: %s\n", msg)
}

// step announces test i on a terminal; the returned func reports its
// outcome, the one line off a terminal.
func (p *progress) step(i int, name string, d time.Duration) func(out string, err error) {
	label := fmt.Sprintf("[%d/%d] %s", i+1, p.total, name)
	result := func(out string, err error) {
		if err != nil {
			p.log(fmt.Sprintf("%s: failed: %v", label, err))
			return
		}
		p.log(fmt.Sprintf("%s: %s", label, out))
	}
	if !p.tty {
		return result
	}
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			p.mu.Lock()
			fmt.Fprintf(p.w, "\r\033[K%s  %.1f/%.1f s", label, time.Since(start).Seconds(), d.Seconds())
			p.mu.Unlock()
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
	return func(out string, err error) {
		close(stop)
		wg.Wait()
		result(out, err)
	}
}

func (p *progress) finish() {
	if p.tty {
		p.mu.Lock()
		fmt.Fprint(p.w, "\r\033[K")
		p.mu.Unlock()
	}
}

// benchServer is the local end of the bench tunnel: on TCP, a sink ('S')
// or echo ('E') chosen by a connection's first byte; on UDP, a receiver
// that records the datagrams of the UDP test.
type benchServer struct {
	ln   net.Listener
	pc   *net.UDPConn
	addr string
	udp  udpRecorder
	wg   sync.WaitGroup
}

// startBenchServer listens on a loopback port free for both TCP and UDP.
func startBenchServer() (*benchServer, error) {
	var lastErr error
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ln.Addr().(*net.TCPAddr).AddrPort()))
		if err != nil {
			ln.Close()
			lastErr = err
			continue
		}
		pc.SetReadBuffer(4 << 20)
		s := &benchServer{ln: ln, pc: pc, addr: ln.Addr().String()}
		s.wg.Add(2)
		go s.serveTCP()
		go s.serveUDP()
		return s, nil
	}
	return nil, lastErr
}

func (s *benchServer) close() {
	s.ln.Close()
	s.pc.Close()
	s.wg.Wait()
}

func (s *benchServer) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var mode [1]byte
			if _, err := io.ReadFull(c, mode[:]); err != nil {
				return
			}
			switch mode[0] {
			case 'S':
				n, err := io.CopyBuffer(io.Discard, c, make([]byte, 128<<10))
				if err != nil {
					return
				}
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(n))
				c.Write(b[:])
			case 'E':
				io.Copy(c, c)
			}
		}()
	}
}

func (s *benchServer) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, err := s.pc.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.udp.record(buf[:n], time.Now())
	}
}

// udpRecorder keeps what the UDP test needs: which sequence numbers came,
// each one's transit time, and RFC 3550's interarrival jitter. Datagrams
// carry seq:8 | sent (unix ns):8 | padding.
type udpRecorder struct {
	mu       sync.Mutex
	probes   atomic.Int64
	seen     map[uint64]bool
	transits []time.Duration
	jitter   float64 // ns
	last     time.Duration
	have     bool
}

// probeSeq marks the datagrams that open the flow before the measurement.
const probeSeq = math.MaxUint64

func (u *udpRecorder) record(p []byte, now time.Time) {
	if len(p) < 16 {
		return
	}
	seq := binary.BigEndian.Uint64(p)
	if seq == probeSeq {
		u.probes.Add(1)
		return
	}
	transit := now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(p[8:]))))
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen == nil || u.seen[seq] {
		return
	}
	u.seen[seq] = true
	u.transits = append(u.transits, transit)
	if u.have {
		d := float64(transit - u.last)
		u.jitter += (math.Abs(d) - u.jitter) / 16
	}
	u.last, u.have = transit, true
}

func (u *udpRecorder) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.seen = map[uint64]bool{}
	u.transits = nil
	u.jitter, u.have = 0, false
}

// benchThroughput writes to streams sink connections for d and returns
// the bits per second the server received.
func benchThroughput(ctx context.Context, target *benchTarget, streams int, d time.Duration) (float64, error) {
	type result struct {
		n       int64
		elapsed time.Duration
		err     error
	}
	results := make(chan result, streams)
	for range streams {
		go func() {
			n, el, err := sinkStream(ctx, target, d)
			results <- result{n, el, err}
		}()
	}
	var total int64
	var longest time.Duration
	var firstErr error
	for range streams {
		r := <-results
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
		total += r.n
		longest = max(longest, r.elapsed)
	}
	if firstErr != nil {
		return 0, firstErr
	}
	if longest <= 0 || total == 0 {
		return 0, errors.New("no bytes arrived")
	}
	return float64(total) * 8 / longest.Seconds(), nil
}

// sinkStream sends for d on one connection, then waits for the server's
// count of what arrived.
func sinkStream(ctx context.Context, target *benchTarget, d time.Duration) (int64, time.Duration, error) {
	c, err := target.dial(ctx, &net.Dialer{})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, 128<<10)
	buf[0] = 'S'
	start := time.Now()
	end := start.Add(d)
	c.SetWriteDeadline(end.Add(10 * time.Second))
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return 0, 0, err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, 0, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, 0, fmt.Errorf("waiting for the sink's count: %w", err)
	}
	return int64(binary.BigEndian.Uint64(b[:])), time.Since(start), nil
}

// benchRoundTrip sends 64-byte messages one at a time on an echo
// connection for d.
func benchRoundTrip(ctx context.Context, target *benchTarget, d time.Duration) (p50, p99 time.Duration, n int, err error) {
	c, err := target.dial(ctx, &net.Dialer{})
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Write([]byte{'E'}); err != nil {
		return 0, 0, 0, err
	}
	msg, back := make([]byte, 64), make([]byte, 64)
	var rtts []time.Duration
	end := time.Now().Add(d)
	c.SetDeadline(end.Add(10 * time.Second))
	for i := 0; time.Now().Before(end); i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, 0, 0, err
		}
		rtts = append(rtts, time.Since(t0))
		if binary.BigEndian.Uint64(back) != uint64(i) {
			return 0, 0, 0, errors.New("the echo came back altered")
		}
	}
	if len(rtts) == 0 {
		return 0, 0, 0, errors.New("no round trip completed")
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], rtts[len(rtts)*99/100], len(rtts), nil
}

// benchConnect opens connections, workers at a time, for d: each sends
// one byte to the echo and reads it back.
func benchConnect(ctx context.Context, target *benchTarget, workers int, d time.Duration) (float64, error) {
	var ok, failed atomic.Int64
	// A pointer: an atomic.Value panics when the errors' types differ.
	var lastErr atomic.Pointer[error]
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dl := net.Dialer{Timeout: 5 * time.Second}
			for time.Now().Before(end) && ctx.Err() == nil {
				if err := oneConnection(ctx, &dl, target); err != nil {
					failed.Add(1)
					lastErr.Store(&err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if n, f := ok.Load(), failed.Load(); f > n/100 {
		return 0, fmt.Errorf("%d of %d connections failed, the last with: %w", f, n+f, *lastErr.Load())
	}
	return float64(ok.Load()) / elapsed.Seconds(), nil
}

func oneConnection(ctx context.Context, dl *net.Dialer, target *benchTarget) error {
	c, err := target.dial(ctx, dl)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{'E', 'x'}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != 'x' {
		return errors.New("the echo came back altered")
	}
	return nil
}

// benchUDP sends benchDatagram-byte datagrams at rate for d and reports
// what the bench server received.
func benchUDP(ctx context.Context, s *benchServer, target *benchTarget, rate float64, d time.Duration) (*BenchUDP, error) {
	var c net.Conn
	var moved <-chan struct{}
	// redial sends to where the tunnel is now; the datagrams sent to its
	// old port after a move are lost, and counted so.
	redial := func() error {
		_, addr, m := target.addrs()
		nc, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		if uc, ok := nc.(*net.UDPConn); ok {
			uc.SetWriteBuffer(4 << 20)
		}
		if c != nil {
			c.Close()
		}
		c, moved = nc, m
		return nil
	}
	if err := redial(); err != nil {
		return nil, err
	}
	defer func() { c.Close() }()
	p := make([]byte, benchDatagram)
	// The first datagrams open the flow; wait until they arrive.
	s.udp.probes.Store(0)
	binary.BigEndian.PutUint64(p, probeSeq)
	for i := 0; s.udp.probes.Load() == 0; i++ {
		if i == 50 {
			return nil, errors.New("no datagram reached the bench server in 5 s: does the path drop UDP?")
		}
		c.Write(p)
		select {
		case <-moved:
			if err := redial(); err != nil {
				return nil, err
			}
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.udp.reset()
	perSecond := rate / (8 * benchDatagram)
	start := time.Now()
	sent := 0
	for {
		el := time.Since(start)
		if el >= d || ctx.Err() != nil {
			break
		}
		select {
		case <-moved:
			if err := redial(); err != nil {
				return nil, err
			}
		default:
		}
		for due := int(el.Seconds() * perSecond); sent < due; sent++ {
			binary.BigEndian.PutUint64(p, uint64(sent))
			binary.BigEndian.PutUint64(p[8:], uint64(time.Now().UnixNano()))
			c.Write(p) // a refused or dropped datagram counts as lost
		}
		time.Sleep(200 * time.Microsecond)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Stragglers: a datagram still in flight after this is lost.
	time.Sleep(500 * time.Millisecond)
	u := &s.udp
	u.mu.Lock()
	defer u.mu.Unlock()
	res := &BenchUDP{Rate: rate, Size: benchDatagram, Sent: sent, Received: len(u.transits), Jitter: u.jitter / 1e6}
	if sent == 0 {
		return res, errors.New("no datagram sent")
	}
	res.Loss = 100 * float64(sent-res.Received) / float64(sent)
	if len(u.transits) > 0 {
		t := slices.Clone(u.transits)
		slices.Sort(t)
		res.DelayP50, res.DelayP99 = ms(t[len(t)/2]), ms(t[len(t)*99/100])
	}
	return res, nil
}

// benchTarget is where the test's tunnel is. A reload on the relay may
// move it to another port mid-bench (MOVED): each test, and each
// connection a test opens, goes to where it is now.
type benchTarget struct {
	mu       sync.Mutex
	tcp, udp string
	moved    chan struct{} // closed at the next move
}

func newBenchTarget() *benchTarget { return &benchTarget{moved: make(chan struct{})} }

// set takes the tunnel's addresses from the agent, and reports its TCP
// address before and after.
func (t *benchTarget) set(eps []tunnel.Endpoint) (was, now string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	was = t.tcp
	for _, e := range eps {
		hp := net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
		if e.Proto == "udp" {
			t.udp = hp
		} else {
			t.tcp = hp
		}
	}
	if was != "" {
		close(t.moved)
		t.moved = make(chan struct{})
	}
	return was, t.tcp
}

func (t *benchTarget) addrs() (tcp, udp string, moved <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tcp, t.udp, t.moved
}

// moveWait bounds how long a refused dial waits to learn of a move.
const moveWait = 2 * time.Second

// dial connects to the tunnel's TCP address. The relay closes a moved
// tunnel's old port before its MOVED reaches the agent, so a refusal may
// be the move on its way: it is tried again at the new port if one comes
// within moveWait.
func (t *benchTarget) dial(ctx context.Context, dl *net.Dialer) (net.Conn, error) {
	addr, _, moved := t.addrs()
	c, err := dl.DialContext(ctx, "tcp", addr)
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		return c, err
	}
	timer := time.NewTimer(moveWait)
	defer timer.Stop()
	select {
	case <-moved:
		addr, _, _ = t.addrs()
		return dl.DialContext(ctx, "tcp", addr)
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil, err
}
