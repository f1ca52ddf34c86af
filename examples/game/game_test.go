package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// TestGameThroughRelay: three players reach the game server through a relay
// over each transport; each is a distinct peer to the server, their moves
// land, and every tick reaches every player.
func TestGameThroughRelay(t *testing.T) {
	for _, kind := range []string{tunnel.TransportQUIC, tunnel.TransportTCP} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go NewWorld(20*time.Millisecond, slog.New(slog.DiscardHandler)).Serve(ctx, pc)
			public := relayFor(t, ctx, kind, pc.LocalAddr().String())

			var players []net.Conn
			for i := range 3 {
				c, err := net.Dial("udp", public)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write([]byte(fmt.Sprintf("join p%d", i)))
				players = append(players, c)
			}
			buf := make([]byte, 1500)
			done := make([]bool, len(players))
			deadline := time.Now().Add(15 * time.Second)
			for left := len(players); left > 0; {
				if time.Now().After(deadline) {
					t.Fatalf("after 15 s, players %v have not seen all three moved", done)
				}
				for i, c := range players {
					// Datagrams may be lost: keep joining and moving.
					c.Write([]byte(fmt.Sprintf("join p%d", i)))
					c.Write([]byte("move 1 1"))
				}
				for i, c := range players {
					if done[i] {
						continue
					}
					c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
					for {
						n, err := c.Read(buf)
						if err != nil {
							break
						}
						msg := string(buf[:n])
						if !strings.HasPrefix(msg, "tick ") || strings.Count(msg, "@") != 3 || strings.Contains(msg, "=0,0@") {
							continue
						}
						addrs := map[string]bool{}
						for _, f := range strings.Fields(msg)[2:] {
							addrs[f[strings.Index(f, "@")+1:]] = true
						}
						if len(addrs) != 3 {
							t.Fatalf("state %q: the server sees %d distinct peers, want 3", msg, len(addrs))
						}
						done[i] = true
						left--
						break
					}
				}
			}
		})
	}
}

// relayFor runs a relay and an agent exposing the UDP server at local over
// kind, and returns the public address.
func relayFor(t *testing.T, ctx context.Context, kind, local string) string {
	t.Helper()
	key, _, err := transport.LoadOrCreateKey(filepath.Join(t.TempDir(), "relay.key"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := transport.SelfSignedCertificate(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	const secret = "game-test-secret-0123"
	rc := tunnel.DefaultRelayConfig()
	rc.BindHost = "127.0.0.1"
	// Below proctest.ClosedPort's 20000-29999 and the other packages'
	// relayds (61000-64999), whose tests run at the same time.
	rc.Ports = tunnel.PortSet{{Low: 1024, High: 19999}}
	rc.Tokens = []tunnel.Token{{ID: "game", Secret: secret}}
	r, err := tunnel.NewRelay(rc)
	if err != nil {
		t.Fatal(err)
	}
	opts := transport.DefaultOptions()
	opts.MaxIncomingStreams = tunnel.MaxAgentStreams
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLSConfig(cert, tunnel.ALPN), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(ctx, ln)
	pin, _ := transport.ParseFingerprint(transport.Fingerprint(cert.Leaf))
	ac := tunnel.DefaultAgentConfig()
	ac.Relay, ac.Token, ac.Transport = ln.Addr().String(), secret, kind
	ac.Verifier = &transport.Verifier{Pin: pin}
	ac.Tunnels = []tunnel.TunnelSpec{{Name: "game", Local: local, Protos: tunnel.ProtoUDP}}
	ready := make(chan []tunnel.Endpoint, 1)
	ac.OnReady = func(eps []tunnel.Endpoint) { ready <- eps }
	a, err := tunnel.NewAgent(ac)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() { errs <- a.Run(ctx) }()
	select {
	case eps := <-ready:
		return net.JoinHostPort(eps[0].Host, strconv.Itoa(int(eps[0].Port)))
	case err := <-errs:
		t.Fatalf("agent: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent not ready after 15 s")
	}
	return ""
}
