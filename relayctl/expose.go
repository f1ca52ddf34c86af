package main

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/clihelp"
	"github.com/relaytun/relay/internal/tomlconf"
	"github.com/relaytun/relay/tunnel"
)

var exposeCommand = &cli.Command{
	Name:      "expose",
	Usage:     "put local servers on the relay's public ports",
	ArgsUsage: "LOCAL... [-- COMMAND [ARG...]]",
	Description: "LOCAL is a port (8080) or host:port (localhost:8080, [::1]:8080, 192.168.1.5:25565).\n" +
		"Several LOCALs give several tunnels over one session. Flags may come before or after LOCAL.\n" +
		"Once every tunnel is live, one line per public listener is printed on stdout:\n" +
		"tcp://HOST:PORT or udp://HOST:PORT (both for --proto tcp,udp). Logs go to stderr.\n\n" +
		"With -- COMMAND, relayctl starts COMMAND, exposes LOCAL once it accepts connections,\n" +
		"passes signals on to it, and exits with its exit code when it ends.",
	Flags: append(relayFlags(),
		&cli.StringFlag{Name: "name", Usage: "tunnel `NAME` on the relay (default: from LOCAL, e.g. localhost-8080)"},
		&cli.StringFlag{Name: "port", Usage: "public port `N` or a range A-B to pick from (default: any the relay allows)"},
		&cli.StringFlag{Name: "proto", Value: "tcp", Usage: "tcp, udp, or tcp,udp (both on one public port number)"},
		&cli.StringFlag{Name: "proxy-protocol", Usage: "send the local server a PROXY protocol header with the client's address: v1 or v2 (TCP), v2 (UDP)"},
		&cli.BoolFlag{Name: "transparent", Usage: "connect to the local server from each client's own address, for servers that read no PROXY header (Linux; needs CAP_NET_ADMIN and two routes, see the README)"},
		&cli.StringSliceFlag{Name: "allow", Usage: "admit only public clients from `CIDR` (or a bare IP); repeat it or separate with commas"},
		&cli.StringSliceFlag{Name: "deny", Usage: "turn away public clients from `CIDR` (or a bare IP); repeat it or separate with commas"},
		&cli.IntFlag{Name: "max-retries", Value: defaultSpec().MaxRetries, Usage: "give up after `N` failed reconnects in a row (0: retry forever)"},
		&cli.DurationFlag{Name: "retry-max-delay", Value: defaultSpec().RetryMaxDelay.Duration, Usage: "longest wait between reconnects (`DURATION`, e.g. 30s)"},
		&cli.BoolFlag{Name: "wait-for-relay", Usage: "retry the first connection too, instead of exiting 1 when the relay is unreachable"},
		&cli.DurationFlag{Name: "idle-timeout", Value: defaultSpec().IdleTimeout.Duration, Usage: "drop the session and reconnect when the relay is silent this long (`DURATION`)"},
		&cli.DurationFlag{Name: "keepalive", Value: defaultSpec().KeepAlive.Duration, Usage: "ping the relay every `DURATION`; shorter than --idle-timeout"},
		&cli.DurationFlag{Name: "udp-flow-timeout", Value: defaultSpec().FlowTimeout.Duration, Usage: "end a UDP flow quiet both ways for `DURATION`"},
		&cli.DurationFlag{Name: "drain-timeout", Value: defaultSpec().DrainTimeout.Duration, Usage: "on SIGINT or SIGTERM, wait this long (`DURATION`) for open connections to finish"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		controlFlag(),
	),
	OnUsageError: flagUsageError,
	Action:       exposeAction,
}

// bareDuration is the flag package's error for a value it could not parse,
// when that value is a bare number.
var bareDuration = regexp.MustCompile(`^invalid value "([0-9]+(?:\.[0-9]+)?)" for flag -([a-z-]+): parse error$`)

// flagUsageError is a usage error (exit 2) for a flag relayctl could not
// parse; a duration given as a bare number ("--retry-max-delay 30") says to
// add a unit, as agent.toml's keys do, instead of "parse error".
func flagUsageError(c *cli.Context, err error, _ bool) error {
	if m := bareDuration.FindStringSubmatch(err.Error()); m != nil && c.Command != nil {
		for _, f := range c.Command.Flags {
			if d, ok := f.(*cli.DurationFlag); ok && d.Name == m[2] {
				return cli.Exit(fmt.Sprintf("--%s: %s has no unit: write it with one, such as %ss", m[2], m[1], m[1]), exitUsage)
			}
		}
	}
	return cli.Exit(clihelp.UsageError(c, err, "relayctl"), exitUsage)
}

func exposeAction(c *cli.Context) error {
	plan, err := exposePlan(c)
	if err != nil {
		return err
	}
	return runAgent(c, plan)
}

// exposePlan turns flags and arguments into a checked plan, or a usage
// error saying what to fix.
func exposePlan(c *cli.Context) (*agentPlan, error) {
	usage := func(format string, args ...any) (*agentPlan, error) {
		return nil, cli.Exit(fmt.Sprintf(format, args...), exitUsage)
	}
	if c.NArg() == 0 {
		return usage("expose needs at least one LOCAL server, e.g. `relayctl expose localhost:8080 --relay HOST:7000`")
	}
	s := agentSpec{
		MaxRetries:    c.Int("max-retries"),
		RetryMaxDelay: tomlconf.Duration{Duration: c.Duration("retry-max-delay")},
		WaitForRelay:  c.Bool("wait-for-relay"),
		DrainTimeout:  tomlconf.Duration{Duration: c.Duration("drain-timeout")},
		IdleTimeout:   tomlconf.Duration{Duration: c.Duration("idle-timeout")},
		KeepAlive:     tomlconf.Duration{Duration: c.Duration("keepalive")},
		FlowTimeout:   tomlconf.Duration{Duration: c.Duration("udp-flow-timeout")},
		Log:           logSpec{Level: c.String("log-level"), Format: c.String("log-format")},
		given:         map[string]bool{"idle_timeout": c.IsSet("idle-timeout"), "keepalive": c.IsSet("keepalive")},
	}
	s.setRelay(c)
	port := c.String("port")
	if port != "" {
		if r, err := tunnel.ParsePortRange(port); err == nil && r.Low == r.High && c.NArg() > 1 {
			return usage("--port %d can serve one LOCAL, not %d: give a range (--port A-B) or run expose once per LOCAL", r.Low, c.NArg())
		}
	}
	allow, deny := splitCommas(c.StringSlice("allow")), splitCommas(c.StringSlice("deny"))
	for _, arg := range c.Args().Slice() {
		t := tunnelSpec{Name: c.String("name"), Local: portString(arg), Port: portString(port), Proto: c.String("proto"), ProxyProtocol: c.String("proxy-protocol"), Transparent: c.Bool("transparent"), Allow: allow, Deny: deny}
		if t.Name != "" && c.NArg() > 1 {
			// One name per tunnel: NAME-PORT, the port LOCAL's.
			if local, err := parseLocal(arg); err == nil && tunnel.ValidName(t.Name) {
				_, p, _ := net.SplitHostPort(local)
				t.Name += "-" + p
			}
		}
		s.Tunnels = append(s.Tunnels, t)
	}
	if err := sameName(c.Args().Slice(), s.Tunnels, c.String("name")); err != "" {
		return usage("%s", err)
	}
	return s.buildFromFlags()
}

// sameName says what to do when two LOCALs would make one tunnel name, in
// expose's terms: build's message ("tunnel name ... is already taken by
// tunnel 1") speaks of agent.toml's tables, and its hint (set --name) does
// not help when --name makes NAME-PORT and the two share a port.
func sameName(args []string, tunnels []tunnelSpec, flagName string) string {
	if flagName != "" && !tunnel.ValidName(flagName) {
		return "" // not made NAME-PORT: build says what is wrong with it
	}
	seen := map[string]int{} // tunnel name: index in args
	for i, t := range tunnels {
		local, err := parseLocal(args[i])
		if err != nil {
			continue // a range, or a mistake build reports
		}
		name := t.Name
		if name == "" {
			name = deriveName(local)
		}
		j, ok := seen[name]
		if !ok {
			seen[name] = i
			continue
		}
		if first, _ := parseLocal(args[j]); first == local {
			if args[j] == args[i] {
				return fmt.Sprintf("LOCAL %q is given twice: give it once", args[i])
			}
			return fmt.Sprintf("LOCAL %q and %q are the same server, %s: give it once", args[j], args[i], local)
		}
		if flagName != "" {
			return fmt.Sprintf("LOCAL %q and %q would both be tunnel %q (--name %s names each %s-PORT): run expose once for each, with a --name each, or leave --name out", args[j], args[i], name, flagName, flagName)
		}
		return fmt.Sprintf("LOCAL %q and %q would both be tunnel %q: run expose once for each, with a --name each", args[j], args[i], name)
	}
	return ""
}

// buildFromFlags builds s, which came from expose's flags (or bench's): a
// failure is a usage error naming the flag to fix.
func (s agentSpec) buildFromFlags() (*agentPlan, error) {
	plan, err := s.build(exposeNaming)
	if err != nil {
		msg := err.Error()
		var se *specError
		if errors.As(err, &se) && !se.Whole && se.Key != "" {
			msg = exposeNaming.key(se.Key) + ": " + se.Msg
		}
		return nil, cli.Exit(msg, exitUsage)
	}
	return plan, nil
}

// exposeNaming names settings by expose's flags.
var exposeNaming = naming{
	key: func(key string) string {
		if key == "tunnels" || key == "tunnels.local" {
			return "LOCAL"
		}
		key = strings.TrimPrefix(key, "tunnels.")
		return "--" + strings.NewReplacer(".", "-", "_", "-").Replace(key)
	},
	tokenEnvMissing: " (or RELAY_TOKEN, RELAY_TOKEN_FILE)",
	tokenEnvBoth:    " (RELAY_TOKEN and RELAY_TOKEN_FILE count as well)",
}

// splitCommas flattens --allow and --deny: the flag repeated, or its values
// separated by commas.
func splitCommas(vs []string) []string {
	var ss []string
	for _, v := range vs {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ss = append(ss, s)
			}
		}
	}
	return ss
}
