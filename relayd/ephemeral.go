package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/relaytun/relay/tunnel"
)

// ephemeralFiles are where Linux keeps the range it takes outgoing
// connections' local ports from, and the ports it leaves out of that range.
// Elsewhere they do not exist, and relayd says nothing.
var ephemeralFiles = [2]string{"/proc/sys/net/ipv4/ip_local_port_range", "/proc/sys/net/ipv4/ip_local_reserved_ports"}

// portWarning is [relay] ports overlapping the kernel's ephemeral range:
// while no tunnel listens on a port there (its agent away, relayd
// restarting), any outgoing connection of the machine may take it, and the
// tunnel, back, gets another port.
type portWarning struct {
	ephemeral tunnel.PortRange
	overlap   tunnel.PortSet
	reserved  tunnel.PortSet // the kernel's reserved ports now
}

func (w *portWarning) msg() string {
	return "[relay] ports overlap the range the kernel takes outgoing connections' local ports from: " +
		"an outgoing connection may take a tunnel's port while nothing listens on it, and the tunnel, back, gets another"
}

func (w *portWarning) fix() string {
	var dflt string
	if d := (tunnel.PortSet{{Low: 20000, High: 29999}}); len(d.Intersect(w.ephemeral)) == 0 {
		dflt = " (the default 20000-29999 is)"
	}
	// The sysctl replaces the list: the ports reserved now stay in it.
	keep := append(slices.Clone(w.reserved), w.overlap...)
	slices.SortFunc(keep, func(a, b tunnel.PortRange) int { return cmp.Compare(a.Low, b.Low) })
	return fmt.Sprintf("pick [relay] ports outside %s%s, or keep the kernel off them: sysctl -w net.ipv4.ip_local_reserved_ports=%s",
		w.ephemeral, dflt, keep)
}

// ephemeralWarning reads the kernel's ephemeral range and reserved ports,
// and returns the warning for ports, or nil.
func ephemeralWarning(ports string) *portWarning {
	set, err := tunnel.ParsePortSet(ports)
	if err != nil {
		return nil
	}
	rng, err := os.ReadFile(ephemeralFiles[0])
	if err != nil {
		return nil
	}
	reserved, _ := os.ReadFile(ephemeralFiles[1])
	return ephemeralOverlap(set, string(rng), string(reserved))
}

// ephemeralOverlap is the ports of set that the kernel may hand out:
// within rangeText ("LOW HIGH", as ip_local_port_range reads) and not in
// reserved (a comma list of ports and ranges, as ip_local_reserved_ports
// reads). It returns nil when there are none, or rangeText cannot be read.
func ephemeralOverlap(set tunnel.PortSet, rangeText, reserved string) *portWarning {
	f := strings.Fields(rangeText)
	if len(f) != 2 {
		return nil
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return nil
	}
	eph := tunnel.PortRange{Low: uint16(lo), High: uint16(hi)}
	// An unreadable reserved list leaves out nothing: the warning may then
	// name a port the operator reserved, which is the safe side.
	res, _ := tunnel.ParsePortSet(strings.TrimSpace(reserved))
	var overlap tunnel.PortSet
	for _, r := range set.Intersect(eph) {
		for p := int(r.Low); p <= int(r.High); p++ {
			if res.Contains(uint16(p)) {
				continue
			}
			if n := len(overlap); n > 0 && int(overlap[n-1].High) == p-1 {
				overlap[n-1].High = uint16(p)
			} else {
				overlap = append(overlap, tunnel.PortRange{Low: uint16(p), High: uint16(p)})
			}
		}
	}
	if len(overlap) == 0 {
		return nil
	}
	return &portWarning{ephemeral: eph, overlap: overlap, reserved: res}
}

func warnEphemeral(log *slog.Logger, cfg *Config) {
	if w := ephemeralWarning(cfg.Relay.Ports); w != nil {
		log.Warn(w.msg(), "ports", cfg.Relay.Ports, "ephemeral", w.ephemeral.String(), "overlap", w.overlap.String(), "fix", w.fix())
	}
}
