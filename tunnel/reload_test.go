package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
	"github.com/relaytun/relay/internal/syncbuf"
)

const (
	oldSecret = "old-secret-0123456789"
	chgSecret = "chg-secret-0123456789"
	newSecret = "new-secret-0123456789"
)

// tokenAgent is the config of an agent for local with secret and a tunnel
// named name.
func tokenAgent(r *testRelay, kind, local, secret, name string) AgentConfig {
	cfg := r.agentConfig(kind, local)
	cfg.Token = secret
	cfg.Tunnels[0].Name = name
	fastRetry(&cfg)
	return cfg
}

// Reload adds a token (usable at once), revokes one and gives one a new
// secret (their agents stop with a refusal that says which), lowers one's
// max_connections (applied in place: its agent stays connected, the
// client it holds carries on, a new one is refused until that one ends),
// and leaves the other token's tunnel and its client in flight alone.
func TestReloadTokens(t *testing.T) {
	const rotSecret = "rot-secret-0123456789"
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens = append(c.Tokens, Token{ID: "old", Secret: oldSecret}, Token{ID: "chg", Secret: chgSecret},
				Token{ID: "rot", Secret: rotSecret})
		})
		local := proctest.StartEcho(t, "k:")
		keep := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "keep"))
		old := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "old"))
		chg := liveAgentUp(t, tokenAgent(r, kind, local, chgSecret, "chg"))
		rot := liveAgentUp(t, tokenAgent(r, kind, local, rotSecret, "rot"))
		held := hold(t, keep.Public(0), 2)
		chgHeld := hold(t, chg.Public(0), 2)
		if err := startAgent(t, tokenAgent(r, kind, local, newSecret, "new")).wait(t, 20*time.Second); !isRefused(err, CodeUnauthorized) {
			t.Fatalf("a token not yet added: %v, want unauthorized", err)
		}

		cfg := *r.Relay.config()
		cfg.Tokens = []Token{
			{ID: "test", Secret: testSecret},
			{ID: "chg", Secret: chgSecret, MaxConnections: 1},
			{ID: "rot", Secret: "rot-secret-rotated-0123"},
			{ID: "new", Secret: newSecret},
		}
		res, err := r.Relay.Reload(cfg)
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if got := fmt.Sprint(res.TokensAdded, res.TokensRemoved, res.TokensChanged, res.SessionsClosed, res.TunnelsClosed); got != "[new] [old] [chg rot] 2 2" {
			t.Errorf("Reload result %+v, want added [new], removed [old], changed [chg rot], 2 sessions and 2 tunnels closed", res)
		}

		// Revoked, and a new secret: Run ends with the reason, no retry;
		// the relay's line for the tunnel says which of the two it was.
		for _, c := range []struct {
			a         *liveAgent
			want, why string
		}{
			{old, `token "old" was revoked on the relay: ask the relay's operator for a new one`, `its token \"old\" was revoked`},
			{rot, `token "rot" has a new secret on the relay: ask the relay's operator for it`, `its token \"rot\" was given a new secret`},
		} {
			name := c.a.eps[0].Name
			if want := fmt.Sprintf(`msg="tunnel closed" tunnel=%s port=%d token=%s why="%s"`, name, c.a.eps[0].Port, name, c.why); !strings.Contains(r.Log.String(), want) {
				t.Errorf("the relay did not log %s", want)
			}
			err = c.a.wait(t, 20*time.Second)
			if !isRefused(err, CodeUnauthorized) || err.Error() != c.want {
				t.Errorf("Run returned %v; want an unauthorized refusal saying %q", err, c.want)
			}
			if strings.Contains(c.a.Log.String(), "reconnecting") {
				t.Errorf("the agent said it was reconnecting:\n%s", c.a.Log)
			}
		}

		// Lowered limit: in place. The held client is the one the cap
		// allows; another is refused until it ends.
		if _, err := visit(chg.Public(0), 2); err == nil {
			t.Error("a second client of the token capped at 1 connection was let in")
		}
		if err := chgHeld.finish(64 << 10); err != nil {
			t.Errorf("the capped token's client in flight: %v", err)
		}
		waitFor(t, "the capped token's tunnel to take a client again", 10*time.Second, func() bool {
			_, err := visit(chg.Public(0), 2)
			return err == nil
		})
		if st := chg.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent of the token whose limit changed: %+v, want its first session still up", st)
		}

		// Added: works at once.
		n := liveAgentUp(t, tokenAgent(r, kind, local, newSecret, "new"))
		if _, err := visit(n.Public(0), 2); err != nil {
			t.Errorf("the new token's tunnel: %v", err)
		}

		// Untouched.
		if err := held.finish(256 << 10); err != nil {
			t.Errorf("the unaffected tunnel's client in flight: %v", err)
		}
		if st := keep.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the unaffected agent: %+v, want its first session still up", st)
		}
	})
}

// Reload gives a token a new id and keeps its secret: a rename. Its
// agent's session, its tunnel on the same port, the client that tunnel
// holds, and the lease of its tunnel that is away all carry on under the
// new id; the agent does not reconnect, and the away tunnel's agent, back
// under the new id, gets its port again.
func TestReloadRenamesToken(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		leases := filepath.Join(t.TempDir(), "leases.json")
		r := startRelay(t, func(c *RelayConfig) {
			c.LeaseFile = leases
			c.Tokens = append(c.Tokens, Token{ID: "old", Secret: oldSecret})
		})
		local := proctest.StartEcho(t, "r:")
		a := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "ren"))
		held := proctest.Hold(t, "tcp://"+a.Public(0), "r:")
		away := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "away"))
		awayPort := away.eps[0].Port
		away.Stop() // says goodbye: its tunnel closes, and its lease waits
		waitFor(t, "the away tunnel to close", 10*time.Second, func() bool { return len(r.Relay.Tunnels()) == 1 })

		rc := *r.Relay.config()
		rc.Tokens = []Token{{ID: "test", Secret: testSecret}, {ID: "new", Secret: oldSecret}}
		res, err := r.Relay.Reload(rc)
		if err != nil || res.SessionsClosed != 0 || fmt.Sprint(res.TokensRenamed, res.TokensAdded, res.TokensRemoved, res.TokensChanged) != "[old->new] [] [] []" {
			t.Fatalf("Reload: %+v, %v; want old->new renamed, nothing added, removed, changed or closed", res, err)
		}
		if ts := r.Relay.Tunnels(); len(ts) != 1 || ts[0].TokenID != "new" || ts[0].Name != "ren" || ts[0].Port != a.eps[0].Port {
			t.Errorf("tunnels after the rename: %+v; want ren under token new on port %d", ts, a.eps[0].Port)
		}
		held.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := held.Write([]byte("still")); err != nil {
			t.Fatalf("the held client: %v", err)
		}
		got := make([]byte, 5)
		if _, err := io.ReadFull(held, got); err != nil || string(got) != "still" {
			t.Errorf("the held client after the rename read %q, %v", got, err)
		}
		proctest.CheckEcho(t, "tcp://"+a.Public(0), "r:", 1024)
		if st := a.Status(); !st.Connected || st.Reconnects != 0 {
			t.Errorf("the agent across the rename: %+v; want its first session", st)
		}
		waitFor(t, "the renamed leases on disk", 10*time.Second, func() bool {
			data, _ := os.ReadFile(leases)
			var f leaseFile
			json.Unmarshal(data, &f)
			got := map[string]uint16{}
			for _, l := range f.Leases {
				got[l.Token+"/"+l.Name] = l.Port
			}
			return len(got) == 2 && got["new/ren"] == a.eps[0].Port && got["new/away"] == awayPort
		})
		back := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "away"))
		if back.eps[0].Port != awayPort {
			t.Errorf("the away tunnel came back under the new id on port %d, want its lease's %d", back.eps[0].Port, awayPort)
		}
		// The renamed session's own lines name the new id.
		a.Stop()
		waitFor(t, "the renamed session's last line", 10*time.Second, func() bool {
			return regexp.MustCompile(`msg="agent disconnected" agent=\S+ transport=\S+ token=new\n`).MatchString(r.Log.String())
		})
	})
}

