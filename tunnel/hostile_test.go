package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xtaci/smux"

	"github.com/relaytun/relay/internal/quictest"
	"github.com/relaytun/relay/transport"
)

// dialRaw opens a bare session to r, for speaking the protocol by hand.
func dialRaw(t *testing.T, r *testRelay, kind string) transport.Session {
	t.Helper()
	tc, err := (&transport.Verifier{Pin: r.Pin}).ClientTLSConfig(r.Addr, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	var d transport.Dialer = &transport.QUICDialer{TLS: tc, Options: testOptions()}
	if kind == TransportTCP {
		d = &transport.TCPDialer{TLS: tc, Options: testOptions()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := d.Dial(ctx, r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// authenticate runs the handshake by hand and returns the control stream.
func authenticate(t *testing.T, s transport.Session) transport.Stream {
	t.Helper()
	return authenticateAs(t, s, [instanceLen]byte{})
}

// authenticateAs is authenticate for the agent instance inst.
func authenticateAs(t *testing.T, s transport.Session, inst [instanceLen]byte) transport.Stream {
	t.Helper()
	ctl, err := s.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctl.SetDeadline(time.Now().Add(5 * time.Second))
	if err := WriteMessage(ctl, &Hello{Version: ProtocolVersion, Software: "test", KeyID: KeyID(testSecret), Instance: inst}); err != nil {
		t.Fatal(err)
	}
	m, err := ReadMessage(ctl)
	if err != nil {
		t.Fatal(err)
	}
	ekm, _ := sessionBinding(s)
	WriteMessage(ctl, &Auth{Proof: Proof(testSecret, m.(*Challenge).Nonce, ekm)})
	if m, err = ReadMessage(ctl); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*Welcome); !ok {
		t.Fatalf("got %T, want *Welcome", m)
	}
	ctl.SetDeadline(time.Time{})
	return ctl
}

// An agent of another protocol version hears which versions met.
func TestVersionMismatch(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		s := dialRaw(t, r, kind)
		ctl, err := s.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ctl.SetDeadline(time.Now().Add(5 * time.Second))
		WriteMessage(ctl, &Hello{Version: 2, Software: "relayctl 9.0", KeyID: KeyID(testSecret)})
		m, err := ReadMessage(ctl)
		if err != nil {
			t.Fatalf("reading reply: %v", err)
		}
		e, ok := m.(*Error)
		if !ok || e.Code != CodeBadVersion {
			t.Fatalf("got %#v, want a bad-version ERROR", m)
		}
		for _, want := range []string{"speaks version 1", "relayctl 9.0", "speaks version 2"} {
			if !strings.Contains(e.Text, want) {
				t.Errorf("refusal %q does not mention %q", e.Text, want)
			}
		}
	})
}

// The agent's side of a mismatch: a relay answering with another version.
func TestAgentRefusesOtherRelayVersion(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		cfg := fakeRelay(t, kind, func(ctl transport.Stream) {
			ReadMessage(ctl)
			WriteMessage(ctl, &Challenge{Version: 7, Software: "relayd 7.0"})
			io.Copy(io.Discard, ctl)
		})
		_, err := runAgent(t, cfg)
		if !isRefused(err, CodeBadVersion) || !strings.Contains(err.Error(), "relayd 7.0") || !strings.Contains(err.Error(), "speaks version 1") {
			t.Fatalf("got %v, want a version mismatch naming both", err)
		}
	})
}

// fakeRelay serves one agent session on a port of its own: serve gets the
// control stream, and the session closes when serve returns. It returns an
// agent configuration (a real relay's, for the rest) that dials it.
// greet answers an agent's handshake on a fake relay's control stream, as
// software, without checking its proof.
func greet(ctl transport.Stream, software string) {
	ReadMessage(ctl) // HELLO
	WriteMessage(ctl, &Challenge{Version: ProtocolVersion, Software: software})
	ReadMessage(ctl) // AUTH, not checked
	WriteMessage(ctl, &Welcome{})
}

func fakeRelay(t *testing.T, kind string, serve func(ctl transport.Stream)) AgentConfig {
	t.Helper()
	r := startRelay(t, nil)
	cert := relayCertificate(t)
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLSConfig(cert, ALPN), testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		s, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		defer s.Close()
		ctl, err := s.AcceptStream(context.Background())
		if err != nil {
			return
		}
		serve(ctl)
	}()
	cfg := r.agentConfig(kind, "127.0.0.1:1")
	cfg.Relay = ln.Addr().String()
	pin, _ := transport.ParseFingerprint(transport.Fingerprint(cert.Leaf))
	cfg.Verifier = &transport.Verifier{Pin: pin}
	return cfg
}

