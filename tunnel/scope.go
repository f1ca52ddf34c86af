package tunnel

import (
	"fmt"
	"net/netip"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Token is one credential the relay accepts, with what it may do. The zero
// value of every limit means "no limit beyond the relay's own".
type Token struct {
	// ID names the token in logs; it is not secret.
	ID     string
	Secret string
	// Names are path.Match patterns ("game-*") a tunnel name must match;
	// empty allows any name.
	Names []string
	// Ports are the public ports the token may use, within the relay's;
	// empty allows all of the relay's.
	Ports PortSet
	// MaxTunnels caps the token's tunnels, over all its sessions.
	MaxTunnels int
	// MaxConnections caps the public connections open at once over all the
	// token's tunnels.
	MaxConnections int
	// DenyUDP refuses UDP tunnels.
	DenyUDP bool
	// MaxBandwidth caps the bytes a second the token's tunnels carry
	// each way, over all its sessions, tunnels and clients together, TCP
	// and UDP (0: no cap).
	MaxBandwidth uint64
	// Clients overrides the relay's limits on public clients for this
	// token's tunnels: a non-zero number replaces the relay's, and the
	// allow and deny lists apply on top of the relay's. A RatePerIP comes
	// with its own burst (BurstPerIP, or its default), not the relay's; a
	// BurstPerIP alone is the burst of the relay's RatePerIP (none when
	// the relay has no rate).
	Clients ClientLimits
}

// ClientLimits are the public-side limits of a tunnel, per client IP.
type ClientLimits struct {
	// MaxConnsPerIP caps connections open at once from one IP address.
	MaxConnsPerIP int
	// RatePerIP caps new connections per second from one IP address, with
	// bursts of BurstPerIP (default: twice the rate, at least 1).
	RatePerIP  float64
	BurstPerIP int
	// Allow, when not empty, admits only clients in these prefixes; Deny
	// refuses clients in these.
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// Validate checks the numbers.
func (l ClientLimits) Validate() error {
	if l.MaxConnsPerIP < 0 || l.RatePerIP < 0 || l.BurstPerIP < 0 {
		return fmt.Errorf("client limits must not be negative")
	}
	return nil
}

// matchName reports whether name matches one of patterns (any when empty).
func matchName(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// ValidNamePattern reports whether p is a usable name pattern.
func ValidNamePattern(p string) error {
	if p == "" {
		return fmt.Errorf("empty name pattern")
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("name pattern %q: %v", p, err)
	}
	return nil
}

// ParsePrefixes parses CIDR prefixes ("10.0.0.0/8") and bare addresses
// (a /32 or /128).
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			// Clients are matched unmapped, so an IPv4-mapped prefix
			// becomes the IPv4 prefix it means.
			if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR prefix (like 203.0.113.0/24)", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Refusal reasons for public clients, as counted per tunnel.
const (
	RefusedDenied      = "denied"          // outside an allow list or inside a deny list
	RefusedPerIPConns  = "per_ip_conns"    // too many open connections from the IP
	RefusedPerIPRate   = "per_ip_rate"     // too many new connections from the IP
	RefusedTokenConns  = "token_conns"     // the token's max_connections reached
	RefusedTooManyIPs  = "too_many_ips"    // the per-IP table is full
	RefusedAgentFailed = "agent_unreached" // no stream could be opened to the agent
	RefusedFlowLimit   = "flow_limit"      // the tunnel's UDP flow cap reached
)

// maxTrackedIPs bounds the per-IP table of one tunnel.
const maxTrackedIPs = 100_000

// clientGate decides which public clients a tunnel admits. It holds only
// the rules: a tunnel's gate is replaced whenever they change (a reload, a
// member with other allow or deny lists), while the counts they apply to
// stay in the tunnel's ipTable.
type clientGate struct {
	// Every layer (relay, token, agent) must admit a client.
	allows   [][]netip.Prefix
	denies   [][]netip.Prefix
	maxConns int
	rate     rate.Limit
	burst    int
	// token counts the token's open connections against its cap.
	token *tokenState
	ips   *ipTable

	// refused counts refusals by reason: the tunnel's, then the relay's.
	refused []*counterMap
}

// ipTable is a tunnel's state per client IP. It lives as long as the
// tunnel, not its gate, so that new rules do not hand every IP a fresh
// allowance on top of the connections it holds. Connections are counted
// whatever the rules, so a cap set by a reload counts those already open.
// The zero value is ready to use.
type ipTable struct {
	mu    sync.Mutex
	perIP map[netip.Addr]*ipState
	sweep time.Time
}

type ipState struct {
	conns int
	lim   *rate.Limiter
}

func newClientGate(layers []ClientLimits, tok *tokenState, ips *ipTable, refused ...*counterMap) *clientGate {
	g := &clientGate{token: tok, ips: ips, refused: refused}
	for _, l := range layers {
		if len(l.Allow) > 0 {
			g.allows = append(g.allows, l.Allow)
		}
		if len(l.Deny) > 0 {
			g.denies = append(g.denies, l.Deny)
		}
		if l.MaxConnsPerIP > 0 {
			g.maxConns = l.MaxConnsPerIP
		}
		switch {
		case l.RatePerIP > 0:
			g.rate = rate.Limit(l.RatePerIP)
			g.burst = l.BurstPerIP
			if g.burst == 0 {
				g.burst = max(1, int(2*l.RatePerIP))
			}
		case l.BurstPerIP > 0 && g.rate > 0:
			g.burst = l.BurstPerIP
		}
	}
	return g
}

// admit decides on a client from ip. On success it returns a release func
// to call when the connection ends; otherwise the reason it was refused.
func (g *clientGate) admit(ip netip.Addr) (release func(), reason string) {
	ip = ip.Unmap()
	for _, allow := range g.allows {
		if !inAny(allow, ip) {
			return nil, g.count(RefusedDenied)
		}
	}
	for _, deny := range g.denies {
		if inAny(deny, ip) {
			return nil, g.count(RefusedDenied)
		}
	}
	counted, reason := g.ips.take(ip, g, time.Now())
	if reason != "" {
		return nil, g.count(reason)
	}
	if g.token != nil && !g.token.addConn() {
		if counted {
			g.ips.release(ip)
		}
		return nil, g.count(RefusedTokenConns)
	}
	// The table, not the gate, is released into: by then the tunnel may
	// have another gate, sharing it.
	var once sync.Once
	return func() {
		once.Do(func() {
			if counted {
				g.ips.release(ip)
			}
			if g.token != nil {
				g.token.conns.Add(-1)
			}
		})
	}, ""
}

// take counts a new connection from ip if the limits of gate g admit it;
// counted is false when it was admitted without being counted (the table
// is full, and g has no per-IP limit to enforce).
func (t *ipTable) take(ip netip.Addr, g *clientGate, now time.Time) (counted bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.perIP[ip]
	if st == nil {
		if len(t.perIP) >= maxTrackedIPs {
			t.sweepLocked(now)
		}
		if len(t.perIP) >= maxTrackedIPs {
			if g.maxConns > 0 || g.rate > 0 {
				return false, RefusedTooManyIPs
			}
			return false, ""
		}
		if t.perIP == nil {
			t.perIP = make(map[netip.Addr]*ipState)
		}
		st = &ipState{}
		t.perIP[ip] = st
	}
	// A lowered cap refuses new connections until the IP is below it;
	// those it holds stay.
	if g.maxConns > 0 && st.conns >= g.maxConns {
		return false, RefusedPerIPConns
	}
	if g.rate > 0 {
		switch {
		case st.lim == nil:
			st.lim = rate.NewLimiter(g.rate, g.burst)
		case st.lim.Limit() != g.rate || st.lim.Burst() != g.burst:
			// New numbers from a reload: the allowance spent so far
			// still counts.
			st.lim.SetLimitAt(now, g.rate)
			st.lim.SetBurstAt(now, g.burst)
		}
		if !st.lim.AllowN(now, 1) {
			return false, RefusedPerIPRate
		}
	}
	st.conns++
	if now.Sub(t.sweep) > time.Minute {
		t.sweepLocked(now)
	}
	return true, ""
}

// release uncounts a connection that take counted.
func (t *ipTable) release(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.perIP[ip]
	if st == nil || st.conns <= 0 {
		return // cannot happen: an IP with connections is never swept
	}
	st.conns--
	if st.conns == 0 && st.lim == nil {
		delete(t.perIP, ip)
	}
}

// sweepLocked forgets IPs with no connection whose rate allowance is full
// again, so the table holds only clients that matter now.
func (t *ipTable) sweepLocked(now time.Time) {
	t.sweep = now
	for ip, st := range t.perIP {
		if st.conns == 0 && (st.lim == nil || st.lim.TokensAt(now) >= float64(st.lim.Burst())) {
			delete(t.perIP, ip)
		}
	}
}

func (g *clientGate) count(reason string) string {
	for _, c := range g.refused {
		c.add(reason)
	}
	return reason
}

// tokenState is what the relay tracks per token across sessions.
type tokenState struct {
	// tok is replaced in place by a reload that keeps the token's
	// secret: its limits, and its id, apply at once, to the sessions
	// already in.
	tok     atomic.Pointer[Token]
	tunnels int // guarded by Relay.mu
	// renamedFrom is the id the latest reload took from the token (""
	// when it kept it): the token holding an id since then is not the
	// old one's new secret. Guarded by Relay.mu.
	renamedFrom string
	conns       atomic.Int64
	// up and down pace the token's bytes from public clients to agents
	// and from agents to public clients, at MaxBandwidth.
	up, down *pace
	// shareMu guards the sharing of the down pace among the token's
	// sessions (Relay.shareBandwidth), and measured is when it last
	// measured their use.
	shareMu  sync.Mutex
	measured time.Time
	// refusals counts what the relay refused the token's agents, by
	// error code: which user keeps hitting which rule.
	refusals counterMap
}

func newTokenState(t *Token) *tokenState {
	ts := &tokenState{up: newPace(), down: newPace()}
	ts.setToken(t)
	return ts
}

// setToken makes t the token's rules.
func (s *tokenState) setToken(t *Token) {
	s.tok.Store(t)
	s.up.set(t.MaxBandwidth)
	s.down.set(t.MaxBandwidth)
}

// token is the token's rules as they are now.
func (s *tokenState) token() *Token { return s.tok.Load() }

// allows refuses a tunnel that tok's rules rule out: its name, or UDP.
// The ports rule is the relay's join to check, as it picks the port.
func (tok *Token) allows(name string, protos uint8) *RefusedError {
	if !matchName(tok.Names, name) {
		return &RefusedError{Code: CodeForbidden, Text: fmt.Sprintf("token %q may not use the tunnel name %q: its names rule allows only %s; pick a --name that matches (with several LOCALs, relayctl names each NAME-PORT)",
			tok.ID, name, strings.Join(tok.Names, ", "))}
	}
	if protos&ProtoUDP != 0 && tok.DenyUDP {
		return &RefusedError{Code: CodeForbidden, Text: fmt.Sprintf("token %q may not open UDP tunnels (its udp rule is false): use --proto tcp, or ask the relay's operator for a token that may", tok.ID)}
	}
	return nil
}

// keeps says why tok's rules no longer allow the open tunnel g, if they
// do not.
func (tok *Token) keeps(g *group) ruling {
	switch {
	case !matchName(tok.Names, g.key.Name):
		return ruling{text: fmt.Sprintf("its token %q's names rule no longer allows the name %q", tok.ID, g.key.Name), forbidden: true}
	case g.protos&ProtoUDP != 0 && tok.DenyUDP:
		return ruling{text: fmt.Sprintf("its token %q may no longer open UDP tunnels", tok.ID), forbidden: true}
	case len(tok.Ports) > 0 && !tok.Ports.Contains(g.port):
		return ruling{text: fmt.Sprintf("port %d is no longer among the ports its token %q may use", g.port, tok.ID), port: true}
	}
	return ruling{}
}

// addConn takes one of the token's connection slots, if it has a cap.
func (s *tokenState) addConn() bool {
	n := s.conns.Add(1)
	if max := s.token().MaxConnections; max > 0 && n > int64(max) {
		s.conns.Add(-1)
		return false
	}
	return true
}
