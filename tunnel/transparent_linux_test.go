package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/netnstest"
	"github.com/relaytun/relay/internal/transparent"
)

// TestTransparent runs in a network namespace of its own, where clients
// connect from addresses the machine does not have (as they would from the
// Internet): with Transparent set, the local server sees each client's own
// address, over TCP and UDP and on both transports. Before the routes are
// added, Run says which to add; an IPv6 client of a server that listens on
// 127.0.0.1 only is connected from the agent's address, with a warning.
func TestTransparent(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	peerOf := func(c net.Conn) { c.Write([]byte(c.RemoteAddr().String())); c.Close() }
	t.Run("without routes", func(t *testing.T) {
		r := startRelay(t, nil)
		cfg := r.agentConfig(TransportQUIC, startServer(t, peerOf))
		cfg.Tunnels[0].Transparent = true
		_, err := runAgent(t, cfg)
		var se *transparent.SetupError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), transparent.Routes(false)) {
			t.Fatalf("Run without the routes: %v, want the routes to add", err)
		}
	})
	t.Run("stopped during the check", func(t *testing.T) {
		// Ctrl-C (or Drain) while the check waits for a reply that the
		// missing routes never bring ends Run as a stop does: nil, not
		// a failed session.
		r := startRelay(t, nil)
		cfg := r.agentConfig(TransportQUIC, startServer(t, peerOf))
		cfg.Tunnels[0].Transparent = true
		a, err := NewAgent(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Cancelled, as a signal does: a deadline would end the check's
		// dial a moment before ctx reports it.
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		time.AfterFunc(200*time.Millisecond, cancel)
		if err := a.Run(ctx); err != nil {
			t.Errorf("Run stopped during the check: %v, want nil", err)
		}
	})
	netnstest.Sh(t, transparent.Routes(false))
	netnstest.Sh(t, transparent.Routes(true))
	client := netip.MustParseAddr("203.0.113.9")
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		udp := startUDPEcho(t)
		cfg := r.agentConfig(kind, startServer(t, peerOf))
		// By name, as a bare port gives it: the server's IPv4 address.
		cfg.Tunnels[0].Local = strings.Replace(cfg.Tunnels[0].Local, "127.0.0.1", "localhost", 1)
		cfg.Tunnels = append(cfg.Tunnels, TunnelSpec{Name: "game", Local: udp.Addr, Protos: ProtoUDP})
		for i := range cfg.Tunnels {
			cfg.Tunnels[i].Transparent = true
		}
		a := mustRunAgent(t, cfg)

		to := netip.MustParseAddrPort(a.Public(0))
		c, err := transparent.DialTCP(t.Context(), netip.AddrPortFrom(client, 0), to, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		seen, err := io.ReadAll(c)
		if got, perr := netip.ParseAddrPort(string(seen)); err != nil || perr != nil || got.Addr() != client {
			t.Errorf("the TCP server saw %q (%v), want %s", seen, err, client)
		}

		u, err := transparent.DialUDP(netip.AddrPortFrom(client, 0), netip.MustParseAddrPort(endpointFor(t, a, "udp")))
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		exchange(t, u, []byte("move north"))
		udp.mu.Lock()
		defer udp.mu.Unlock()
		for peer := range udp.peers {
			if got := netip.MustParseAddrPort(peer); got.Addr() != client {
				t.Errorf("the UDP server saw %s, want %s", got, client)
			}
		}
		if len(udp.peers) != 1 {
			t.Errorf("the UDP server saw %d peers, want 1", len(udp.peers))
		}
		if strings.Contains(a.Log.String(), wildcardWarning) {
			t.Errorf("a warning for a UDP server on 127.0.0.1:\n%s", a.Log)
		}
	})
	// A UDP server on all addresses gets the client's datagrams, but its
	// replies, with no source address of their own, miss the rule and
	// leave by the main table (here: network unreachable). The agent
	// cannot fix that; it says so.
	for _, network := range []string{"udp4", "udp"} {
		t.Run("UDP server on all addresses, "+network, func(t *testing.T) {
			pc, err := net.ListenPacket(network, ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			got := make(chan string, 1)
			go func() {
				b := make([]byte, 64)
				if _, peer, err := pc.ReadFrom(b); err == nil {
					got <- peer.String()
					pc.WriteTo(b, peer)
				}
			}()
			port := netip.MustParseAddrPort(pc.LocalAddr().String()).Port()
			r := startRelay(t, nil)
			cfg := r.agentConfig(TransportQUIC, startServer(t, peerOf))
			cfg.Tunnels = []TunnelSpec{{Name: "game", Local: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), Protos: ProtoUDP, Transparent: true}}
			a := mustRunAgent(t, cfg)
			u, err := transparent.DialUDP(netip.AddrPortFrom(client, 0), netip.MustParseAddrPort(endpointFor(t, a, "udp")))
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			u.Write([]byte("move north"))
			select {
			case peer := <-got:
				if host, _, _ := net.SplitHostPort(peer); strings.TrimPrefix(host, "::ffff:") != client.String() {
					t.Errorf("the UDP server saw %s, want %s", peer, client)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the UDP server got no datagram")
			}
			for deadline := time.Now().Add(5 * time.Second); !strings.Contains(a.Log.String(), wildcardWarning); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no warning that the server listens on all addresses:\n%s", a.Log)
				}
			}
		})
	}
	t.Run("IPv6 client, IPv4 server", func(t *testing.T) {
		r := startRelay(t, func(c *RelayConfig) { c.BindHost = "::1" })
		cfg := r.agentConfig(TransportQUIC, startServer(t, peerOf))
		cfg.Tunnels[0].Transparent = true
		a := mustRunAgent(t, cfg)
		to := netip.AddrPortFrom(netip.IPv6Loopback(), a.Endpoints[0].Port)
		c, err := transparent.DialTCP(t.Context(), netip.MustParseAddrPort("[2001:db8::9]:0"), to, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		seen, _ := io.ReadAll(c)
		if host, _, _ := net.SplitHostPort(string(seen)); host != "127.0.0.1" {
			t.Errorf("the server saw %q, want the agent's 127.0.0.1", seen)
		}
		if !strings.Contains(a.Log.String(), "transparent: IPv6 clients reach the local server from the agent's own address, as it is at 127.0.0.1") {
			t.Errorf("no warning in the agent's log:\n%s", a.Log)
		}
	})
}

// wildcardWarning begins the agent's warning for a transparent UDP
// server that listens on all addresses.
const wildcardWarning = "transparent: the local UDP server listens on all addresses"

// TestTransparentNoIPv6: a transparent tunnel to [::1] on a machine with
// IPv6 off is refused before any session, saying which tunnel and why.
func TestTransparentNoIPv6(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", []byte("1"), 0); err != nil {
		t.Skipf("turning IPv6 off in the namespace: %v", err)
	}
	r := startRelay(t, nil)
	cfg := r.agentConfig(TransportQUIC, "[::1]:9")
	cfg.Tunnels[0].Transparent = true
	_, err := runAgent(t, cfg)
	var se *transparent.SetupError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "tunnel "+cfg.Tunnels[0].Name+": its local server is at ::1, and this machine has no IPv6 loopback address") {
		t.Errorf("Run with IPv6 off: %v, want a *SetupError naming the tunnel", err)
	}
}
