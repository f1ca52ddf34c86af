//go:build unix

package transport

import "syscall"

// rawReads: records read the socket's descriptor directly (readMore).
const rawReads = true

// readFD reads the socket fd once, past interruptions.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
