// Package buildinfo reports what build of the relay is running.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// Version is set at link time (-ldflags "-X github.com/relaytun/relay/internal/buildinfo.Version=v1.2.3");
// otherwise it comes from the module's build information.
var Version = ""

// Info is the version, commit and toolchain of this binary.
type Info struct {
	Version   string
	Commit    string
	Modified  bool
	GoVersion string
}

// Read returns this binary's Info.
func Read() Info {
	in := Info{Version: Version, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	return in
}

// Software is the short name sent in the protocol handshake: "relayd v1.2.3".
func Software(program string) string { return program + " " + Read().Version }

// String is the full version line a `version` command prints.
func String(program string, protocol int) string {
	in := Read()
	commit := in.Commit
	if commit == "" {
		commit = "unknown"
	} else if len(commit) > 12 {
		commit = commit[:12]
	}
	if in.Modified {
		commit += "+dirty"
	}
	return fmt.Sprintf("%s %s (commit %s, protocol %d, %s %s/%s)",
		program, in.Version, commit, protocol, in.GoVersion, runtime.GOOS, runtime.GOARCH)
}

// VersionCommand is the `version` command both programs share.
func VersionCommand(program string, protocol int) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, commit, protocol version and Go version",
		Action: func(c *cli.Context) error {
			// Exit 2, the usage code of both programs: an argument here is a
			// mistake a script should hear about, not something to ignore.
			if c.Args().Present() {
				return cli.Exit(fmt.Sprintf("version takes no arguments (got %q)", c.Args().First()), 2)
			}
			fmt.Fprintln(c.App.Writer, String(program, protocol))
			return nil
		},
	}
}

// VersionFlag gives app a --version flag that prints what the version
// command prints: people type `relayd --version` first, and it was an
// unknown flag. The flag is the app's own rather than urfave/cli's, which
// printed the version whatever followed it (`relayd --version extra` exited
// 0): an argument after it is a usage mistake (exit 2), as after the
// command. The flag is handled in app.Before, which runs before any command
// or the app's action, and ends the run with an empty exit 0 that main
// prints nothing for.
func VersionFlag(app *cli.App, program string, protocol int) {
	// HideVersion keeps urfave/cli's own flag out; the help still shows
	// the VERSION section, which the template hides along with it.
	app.Version, app.HideVersion = Read().Version, true
	if app.CustomAppHelpTemplate == "" {
		app.CustomAppHelpTemplate = strings.Replace(cli.AppHelpTemplate, "{{if .Version}}{{if not .HideVersion}}", "{{if .Version}}{{if true}}", 1)
	}
	app.Flags = append(app.Flags, &cli.BoolFlag{Name: "version", Usage: "print the version, as the version command does"})
	before := app.Before
	app.Before = func(c *cli.Context) error {
		if !c.Bool("version") {
			if before != nil {
				return before(c)
			}
			return nil
		}
		if c.Args().Present() {
			return cli.Exit(fmt.Sprintf("--version takes no arguments (got %q)", c.Args().First()), 2)
		}
		fmt.Fprintln(c.App.Writer, String(program, protocol))
		return cli.Exit("", 0)
	}
}
