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

// A wait cut short by the client's own deadline (OpenStreamTimeout spent
// on other members, or shorter than the answer timeout) says nothing
// about the member: it is not marked suspect for it, only probed, as
// before f2d0c44. Here the client's whole deadline is 1 s and the member
// pauses for 1.4 s, within the 2 s answer timeout: it answers the probe.
func TestGroupShortWaitDoesNotMark(t *testing.T) {
	kind := TransportTCP
	r := startRelay(t, func(c *RelayConfig) { c.OpenStreamTimeout = time.Second })
	pa, _, b, _ := groupOfTwo(t, r, kind)

	pa.Freeze()
	t0 := time.Now()
	tag, err := visit(b.Public(0), 2)
	t.Logf("client: %q, %v after %v", tag, err, time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Until(t0.Add(1400 * time.Millisecond)))
	pa.Thaw()
	time.Sleep(r.Relay.config().AnswerTimeout) // the probe's round
	if !strings.Contains(r.Log.String(), "agent did not answer; trying another") {
		t.Fatal("the client did not time out on A: the test proved nothing")
	}
	if suspectRE.MatchString(r.Log.String()) {
		t.Errorf("A, paused %v (answer timeout %v), was marked suspect after the client's %v wait", 1400*time.Millisecond, r.Relay.config().AnswerTimeout, time.Second)
	}
}

// Clients already waiting for a member when it is marked suspect stop
// waiting at the mark and go to a healthy member: X, which reached the
// frozen A half an answer timeout after Y, is served by B when Y's wait
// ends, not a full answer timeout after it reached A.
func TestGroupMarkReleasesWaitingClients(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		answer := r.Relay.config().AnswerTimeout
		pa, _, b, _ := groupOfTwo(t, r, kind)

		pa.Freeze()
		defer pa.Thaw()
		type res struct {
			tag string
			err error
			d   time.Duration
		}
		yc, xc := make(chan res, 1), make(chan res, 1)
		for _, c := range []chan res{yc, xc} {
			go func() {
				s := time.Now()
				tag, err := visit(b.Public(0), 2)
				c <- res{tag, err, time.Since(s)}
			}()
			time.Sleep(answer / 2)
		}
		y, x := <-yc, <-xc
		t.Logf("%s: Y %q %v after %v; X %q %v after %v", kind, y.tag, y.err, y.d.Round(time.Millisecond), x.tag, x.err, x.d.Round(time.Millisecond))
		if y.err != nil || x.err != nil || y.tag != "B:" || x.tag != "B:" {
			t.Fatalf("Y: %q, %v; X: %q, %v; want both served by B", y.tag, y.err, x.tag, x.err)
		}
		if y.d < answer*9/10 {
			t.Fatalf("Y took %v: it did not wait for A, the test proved nothing", y.d)
		}
		// Released, X takes about answer/2; kept waiting, at least answer:
		// the bound sits near the second, where no timer can undercut it,
		// so a loaded machine's delays do not fail a relay that works.
		if x.d > answer*9/10 {
			t.Errorf("X took %v; want it released at Y's mark, about %v after it came", x.d, answer/2)
		}
	})
}
