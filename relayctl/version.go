package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/tunnel"
)

var versionCommand = &cli.Command{
	Name:  "version",
	Usage: "print the version, commit, protocol version and Go version",
	Action: func(c *cli.Context) error {
		fmt.Fprintln(c.App.Writer, buildinfo.String("relayctl", tunnel.ProtocolVersion))
		return nil
	},
}
