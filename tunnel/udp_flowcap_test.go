package tunnel

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/syncbuf"
	"github.com/relaytun/relay/transport"
)

// flowCapWarning is the agent's warning for a tunnel at its flow cap.
func flowCapWarning(max int) string {
	return fmt.Sprintf(`level=WARN msg="udp datagrams from new clients dropped: the tunnel has as many flows as this agent opens (%d), and none is quiet enough to close; more agents exposing it with the same --name share its players"`, max)
}

// TestUDPAgentFlowCap: more clients than the agent's flow cap (below the
// relay's): the datagrams of those over it are dropped, the agent warns
// once (not once per datagram) with the reason, the fix and the count,
// and its status counts every drop. The flows it has carry on.
func TestUDPAgentFlowCap(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		srv := startUDPEcho(t)
		cfg := r.udpAgentConfig(kind, ProtoUDP, srv.Addr)
		cfg.MaxFlows = 2
		a := mustRunAgent(t, cfg)
		public := endpointFor(t, a, "udp")
		exchange(t, dialUDP(t, public), []byte("a"))
		b := dialUDP(t, public)
		exchange(t, b, []byte("b"))
		over := []net.Conn{dialUDP(t, public), dialUDP(t, public)}
		const each = 3
		for _, c := range over {
			for range each {
				c.Write([]byte("room?"))
			}
		}
		drops := func() int64 { return a.agent.Status().Tunnels[0].UDPDrops }
		waitFor(t, "the agent to count the dropped datagrams", 10*time.Second,
			func() bool { return drops() == int64(len(over)*each) })
		want := flowCapWarning(2) + fmt.Sprintf(` tunnel=%s dropped=1 err="the tunnel is at its flow cap of 2"`, cfg.Tunnels[0].Name)
		if n := strings.Count(a.Log.String(), flowCapWarning(2)); n != 1 || !strings.Contains(a.Log.String(), want) {
			t.Errorf("%d flow cap warnings; want one line %s", n, want)
		}
		exchange(t, b, []byte("still"))
		if n := srv.peerCount(); n != 2 {
			t.Errorf("the local server saw %d peers, want 2", n)
		}
	})
}

// TestUDPAgentEvictsQuietFlow: at the flow cap, a flow whose client has
// been quiet a while (here the flow timeout, shorter than flowQuiet),
// kept open only by its server's traffic, is closed to make room for a
// new client, which the agent then carries.
func TestUDPAgentEvictsQuietFlow(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		// An echo that also keeps sending to its first peer, as a server
		// does to a player it has not yet timed out.
		pc := listenUDP(t)
		go func() {
			buf := make([]byte, 2048)
			var first net.Addr
			for {
				pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				n, from, err := pc.ReadFrom(buf)
				if err == nil {
					if first == nil {
						first = from
					}
					pc.WriteTo(buf[:n], from)
				} else if !isTimeout(err) {
					return
				}
				if first != nil {
					pc.WriteTo([]byte("tick"), first)
				}
			}
		}()
		cfg := r.udpAgentConfig(kind, ProtoUDP, pc.LocalAddr().String())
		cfg.MaxFlows = 1
		cfg.FlowIdleTimeout = 300 * time.Millisecond
		a := mustRunAgent(t, cfg)
		public := endpointFor(t, a, "udp")
		exchange(t, dialUDP(t, public), []byte("first player"))
		next := dialUDP(t, public)
		const evicted = "udp flows closed to make room for new clients"
		// Sent until the agent makes room; exchange takes the echoes of
		// the copies sent then as duplicates.
		p := []byte("second player")
		waitFor(t, "the agent to close the quiet flow", 10*time.Second, func() bool {
			next.Write(p)
			return strings.Contains(a.Log.String(), evicted)
		})
		exchange(t, next, p)
		if !strings.Contains(a.Log.String(), `msg="`+evicted+`: their clients have been quiet a while" tunnel=`+cfg.Tunnels[0].Name+" closed=1 quiet_for=300ms") {
			t.Errorf("no line saying which tunnel's flows were closed, how many, and why:\n%s", a.Log)
		}
	})
}

// TestUDPAgentNoLocalSocket: a flow whose local socket cannot be opened
// (here the local port is out of range) drops the client's datagrams,
// with a warning naming the tunnel, what failed and what to check.
func TestUDPAgentNoLocalSocket(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		cfg := r.udpAgentConfig(kind, ProtoUDP, "127.0.0.1:70000")
		a := mustRunAgent(t, cfg)
		c := dialUDP(t, endpointFor(t, a, "udp"))
		waitFor(t, "the agent to count the dropped datagram", 10*time.Second, func() bool {
			c.Write([]byte("anyone?"))
			return a.agent.Status().Tunnels[0].UDPDrops > 0
		})
		want := `level=WARN msg="udp datagrams from new clients dropped: no local socket could be opened for their flows; check the tunnel's local address" tunnel=t70000 dropped=1 err="opening a local socket for the flow: address 70000: invalid port"`
		if !strings.Contains(a.Log.String(), want) {
			t.Errorf("no line %s", want)
		}
	})
}

// TestAgentNoFlowWarning: the warning of datagrams dropped for want of a
// flow says what ran out and the fix, comes at most once a minute per
// tunnel, and counts the datagrams dropped since the one before.
func TestAgentNoFlowWarning(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	cfg := DefaultAgentConfig()
	// Never run: noFlow is called directly.
	cfg.Relay, cfg.Token, cfg.Verifier = "127.0.0.1:1", testSecret, &transport.Verifier{}
	cfg.Tunnels = []TunnelSpec{{Name: "game", Local: "127.0.0.1:9", Protos: ProtoUDP}}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tun := a.tunnels[0]
	emfile := fmt.Errorf("opening a local socket for the flow: %w", syscall.EMFILE)
	for range 3 {
		a.noFlow(tun, emfile)
	}
	const msg = `level=WARN msg="udp datagrams from new clients dropped: the agent is out of file descriptors, one of which each flow's local socket holds; raise its open-file limit (ulimit -n, or LimitNOFILE= in its systemd unit)" tunnel=game`
	if n := strings.Count(logs.String(), msg); n != 1 || !strings.Contains(logs.String(), msg+" dropped=1 ") {
		t.Fatalf("%d warnings after 3 drops; want one, dropped=1:\n%s", n, logs)
	}
	// A minute on, the next drop warns again, counting the two between.
	tun.udp.warnedNoFlow.Add(-int64(noFlowWarnEvery))
	a.noFlow(tun, emfile)
	if n := strings.Count(logs.String(), msg); n != 2 || !strings.Contains(logs.String(), msg+" dropped=3 ") {
		t.Errorf("%d warnings a minute on; want a second, dropped=3:\n%s", n, logs)
	}
	if got := a.Status().Tunnels[0].UDPDrops; got != 4 {
		t.Errorf("status counts %d drops, want 4", got)
	}
}
