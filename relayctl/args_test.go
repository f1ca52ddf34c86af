package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestReorderArgs(t *testing.T) {
	app := newApp()
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"flags after local", "relayctl expose localhost:8080 --relay r:7000 --token s",
			"relayctl expose --relay r:7000 --token s localhost:8080"},
		{"flags before local", "relayctl expose --relay r:7000 localhost:8080",
			"relayctl expose --relay r:7000 localhost:8080"},
		{"flags between locals", "relayctl expose 8080 --relay r:7000 9090 --port 20000-20010",
			"relayctl expose --relay r:7000 --port 20000-20010 8080 9090"},
		{"aliases and single dash", "relayctl expose 8080 -r r:7000 -t s",
			"relayctl expose -r r:7000 -t s 8080"},
		{"flag=value", "relayctl expose 8080 --relay=r:7000 --token=s",
			"relayctl expose --relay=r:7000 --token=s 8080"},
		{"value that looks like a local", "relayctl expose --port 8080 9090",
			"relayctl expose --port 8080 9090"},
		{"value that starts with a dash", "relayctl expose 8080 --name -x",
			"relayctl expose --name -x 8080"},
		{"dash is positional", "relayctl expose - --relay r",
			"relayctl expose --relay r -"},
		{"double dash ends flags", "relayctl expose 8080 --relay r -- --token s",
			"relayctl expose --relay r 8080 -- --token s"},
		// Not "--relay 8080": that dialed the relay "8080" and then said
		// LOCAL was missing. Alone, the flag is reported as needing a value.
		{"missing value at the end", "relayctl expose 8080 --relay",
			"relayctl expose --relay"},
		{"unknown flag takes no value", "relayctl expose 8080 --bogus x",
			"relayctl expose --bogus 8080 x"},
		{"no command", "relayctl", "relayctl"},
		{"unknown command", "relayctl frobnicate 8080 --relay r", "relayctl frobnicate 8080 --relay r"},
		{"global flag", "relayctl --help", "relayctl --help"},
		{"version", "relayctl version", "relayctl version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.Fields(tt.in)
			orig := slices.Clone(in)
			got := strings.Join(reorderArgs(app, in), " ")
			if got != tt.want {
				t.Errorf("reorderArgs(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
			if !slices.Equal(in, orig) {
				t.Errorf("reorderArgs changed its input to %q", in)
			}
		})
	}
}

// TestReorderArgsKnowsEveryFlag: every expose flag but the booleans takes a
// value, so its value must travel with it.
func TestReorderArgsKnowsEveryFlag(t *testing.T) {
	app := newApp()
	for _, f := range exposeCommand.Flags {
		if _, ok := f.(*cli.BoolFlag); ok {
			continue
		}
		for _, n := range f.Names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			in := []string{"relayctl", "expose", "8080", dash + n, "v"}
			want := "relayctl expose " + dash + n + " v 8080"
			if got := strings.Join(reorderArgs(app, in), " "); got != want {
				t.Errorf("flag %s: got %q, want %q", n, got, want)
			}
		}
	}
}
