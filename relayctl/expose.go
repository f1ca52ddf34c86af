package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// defaultRelayPort is added to a --relay without a port.
const defaultRelayPort = "7000"

var exposeCommand = &cli.Command{
	Name:      "expose",
	Usage:     "put local servers on the relay's public ports",
	ArgsUsage: "LOCAL...",
	Description: "LOCAL is a port (8080) or host:port (localhost:8080, [::1]:8080, 192.168.1.5:25565).\n" +
		"Several LOCALs give several tunnels over one session. Flags may come before or after LOCAL.\n" +
		"Once every tunnel is live, one line per public listener is printed on stdout:\n" +
		"tcp://HOST:PORT. Logs go to stderr.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "relay", Aliases: []string{"r"}, EnvVars: []string{"RELAY_ADDR"}, Usage: "the relay's `HOST:PORT` (port 7000 if left out)"},
		&cli.StringFlag{Name: "token", Aliases: []string{"t"}, EnvVars: []string{"RELAY_TOKEN"}, Usage: "the `SECRET` the relay knows you by"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"RELAY_TOKEN_FILE"}, Usage: "read the secret from `FILE` instead of --token, so it shows in no process list"},
		&cli.StringFlag{Name: "fingerprint", EnvVars: []string{"RELAY_FINGERPRINT"}, Usage: "pin the relay's key (`SHA256:…`, from `relayd fingerprint`)"},
		&cli.StringFlag{Name: "transport", Value: tunnel.TransportAuto, EnvVars: []string{"RELAY_TRANSPORT"}, Usage: "auto, quic or tcp; auto tries QUIC and falls back to TCP when UDP is blocked"},
		&cli.StringFlag{Name: "name", Usage: "tunnel `NAME` on the relay (default: from LOCAL, e.g. localhost-8080)"},
		&cli.StringFlag{Name: "port", Usage: "public port `N` or a range A-B to pick from (default: any the relay allows)"},
		&cli.StringFlag{Name: "proto", Value: "tcp", Usage: "tcp (UDP tunnels are not in this build yet)"},
		&cli.StringSliceFlag{Name: "allow", Usage: "admit only public clients from `CIDR` (or a bare IP); repeat it or separate with commas"},
		&cli.StringSliceFlag{Name: "deny", Usage: "turn away public clients from `CIDR` (or a bare IP); repeat it or separate with commas"},
		&cli.StringFlag{Name: "known-relays", EnvVars: []string{"RELAY_KNOWN_RELAYS"}, Usage: "`FILE` of relay keys trusted on first use (default: ~/.config/relayctl/known_relays)"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		controlFlag(),
	},
	Action: exposeAction,
}

func exposeAction(c *cli.Context) error {
	cfg, err := exposeConfig(c)
	if err != nil {
		return err
	}
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Verifier.Logger = log
	cfg.OnReady = func(eps []tunnel.Endpoint) {
		for _, e := range eps {
			fmt.Fprintln(c.App.Writer, e.URL())
		}
	}
	agent, err := tunnel.NewAgent(cfg)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	stopControl, err := startControl(c, agent, log)
	if err != nil {
		return err
	}
	defer stopControl()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agentExit(agent.Run(ctx), cfg.Relay)
}

