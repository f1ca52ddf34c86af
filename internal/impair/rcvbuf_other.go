//go:build !unix

package impair

import "syscall"

// recvBuffer does nothing here: RecvBuffer applies on Unix only.
func recvBuffer(int) func(network, address string, c syscall.RawConn) error { return nil }
