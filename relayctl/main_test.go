package main

import (
	"bytes"
	"errors"
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
	} {
		app := newApp()
		var out bytes.Buffer
		app.Writer = &out
		err := app.Run(reorderArgs(app, append([]string{"relayctl"}, tt.args...)))
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