// exposeConfig turns flags and arguments into an agent config, or a usage
// error saying what to fix.
func exposeConfig(c *cli.Context) (tunnel.AgentConfig, error) {
	usage := func(format string, args ...any) (tunnel.AgentConfig, error) {
		return tunnel.AgentConfig{}, cli.Exit(fmt.Sprintf(format, args...), exitUsage)
	}
	cfg := tunnel.DefaultAgentConfig()
	cfg.Software = buildinfo.Software("relayctl")
	if c.NArg() == 0 {
		return usage("expose needs at least one LOCAL server, e.g. `relayctl expose localhost:8080 --relay HOST:7000`")
	}
	relay := c.String("relay")
	if relay == "" {
		return usage("--relay (or RELAY_ADDR) is required: the relay's HOST:PORT, e.g. relay.example.com:7000")
	}
	if _, _, err := net.SplitHostPort(relay); err != nil {
		relay = net.JoinHostPort(strings.Trim(relay, "[]"), defaultRelayPort)
	}
	cfg.Relay = relay
	cfg.Token = c.String("token")
	switch file := c.String("token-file"); {
	case cfg.Token != "" && file != "":
		return usage("--token and --token-file are both set (RELAY_TOKEN and RELAY_TOKEN_FILE count as well): use one")
	case file != "":
		secret, err := readTokenFile(file)
		if err != nil {
			return usage("--token-file: %v", err)
		}
		cfg.Token = secret
	case cfg.Token == "":
		return usage("--token or --token-file (or RELAY_TOKEN, RELAY_TOKEN_FILE) is required: the secret from the relay's operator (relayd prints one on first start)")
	}
	cfg.Transport = c.String("transport")
	switch cfg.Transport {
	case tunnel.TransportAuto, tunnel.TransportQUIC, tunnel.TransportTCP:
	default:
		return usage("--transport %q is not auto, quic or tcp", cfg.Transport)
	}
	switch p := c.String("proto"); p {
	case "tcp":
	case "udp", "tcp,udp", "udp,tcp":
		return usage("--proto %s: UDP tunnels are not in this build yet; use --proto tcp", p)
	default:
		return usage("--proto %q is not tcp, udp or tcp,udp", p)
	}

	v := &transport.Verifier{}
	if fp := c.String("fingerprint"); fp != "" {
		pin, err := transport.ParseFingerprint(fp)
		if err != nil {
			return usage("--fingerprint: %v", err)
		}
		v.Pin = pin
	} else {
		v.KnownRelays = c.String("known-relays")
		if v.KnownRelays == "" {
			dir, err := os.UserConfigDir()
			if err != nil {
				return usage("no --fingerprint and no config directory for the known-relays file: pass --fingerprint or --known-relays")
			}
			v.KnownRelays = filepath.Join(dir, "relayctl", "known_relays")
		}
	}
	cfg.Verifier = v

	var ports tunnel.PortRange
	if p := c.String("port"); p != "" {
		r, err := tunnel.ParsePortRange(p)
		if err != nil {
			return usage("--port: %v", err)
		}
		if r.Low == r.High && c.NArg() > 1 {
			return usage("--port %d can serve one LOCAL, not %d: give a range (--port A-B) or run expose once per LOCAL", r.Low, c.NArg())
		}
		ports = r
	}
	allow, err := prefixFlag(c, "allow")
	if err != nil {
		return usage("%v", err)
	}
	deny, err := prefixFlag(c, "deny")
	if err != nil {
		return usage("%v", err)
	}
	name := c.String("name")
	if name != "" && !tunnel.ValidName(name) {
		return usage("--name %q is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	for _, arg := range c.Args().Slice() {
		local, err := parseLocal(arg)
		if err != nil {
			return usage("%v", err)
		}
		t := tunnel.TunnelSpec{Name: deriveName(local), Local: local, Ports: ports, Allow: allow, Deny: deny}
		if name != "" {
			t.Name = name
			if c.NArg() > 1 {
				_, port, _ := net.SplitHostPort(local)
				t.Name = name + "-" + port
			}
		}
		cfg.Tunnels = append(cfg.Tunnels, t)
	}
	if err := cfg.Validate(); err != nil {
		return usage("%v", err)
	}
	return cfg, nil
}

// maxTokenFile bounds --token-file: it holds one secret, not a document.
const maxTokenFile = 4 << 10

// readTokenFile reads the secret from path, trimming surrounding
// whitespace. Errors name the file.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", path, pathErr(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", path, pathErr(err))
	}
	if len(data) > maxTokenFile {
		return "", fmt.Errorf("%s is larger than %d bytes: it should hold the token's secret alone", path, maxTokenFile)
	}
	secret := strings.TrimSpace(string(data))
	if secret == "" {
		return "", fmt.Errorf("%s is empty: it should hold the token's secret", path)
	}
	return secret, nil
}

// pathErr drops the operation and path from a *fs.PathError, for messages
// that name the file already.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// prefixFlag parses --allow or --deny: CIDR prefixes or bare IPs, the flag
// repeated or its values separated by commas.
func prefixFlag(c *cli.Context, flag string) ([]netip.Prefix, error) {
	var ss []string
	for _, v := range c.StringSlice(flag) {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ss = append(ss, s)
			}
		}
	}
	if len(ss) == 0 {
		return nil, nil
	}
	if len(ss) > tunnel.MaxPrefixes {
		return nil, fmt.Errorf("--%s: %d prefixes given, at most %d: use wider prefixes", flag, len(ss), tunnel.MaxPrefixes)
	}
	ps, err := tunnel.ParsePrefixes(ss)
	if err != nil {
		return nil, fmt.Errorf("--%s: %v", flag, err)
	}
	return ps, nil
}

// agentExit turns Run's result into the exit status and one line that says
// what happened and what to do.
func agentExit(err error, relay string) error {
	if err == nil {
		return nil
	}
	var ref *tunnel.RefusedError
	var idErr *transport.IdentityError
	var dialErr *tunnel.DialError
	switch {
	case errors.As(err, &idErr):
		return cli.Exit(oneLine(idErr.Error()), exitUnverified)
	case errors.As(err, &ref) && ref.Temporary():
		return cli.Exit(fmt.Sprintf("the relay ended the session: %s; run relayctl again once it is back", oneLine(ref.Text)), exitFailure)
	case errors.As(err, &ref):
		return cli.Exit("the relay refused: "+oneLine(ref.Text), exitRefused)
	case errors.As(err, &dialErr):
		return cli.Exit(fmt.Sprintf("%s: check --relay, that relayd is running there, and that its port is open (UDP for QUIC, TCP for --transport tcp)",
			oneLine(err.Error())), exitFailure)
	case errors.Is(err, tunnel.ErrSessionClosed):
		return cli.Exit(oneLine(err.Error())+": run relayctl again to reconnect", exitFailure)
	}
	return cli.Exit(fmt.Sprintf("session with %s failed: %s", relay, oneLine(err.Error())), exitFailure)
}

// oneLine folds a multi-line error (errors.Join) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--log-level %q is not debug, info, warn or error", level), exitUsage)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, cli.Exit(fmt.Sprintf("--log-format %q is not text or json", format), exitUsage)
}