// A session whose token a reload renames between its handshake and its
// admission (so the rename did not find it among the relay's agents) logs
// under the new id once admitted, not the one it came in under.
func TestRenameBeforeAdmitLogsNewID(t *testing.T) {
	r := startRelay(t, nil)
	var buf syncbuf.Buffer
	r.Relay.mu.Lock()
	ts := r.Relay.tokens[KeyID(testSecret)]
	r.Relay.mu.Unlock()
	a := &agentConn{r: r.Relay, base: slog.New(slog.NewTextHandler(&buf, nil)), token: ts}
	a.setLogger() // as the handshake does
	rc := *r.Relay.config()
	rc.Tokens = []Token{{ID: "renamed", Secret: testSecret}}
	if _, err := r.Relay.Reload(rc); err != nil {
		t.Fatal(err)
	}
	if ref := r.Relay.admitAgent(a); ref != nil {
		t.Fatal(ref)
	}
	defer r.Relay.forgetAgent(a)
	a.logger().Info("agent connected")
	if got := buf.String(); !strings.Contains(got, "token=renamed") {
		t.Errorf("the admitted session logs %q; want token=renamed", got)
	}
}

// A session a reload closes for its revoked token stays among the relay's
// agents while its notice goes out (up to a second when the agent does not
// hang up): a reload right after, which gives the id to a new token, neither
// counts it again nor tells it the id has a new secret, another user's.
func TestReloadLeavesClosingSessionAlone(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		authenticate(t, dialRaw(t, r, kind)) // and never hangs up
		// The WELCOME goes out before the relay records the session.
		waitFor(t, "the relay to hold the session", 10*time.Second, func() bool { return agentCount(r.Relay) == 1 })
		rc := *r.Relay.config()
		rc.Tokens = []Token{{ID: "other", Secret: oldSecret}}
		if res, err := r.Relay.Reload(rc); err != nil || res.SessionsClosed != 1 {
			t.Fatalf("Reload revoking test: %+v, %v; want one session closed", res, err)
		}
		rc.Tokens = append(rc.Tokens, Token{ID: "test", Secret: newSecret})
		res, err := r.Relay.Reload(rc)
		if err != nil || res.SessionsClosed != 0 {
			t.Errorf("Reload giving the id test to a new token: %+v, %v; want no session closed", res, err)
		}
		if strings.Contains(r.Log.String(), "has a new secret") {
			t.Errorf("the revoked token's session was told its id has a new secret:\n%s", r.Log)
		}
	})
}

// A renamed token that takes the id of a token the same reload removes:
// the removed one is reported removed and its agent told it was revoked
// (not that its id has a new secret, which is the renamed token's, another
// user's); the renamed token's tunnel takes the key of the removed one's
// of the same name. A new token under the id a rename freed is added, not
// a changed one.
func TestReloadRenameTakesRemovedTokensID(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) {
			c.Tokens = append(c.Tokens, Token{ID: "old", Secret: oldSecret}, Token{ID: "gone", Secret: newSecret})
		})
		local := proctest.StartEcho(t, "t:")
		ren := liveAgentUp(t, tokenAgent(r, kind, local, oldSecret, "x"))
		gone := liveAgentUp(t, tokenAgent(r, kind, local, newSecret, "x"))

		rc := *r.Relay.config()
		rc.Tokens = []Token{{ID: "test", Secret: testSecret}, {ID: "gone", Secret: oldSecret}}
		res, err := r.Relay.Reload(rc)
		if got := fmt.Sprint(res.TokensRenamed, res.TokensAdded, res.TokensRemoved, res.TokensChanged, res.SessionsClosed); err != nil || got != "[old->gone] [] [gone] [] 1" {
			t.Fatalf("Reload: %+v, %v; want old->gone renamed, gone removed, one session closed", res, err)
		}
		want := `token "gone" was revoked on the relay: ask the relay's operator for a new one`
		if err := gone.wait(t, 20*time.Second); !isRefused(err, CodeUnauthorized) || err.Error() != want {
			t.Errorf("the removed token's agent: %v; want %q", err, want)
		}
		if want := `why="its token \"gone\" was revoked"`; !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %s:\n%s", want, r.Log)
		}
		if ts := r.Relay.Tunnels(); len(ts) != 1 || ts[0].TokenID != "gone" || ts[0].Port != ren.eps[0].Port {
			t.Errorf("tunnels after the reload: %+v; want x under gone on port %d", ts, ren.eps[0].Port)
		}
		proctest.CheckEcho(t, "tcp://"+ren.Public(0), "t:", 1024)

		rc.Tokens = []Token{{ID: "test", Secret: testSecret}, {ID: "again", Secret: oldSecret}, {ID: "gone", Secret: chgSecret}}
		res, err = r.Relay.Reload(rc)
		if got := fmt.Sprint(res.TokensRenamed, res.TokensAdded, res.TokensRemoved, res.TokensChanged, res.SessionsClosed); err != nil || got != "[gone->again] [gone] [] [] 0" {
			t.Errorf("Reload: %+v, %v; want gone->again renamed, a new gone added", res, err)
		}
	})
}

