package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/relaytun/relay/tunnel"
)

func TestParseLocal(t *testing.T) {
	good := []struct{ in, want string }{
		{"8080", "localhost:8080"},
		{"1", "localhost:1"},
		{"65535", "localhost:65535"},
		{"localhost:8080", "localhost:8080"},
		{":8080", "localhost:8080"},
		{"127.0.0.1:9", "127.0.0.1:9"},
		{"192.168.1.5:25565", "192.168.1.5:25565"},
		{"[::1]:8080", "[::1]:8080"},
		{"game.lan:27015", "game.lan:27015"},
	}
	for _, tt := range good {
		got, err := parseLocal(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseLocal(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	bad := []struct{ in, want string }{
		{"notaport", "is not PORT or HOST:PORT"},
		{"", "is not PORT or HOST:PORT"},
		{"0", "1-65535"},
		{"70000", "1-65535"},
		{"-1", "not PORT or HOST:PORT"},
		{"+8080", "not PORT or HOST:PORT"},
		{"localhost:+80", "1-65535"},
		{"localhost:0", "1-65535"},
		{"localhost:70000", "1-65535"},
		{"localhost:http", "1-65535"},
		{"localhost:", "1-65535"},
		{"::1:8080", "is not PORT or HOST:PORT"},
		{"localhost", "is not PORT or HOST:PORT"},
		// The usual slips say what to write instead.
		{"::1:8080", "an IPv6 address goes in brackets: [::1]:8080"},
		{"2001:db8::5:25565", "an IPv6 address goes in brackets: [2001:db8::5]:25565"},
		{"::1", "an IPv6 address goes in brackets, with the port after: [::1]:8080"},
		{"a:b:c", "an IPv6 address goes in brackets, for example [::1]:8080"},
		{"[::1]", "no port: add one, for example [::1]:8080"},
		{"localhost", "no port: add one, for example localhost:8080"},
		{"http://localhost:8080", "not a URL: give it without http://, for example localhost:8080"},
	}
	for _, tt := range bad {
		got, err := parseLocal(tt.in)
		if err == nil {
			t.Errorf("parseLocal(%q) = %q, want an error", tt.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.in)) {
			t.Errorf("parseLocal(%q): error %q, want it to quote LOCAL and say %q", tt.in, err, tt.want)
		}
	}
}

func TestDeriveName(t *testing.T) {
	long := strings.Repeat("a", 70) + ".example.com"
	tests := []struct{ local, want string }{
		{"localhost:8080", "localhost-8080"},
		{"127.0.0.1:9", "127.0.0.1-9"},
		{"192.168.1.5:25565", "192.168.1.5-25565"},
		{"game.lan:27015", "game.lan-27015"},
		{"[::1]:8080", "1-8080"},
		{"[::]:80", "local-80"},
		{"[fe80::1%eth0]:22", "fe80--1-eth0-22"},
		{"_weird_:1", "weird-1"},
		{long + ":8080", strings.Repeat("a", 46) + ".example.com-8080"},
	}
	for _, tt := range tests {
		got := deriveName(tt.local)
		if got != tt.want {
			t.Errorf("deriveName(%q) = %q, want %q", tt.local, got, tt.want)
		}
		if !tunnel.ValidName(got) {
			t.Errorf("deriveName(%q) = %q, which the relay would refuse", tt.local, got)
		}
		if again := deriveName(tt.local); again != got {
			t.Errorf("deriveName(%q) is not stable: %q then %q", tt.local, got, again)
		}
	}
}

// TestDeriveNameFromEveryLocal: whatever parseLocal accepts gets a name the
// relay accepts.
func TestDeriveNameFromEveryLocal(t *testing.T) {
	for _, in := range []string{"8080", "localhost:1", "[::1]:65535", "[2001:db8::1]:80", ":443",
		strings.Repeat("x-", 40) + ":80", "...:80", "a_b.c-d:80"} {
		local, err := parseLocal(in)
		if err != nil {
			t.Errorf("parseLocal(%q): %v", in, err)
			continue
		}
		if name := deriveName(local); !tunnel.ValidName(name) {
			t.Errorf("LOCAL %q: derived name %q is invalid", in, name)
		}
	}
}

// TestParseLocalRange: a LOCAL may be a port range, with or without a host;
// a range that is no range of ports, and a host that parseLocal would
// refuse, are refused with the whole LOCAL or its first port quoted (a URL
// in front of a range used to pass, its "http://localhost" taken as a host
// name to dial).
func TestParseLocalRange(t *testing.T) {
	for _, tt := range []struct {
		in, host string
		low, hi  uint16
	}{
		{"8080", "localhost", 8080, 8080},
		{"2456-2458", "localhost", 2456, 2458},
		{":2456-2458", "localhost", 2456, 2458},
		{"localhost:2456-2458", "localhost", 2456, 2458},
		{"192.168.1.5:2456-2458", "192.168.1.5", 2456, 2458},
		{"[::1]:2456-2458", "::1", 2456, 2458},
		{"game.lan:9000-9000", "game.lan", 9000, 9000},
	} {
		host, r, err := parseLocalRange(tt.in)
		if err != nil || host != tt.host || r != (tunnel.PortRange{Low: tt.low, High: tt.hi}) {
			t.Errorf("parseLocalRange(%q) = %q, %v, %v; want %q, %d-%d", tt.in, host, r, err, tt.host, tt.low, tt.hi)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"9000-8000", `"9000-8000": port range "9000-8000": 8000 is below 9000`},
		{"localhost:9000-8000", `"localhost:9000-8000": port range "9000-8000": 8000 is below 9000`},
		{"localhost:1-70000", `"localhost:1-70000": port range "1-70000": "70000" is not a port number from 1 to 65535`},
		{"0-5", `"0-5": port "0-5": "0" is not a port number from 1 to 65535`},
		{"02456-2458", `"02456-2458": port "02456-2458": "02456" is not a port number from 1 to 65535`},
		{"http://localhost:2456-2458", `"http://localhost:2456" is not PORT or HOST:PORT (not a URL: give it without http://, for example localhost:8080)`},
		{"::1:2456-2458", `"::1:2456" is not PORT or HOST:PORT (an IPv6 address goes in brackets: [::1]:2456)`},
		{"localhost:2456-", `"localhost:2456-": port must be 1-65535`},
	} {
		host, r, err := parseLocalRange(tt.in)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("parseLocalRange(%q) = %q, %v, %v; want the error %q", tt.in, host, r, err, tt.want)
		}
	}
}
