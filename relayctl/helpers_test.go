package main

import (
	"os"
	"testing"

	"github.com/relaytun/relay/internal/proctest"
)

// TestMain builds relayd and relayctl for the tests, which run them as
// processes (internal/proctest). This package's relayds hand out public
// ports 63000-64999. Started with $RELAYCTL_TEST_HELPER set, the test
// binary is instead the server the wrapping tests have relayctl start.
func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" && helperServer != nil {
		helperServer(addr)
		return
	}
	proctest.Main(m, 63000)
}

// helperEnv holds the address helperServer listens on.
const helperEnv = "RELAYCTL_TEST_HELPER"

// helperServer is set where the wrapping tests run (wrap_test.go: Unix).
var helperServer func(addr string)
