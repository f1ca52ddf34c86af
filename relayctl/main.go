// Command relayctl is the agent: it dials a relay and puts local servers on
// the relay's public ports.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// Exit codes. Scripts may rely on them.
const (
	exitFailure    = 1 // the relay could not be reached, or the session was lost
	exitUsage      = 2 // bad flags or arguments
	exitRefused    = 3 // the relay refused: token, port, name or version
	exitUnverified = 4 // the relay's identity did not verify
)

func newApp() *cli.App {
	app := &cli.App{
		Name:            "relayctl",
		Usage:           "put a local server on a relay's public port",
		Commands:        []*cli.Command{exposeCommand, statusCommand, versionCommand},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit(err.Error(), exitUsage)
		},
	}
	// A command's own flag errors would otherwise print "Incorrect Usage"
	// and the help on stdout, which carries only the tcp:// lines.
	for _, cmd := range app.Commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = app.OnUsageError
		}
	}
	return app
}

func main() {
	app := newApp()
	err := app.Run(reorderArgs(app, os.Args))
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "relayctl: "+err.Error())
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		os.Exit(ec.ExitCode())
	}
	os.Exit(exitUsage)
}
