package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/relaytun/relay/internal/transparent"
)

// checkTransparentSpec refuses what cannot work however the machine is set
// up: a PROXY header as well (the server would be told twice), and a server
// away from loopback, whose replies to a client's address would leave for
// the client instead of coming back over lo.
func checkTransparentSpec(t TunnelSpec) error {
	if runtime.GOOS != "linux" {
		return errors.New("transparent needs Linux (IP_TRANSPARENT); elsewhere use a PROXY header, with a server that reads it")
	}
	if t.ProxyProtocol != 0 {
		return errors.New("transparent and a PROXY header both give the server the client's address: use one")
	}
	host, _, _ := net.SplitHostPort(t.Local)
	if a, err := netip.ParseAddr(host); err == nil && !a.Unmap().IsLoopback() {
		return fmt.Errorf("transparent needs the local server on this machine's loopback (localhost, 127.0.0.1 or [::1]), where its replies to a client's address come back to the agent; %s is not", host)
	}
	return nil
}

// transparentTarget is where t's local server is reached from a client's
// address: its first loopback address, IPv4 first as Go's resolver picks a
// UDP address, so transparent or not a tunnel reaches the same socket.
func transparentTarget(ctx context.Context, t TunnelSpec) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(t.Local)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if host == "" {
		host = "localhost"
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return netip.AddrPort{}, err
	}
	var best netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.IsLoopback() && (!best.IsValid() || best.Is6() && a.Is4()) {
			best = a
		}
	}
	if !best.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("its local server must be on this machine's loopback, and %s is at %v", host, addrs)
	}
	return netip.AddrPortFrom(best, uint16(p)), nil
}

// CheckTransparent checks, before any client arrives, that this machine can
// connect to the servers of tunnels with Transparent set from their
// clients' addresses: the capability, and the routes for the address
// family of each server's address. The error is a *transparent.SetupError.
func CheckTransparent(ctx context.Context, tunnels []TunnelSpec) error {
	var need [2]*TunnelSpec // the first tunnel that needs each family
	var at [2]netip.Addr    // and its server's address
	for i, t := range tunnels {
		if !t.Transparent {
			continue
		}
		to, err := transparentTarget(ctx, t)
		if err != nil {
			return &transparent.SetupError{Reason: fmt.Sprintf("tunnel %s: %v", t.Name, err), Err: err}
		}
		if fam := b2i(to.Addr().Is6()); need[fam] == nil {
			need[fam], at[fam] = &tunnels[i], to.Addr()
		}
	}
	for fam, t := range need {
		if t == nil {
			continue
		}
		err := transparent.Check(ctx, fam == 1)
		if errors.Is(err, transparent.ErrNoFamily) {
			// Not a session's failure, as agentExit would call it.
			return &transparent.SetupError{V6: fam == 1, Err: err,
				Reason: fmt.Sprintf("tunnel %s: its local server is at %s, and this machine has no %s loopback address (%v)", t.Name, at[fam], transparent.Family(fam == 1), err)}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// clientTarget is the client's address to connect from (unmapped) and
// transparentTarget, for client; ok is false, after a warning the first
// time, where the server's address is of the other family, which the
// client's cannot connect from.
func (a *Agent) clientTarget(ctx context.Context, t *agentTunnel, client netip.AddrPort) (from, to netip.AddrPort, ok bool, err error) {
	from = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	to, err = transparentTarget(ctx, t.spec)
	if err != nil || to.Addr().Is6() == from.Addr().Is6() {
		return from, to, err == nil, err
	}
	if v6 := from.Addr().Is6(); !t.wrongFamily[b2i(v6)].Swap(true) {
		a.log.Warn("transparent: "+transparent.Family(v6)+" clients reach the local server from the agent's own address, as it is at "+to.Addr().String()+" and a connection keeps to one address family",
			"tunnel", t.spec.Name, "local", t.spec.Local)
	}
	return from, to, false, nil
}

// dialClient connects to t's local server for a client: from the client's
// own address for a transparent tunnel.
func (a *Agent) dialClient(ctx context.Context, t *agentTunnel, client netip.AddrPort) (net.Conn, error) {
	if !t.spec.Transparent {
		return dialLocal(ctx, t.spec.Local, a.cfg.DialLocalTimeout)
	}
	from, to, ok, err := a.clientTarget(ctx, t, client)
	if err != nil {
		return nil, err
	}
	if !ok {
		return dialLocal(ctx, t.spec.Local, a.cfg.DialLocalTimeout)
	}
	c, err := transparent.DialTCP(ctx, from, to, a.cfg.DialLocalTimeout)
	if err != nil {
		return nil, fmt.Errorf("from the client's address: %w", err)
	}
	return c, nil
}

// dialFlow opens the local socket of a UDP flow for client.
func (a *Agent) dialFlow(ctx context.Context, t *agentTunnel, client netip.AddrPort) (*net.UDPConn, error) {
	if t.spec.Transparent {
		from, to, ok, err := a.clientTarget(ctx, t, client)
		if err != nil {
			return nil, err
		}
		if ok {
			a.checkWildcardUDP(t, to)
			return transparent.DialUDP(from, to)
		}
	}
	raddr, err := net.ResolveUDPAddr("udp", t.spec.Local)
	if err != nil {
		return nil, err
	}
	return net.DialUDP("udp", nil, raddr)
}

// wildcardRecheck is how often, at most, a new flow of a transparent UDP
// tunnel looks at how its server listens: it may start (or restart)
// after the agent.
const wildcardRecheck = 10 * time.Second

// checkWildcardUDP warns, once per tunnel, where t's UDP server at to
// listens on all addresses (transparent.WildcardUDP): the client's
// datagrams arrive, and its replies do not.
func (a *Agent) checkWildcardUDP(t *agentTunnel, to netip.AddrPort) {
	if t.wildcardUDP.Load() {
		return
	}
	now, last := time.Now().UnixNano(), t.wildcardChecked.Load()
	if last != 0 && now-last < int64(wildcardRecheck) || !t.wildcardChecked.CompareAndSwap(last, now) {
		return
	}
	wild, ok := transparent.WildcardUDP(to)
	if !ok || t.wildcardUDP.Swap(true) {
		return
	}
	a.log.Warn(fmt.Sprintf("transparent: the local UDP server listens on all addresses (%s), so unless it answers from the address each datagram came to, its replies to a client's address leave by this machine's default route instead of coming back to relayctl, and clients get no answer: have it listen on %s (or see the README for a rule that routes its port's replies back)", wild, to),
		"tunnel", t.spec.Name, "local", t.spec.Local)
}
