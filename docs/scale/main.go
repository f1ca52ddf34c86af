// Command scale measures one relayd at scale, on loopback: memory and latency
// with 10,000 concurrent client connections through one tunnel, and with
// 1,000 agents registered at once. It is a measurement, not a test: CI does
// not run it. From the repository's root:
//
//	go build -o /tmp/relaybin/ ./relayd ./relayctl
//	go run ./docs/scale -bin /tmp/relaybin                  # both scenarios, both transports
//	go run ./docs/scale -bin /tmp/relaybin -conns 10000 -agents 0 -transport tcp
//
// The 10,000 connections need four processes under a 20,000 file limit
// each: relayd, relayctl, an echo server (this program, re-run with -serve)
// and the clients (this program). The 1,000 agents run inside this program
// (tunnel.Agent), each with a session of its own; relayd is the process
// measured. Figures are relayd's (and relayctl's) resident memory growth,
// from /proc, and round trips of a 1-byte echo.
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

const secret = "scale-secret-0123456789"

func main() {
	bin := flag.String("bin", "", "folder holding relayd and relayctl binaries (required unless -serve)")
	conns := flag.Int("conns", 10000, "client connections held through one tunnel (0 skips)")
	agents := flag.Int("agents", 1000, "agents registered at once (0 skips)")
	kinds := flag.String("transport", "quic,tcp", "transports to run: quic, tcp or both")
	serve := flag.String("serve", "", "internal: run the echo server on this address")
	flag.Parse()
	if *serve != "" {
		serveEcho(*serve)
		return
	}
	if *bin == "" {
		log.Fatal("-bin FOLDER is required: go build -o FOLDER/ ./relayd ./relayctl")
	}
	fmt.Printf("scale: %s, %d CPUs, %s\n", time.Now().UTC().Format("2006-01-02"), numCPU(), kernel())
	for _, kind := range strings.Split(*kinds, ",") {
		if *conns > 0 {
			if err := scaleConns(*bin, kind, *conns); err != nil {
				log.Fatalf("%s, %d connections: %v", kind, *conns, err)
			}
		}
		if *agents > 0 {
			if err := scaleAgents(*bin, kind, *agents); err != nil {
				log.Fatalf("%s, %d agents: %v", kind, *agents, err)
			}
		}
	}
}

// relayd is a running relayd process.
type relayd struct {
	cmd  *exec.Cmd
	addr string
	fp   string
	dir  string
}

var listening = regexp.MustCompile(`msg="relayd listening" listen=(\S+) .*fingerprint=(SHA256:\S+)`)

func startRelayd(bin string, ports string) (*relayd, error) {
	dir, err := os.MkdirTemp("", "relay-scale")
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`[relay]
listen = "127.0.0.1:0"
ports = %q
state_dir = %q

[limits]
max_pending_sessions = 1024

[admin]
listen = ""

[[tokens]]
id = "scale"
secret = %q
`, ports, filepath.Join(dir, "state"), secret)
	path := filepath.Join(dir, "relay.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "relayd"), "--config", path, "--log-level", "info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &relayd{cmd: cmd, dir: dir}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if m := listening.FindStringSubmatch(sc.Text()); m != nil {
			r.addr, r.fp = m[1], m[2]
			break
		}
	}
	if r.addr == "" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, errors.New("relayd did not start (see its config in " + dir + ")")
	}
	go func() {
		for sc.Scan() {
			if l := sc.Text(); strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				fmt.Fprintln(os.Stderr, "relayd:", l)
			}
		}
	}()
	return r, nil
}

func (r *relayd) stop() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
	os.RemoveAll(r.dir)
}

