//go:build !linux

package tunnel

import (
	"io"
	"net"
	"sync/atomic"
)

// pump is pump_linux.go's goroutine-free copy; elsewhere every direction
// has a goroutine of its own.
type pump struct{}

func startPump(io.Writer, *net.TCPConn, *atomic.Int64, func(int64, error)) (*pump, bool) {
	return nil, false
}

func (*pump) wake() {}
