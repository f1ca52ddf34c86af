//go:build !linux

package transport

// setQuickAck does nothing: TCP_QUICKACK is Linux's.
func setQuickAck(fd uintptr) {}
