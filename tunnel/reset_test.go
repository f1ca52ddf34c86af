package tunnel

import (
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// readSlowly reads c to its end, pausing between reads so that bytes wait
// in the tunnel, and returns the count and how it ended (nil for EOF).
func readSlowly(c net.Conn) (int, error) {
	n, buf := 0, make([]byte, 64<<10)
	for {
		m, err := c.Read(buf)
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestClientResetReachesServer: a client that resets in the middle of an
// upload must not reach the local server as a clean end: the truncated
// upload would pass for a whole one. The server gets an RST.
func TestClientResetReachesServer(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		type result struct {
			n   int
			err error
		}
		got := make(chan result, 1)
		local := startServer(t, func(c net.Conn) {
			defer c.Close()
			n, err := readSlowly(c)
			got <- result{n, err}
		})
		r := startRelay(t, nil)
		a := mustRunAgent(t, r.agentConfig(kind, local))
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 32<<20)
		rand.Read(p)
		go c.Write(p)
		time.Sleep(300 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		select {
		case res := <-got:
			if !errors.Is(res.err, syscall.ECONNRESET) {
				t.Fatalf("after the client's reset the local server read %d of %d bytes, then %v; want %v", res.n, len(p), res.err, syscall.ECONNRESET)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the local server's read had not ended 60 s after the client's reset")
		}
	})
}

// TestServerResetReachesClient: the same the other way, for a local server
// that dies in the middle of a response.
func TestServerResetReachesClient(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		p := make([]byte, 32<<20)
		rand.Read(p)
		local := startServer(t, func(c net.Conn) {
			go c.Write(p)
			time.Sleep(300 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
		r := startRelay(t, nil)
		a := mustRunAgent(t, r.agentConfig(kind, local))
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		n, err := readSlowly(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after the server's reset the client read %d of %d bytes, then %v; want %v", n, len(p), err, syscall.ECONNRESET)
		}
	})
}
