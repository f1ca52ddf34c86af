package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestBench runs relayctl bench against a relayd over each transport and
// checks the JSON it prints: every field there, every figure positive (the
// loss may be zero). It asserts no speed.
func TestBench(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, kind := range []string{"quic", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := runBench(t, "bench", "--duration", "300ms", "--json", "--streams", "4",
				"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			if code != 0 {
				t.Fatalf("relayctl bench: exit %d\nstderr:\n%s", code, errOut)
			}
			var fields map[string]any
			if err := json.Unmarshal([]byte(out), &fields); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, out)
			}
			for _, k := range []string{"relay", "transport", "duration_seconds", "streams",
				"throughput_1_stream_bits_per_second", "throughput_n_streams_bits_per_second",
				"round_trip_p50_ms", "round_trip_p99_ms", "round_trips", "new_connections_per_second", "udp"} {
				if _, ok := fields[k]; !ok {
					t.Errorf("JSON has no %q:\n%s", k, out)
				}
			}
			var res BenchResult
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatal(err)
			}
			if res.Transport != kind || res.Relay != r.Addr || res.Streams != 4 || res.Duration != 0.3 {
				t.Errorf("relay %q transport %q streams %d duration %v, want %q %q 4 0.3", res.Relay, res.Transport, res.Streams, res.Duration, r.Addr, kind)
			}
			positive := map[string]float64{
				"throughput_1_stream_bits_per_second":  res.Throughput1,
				"throughput_n_streams_bits_per_second": res.ThroughputN,
				"round_trip_p50_ms":                    res.RoundTripP50,
				"round_trip_p99_ms":                    res.RoundTripP99,
				"round_trips":                          float64(res.RoundTrips),
				"new_connections_per_second":           res.NewConnections,
			}
			if u := res.UDP; u == nil {
				t.Errorf("no udp results:\n%s", out)
			} else {
				positive["udp.rate_bits_per_second"] = u.Rate
				positive["udp.datagram_bytes"] = float64(u.Size)
				positive["udp.sent"] = float64(u.Sent)
				positive["udp.received"] = float64(u.Received)
				positive["udp.jitter_ms"] = u.Jitter
				positive["udp.delay_p50_ms"] = u.DelayP50
				positive["udp.delay_p99_ms"] = u.DelayP99
				if u.Loss < 0 || u.Loss > 100 || u.Received > u.Sent {
					t.Errorf("udp: loss %v%%, %d of %d received", u.Loss, u.Received, u.Sent)
				}
			}
			for k, v := range positive {
				if !(v > 0) {
					t.Errorf("%s = %v, want a positive figure", k, v)
				}
			}
			if res.RoundTripP99 < res.RoundTripP50 {
				t.Errorf("round trip p99 %v below p50 %v", res.RoundTripP99, res.RoundTripP50)
			}
			// Not a terminal: progress is one plain line per test, its result.
			if n := strings.Count(errOut, "relayctl bench: ["); n != 5 {
				t.Errorf("stderr has %d progress lines, want 5 (the result of each of 5 tests):\n%s", n, errOut)
			}
			for i := 1; i <= 5; i++ {
				if !regexp.MustCompile(fmt.Sprintf(`(?m)^relayctl bench: \[%d/5\] [^\n…]+: [^\n…]+$`, i)).MatchString(errOut) {
					t.Errorf("stderr has no result line for test %d of 5:\n%s", i, errOut)
				}
			}
		})
	}
}

// TestBenchFollowsMove: a reload that takes the test's port away moves
// its tunnel (MOVED) mid-bench; the bench says so and the tests go on at
// the new port, so it ends with every figure rather than a failure.
func TestBenchFollowsMove(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"quic", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := pt.NewRelayd(t, pt.TokensTOML)
			p := pt.Start(t, nil, pt.RelayctlBin, "bench", "--duration", "1s", "--json", "--streams", "2", "--udp-rate", "20M",
				"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			port, _ := strconv.Atoi(p.WaitFor(&p.Stderr, regexp.MustCompile(`through tcp://127\.0\.0\.1:(\d+)`), pt.StartTimeout)[1])
			r.TakePortAway(t, port)
			r.WaitFor(&r.Stderr, regexp.MustCompile(`msg="relay.toml reloaded" .*tunnels_moved=1 `), pt.StartTimeout)
			if code := p.Wait(pt.ExitTimeout); code != 0 {
				t.Fatalf("relayctl bench: exit %d across a move; want 0\nstderr:\n%s", code, p.Stderr.String())
			}
			m := regexp.MustCompile(`(?m)^relayctl bench: the relay moved the test's tunnel from tcp://127\.0\.0\.1:(\d+) to tcp://127\.0\.0\.1:(\d+); the tests go on there$`).
				FindStringSubmatch(p.Stderr.String())
			if m == nil || m[1] != strconv.Itoa(port) || m[2] == m[1] {
				t.Fatalf("stderr does not tell of the move from port %d:\n%s", port, p.Stderr.String())
			}
			var res BenchResult
			if err := json.Unmarshal([]byte(p.Stdout.String()), &res); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, p.Stdout.String())
			}
			if !(res.Throughput1 > 0 && res.ThroughputN > 0 && res.RoundTrips > 0 && res.NewConnections > 0) || res.UDP == nil || res.UDP.Received == 0 {
				t.Errorf("a figure is missing after the move:\n%s", p.Stdout.String())
			}
		})
	}
}

