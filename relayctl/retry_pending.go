package main

import "github.com/relaytun/relay/tunnel"

// setRetries passes the reconnect settings to the agent.
// TODO(agentcli): set cfg.MaxRetries, RetryMaxDelay and WaitForRelay once
// tunnel.AgentConfig has them (branch main).
func setRetries(cfg *tunnel.AgentConfig, s *agentSpec) {}
