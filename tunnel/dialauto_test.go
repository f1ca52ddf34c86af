package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/proxytest"
	"github.com/relaytun/relay/transport"
)

// stubDialer is a transport.Dialer whose attempts run dial, numbered from
// 1, so a test decides what each attempt of dialAuto's meets.
type stubDialer struct {
	kind  string
	calls atomic.Int32
	dial  func(ctx context.Context, n int32) (transport.Session, error)
}

func (d *stubDialer) Kind() string { return d.kind }

func (d *stubDialer) Dial(ctx context.Context, _ string) (transport.Session, error) {
	return d.dial(ctx, d.calls.Add(1))
}

// stubSession is a session that knows its kind and whether it was closed;
// dialAuto calls nothing else.
type stubSession struct {
	transport.Session
	kind   string
	closed atomic.Bool
}

func (s *stubSession) Kind() string { return s.kind }
func (s *stubSession) Close() error { s.closed.Store(true); return nil }

// unanswered is an attempt that never hears back: a QUIC Initial sent while the
// relay was down, waiting out its retransmission backoff.
func unanswered(ctx context.Context) (transport.Session, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// A relay that was down when the QUIC attempt went out, and answers both
// transports by the time the fallback starts: the session is QUIC's, from
// a fresh attempt beside TCP, not TCP's for as long as it lasts (UDP
// tunnels then framed on a TCP stream).
func TestDialAutoTriesFirstAfreshBesideSecond(t *testing.T) {
	quicSess, tcpSess := &stubSession{kind: "quic"}, &stubSession{kind: "tcp"}
	tcpUp := make(chan struct{})
	quic := &stubDialer{kind: "quic", dial: func(ctx context.Context, n int32) (transport.Session, error) {
		if n == 1 {
			return unanswered(ctx)
		}
		<-tcpUp // the fresh attempt comes up after TCP's
		return quicSess, nil
	}}
	tcp := &stubDialer{kind: "tcp", dial: func(context.Context, int32) (transport.Session, error) {
		close(tcpUp)
		return tcpSess, nil
	}}
	hour := func(time.Duration) time.Duration { return time.Hour }
	s, fellBack, err := dialAuto(context.Background(), "relay:7000", time.Millisecond, slog.New(slog.DiscardHandler), slog.LevelInfo, quic, tcp, hour)
	if err != nil {
		t.Fatal(err)
	}
	if s != quicSess || !fellBack {
		t.Fatalf("got the %s session (fell back: %v), want the fresh quic attempt's after the fallback", s.Kind(), fellBack)
	}
	waitFor(t, "the tcp session to be closed", 10*time.Second, tcpSess.closed.Load)
	if quicSess.closed.Load() {
		t.Error("the session returned was closed")
	}
}

// Where UDP gets nowhere, the TCP session is used once the grace is over,
// or at once when every QUIC attempt has failed.
func TestDialAutoFallsBackWhenFirstNeverAnswers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quic  func(ctx context.Context, n int32, tcpUp <-chan struct{}) (transport.Session, error)
		grace time.Duration
	}{
		{"silent", func(ctx context.Context, _ int32, _ <-chan struct{}) (transport.Session, error) {
			return unanswered(ctx)
		}, time.Millisecond},
		{"failing", func(_ context.Context, _ int32, tcpUp <-chan struct{}) (transport.Session, error) {
			<-tcpUp
			return nil, errors.New("no recent network activity")
		}, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcpSess := &stubSession{kind: "tcp"}
			tcpUp := make(chan struct{})
			quic := &stubDialer{kind: "quic", dial: func(ctx context.Context, n int32) (transport.Session, error) { return tc.quic(ctx, n, tcpUp) }}
			tcp := &stubDialer{kind: "tcp", dial: func(context.Context, int32) (transport.Session, error) {
				close(tcpUp)
				return tcpSess, nil
			}}
			grace := func(time.Duration) time.Duration { return tc.grace }
			s, fellBack, err := dialAuto(context.Background(), "relay:7000", time.Millisecond, slog.New(slog.DiscardHandler), slog.LevelInfo, quic, tcp, grace)
			if err != nil {
				t.Fatal(err)
			}
			if s != tcpSess || !fellBack || tcpSess.closed.Load() {
				t.Errorf("got the %s session (fell back: %v, closed: %v), want tcp's, open", s.Kind(), fellBack, tcpSess.closed.Load())
			}
			waitFor(t, "a fresh quic attempt beside tcp", 10*time.Second, func() bool { return quic.calls.Load() == 2 })
		})
	}
}

