package tunnel

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// A token's max_bandwidth holds its TCP clients to the rate, in each
// direction, with every byte delivered: 1 MiB echoed at 8 Mbit/s (1 MB/s
// each way, a 128 KiB burst) takes at least 0.9 s, where it takes a few
// milliseconds without a cap. (A lower bound only: a slow machine can only
// add to it.)
func TestTokenBandwidthTCP(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = 8e6 })
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		c := dialPublic(t, a.Public(0))
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sent := make([]byte, 1<<20)
		rand.Read(sent)
		start := time.Now()
		go func() {
			c.Write(sent)
			c.CloseWrite()
		}()
		got, err := io.ReadAll(c)
		took := time.Since(start)
		if err != nil || !bytes.Equal(got, sent) {
			t.Fatalf("echo through a capped token: %d of %d bytes back, %v", len(got), len(sent), err)
		}
		t.Logf("%s: 1 MiB echoed in %v at a cap of 1 MB/s each way", kind, took.Round(time.Millisecond))
		if min := 900 * time.Millisecond; took < min {
			t.Errorf("1 MiB echoed in %v through a token capped at 1 MB/s each way; want at least %v", took, min)
		}
	})
}

// UDP datagrams over a token's max_bandwidth are dropped, not queued, and
// counted: 300 datagrams of 1000 bytes sent at once, at 8 Mbit/s with a
// 128 KiB burst, come back about 131 times.
func TestTokenBandwidthUDP(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = 8e6 })
		srv := startUDPEcho(t)
		a := mustRunAgent(t, r.udpAgentConfig(kind, ProtoUDP, srv.Addr))
		c := dialUDP(t, endpointFor(t, a, "udp"))
		exchange(t, c, []byte("hello")) // the flow is open
		p := make([]byte, 1000)
		for range 300 {
			c.Write(p)
		}
		back := 0
		buf := make([]byte, 2048)
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(buf); err != nil {
				break
			}
			back++
		}
		drops := r.Relay.Tunnels()[0].UDPDrops
		t.Logf("%s: %d of 300 datagrams came back, %d dropped", kind, back, drops)
		if back == 0 || back > 200 || drops == 0 {
			t.Errorf("%d of 300 datagrams came back, %d counted as dropped; want about 131 (the burst) back and the rest dropped", back, drops)
		}
	})
}

// A reload changes a token's cap in place, for the connections open under
// it too (they share its limiters), and lifting it frees them.
func TestTokenBandwidthReload(t *testing.T) {
	r := startRelay(t, func(c *RelayConfig) { c.Tokens[0].MaxBandwidth = 8e6 })
	ts := r.Relay.tokens[KeyID(testSecret)]
	bw := ts.bandwidth()
	if bw == nil || bw.in.Limit() != 1e6 || bw.out.Limit() != 1e6 {
		t.Fatalf("a cap of 8 Mbit/s: limiters %+v, want 1e6 bytes/s each way", bw)
	}
	reload := func(bps float64) {
		t.Helper()
		cfg := *r.Relay.config()
		cfg.Tokens = []Token{{ID: "test", Secret: testSecret, MaxBandwidth: bps}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	reload(80e6)
	if bw.in.Limit() != 10e6 || bw.in.Burst() != 1e6 || r.Relay.tokens[KeyID(testSecret)] != ts {
		t.Errorf("after a reload to 80 Mbit/s: limit %v burst %d, same state %v; want 1e7, 1000000, true",
			bw.in.Limit(), bw.in.Burst(), r.Relay.tokens[KeyID(testSecret)] == ts)
	}
	reload(0)
	if bw.in.Limit() != rate.Inf || bw.out.Limit() != rate.Inf || ts.bandwidth() != nil {
		t.Errorf("after lifting the cap: limits %v and %v, new connections get %+v; want none", bw.in.Limit(), bw.out.Limit(), ts.bandwidth())
	}
}
