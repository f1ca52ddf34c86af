package tunnel

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// ReloadResult says what a Reload changed.
type ReloadResult struct {
	TokensAdded, TokensRemoved, TokensChanged []string
	// TokensRenamed lists "old->new" for each token whose secret stayed
	// and whose id changed: its sessions, tunnels and leases carry on
	// under the new id.
	TokensRenamed []string
	// SessionsClosed counts agent sessions closed because their token was
	// revoked or given another secret.
	SessionsClosed int
	// TunnelsMoved counts tunnels moved to another port because the new
	// rules took theirs away.
	TunnelsMoved int
	// TunnelsClosed counts tunnels closed because the new rules rule them
	// out: their token's, or the relay's ports.
	TunnelsClosed int
	// NeedsRestart names settings that changed but apply only at start.
	NeedsRestart []string
}

// Reload applies cfg to the running relay. A token's limits (connections,
// tunnels, per-IP client limits) change in place: its sessions and clients
// carry on, and so do they when it keeps its secret under a new id: its
// tunnels and their port leases are renamed with it. Sessions of a token
// revoked or given a new secret are closed for good (the agent is told
// why). A tunnel whose port the new rules take away
// (its token's or the relay's ports) moves: it listens on another port from
// then on, its agents hear the new one by MOVED, and its clients connected
// on the old port carry on; an agent of it that asked only for ports taken
// away is told by CLOSED that it is out of it for good. A tunnel the new
// rules no longer allow closes alone, by CLOSED to its agents, whose
// sessions and other tunnels carry on: one its token's names or udp rule
// forbids, whose agents all asked for ports taken away, or that found no
// free port to move to. Tunnels waiting for their agents
// to return close when ruled out; during a Shutdown's drain, a tunnel whose
// port is taken away is left to the drain. An invalid cfg changes nothing.
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

	oldTok, oldBySecret := map[string]Token{}, map[string]Token{}
	for _, t := range old.Tokens {
		oldTok[t.ID], oldBySecret[t.Secret] = t, t
	}
	newTok, newBySecret := map[string]Token{}, map[string]Token{}
	for _, t := range cfg.Tokens {
		newTok[t.ID], newBySecret[t.Secret] = t, t
	}
	// A token is its secret: the relay keeps its state by it. An id whose
	// secret changed is a token given a new secret only when its old
	// secret went; one a renamed token took names another token.
	rotated := func(id string) bool {
		o, inOld := oldTok[id]
		t, inNew := newTok[id]
		if !inOld || !inNew {
			return false
		}
		_, oldKept := newBySecret[o.Secret]
		_, newKnown := oldBySecret[t.Secret]
		return !oldKept && !newKnown
	}
	// renamed maps the old id of each token that kept its secret under a
	// new id to the new one.
	renamed := map[string]string{}
	for _, t := range cfg.Tokens {
		o, kept := oldBySecret[t.Secret]
		switch {
		case kept && o.ID != t.ID:
			renamed[o.ID] = t.ID
			res.TokensRenamed = append(res.TokensRenamed, o.ID+"->"+t.ID)
			if o.ID = t.ID; !reflect.DeepEqual(o, t) {
				res.TokensChanged = append(res.TokensChanged, t.ID)
			}
		case kept:
			if !reflect.DeepEqual(o, t) {
				res.TokensChanged = append(res.TokensChanged, t.ID)
			}
		case rotated(t.ID):
			res.TokensChanged = append(res.TokensChanged, t.ID)
		default:
			res.TokensAdded = append(res.TokensAdded, t.ID)
		}
	}
	for _, o := range old.Tokens {
		if _, kept := newBySecret[o.Secret]; !kept && !rotated(o.ID) {
			res.TokensRemoved = append(res.TokensRemoved, o.ID)
		}
	}
	sort.Strings(res.TokensAdded)
	sort.Strings(res.TokensRemoved)
	sort.Strings(res.TokensChanged)
	sort.Strings(res.TokensRenamed)

	type kick struct {
		a      *agentConn
		code   ErrorCode
		text   string
		tunnel uint32
		name   string // the tunnel's, for a CLOSED
	}
	var kicks []kick
	r.mu.Lock()
	r.tokens = tokenStates(cfg.Tokens, r.tokens)
	r.cfg.Store(&cfg)
	// A new lease lifetime applies to the leases held now as well.
	r.leases.ttl = cfg.LeaseTTL
	// A tunnel the new rules rule out closes at once, whether agents carry
	// it or it waits out its rejoin window. Limits change in place: a
	// lowered cap refuses new clients or tunnels, and keeps those open.
	closing := map[*group]ruling{}
	moved := map[*group]bool{}
	// stranded are the members of moved tunnels whose agents asked only
	// for ports taken away: closed for good, each alone.
	stranded := map[*member]ruling{}
	for _, g := range r.groups {
		why := r.ruledOutLocked(g)
		if why.text == "" {
			continue
		}
		if why.port && r.closing {
			// The relay is stopping: its public ports are closed already,
			// and it opens no other; closing the sessions would cut the
			// clients its drain lets finish.
			continue
		}
		if why.port && len(g.members) > 0 {
			out, err := r.moveLocked(g, why.text)
			if err == nil {
				moved[g] = true
				res.TunnelsMoved++
				for _, m := range out {
					stranded[m] = ruling{text: fmt.Sprintf("%s, and no port its agent asked for (%s) is left: ask for another --port, or none", why.text, m.want), forbidden: true}
				}
				continue
			}
			// Closed alone, for good: the agent's other tunnels and their
			// connections carry on. (Closing its session instead would
			// take them all down, and bring the agent back to a refusal
			// for as long as no port is free.)
			var ref *RefusedError
			switch {
			case errors.As(err, &ref) && ref.Code == CodePortNotAllowed:
				why = ruling{text: why.text + ", " + ref.Text, forbidden: true}
			case errors.As(err, &ref):
				why = ruling{text: why.text + ", and it could not move: " + ref.Text, forbidden: true, code: ref.Code}
			default:
				why = ruling{text: fmt.Sprintf("%s, and it could not move: %v", why.text, err), forbidden: true}
			}
		}
		closing[g] = why
	}
	for g, why := range closing {
		r.closeGroupLocked(g, why.text)
		res.TunnelsClosed++
	}
	// After the closes: a tunnel of a token gone may hold the key a
	// renamed one's tunnel takes.
	r.renameLocked(renamed)
	var closed []kick // one tunnel of a session, by CLOSED (a is its member's)
	type move struct {
		a  *agentConn
		id uint32
		g  *group
	}
	var moves []move
	for a := range r.agents {
		if a.kicked {
			// An earlier reload closes it, and told it why: telling it
			// again, or counting it again, would be this reload's
			// reading of a token that is no longer its.
			continue
		}
		if ref := r.tokenCurrentLocked(a); ref != nil {
			a.kicked = true
			kicks = append(kicks, kick{a: a, code: ref.Code, text: ref.Text})
			continue
		}
		// A limit set on the token reaches an agent too old to keep to
		// LIMIT as a REGISTER of its would: its tunnels close.
		tooOld := ""
		if tok := a.token.token(); tok.MaxBandwidth > 0 && !a.canPace.Load() {
			tooOld = cannotPace(tok)
		}
		for id, m := range a.members {
			why, ok := stranded[m]
			if !ok && tooOld != "" {
				why, ok = ruling{text: tooOld, forbidden: true}, true
			}
			if !ok && moved[m.g] {
				moves = append(moves, move{a: a, id: id, g: m.g})
				continue
			}
			if !ok {
				why, ok = closing[m.g]
			}
			if ok {
				// For good: the agent hears it for that tunnel alone, and
				// its other tunnels and their clients carry on. (A ruling
				// on the session's token itself closed the session above.)
				code := CodeForbidden
				if why.code != 0 {
					code = why.code
				}
				closed = append(closed, kick{a: a, code: code, text: why.text, tunnel: id, name: m.g.key.Name})
				delete(a.members, id)
				a.byID.Delete(id)
				// Not away: it will not be back (a tunnel that moved on
				// without it waits for no one).
				m.draining.Store(true)
				m.g.removeMemberLocked(m)
			}
		}
	}
	// The other tunnels of those sessions hold their ports for the rejoin
	// window, as for any agent on its way back.
	for _, k := range kicks {
		r.dropMembersLocked(k.a, false)
	}
	for _, g := range r.groups {
		// The relay's or the token's client limits may have changed.
		g.rebuildGateLocked()
		if u := g.udp.Load(); u != nil && cfg.FlowIdleTimeout != old.FlowIdleTimeout {
			u.timeoutChanged()
		}
	}
	// Counted while their sessions, still in r.agents, hold Serve's wait
	// group above zero.
	r.wg.Add(len(kicks) + len(closed) + len(moves))
	r.mu.Unlock()

	if res.TunnelsMoved > 0 {
		// The moved leases go to disk before the agents hear the new
		// ports (as a new tunnel's before its REGISTERED), so a relay
		// killed right after still keeps them.
		r.saveLeases()
	}
	for _, mv := range moves {
		go func() {
			defer r.wg.Done()
			// The port and reason as they are when the frame goes out: a
			// reload right after this one may move the tunnel again, and
			// its MOVED may go out first.
			mv.a.noticeOf(func() Message {
				r.mu.Lock()
				defer r.mu.Unlock()
				return &Moved{Tunnel: mv.id, Port: mv.g.port, Text: mv.g.movedWhy}
			}, noticeWait)
		}()
	}
	for _, c := range closed {
		go func() {
			defer r.wg.Done()
			c.a.logger().Info("closing the agent's tunnel after reload", "name", c.name, "reason", c.text)
			c.a.notice(&Closed{Tunnel: c.tunnel, Code: c.code, Text: c.text})
		}()
	}
	for _, k := range kicks {
		k.a.logger().Warn("closing agent session after reload", "reason", k.text)
		go func() {
			defer r.wg.Done()
			k.a.closeAfterNotice(k.code, k.text)
		}()
	}
	res.SessionsClosed = len(kicks)
	r.mu.Lock()
	tokens := slices.Collect(maps.Values(r.tokens))
	r.mu.Unlock()
	for _, ts := range tokens {
		// A limit set, changed or lifted reaches the sessions in now.
		r.shareBandwidth(ts, false)
	}
	return res, nil
}

