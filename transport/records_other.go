//go:build !unix

package transport

import "errors"

// rawReads: elsewhere records read through the connection, which waits
// holding the receive buffer.
const rawReads = false

func readFD(uintptr, []byte) (int, error) {
	return 0, errors.New("records: no raw reads on this system")
}
