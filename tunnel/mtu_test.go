package tunnel

import (
	"bytes"
	"testing"

	"github.com/relaytun/relay/internal/impair"
)

// TestQUICOverMinimumMTUPath: over a path that carries no more than 1232
// bytes of UDP payload (an IPv6 path at the 1280-byte minimum MTU), a QUIC
// agent connects, and a game's datagrams of every size still arrive
// (those too large for a QUIC datagram on such a path go on the datagram
// stream). With quic-go's default first packets of 1280 bytes, no
// handshake ever completed, and only --transport auto got through, over
// TLS+smux.
func TestQUICOverMinimumMTUPath(t *testing.T) {
	t.Parallel()
	r := startRelay(t, nil)
	path := impair.Config{MaxPacket: 1232}
	p := newSimProxy(t, TransportQUIC, r.Addr, path)
	srv := startUDPEcho(t)
	cfg := r.udpAgentConfig(TransportQUIC, ProtoUDP, srv.Addr)
	cfg.Relay = p.Addr()
	a := mustRunAgent(t, cfg)
	c := dialUDP(t, endpointFor(t, a, "udp"))
	for _, size := range []int{1, 1200, 1232, 1472} {
		exchange(t, c, bytes.Repeat([]byte{byte(size)}, size))
	}
}
