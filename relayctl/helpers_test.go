package main

import (
	"testing"

	"github.com/relaytun/relay/internal/proctest"
)

// TestMain builds relayd and relayctl for the tests, which run them as
// processes (internal/proctest). This package's relayds hand out public
// ports 63000-64999.
func TestMain(m *testing.M) { proctest.Main(m, 63000) }
