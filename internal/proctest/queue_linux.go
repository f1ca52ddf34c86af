package proctest

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
)

// QueuedClients connects n clients to url while relayd (r) is stopped with
// SIGSTOP, so that the kernel completes their connects and queues them on
// the tunnel's port without relayd accepting any. Each sends "request I"
// and half-closes. Then event runs, and relayd is resumed. n is capped by
// the listen backlog (QueueRoom).
func QueuedClients(t testing.TB, r *Proc, url string, n int, event func()) []net.Conn {
	t.Helper()
	r.Signal(syscall.SIGSTOP)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			r.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	conns := make([]net.Conn, QueueRoom(n))
	for i := range conns {
		c, err := net.DialTimeout("tcp", HostPort(t, url), 5*time.Second)
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
	event()
	resume()
	return conns
}

// QueueRoom is n, or fewer if the listen backlog (net.core.somaxconn,
// which Go's listeners use) holds fewer: the clients beyond it would wait
// in SYN retransmissions.
func QueueRoom(n int) int {
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

// CheckServed reads each of QueuedClients' clients' reply, which must be
// tag and then its request, in full; the others are counted by what they
// got, and the test fails naming the clients as what.
func CheckServed(t testing.TB, conns []net.Conn, tag, what string) {
	t.Helper()
	bad := map[string]int{}
	failed := 0
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
		default:
			continue
		}
		failed++
	}
	if failed > 0 {
		t.Errorf("%d of %d clients %s were not served: %v", failed, len(conns), what, bad)
	}
}
