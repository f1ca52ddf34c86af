package tunnel

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/looptest"
	"github.com/relaytun/relay/internal/proctest"
)

// Benchmarks of the data path; none runs in plain `go test`:
//
//	go test ./tunnel -run '^$' -bench 'Join|NewConnection|DatagramPath' -benchmem
//
// BenchmarkJoin is the copy loop alone; BenchmarkNewConnection the stream
// open path (a client's connection, the relay's stream to the agent, the
// status byte back, one byte echoed); BenchmarkDatagramPath the UDP path
// (client, relay, agent, local server and back).

// joinedPair returns the two outer ends of a joined pair: bytes written to
// x come out of y and the other way round, through JoinCounting running on
// two inner ends. kind "tcp" joins loopback TCP connections (the relay's
// case on the client side), "pipe" net.Pipe ends.
func joinedPair(b *testing.B, kind string) (x, y net.Conn) {
	b.Helper()
	pair := func() (net.Conn, net.Conn) {
		if kind == "pipe" {
			return net.Pipe()
		}
		return looptest.TCPPair(b)
	}
	x, a := pair()
	bb, y := pair()
	done := make(chan struct{})
	go func() {
		defer close(done)
		JoinCounting(a, bb, nil, nil)
	}()
	b.Cleanup(func() {
		x.Close()
		y.Close()
		<-done
	})
	return x, y
}

// BenchmarkJoin measures the copy loop: bulk throughput one way (32 KiB
// writes), and the round trip of a 64-byte message echoed back through it.
func BenchmarkJoin(b *testing.B) {
	for _, kind := range []string{"tcp", "pipe"} {
		b.Run(kind+"/bulk", func(b *testing.B) {
			x, y := joinedPair(b, kind)
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.CopyN(io.Discard, y, int64(b.N)*int64(len(buf)))
			}()
			b.ResetTimer()
			for range b.N {
				if _, err := x.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
		})
		b.Run(kind+"/roundtrip", func(b *testing.B) {
			x, y := joinedPair(b, kind)
			go func() {
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(y, buf); err != nil {
						return
					}
					if _, err := y.Write(buf); err != nil {
						return
					}
				}
			}()
			msg, back := make([]byte, 64), make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := x.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(x, back); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewConnection measures the stream open path over each
// transport: a client connects to the public port, the relay opens a
// stream to the agent and writes the header, the agent dials the local
// echo server and answers with the status byte; the client sends one byte,
// reads it back and closes. It runs the clients 8 at a time.
func BenchmarkNewConnection(b *testing.B) {
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			r := startRelay(b, func(c *RelayConfig) { c.Logger = nil })
			a := mustRunAgent(b, r.agentConfig(kind, proctest.Serve(b, echo)))
			addr := a.Public(0)
			b.ReportAllocs()
			b.SetParallelism(4) // 8 clients on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var one [1]byte
				for pb.Next() {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						b.Error(err)
						return
					}
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write([]byte{'x'}); err != nil {
						b.Error(err)
					} else if _, err := io.ReadFull(c, one[:]); err != nil {
						b.Error(err)
					}
					c.Close()
				}
			})
		})
	}
}

// BenchmarkDatagramPath measures UDP through the relay over each transport:
// 1200-byte datagrams to a local echo server and back, with up to 64 in
// flight. A lost datagram is not resent, and gives its credit back after
// 50 ms; the share lost is reported as %lost (relayctl bench and relaybench
// measure loss at a set rate).
func BenchmarkDatagramPath(b *testing.B) {
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			srv := startUDPEcho(b).Addr
			r := startRelay(b, func(c *RelayConfig) { c.Logger = nil })
			a := mustRunAgent(b, r.udpAgentConfig(kind, ProtoUDP, srv))
			c, err := net.Dial("udp", a.Public(0))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.(*net.UDPConn).SetReadBuffer(4 << 20)
			p, back := make([]byte, 1200), make([]byte, 2048)
			// Open the flow.
			for {
				c.Write(p)
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(back); err == nil {
					break
				}
			}
			const window = 64
			credit := make(chan struct{}, window)
			for range window {
				credit <- struct{}{}
			}
			var received int
			done := make(chan struct{})
			go func() {
				defer close(done)
				for received < b.N {
					c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					if _, err := c.Read(back); err != nil {
						return
					}
					received++
					select {
					case credit <- struct{}{}:
					default:
					}
				}
			}()
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			b.ResetTimer()
			lost := time.NewTimer(time.Hour)
			for i := range b.N {
				select {
				case <-credit:
				default:
					lost.Reset(50 * time.Millisecond) // a lost one gives its credit back
					select {
					case <-credit:
					case <-lost.C:
					}
				}
				binary.BigEndian.PutUint64(p, uint64(i))
				c.Write(p)
			}
			<-done
			b.StopTimer()
			b.ReportMetric(100*float64(b.N-min(received, b.N))/float64(b.N), "%lost")
		})
	}
}
