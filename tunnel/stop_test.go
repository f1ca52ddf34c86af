package tunnel

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShutdownWithAStuckAgent: an authenticated agent that floods PINGs and
// never reads the answers cannot keep the relay from stopping: Shutdown
// ends with its context and Serve returns, long before the liveness
// timeout that bounds the relay's stuck write of an answer (the shutdown
// notices used to wait for that write over TLS+smux).
func TestShutdownWithAStuckAgent(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.Liveness = 60 * time.Second })
		s := dialRaw(t, r, kind)
		defer s.Close()
		ctl := authenticate(t, s)
		ping := mustAppend(t, &Ping{Data: 1})
		flood := bytes.Repeat(ping, 1000)
		go func() {
			for {
				ctl.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := ctl.Write(flood); err != nil {
					return
				}
			}
		}()
		// Until the relay's answers fill the stream and its writer blocks.
		waitFor(t, "the relay to stop reading the flood", 10*time.Second, func() bool {
			return strings.Contains(r.Log.String(), "agent connected")
		})
		time.Sleep(time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			r.Relay.Shutdown(ctx)
			r.Stop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("the relay had not stopped 15 s after a shutdown with a 1 s drain")
		}
	})
}

// TestServeStopsWithATunnelWaitingForItsAgent: a tunnel held open for its
// vanished agent (rejoin window) does not hold Serve when it is stopped.
func TestServeStopsWithATunnelWaitingForItsAgent(t *testing.T) {
	r := startRelay(t, func(c *RelayConfig) { c.RejoinWindow = time.Hour })
	s := dialRaw(t, r, TransportQUIC)
	ctl := authenticate(t, s)
	WriteMessage(ctl, &Register{Request: 1, Name: "orphan", Protos: ProtoTCP | ProtoUDP})
	if m, err := ReadMessage(ctl); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*Registered); !ok {
		t.Fatalf("got %#v, want REGISTERED", m)
	}
	s.CloseWithError(99, "vanished")
	waitFor(t, "the tunnel to wait for its agent", 10*time.Second, func() bool {
		ti := r.Relay.Tunnels()
		return len(ti) == 1 && len(ti[0].Members) == 0
	})
	done := make(chan struct{})
	go func() {
		r.Stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Serve had not returned 20 s after its context ended, with a one-hour rejoin window")
	}
}

// TestGroupOfDrainingMembersCloses: when the last live member of a group
// leaves and only draining ones remain, the port closes, as it does when
// every member drains.
func TestGroupOfDrainingMembersCloses(t *testing.T) {
	r := startRelay(t, nil)
	register := func() (transport interface{ CloseWrite() error }, port uint16, send func(Message)) {
		s := dialRaw(t, r, TransportQUIC)
		t.Cleanup(func() { s.Close() })
		c := authenticate(t, s)
		WriteMessage(c, &Register{Request: 1, Name: "grp", Protos: ProtoTCP})
		m, err := ReadMessage(c)
		if err != nil {
			t.Fatal(err)
		}
		reg, ok := m.(*Registered)
		if !ok {
			t.Fatalf("got %#v, want REGISTERED", m)
		}
		go func() {
			for {
				if _, err := ReadMessage(c); err != nil {
					return
				}
			}
		}()
		return c, reg.Port, func(m Message) { WriteMessage(c, m) }
	}
	_, port, sendA := register()
	ctlB, _, _ := register()
	sendA(&Drain{})
	waitFor(t, "A to drain", 10*time.Second, func() bool {
		ti := r.Relay.Tunnels()
		return len(ti) == 1 && len(ti[0].Members) == 2 && (ti[0].Members[0].Draining || ti[0].Members[1].Draining)
	})
	ctlB.CloseWrite() // B says goodbye
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	waitFor(t, "the port to close", 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// TestDrainAfterALargeDatagram: the datagram stream a large datagram
// opened is no client: Drain does not wait for it.
func TestDrainAfterALargeDatagram(t *testing.T) {
	r := startRelay(t, nil)
	srv := startUDPEcho(t)
	a := mustRunAgent(t, r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr))
	c, err := net.Dial("udp", endpointFor(t, a, "udp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, bytes.Repeat([]byte("x"), 4000)) // over the datagram stream
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.agent.Drain(ctx)
	if strings.Contains(a.Log.String(), "drain cut short") {
		t.Errorf("Drain waited out its deadline, for the datagram stream or a UDP flow:\n%s", a.Log)
	}
}
