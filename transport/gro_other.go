//go:build !linux

package transport

import "net"

// newGROConn returns c: generic receive offload is Linux's (gro_linux.go).
func newGROConn(c *net.UDPConn) net.PacketConn { return c }
