package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// regexpDraining matches relayctl's log line when a signal starts a drain.
var regexpDraining = regexp.MustCompile(`msg="stopping: draining`)

// TestDrain: SIGTERM lets a transfer in flight finish byte for byte; a
// second signal, or the drain timeout, ends it sooner. relayctl exits 0
// each time.
func TestDrain(t *testing.T) {
	t.Parallel()
	r := pt.NewRelayd(t, pt.TokensTOML)
	const half = 1 << 20
	reply := make([]byte, 2*half)
	for i := range reply {
		reply[i] = byte(rand.IntN(256))
	}
	// The local server answers a request with the first half of reply,
	// then waits for release before sending the second.
	release := make(chan struct{})
	local := pt.Serve(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, c)
		c.Write(reply[:half])
		select {
		case <-release:
		case <-time.After(time.Minute):
		}
		c.Write(reply[half:])
		c.(*net.TCPConn).CloseWrite()
	})
	// inFlight starts a transfer through url and returns once the first
	// half has arrived.
	inFlight := func(t *testing.T, url string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", pt.HostPort(t, url), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(time.Minute))
		c.Write([]byte("request"))
		c.(*net.TCPConn).CloseWrite()
		got := make([]byte, half)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, reply[:half]) {
			t.Fatalf("the first half: %v", err)
		}
		return c
	}
	expose := func(t *testing.T, args ...string) (*pt.Proc, string) {
		t.Helper()
		p, urls := pt.StartExpose(t, 1, nil, append([]string{local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP}, args...)...)
		return p, urls[0]
	}

	for _, transport := range []string{"quic", "tcp"} {
		t.Run("finishes/"+transport, func(t *testing.T) {
			p, url := expose(t, "--transport", transport)
			c := inFlight(t, url)
			p.Signal(syscall.SIGTERM)
			p.WaitFor(&p.Stderr, regexpDraining, pt.StartTimeout)
			// relayctl keeps carrying the transfer until it ends.
			release <- struct{}{}
			rest, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(rest, reply[half:]) {
				t.Fatalf("the second half: %d bytes, %v; want %d bytes, equal", len(rest), err, half)
			}
			if code := p.Wait(pt.ExitTimeout); code != 0 {
				t.Errorf("exit %d, want 0", code)
			}
			// The last line says it is over.
			lines := strings.Split(strings.TrimSpace(p.Stderr.String()), "\n")
			if last := lines[len(lines)-1]; !strings.Contains(last, `msg=stopped`) {
				t.Errorf("last line %q, want msg=stopped", last)
			}
		})
	}
	t.Run("second signal", func(t *testing.T) {
		p, url := expose(t, "--drain-timeout", "1h")
		c := inFlight(t, url)
		p.Signal(syscall.SIGTERM)
		p.WaitFor(&p.Stderr, regexpDraining, pt.StartTimeout)
		pt.Stopped(t, p, syscall.SIGINT)
		if rest, _ := io.ReadAll(c); len(rest) == half {
			t.Errorf("the transfer finished, want it cut")
		}
		release <- struct{}{}
	})
	t.Run("timeout", func(t *testing.T) {
		p, url := expose(t, "--drain-timeout", "100ms")
		c := inFlight(t, url)
		p.Signal(syscall.SIGTERM)
		if code := p.Wait(pt.ExitTimeout); code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		if rest, _ := io.ReadAll(c); len(rest) == half {
			t.Errorf("the transfer finished, want it cut")
		}
		if !strings.Contains(p.Stderr.String(), "drain") {
			t.Errorf("nothing logged about draining:\n%s", p.Stderr.String())
		}
		release <- struct{}{}
	})
}