// A reload that narrows a token's rules touches only the tunnels they no
// longer allow. A name or UDP ruled out: the relay sends CLOSED for that
// tunnel alone, and the agent's session, its other tunnel and that
// tunnel's client in flight carry on; the agent reports the tunnel closed
// and does not register it again. A port ruled out: the tunnel moves to a
// port the token may use, the agent hears it by MOVED on the same session,
// and the clients in flight on it and on the agent's other tunnel carry
// on. Another agent of the token, whose tunnel still fits, carries on
// with its client either way.
func TestReloadNarrowsToken(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		for _, c := range []struct {
			name   string
			tunnel TunnelSpec // the one ruled out; "fits-N" is not
			narrow func(*Token, uint16)
			why    string // the relay's "tunnel closed" or "tunnel moved" reason
			moves  bool   // the tunnel moves to another port
		}{
			{"names", TunnelSpec{Name: "out"}, func(t *Token, _ uint16) { t.Names = []string{"fits-*"} },
				`its token "scoped"'s names rule no longer allows the name "out"`, false},
			{"udp", TunnelSpec{Name: "out", Protos: ProtoUDP}, func(t *Token, _ uint16) { t.DenyUDP = true },
				`its token "scoped" may no longer open UDP tunnels`, false},
			{"ports", TunnelSpec{Name: "out"}, func(t *Token, p uint16) { t.Ports = portsWithout(p) },
				`port %d is no longer among the ports its token "scoped" may use`, true},
		} {
			t.Run(c.name, func(t *testing.T) {
				scoped := Token{ID: "scoped", Secret: chgSecret}
				r := startRelay(t, func(rc *RelayConfig) {
					rc.Tokens = append(rc.Tokens, scoped)
					rc.RejoinWindow = time.Minute
				})
				local := proctest.StartEcho(t, "n:")
				cfg := tokenAgent(r, kind, local, chgSecret, "")
				c.tunnel.Local = local
				cfg.Tunnels = []TunnelSpec{c.tunnel, {Name: "fits-1", Local: local}}
				a := liveAgentUp(t, cfg)
				other := liveAgentUp(t, tokenAgent(r, kind, local, chgSecret, "fits-2"))
				held := hold(t, other.Public(0), 2)
				out := a.eps[0].Port
				sibling := hold(t, a.Public(1), 2)
				var onOut *heldClient
				if c.moves {
					onOut = hold(t, a.Public(0), 2)
				}

				rc := *r.Relay.config()
				rc.Tokens = slices.Clone(rc.Tokens)
				c.narrow(&rc.Tokens[len(rc.Tokens)-1], out)
				res, err := r.Relay.Reload(rc)
				closed, moved := 1, 0
				if c.moves {
					closed, moved = 0, 1
				}
				if err != nil || res.SessionsClosed != 0 || res.TunnelsClosed != closed || res.TunnelsMoved != moved || fmt.Sprint(res.TokensChanged) != "[scoped]" {
					t.Fatalf("Reload: %+v, %v; want token scoped changed, no session closed, %d tunnel(s) closed and %d moved", res, err, closed, moved)
				}
				why := c.why
				if c.moves {
					why = fmt.Sprintf(why, out)
					eps := a.waitReady(t)
					now := eps[0].Port
					if now == out || !rc.Tokens[len(rc.Tokens)-1].Ports.Contains(now) || eps[1].Port != a.eps[1].Port {
						t.Errorf("after the reload, ports %d and %d; want the first moved off %d to one the token may use, the second kept at %d",
							now, eps[1].Port, out, a.eps[1].Port)
					}
					if want := fmt.Sprintf(`msg="tunnel moved" tunnel=out port=%d token=scoped was=%d why=%q`, now, out, why); !strings.Contains(r.Log.String(), want) {
						t.Errorf("the relay did not log %s", want)
					}
					if want := fmt.Sprintf(`level=WARN msg="the relay moved a tunnel to another public port; clients connected on the old one carry on" relay=%s transport=%s name=out was=%s now=%s reason=%q`,
						r.Addr, kind, a.eps[0].URL(), eps[0].URL(), why); !strings.Contains(a.Log.String(), want) {
						t.Errorf("the agent did not log %s", want)
					}
					if st := a.Status(); st.Tunnels[0].Public != eps[0].URL() || st.Reconnects != 0 || !st.Connected {
						t.Errorf("the agent after its tunnel moved: %+v; want out at %s, the first session still up", st, eps[0].URL())
					}
					if err := onOut.finish(64 << 10); err != nil {
						t.Errorf("the moved tunnel's client in flight: %v", err)
					}
					if _, err := visit(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(now))), 2); err != nil {
						t.Errorf("the moved tunnel on its new port: %v", err)
					}
					if c, err := net.DialTimeout("tcp", a.Public(0), time.Second); err == nil {
						c.Close()
						t.Errorf("the old port %d still accepts clients after the move", out)
					}
				} else {
					if want := fmt.Sprintf(`msg="tunnel closed" tunnel=out port=%d token=scoped why=%q`, out, why); !strings.Contains(r.Log.String(), want) {
						t.Errorf("the relay did not log %s", want)
					}
					want := fmt.Sprintf("tunnel out (%s): %s", local, why)
					waitFor(t, "the agent to hear its tunnel closed", 10*time.Second, func() bool { return a.Status().Tunnels[0].Closed != "" })
					if st := a.Status(); st.Tunnels[0].Closed != want || st.Tunnels[0].Public != "" || st.Tunnels[1].Closed != "" || st.Reconnects != 0 || !st.Connected {
						t.Errorf("the agent after its tunnel out was closed: %+v; want out closed saying %q, fits-1 open, the first session still up", st, want)
					}
					if want := fmt.Sprintf(`level=WARN msg="the relay closed a tunnel; the others carry on" relay=%s transport=%s name=out local=%s code=forbidden reason=%q`,
						r.Addr, kind, local, why); !strings.Contains(a.Log.String(), want) {
						t.Errorf("the agent did not log %s", want)
					}
				}
				if err := sibling.finish(64 << 10); err != nil {
					t.Errorf("the agent's other tunnel's client in flight: %v", err)
				}
				if _, err := visit(a.Public(1), 2); err != nil {
					t.Errorf("the agent's other tunnel after the reload: %v", err)
				}
				if !c.moves {
					// A new session registers fits-1 alone, on its port,
					// which is no move.
					a.session().CloseWithError(0, "test: reconnect")
					waitFor(t, "the agent to reconnect", 20*time.Second, func() bool {
						st := a.Status()
						return st.Reconnects == 1 && st.Connected
					})
					if _, err := visit(a.Public(1), 2); err != nil {
						t.Errorf("the agent's other tunnel after a reconnect: %v", err)
					}
					if strings.Contains(a.Log.String(), "different public address") || strings.Contains(r.Log.String(), `msg="tunnel refused"`) {
						t.Errorf("after a reconnect, the agent warned of a move or registered the closed tunnel again:\nagent:\n%s\nrelay:\n%s", a.Log, r.Log)
					}
				}
				if err := held.finish(64 << 10); err != nil {
					t.Errorf("the other agent's client in flight: %v", err)
				}
				if st := other.Status(); st.Reconnects != 0 || !st.Connected {
					t.Errorf("the other agent, whose tunnel still fits: %+v, want its first session still up", st)
				}
			})
		}
	})
}

// An agent whose every tunnel the relay closed for good (CLOSED) stops:
// Run ends with the relay's reason, as a refusal at start would.
func TestAllTunnelsClosedEndsRun(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.StartEcho(t, "c:")
		a := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "gone"))
		rc := *r.Relay.config()
		rc.Tokens = []Token{{ID: "test", Secret: testSecret, Names: []string{"other-*"}}}
		if _, err := r.Relay.Reload(rc); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`tunnel gone (%s): its token "test"'s names rule no longer allows the name "gone"`, local)
		if err := a.wait(t, 20*time.Second); !isRefused(err, CodeForbidden) || err.Error() != want || !errors.Is(err, ErrLastTunnelClosed) {
			t.Errorf("Run returned %v, want a forbidden refusal %q that is ErrLastTunnelClosed", err, want)
		}
		if want := `msg="the relay closed the agent's last tunnel; stopping, and resetting its open connections"`; !strings.Contains(a.Log.String(), want) ||
			strings.Contains(a.Log.String(), "the others carry on") {
			t.Errorf("the agent did not log %s alone:\n%s", want, a.Log)
		}
		if strings.Contains(a.Log.String(), "reconnecting") {
			t.Errorf("the agent reconnected:\n%s", a.Log)
		}
	})
}

