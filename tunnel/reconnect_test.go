package tunnel

import (
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
)

// The relay stops and a new one starts at the same address with the same
// lease file: the agent comes back by itself, on the same port, says so
// once, and does not call OnReady again (nothing it printed changed).
func TestReconnectAfterRelayRestart(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		leases := filepath.Join(t.TempDir(), "leases.json")
		h := newRelayHost(t, func(c *RelayConfig) { c.LeaseFile = leases }, nil)
		r := h.start()
		cfg := h.agentConfig(kind, proctest.StartEcho(t, "r:"))
		fastRetry(&cfg)
		a := liveAgentUp(t, cfg)
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Fatalf("before the restart: %v", err)
		}

		r.Stop()
		waitFor(t, "the agent to notice the relay stopped", 10*time.Second, func() bool { return !a.connected() })
		start := time.Now()
		h.start()
		waitFor(t, "the agent to reconnect", 20*time.Second, a.connected)
		t.Logf("%s: agent back %v after the new relay started", kind, time.Since(start).Round(time.Millisecond))

		if got := a.Status().Tunnels[0].Public; got != a.eps[0].URL() {
			t.Errorf("after the restart the tunnel is %s, want %s as before", got, a.eps[0].URL())
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Errorf("after the restart: %v", err)
		}
		if n := a.readies.Load(); n != 1 {
			t.Errorf("OnReady called %d times; want once, the addresses did not change", n)
		}
		if st := a.Status(); st.Reconnects != 1 {
			t.Errorf("Status().Reconnects = %d, want 1", st.Reconnects)
		}
		logs := a.Log.String()
		// The relay stopped saying so: the session's end is told at info,
		// with no warning of a lost connection.
		for line, want := range map[string]int{
			`msg="the relay is shutting down: it closed the session; reconnecting"`: 1,
			`msg="connection to the relay lost; reconnecting"`:                      0,
			`msg=reconnected`: 1,
		} {
			if n := strings.Count(logs, line); n != want {
				t.Errorf("agent logged %s %d times, want %d", line, n, want)
			}
		}
		// after runs from when the agent noticed the loss, since_heard
		// from the relay's last answer before it.
		if m := regexp.MustCompile(`msg=reconnected relay=\S+ transport=\S+ after=(\S+) attempts=\d+ since_heard=(\S+)\n`).FindStringSubmatch(logs); m == nil {
			t.Errorf("no reconnected line with after= and since_heard=:\n%s", logs)
		} else if after, err1 := time.ParseDuration(m[1]); err1 != nil {
			t.Errorf("after=%s: %v", m[1], err1)
		} else if heard, err2 := time.ParseDuration(m[2]); err2 != nil || heard < after {
			t.Errorf("since_heard=%s (%v), want at least after=%s", m[2], err2, m[1])
		}
		if n := strings.Count(logs, "the relay is not answering"); n > 1 {
			t.Errorf("agent logged \"the relay is not answering\" %d times for one outage, want at most once", n)
		}
	})
}

// While the agent has no session it reports no round trip: the last one
// measured belongs to a path that is gone.
func TestRTTClearedWhileDisconnected(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "t:"))
		fastRetry(&cfg)
		a := liveAgentUp(t, cfg)
		// The keepalive pings as the session starts.
		waitFor(t, "a measured round trip", 10*time.Second, func() bool { return a.Status().RTT > 0 })

		r.Stop()
		waitFor(t, "the agent to notice the relay stopped", 10*time.Second, func() bool { return !a.connected() })
		if st := a.Status(); st.RTT != 0 {
			t.Errorf("disconnected, Status().RTT = %v; want 0", st.RTT)
		}
	})
}

// closeAgentSessions closes every agent session on the relay's side, as a
// network failure the relay noticed would.
func closeAgentSessions(r *Relay) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for a := range r.agents {
		a.sess.Close()
	}
}

// The first attempt after a lost session is immediate: with a backoff and a
// keepalive interval of an hour, the agent must still be back at once, on
// the same port, carrying clients.
func TestFirstRetryImmediate(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = 2 * time.Hour })
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "i:"))
		cfg.RetryBaseDelay, cfg.RetryMaxDelay = time.Hour, time.Hour
		cfg.TransportOptions.IdleTimeout, cfg.TransportOptions.KeepAlive = 2*time.Hour, time.Hour
		a := liveAgentUp(t, cfg)
		closeAgentSessions(r.Relay)
		waitFor(t, "the agent to reconnect", 20*time.Second, func() bool {
			return a.Status().Reconnects == 1 && a.connected()
		})
		if got := a.Status().Tunnels[0].Public; got != a.eps[0].URL() {
			t.Errorf("after the reconnect the tunnel is %s, want %s", got, a.eps[0].URL())
		}
		for i := range 3 {
			if _, err := visit(a.Public(0), 2); err != nil {
				t.Fatalf("client %d after the reconnect: %v", i, err)
			}
		}
	})
}

