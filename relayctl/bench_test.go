package main

import (
	"encoding/json"
	"strings"
	"testing"

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
			out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "bench", "--duration", "300ms", "--json", "--streams", "4",
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
			// Not a terminal: progress is one plain line per test.
			if n := strings.Count(errOut, "relayctl bench: ["); n != 10 {
				t.Errorf("stderr has %d progress lines, want 10 (start and result of 5 tests):\n%s", n, errOut)
			}
		})
	}
}

// TestBenchTable checks the human-readable output, without UDP.
func TestBenchTable(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	out, errOut, code := pt.Run(t, nil, pt.RelayctlBin, "bench", "--duration", "200ms", "--udp-rate", "0", "--streams", "2",
		"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp")
	if code != 0 {
		t.Fatalf("relayctl bench: exit %d\nstderr:\n%s", code, errOut)
	}
	for _, want := range []string{"over tcp", "throughput, 1 stream", "throughput, 2 streams", "round trip", "new connections, 2 at a time"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "UDP") {
		t.Errorf("--udp-rate 0 still ran the UDP test:\n%s", out)
	}
}

// TestBenchErrors: each mistake gets expose's exit code and one line
// saying what to do.
func TestBenchErrors(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML+"\n[[tokens]]\nid = \"noudp\"\nsecret = \"no-udp-secret-0123456789\"\nudp = false\n")
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
		{"wrong fingerprint", []string{"--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", wrongFP}, exitUnverified, "fingerprint"},
		{"relay unreachable", []string{"--relay", down, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", "tcp"}, exitFailure, "could not reach the relay"},
		{"no relay", []string{"--token", pt.TestSecret, "--fingerprint", r.FP}, exitUsage, "--relay"},
		{"no token", []string{"--relay", r.Addr, "--fingerprint", r.FP}, exitUsage, "--token or --token-file"},
		{"argument", append([]string{"localhost:8080"}, ok...), exitUsage, "bench takes no arguments"},
		{"zero streams", append([]string{"--streams", "0"}, ok...), exitUsage, "--streams 0: give 1 to 256"},
		{"short duration", append([]string{"--duration", "1ms"}, ok...), exitUsage, "--duration 1ms: give 100ms to 1h"},
		{"bad rate", append([]string{"--udp-rate", "fast"}, ok...), exitUsage, `--udp-rate: "fast" is not a rate`},
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
		})
	}
}