// An agent whose last tunnel a reload closed because it could not move (no
// port free) stops as for any other CLOSED of its last tunnel: it used to
// take no-port-free for a refusal worth a retry, reconnect, register
// nothing, and stay connected with no tunnel at all.
func TestLastTunnelClosedNoPortFreeEndsRun(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		free, pinned := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{free, free}, {pinned, pinned}} })
		local := proctest.StartEcho(t, "n:")
		pin := tokenAgent(r, kind, local, testSecret, "pin")
		pin.Tunnels[0].Ports = PortRange{pinned, pinned}
		liveAgentUp(t, pin)
		a := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "lone"))

		// Its port goes; the only one left is the pinned tunnel's.
		rc := *r.Relay.config()
		rc.Ports = PortSet{{pinned, pinned}}
		if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsClosed != 1 {
			t.Fatalf("Reload: %+v, %v; want one tunnel closed", res, err)
		}
		why := fmt.Sprintf("port %d is no longer among the relay's ports, and it could not move: every port it may use (%d) is in use", free, pinned)
		want := fmt.Sprintf("tunnel lone (%s): %s", local, why)
		if err := a.wait(t, 20*time.Second); !isRefused(err, CodeNoPortFree) || err.Error() != want {
			t.Errorf("Run returned %v, want a no-port-free refusal %q", err, want)
		}
		if strings.Contains(a.Log.String(), "reconnecting") {
			t.Errorf("the agent reconnected with no tunnel left:\n%s", a.Log)
		}
	})
}

// An agent refused on a tunnel after others registered, and so about to
// stop, says goodbye: the tunnels it had registered close at once rather
// than wait out the rejoin window for it.
func TestRefusedAgentLeavesNoTunnel(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(rc *RelayConfig) {
			rc.Tokens = []Token{{ID: "test", Secret: testSecret, Names: []string{"ok-*"}}}
			rc.RejoinWindow = time.Minute
		})
		local := proctest.StartEcho(t, "r:")
		cfg := tokenAgent(r, kind, local, testSecret, "")
		cfg.Tunnels = []TunnelSpec{{Name: "ok-1", Local: local}, {Name: "bad", Local: local}}
		if err := startAgent(t, cfg).wait(t, 20*time.Second); !isRefused(err, CodeForbidden) {
			t.Fatalf("Run: %v, want a refusal of the tunnel named bad", err)
		}
		if ts := r.Relay.Tunnels(); len(ts) != 0 {
			t.Errorf("tunnels left open by the refused agent: %+v", ts)
		}
		if want := `msg="tunnel closed" tunnel=ok-1`; !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}
	})
}

// An invalid configuration is refused with the reason, and nothing
// changes: the same config, sessions, tunnels and clients in flight.
func TestReloadInvalid(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.StartEcho(t, "v:")
		a := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "v"))
		held := hold(t, a.Public(0), 2)
		before := r.Relay.config()
		for _, tc := range []struct {
			mod  func(*RelayConfig)
			want string
		}{
			{func(c *RelayConfig) { c.Tokens = nil }, "relay: no tokens configured"},
			{func(c *RelayConfig) { c.Tokens = append(c.Tokens, Token{ID: "test", Secret: newSecret}) }, `relay: token id "test" is used twice`},
			{func(c *RelayConfig) { c.Tokens = []Token{{ID: "test", Secret: "short"}} }, `relay: token "test": secret is shorter than 16 characters`},
			{func(c *RelayConfig) { c.Ports = nil }, "relay: no public ports configured"},
			{func(c *RelayConfig) { c.Liveness = 0 }, "relay: liveness, answer timeout and lease lifetime must be positive"},
		} {
			cfg := *before
			cfg.Tokens = slices.Clone(cfg.Tokens)
			tc.mod(&cfg)
			if _, err := r.Relay.Reload(cfg); err == nil || err.Error() != tc.want {
				t.Errorf("Reload: %v, want %q", err, tc.want)
			}
		}
		if r.Relay.config() != before {
			t.Error("a refused Reload replaced the configuration")
		}
		if err := held.finish(64 << 10); err != nil {
			t.Errorf("client in flight across refused reloads: %v", err)
		}
		if st := a.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("agent %+v, want its first session still up", st)
		}
		if _, err := visit(a.Public(0), 2); err != nil {
			t.Error(err)
		}
		liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "v2"))
	})
}

// portsWithout is every port of harnessPorts but those given.
func portsWithout(ports ...uint16) PortSet {
	out := slices.Clone(harnessPorts)
	for _, p := range ports {
		var next PortSet
		for _, r := range out {
			if p < r.Low || p > r.High {
				next = append(next, r)
				continue
			}
			if p > r.Low {
				next = append(next, PortRange{r.Low, p - 1})
			}
			if p < r.High {
				next = append(next, PortRange{p + 1, r.High})
			}
		}
		out = next
	}
	return out
}

// A reload that takes tunnels' ports away from the relay's ports moves the
// tunnels without closing a session: every member of a group hears the
// new port by MOVED (OnReady runs again), a client connected on the old
// port carries on, the old port takes no new clients and its UDP flows
// end, the new port serves TCP and UDP, and the leases follow, so a
// reconnect keeps the new ports.
func TestReloadMovesPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.RejoinWindow = time.Minute })
		local, game := proctest.StartEcho(t, "m:"), startUDPEcho(t)
		cfg := r.agentConfig(kind, local)
		cfg.Tunnels = []TunnelSpec{{Name: "mv", Local: local}, {Name: "game", Local: game.Addr, Protos: ProtoUDP}}
		a := liveAgentUp(t, cfg)
		b := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "mv"))
		if b.eps[0].Port != a.eps[0].Port {
			t.Fatalf("the second agent of mv got port %d, not the group's %d", b.eps[0].Port, a.eps[0].Port)
		}
		held := hold(t, a.Public(0), 2)
		player := dialUDP(t, a.Public(1))
		udpEchoes(t, player, "before the move")

		cfg2 := *r.Relay.config()
		cfg2.Ports = portsWithout(a.eps[0].Port, a.eps[1].Port)
		res, err := r.Relay.Reload(cfg2)
		if err != nil || res.TunnelsMoved != 2 || res.SessionsClosed != 0 || res.TunnelsClosed != 0 {
			t.Fatalf("Reload: %+v, %v; want two tunnels moved, nothing closed", res, err)
		}
		a.waitReady(t)
		eps := a.waitReady(t) // one OnReady per tunnel moved
		if eps[0].Port == a.eps[0].Port || eps[1].Port == a.eps[1].Port || !cfg2.Ports.Contains(eps[0].Port) || !cfg2.Ports.Contains(eps[1].Port) {
			t.Fatalf("after the move, ports %d and %d (were %d and %d); want both moved into %s",
				eps[0].Port, eps[1].Port, a.eps[0].Port, a.eps[1].Port, cfg2.Ports)
		}
		if got := b.waitReady(t)[0].Port; got != eps[0].Port {
			t.Errorf("the group's other member heard port %d, want %d", got, eps[0].Port)
		}
		for _, x := range []*liveAgent{a, b} {
			if st := x.Status(); st.Reconnects != 0 || !st.Connected {
				t.Errorf("an agent after the move: %+v, want its first session still up", st)
			}
		}
		if want := fmt.Sprintf(`msg="tunnel moved" tunnel=mv port=%d token=test was=%d why="port %d is no longer among the relay's ports"`,
			eps[0].Port, a.eps[0].Port, a.eps[0].Port); !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}

		if err := held.finish(256 << 10); err != nil {
			t.Errorf("the client connected on the old port: %v", err)
		}
		newTCP := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(eps[0].Port)))
		tags := map[string]bool{}
		for range 4 {
			tag, err := visit(newTCP, 2)
			if err != nil {
				t.Fatalf("the new port: %v", err)
			}
			tags[tag] = true
		}
		if c, err := net.DialTimeout("tcp", a.Public(0), time.Second); err == nil {
			c.Close()
			t.Errorf("the old port %d still accepts clients after the move", a.eps[0].Port)
		}
		expectDropped(t, player, "a player on the old UDP port")
		udpEchoes(t, dialUDP(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(eps[1].Port)))), "on the new UDP port")

		// The leases moved: back after a lost session, the agent keeps
		// the new ports and sees no move.
		a.session().CloseWithError(0, "test: reconnect")
		waitFor(t, "the agent to reconnect", 20*time.Second, func() bool {
			st := a.Status()
			return st.Reconnects == 1 && st.Connected
		})
		if st := a.Status(); st.Tunnels[0].Public != eps[0].URL() || st.Tunnels[1].Public != eps[1].URL() {
			t.Errorf("after a reconnect: %+v; want the tunnels still at %s and %s", st.Tunnels, eps[0].URL(), eps[1].URL())
		}
		if strings.Contains(a.Log.String(), "different public address") {
			t.Errorf("after a reconnect the agent warned of a move:\n%s", a.Log)
		}
	})
}