// TestBenchProgressOffTerminal: with stderr not a terminal, progress is
// one line per test, written when the test ends, saying how it ended.
func TestBenchProgressOffTerminal(t *testing.T) {
	var buf strings.Builder
	p := &progress{w: &buf, total: 3}
	p.log("benchmarking 127.0.0.1:7000 over tcp through tcp://127.0.0.1:20001")
	p.step(0, "throughput, 1 stream", time.Second)("7.12 Gbit/s", nil)
	p.step(1, "round trip, 64 bytes", time.Second)("p50 0.174 ms  p99 0.352 ms", nil)
	end := p.step(2, "new connections, 8 at a time", time.Second)
	end("", errors.New("connection reset by peer"))
	p.finish()
	want := "relayctl bench: benchmarking 127.0.0.1:7000 over tcp through tcp://127.0.0.1:20001\n" +
		"relayctl bench: [1/3] throughput, 1 stream: 7.12 Gbit/s\n" +
		"relayctl bench: [2/3] round trip, 64 bytes: p50 0.174 ms  p99 0.352 ms\n" +
		"relayctl bench: [3/3] new connections, 8 at a time: failed: connection reset by peer\n"
	if got := buf.String(); got != want {
		t.Errorf("progress off a terminal:\n%s\nwant:\n%s", got, want)
	}
}

// TestBenchTable checks the human-readable output, without UDP and with.
func TestBenchTable(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	bench := func(t *testing.T, rate, transport string) string {
		t.Helper()
		out, errOut, code := runBench(t, "bench", "--duration", "200ms", "--udp-rate", rate, "--streams", "2",
			"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", transport)
		if code != 0 {
			t.Fatalf("relayctl bench: exit %d\nstderr:\n%s", code, errOut)
		}
		for _, want := range []string{"over " + transport, "throughput, 1 stream", "throughput, 2 streams", "round trip", "new connections, 2 at a time"} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "note:") {
			t.Errorf("a note under the table of a relay with no limit:\n%s", out)
		}
		return out
	}
	t.Run("no UDP", func(t *testing.T) {
		t.Parallel()
		if out := bench(t, "0", "tcp"); strings.Contains(out, "UDP") {
			t.Errorf("--udp-rate 0 still ran the UDP test:\n%s", out)
		}
	})
	t.Run("UDP", func(t *testing.T) {
		t.Parallel()
		out := bench(t, "1M", "quic")
		for _, re := range []string{
			`(?m)^UDP 1\.0 Mbit/s, 1200-byte datagrams +loss \d+\.\d{3} %  jitter \d+\.\d{3} ms$`,
			`(?m)^UDP one-way delay +p50 \d+\.\d{3} ms  p99 \d+\.\d{3} ms \(\d+ of \d+ datagrams arrived\)$`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("table lacks a line matching %s:\n%s", re, out)
			}
		}
	})
}

// TestBenchLimited: against a token with a max_bandwidth, bench says its
// figures show the limit, in the table and in --json.
func TestBenchLimited(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML+"max_bandwidth = \"100M\"\n")
	args := []string{"bench", "--duration", "200ms", "--udp-rate", "0", "--streams", "2",
		"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, args...)
	if code != 0 {
		t.Fatalf("relayctl bench: exit %d\nstderr:\n%s", code, errOut)
	}
	if want := "note: the relay limits the token's bandwidth (max_bandwidth); this agent's share of it reached 100.0 Mbit/s: the figures show the limit, not the path\n"; !strings.HasSuffix(out, want) {
		t.Errorf("the table does not end %q:\n%s", want, out)
	}
	out, errOut, code = pt.Run(t, nil, pt.RelayctlBin, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("relayctl bench --json: exit %d\nstderr:\n%s", code, errOut)
	}
	if !strings.Contains(out, `"relay_limit_bits_per_second": 100000000`) {
		t.Errorf("--json lacks relay_limit_bits_per_second 100000000:\n%s", out)
	}
}

