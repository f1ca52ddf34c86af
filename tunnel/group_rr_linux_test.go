package tunnel

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
)

// hangingLocal is a local server address that a dial hangs on: a listener
// whose accept queue (backlog 0) is full, so the kernel drops new SYNs.
func hangingLocal(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	c, err := net.DialTimeout("tcp", addr, time.Second) // fills the queue
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c2, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c2.Close()
		t.Skip("this kernel accepts connections beyond a full backlog")
	}
	return addr
}

// A member whose local server cannot be reached in time (its dial hangs)
// answers no client within the answer timeout, while its control stream
// answers PINGs. Round robin still sends every other client there first:
// a client's second pick, after the first member failed it, must not turn
// the rotation, or with two members every client starts at the same one.
func TestGroupRoundRobinIgnoresRetries(t *testing.T) {
	kind := TransportTCP
	r := startRelay(t, nil)
	a := groupAgent(t, r.Addr, r, kind, proctest.StartEcho(t, "A:"), nil)
	b := groupAgent(t, r.Addr, r, kind, hangingLocal(t), nil)
	if a.eps[0].Port != b.eps[0].Port {
		t.Fatalf("the members got ports %d and %d", a.eps[0].Port, b.eps[0].Port)
	}
	answer := r.Relay.config().AnswerTimeout
	const clients = 8
	slow := 0
	for i := range clients {
		// Least connections goes first: the last client's end must have
		// reached the relay, or A, still counting it, loses the tie.
		waitFor(t, "the last client to end on the relay", 5*time.Second, func() bool { return r.Relay.Tunnels()[0].Active == 0 })
		s := time.Now()
		tag, err := visit(a.Public(0), 2)
		d := time.Since(s)
		if err != nil || tag != "A:" {
			t.Fatalf("client %d: %q, %v", i+1, tag, err)
		}
		// Sent to the member that hangs first, a client waits the whole
		// answer timeout; sent to A, milliseconds. The bound sits near the
		// first, which no timer undercuts, to spare a loaded machine.
		if d >= answer*9/10 {
			slow++
		}
	}
	log := r.Log.String()
	t.Logf("%d of %d clients waited for the member that does not answer; %d suspect lines, %d \"answers again\"", slow, clients,
		len(suspectRE.FindAllString(log, -1)), strings.Count(log, `msg="agent answers again"`))
	if slow > clients/2 {
		t.Errorf("%d of %d clients were sent to the member that does not answer first; want at most every other one", slow, clients)
	}
}
