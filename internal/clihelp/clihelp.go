// Package clihelp is what relayd's and relayctl's command lines share:
// `help [COMMAND]`, and the list of commands a usage error names. Both
// hide urfave/cli's own help command, whose "No help topic" exits 3, the
// code scripts read as the relay refusing.
package clihelp

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// Commands names the app's commands, comma-separated, for a usage error.
func Commands(app *cli.App) string {
	names := make([]string, 0, len(app.Commands))
	for _, cmd := range app.Commands {
		if !cmd.Hidden {
			names = append(names, cmd.Name)
		}
	}
	return strings.Join(names, ", ")
}

// Help answers `PROG help [TOPIC]` as --help does: the app's help with no
// topic, a command's for one, and a usage error (exit code usage) for a
// topic that is no command.
func Help(c *cli.Context, topic string, usage int) error {
	switch {
	case topic == "":
		return cli.ShowAppHelp(c)
	case c.App.Command(topic) != nil:
		return cli.ShowCommandHelp(c, topic)
	}
	return cli.Exit(fmt.Sprintf("no command %q to show help for (commands: %s)", topic, Commands(c.App)), usage)
}