// udpEchoes checks that a datagram sent from c comes back.
func udpEchoes(t *testing.T, c net.Conn, what string) {
	t.Helper()
	buf := make([]byte, 64)
	for try := 0; ; try++ {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == "ping" {
			return
		}
		if try == 4 {
			t.Fatalf("UDP %s: no echo (%d bytes, %v)", what, n, err)
		}
	}
}

// A reload that takes away the only port a tunnel's agent asked for closes
// that tunnel for good (moving it would break the agent's --port, asking
// again would be refused), saying what to do; the agent's other tunnel and
// session carry on.
func TestReloadClosesTunnelOnAskedPort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, _ := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = harnessPortsAnd(x) })
		local := proctest.StartEcho(t, "k:")
		cfg := r.agentConfig(kind, local)
		cfg.Tunnels = []TunnelSpec{{Name: "pinned", Local: local, Ports: PortRange{x, x}}, {Name: "free", Local: local}}
		a := liveAgentUp(t, cfg)
		sibling := hold(t, a.Public(1), 2)
		rc := *r.Relay.config()
		rc.Ports = portsWithout(x)
		res, err := r.Relay.Reload(rc)
		if err != nil || res.TunnelsClosed != 1 || res.TunnelsMoved != 0 || res.SessionsClosed != 0 {
			t.Fatalf("Reload: %+v, %v; want one tunnel closed, nothing moved, no session closed", res, err)
		}
		why := fmt.Sprintf("port %d is no longer among the relay's ports, and no port its agent asked for (%d) is left: ask for another --port, or none", x, x)
		if want := fmt.Sprintf(`msg="tunnel closed" tunnel=pinned port=%d token=test why=%q`, x, why); !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}
		want := fmt.Sprintf("tunnel pinned (%s): %s", local, why)
		waitFor(t, "the agent to hear its tunnel closed", 10*time.Second, func() bool { return a.Status().Tunnels[0].Closed != "" })
		if st := a.Status(); st.Tunnels[0].Closed != want || st.Tunnels[1].Closed != "" || st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent after its tunnel was closed: %+v; want pinned closed saying %q, free open, the first session up", st, want)
		}
		if err := sibling.finish(64 << 10); err != nil {
			t.Errorf("the other tunnel's client in flight: %v", err)
		}
	})
}

// A reloaded lease lifetime applies to the leases already held.
func TestReloadLeaseDuration(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, _ := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}} })
		local := proctest.StartEcho(t, "d:")
		a, err := leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		if _, err := leasedAgent(t, r, kind, "b", local, PortRange{x, x}); !isRefused(err, CodePortTaken) {
			t.Fatalf("b asking for a's leased port: %v, want port-taken", err)
		}
		cfg := *r.Relay.config()
		cfg.LeaseTTL = time.Millisecond
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // past the new lifetime
		if _, err := leasedAgent(t, r, kind, "b", local, PortRange{x, x}); err != nil {
			t.Fatalf("b asking for port %d after the lease lifetime was cut to 1ms: %v", x, err)
		}
	})
}

// A reload that takes ports away also closes the tunnels on them that are
// waiting out their rejoin window: the agent coming back (the same token
// and name) gets a port the relay still offers. The join check alone does
// the same should Reload ever miss such a tunnel ("join only": the ports
// are swapped without Reload).
func TestReloadClosesWaitingTunnel(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		for i, how := range []string{"reload", "join only"} {
			t.Run(how, func(t *testing.T) {
				// A block of ports per subtest: they run at once.
				base := 44000 + 4000*uint16(i)
				if kind == TransportTCP {
					base += 2000
				}
				before, after := PortSet{{base, base + 999}}, PortSet{{base + 1000, base + 1999}}
				r := startRelayWith(t, func(c *RelayConfig) {
					c.Ports = before
					c.RejoinWindow = time.Minute
					fastLivenessRelay(c)
				}, fastLivenessOpts)
				local := proctest.StartEcho(t, "w:")
				p := newProxy(t, kind, r.Addr)
				cfg := r.agentConfig(kind, local)
				cfg.Relay = p.Addr()
				fastRetry(&cfg)
				fastLivenessAgent(&cfg)
				old := liveAgentUp(t, cfg).eps[0].Port

				p.Cut()
				waitFor(t, "the relay to lose the agent", 20*time.Second, func() bool { return agentCount(r.Relay) == 0 })
				if n := len(r.Relay.Tunnels()); n != 1 {
					t.Fatalf("%d tunnels after the agent vanished, want 1 waiting for it", n)
				}
				rc := *r.Relay.config()
				rc.Ports = after
				if how == "reload" {
					if _, err := r.Relay.Reload(rc); err != nil {
						t.Fatal(err)
					}
					if ts := r.Relay.Tunnels(); len(ts) != 0 {
						t.Fatalf("after a reload to ports %s, tunnels still open: %+v", after, ts)
					}
					want := fmt.Sprintf(`msg="tunnel closed" tunnel=%s port=%d token=test why="port %d is no longer among the relay's ports"`,
						cfg.Tunnels[0].Name, old, old)
					if !strings.Contains(r.Log.String(), want) {
						t.Errorf("the relay did not log %s", want)
					}
					if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(old))), time.Second); err == nil {
						c.Close()
						t.Errorf("port %d still accepts clients after the reload", old)
					}
				} else {
					r.Relay.mu.Lock()
					r.Relay.cfg.Store(&rc)
					r.Relay.mu.Unlock()
				}

				back := liveAgentUp(t, r.agentConfig(kind, local))
				if got := back.eps[0].Port; !after.Contains(got) {
					t.Fatalf("after the ports became %s, the returning tunnel got port %d (it had %d)", after, got, old)
				}
				if _, err := visit(back.Public(0), 2); err != nil {
					t.Error(err)
				}
			})
		}
	})
}

// A lease on a port the relay no longer offers is not handed out again:
// the tunnel gets a port from the new ones.
func TestReloadLeaseOutsidePorts(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, y := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}} })
		local := proctest.StartEcho(t, "o:")
		a, err := leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		stopAgent(t, r, a)
		cfg := *r.Relay.config()
		cfg.Ports = PortSet{{y, y}}
		if _, err := r.Relay.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		a, err = leasedAgent(t, r, kind, "a", local, PortRange{})
		if err != nil {
			t.Fatal(err)
		}
		if got := a.eps[0].Port; got != y {
			t.Fatalf("after the ports became %d, the tunnel leased %d got %d", y, x, got)
		}
	})
}

