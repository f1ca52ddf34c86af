package main

import (
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestVersion: relayctl version prints one line with the version, commit,
// protocol version and the Go toolchain it was built with.
func TestVersion(t *testing.T) {
	t.Parallel()
	pt.CheckVersion(t, pt.RelayctlBin, "relayctl")
}