// When every attempt fails, the error says each failure once, on one line
// (it goes into one log line or exit message), and still matches each.
func TestDialAutoFailsOnOneLine(t *testing.T) {
	quicErr, tcpErr := errors.New("no recent network activity"), errors.New("tls: EOF")
	tcpDone := make(chan struct{})
	quic := &stubDialer{kind: "quic", dial: func(ctx context.Context, n int32) (transport.Session, error) {
		<-tcpDone // both quic attempts fail after tcp's
		return nil, quicErr
	}}
	tcp := &stubDialer{kind: "tcp", dial: func(context.Context, int32) (transport.Session, error) {
		defer close(tcpDone)
		return nil, tcpErr
	}}
	_, _, err := dialAuto(context.Background(), "relay:7000", time.Millisecond, slog.New(slog.DiscardHandler), slog.LevelInfo, quic, tcp, fallbackGrace)
	if want := "could not reach the relay at relay:7000 over tcp: tls: EOF; could not reach the relay at relay:7000 over quic: no recent network activity"; err == nil || err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if !errors.Is(err, quicErr) || !errors.Is(err, tcpErr) {
		t.Errorf("err %v does not match both attempts' errors", err)
	}
	if n := quic.calls.Load(); n != 2 {
		t.Errorf("quic tried %d times, want 2 (the first, and afresh beside tcp)", n)
	}
}

// TestAgentConfigProxy: a proxy carries TCP only, so a config asking for
// QUIC through one is refused, and auto and tcp are accepted.
func TestAgentConfigProxy(t *testing.T) {
	p, err := transport.ParseProxy("http://127.0.0.1:3128")
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{TransportAuto, TransportTCP, TransportQUIC} {
		cfg := DefaultAgentConfig()
		cfg.Relay, cfg.Token, cfg.Verifier, cfg.Proxy, cfg.Transport = "relay.example:7000", "s", &transport.Verifier{}, p, tr
		cfg.Tunnels = []TunnelSpec{{Name: "a", Local: "127.0.0.1:8080", Protos: ProtoTCP}}
		err := cfg.Validate()
		const want = "a proxy carries TCP only: transport quic cannot go through it; use tcp or auto"
		if tr == TransportQUIC {
			if err == nil || err.Error() != want {
				t.Errorf("quic through a proxy: %v, want %q", err, want)
			}
		} else if err != nil {
			t.Errorf("%s through a proxy: %v", tr, err)
		}
	}
}

// TestAgentThroughProxy: an agent reaches the relay through an HTTP proxy
// under auto, over TCP, and carries clients; the relay marks it as come
// through a proxy (its address is the proxy's), in Tunnels and on the
// session's log lines, and a direct agent not; the agent's status names
// the proxy without its password.
func TestAgentThroughProxy(t *testing.T) {
	r := startRelay(t, nil)
	local := proctest.StartEcho(t, "p:")
	px := proxytest.Start(t, proxytest.HTTP, proxytest.Config{User: "u", Password: "pr0xy-secret"})
	cfg := r.agentConfig(TransportAuto, local)
	p, err := transport.ParseProxy(px.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Proxy = p
	via := mustRunAgent(t, cfg)
	direct := mustRunAgent(t, r.agentConfig(TransportTCP, proctest.StartEcho(t, "d:")))
	for a, tag := range map[*testAgent]string{via: "p:", direct: "d:"} {
		if got, err := visit(a.Public(0), 2); err != nil || got != tag {
			t.Errorf("client of %s: %q, %v", a.Endpoints[0].Name, got, err)
		}
	}
	for _, ti := range r.Relay.Tunnels() {
		if len(ti.Members) != 1 {
			t.Fatalf("tunnel %s: %d members", ti.Name, len(ti.Members))
		}
		m := ti.Members[0]
		if want := ti.Port == via.Endpoints[0].Port; m.ViaProxy != want || m.Transport != TransportTCP {
			t.Errorf("tunnel %s: member %+v; want via_proxy %v over tcp", ti.Name, m, want)
		}
	}
	// One "agent connected" line each, only the proxied one's marked.
	var connected, marked int
	for _, line := range strings.Split(r.Log.String(), "\n") {
		if strings.Contains(line, `msg="agent connected"`) {
			connected++
			if strings.Contains(line, "via_proxy=true") {
				marked++
			}
		}
	}
	if connected != 2 || marked != 1 {
		t.Errorf("%d agent connected lines, %d with via_proxy=true; want 2 and 1:\n%s", connected, marked, r.Log)
	}
	if st := via.agent.Status(); st.Proxy != "http://u:xxxxx@"+px.Addr {
		t.Errorf("agent status proxy %q, want http://u:xxxxx@%s", st.Proxy, px.Addr)
	}
	if st := direct.agent.Status(); st.Proxy != "" {
		t.Errorf("direct agent status proxy %q, want none", st.Proxy)
	}
}