// Should a tunnel with agents be left on a port the relay no longer offers
// (Reload moves them; here the ports are swapped without it), another
// agent is not let in to join it there: it is told to try again.
func TestJoinRefusesPortGone(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, y := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{x, x}} })
		local := proctest.StartEcho(t, "g:")
		cfg := r.agentConfig(kind, local)
		liveAgentUp(t, cfg)
		rc := *r.Relay.config()
		rc.Ports = PortSet{{y, y}}
		r.Relay.mu.Lock()
		r.Relay.cfg.Store(&rc)
		r.Relay.mu.Unlock()

		// The same name: it would join. Refused for now, it retries, and
		// says it was refused rather than that the relay is silent.
		cfg.WaitForRelay = true
		fastRetry(&cfg)
		joiner := startAgent(t, cfg)
		want := fmt.Sprintf(`code=shutdown reason="tunnel %s is on port %d, outside the ports this relay allows (%d): try again once it has moved"`,
			cfg.Tunnels[0].Name, x, y)
		waitFor(t, "the relay to refuse the joining agent", 10*time.Second, func() bool { return strings.Contains(r.Log.String(), want) })
		if ts := r.Relay.Tunnels(); len(ts) != 1 || len(ts[0].Members) != 1 {
			t.Fatalf("tunnels %+v, want the first agent's alone", ts)
		}
		want = fmt.Sprintf(`level=WARN msg="the relay refused for now; retrying with backoff" relay=%s err="tunnel %s (%s): tunnel %s is on port %d`,
			r.Addr, cfg.Tunnels[0].Name, local, cfg.Tunnels[0].Name, x)
		waitFor(t, "the joining agent to say it was refused", 10*time.Second, func() bool { return strings.Contains(joiner.Log.String(), want) })
		if strings.Contains(joiner.Log.String(), "not answering") {
			t.Errorf("the joining agent called a relay that refused it silent:\n%s", joiner.Log)
		}
	})
}

// A tunnel shared by two agents waits out its rejoin window for either:
// when one of them comes back only to leave (a reload while both were away
// ruled out its other tunnel, which it registers first, and it stops on
// that refusal), the tunnel stays open for the other one, which vanished
// without a goodbye too, and a client that comes meanwhile is carried by
// that one once it is back.
func TestGroupWaitsForEveryAgentThatVanished(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelayWith(t, func(c *RelayConfig) {
			c.RejoinWindow = time.Minute
			fastLivenessRelay(c)
		}, fastLivenessOpts)
		p, pb := newProxy(t, kind, r.Addr), newProxy(t, kind, r.Addr)
		a := groupAgent(t, p.Addr(), r, kind, proctest.StartEcho(t, "A:"), fastLivenessAgent)
		b := groupAgent(t, pb.Addr(), r, kind, proctest.StartEcho(t, "B:"), func(c *AgentConfig) {
			fastLivenessAgent(c)
			// Its other tunnel first: refused on its return, it stops
			// before it registers grp again.
			c.Tunnels = append([]TunnelSpec{{Name: "other", Local: c.Tunnels[0].Local}}, c.Tunnels...)
		})
		public := a.Public(0)
		if got := b.Public(1); got != public {
			t.Fatalf("B's grp is %s, A's %s: not one group", got, public)
		}

		// A, then B, vanish without a goodbye: grp waits for them.
		p.Cut()
		waitFor(t, "the relay to lose A", 20*time.Second, func() bool { return agentCount(r.Relay) == 1 })
		pb.Cut()
		waitFor(t, "the relay to lose B", 20*time.Second, func() bool { return agentCount(r.Relay) == 0 })

		// Meanwhile B's other tunnel is ruled out. B comes back, is
		// refused on "other", and stops.
		rc := *r.Relay.config()
		rc.Tokens = []Token{{ID: "test", Secret: testSecret, Names: []string{"grp"}}}
		if _, err := r.Relay.Reload(rc); err != nil {
			t.Fatal(err)
		}
		pb.Restore()
		if err := b.wait(t, 20*time.Second); !isRefused(err, CodeForbidden) {
			t.Fatalf("B's Run: %v, want the refusal of its tunnel named other", err)
		}
		if strings.Contains(r.Log.String(), "its agent came back only to leave") {
			t.Error("grp closed when B came back only to leave, though A, gone without a goodbye too, may still return")
		}

		// A client now is held for A's return, and carried by it.
		got := make(chan error, 1)
		go func() {
			tag, err := visit(public, 2)
			if err == nil && tag != "A:" {
				err = fmt.Errorf("served by %q, want A", tag)
			}
			got <- err
		}()
		time.Sleep(200 * time.Millisecond)
		p.Restore()
		if err := <-got; err != nil {
			t.Errorf("a client of grp while A was on its way back: %v", err)
		}
	})
}

// A reload that moves a tunnel keeps it within the --port range of a
// member that vanished without a goodbye and may still come back, as it
// does for the members it holds: P asked for x-y, F for any port; P is
// away when the reload takes its port, and back, P joins the tunnel on the
// port it moved to, rather than be refused it for as long as F holds it.
func TestReloadMoveKeepsVanishedAgentsRange(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) { moveWithAgentAway(t, kind, false) })
}

// An agent away is no reason to break a lease, though: when the port left
// in its range is leased to another tunnel, and other ports are free, the
// tunnel moves to one of those, and the lease stays.
func TestReloadMoveTakesNoLeaseForVanishedAgent(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) { moveWithAgentAway(t, kind, true) })
}

func moveWithAgentAway(t *testing.T, kind string, leased bool) {
	x, y := twoFreePorts(t)
	// x and y, and none between them: P's range x-y holds two ports of
	// the relay's, F's any of them.
	elsewhere := harnessPorts[0]
	r := startRelayWith(t, func(c *RelayConfig) {
		c.Ports = PortSet{elsewhere, {x, x}, {y, y}}
		c.RejoinWindow = time.Minute
		fastLivenessRelay(c)
	}, fastLivenessOpts)
	local := proctest.StartEcho(t, "v:")
	p := newProxy(t, kind, r.Addr)
	pc := tokenAgent(r, kind, local, testSecret, "shared")
	pc.Relay = p.Addr()
	pc.Tunnels[0].Ports = PortRange{x, y}
	fastLivenessAgent(&pc)
	pinned := liveAgentUp(t, pc)
	was := pinned.eps[0].Port
	other := x + y - was
	fc := tokenAgent(r, kind, local, testSecret, "shared")
	fastLivenessAgent(&fc)
	free := liveAgentUp(t, fc)
	if free.eps[0].Port != was {
		t.Fatalf("the second agent got port %d, not the group's %d", free.eps[0].Port, was)
	}
	if leased {
		held, err := leasedAgent(t, r, kind, "held", local, PortRange{other, other})
		if err != nil {
			t.Fatal(err)
		}
		held.Stop()
		waitFor(t, "the relay to close held", 10*time.Second, func() bool { return len(r.Relay.Tunnels()) == 1 })
	}

	p.Cut()
	waitFor(t, "the relay to lose the agent that asked for x-y", 20*time.Second, func() bool { return agentCount(r.Relay) == 1 })
	rc := *r.Relay.config()
	rc.Ports = PortSet{elsewhere, {other, other}}
	if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsMoved != 1 || res.TunnelsClosed != 0 {
		t.Fatalf("Reload: %+v, %v; want the tunnel moved", res, err)
	}
	now := free.waitReady(t)[0].Port
	if leased {
		if now == other || !elsewhere.Contains(now) {
			t.Errorf("the tunnel moved to port %d, want one of %s: %d is leased to held", now, elsewhere, other)
		}
		if l, ok := leasesHeld(r.Relay)["held"]; !ok || l.Port != other {
			t.Errorf("held's lease: %+v, %v; want it kept, on %d", l, ok, other)
		}
		return
	}
	if now != other {
		t.Errorf("the tunnel moved to port %d, want %d, the one left of x-y (%d-%d), which the agent away asked for", now, other, x, y)
	}

	p.Restore()
	// Its status, not the tunnel's members alone: the relay counts the
	// member as it answers the agent's REGISTER, a moment before the
	// agent reads the answer and calls itself connected.
	want := fmt.Sprintf("tcp://127.0.0.1:%d", other)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, ts := pinned.Status(), r.Relay.Tunnels()
		if st.Connected && st.Tunnels[0].Public == want && len(ts) == 1 && len(ts[0].Members) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent that asked for x-y: %+v, want it back on port %d, in the tunnel beside the other (tunnels: %+v)", st, other, ts)
		}
	}
	if strings.Contains(pinned.Log.String(), "refused") {
		t.Errorf("the agent that asked for x-y was refused on its way back:\n%s", pinned.Log)
	}
}

