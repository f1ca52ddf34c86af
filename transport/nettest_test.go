package transport

import (
	"net"
	"testing"

	"golang.org/x/net/nettest"
)

// TestNetConn checks that a Stream behaves like a net.Conn, on both
// transports. Each pipe is a fresh session: c1 is the stream's opener, c2 the
// acceptor.
func TestNetConn(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			srv := newTestServer(t, testOptions(), nil)
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				client, server := srv.connect(t, kind)
				a, b := openPair(t, client, server)
				stop = func() {
					a.Close()
					b.Close()
					client.Close()
					server.Close()
				}
				return a, b, stop, nil
			})
		})
	}
}