// Garbage on the control port, over TCP and UDP, costs nothing: the relay
// keeps serving its tunnels and new agents.
func TestGarbageOnControlPort(t *testing.T) {
	r := startRelay(t, nil)
	a := mustRunAgent(t, r.agentConfig(TransportQUIC, startServer(t, echo)))
	for _, n := range []int{0, 1, 3, 17, 100, 1200, 5000, 70000} {
		p := make([]byte, n)
		rand.Read(p)
		if c, err := net.Dial("tcp", r.Addr); err == nil {
			c.Write(p)
			c.Close()
		}
		// A TLS-looking record header with a huge length, then nothing.
		if c, err := net.Dial("tcp", r.Addr); err == nil {
			c.Write([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
			c.Close()
		}
		if c, err := net.Dial("udp", r.Addr); err == nil {
			c.Write(p[:min(n, 1500)])
			c.Close()
		}
	}
	for _, kind := range kinds {
		b := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		roundTrip(t, b.Public(0), "after garbage over "+kind)
	}
	roundTrip(t, a.Public(0), "existing tunnel")
}

// Failures of the TCP port's own handshake are counted among the relay's
// handshake failures, as the metrics' agent_handshake_failures_total
// promises for probing: garbage and a TLS-looking header as "tls", a
// connection closed at once past the handshakes in progress as
// "too-many-handshakes". They used to reach only a debug line, so probing
// over TCP, and a flood of slow handshakes, showed in no metric.
// (TestQUICHandshakeFailuresCounted is the QUIC port's.)
func TestTCPHandshakeFailuresCounted(t *testing.T) {
	r := startRelayWith(t, nil, func(o *transport.Options) { o.MaxHandshakes = 1 })
	garbage := [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), {0x16, 0x03, 0x01, 0xff, 0xff}, make([]byte, 100)}
	for _, p := range garbage {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(p)
		io.Copy(io.Discard, c) // until the relay closes it
		c.Close()
	}
	waitFor(t, "the garbage counted", 10*time.Second, func() bool {
		return r.Relay.Stats().HandshakeFailures["tls"] == int64(len(garbage))
	})

	// One connection holds the only handshake slot; the next is closed at
	// once, and counted.
	held, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, c)
	c.Close()
	waitFor(t, "the refused handshake counted", 10*time.Second, func() bool {
		return r.Relay.Stats().HandshakeFailures["too-many-handshakes"] == 1
	})
}

// Failures of the QUIC port's handshakes are counted too, by the TCP
// port's reasons, so a dashboard reads the same for both: a wrong ALPN and
// a client that does not trust the relay (a TLS alert either way) as
// "tls", a client gone silent after its first packet and an Initial that
// never decrypts as "timeout". A datagram that is no Initial is dropped
// without a connection, and an agent that connects is no failure. They used
// to stay inside quic-go, which hands Accept only connections whose
// handshake completed.
func TestQUICHandshakeFailuresCounted(t *testing.T) {
	r := startRelayWith(t, nil, func(o *transport.Options) { o.HandshakeTimeout = time.Second })
	a := mustRunAgent(t, r.agentConfig(TransportQUIC, startServer(t, echo)))
	roundTrip(t, a.Public(0), "a QUIC agent")

	wrongALPN, err := (&transport.Verifier{Pin: r.Pin}).ClientTLSConfig(r.Addr, "h3")
	if err != nil {
		t.Fatal(err)
	}
	untrusted := &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{ALPN}, RootCAs: x509.NewCertPool()}
	for _, tc := range []*tls.Config{wrongALPN, untrusted} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if s, err := (&transport.QUICDialer{TLS: tc, Options: testOptions()}).Dial(ctx, r.Addr); err == nil {
			s.Close()
			t.Errorf("dial offering %v with roots %v succeeded", tc.NextProtos, tc.RootCAs)
		}
		cancel()
	}
	waitFor(t, "the failed TLS handshakes counted", 10*time.Second, func() bool {
		return r.Relay.Stats().HandshakeFailures["tls"] == 2
	})

	quictest.StallHandshake(t, r.Addr, ALPN)
	uc, err := net.Dial("udp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.Write(quictest.GarbageInitial())
	uc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	waitFor(t, "the handshakes that never completed counted", 10*time.Second, func() bool {
		return r.Relay.Stats().HandshakeFailures["timeout"] == 2
	})
	time.Sleep(200 * time.Millisecond)
	if got := r.Relay.Stats().HandshakeFailures; len(got) != 2 || got["tls"] != 2 || got["timeout"] != 2 {
		t.Errorf("handshake failures %v, want 2 tls and 2 timeout", got)
	}
	roundTrip(t, a.Public(0), "the QUIC agent after the failures")
}

