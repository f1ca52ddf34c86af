// Command relayd is the public end of the relay: agents dial it over QUIC or
// TLS+smux, and it gives each of their tunnels a public port.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/internal/clihelp"
	"github.com/relaytun/relay/tunnel"
)

func main() {
	app := &cli.App{
		Name:  "relayd",
		Usage: "the public end of a reverse-tunnel relay",
		Description: "Runs the relay. Agents (relayctl expose) dial it on [relay] listen over QUIC (UDP) or\n" +
			"TLS over TCP, and each of their tunnels gets a public port from [relay] ports.",
		Flags:           append([]cli.Flag{globalConfigFlag()}, logFlags()...),
		Action:          runAction,
		Commands:        []*cli.Command{checkCommand, fingerprintCommand, versionCommand},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError:    usageError,
	}
	buildinfo.VersionFlag(app, "relayd", tunnel.ProtocolVersion)
	// urfave/cli gives commands the app's usage handler only at the root.
	for _, cmd := range app.Commands {
		cmd.OnUsageError = usageError
	}
	if err := app.Run(clihelp.HelpArgs(app, os.Args)); err != nil {
		// --version ends the run with an exit 0 that has no message.
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "relayd: "+msg)
		}
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// usageError keeps help text off stdout and exits 2 for a usage mistake.
func usageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(clihelp.UsageError(c, err, "relayd"), 2)
}

// globalConfigFlag is --config before any command. Only this copy reads
// RELAYD_CONFIG: a command's copy reading it as well would count as set and
// hide a --config given before the command.
func globalConfigFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "relay.toml to use (default: the embedded defaults)", EnvVars: []string{"RELAYD_CONFIG"}}
}

// commandConfigFlag is --config after a command (relayd check --config FILE).
func commandConfigFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "relay.toml to use; may also come before the command, or from $RELAYD_CONFIG"}
}

// stringFlag returns the flag name as set by the innermost command that set
// it, so `relayd --config FILE check` and `relayd check --config FILE` agree.
// urfave/cli looks past a command only for flags the command does not
// define, and check and fingerprint define --config.
func stringFlag(c *cli.Context, name string) (value string, set bool) {
	for _, cc := range c.Lineage() {
		if cc.IsSet(name) {
			return cc.String(name), true
		}
	}
	return "", false
}

// noArgs refuses the arguments of a command that reads its file from
// --config: `relayd check relay.toml` would otherwise check something
// other than the file named, and say nothing of it.
func noArgs(c *cli.Context) error {
	if !c.Args().Present() {
		return nil
	}
	return cli.Exit(fmt.Sprintf("%s takes no arguments (got %q): it reads the file given with --config FILE", c.Command.Name, c.Args().First()), 2)
}

// loadConfig loads --config, or the defaults when it is not set.
func loadConfig(c *cli.Context) (*Config, error) {
	path, _ := stringFlag(c, "config")
	if path == "" {
		def := DefaultConfig()
		return &def, nil
	}
	return LoadConfig(path)
}
