package tunnel

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/impair"
)

// TestGroupClientBytesGoAhead: on a tunnel of several agents, the relay
// waits for the chosen member's answer before it gives up on it, but the
// bytes a client sends first (a request) must not wait for that answer:
// they used to, which cost a client that speaks first one more round trip
// to the agent than on a tunnel of one member (at 50 ms: 103 ms to the
// first byte of the reply instead of 52). Here the agents' answers cannot
// reach the relay at all, and the request must still reach the server.
func TestGroupClientBytesGoAhead(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		got := make(chan string, 4)
		local := startServer(t, func(c net.Conn) {
			defer c.Close()
			b := make([]byte, 5)
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			got <- string(b)
			c.Write(b)
			io.Copy(io.Discard, c)
		})
		r := startRelay(t, func(c *RelayConfig) {
			// Long enough that no member is given up on in this test.
			c.AnswerTimeout = time.Minute
			c.OpenStreamTimeout = time.Minute
		})
		var paths []simProxy
		var a *testAgent
		for range 2 {
			p := newSimProxy(t, kind, r.Addr, impair.Config{})
			paths = append(paths, p)
			cfg := r.agentConfig(kind, local)
			cfg.Relay = p.Addr()
			a = mustRunAgent(t, cfg)
		}
		waitFor(t, "a group of two", 10*time.Second, func() bool {
			ts := r.Relay.Tunnels()
			return len(ts) == 1 && len(ts[0].Members) == 2
		})
		// Nothing from the agents reaches the relay from now on.
		for _, p := range paths {
			p.Set(impair.Config{Stop: true}, impair.Config{})
		}
		c, err := net.Dial("tcp", a.Public(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("hello"))
		select {
		case s := <-got:
			if s != "hello" {
				t.Fatalf("the server got %q; want hello", s)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the client's request did not reach the server while the member's answer was on its way")
		}
		// The answer, and the reply, once the path carries them.
		for _, p := range paths {
			p.Set(impair.Config{}, impair.Config{})
		}
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
			t.Fatalf("reply %q, %v; want hello", b, err)
		}
		select {
		case s := <-got:
			t.Fatalf("the request reached a second server too (%q)", s)
		default:
		}
	})
}