// scaleConns holds n client connections through one tunnel served by a
// relayctl process, each having echoed one byte.
func scaleConns(bin, kind string, n int) error {
	fmt.Printf("\n== %d concurrent client connections through one relayd (%s) ==\n", n, kind)
	echoAddr, stopEcho, err := startEchoProcess()
	if err != nil {
		return err
	}
	defer stopEcho()
	r, err := startRelayd(bin, "30000-30099")
	if err != nil {
		return err
	}
	defer r.stop()
	// SCALE_CTL_LOG=info shows relayctl's line per connection.
	level := cmp.Or(os.Getenv("SCALE_CTL_LOG"), "warn")
	ctl := exec.Command(filepath.Join(bin, "relayctl"), "expose", "--relay", r.addr, "--token", secret,
		"--fingerprint", r.fp, "--transport", kind, "--log-level", level, echoAddr)
	ctl.Env = append(os.Environ(), "HOME="+r.dir)
	out, err := ctl.StdoutPipe()
	if err != nil {
		return err
	}
	ctl.Stderr = os.Stderr // warnings: relayctl runs with --log-level warn
	if err := ctl.Start(); err != nil {
		return err
	}
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Wait() }()
	defer func() {
		ctl.Process.Kill()
		<-ctlDone
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("relayctl printed no address: %w", err)
	}
	public := strings.TrimPrefix(strings.TrimSpace(line), "tcp://")
	time.Sleep(500 * time.Millisecond)
	rd0, rc0 := rss(r.cmd.Process.Pid), rss(ctl.Process.Pid)

	start := time.Now()
	held := make([]net.Conn, n)
	setup := make([]time.Duration, n)
	err = inParallel(n, 64, func(i int) error {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", public, 10*time.Second)
		if err == nil {
			err = echoOnce(c)
		}
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		setup[i] = time.Since(t0)
		held[i] = c
		return nil
	})
	defer func() {
		for _, c := range held {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err != nil {
		time.Sleep(time.Duration(envInt("SCALE_LINGER")) * time.Second)
		select {
		case werr := <-ctlDone:
			ctlDone <- werr
			return fmt.Errorf("%w (relayctl exited: %v)", err, werr)
		default:
		}
		return err
	}
	elapsed := time.Since(start)
	time.Sleep(time.Second)
	rd1, rc1 := rss(r.cmd.Process.Pid), rss(ctl.Process.Pid)
	// Each held connection echoes once more, one at a time.
	rtt := make([]time.Duration, 0, n)
	for _, c := range held {
		t0 := time.Now()
		if err := echoOnce(c); err != nil {
			return fmt.Errorf("echo on a held connection: %w", err)
		}
		rtt = append(rtt, time.Since(t0))
	}
	// New connections while the others are held.
	var fresh []time.Duration
	for range 500 {
		d, err := dialEcho(public)
		if err != nil {
			return err
		}
		fresh = append(fresh, d)
	}
	fmt.Printf("opened %d connections (64 at a time) in %.1f s: connect + first echo p50 %s p99 %s\n",
		n, elapsed.Seconds(), pct(setup, 50), pct(setup, 99))
	fmt.Printf("memory: relayd %+.1f MiB (%.1f KiB per connection), relayctl %+.1f MiB (%.1f KiB per connection)\n",
		float64(rd1-rd0)/1024, float64(rd1-rd0)/float64(n), float64(rc1-rc0)/1024, float64(rc1-rc0)/float64(n))
	fmt.Printf("with %d held: echo on a held connection p50 %s p99 %s; a new connection + echo p50 %s p99 %s\n",
		n, pct(rtt, 50), pct(rtt, 99), pct(fresh, 50), pct(fresh, 99))
	return nil
}

// scaleAgents registers n agents (in this process), each with a tunnel of
// its own, and measures relayd's memory and the latency of registering and
// of a client on each tunnel.
func scaleAgents(bin, kind string, n int) error {
	fmt.Printf("\n== %d agents registered on one relayd (%s) ==\n", n, kind)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer echo.Close()
	go acceptEcho(echo)
	r, err := startRelayd(bin, fmt.Sprintf("31000-%d", 31000+n+99))
	if err != nil {
		return err
	}
	defer r.stop()
	pin, err := transport.ParseFingerprint(r.fp)
	if err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	rd0, cpu0 := rss(r.cmd.Process.Pid), cpuTicks(r.cmd.Process.Pid)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	publics := make([]string, n)
	register := make([]time.Duration, n)
	start := time.Now()
	err = inParallel(n, 32, func(i int) error {
		cfg := tunnel.DefaultAgentConfig()
		cfg.Relay, cfg.Token, cfg.Transport = r.addr, secret, kind
		cfg.Verifier = &transport.Verifier{Pin: pin}
		cfg.Tunnels = []tunnel.TunnelSpec{{Name: fmt.Sprintf("agent-%d", i), Local: echo.Addr().String()}}
		cfg.Logger = slog.New(slog.DiscardHandler)
		ready := make(chan []tunnel.Endpoint, 1)
		cfg.OnReady = func(eps []tunnel.Endpoint) {
			select {
			case ready <- eps:
			default:
			}
		}
		a, err := tunnel.NewAgent(cfg)
		if err != nil {
			return err
		}
		t0 := time.Now()
		done := make(chan error, 1)
		running.Add(1)
		go func() {
			defer running.Done()
			done <- a.Run(ctx)
		}()
		select {
		case eps := <-ready:
			register[i] = time.Since(t0)
			publics[i] = net.JoinHostPort(eps[0].Host, strconv.Itoa(int(eps[0].Port)))
			return nil
		case err := <-done:
			return fmt.Errorf("agent %d: %w", i, err)
		}
	})
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	time.Sleep(time.Second)
	rd1 := rss(r.cmd.Process.Pid)
	// Idle: the agents ping every keepalive (5 s); what does that cost?
	c0, t0 := cpuTicks(r.cmd.Process.Pid), time.Now()
	time.Sleep(10 * time.Second)
	idleCPU := float64(cpuTicks(r.cmd.Process.Pid)-c0) / 100 / time.Since(t0).Seconds() * 100
	// One client per tunnel, one at a time.
	var client []time.Duration
	for _, p := range publics {
		d, err := dialEcho(p)
		if err != nil {
			return fmt.Errorf("client of %s: %w", p, err)
		}
		client = append(client, d)
	}
	_ = cpu0
	fmt.Printf("registered %d agents (32 at a time) in %.1f s: connect + handshake + register p50 %s p99 %s\n",
		n, elapsed.Seconds(), pct(register, 50), pct(register, 99))
	fmt.Printf("memory: relayd %+.1f MiB (%.1f KiB per agent and its tunnel); idle CPU with %d agents pinging: %.1f%% of a core\n",
		float64(rd1-rd0)/1024, float64(rd1-rd0)/float64(n), n, idleCPU)
	fmt.Printf("a client on each tunnel (connect + 1-byte echo) p50 %s p99 %s\n", pct(client, 50), pct(client, 99))
	return nil
}

// echoOnce sends one byte and reads it back.
// dialEcho connects to addr, echoes one byte and closes, and returns how
// long that took.
func dialEcho(addr string) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	err = echoOnce(c)
	c.Close()
	return time.Since(t0), err
}

func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	return nil
}

// startEchoProcess runs this program with -serve, so the echo server's
// sockets count against a process of their own.
func startEchoProcess() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(self, "-serve", addr)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, func() { cmd.Process.Kill(); cmd.Wait() }, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return "", nil, errors.New("echo server did not start")
}

func serveEcho(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	acceptEcho(ln)
}

func acceptEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			log.Printf("echo server: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			// Not io.Copy: TCP to TCP it splices, holding two pipe file
			// descriptors per idle connection.
			io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 512))
		}()
	}
}

// rss is pid's resident memory in KiB.
func rss(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// cpuTicks is pid's user and system time in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	d := s[min(len(s)-1, len(s)*p/100)]
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}

func envInt(k string) int {
	v, _ := strconv.Atoi(os.Getenv(k))
	return v
}

// inParallel runs f for 0..n-1 on workers goroutines and returns the first
// failure; a worker that fails stops, the others go on.
func inParallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var (
		mu    sync.Mutex
		first error
	)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}
