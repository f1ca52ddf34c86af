//go:build !linux

package tunnel

import "net"

// listenTCP listens on addr for a tunnel's clients; net turns keep-alive on
// for each one it accepts.
func listenTCP(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}
