package tunnel

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of port numbers.
type PortRange struct{ Low, High uint16 }

func (r PortRange) String() string {
	if r.Low == r.High {
		return strconv.Itoa(int(r.Low))
	}
	return fmt.Sprintf("%d-%d", r.Low, r.High)
}

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return r.Low <= p && p <= r.High }

// Size is the number of ports in r.
func (r PortRange) Size() int { return int(r.High) - int(r.Low) + 1 }

// PortSet is a sorted list of non-overlapping ranges, as written in
// relay.toml: "20000-29999" or "24100-24109,25565".
type PortSet []PortRange

// ParsePortSet parses a comma-separated list of ports and ranges.
func ParsePortSet(s string) (PortSet, error) {
	var set PortSet
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		r, err := ParsePortRange(part)
		if err != nil {
			return nil, err
		}
		set = append(set, r)
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("port list %q names no port", s)
	}
	sort.Slice(set, func(i, j int) bool { return set[i].Low < set[j].Low })
	for i := 1; i < len(set); i++ {
		if set[i].Low <= set[i-1].High {
			return nil, fmt.Errorf("port list %q: %s overlaps %s", s, set[i], set[i-1])
		}
	}
	return set, nil
}

// ParsePortRange parses "N" or "A-B" with 1 <= A <= B <= 65535.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := parsePort(lo)
	if err != nil {
		return PortRange{}, fmt.Errorf("port %q: %w", s, err)
	}
	b := a
	if isRange {
		if b, err = parsePort(hi); err != nil {
			return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
		}
		if b < a {
			return PortRange{}, fmt.Errorf("port range %q: %d is below %d", s, b, a)
		}
	}
	return PortRange{Low: a, High: b}, nil
}

func parsePort(s string) (uint16, error) {
	t := strings.TrimSpace(s)
	n, err := strconv.Atoi(t)
	if err != nil || n < 1 || n > 65535 || strings.Trim(t, "0123456789") != "" || t[0] == '0' {
		return 0, fmt.Errorf("%q is not a port number from 1 to 65535", s)
	}
	return uint16(n), nil
}

func (s PortSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// Contains reports whether p is in the set.
func (s PortSet) Contains(p uint16) bool {
	for _, r := range s {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// Size is the number of ports in the set.
func (s PortSet) Size() int {
	n := 0
	for _, r := range s {
		n += r.Size()
	}
	return n
}

// Nth returns the i-th port of the set, 0 <= i < Size().
func (s PortSet) Nth(i int) uint16 {
	if i < 0 {
		panic("tunnel: PortSet.Nth out of range")
	}
	for _, r := range s {
		if i < r.Size() {
			return r.Low + uint16(i)
		}
		i -= r.Size()
	}
	panic("tunnel: PortSet.Nth out of range")
}

// Intersect returns the ports of s within r.
func (s PortSet) Intersect(r PortRange) PortSet {
	var out PortSet
	for _, x := range s {
		lo, hi := max(x.Low, r.Low), min(x.High, r.High)
		if lo <= hi {
			out = append(out, PortRange{lo, hi})
		}
	}
	return out
}
