package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// udpEchoServer echoes datagrams on pc until the test ends.
func udpEchoServer(t *testing.T, pc net.PacketConn) {
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpRoundTrip sends p to addr and expects it back, resending a few times
// (datagrams may be lost, never altered).
func udpRoundTrip(t *testing.T, addr string, p []byte) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, len(p)+1)
	for range 5 {
		c.Write(p)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if !bytes.Equal(buf[:n], p) {
				t.Fatalf("through %s: sent %d bytes, got %d different ones back", addr, len(p), n)
			}
			return
		}
	}
	t.Fatalf("through %s: no echo of %d bytes after 5 tries", addr, len(p))
}

var udpLineRE = regexp.MustCompile(`(?m)^udp://(127\.0\.0\.1:\d+)$`)

// TestExposeTCPAndUDP: --proto tcp,udp prints a tcp:// and a udp:// line
// with one port number, and both carry traffic, over each transport.
func TestExposeTCPAndUDP(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, kind := range []string{"quic", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			// A local TCP echo and a UDP echo on one port number.
			var pc net.PacketConn
			var tcpLocal string
			for {
				tcpLocal = pt.StartEcho(t, "")
				var err error
				if pc, err = net.ListenPacket("udp", tcpLocal); err == nil {
					break
				}
			}
			udpEchoServer(t, pc)
			p := pt.Start(t, nil, pt.RelayctlBin, "expose", tcpLocal, "--proto", "tcp,udp", "--relay", r.Addr,
				"--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			m := p.WaitFor(&p.Stdout, regexp.MustCompile(`^tcp://(127\.0\.0\.1:\d+)\nudp://(127\.0\.0\.1:\d+)\n`), pt.StartTimeout)
			if m[1] != m[2] {
				t.Fatalf("tcp at %s, udp at %s: want one port number", m[1], m[2])
			}
			pt.CheckEcho(t, "tcp://"+m[1], "", 64<<10)
			for _, size := range []int{1, 1200, 1472, 8000} {
				p := make([]byte, size)
				for i := range p {
					p[i] = byte(rand.IntN(256))
				}
				udpRoundTrip(t, m[2], p)
			}
		})
	}
}

// TestExposePortRange: a LOCAL range with a public range of the same
// length gives one UDP tunnel per port with the offsets kept (Valheim's
// 2456-2458).
func TestExposePortRange(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	// Three free consecutive local UDP ports.
	var base int
	for try := 0; base == 0 && try < 50; try++ {
		b := 40000 + rand.IntN(20000)
		var pcs []net.PacketConn
		for i := range 3 {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", b+i))
			if err != nil {
				break
			}
			pcs = append(pcs, pc)
		}
		if len(pcs) == 3 {
			base = b
			for _, pc := range pcs {
				udpEchoServer(t, pc)
			}
		} else {
			for _, pc := range pcs {
				pc.Close()
			}
		}
	}
	if base == 0 {
		t.Skip("no three consecutive free UDP ports")
	}
	pub := r.Low + 10
	p := pt.Start(t, nil, pt.RelayctlBin, "expose", fmt.Sprintf("127.0.0.1:%d-%d", base, base+2), "--port", fmt.Sprintf("%d-%d", pub, pub+2),
		"--proto", "udp", "--name", "valheim", "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP)
	p.WaitFor(&p.Stdout, regexp.MustCompile(`^(udp://[^\n]*\n){3}`), pt.StartTimeout)
	lines := udpLineRE.FindAllStringSubmatch(p.Stdout.String(), -1)
	for i, m := range lines {
		if want := fmt.Sprintf("127.0.0.1:%d", pub+i); m[1] != want {
			t.Errorf("line %d is udp://%s, want udp://%s (offsets kept)", i+1, m[1], want)
		}
		udpRoundTrip(t, m[1], []byte("port "+strconv.Itoa(i)))
	}
	if !strings.Contains(p.Stderr.String(), "name=valheim-"+strconv.Itoa(base)) {
		t.Errorf("stderr does not name the tunnels valheim-PORT:\n%s", p.Stderr.String())
	}
}

// TestIperf3UDP: iperf3 -u (TCP control connection and UDP data, on one
// port) runs through the relay on each transport and its datagrams arrive.
// It asserts delivery, not speed. CI installs iperf3; elsewhere the test
// is skipped when it is missing.
func TestIperf3UDP(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("iperf3"); err != nil {
		if os.Getenv("RELAY_CI_IPERF3") != "" {
			t.Fatal("iperf3 is not installed, and CI needs this test to run")
		}
		t.Skip("iperf3 is not installed (apt-get install -y iperf3)")
	}
	r := pt.NewRelayd(t, pt.TokensTOML)
	for _, kind := range []string{"quic", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			local := pt.ClosedPort(t)
			_, port, _ := net.SplitHostPort(local)
			srv := pt.Start(t, nil, "iperf3", "-s", "-B", "127.0.0.1", "-p", port, "--forceflush")
			srv.WaitFor(&srv.Stdout, regexp.MustCompile(`Server listening`), pt.StartTimeout)
			p := pt.Start(t, nil, pt.RelayctlBin, "expose", local, "--proto", "tcp,udp", "--relay", r.Addr,
				"--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			m := p.WaitFor(&p.Stdout, regexp.MustCompile(`udp://127\.0\.0\.1:(\d+)\n`), pt.StartTimeout)
			out, err := exec.Command("iperf3", "-c", "127.0.0.1", "-p", m[1], "-u", "-b", "20M", "-l", "1200", "-t", "2", "-J").Output()
			if err != nil {
				t.Fatalf("iperf3 -u through the relay: %v\n%s", err, out)
			}
			var res struct {
				End struct {
					Sum struct {
						Packets     int     `json:"packets"`
						LostPackets int     `json:"lost_packets"`
						LostPercent float64 `json:"lost_percent"`
					} `json:"sum"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("iperf3's JSON: %v\n%s", err, out)
			}
			s := res.End.Sum
			t.Logf("iperf3 -u -b 20M -l 1200 over %s: %d packets, %d lost (%.3f%%)", kind, s.Packets, s.LostPackets, s.LostPercent)
			if s.Packets == 0 || s.LostPackets >= s.Packets {
				t.Fatalf("no datagram arrived: %+v", s)
			}
		})
	}
}
