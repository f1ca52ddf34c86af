// Command relayd is the public end of the relay: agents dial it over QUIC or
// TLS+smux, and it gives each of their tunnels a public port.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:  "relayd",
		Usage: "the public end of a reverse-tunnel relay",
		Description: "Runs the relay. Agents (relayctl expose) dial it on [relay] listen over QUIC (UDP) or\n" +
			"TLS over TCP, and each of their tunnels gets a public port from [relay] ports.",
		Flags:           append(configFlags(), logFlags()...),
		Action:          runAction,
		Commands:        []*cli.Command{checkCommand, fingerprintCommand, versionCommand},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError:    usageError,
	}
	// urfave/cli gives commands the app's usage handler only at the root.
	for _, cmd := range app.Commands {
		cmd.OnUsageError = usageError
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "relayd: "+err.Error())
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// usageError keeps help text off stdout and exits 2 for a usage mistake.
func usageError(_ *cli.Context, err error, _ bool) error {
	return cli.Exit(err.Error()+" (see relayd --help)", 2)
}

func configFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "relay.toml to use (default: the embedded defaults)", EnvVars: []string{"RELAYD_CONFIG"}},
	}
}

// loadConfig loads --config, or the defaults when it is not set.
func loadConfig(c *cli.Context) (*Config, error) {
	path := c.String("config")
	if path == "" {
		def := DefaultConfig()
		return &def, nil
	}
	return LoadConfig(path)
}