// Two reloads in a row that each move a tunnel send its agent two MOVEDs;
// whatever order they go out in, the agent ends up with the port the
// relay serves the tunnel on.
func TestReloadMovesTwiceInARow(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, tokenAgent(r, kind, proctest.StartEcho(t, "t:"), testSecret, "twice"))
		gone := []uint16{a.eps[0].Port}
		for range 10 {
			for range 2 {
				rc := *r.Relay.config()
				rc.Ports = portsWithout(gone...)
				if _, err := r.Relay.Reload(rc); err != nil {
					t.Fatal(err)
				}
				gone = append(gone, r.Relay.Tunnels()[0].Port)
			}
			want := fmt.Sprintf("tcp://127.0.0.1:%d", gone[len(gone)-1])
			waitFor(t, "the agent to hear the latest port", 5*time.Second, func() bool { return a.Status().Tunnels[0].Public == want })
		}
	})
}

// A tunnel's UDP drop count is the tunnel's since it opened: a move to
// another port does not set it back to zero (the metric is a counter).
func TestReloadMoveKeepsUDPDrops(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.MaxFlows = 1 })
		game := startUDPEcho(t)
		a := liveAgentUp(t, r.udpAgentConfig(kind, ProtoUDP, game.Addr))
		udpEchoes(t, dialUDP(t, a.Public(0)), "the first player")
		expectDropped(t, dialUDP(t, a.Public(0)), "a player over the flow cap")
		before := r.Relay.Tunnels()[0].UDPDrops
		if before == 0 {
			t.Fatal("no drop counted for the player over the flow cap")
		}
		rc := *r.Relay.config()
		rc.Ports = portsWithout(a.eps[0].Port)
		if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsMoved != 1 {
			t.Fatalf("Reload: %+v, %v; want the tunnel moved", res, err)
		}
		if ts := r.Relay.Tunnels(); ts[0].UDPDrops < before {
			t.Errorf("after the move the tunnel counts %d UDP drops, before it %d", ts[0].UDPDrops, before)
		}
	})
}

// A reload that moves a tunnel while its agent is still registering its
// other tunnels does not end the agent's session (here its first, which
// would have ended Run): the MOVED read before a REGISTERED is applied,
// and the agent goes live with the tunnel's new port.
func TestReloadMovesWhileRegistering(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		local := proctest.StartEcho(t, "w:")
		cfg := tokenAgent(r, kind, local, testSecret, "")
		cfg.Tunnels = nil
		for i := range 8 {
			cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: fmt.Sprintf("reg%d", i), Local: local})
		}
		a := startAgent(t, cfg)
		// Polled without a pause: the agent registers the others at once.
		var first uint16
		for deadline := time.Now().Add(10 * time.Second); first == 0 && time.Now().Before(deadline); {
			r.Relay.mu.Lock()
			if g := r.Relay.groups[leaseKey{"test", "reg0"}]; g != nil {
				first = g.port
			}
			r.Relay.mu.Unlock()
		}
		rc := *r.Relay.config()
		rc.Ports = portsWithout(first)
		if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsMoved != 1 {
			t.Fatalf("Reload: %+v, %v; want reg0 moved", res, err)
		}
		a.waitReady(t)
		var want string
		for _, ti := range r.Relay.Tunnels() {
			if ti.Name == "reg0" {
				want = fmt.Sprintf("tcp://127.0.0.1:%d", ti.Port)
			}
		}
		waitFor(t, "the agent to have reg0's new port", 5*time.Second, func() bool { return a.Status().Tunnels[0].Public == want })
		if st := a.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent after reg0 moved: %+v, want its first session still up", st)
		}
	})
}

// A tunnel whose port a reload takes away and that finds no free port to
// move to is closed alone (CLOSED, no-port-free), not with its agent's
// session: the agent's other tunnel moves and its client carries on, the
// closed tunnel's client in flight finishes, and the closed tunnel leaves
// the agent's endpoints, so later moves print no dead address.
func TestReloadNoPortToMoveTo(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		a1, a2 := twoFreePorts(t)
		pinned, spare := twoFreePorts(t)
		for pinned == a1 || pinned == a2 || spare == a1 || spare == a2 {
			pinned, spare = twoFreePorts(t)
		}
		r := startRelay(t, func(c *RelayConfig) { c.Ports = PortSet{{a1, a1}, {a2, a2}, {pinned, pinned}} })
		local := proctest.StartEcho(t, "f:")
		pin := tokenAgent(r, kind, local, testSecret, "pin")
		pin.Tunnels[0].Ports = PortRange{pinned, pinned}
		liveAgentUp(t, pin)
		cfg := r.agentConfig(kind, local)
		cfg.Tunnels = []TunnelSpec{{Name: "one", Local: local}, {Name: "two", Local: local}}
		a := liveAgentUp(t, cfg)
		held := []*heldClient{hold(t, a.Public(0), 2), hold(t, a.Public(1), 2)}

		// Both lose their ports; one free port is left, for one of them.
		rc := *r.Relay.config()
		rc.Ports = PortSet{{min(pinned, spare), min(pinned, spare)}, {max(pinned, spare), max(pinned, spare)}}
		res, err := r.Relay.Reload(rc)
		if err != nil || res.TunnelsMoved != 1 || res.TunnelsClosed != 1 || res.SessionsClosed != 0 {
			t.Fatalf("Reload: %+v, %v; want one tunnel moved, one closed, no session closed", res, err)
		}
		waitFor(t, "the agent to hear both", 10*time.Second, func() bool {
			st := a.Status()
			return (st.Tunnels[0].Closed != "") != (st.Tunnels[1].Closed != "") &&
				(st.Tunnels[0].Public == "tcp://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(int(spare))) ||
					st.Tunnels[1].Public == "tcp://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(int(spare))))
		})
		closed, moved := 0, 1
		if a.Status().Tunnels[1].Closed != "" {
			closed, moved = 1, 0
		}
		name, old := cfg.Tunnels[closed].Name, a.eps[closed].Port
		why := fmt.Sprintf("port %d is no longer among the relay's ports, and it could not move: every port it may use (%s) is in use", old, rc.Ports)
		if want := fmt.Sprintf(`msg="tunnel closed" tunnel=%s port=%d token=test why=%q`, name, old, why); !strings.Contains(r.Log.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}
		if want := fmt.Sprintf(`msg="the relay closed a tunnel; the others carry on" relay=%s transport=%s name=%s local=%s code=no-port-free reason=%q`,
			r.Addr, kind, name, local, why); !strings.Contains(a.Log.String(), want) {
			t.Errorf("the agent did not log %s", want)
		}
		if st := a.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent after the reload: %+v, want its first session still up", st)
		}
		a.mu.Lock()
		eps := slices.Clone(a.endpoints)
		a.mu.Unlock()
		if len(eps) != 1 || eps[0].Name != cfg.Tunnels[moved].Name || eps[0].Port != spare {
			t.Errorf("the agent's endpoints after the reload: %+v; want %s alone, on port %d", eps, cfg.Tunnels[moved].Name, spare)
		}
		for i, h := range held {
			if err := h.finish(64 << 10); err != nil {
				t.Errorf("the client in flight on %s: %v", cfg.Tunnels[i].Name, err)
			}
		}
	})
}

