package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

var checkCommand = &cli.Command{
	Name:      "check",
	Usage:     "validate relay.toml; exit 1 with the file, line and key of the first problem",
	ArgsUsage: " ",
	Flags:     []cli.Flag{commandConfigFlag()},
	Action: func(c *cli.Context) error {
		if err := noArgs(c); err != nil {
			return err
		}
		path, set := stringFlag(c, "config")
		if !set {
			return cli.Exit("check needs --config FILE", 2)
		}
		cfg, err := loadConfig(c)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		// relayd reads them only at start: check them too, or check says
		// ok to a file relayd refuses to start with.
		if cfg.Relay.CertFile != "" {
			if _, err := cfg.certificate(); err != nil {
				return cli.Exit(err.Error(), 1)
			}
		}
		for _, w := range readableSecrets(cfg) {
			fmt.Fprintf(c.App.ErrWriter, "relayd: warning: %s: %s (mode %04o): %s\n", w.file, w.msg, w.mode, w.fix)
		}
		for _, id := range spacedSecrets(cfg) {
			fmt.Fprintf(c.App.ErrWriter, "relayd: warning: %s: token %q: %s\n", path, id, spacedSecretWarning)
		}
		if w := ephemeralWarning(cfg.Relay.Ports); w != nil {
			fmt.Fprintf(c.App.ErrWriter, "relayd: warning: %s: %s (%s of them): %s\n", path, w.msg(), w.overlap, w.fix())
		}
		fmt.Fprintf(c.App.Writer, "%s: ok (listen %s, ports %s, %d token(s))\n",
			path, cfg.Relay.Listen, cfg.Relay.Ports, len(cfg.Tokens))
		return nil
	},
}
