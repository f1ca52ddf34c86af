//go:build !unix

package main

import (
	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/tunnel"
)

// wrap needs Unix process groups and signals.
func wrap(*tunnel.Agent, *agentPlan, []string) error {
	return cli.Exit("wrapping a command (-- COMMAND) needs Linux, macOS or another Unix", exitUsage)
}