// TestBenchErrors: each mistake gets expose's exit code and one line
// saying what to do.
func TestBenchErrors(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML+"\n[[tokens]]\nid = \"noudp\"\nsecret = \"no-udp-secret-0123456789\"\nudp = false\n"+
		"\n[[tokens]]\nid = \"erin\"\nsecret = \""+erinSecret+"\"\nnames = [\"game-*\"]\n"+
		"\n[[tokens]]\nid = \"lim\"\nsecret = \"one-conn-secret-0123456789\"\nper_ip_connections = 1\n")
	down := pt.ClosedPort(t)
	wrongFP := "SHA256:" + strings.Repeat("A", 43)
	ok := []string{"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"wrong token", []string{"--relay", r.Addr, "--token", "not-the-right-secret", "--fingerprint", r.FP}, exitRefused, "token not accepted"},
		{"udp not allowed", []string{"--relay", r.Addr, "--token", "no-udp-secret-0123456789", "--fingerprint", r.FP}, exitRefused, "--udp-rate 0 skips the UDP test"},
		{"names rule", []string{"--relay", r.Addr, "--token", erinSecret, "--fingerprint", r.FP}, exitRefused,
			`may not use the tunnel name "bench-`},
		{"names rule, another --name", []string{"--relay", r.Addr, "--token", erinSecret, "--fingerprint", r.FP, "--name", "web-bench"}, exitRefused,
			`token "erin" may not use the tunnel name "web-bench": its names rule allows only game-*; pick a --name that matches (with several LOCALs, relayctl names each NAME-PORT)`},
		// The relay turns away every connection past the first; the
		// bench cannot learn why, and says what it may be.
		{"connection limit", []string{"--relay", r.Addr, "--token", "one-conn-secret-0123456789", "--fingerprint", r.FP, "--streams", "4", "--udp-rate", "0"}, exitRefused,
			"the relay closed the test's connections ("},
		{"bad name", append([]string{"--name", "bad name"}, ok...), exitUsage, `--name: tunnel name "bad name" is invalid`},
		{"wrong fingerprint", []string{"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", wrongFP}, exitUnverified, "fingerprint"},
		{"relay unreachable", []string{"--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp"}, exitFailure, "could not reach the relay"},
		{"no relay", []string{"--token", pt.TestSecret, "--fingerprint", r.FP}, exitUsage, "--relay"},
		{"no token", []string{"--relay", r.Addr, "--fingerprint", r.FP}, exitUsage, "--token or --token-file"},
		{"argument", append([]string{"localhost:8080"}, ok...), exitUsage, "bench takes no arguments"},
		{"zero streams", append([]string{"--streams", "0"}, ok...), exitUsage, "--streams 0: give 1 to 256"},
		{"short duration", append([]string{"--duration", "1ms"}, ok...), exitUsage, "--duration 1ms: give 100ms to 1h"},
		{"bad rate", append([]string{"--udp-rate", "fast"}, ok...), exitUsage, `--udp-rate: "fast" is not a rate`},
		{"rate too high", append([]string{"--udp-rate", "200G"}, ok...), exitUsage, `--udp-rate: "200G" is more than 100G`},
		{"bad transport", append([]string{"--transport", "bogus"}, ok...), exitUsage, `"bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, append([]string{"bench", "--duration", "200ms"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d", code, tt.code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			last := pt.LastLine(errOut)
			if !strings.HasPrefix(last, "relayctl: ") || !strings.Contains(last, tt.want) {
				t.Errorf("last line of stderr is %q, want \"relayctl: …%s…\"\nstderr:\n%s", last, tt.want, errOut)
			}
			if tt.name == "connection limit" && !strings.HasSuffix(last, "): a per-IP or per-token connection limit on the relay may be the cause "+
				"(per_ip_connections, per_ip_rate or max_connections; relayd logs which): the bench opens --streams connections at once, and many in a row; ask the relay's operator") {
				t.Errorf("last line of stderr is %q, want it to name the limits that may be the cause", last)
			}
		})
	}
}

// TestBenchInterrupted: SIGINT or SIGTERM ends the bench with exit 1 and
// "interrupted", whether it comes while the bench waits for the relay or
// while a test runs (whose progress line says so too); no table goes to
// stdout.
func TestBenchInterrupted(t *testing.T) {
	t.Parallel()
	fp := "SHA256:" + strings.Repeat("A", 43)
	check := func(t *testing.T, p *pt.Proc, sig syscall.Signal) {
		t.Helper()
		p.Signal(sig)
		code := p.Wait(pt.ExitTimeout)
		if last := pt.LastLine(p.Stderr.String()); code != exitFailure || p.Stdout.String() != "" || last != "relayctl: interrupted" {
			t.Errorf("after %v: exit %d, stdout %q, stderr ends %q; want %d, nothing, \"relayctl: interrupted\"",
				sig, code, p.Stdout.String(), last, exitFailure)
		}
	}
	t.Run("waiting for the relay", func(t *testing.T) {
		t.Parallel()
		// A relay that takes the connection and never answers: the bench
		// waits in the handshake.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p := pt.Start(t, nil, pt.RelayctlBin, "bench", "--relay", ln.Addr().String(), "--token", pt.TestSecret, "--fingerprint", fp, "--transport", "tcp")
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(pt.StartTimeout))
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("the bench did not dial the relay: %v", err)
		}
		defer c.Close()
		check(t, p, syscall.SIGINT)
	})
	t.Run("during a test", func(t *testing.T) {
		t.Parallel()
		r := pt.NewRelayd(t, pt.TokensTOML)
		p := pt.Start(t, nil, pt.RelayctlBin, "bench", "--duration", "1m", "--udp-rate", "0",
			"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp")
		p.WaitFor(&p.Stderr, regexp.MustCompile(`relayctl bench: benchmarking `), pt.StartTimeout)
		check(t, p, syscall.SIGTERM)
		// The test cut short says so, not what its connections saw when
		// they were closed ("use of closed network connection").
		if want := "relayctl bench: [1/4] throughput, 1 stream: failed: interrupted\n"; !strings.Contains(p.Stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, p.Stderr.String())
		}
	})
}

const erinSecret = "erin-secret-0123456789"

// TestBenchName: --name gives the bench's tunnel a name the token's names
// rule allows.
func TestBenchName(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, "[[tokens]]\nid = \"erin\"\nsecret = \""+erinSecret+"\"\nnames = [\"game-*\"]\n")
	_, errOut, code := runBench(t, "bench", "--duration", "100ms", "--udp-rate", "0", "--streams", "2", "--name", "game-bench",
		"--relay", r.Addr, "--token", erinSecret, "--fingerprint", r.FP, "--transport", "tcp")
	if code != 0 {
		t.Fatalf("relayctl bench --name game-bench: exit %d\nstderr:\n%s", code, errOut)
	}
	if !regexp.MustCompile(`msg="tunnel open" .*name=game-bench port=\d+ protos=tcp lease=false`).MatchString(r.Proc.Stderr.String()) {
		t.Errorf("relayd did not log the tunnel game-bench opening without a lease:\n%s", r.Proc.Stderr.String())
	}
}

// TestBenchLeavesNoLease: benches leave no port lease on the relay, take
// the port no lease holds, and when only an idle lease's port is left they
// are refused rather than take it from its tunnel.
func TestBenchLeavesNoLease(t *testing.T) {
	t.Parallel()
	var p, q int // the token's two ports
	r := pt.NewRelaydFunc(t, func(low, high int) string {
		p, q = low, low+1
		return fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:0\"\n\n%s\nports = \"%d-%d\"\n", pt.TokensTOML, p, q)
	})
	leases := filepath.Join(r.StateDir, "leases.json")
	expose := func(name string) (*pt.Proc, int) {
		t.Helper()
		proc, urls := pt.StartExpose(t, 1, nil, pt.StartEcho(t, name+":"), "--name", name,
			"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp", "--control", "")
		port, _ := strconv.Atoi(pt.URLRE.FindStringSubmatch(urls[0])[1])
		return proc, port
	}
	// waitLeases waits for leases.json to hold want (name → port) alone.
	waitLeases := func(want map[string]int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			data, _ := os.ReadFile(leases)
			var f struct {
				Leases []struct {
					Name     string
					Port     int
					Released *time.Time
				}
			}
			json.Unmarshal(data, &f)
			got := map[string]int{}
			for _, l := range f.Leases {
				if l.Released != nil {
					got[l.Name] = l.Port
				}
			}
			if len(got) == len(f.Leases) && maps.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("leases.json after 10 s:\n%s\nwant the released leases %v alone", data, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	bench := func() (code int, port, last string) {
		t.Helper()
		_, errOut, code := runBench(t, "bench", "--duration", "100ms", "--udp-rate", "0", "--streams", "2",
			"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp")
		if m := regexp.MustCompile(`through tcp://127\.0\.0\.1:(\d+)`).FindStringSubmatch(errOut); m != nil {
			port = m[1]
		}
		return code, port, pt.LastLine(errOut)
	}

	stable, sp := expose("stable")
	pt.Stopped(t, stable, syscall.SIGTERM)
	waitLeases(map[string]int{"stable": sp})
	free := p + q - sp
	for i := range 3 {
		if code, port, last := bench(); code != 0 || port != strconv.Itoa(free) {
			t.Fatalf("bench %d: exit %d on port %s, want 0 on %d, the port no lease holds; stderr ends %q", i, code, port, free, last)
		}
	}
	waitLeases(map[string]int{"stable": sp})

	// The free port live: only stable's idle one is left, and it stays
	// stable's.
	other, _ := expose("other")
	code, _, last := bench()
	if want := fmt.Sprintf("every port it may use (%d-%d) is in use or leased to a tunnel that is away, and a tunnel without a lease takes none of those", p, q); code != exitRefused || !strings.HasSuffix(last, want) {
		t.Errorf("bench with one idle lease's port left: exit %d, stderr ends %q; want %d and \"…%s\"", code, last, exitRefused, want)
	}
	pt.Stopped(t, other, syscall.SIGTERM)
	if _, port := expose("stable"); port != sp {
		t.Errorf("stable came back on port %d, want its lease's %d", port, sp)
	}
}

