//go:build !linux && !darwin

package transport

import "net"

// setNotSentLowat does nothing and reports false: this system has no
// TCP_NOTSENT_LOWAT.
func setNotSentLowat(net.Conn, int) bool { return false }
