package tunnel

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytun/relay/transport"
)

func dialPublic(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing public port: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// A client sends 5 MB, half-closes, and gets every byte back, then EOF.
func TestHalfCloseRoundTrip(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		c := dialPublic(t, a.Public(0))
		c.SetDeadline(time.Now().Add(30 * time.Second))

		want := make([]byte, 5<<20)
		rand.Read(want)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(want)
			if err == nil {
				err = c.CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading reply: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("writing: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %d bytes back, want the %d sent, byte-identical", len(got), len(want))
		}
	})
}

// The server replies only after the client's EOF: the reply must still
// arrive after the client half-closed.
func TestReplyAfterClientEOF(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := startServer(t, func(c net.Conn) {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			time.Sleep(50 * time.Millisecond)
			fmt.Fprintf(c, "got %d bytes", n)
		})
		a := mustRunAgent(t, r.agentConfig(kind, local))
		c := dialPublic(t, a.Public(0))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(make([]byte, 100000))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got 100000 bytes" {
			t.Fatalf("reply %q, %v; want %q", got, err, "got 100000 bytes")
		}
	})
}

// 64 clients at once, each with its own random payload, checked by hash.
func TestConcurrentClients(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", a.Public(0))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				p := make([]byte, 1000+i*4099)
				rand.Read(p)
				go func() {
					c.Write(p)
					c.(*net.TCPConn).CloseWrite()
				}()
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if want := sha256.Sum256(p); !bytes.Equal(h.Sum(nil), want[:]) {
					errs <- fmt.Errorf("client %d: %d bytes came back with a different hash than the %d sent", i, n, len(p))
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// A client leaving in the middle of a download closes the local connection,
// and a local server leaving closes the client.
func TestDisconnectPropagates(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		serverDone := make(chan error, 1)
		local := startServer(t, func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					serverDone <- err
					return
				}
			}
		})
		a := mustRunAgent(t, r.agentConfig(kind, local))
		c := dialPublic(t, a.Public(0))
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			t.Fatalf("downloading: %v", err)
		}
		c.Close()
		select {
		case <-serverDone:
		case <-time.After(10 * time.Second):
			t.Fatal("the local server kept writing 10 s after the client left")
		}

		// And the other way: the server closes mid-upload.
		closed := make(chan struct{})
		local2 := startServer(t, func(c net.Conn) {
			io.ReadFull(c, make([]byte, 64<<10))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			close(closed)
		})
		a2 := mustRunAgent(t, r.agentConfig(kind, local2))
		c2 := dialPublic(t, a2.Public(0))
		c2.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := c2.Write(buf); err != nil {
					return
				}
			}
		}()
		<-closed
		_, err := io.Copy(io.Discard, c2)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("client still open 10 s after the local server closed: %v", err)
		}
	})
}

// A local server that refuses connections: the client is closed at once and
// the agent says why.
func TestLocalServerDown(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := ln.Addr().String()
		ln.Close()
		r := startRelay(t, nil)
		a := mustRunAgent(t, r.agentConfig(kind, dead))
		c := dialPublic(t, a.Public(0))
		// Generous: a loaded machine (CI under -race) is slow, and a
		// pass takes milliseconds.
		c.SetDeadline(time.Now().Add(15 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || (err != io.EOF && !isReset(err)) {
			t.Fatalf("client read %d bytes, err %v; want it closed", n, err)
		}
		waitFor(t, "agent log line", 15*time.Second, func() bool {
			return strings.Contains(a.Log.String(), "the local server did not accept the connection") &&
				strings.Contains(a.Log.String(), "connection refused")
		})
		waitFor(t, "relay log line", 15*time.Second, func() bool {
			return strings.Contains(r.Log.String(), "could not reach its local server")
		})
	})
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// When the agent leaves, its port stops accepting and can be had again.
func TestAgentLeaveReleasesPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := startServer(t, echo)
		a := mustRunAgent(t, r.agentConfig(kind, local))
		pub := a.Public(0)
		port := a.Endpoints[0].Port
		a.Stop()
		waitFor(t, "public port to close", 10*time.Second, func() bool {
			c, err := net.Dial("tcp", pub)
			if err == nil {
				c.Close()
				return false
			}
			return true
		})
		waitFor(t, "tunnel list to empty", 10*time.Second, func() bool { return len(r.Relay.Tunnels()) == 0 })

		cfg := r.agentConfig(kind, local)
		cfg.Tunnels[0].Ports = PortRange{port, port}
		b := mustRunAgent(t, cfg)
		if b.Endpoints[0].Port != port {
			t.Fatalf("second agent got port %d, want the released %d", b.Endpoints[0].Port, port)
		}
		c := dialPublic(t, b.Public(0))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping"))
		c.CloseWrite()
		if got, _ := io.ReadAll(c); string(got) != "ping" {
			t.Fatalf("echo through the re-allocated port gave %q", got)
		}
	})
}