// TestTransportHandshakeFailedReasons: a peer through TLS that never opens
// the signal stream times out in smux, whose timeout is a net.Error and
// no os.ErrDeadlineExceeded: it is a "timeout", not a "tls" failure; the
// listener closing is none.
func TestTransportHandshakeFailedReasons(t *testing.T) {
	r := startRelay(t, nil)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	for _, err := range []error{
		fmt.Errorf("waiting for signal stream: %w", smux.ErrTimeout),
		fmt.Errorf("handshake: %w", context.DeadlineExceeded),
		fmt.Errorf("tls handshake: %w", os.ErrDeadlineExceeded),
	} {
		r.Relay.TransportHandshakeFailed(addr, err)
	}
	r.Relay.TransportHandshakeFailed(addr, fmt.Errorf("handshake: %w", context.Canceled))
	r.Relay.TransportHandshakeFailed(addr, errors.New("tls handshake: remote error: tls: bad certificate"))
	if got := r.Relay.Stats().HandshakeFailures; len(got) != 2 || got["timeout"] != 3 || got["tls"] != 1 {
		t.Errorf("handshake failures %v, want 3 timeout and 1 tls", got)
	}
}

// TestAbandonedHandshakes: an agent on --transport auto closes the attempt
// that lost the race, in its TLS handshake or with the session up but no
// control stream yet. The relay counts these as "abandoned", apart from
// the failures worth an alert, and logs them only at debug: after every
// relay restart each such agent used to add a "tls" or "aborted" failure
// and an info line.
func TestAbandonedHandshakes(t *testing.T) {
	r := startRelay(t, nil)
	// TCP, mid-TLS: the ClientHello sent, the connection closed.
	c, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	gone := errors.New("gone")
	tc := tls.Client(c, &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{ALPN}, InsecureSkipVerify: true,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { c.Close(); return gone }})
	if err := tc.Handshake(); !errors.Is(err, gone) {
		t.Fatalf("TLS handshake: %v, want it cut short", err)
	}
	// Both transports: a session up, closed before its control stream.
	for _, kind := range kinds {
		tlsConf, err := (&transport.Verifier{Pin: r.Pin}).ClientTLSConfig(r.Addr, ALPN)
		if err != nil {
			t.Fatal(err)
		}
		var d transport.Dialer = &transport.TCPDialer{TLS: tlsConf, Options: testOptions()}
		if kind == TransportQUIC {
			d = &transport.QUICDialer{TLS: tlsConf, Options: testOptions()}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := d.Dial(ctx, r.Addr)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		s.Close()
	}
	waitFor(t, "three abandoned handshakes counted", 10*time.Second, func() bool {
		return r.Relay.Stats().HandshakeFailures["abandoned"] == 3
	})
	time.Sleep(100 * time.Millisecond)
	if got := r.Relay.Stats().HandshakeFailures; len(got) != 1 {
		t.Errorf("handshake failures %v, want only 3 abandoned", got)
	}
}

func roundTrip(t *testing.T, addr, what string) {
	t.Helper()
	c := dialPublic(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); string(got) != "hello" {
		t.Fatalf("%s: echo gave %q, %v", what, got, err)
	}
}

