package main

import (
	"fmt"
	"path/filepath"

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
		if id.createdKey {
			// It used to make one silently, in whatever state_dir this
			// shell resolves: run beside a systemd unit's relayd (whose key
			// is in its $STATE_DIRECTORY), it printed a key no relay
			// serves, and agents pinning it were refused (exit 4).
			file := filepath.Join(id.stateDir, "relay.key")
			if abs, err := filepath.Abs(file); err == nil {
				file = abs
			}
			fmt.Fprintf(c.App.ErrWriter, "relayd: no key was there yet, so this made one: %s; a relayd already running with another state_dir has another key "+
				"(a systemd unit's is in its $STATE_DIRECTORY: STATE_DIRECTORY=/var/lib/relayd relayd fingerprint --config FILE)\n", file)
		}
		return nil
	},
}
