package transparent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// control sets IP_TRANSPARENT (or IPV6_TRANSPARENT) before the socket binds.
func control(network, _ string, c syscall.RawConn) error {
	level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
	if network == "tcp6" || network == "udp6" {
		level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting IP_TRANSPARENT: %w", serr)
	}
	return nil
}

// DialTCP connects to the server at to from the address of the client at
// from, on a port of this machine's choosing: servers act on the address,
// and a socket on the client's own port (which the client, or a spoofed
// UDP source, picks) could keep a local service that restarts meanwhile
// from listening on that port for as long as the client stays.
func DialTCP(ctx context.Context, from, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1, LocalAddr: &net.TCPAddr{IP: from.Addr().AsSlice()}, Control: control}
	c, err := d.DialContext(ctx, network("tcp", to), to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// DialUDP is DialTCP for a UDP flow.
func DialUDP(from, to netip.AddrPort) (*net.UDPConn, error) {
	d := net.Dialer{LocalAddr: &net.UDPAddr{IP: from.Addr().AsSlice()}, Control: control}
	c, err := d.Dial(network("udp", to), to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func network(proto string, to netip.AddrPort) string {
	if to.Addr().Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// checkWait bounds Check's connection: without the routes the listener's
// reply is dropped and the connection never completes; with them it
// completes in well under a millisecond.
const checkWait = 1500 * time.Millisecond

// Check connects, as DialTCP would, from an address the machine does not
// have to a listener of its own on loopback: that works only if this
// process may set IP_TRANSPARENT and the routes bring the reply back. The
// error is a *SetupError saying what to do, or ErrNoFamily when the machine
// has no loopback address of that family.
func Check(ctx context.Context, v6 bool) error {
	loop := "127.0.0.1:0"
	if v6 {
		loop = "[::1]:0"
	}
	ln, err := net.Listen("tcp", loop)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoFamily, err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	to := netip.MustParseAddrPort(ln.Addr().String())
	c, err := DialTCP(ctx, probeSource(v6), to, checkWait)
	switch {
	case err == nil:
		c.Close()
		return nil
	case errors.Is(err, unix.EPERM):
		return &SetupError{V6: v6, Err: err, Reason: "relayctl may not use IP_TRANSPARENT: run it as root, or give it CAP_NET_ADMIN (setcap cap_net_admin+ep on the binary, or AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)"}
	case ctx.Err() != nil:
		return ctx.Err()
	case isTimeout(err):
		return &SetupError{V6: v6, Err: err, Reason: fmt.Sprintf("the local server's replies to a client's %s address would not come back to relayctl: add the routes, as root: %s", Family(v6), Routes(v6))}
	}
	return &SetupError{V6: v6, Err: err, Reason: fmt.Sprintf("connecting from a client's %s address failed: %v", Family(v6), err)}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
