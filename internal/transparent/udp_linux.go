package transparent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// WildcardUDP reports whether the datagrams relayctl sends to the UDP
// server at to (an IPv4 loopback address) reach a socket bound to all
// addresses, 0.0.0.0 or a dual-stack [::], rather than one bound to to's
// address, and if so that socket's address. Such a server's replies to a
// client's address do not come back over lo: its socket has no source
// address, and IPv4 chooses one, and the route, from the main table, so
// the reply leaves by the default route (or fails: network unreachable)
// unless the server answers from the address each datagram came to. (A
// reply of an IPv6 socket finds its source through the rule, so [::1]
// needs no such care.) It reads /proc/net/udp and /proc/net/udp6.
func WildcardUDP(to netip.AddrPort) (netip.AddrPort, bool) {
	if !to.Addr().Is4() {
		return netip.AddrPort{}, false
	}
	var wild netip.AddrPort
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		for _, a := range procUDPListeners(f) {
			switch {
			case a.Port() != to.Port():
			case a.Addr() == to.Addr():
				return netip.AddrPort{}, false
			case a.Addr().IsUnspecified() && !wild.IsValid():
				wild = a
			}
		}
	}
	return wild, wild.IsValid()
}

// procUDPListeners is the local address of each unconnected socket in
// file, a /proc/net/udp or udp6 table: nil where it cannot be read.
func procUDPListeners(file string) []netip.AddrPort {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // the header
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 3 {
			continue
		}
		local, ok1 := procAddr(string(f[1]))
		remote, ok2 := procAddr(string(f[2]))
		if ok1 && ok2 && remote.Port() == 0 {
			out = append(out, local)
		}
	}
	return out
}

// procAddr parses a /proc/net address, "0100007F:2384": the address as
// 32-bit words each in the machine's byte order, and the port, in hex.
func procAddr(s string) (netip.AddrPort, bool) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(s[:i])
	port, perr := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	for w := 0; w < len(raw); w += 4 {
		binary.NativeEndian.PutUint32(raw[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true
}