// Malformed frames from an authenticated agent close that session only.
func TestMalformedFramesCloseOnlyThatSession(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		good := mustRunAgent(t, r.agentConfig(kind, startServer(t, echo)))
		cases := map[string][]byte{
			"unknown type":  {0xee, 0, 0},
			"oversized":     {typeRegister, 0xff, 0xff},
			"truncated":     {typeRegister, 0, 20, 1, 2},
			"bad string":    {typeRegister, 0, 11, 0, 0, 0, 1, 0xff, 0xff, 1, 0, 0, 0, 0},
			"wrong message": mustAppend(t, &Hello{Version: 1}),
		}
		seen := 0
		for name, frame := range cases {
			s := dialRaw(t, r, kind)
			ctl := authenticate(t, s)
			ctl.Write(frame)
			if name == "truncated" {
				ctl.CloseWrite()
			}
			ctl.SetReadDeadline(time.Now().Add(5 * time.Second))
			m, err := ReadMessage(ctl)
			if name != "truncated" {
				if e, ok := m.(*Error); !ok || e.Code != CodeProtocol {
					t.Errorf("%s: relay answered %v, %v; want a protocol ERROR", name, m, err)
				}
			}
			s.Close() // as an agent does on an ERROR
			waitFor(t, name+": relay to log the protocol error", 5*time.Second, func() bool {
				return strings.Count(r.Log.String(), "code=protocol") >= seen+1
			})
			seen++
		}
		roundTrip(t, good.Public(0), "the well-behaved agent's tunnel")
	})
}

func mustAppend(t *testing.T, m Message) []byte {
	b, err := AppendMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A session that never authenticates is closed at the handshake deadline
// and never gets a port.
func TestHandshakeDeadline(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, func(c *RelayConfig) { c.HandshakeTimeout = 300 * time.Millisecond })
		s := dialRaw(t, r, kind)
		ctl, _ := s.OpenStream(context.Background())
		ctl.Write([]byte{typeHello}) // a partial frame, then silence
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("an unauthenticated session outlived the handshake deadline by seconds")
		}
		if n := len(r.Relay.Tunnels()); n != 0 {
			t.Fatalf("%d tunnels exist", n)
		}
	})
}

// Before authenticating, an agent cannot pile up streams: the relay's
// transport admits MaxAgentStreams, and the relay reads only the first.
func TestUnauthenticatedStreamCap(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		s := dialRaw(t, r, kind)
		var refused bool
		for i := range MaxAgentStreams + 4 {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			st, err := s.OpenStream(ctx)
			cancel()
			if err != nil {
				refused = true // QUIC: the stream limit blocks the open
				break
			}
			if i == 0 {
				st.Write([]byte{typeHello}) // a control stream, mid-frame
			} else {
				st.Write([]byte{0})
			}
			if i >= MaxAgentStreams {
				// TLS+smux: a stream over the limit is reset, so writes fail.
				deadline := time.Now().Add(5 * time.Second)
				for time.Now().Before(deadline) {
					if _, err := st.Write([]byte{0}); err != nil {
						refused = true
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				break
			}
		}
		if !refused {
			t.Fatalf("an unauthenticated session opened more than %d streams", MaxAgentStreams)
		}
		select {
		case <-s.Done():
			t.Fatal("the session itself closed: the stream cap was not what refused")
		default:
		}
	})
}

// A stream an agent opens before it is welcomed is closed at once, and its
// datagrams are taken and dropped, not left holding what the agent sends
// until the handshake deadline (over TLS+smux, up to the session's whole
// receive window, and the datagram queue); the handshake goes on.
func TestStreamBeforeWelcomeClosed(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		// The deadline is far off: a stream left open would be closed
		// only with the session, and the handshake after it would fail.
		r := startRelay(t, func(c *RelayConfig) { c.HandshakeTimeout = time.Minute })
		s := dialRaw(t, r, kind)
		ctl, err := s.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteMessage(ctl, &Hello{Version: ProtocolVersion, Software: "test", KeyID: KeyID(testSecret)}); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMessage(ctl)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// A datagram stream's start, which a welcomed agent's stream
		// would be served for.
		if _, err := st.Write([]byte{DatagramStreamMarker, 0, 1, 0}); err != nil {
			// The relay's reset came first (under load, over TLS+smux):
			// the stream was refused all the same.
			if !errors.Is(err, net.ErrClosed) {
				t.Fatal(err)
			}
		} else if _, err := io.Copy(io.Discard, st); err == nil {
			// Over TLS+smux the relay's close ends the stream with its
			// FIN; check that its RESET came too: writes fail.
			for {
				if _, err := st.Write(make([]byte, 1024)); err != nil {
					break
				}
			}
		}
		select {
		case <-s.Done():
			t.Fatal("the session closed instead of the stream")
		default:
		}
		dg := AppendStreamHeader(nil, StreamHeader{Tunnel: 1, Client: netip.MustParseAddrPort("192.0.2.1:9")})
		dg = append(dg, "junk"...)
		for r.Relay.Stats().UDPDrops == 0 {
			if err := s.SendDatagram(dg); err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.Done():
				t.Fatal("the session closed before the relay took its datagrams")
			case <-time.After(10 * time.Millisecond):
			}
		}
		ekm, _ := sessionBinding(s)
		if err := WriteMessage(ctl, &Auth{Proof: Proof(testSecret, m.(*Challenge).Nonce, ekm)}); err != nil {
			t.Fatal(err)
		}
		if m, err = ReadMessage(ctl); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*Welcome); !ok {
			t.Fatalf("got %T, want *Welcome", m)
		}
	})
}

