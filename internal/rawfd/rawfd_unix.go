//go:build unix

// Package rawfd reads a socket's descriptor directly, for copy loops that
// wait for readability without holding a buffer and read only once the
// socket has something (tunnel's copies and pumps, transport's records).
package rawfd

import "syscall"

// Supported reports whether Read works on this system.
const Supported = true

// Read reads the descriptor fd once into p, past interruptions. A socket
// with nothing to read returns syscall.EAGAIN.
func Read(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// Ended reports whether the socket fd will read nothing more: its peer
// ended the connection, or it failed. It looks without taking anything
// (MSG_PEEK) and without waiting.
func Ended(fd uintptr) bool {
	var b [1]byte
	for {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			return true
		}
		return n == 0
	}
}
