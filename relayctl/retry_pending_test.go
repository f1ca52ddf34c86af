package main

import (
	"time"

	"github.com/relaytun/relay/tunnel"
)

// retryMismatch says how c's reconnect settings differ from those given.
// TODO(agentcli): compare once tunnel.AgentConfig has them (branch main).
func retryMismatch(c tunnel.AgentConfig, maxRetries int, maxDelay time.Duration, wait bool) string {
	return ""
}