func TestRefusals(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{41000, 41999}} })
		local := startServer(t, echo)

		t.Run("wrong token", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			cfg.Token = "not-the-right-token"
			_, err := runAgent(t, cfg)
			if !isRefused(err, CodeUnauthorized) || !strings.Contains(err.Error(), "token not accepted") {
				t.Fatalf("got %v, want an unauthorized refusal", err)
			}
			waitFor(t, "relay log", 5*time.Second, func() bool { return strings.Contains(r.Log.String(), "code=unauthorized") })
			if strings.Contains(r.Log.String(), "not-the-right-token") || strings.Contains(r.Log.String(), testSecret) {
				t.Fatal("a secret appeared in the relay's log")
			}
		})
		t.Run("wrong fingerprint", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			other := make([]byte, 32)
			cfg.Verifier = &transport.Verifier{Pin: other}
			_, err := runAgent(t, cfg)
			var idErr *transport.IdentityError
			if !errors.As(err, &idErr) || !strings.Contains(err.Error(), r.Fingerprint) || !strings.Contains(err.Error(), "--fingerprint") {
				t.Fatalf("got %v, want an identity error naming %s", err, r.Fingerprint)
			}
		})
		t.Run("port outside range", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels[0].Ports = PortRange{80, 80}
			_, err := runAgent(t, cfg)
			if !isRefused(err, CodePortNotAllowed) || !strings.Contains(err.Error(), "41000-41999") {
				t.Fatalf("got %v, want port-not-allowed naming the range", err)
			}
			// Counted under the token; the wrong token's refusal above,
			// before any token was known, is not.
			if got := r.Relay.Stats().TokenRefusals; len(got) != 1 || got["test"]["port-not-allowed"] != 1 || got["test"]["unauthorized"] != 0 {
				t.Errorf("refusals by token: %v; want test's one port-not-allowed alone", got)
			}
		})
		t.Run("port taken", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			first := mustRunAgent(t, cfg)
			cfg.Tunnels[0].Ports = PortRange{first.Endpoints[0].Port, first.Endpoints[0].Port}
			cfg.Tunnels[0].Name = "other" // the same name would join first's group
			_, err := runAgent(t, cfg)
			if !isRefused(err, CodePortTaken) || !strings.Contains(err.Error(), "already taken") {
				t.Fatalf("got %v, want port-taken", err)
			}
		})
		// A second agent of the token joins the open tunnel of its name
		// (a group) only on its port and with its protocols.
		t.Run("name open on another port", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels[0].Name = "grp-port"
			first := mustRunAgent(t, cfg)
			p := first.Endpoints[0].Port
			other := p + 1
			if other > 41999 {
				other = p - 1
			}
			cfg.Tunnels[0].Ports = PortRange{other, other}
			_, err := runAgent(t, cfg)
			want := fmt.Sprintf("tunnel grp-port (%s): tunnel grp-port is already open on port %d (another agent with this token holds it): ask for port %d or none to join it", local, p, p)
			if !isRefused(err, CodePortTaken) || err.Error() != want {
				t.Fatalf("got %v\nwant port-taken: %s", err, want)
			}
		})
		t.Run("name open for another protocol", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels[0].Name = "grp-proto"
			mustRunAgent(t, cfg)
			cfg.Tunnels[0].Protos = ProtoUDP
			_, err := runAgent(t, cfg)
			want := fmt.Sprintf("tunnel grp-proto (%s): tunnel grp-proto is already open for tcp; this agent asked for udp: use the same --proto to join it", local)
			if !isRefused(err, CodeBadRequest) || err.Error() != want {
				t.Fatalf("got %v\nwant bad-request: %s", err, want)
			}
		})
		t.Run("port busy on host", func(t *testing.T) {
			var ln net.Listener
			var port uint16
			for p := 41000; p < 42000; p++ {
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
				if err == nil {
					ln, port = l, uint16(p)
					break
				}
			}
			if ln == nil {
				t.Skip("no free port in 41000-41999")
			}
			defer ln.Close()
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels[0].Ports = PortRange{port, port}
			cfg.Tunnels[0].Name = "busy"
			_, err := runAgent(t, cfg)
			if !isRefused(err, CodePortTaken) || !strings.Contains(err.Error(), "in use on the relay host") {
				t.Fatalf("got %v, want port-taken (in use on host)", err)
			}
		})
		t.Run("bad name", func(t *testing.T) {
			cfg := r.agentConfig(kind, local)
			cfg.Tunnels[0].Name = "-bad name"
			_, err := runAgent(t, cfg)
			if err == nil || !strings.Contains(err.Error(), "is invalid") {
				t.Fatalf("got %v, want an invalid-name error", err)
			}
		})
	})
}

// Two tunnels over one session, each to its own server.
func TestSeveralTunnels(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		hello := func(msg string) func(net.Conn) {
			return func(c net.Conn) { c.Write([]byte(msg)); c.Close() }
		}
		a := mustRunAgent(t, r.agentConfig(kind, startServer(t, hello("one")), startServer(t, hello("two"))))
		if len(a.Endpoints) != 2 {
			t.Fatalf("got %d endpoints, want 2", len(a.Endpoints))
		}
		for i, want := range []string{"one", "two"} {
			c := dialPublic(t, a.Public(i))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(c)
			if string(got) != want {
				t.Errorf("tunnel %d said %q, want %q", i, got, want)
			}
		}
		if got := len(r.Relay.Tunnels()); got != 2 {
			t.Errorf("relay lists %d tunnels, want 2", got)
		}
	})
}
