package transparent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relaytun/relay/internal/netnstest"
)

// TestTransparent runs in a network namespace of its own: Check finds the
// routes missing and says which to add; with them, a local server sees
// the client's address, on a port of its own; and a thread
// without CAP_NET_ADMIN is told what to grant.
func TestTransparent(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	ctx := context.Background()
	for _, v6 := range []bool{false, true} {
		err := Check(ctx, v6)
		var se *SetupError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "add the routes, as root: "+Routes(v6)) {
			t.Errorf("Check(v6=%v) without routes: %v, want the routes to add", v6, err)
		}
	}
	netnstest.Sh(t, Routes(false))
	netnstest.Sh(t, Routes(true))
	for _, v6 := range []bool{false, true} {
		if err := Check(ctx, v6); err != nil {
			t.Errorf("Check(v6=%v) with the routes: %v", v6, err)
		}
	}

	for _, c := range []struct{ server, client string }{
		{"127.0.0.1:0", "203.0.113.9:40000"},
		{"[::1]:0", "[2001:db8::9]:40000"},
	} {
		from := netip.MustParseAddrPort(c.client)
		t.Run("tcp "+c.client, func(t *testing.T) {
			ln, err := net.Listen("tcp", c.server)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			to := netip.MustParseAddrPort(ln.Addr().String())
			peers := make(chan string, 2)
			go func() {
				for {
					s, err := ln.Accept()
					if err != nil {
						return
					}
					peers <- s.RemoteAddr().String()
					s.Write([]byte("hello"))
					s.Close()
				}
			}()
			first, err := DialTCP(ctx, from, to, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			second, err := DialTCP(ctx, from, to, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer second.Close()
			for range 2 {
				if got := netip.MustParseAddrPort(<-peers); got.Addr() != from.Addr() || got.Port() == from.Port() {
					t.Errorf("the server saw %s, want %s on a port other than the client's", got, from.Addr())
				}
			}
			if b, err := io.ReadAll(second); string(b) != "hello" {
				t.Errorf("the server's reply: %q, %v", b, err)
			}
		})
		t.Run("udp "+c.client, func(t *testing.T) {
			pc, err := net.ListenPacket("udp", c.server)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			go func() {
				b := make([]byte, 64)
				for {
					n, peer, err := pc.ReadFrom(b)
					if err != nil {
						return
					}
					pc.WriteTo(append([]byte(peer.String()+" "), b[:n]...), peer)
				}
			}()
			conn, err := DialUDP(from, netip.MustParseAddrPort(pc.LocalAddr().String()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write([]byte("ping"))
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 64)
			n, err := conn.Read(b)
			seen, _, _ := strings.Cut(string(b[:n]), " ")
			if got, perr := netip.ParseAddrPort(seen); err != nil || perr != nil || got.Addr() != from.Addr() || got.Port() == from.Port() {
				t.Errorf("the reply: %q, %v; want %s on a port other than the client's, then ping", b[:n], err, from.Addr())
			}
		})
	}

	// A client whose port is the server's own (ioquake3 clients use
	// 27960, as its servers do), or any other port of a local service,
	// arriving while the server is down or restarting: a socket holding
	// the client's address on that port would keep the server from
	// listening on 0.0.0.0 there for as long as the flow lasts.
	t.Run("no client's port held", func(t *testing.T) {
		for _, proto := range []string{"udp", "tcp"} {
			free, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := netip.MustParseAddrPort(free.LocalAddr().String()).Port()
			free.Close()
			from := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), port)
			to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
			var held io.Closer
			if proto == "udp" {
				held, err = DialUDP(from, to)
			} else {
				// A server on 127.0.0.1 only, moving to 0.0.0.0.
				ln, lerr := net.Listen("tcp4", to.String())
				if lerr != nil {
					t.Fatal(lerr)
				}
				held, err = DialTCP(ctx, from, to, 5*time.Second)
				ln.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			if proto == "udp" {
				var pc net.PacketConn
				if pc, err = net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", itoa(port))); err == nil {
					pc.Close()
				}
			} else {
				var ln net.Listener
				if ln, err = net.Listen("tcp4", net.JoinHostPort("0.0.0.0", itoa(port))); err == nil {
					ln.Close()
				}
			}
			held.Close()
			if err != nil {
				t.Errorf("%s: the server cannot listen on its port while a client's connection from that port is open: %v", proto, err)
			}
		}
	})

	t.Run("WildcardUDP", func(t *testing.T) {
		for _, c := range []struct {
			network, addr string
			want          bool
		}{
			{"udp4", "127.0.0.1:0", false},
			{"udp4", "0.0.0.0:0", true},
			{"udp", "[::]:0", true}, // dual-stack: it gets IPv4 too
			{"udp6", "[::1]:0", false},
		} {
			pc, err := net.ListenPacket(c.network, c.addr)
			if err != nil {
				t.Fatal(err)
			}
			port := netip.MustParseAddrPort(pc.LocalAddr().String()).Port()
			wild, got := WildcardUDP(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
			pc.Close()
			if got != c.want || got && (!wild.Addr().IsUnspecified() || wild.Port() != port) {
				t.Errorf("a server on %s: WildcardUDP %v, %v; want %v", pc.LocalAddr(), wild, got, c.want)
			}
		}
	})

	t.Run("without CAP_NET_ADMIN or CAP_NET_RAW", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() {
			// Capabilities belong to a thread: drop them on a thread
			// of its own, which ends with this goroutine.
			runtime.LockOSThread()
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			// Either capability allows IP_TRANSPARENT.
			for _, c := range []uint{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW} {
				data[c/32].Effective &^= 1 << (c % 32)
			}
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			errc <- Check(ctx, false)
		}()
		err := <-errc
		if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "run it as root, or give it CAP_NET_ADMIN") {
			t.Errorf("Check without CAP_NET_ADMIN: %v, want EPERM and what to grant", err)
		}
	})
}

func itoa(port uint16) string { return strconv.Itoa(int(port)) }