// A CLOSED that reaches the agent while it still registers its other
// tunnels (a reload's names rule closes the first) is applied once
// registration ends: the tunnel is closed, the others go live on the same
// session, and the agent does not take the CLOSED for a bad answer.
func TestReloadClosesWhileRegistering(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(rc *RelayConfig) { rc.Tokens = append(rc.Tokens, Token{ID: "scoped", Secret: chgSecret}) })
		local := proctest.StartEcho(t, "c:")
		cfg := tokenAgent(r, kind, local, chgSecret, "")
		cfg.Tunnels = []TunnelSpec{{Name: "gone", Local: local}}
		for i := range 8 {
			cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: fmt.Sprintf("keep%d", i), Local: local})
		}
		a := startAgent(t, cfg)
		// Polled without a pause: the agent registers the others at once.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			r.Relay.mu.Lock()
			g := r.Relay.groups[leaseKey{"scoped", "gone"}]
			r.Relay.mu.Unlock()
			if g != nil {
				break
			}
		}
		rc := *r.Relay.config()
		rc.Tokens = slices.Clone(rc.Tokens)
		rc.Tokens[len(rc.Tokens)-1].Names = []string{"keep*"}
		if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsClosed != 1 {
			t.Fatalf("Reload: %+v, %v; want gone closed", res, err)
		}
		// The CLOSED may also come after registration, on a loaded
		// machine: then gone is live first, and closed right after.
		eps := a.waitReady(t)
		if n := len(eps); n != 8 && n != 9 || eps[n-8].Name != "keep0" {
			t.Errorf("live after the reload: %+v; want keep0-keep7 (and gone, had registration ended first)", eps)
		}
		waitFor(t, "the agent to have gone closed", 5*time.Second, func() bool { return a.Status().Tunnels[0].Closed != "" })
		if st := a.Status(); st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent after gone was closed: %+v, want its first session still up", st)
		}
	})
}

// A reload during a Shutdown's drain that takes a tunnel's port away
// neither moves the tunnel (the relay opens no port while it stops) nor
// closes its agent's session: the clients in flight finish, as the drain
// promised.
func TestReloadDuringDrain(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		a := liveAgentUp(t, tokenAgent(r, kind, proctest.StartEcho(t, "d:"), testSecret, "drn"))
		held := hold(t, a.Public(0), 2)
		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			shut <- r.Relay.Shutdown(ctx)
		}()
		waitFor(t, "the agent to hear DRAIN", 10*time.Second, func() bool {
			return strings.Contains(a.Log.String(), "the relay is shutting down: clients in flight continue")
		})
		rc := *r.Relay.config()
		rc.Ports = portsWithout(a.eps[0].Port)
		res, err := r.Relay.Reload(rc)
		if err != nil || res.TunnelsMoved != 0 || res.SessionsClosed != 0 {
			t.Errorf("Reload while draining: %+v, %v; want nothing moved, no session closed", res, err)
		}
		if err := held.finish(64 << 10); err != nil {
			t.Errorf("the client in flight across the drain and the reload: %v", err)
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

// A move's new lease is on disk before the agent hears the new port, as a
// new tunnel's is before its REGISTERED: a relay killed right after still
// gives the agent that port when it comes back.
func TestReloadMoveSavesLease(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		leases := filepath.Join(t.TempDir(), "leases.json")
		r := startRelay(t, func(c *RelayConfig) { c.LeaseFile = leases })
		a := liveAgentUp(t, tokenAgent(r, kind, proctest.StartEcho(t, "s:"), testSecret, "saved"))
		rc := *r.Relay.config()
		rc.Ports = portsWithout(a.eps[0].Port)
		if res, err := r.Relay.Reload(rc); err != nil || res.TunnelsMoved != 1 {
			t.Fatalf("Reload: %+v, %v; want the tunnel moved", res, err)
		}
		// As Reload returns: its MOVED may be out already.
		data, _ := os.ReadFile(leases)
		now := a.waitReady(t)[0].Port
		var f leaseFile
		if err := json.Unmarshal(data, &f); err != nil || len(f.Leases) != 1 || f.Leases[0].Port != now {
			t.Errorf("the lease file as Reload returned, the tunnel moved to %d: %s (%v)", now, data, err)
		}
	})
}

// A reload that takes away the only port one member of a tunnel asked for
// closes the tunnel for that member alone; it moves for the member that
// asked for any port, which carries on.
func TestReloadMovesTunnelWithoutPinnedMember(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		x, _ := twoFreePorts(t)
		r := startRelay(t, func(c *RelayConfig) { c.Ports = harnessPortsAnd(x) })
		local := proctest.StartEcho(t, "p:")
		pc := tokenAgent(r, kind, local, testSecret, "shared")
		pc.Tunnels[0].Ports = PortRange{x, x}
		pinned := liveAgentUp(t, pc)
		free := liveAgentUp(t, tokenAgent(r, kind, local, testSecret, "shared"))
		if free.eps[0].Port != x {
			t.Fatalf("the second agent got port %d, not the group's %d", free.eps[0].Port, x)
		}
		rc := *r.Relay.config()
		rc.Ports = portsWithout(x)
		res, err := r.Relay.Reload(rc)
		if err != nil || res.TunnelsMoved != 1 || res.TunnelsClosed != 0 || res.SessionsClosed != 0 {
			t.Fatalf("Reload: %+v, %v; want the tunnel moved, nothing closed", res, err)
		}
		want := fmt.Sprintf("tunnel shared (%s): port %d is no longer among the relay's ports, and no port its agent asked for (%d) is left: ask for another --port, or none", local, x, x)
		if err := pinned.wait(t, 20*time.Second); !isRefused(err, CodeForbidden) || err.Error() != want {
			t.Errorf("the pinned agent's Run: %v, want a forbidden refusal %q", err, want)
		}
		now := free.waitReady(t)[0].Port
		if now == x {
			t.Fatalf("the free agent still has port %d", x)
		}
		if st := free.Status(); st.Tunnels[0].Closed != "" || st.Reconnects != 0 || !st.Connected {
			t.Errorf("the agent that asked for any port: %+v, want its tunnel open on its first session", st)
		}
		if ts := r.Relay.Tunnels(); len(ts) != 1 || ts[0].Port != now || len(ts[0].Members) != 1 {
			t.Errorf("tunnels %+v, want shared on %d with one member", ts, now)
		}
	})
}
