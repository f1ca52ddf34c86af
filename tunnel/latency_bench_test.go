package tunnel

import (
	"net"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkDatagramLatency measures the round trip of a small (64-byte)
// datagram to a UDP echo server directly and through the relay over each
// transport, one at a time, and reports p50 and p99 in microseconds:
//
//	go test ./tunnel -run '^$' -bench DatagramLatency -benchtime 20000x
func BenchmarkDatagramLatency(b *testing.B) {
	for _, path := range []string{"direct", TransportQUIC, TransportTCP} {
		b.Run(path, func(b *testing.B) {
			srv := startUDPEcho(b).Addr
			addr := srv
			if path != "direct" {
				r := startRelay(b, nil)
				a := mustRunAgent(b, r.udpAgentConfig(path, ProtoUDP, srv))
				addr = net.JoinHostPort(a.Endpoints[0].Host, strconv.Itoa(int(a.Endpoints[0].Port)))
			}
			c, err := net.Dial("udp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			p := make([]byte, 64)
			buf := make([]byte, 128)
			// Warm up: the flow is set up by the first datagram.
			for range 100 {
				c.Write(p)
				c.SetReadDeadline(time.Now().Add(time.Second))
				c.Read(buf)
			}
			rtts := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				p[0] = byte(i)
				start := time.Now()
				c.Write(p)
				c.SetReadDeadline(time.Now().Add(time.Second))
				for {
					n, err := c.Read(buf)
					if err != nil {
						break // lost: counted as a 1 s round trip
					}
					if n == len(p) && buf[0] == byte(i) {
						break
					}
				}
				rtts = append(rtts, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
		})
	}
}
