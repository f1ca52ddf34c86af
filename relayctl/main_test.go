package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestUnknownCommand: a misspelt command is a usage mistake (exit 2) naming
// the commands there are, not urfave/cli's "No help topic" and exit 3, which
// scripts read as the relay refusing; `relayctl help [COMMAND]` prints the
// help as --help does.
func TestUnknownCommand(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int    // 0: no error
		want string // in the error, or in the help printed
	}{
		{[]string{"exposee", "8080"}, exitUsage, `unknown command "exposee" (commands: expose, run, status, bench, version;`},
		{[]string{"help", "bogus"}, exitUsage, `no command "bogus" to show help for (commands: expose, run, status, bench, version)`},
		{[]string{"help"}, 0, "relayctl - put a local server on a relay's public port"},
		{[]string{"help", "expose"}, 0, "relayctl expose - put local servers on the relay's public ports"},
		{nil, 0, "COMMANDS:"},
		// --help anywhere is a help request, not a help topic to look
		// up (urfave/cli's "No help topic for 'localhost:8080'", exit 3).
		{[]string{"expose", "localhost:8080", "--relay", "r:7000", "--help"}, 0, "relayctl expose - put local servers"},
		{[]string{"expose", "--help", "extra"}, 0, "relayctl expose - put local servers"},
		{[]string{"status", "-h", "x"}, 0, "relayctl status - "},
		{[]string{"--help", "expose"}, 0, "relayctl expose - put local servers"},
		{[]string{"help", "expose", "--help"}, 0, "relayctl expose - put local servers"},
		{[]string{"--help"}, 0, "COMMANDS:"},
		{[]string{"--help", "nope"}, exitUsage, `no command "nope" to show help for (commands: expose, run, status, bench, version)`},
		// A flag's value is not a command, nor a help request.
		{[]string{"expose", "--name", "run", "8080", "--help"}, 0, "relayctl expose - put local servers"},
		{[]string{"expose", "--name", "-h"}, exitUsage, "LOCAL"},
	} {
		app := newApp()
		var out bytes.Buffer
		app.Writer = &out
		err := app.Run(commandLine(app, append([]string{"relayctl"}, tt.args...)))
		if tt.code == 0 {
			if err != nil || !strings.Contains(out.String(), tt.want) {
				t.Errorf("%q: %v, printed %q; want the help with %q", tt.args, err, out.String(), tt.want)
			}
			continue
		}
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != tt.code || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want exit %d saying %q", tt.args, err, tt.code, tt.want)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q on stdout, which carries only the tcp:// lines", tt.args, out.String())
		}
	}
}

// TestDefaultControlServed: the default socket, PID.sock, served by another
// agent (one of the same PID in another container sharing the folder) costs
// a warning that does not tell the user to leave out the --control they
// left out.
func TestDefaultControlServed(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", "")
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir, err := controlDir(true)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, strconv.Itoa(os.Getpid())+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var logs bytes.Buffer
	app := &cli.App{Flags: []cli.Flag{controlFlag()}, Action: func(c *cli.Context) error {
		stop, err := startControl(c, nil, slog.New(slog.NewTextHandler(&logs, nil)))
		if err == nil {
			stop()
		}
		return err
	}}
	if err := app.Run([]string{"relayctl"}); err != nil {
		t.Fatal(err)
	}
	if got := logs.String(); !strings.Contains(got, "another relayctl is serving this socket") || strings.Contains(got, "leave --control out") {
		t.Errorf("warning for the default socket served by another agent: %q; want no advice to leave --control out", got)
	}
}

// TestFlagErrors: a mistyped or value-less flag is a usage error (exit 2)
// written as the user typed it (--tokn, not the flag package's -tokn), with
// the flag meant where one is close and the help to read. A value left off
// the last flag used to take LOCAL for it: `expose 8080 --relay` dialed the
// relay "8080", then said LOCAL was missing.
func TestFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // the whole error
	}{
		{[]string{"expose", "8080", "--tokn", "x"}, "unknown flag --tokn: did you mean --token? (see relayctl expose --help)"},
		{[]string{"expose", "8080", "--tokn=x"}, "unknown flag --tokn: did you mean --token? (see relayctl expose --help)"},
		{[]string{"expose", "8080", "--verbose"}, "unknown flag --verbose (see relayctl expose --help)"},
		{[]string{"status", "--jsn"}, "unknown flag --jsn: did you mean --json? (see relayctl status --help)"},
		{[]string{"bench", "--stream", "3"}, "unknown flag --stream: did you mean --streams? (see relayctl bench --help)"},
		{[]string{"run", "--confg", "a.toml"}, "unknown flag --confg: did you mean --config? (see relayctl run --help)"},
		{[]string{"--verbose"}, "unknown flag --verbose (see relayctl --help)"},
		{[]string{"expose", "8080", "--relay"}, "flag --relay needs a value (see relayctl expose --help)"},
		{[]string{"expose", "8080", "--name", "web", "-r"}, "flag -r needs a value (see relayctl expose --help)"},
		{[]string{"expose", "8080", "--max-retries", "abc"}, `invalid value "abc" for flag --max-retries: parse error (see relayctl expose --help)`},
		{[]string{"expose", "8080", "--wait-for-relay=maybe"}, `invalid boolean value "maybe" for --wait-for-relay: parse error (see relayctl expose --help)`},
		{[]string{"expose", "8080", "--retry-max-delay", "30"}, "--retry-max-delay: 30 has no unit: write it with one, such as 30s"},
		{[]string{"bench", "--duration", "3"}, "--duration: 3 has no unit: write it with one, such as 3s"},
	} {
		app := newApp()
		var out bytes.Buffer
		app.Writer = &out
		app.ErrWriter = &out
		err := app.Run(reorderArgs(app, append([]string{"relayctl"}, tt.args...)))
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != tt.want {
			t.Errorf("%q: %v\nwant exit %d saying %q", tt.args, err, exitUsage, tt.want)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", tt.args, out.String())
		}
	}
}