// MaxRetries failed attempts in a row end Run with ErrGaveUp, naming the
// count and the last failure.
func TestMaxRetriesGivesUp(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		cfg := r.agentConfig(kind, proctest.StartEcho(t, "g:"))
		fastRetry(&cfg)
		cfg.TransportOptions.HandshakeTimeout = time.Second
		cfg.MaxRetries = 2
		a := liveAgentUp(t, cfg)
		r.Stop()
		err := a.wait(t, 30*time.Second)
		if !errors.Is(err, ErrGaveUp) {
			t.Fatalf("Run returned %v, want ErrGaveUp", err)
		}
		var de *DialError
		if !errors.As(err, &de) {
			t.Errorf("Run's error %v does not carry the last dial failure", err)
		}
		want := "gave up reconnecting to the relay after 2 attempts: could not reach the relay at " + r.Addr + " over " + kind + ": "
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Run's error is\n%q\nwant it to start\n%q", err, want)
		}
		if n := strings.Count(a.Log.String(), "the relay is not answering"); n != 1 {
			t.Errorf("agent logged \"the relay is not answering\" %d times, want once", n)
		}
	})
}

// Refusals that retrying cannot heal end Run at once, even with
// WaitForRelay, after one attempt.
func TestPermanentRefusalStops(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens = append(c.Tokens, Token{ID: "games", Secret: "games-secret-0123456789", Names: []string{"game-*"}})
		})
		local := proctest.StartEcho(t, "p:")
		for _, tc := range []struct {
			name, secret, code string
			want               string
		}{
			{"bad token", "wrong-secret-0123456789", "unauthorized",
				"token not accepted: check the token (--token or --token-file, token or token_file in agent.toml, or RELAY_TOKEN) against the relay's tokens: the [[tokens]] in its relay.toml, or the token file in its state directory when relay.toml defines none"},
			{"name out of scope", "games-secret-0123456789", "forbidden",
				`may not use the tunnel name "t` + local[strings.LastIndex(local, ":")+1:] + `"`},
		} {
			cfg := r.agentConfig(kind, local)
			cfg.Token = tc.secret
			cfg.WaitForRelay = true
			fastRetry(&cfg)
			a := startAgent(t, cfg)
			err := a.wait(t, 20*time.Second)
			var ref *RefusedError
			if !errors.As(err, &ref) || ref.Code.String() != tc.code {
				t.Fatalf("%s: Run returned %v, want a %s refusal", tc.name, err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Run's error is %q, want it to say %q", tc.name, err, tc.want)
			}
			if n := r.Relay.Stats().AgentRefusals[tc.code]; n != 1 {
				t.Errorf("%s: the relay refused %d sessions, want 1: the agent must not retry", tc.name, n)
			}
		}
	})
}

// WaitForRelay retries the first connection until a relay appears; without
// it, Run returns the first failure with the address and transport.
func TestWaitForRelay(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		h := newRelayHost(t, nil, nil)
		local := proctest.StartEcho(t, "w:")

		cfg := h.agentConfig(kind, local)
		fastRetry(&cfg)
		cfg.TransportOptions.HandshakeTimeout = time.Second
		err := startAgent(t, cfg).wait(t, 20*time.Second)
		var de *DialError
		if !errors.As(err, &de) {
			t.Fatalf("without WaitForRelay, Run returned %v, want a *DialError", err)
		}
		if want := "could not reach the relay at " + h.addr + " over " + kind + ": "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Run's error is %q, want it to start %q", err, want)
		}

		cfg.WaitForRelay = true
		a := startAgent(t, cfg)
		waitFor(t, "the agent to retry", 20*time.Second, func() bool {
			return strings.Contains(a.Log.String(), "the relay is not answering; retrying with backoff")
		})
		h.start()
		a.eps = a.waitReady(t)
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Fatal(err)
		}
	})
}

// An auto agent says once per outage that QUIC got no answer and it tries
// TCP, not at every attempt: once while the relay is not there yet, and
// once more after a live session is lost. Later attempts say it at debug
// level.
func TestAutoFallbackSaidOncePerOutage(t *testing.T) {
	t.Parallel()
	h := newRelayHost(t, nil, nil)
	cfg := h.agentConfig(TransportAuto, proctest.StartEcho(t, "f:"))
	fastRetry(&cfg)
	cfg.FallbackDelay = 50 * time.Millisecond
	cfg.WaitForRelay = true
	a := startAgent(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log)
		}
	})
	// said counts the fallback's lines at info level, and at any level.
	said := func() (info, all int) {
		for line := range strings.Lines(a.Log.String()) {
			if strings.Contains(line, "; trying tcp") {
				all++
				if strings.Contains(line, "level=INFO") {
					info++
				}
			}
		}
		return info, all
	}
	outage := func(want int) {
		t.Helper()
		// Attempts enough that each would have said it.
		_, before := said()
		waitFor(t, "four attempts to fall back", 20*time.Second, func() bool {
			_, all := said()
			return all >= before+4
		})
		if info, all := said(); info != want {
			t.Errorf("after %d fallbacks in %d outage(s), %d were logged at info level, want %d", all, want, info, want)
		}
	}
	outage(1)

	r := h.start()
	a.waitReady(t)
	r.Stop()
	waitFor(t, "the agent to notice the relay stopped", 10*time.Second, func() bool { return !a.connected() })
	outage(2)
}
