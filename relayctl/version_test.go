package main

import (
	"regexp"
	"runtime"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestVersionLine: relayctl version prints the version, commit, protocol
// version and the Go toolchain it was built with.
func TestVersionLine(t *testing.T) {
	t.Parallel()
	out, _, code := pt.Run(t, nil, pt.RelayctlBin, "version")
	re := regexp.MustCompile(`^relayctl \S+ \(commit \S+, protocol 1, ` + regexp.QuoteMeta(runtime.Version()) + ` \S+/\S+\)\n$`)
	if code != 0 || !re.MatchString(out) {
		t.Errorf("exit %d, stdout %q; want 0 and a line matching %s", code, out, re)
	}
}
