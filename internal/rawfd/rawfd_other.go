//go:build !unix

// Package rawfd reads a socket's descriptor directly, for copy loops that
// wait for readability without holding a buffer and read only once the
// socket has something (tunnel's copies and pumps, transport's records).
package rawfd

import "errors"

// Supported reports whether Read works on this system: here it does not,
// and callers read through the connection instead.
const Supported = false

// Read fails: there are no raw reads on this system.
func Read(uintptr, []byte) (int, error) {
	return 0, errors.New("rawfd: no raw reads on this system")
}

// Ended reports false: it cannot tell here.
func Ended(uintptr) bool { return false }
