// Command relayctl is the agent: it dials a relay and puts local servers on
// the relay's public ports.
package main

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/internal/clihelp"
	"github.com/relaytun/relay/tunnel"
)

// Exit codes. Scripts may rely on them.
// A wrapped command's own exit code replaces them once it has run.
const (
	exitFailure    = 1 // the relay could not be reached, or the session was lost
	exitUsage      = 2 // bad flags, arguments or agent.toml
	exitRefused    = 3 // the relay refused: token, port, name or version
	exitUnverified = 4 // the relay's identity did not verify
)

// commandKey holds, in the app's Metadata, the command to wrap: what
// follows the first "--".
const commandKey = "command"

func newApp() *cli.App {
	app := &cli.App{
		Name:            "relayctl",
		Usage:           "put a local server on a relay's public port",
		Commands:        []*cli.Command{exposeCommand, runCommand, statusCommand, benchCommand, versionCommand},
		HideHelpCommand: true,
		Action:          rootAction,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError:    flagUsageError,
	}
	buildinfo.VersionFlag(app, "relayctl", tunnel.ProtocolVersion)
	// A command's own flag errors would otherwise print "Incorrect Usage"
	// and the help on stdout, which carries only the tcp:// lines.
	for _, cmd := range app.Commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = app.OnUsageError
		}
	}
	return app
}

// rootAction runs for `relayctl` with no command, or one it does not know.
// urfave/cli's default would answer a misspelt command with "No help topic"
// and exit 3, which a script reads as the relay refusing; it is a usage
// mistake (exit 2). `relayctl help [COMMAND]` prints the help, as --help does.
func rootAction(c *cli.Context) error {
	switch first := c.Args().First(); first {
	case "":
		return cli.ShowAppHelp(c)
	case "help":
		return clihelp.Help(c, c.Args().Get(1), exitUsage)
	default:
		return cli.Exit(fmt.Sprintf("unknown command %q (commands: %s; relayctl COMMAND --help shows one's flags)", first, clihelp.Commands(c.App)), exitUsage)
	}
}

func main() {
	app := newApp()
	args, command := splitCommand(os.Args)
	app.Metadata = map[string]any{commandKey: command}
	err := app.Run(commandLine(app, args))
	if err == nil {
		return
	}
	// A wrapped command's exit code comes without a message.
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(os.Stderr, "relayctl: "+msg)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		os.Exit(ec.ExitCode())
	}
	os.Exit(exitUsage)
}

// splitCommand cuts args at the first "--": relayctl's own arguments
// before, the command to wrap after. Cutting here, not in urfave/cli,
// keeps the command's own flags (java -jar) away from relayctl's.
func splitCommand(args []string) (own, command []string) {
	if i := slices.Index(args, "--"); i >= 0 {
		return args[:i], args[i+1:]
	}
	return args, nil
}
