package tunnel

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// ReloadResult says what a Reload changed.
type ReloadResult struct {
	TokensAdded, TokensRemoved, TokensChanged []string
	// SessionsClosed counts agent sessions closed because their token was
	// revoked or changed, or their tunnel's port left the relay's ports.
	SessionsClosed int
	// NeedsRestart names settings that changed but apply only at start.
	NeedsRestart []string
}

// Reload applies cfg to the running relay. Tunnels whose token and port
// are untouched carry on undisturbed. Sessions of a revoked token are closed
// for good (the agent is told its token is no longer accepted); sessions of
// a changed token, or with a tunnel on a port the relay no longer offers,
// are closed with a temporary error, so their agents reconnect at once and
// are judged by the new rules (keeping their ports where those allow).
// Tunnels waiting for their agents to return close too when their token
// changed or their port is no longer offered. An invalid cfg changes
// nothing.
func (r *Relay) Reload(cfg RelayConfig) (ReloadResult, error) {
	var res ReloadResult
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	cfg.Tokens = slices.Clone(cfg.Tokens)
	old := r.config()
	cfg.Logger = old.Logger
	for _, c := range []struct {
		name    string
		changed bool
	}{
		{"bind host", cfg.BindHost != old.BindHost},
		{"max pending sessions", cfg.MaxPendingSessions != old.MaxPendingSessions},
		{"lease file", cfg.LeaseFile != old.LeaseFile},
	} {
		if c.changed {
			res.NeedsRestart = append(res.NeedsRestart, c.name)
		}
	}
	// Those keep their running values.
	cfg.BindHost, cfg.MaxPendingSessions, cfg.LeaseFile = old.BindHost, old.MaxPendingSessions, old.LeaseFile

	oldTok := map[string]Token{}
	for _, t := range old.Tokens {
		oldTok[t.ID] = t
	}
	newTok := map[string]Token{}
	for _, t := range cfg.Tokens {
		newTok[t.ID] = t
		o, ok := oldTok[t.ID]
		switch {
		case !ok:
			res.TokensAdded = append(res.TokensAdded, t.ID)
		case !reflect.DeepEqual(o, t):
			res.TokensChanged = append(res.TokensChanged, t.ID)
		}
	}
	for id := range oldTok {
		if _, ok := newTok[id]; !ok {
			res.TokensRemoved = append(res.TokensRemoved, id)
		}
	}
	sort.Strings(res.TokensAdded)
	sort.Strings(res.TokensRemoved)
	sort.Strings(res.TokensChanged)

	type kick struct {
		a    *agentConn
		code ErrorCode
		text string
	}
	var kicks []kick
	r.mu.Lock()
	r.tokens = tokenStates(cfg.Tokens, r.tokens)
	r.cfg.Store(&cfg)
	// A new lease lifetime applies to the leases held now as well.
	r.leases.ttl = cfg.LeaseTTL
	// Tokens are known by their secret: one whose secret is gone is
	// revoked, one whose rules (or id) changed is a new token state.
	for a := range r.agents {
		if ref := r.tokenCurrentLocked(a); ref != nil {
			kicks = append(kicks, kick{a, ref.Code, ref.Text})
			continue
		}
		for _, m := range a.members {
			if !cfg.Ports.Contains(m.g.port) {
				kicks = append(kicks, kick{a, CodeShutdown, fmt.Sprintf("port %d is no longer among the relay's ports; reconnect for another", m.g.port)})
				break
			}
		}
	}
	// Tunnels of the closed sessions go at once, without the rejoin window:
	// the rules they opened under no longer hold. Their leases stay.
	for _, k := range kicks {
		r.dropMembersLocked(k.a, true)
	}
	for _, g := range r.groups {
		switch {
		case r.tokens[KeyID(g.token.tok.Secret)] != g.token:
			r.closeGroupLocked(g, "its token changed")
		case !cfg.Ports.Contains(g.port):
			// A tunnel waiting out its rejoin window has no session to
			// close above: its agent, back, must get a port on offer.
			why := fmt.Sprintf("port %d is no longer among the relay's ports", g.port)
			g.log.Warn("closing tunnel after reload", "reason", why)
			r.closeGroupLocked(g, why)
		}
	}
	if !reflect.DeepEqual(cfg.Clients, old.Clients) {
		for _, g := range r.groups {
			g.rebuildGateLocked()
		}
	}
	// Counted while their sessions, still in r.agents, hold Serve's wait
	// group above zero.
	r.wg.Add(len(kicks))
	r.mu.Unlock()

	for _, k := range kicks {
		k.a.log.Warn("closing agent session after reload", "reason", k.text)
		go func() {
			defer r.wg.Done()
			k.a.closeAfterNotice(k.code, k.text)
		}()
	}
	res.SessionsClosed = len(kicks)
	r.log.Info("configuration reloaded",
		"tokens_added", strings.Join(res.TokensAdded, ","), "tokens_removed", strings.Join(res.TokensRemoved, ","),
		"tokens_changed", strings.Join(res.TokensChanged, ","), "sessions_closed", res.SessionsClosed)
	return res, nil
}

// closeAfterNotice tells the agent why its session ends, then closes the
// session once the agent has closed it (it does on reading the ERROR) or a
// second has passed. Closing at once could lose the ERROR: QUIC sends its
// CONNECTION_CLOSE ahead of stream data still queued, and the agent would
// then see a bare close, reconnect, and learn only "token not accepted".
func (a *agentConn) closeAfterNotice(code ErrorCode, text string) {
	a.notice(&Error{Code: code, Text: text})
	t := time.NewTimer(time.Second)
	select {
	case <-a.sess.Done():
	case <-t.C:
	}
	t.Stop()
	a.sess.CloseWithError(uint64(code), text)
}
