// Package clihelp is what relayd's and relayctl's command lines share:
// `help [COMMAND]`, and the list of commands a usage error names. Both
// hide urfave/cli's own help command, whose "No help topic" exits 3, the
// code scripts read as the relay refusing.
package clihelp

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/relaytun/relay/internal/editdist"
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

// flagErrRE matches the flag package's errors, which name a flag with one
// dash (-tokn) whatever the user typed (--tokn).
var flagErrRE = regexp.MustCompile(`^(flag provided but not defined: |flag needs an argument: |invalid (?:boolean )?value "[^"]*" for (?:flag )?)-+([^\s=:]+)(.*)$`)

// UsageError words a flag error of prog's command line as the user typed
// it, with the flag meant where one is close ("unknown flag --tokn: did
// you mean --token?"), and where to see the flags (prog CMD --help).
func UsageError(c *cli.Context, err error, prog string) string {
	msg := err.Error()
	help, flags := prog+" --help", c.App.Flags
	if c.Command != nil && c.Command.Name != "" && c.App.Command(c.Command.Name) != nil {
		help, flags = prog+" "+c.Command.Name+" --help", c.Command.Flags
	}
	if m := flagErrRE.FindStringSubmatch(msg); m != nil {
		switch m[1] {
		case "flag provided but not defined: ":
			msg = "unknown flag " + dashed(m[2])
			if best := closestFlag(m[2], flags); best != "" {
				msg += ": did you mean " + dashed(best) + "?"
			}
		case "flag needs an argument: ":
			msg = "flag " + dashed(m[2]) + " needs a value"
		default:
			msg = m[1] + dashed(m[2]) + m[3]
		}
	}
	return msg + " (see " + help + ")"
}

// dashed writes a flag's name as --help shows it: -w, --watch.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// closestFlag is the name among flags one or two edits from name, or "".
func closestFlag(name string, flags []cli.Flag) string {
	best, bestD := "", 3
	limit := 2
	if len(name) <= 4 {
		limit = 1
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if len(n) < 2 {
				continue
			}
			if d := editdist.Distance(name, n); d <= limit && d < bestD {
				best, bestD = n, d
			}
		}
	}
	return best
}

// HelpArgs rewrites a command line that asks for help (-h or --help) among
// its other arguments into one urfave/cli answers with that help. Left as
// it is, "relayctl expose localhost:8080 --help" or "relayd --help serve"
// has urfave/cli look for a help topic named by the other argument and
// fail with exit 3, the code scripts read as the relay refusing. A line
// with a command gets that command's help; one without, the app's help,
// or, when it holds a word that is no command, `help WORD`'s usage error.
// args[0] is the program; nothing after "--" is looked at, and a flag's
// value is not taken for a command or a help request. --help=true asks too;
// --help=false does not.
func HelpArgs(app *cli.App, args []string) []string {
	takesValue := map[string]bool{}
	AddValueFlags(takesValue, app.Flags)
	var cmd *cli.Command
	var words []string
	help := false
	for i := 1; i < len(args) && args[i] != "--"; i++ {
		a := args[i]
		if a == "-" || !strings.HasPrefix(a, "-") {
			if c := app.Command(a); c != nil && cmd == nil && len(words) == 0 {
				cmd = c
				AddValueFlags(takesValue, c.Flags)
				continue
			}
			words = append(words, a)
			continue
		}
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case name == "h" || name == "help":
			// --help=true (or -h=1) asks as --help does; the flag
			// package reads the value with strconv.ParseBool.
			on := !inline
			if inline {
				on, _ = strconv.ParseBool(value)
			}
			help = help || on
		case takesValue[name] && !inline:
			i++
		}
	}
	if len(words) > 0 && words[0] == "help" {
		words = words[1:]
	}
	switch {
	case !help:
		return args
	case cmd != nil:
		return []string{args[0], cmd.Name, "--help"}
	case len(words) > 0:
		return []string{args[0], "help", words[0]}
	}
	return []string{args[0], "--help"}
}

// AddValueFlags marks in takesValue every name of the flags that take a
// value (all but booleans), which a command line then gives in the
// argument after the flag unless it is written --flag=value.
func AddValueFlags(takesValue map[string]bool, flags []cli.Flag) {
	for _, f := range flags {
		if _, isBool := f.(*cli.BoolFlag); isBool {
			continue
		}
		for _, n := range f.Names() {
			takesValue[n] = true
		}
	}
}
