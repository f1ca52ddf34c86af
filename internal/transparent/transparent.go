// Package transparent connects to a local server from a remote client's own
// address, so that a server which reads no PROXY header (most game servers)
// still sees each player's IP: its logs, bans and per-address limits then
// work as they would on a public machine.
//
// It uses Linux's IP_TRANSPARENT (IPV6_TRANSPARENT), which lets a socket
// bind an address the machine does not have. That needs CAP_NET_ADMIN, and
// two routes, since the server's replies go to the client's address and
// must come back to relayctl over lo rather than out of the machine:
//
//	ip rule add from 127.0.0.1/8 iif lo table 100
//	ip route add local 0.0.0.0/0 dev lo table 100
//
// (and the same with -6, ::1/128 and ::/0 for IPv6). The rule matches only
// packets the machine itself sends from a loopback address, which are the
// local server's replies; everything else routes as before. Check tells
// whether both are in place.
package transparent

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrUnsupported is returned where the system has no IP_TRANSPARENT.
var ErrUnsupported = errors.New("transparent connections need Linux (IP_TRANSPARENT)")

// Table is the routing table the advised routes use. Any unused number
// works; 100 is what go-mmproxy's and similar guides use, so one set of
// routes serves them all.
const Table = 100

// Routes are the commands, run as root, that bring the local server's
// replies to a client's address back to relayctl.
func Routes(v6 bool) string {
	if v6 {
		return fmt.Sprintf("ip -6 rule add from ::1/128 iif lo table %d; ip -6 route add local ::/0 dev lo table %d", Table, Table)
	}
	return fmt.Sprintf("ip rule add from 127.0.0.1/8 iif lo table %d; ip route add local 0.0.0.0/0 dev lo table %d", Table, Table)
}

// SetupError says why this machine cannot make transparent connections,
// and what to do about it.
type SetupError struct {
	V6     bool
	Reason string
	Err    error
}

func (e *SetupError) Error() string {
	return "transparent: " + e.Reason
}

func (e *SetupError) Unwrap() error { return e.Err }

// Family names an address family in messages: "IPv4" or "IPv6".
func Family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// probeSource is the client address Check connects from: in a range kept for
// documentation (RFC 5737, RFC 3849), so no real peer has it.
func probeSource(v6 bool) netip.AddrPort {
	if v6 {
		return netip.MustParseAddrPort("[2001:db8::7]:0")
	}
	return netip.MustParseAddrPort("192.0.2.7:0")
}

// ErrNoFamily is Check's answer where the machine has no loopback address
// of the family asked about (IPv6 turned off).
var ErrNoFamily = errors.New("no loopback address of that family")
