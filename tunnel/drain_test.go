package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// transfer is a client sending size random bytes through an echo tunnel in
// two halves, with a pause between them that the test controls.
type transfer struct {
	c      *net.TCPConn
	sent   []byte
	half   chan error // the first half came back
	resume chan struct{}
	done   chan error // the whole echo came back byte-identical, then EOF
}

func startTransfer(t *testing.T, addr string, size int) *transfer {
	t.Helper()
	x := &transfer{c: dialPublic(t, addr), sent: make([]byte, size),
		half: make(chan error, 1), resume: make(chan struct{}), done: make(chan error, 1)}
	rand.Read(x.sent)
	x.c.SetDeadline(time.Now().Add(60 * time.Second))
	mid := size / 2
	go func() {
		if _, err := x.c.Write(x.sent[:mid]); err != nil {
			x.half <- err
			return
		}
		<-x.resume
		_, err := x.c.Write(x.sent[mid:])
		if err == nil {
			err = x.c.CloseWrite()
		}
		if err != nil {
			x.done <- fmt.Errorf("writing the second half: %w", err)
		}
	}()
	go func() {
		h := sha256.New()
		if _, err := io.CopyN(h, x.c, int64(mid)); err != nil {
			x.half <- fmt.Errorf("reading the first half: %w", err)
			return
		}
		x.half <- nil
		n, err := io.Copy(h, x.c)
		n += int64(mid)
		switch want := sha256.Sum256(x.sent); {
		case err != nil:
			x.done <- fmt.Errorf("reading: %w (after %d of %d bytes)", err, n, size)
		case n != int64(size) || string(h.Sum(nil)) != string(want[:]):
			x.done <- fmt.Errorf("%d bytes came back for %d sent, or a different sha256", n, size)
		default:
			x.done <- nil
		}
	}()
	return x
}

// Relay.Shutdown during transfers: new clients are refused at once, the
// agent hears DRAIN, and every transfer in flight completes byte-identical
// before Shutdown returns nil.
func TestShutdownDrainsTransfers(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, r.agentConfig(kind, startServer(t, echo)))
		var xs []*transfer
		for i := range 4 {
			xs = append(xs, startTransfer(t, a.Public(0), (1<<20)+i*7919))
		}
		for i, x := range xs {
			if err := <-x.half; err != nil {
				t.Fatalf("transfer %d before the drain: %v", i, err)
			}
		}

		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			shut <- r.Relay.Shutdown(ctx)
		}()
		waitFor(t, "the public port to close", 10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", a.Public(0), time.Second)
			if err == nil {
				c.Close()
			}
			return errors.Is(err, syscall.ECONNREFUSED)
		})
		waitFor(t, "the agent to hear DRAIN", 10*time.Second, func() bool {
			return strings.Contains(a.Log.String(), "the relay is shutting down: clients in flight continue")
		})
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with transfers in flight", err)
		default:
		}

		for _, x := range xs {
			close(x.resume)
		}
		for i, x := range xs {
			if err := <-x.done; err != nil {
				t.Errorf("transfer %d across the drain: %v", i, err)
			}
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown returned %v once the transfers were done, want nil", err)
		}
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after Shutdown")
		}
		if n := r.Relay.Stats().ClientsActive; n != 0 {
			t.Errorf("%d clients still counted active", n)
		}
		// The session's end was announced: no warning of a loss.
		waitFor(t, "the agent to note the session's end", 10*time.Second, func() bool {
			return strings.Contains(a.Log.String(), `msg="the relay is shutting down: it closed the session; reconnecting"`)
		})
		if strings.Contains(a.Log.String(), "connection to the relay lost") {
			t.Errorf("the agent warned of a lost connection when the relay shut down:\n%s", a.Log)
		}
	})
}

// Shutdown whose context ends first cuts the clients still in flight and
// says so.
func TestShutdownDeadlineCuts(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, r.agentConfig(kind, startServer(t, echo)))
		x := startTransfer(t, a.Public(0), 64<<10)
		if err := <-x.half; err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := r.Relay.Shutdown(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown with an ended context returned %v, want context.Canceled", err)
		}
		// The client is cut with a reset, not an EOF it could take for the
		// end of a complete reply, well before its own 60 s deadline.
		select {
		case err := <-x.done:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the cut client's read: %v, want a reset", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the client in flight was not cut")
		}
		close(x.resume)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after Shutdown")
		}
		if want := `level=WARN msg="drain cut short" clients_cut=1 err="context canceled"`; !strings.Contains(r.Log.String(), want) {
			t.Errorf("relay log does not say %s", want)
		}
	})
}

