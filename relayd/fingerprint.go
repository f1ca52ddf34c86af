package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/transport"
)

var fingerprintCommand = &cli.Command{
	Name:      "fingerprint",
	Usage:     "print the relay's key fingerprint for relayctl --fingerprint (creates the key if absent)",
	ArgsUsage: " ",
	Flags:     []cli.Flag{commandConfigFlag()},
	Action: func(c *cli.Context) error {
		if err := noArgs(c); err != nil {
			return err
		}
		cfg, err := loadConfig(c)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		id, err := loadIdentity(cfg)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		fmt.Fprintln(c.App.Writer, transport.Fingerprint(id.cert.Leaf))
		return nil
	},
}
