package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/relaytun/relay/tunnel"
)

// parseLocal turns LOCAL ("8080", "localhost:8080", "[::1]:8080",
// "host:port") into a dialable "host:port". Errors leave the setting's name
// to the caller: LOCAL for expose, local in agent.toml.
func parseLocal(s string) (string, error) {
	if isDigits(s) {
		if n, err := strconv.Atoi(s); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q: port must be 1-65535", s)
		}
		return net.JoinHostPort("localhost", s), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not PORT or HOST:PORT (%s)", s, localHint(s))
	}
	if n, err := strconv.Atoi(port); err != nil || !isDigits(port) || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port must be 1-65535", s)
	}
	if host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port), nil
}

// localHint says what is wrong with a LOCAL that is not HOST:PORT, for the
// usual slips: a URL copied from a browser, an IPv6 address without
// brackets (what [::1]:8080 means), a host without its port.
func localHint(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		return "not a URL: give it without " + s[:i+3] + ", for example localhost:8080"
	}
	if strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
		if i := strings.LastIndex(s, ":"); isDigits(s[i+1:]) {
			if _, err := netip.ParseAddr(s[:i]); err == nil {
				return "an IPv6 address goes in brackets: " + net.JoinHostPort(s[:i], s[i+1:])
			}
		}
		if a, err := netip.ParseAddr(s); err == nil && a.Is6() {
			return "an IPv6 address goes in brackets, with the port after: " + net.JoinHostPort(s, "8080")
		}
		return "an IPv6 address goes in brackets, for example [::1]:8080"
	}
	if s != "" && (!strings.Contains(s, ":") || strings.HasSuffix(s, "]")) {
		return "no port: add one, for example " + net.JoinHostPort(strings.Trim(s, "[]"), "8080")
	}
	return "for example 8080 or localhost:8080"
}

// parseLocalRange is parseLocal that also takes a port range, "2456-2458"
// or "host:2456-2458": it returns the host and the ports.
func parseLocalRange(s string) (string, tunnel.PortRange, error) {
	host, ports := "", s
	if i := strings.LastIndex(s, ":"); i >= 0 {
		host, ports = s[:i], s[i+1:]
	}
	if lo, hi, ok := strings.Cut(ports, "-"); ok && isDigits(lo) && isDigits(hi) {
		r, err := tunnel.ParsePortRange(ports)
		if err != nil {
			return "", r, fmt.Errorf("%q: %v", s, err)
		}
		// The host is checked as parseLocal checks it, on the LOCAL of
		// the range's first port. (That LOCAL rebuilt with JoinHostPort,
		// which brackets whatever holds a colon, let "http://x:2456-2458"
		// through, with "http://x" as the host.)
		first, err := parseLocal(strings.TrimSuffix(s, "-"+hi))
		if err != nil {
			return "", r, err
		}
		host, _, _ = net.SplitHostPort(first)
		return host, r, nil
	}
	local, err := parseLocal(s)
	if err != nil {
		return "", tunnel.PortRange{}, err
	}
	h, p, _ := net.SplitHostPort(local)
	n, _ := strconv.Atoi(p)
	return h, tunnel.PortRange{Low: uint16(n), High: uint16(n)}, nil
}

// deriveName names a tunnel after its local address, the same way every
// time, so the same command asks for the same tunnel: "localhost-8080".
func deriveName(local string) string {
	host, port, _ := net.SplitHostPort(local)
	var b strings.Builder
	for _, r := range host {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	h := strings.Trim(b.String(), "-._")
	if h == "" {
		h = "local"
	}
	name := h + "-" + port
	if len(name) > 63 {
		name = name[len(name)-63:]
		name = strings.TrimLeft(name, "-._")
	}
	return name
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}
