package proctest

// Helpers for the resilience tests: killing processes, clients that report
// instead of failing the test (for loops in goroutines), transfers held in
// flight across an event, and rewriting a running relayd's config.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.t.Helper()
	p.Signal(syscall.SIGKILL)
	p.Wait(ExitTimeout)
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool { return p.exited() }

// Visit connects to the tunnel at url, whose server is StartEcho with a
// tagLen-byte tag, sends size random bytes, half-closes, and checks the
// tag, the echo and EOF. It returns the tag: which server the client
// reached.
func Visit(url string, tagLen, size int) (string, error) {
	hp, ok := strings.CutPrefix(url, "tcp://")
	if !ok {
		return "", fmt.Errorf("%q is not a tcp:// URL", url)
	}
	got, payload, err := echoRoundTrip(hp, size)
	if err != nil {
		return "", err
	}
	if len(got) != tagLen+size || string(got[tagLen:]) != string(payload) {
		return "", fmt.Errorf("got %d bytes back, want a %d-byte tag and the %d-byte payload", len(got), tagLen, size)
	}
	return string(got[:tagLen]), nil
}

// Transfer is a client of an echo tunnel (StartEcho) that sends size random
// bytes in two halves: the first at once, the second after Resume. Done
// reports whether the tag and every byte came back, then EOF.
type Transfer struct {
	c      *net.TCPConn
	sent   []byte
	half   chan error
	resume chan struct{}
	done   chan error
}

// StartTransfer connects to url and starts a transfer; it returns once the
// first half came back, so the transfer is surely in flight.
func StartTransfer(t testing.TB, url, tag string, size int) *Transfer {
	t.Helper()
	c, err := net.DialTimeout("tcp", HostPort(t, url), 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	x := &Transfer{c: c.(*net.TCPConn), sent: make([]byte, size), half: make(chan error, 1),
		resume: make(chan struct{}), done: make(chan error, 1)}
	for i := range x.sent {
		x.sent[i] = byte(rand.IntN(256))
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	mid := size / 2
	go func() {
		if _, err := c.Write(x.sent[:mid]); err != nil {
			return // the reader reports it
		}
		<-x.resume
		_, err := c.Write(x.sent[mid:])
		if err == nil {
			err = x.c.CloseWrite()
		}
		if err != nil {
			x.c.Close() // make the reader return
		}
	}()
	go func() {
		want := append([]byte(tag), x.sent...)
		h := sha256.New()
		first := int64(len(tag) + mid)
		n, err := io.CopyN(h, c, first)
		if err != nil {
			x.half <- fmt.Errorf("reading the first half: %w (after %d bytes)", err, n)
			return
		}
		x.half <- nil
		m, err := io.Copy(h, c)
		n += m
		switch sum := sha256.Sum256(want); {
		case err != nil:
			x.done <- fmt.Errorf("reading: %w (after %d of %d bytes)", err, n, len(want))
		case n != int64(len(want)) || string(h.Sum(nil)) != string(sum[:]):
			x.done <- fmt.Errorf("%d bytes came back for %d sent (with the tag), or a different sha256", n, len(want))
		default:
			x.done <- nil
		}
	}()
	if err := <-x.half; err != nil {
		t.Fatalf("transfer through %s: %v", url, err)
	}
	return x
}

// Resume sends the second half and half-closes.
func (x *Transfer) Resume() { close(x.resume) }

// Done waits for the transfer's end and reports whether it was complete.
func (x *Transfer) Done(timeout time.Duration) error {
	select {
	case err := <-x.done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("transfer not finished after %v", timeout)
	}
}

// Refused reports whether a client connecting to url is refused (nothing
// listens on the port).
func Refused(url string) bool {
	hp, _ := strings.CutPrefix(url, "tcp://")
	c, err := net.DialTimeout("tcp", hp, 5*time.Second)
	if err == nil {
		c.Close()
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// RewriteConfig keeps the [relay] lines relayd was started with (listen,
// ports, state_dir) and replaces everything after them with extra, for a
// reload.
func (r *Relayd) RewriteConfig(t testing.TB, extra string) {
	t.Helper()
	data, err := os.ReadFile(r.Config)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "\nstate_dir = ")
	if i < 0 {
		t.Fatalf("%s has no state_dir line:\n%s", r.Config, s)
	}
	end := i + 1 + strings.IndexByte(s[i+1:], '\n') + 1
	if err := os.WriteFile(r.Config, []byte(s[:end]+extra), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TakePortAway rewrites relay.toml so TokensTOML's token may use every port
// of the relay's block but port, and sends SIGHUP: the reload moves the
// tunnel on port.
func (r *Relayd) TakePortAway(t testing.TB, port int) {
	t.Helper()
	var ports []string
	if port > r.Low {
		ports = append(ports, fmt.Sprintf("%d-%d", r.Low, port-1))
	}
	if port < r.High {
		ports = append(ports, fmt.Sprintf("%d-%d", port+1, r.High))
	}
	r.RewriteConfig(t, TokensTOML+fmt.Sprintf("ports = %q\n", strings.Join(ports, ",")))
	r.Signal(syscall.SIGHUP)
}