// TestBenchFailed: a test's failure says what the bench can tell of its
// cause, with the exit code that goes with it.
func TestBenchFailed(t *testing.T) {
	reset := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
	limit := "): a per-IP or per-token connection limit on the relay may be the cause"
	for _, tc := range []struct {
		name string
		err  error
		lost bool
		code int
		want string
	}{
		{"reset", reset, false, exitRefused, "bench: throughput, 8 streams: the relay closed the test's connections (write tcp: write: connection reset by peer" + limit},
		{"ended early", fmt.Errorf("waiting for the sink's count: %w", io.EOF), false, exitRefused, "bench: throughput, 8 streams: the relay closed the test's connections (waiting for the sink's count: EOF" + limit},
		{"session lost", reset, true, exitFailure,
			"bench: throughput, 8 streams: write tcp: write: connection reset by peer: the session with the relay was lost during the test; run the bench again"},
		{"something else", os.ErrDeadlineExceeded, false, exitFailure, "bench: throughput, 8 streams: i/o timeout"},
	} {
		err := benchFailed("throughput, 8 streams", tc.err, tc.lost)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != tc.code || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v (exit %v); want exit %d and %q…", tc.name, err, ec, tc.code, tc.want)
		}
	}
}

// TestParseRate: --udp-rate takes bits/s with k, M or G; a refused rate is
// quoted as it was given, unit and all (the message used to drop it:
// `--udp-rate 200G` said "200 bits/s is more than 100G").
func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
	}{
		{"0", 0}, {"9600", 9600}, {"500k", 500e3}, {"100M", 100e6}, {"1.5G", 1.5e9}, {" 2m ", 2e6}, {"100G", 100e9},
	} {
		if got, err := parseRate(tc.in); err != nil || got != tc.want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"fast", `"fast" is not a rate such as 500k, 100M or 1G (0 skips the UDP test)`},
		{"10x", `"10x" is not a rate such as 500k, 100M or 1G (0 skips the UDP test)`},
		{"-1M", `"-1M" is not a rate such as 500k, 100M or 1G (0 skips the UDP test)`},
		{"M", `"M" is not a rate such as 500k, 100M or 1G (0 skips the UDP test)`},
		{"200G", `"200G" is more than 100G: give 100G or less`},
		{"1k", `"1k" is below one 1200-byte datagram a second: give 9.6k or more (0 skips the UDP test)`},
		{"100", `"100" is below one 1200-byte datagram a second: give 9.6k or more (0 skips the UDP test)`},
	} {
		if got, err := parseRate(tc.in); err == nil || err.Error() != tc.want {
			t.Errorf("parseRate(%q) = %v, %v; want the error %q", tc.in, got, err, tc.want)
		}
	}
}

// benchExitTimeout bounds a whole relayctl bench run in these tests: its
// phases, a few hundred milliseconds each, with the session's setup and
// goodbye, take seconds on a machine busy with CI's other tests under the
// race detector, where proctest's ExitTimeout was seen to run out.
const benchExitTimeout = 60 * time.Second

// runBench is pt.Run for relayctl bench, waiting benchExitTimeout.
func runBench(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := pt.Start(t, nil, pt.RelayctlBin, args...)
	code = p.Wait(benchExitTimeout)
	return p.Stdout.String(), p.Stderr.String(), code
}