// Serve whose context ends returns at once, with agents connected: it
// keeps no port open for them to come back to, whatever the order in which
// it and the sessions see the end. (Each round is a fresh chance for the
// sessions to see it first; the rejoin window of a minute would hold Serve.)
func TestServeStopsWithAgents(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		local := startServer(t, echo)
		for range 10 {
			r := startRelay(t, func(c *RelayConfig) { c.RejoinWindow = time.Minute })
			cfg := r.agentConfig(kind, local)
			cfg.RetryBaseDelay, cfg.RetryMaxDelay = time.Hour, time.Hour
			liveAgentUp(t, cfg)
			r.cancel()
			select {
			case <-r.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("Serve did not return 20 s after its context ended; tunnels: %+v", r.Relay.Tunnels())
			}
		}
	})
}

// TestDrainingTunnelCountsItsClients: a tunnel whose only agent drains
// closes its port at once, but stays in Tunnels, marked closed, until its
// last client ends, and what that client carries meanwhile is counted. It
// vanished from the metrics at the drain's start, with what was carried
// after it.
func TestDrainingTunnelCountsItsClients(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, r.agentConfig(kind, startServer(t, echo)))
		c := dialPublic(t, a.Public(0))
		c.SetDeadline(time.Now().Add(30 * time.Second))
		const half = 128 << 10
		echoRound(t, c, half)
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a.Agent.Drain(ctx)
		}()
		waitFor(t, "the tunnel to close", 10*time.Second, func() bool {
			return strings.Contains(r.Log.String(), `why="its agents are draining"`)
		})
		echoRound(t, c, half)
		const want = 2 * half
		var ti []TunnelInfo
		waitFor(t, "the closed tunnel to count both round trips", 10*time.Second, func() bool {
			ti = r.Relay.Tunnels()
			return len(ti) == 1 && ti[0].BytesIn == want && ti[0].BytesOut == want
		})
		if !ti[0].Closed || ti[0].Active != 1 || len(ti[0].Members) != 1 || !ti[0].Members[0].Draining {
			t.Errorf("Tunnels while the client goes on = %+v, want the one tunnel, closed, with its client and its draining agent", ti)
		}
		if n := r.Relay.Stats().Tunnels; n != 0 {
			t.Errorf("Stats().Tunnels = %d while the only tunnel's port is closed, want 0", n)
		}
		c.Close()
		waitFor(t, "the tunnel to leave the list once its client is done", 10*time.Second, func() bool {
			return len(r.Relay.Tunnels()) == 0
		})
		// The log's account: at the close, what was carried so far and
		// the client still open; at the end, all of it.
		for _, re := range []string{
			`msg="tunnel closed" tunnel=\S+ port=\d+ token=test why="its agents are draining" clients_total=1 bytes_in=131072 bytes_out=\d+ clients_open=1\n`,
			`msg="closed tunnel's last client is done" tunnel=\S+ port=\d+ token=test clients_total=1 bytes_in=262144 bytes_out=262144\n`,
		} {
			if !regexp.MustCompile(re).MatchString(r.Log.String()) {
				t.Errorf("relay log has no line matching %s", re)
			}
		}
		<-drained
	})
}

// TestRollingRestartCountsStayMonotonic: an agent drains with a client
// still open while a new one opens the tunnel's name again, as in a
// rolling restart. The two are listed apart (the metrics sum them), and
// when the old one's last client ends its counts go to the new one, so
// the sum never goes down: Prometheus would take a drop for a restart and
// count the new tunnel's traffic twice.
func TestRollingRestartCountsStayMonotonic(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := startServer(t, echo)
		old := liveAgentUp(t, r.agentConfig(kind, local))
		name := old.eps[0].Name
		c1 := dialPublic(t, old.Public(0))
		echoRound(t, c1, 128<<10)
		go old.Agent.Drain(context.Background())
		waitFor(t, "the old tunnel to close", 10*time.Second, func() bool {
			return strings.Contains(r.Log.String(), `why="its agents are draining"`)
		})
		fresh := liveAgentUp(t, r.agentConfig(kind, local))
		c2 := dialPublic(t, fresh.Public(0))
		echoRound(t, c2, 64<<10)
		sum := func() (entries int, total, in int64) {
			for _, ti := range r.Relay.Tunnels() {
				if ti.Name == name {
					entries, total, in = entries+1, total+ti.Total, in+ti.BytesIn
				}
			}
			return
		}
		const want = (128 + 64) << 10
		waitFor(t, "both tunnels listed, with both clients' bytes", 10*time.Second, func() bool {
			n, total, in := sum()
			return n == 2 && total == 2 && in == want
		})
		c1.Close()
		waitFor(t, "the old tunnel to leave the list", 10*time.Second, func() bool {
			n, _, _ := sum()
			return n == 1
		})
		if _, total, in := sum(); total != 2 || in != want {
			t.Errorf("once the old tunnel left: %d clients and %d bytes in, want 2 and %d, as before it left", total, in, want)
		}
	})
}

// echoRound sends n bytes on c, through an echo tunnel, and reads as many
// back.
func echoRound(t *testing.T, c net.Conn, n int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
}
