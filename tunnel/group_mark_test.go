package tunnel

import (
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
)

// A client waiting for the only healthy member's answer is not sent away
// when another client's wait on that member ends: with the other member
// already suspect there is nowhere better to go. Two members, A frozen
// and marked suspect; B pauses for a little over the answer timeout. Y
// reaches B first and times out, which marks B suspect; X, which reached
// B later, would have had B's answer within its own answer timeout, but
// was released at Y's mark and sent to the frozen A, and then had no
// member left.
func TestGroupMarkDoesNotDropClientWithNowhereToGo(t *testing.T) {
	kind := TransportTCP
	r := startRelay(t, nil)
	answer := r.Relay.config().AnswerTimeout
	pa := newProxy(t, kind, r.Addr)
	pb := newProxy(t, kind, r.Addr)
	a := groupAgent(t, pa.Addr(), r, kind, proctest.StartEcho(t, "A:"), nil)
	b := groupAgent(t, pb.Addr(), r, kind, proctest.StartEcho(t, "B:"), nil)
	if a.eps[0].Port != b.eps[0].Port {
		t.Fatalf("the members got ports %d and %d", a.eps[0].Port, b.eps[0].Port)
	}

	// A freezes and is marked suspect (by a client's stream or a probe).
	pa.Freeze()
	waitFor(t, "the relay to mark A suspect", 20*time.Second, func() bool {
		visit(b.Public(0), 2)
		return suspectRE.MatchString(r.Log.String())
	})
	if n := len(suspectRE.FindAllString(r.Log.String(), -1)); n != 1 {
		t.Fatalf("%d suspect lines before B paused, want 1 (A's)", n)
	}

	// B pauses for answer + 400 ms.
	pb.Freeze()
	t0 := time.Now()
	type res struct {
		tag string
		err error
		d   time.Duration
	}
	yc, xc := make(chan res, 1), make(chan res, 1)
	go func() {
		s := time.Now()
		tag, err := visit(b.Public(0), 2)
		yc <- res{tag, err, time.Since(s)}
	}()
	time.Sleep(answer / 2)
	go func() {
		s := time.Now()
		tag, err := visit(b.Public(0), 2)
		xc <- res{tag, err, time.Since(s)}
	}()
	time.Sleep(time.Until(t0.Add(answer + 400*time.Millisecond)))
	pb.Thaw()
	x := <-xc
	pa.Thaw() // Y, joined to the frozen A as the last member left, finishes
	y := <-yc
	t.Logf("Y (reached B first): %q %v after %v; X (reached B %v later): %q %v after %v", y.tag, y.err, y.d.Round(time.Millisecond), answer/2, x.tag, x.err, x.d.Round(time.Millisecond))
	if x.err != nil || x.tag != "B:" {
		t.Errorf("X: %q, %v; want B's answer, which came %v into X's %v wait", x.tag, x.err, answer/2+400*time.Millisecond, answer)
		if strings.Contains(r.Log.String(), "client dropped: no agent answered") {
			t.Log("the relay dropped X: no agent answered")
		}
	}
}