// ruling is why the rules now in force rule out an open tunnel ("" if
// they do not); forbidden, that they forbid it outright; port, that they
// rule out only its port, so it may move to another.
type ruling struct {
	text      string
	forbidden bool
	port      bool
	code      ErrorCode // CLOSED's code, when not CodeForbidden
}

// ruledOutLocked says why the rules now in force rule out the open tunnel
// g.
func (r *Relay) ruledOutLocked(g *group) ruling {
	tok := g.token.token()
	_, ok := r.tokens[KeyID(tok.Secret)]
	switch {
	case !ok && r.rotatedLocked(tok.ID):
		return ruling{text: fmt.Sprintf("its token %q was given a new secret", tok.ID)}
	case !ok:
		return ruling{text: fmt.Sprintf("its token %q was revoked", tok.ID)}
	case !r.config().Ports.Contains(g.port):
		return ruling{text: fmt.Sprintf("port %d is no longer among the relay's ports", g.port), port: true}
	}
	return tok.keeps(g)
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

// moveLocked gives the open tunnel g another public port, among those its
// token may now use and every member's agent asked for (and, where that
// leaves one free, those its agents away asked for), and serves it
// there. Clients connected on the old port carry on (their connections are
// the listener's no longer); its UDP flows end with the old socket. It
// returns the members whose agents asked only for ports taken away: the
// tunnel moves without them, and they must leave it for good. A tunnel
// whose every agent did gets a CodePortNotAllowed refusal; one with
// nowhere free to go, or whose agents' ranges no longer meet, another.
// Not while the relay stops: it would open a port no one closes (Reload
// leaves such tunnels to the drain).
func (r *Relay) moveLocked(g *group, why string) ([]*member, error) {
	tok := g.token.token()
	allowed := r.config().Ports
	if len(tok.Ports) > 0 {
		allowed = tok.Ports
	}
	cands := allowed
	var asked []string
	var stranded []*member
	for _, m := range g.members {
		if m.want.Low == 0 {
			continue
		}
		if s := m.want.String(); !slices.Contains(asked, s) {
			asked = append(asked, s)
		}
		if len(allowed.Intersect(m.want)) == 0 {
			// Asking again would be refused: not a reason to close the
			// tunnel for the agents that asked for any port, or others.
			stranded = append(stranded, m)
			continue
		}
		cands = cands.Intersect(m.want)
	}
	if len(stranded) == len(g.members) {
		return nil, &RefusedError{Code: CodePortNotAllowed, Text: fmt.Sprintf(
			"and no port its agent asked for (%s) is left: ask for another --port, or none", strings.Join(asked, "; "))}
	}
	if len(cands) == 0 {
		return nil, &RefusedError{Code: CodeNoPortFree, Text: fmt.Sprintf(
			"and the ports its agents asked for (%s) have none left in common", strings.Join(asked, "; "))}
	}
	// The agents away that may still come back (within the rejoin
	// window) asked for ports too: the tunnel moves within their ranges
	// where these leave it a free port, so each finds it there when back,
	// rather than be refused it for as long as the others hold it. They
	// neither stop a move the members here can make nor, there being
	// other ports, take one a lease holds (bindLocked's noLease).
	kept, now, window := cands, time.Now(), r.config().RejoinWindow
	for _, aw := range g.away {
		if aw.want.Low == 0 || now.Sub(aw.left) > window {
			continue
		}
		if c := kept.Intersect(aw.want); len(c) > 0 {
			kept = c
		}
	}
	narrowed := kept.Size() != cands.Size()
	host := r.config().BindHost
	port, ln, pc, err := r.bindLocked(g.key, kept, PortRange{}, host, g.protos, g.noLease || narrowed, nil)
	if err != nil && narrowed {
		port, ln, pc, err = r.bindLocked(g.key, cands, PortRange{}, host, g.protos, g.noLease, nil)
	}
	if err != nil {
		return nil, err
	}
	old := g.port
	g.closeListeners()
	delete(r.ports, old)
	g.port, g.ln = port, ln
	r.ports[port] = g
	if !g.noLease {
		r.leases.take(g.key, port)
		r.markLeasesDirty()
	}
	g.movedWhy = why
	g.setLogger()
	g.serveLocked(ln, pc)
	g.logger().Info("tunnel moved", "was", old, "why", why)
	return stranded, nil
}

// renameLocked gives the tunnels of each token renamed (old id → new id)
// their new key, and moves their port leases with them, so an agent of
// theirs that comes back, or joins, finds them under the new id.
func (r *Relay) renameLocked(renamed map[string]string) {
	if len(renamed) == 0 {
		return
	}
	var rekeyed []*group
	for k, g := range r.groups {
		if to, ok := renamed[k.Token]; ok && g.token.token().ID == to {
			delete(r.groups, k)
			rekeyed = append(rekeyed, g)
		}
	}
	for _, g := range rekeyed {
		g.key.Token = renamed[g.key.Token]
		r.groups[g.key] = g
		g.setLogger()
	}
	r.leases.rename(renamed)
	r.markLeasesDirty()
	for a := range r.agents {
		if a.token.renamedFrom != "" {
			a.setLogger()
		}
	}
	for from, to := range renamed {
		r.log.Info("token renamed; its sessions, tunnels and port leases carry on under the new id", "was", from, "token", to)
	}
}
