package tunnel

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/syncbuf"
)

// Refusals after a summary line are summed up in one more line at the
// interval's end, even when no refusal comes after them: a burst used to
// leave only its first refusal in the log, and a reason first seen within
// the interval none at all, until some later refusal.
func TestRefusalSummaryLogsTheRest(t *testing.T) {
	var log syncbuf.Buffer
	g := &group{}
	g.logp.Store(slog.New(slog.NewTextHandler(&log, nil)))
	var scheduled []func()
	s := &refusalSummary{after: func(_ time.Duration, f func()) { scheduled = append(scheduled, f) }}
	refuse := func(reason, client string) {
		g.refused.add(reason)
		s.note(g, netip.MustParseAddrPort(client))
	}

	refuse(RefusedPerIPConns, "192.0.2.1:1000")
	refuse(RefusedPerIPConns, "192.0.2.1:1001")
	refuse(RefusedPerIPRate, "192.0.2.2:1002")
	if n := strings.Count(log.String(), "public clients refused so far"); n != 1 {
		t.Fatalf("%d summaries within the interval, want 1:\n%s", n, log.String())
	}
	if len(scheduled) != 1 {
		t.Fatalf("%d lines scheduled for the interval's end, want 1", len(scheduled))
	}
	scheduled[0]()
	want := `msg="public clients refused so far" by_reason="map[per_ip_conns:2 per_ip_rate:1]" latest=192.0.2.2:1002`
	if !strings.Contains(log.String(), want) {
		t.Errorf("the log has no line %s:\n%s", want, log.String())
	}
	if n := strings.Count(log.String(), "public clients refused so far"); n != 2 {
		t.Errorf("%d summaries, want 2:\n%s", n, log.String())
	}
}
