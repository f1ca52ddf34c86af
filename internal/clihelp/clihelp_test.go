package clihelp

import (
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestHelpArgs(t *testing.T) {
	app := &cli.App{
		Flags: []cli.Flag{&cli.StringFlag{Name: "config", Aliases: []string{"c"}}},
		Commands: []*cli.Command{{
			Name: "expose",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name"},
				&cli.BoolFlag{Name: "json"},
			},
		}},
	}
	for _, tt := range []struct{ in, want string }{
		{"p expose 8080 --json", "p expose 8080 --json"},
		{"p expose 8080 --json --help", "p expose --help"},
		{"p expose 8080 -h --json", "p expose --help"},
		{"p -c f expose --help", "p expose --help"},
		{"p --help expose", "p expose --help"},
		{"p help expose -h", "p help expose"},
		{"p --help", "p --help"},
		{"p help --help", "p --help"},
		{"p --help nope", "p help nope"},
		{"p nope expose --help", "p help nope"},
		// A flag's value is neither a command nor a help request.
		{"p --config expose --help", "p --help"},
		{"p expose --name -h", "p expose --name -h"},
		{"p expose --name=x --help", "p expose --help"},
		// --help=false does not ask, --help=true does (urfave/cli took
		// 8080 for a help topic: exit 3); after "--", the wrapped command's.
		{"p expose --help=false 8080", "p expose --help=false 8080"},
		{"p expose 8080 --help=true", "p expose --help"},
		{"p --help=1 nope", "p help nope"},
		{"p expose -h=maybe 8080", "p expose -h=maybe 8080"},
		{"p expose 8080 -- server --help", "p expose 8080 -- server --help"},
	} {
		if got := HelpArgs(app, strings.Fields(tt.in)); !slices.Equal(got, strings.Fields(tt.want)) {
			t.Errorf("%q: got %q, want %q", tt.in, strings.Join(got, " "), tt.want)
		}
	}
}
