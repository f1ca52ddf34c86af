//go:build !linux

package transparent

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// DialTCP needs Linux.
func DialTCP(context.Context, netip.AddrPort, netip.AddrPort, time.Duration) (*net.TCPConn, error) {
	return nil, ErrUnsupported
}

// DialUDP needs Linux.
func DialUDP(netip.AddrPort, netip.AddrPort) (*net.UDPConn, error) {
	return nil, ErrUnsupported
}

// Check says what is missing: here, Linux.
func Check(context.Context, bool) error {
	return &SetupError{Reason: "needs Linux (IP_TRANSPARENT); on this system use --proxy-protocol with a server that reads it", Err: ErrUnsupported}
}

// WildcardUDP needs Linux.
func WildcardUDP(netip.AddrPort) (netip.AddrPort, bool) {
	return netip.AddrPort{}, false
}
