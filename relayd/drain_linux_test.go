package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// queuedClients connects n clients to url while p (relayd) is stopped
// with SIGSTOP, so that the kernel completes their connects and queues
// them on the tunnel's port without relayd accepting any. Each sends its
// request and half-closes. signal then runs, and p is resumed.
func queuedClients(t *testing.T, p *pt.Proc, url string, n int, signal func()) []net.Conn {
	t.Helper()
	p.Signal(syscall.SIGSTOP)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			p.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", pt.HostPort(t, url), 5*time.Second)
		if err != nil {
			t.Fatalf("client %d, while relayd is stopped: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := fmt.Fprintf(c, "request %d", i); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		conns[i] = c
	}
	signal()
	resume()
	return conns
}

// queueRoom is n, or fewer if the listen backlog (net.core.somaxconn,
// which Go's listeners use) holds fewer: the clients beyond it would wait
// in SYN retransmissions.
func queueRoom(n int) int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return min(n, 100)
	}
	somax, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return min(n, 100)
	}
	return max(1, min(n, somax/2))
}

// checkServed reads each client's reply: tag, then its request echoed.
// Every one must be served in full; the rest are counted by what they got.
func checkServed(t *testing.T, conns []net.Conn, tag, what string) {
	t.Helper()
	bad := map[string]int{}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c)
		want := fmt.Sprintf("%srequest %d", tag, i)
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			bad["reset"]++
		case err != nil:
			bad[err.Error()]++
		case !bytes.Equal(got, []byte(want)):
			bad[fmt.Sprintf("EOF after %d of %d bytes", len(got), len(want))]++
		}
	}
	if len(bad) > 0 {
		failed := 0
		for _, k := range bad {
			failed += k
		}
		t.Errorf("%d of %d clients %s were not served: %v", failed, len(conns), what, bad)
	}
}

// SIGTERM while clients are queued on a tunnel's port: their connects
// succeeded before the signal, but relayd had not accepted them yet. They
// are served through the drain; closing the port used to reset them all
// (the kernel resets what a listening socket still holds when it closes).
func TestSIGTERMServesQueuedClients(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, "drain_timeout = \"60s\"\n\n"+pt.TokensTOML)
		local := pt.StartEcho(t, "qd:")
		_, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		pt.CheckEcho(t, urls[0], "qd:", 100)
		conns := queuedClients(t, r.Proc, urls[0], queueRoom(300), func() { r.Signal(syscall.SIGTERM) })
		checkServed(t, conns, "qd:", "queued on the port at SIGTERM")
		if code := r.Wait(pt.ExitTimeout); code != 0 {
			t.Errorf("relayd exited %d after draining, want 0", code)
		}
		if !pt.Refused(urls[0]) {
			t.Errorf("%s still accepts clients after relayd exited", urls[0])
		}
	})
}
