package transport

import "golang.org/x/sys/unix"

// setQuickAck sends the acknowledgement of what fd read at once.
func setQuickAck(fd uintptr) {
	unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
}
