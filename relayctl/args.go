package main

import (
	"strings"

	"github.com/relaytun/relay/internal/clihelp"
	"github.com/relaytun/relay/tunnel"
	"github.com/urfave/cli/v2"
)

// relayFlags say which relay to use and how to trust it: expose's and
// bench's.
func relayFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "relay", Aliases: []string{"r"}, EnvVars: []string{"RELAY_ADDR"}, Usage: "the relay's `HOST:PORT` (port 7000 if left out)"},
		&cli.StringFlag{Name: "token", Aliases: []string{"t"}, EnvVars: []string{"RELAY_TOKEN"}, Usage: "the `SECRET` the relay knows you by"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"RELAY_TOKEN_FILE"}, Usage: "read the secret from `FILE` instead of --token, so it shows in no process list"},
		&cli.StringFlag{Name: "fingerprint", EnvVars: []string{"RELAY_FINGERPRINT"}, Usage: "pin the relay's key (`SHA256:…`, from `relayd fingerprint`)"},
		&cli.StringFlag{Name: "known-relays", EnvVars: []string{"RELAY_KNOWN_RELAYS"}, Usage: "`FILE` of relay keys trusted on first use (default: ~/.config/relayctl/known_relays)"},
		&cli.StringFlag{Name: "transport", Value: tunnel.TransportAuto, EnvVars: []string{"RELAY_TRANSPORT"}, Usage: "auto, quic or tcp; auto tries QUIC and falls back to TCP when UDP is blocked"},
		&cli.StringFlag{Name: "proxy", EnvVars: []string{"RELAY_PROXY"}, Usage: "reach the relay through this HTTP or SOCKS5 proxy (`URL`: http://[USER:PASS@]HOST:PORT, https://… or socks5://…); TCP only"},
	}
}

// setRelay takes relayFlags' values into s.
func (s *agentSpec) setRelay(c *cli.Context) {
	s.Relay, s.Token, s.TokenFile = c.String("relay"), c.String("token"), c.String("token-file")
	s.Fingerprint, s.KnownRelays, s.Transport = c.String("fingerprint"), c.String("known-relays"), c.String("transport")
	s.Proxy = c.String("proxy")
}

// commandLine is what relayctl runs for its own arguments: a help request
// anywhere on the line answered as such (clihelp.HelpArgs), and flags moved
// ahead of LOCAL.
func commandLine(app *cli.App, args []string) []string {
	return reorderArgs(app, clihelp.HelpArgs(app, args))
}

// reorderArgs moves a command's flags ahead of its positional arguments, so
// `relayctl expose localhost:8080 --relay r:7000` works: urfave/cli stops
// reading flags at the first positional one. Everything after "--" is left
// where it is.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	cmd := app.Command(args[1])
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	clihelp.AddValueFlags(takesValue, cmd.Flags)
	var flags, pos []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			pos = append(pos, rest[i:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if takesValue[name] {
			if i+1 == len(rest) {
				// The last argument, and its value left out: moved
				// ahead of LOCAL, it would take LOCAL for its value
				// (`expose 8080 --relay` used --relay 8080, then
				// said LOCAL was missing). Without what follows
				// it, the flag package says what is wrong: the
				// flag needs a value.
				return append([]string{args[0], args[1]}, flags...)
			}
			flags = append(flags, rest[i+1])
			i++
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	return append(out, pos...)
}