// PING and DRAIN may come at any time, even between REGISTER and
// REGISTERED (a group probes its members when another joins): the agent
// answers the PING, reads past both, and registers.
func TestAgentTakesPingBeforeRegistered(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		ponged := make(chan uint64, 1)
		cfg := fakeRelay(t, kind, func(ctl transport.Stream) {
			greet(ctl, "fake relayd")
			m, _ := ReadMessage(ctl)
			reg, ok := m.(*Register)
			if !ok {
				return
			}
			WriteMessage(ctl, &Ping{Data: 42})
			WriteMessage(ctl, &Drain{})
			WriteMessage(ctl, &Registered{Request: reg.Request, Tunnel: 1, Protos: reg.Protos, Port: 12345})
			for {
				m, err := ReadMessage(ctl)
				if err != nil {
					return
				}
				if p, ok := m.(*Pong); ok {
					ponged <- p.Data
				}
			}
		})
		a, err := runAgent(t, cfg)
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		if len(a.Endpoints) != 1 || a.Endpoints[0].Port != 12345 {
			t.Fatalf("endpoints %+v, want port 12345", a.Endpoints)
		}
		select {
		case d := <-ponged:
			if d != 42 {
				t.Fatalf("PONG carried %d, want 42", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no PONG for the relay's PING")
		}
	})
}

// The relay does not probe an agent while it serves that agent's REGISTER:
// an agent of an older version would take a PING before its REGISTERED for
// a protocol error. A member marked as registering gets no PING when
// another joins its group; once unmarked, it does. (This covers probe's
// check; the test sets the mark itself.)
func TestRelayDoesNotProbeWhileRegistering(t *testing.T) {
	forEachTransport(t, func(t *testing.T, kind string) {
		r := startRelay(t, nil)
		join := func(inst byte) transport.Stream {
			ctl := authenticateAs(t, dialRaw(t, r, kind), [instanceLen]byte{inst})
			ctl.SetDeadline(time.Now().Add(5 * time.Second))
			if err := WriteMessage(ctl, &Register{Request: 1, Name: "g", Protos: ProtoTCP}); err != nil {
				t.Fatal(err)
			}
			if m, err := ReadMessage(ctl); err != nil {
				t.Fatalf("waiting for REGISTERED: %v", err)
			} else if _, ok := m.(*Registered); !ok {
				t.Fatalf("got %T, want *Registered", m)
			}
			return ctl
		}
		first := join(1)
		// A PING answered means the relay's control loop has left the
		// REGISTER, and cleared its own mark, before this test sets it.
		if err := WriteMessage(first, &Ping{Data: 7}); err != nil {
			t.Fatal(err)
		}
		if m, err := ReadMessage(first); err != nil {
			t.Fatalf("waiting for PONG: %v", err)
		} else if _, ok := m.(*Pong); !ok {
			t.Fatalf("got %T, want *Pong", m)
		}
		r.Relay.mu.Lock()
		var a *agentConn
		for c := range r.Relay.agents {
			a = c
		}
		r.Relay.mu.Unlock()
		a.registering.Store(true)
		join(2)
		first.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if m, err := ReadMessage(first); err == nil {
			t.Fatalf("a registering member got %T when another joined", m)
		}
		a.registering.Store(false)
		join(3)
		first.SetReadDeadline(time.Now().Add(5 * time.Second))
		if m, err := ReadMessage(first); err != nil {
			t.Fatalf("waiting for the probe: %v", err)
		} else if _, ok := m.(*Ping); !ok {
			t.Fatalf("got %T, want the probe's *Ping", m)
		}
	})
}
