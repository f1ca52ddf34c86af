package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// runAction runs the relay until SIGINT or SIGTERM.
func runAction(c *cli.Context) error {
	// Catch signals first: a SIGTERM during start-up is a clean stop too.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q (commands: check, fingerprint, version)", c.Args().First()), 2)
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	log, err := newLogger(c, cfg, os.Stderr)
	if err != nil {
		return err
	}
	id, err := loadIdentity(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	tokens, createdToken, err := loadTokens(cfg, id.stateDir)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	ports, _ := tunnel.ParsePortSet(cfg.Relay.Ports) // validated with the config

	opts := transport.DefaultOptions()
	opts.HandshakeTimeout = cfg.Relay.HandshakeTimeout.Duration
	opts.IdleTimeout = cfg.Relay.IdleTimeout.Duration
	opts.KeepAlive = cfg.Relay.KeepAlive.Duration
	listenHost, _, _ := net.SplitHostPort(cfg.Relay.Listen)

	rc := tunnel.DefaultRelayConfig()
	rc.BindHost = listenHost
	rc.Ports = ports
	rc.PublicHost = cfg.Relay.PublicHost
	rc.Tokens = tokens
	rc.HandshakeTimeout = cfg.Relay.HandshakeTimeout.Duration
	rc.Software = buildinfo.Software("relayd")
	rc.Logger = log
	relay, err := tunnel.NewRelay(rc)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}

	onHandshakeErr := func(a net.Addr, err error) {
		log.Debug("tcp handshake failed", "remote", a.String(), "err", err)
	}
	ln, err := transport.Listen(cfg.Relay.Listen, transport.ServerTLSConfig(id.cert, tunnel.ALPN), opts, onHandshakeErr)
	if err != nil {
		return cli.Exit(fmt.Sprintf("%v: stop whatever holds that port, or change [relay] listen", err), 1)
	}
	fp := transport.Fingerprint(id.cert.Leaf)
	log.Info("relayd listening", "listen", ln.Addr().String(), "transports", "quic (udp), tls+smux (tcp)",
		"ports", ports.String(), "fingerprint", fp, "state_dir", id.stateDir, "version", buildinfo.Read().Version)
	if id.createdKey {
		log.Info("created a new relay key", "file", id.stateDir+"/relay.key")
	}
	if len(cfg.Tokens) == 0 {
		printAgentLine(log, cfg, ln.Addr(), tokens[0].Secret, fp, createdToken, id.stateDir)
	}

	if err := relay.Serve(ctx, ln); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	log.Info("relayd stopped")
	return nil
}

// printAgentLine prints the relayctl command that reaches this relay with
// the generated token: always when the token is new, and on later starts
// when a person is watching (never into a service's log).
func printAgentLine(log *slog.Logger, cfg *Config, addr net.Addr, secret, fp string, created bool, stateDir string) {
	if !created && !term.IsTerminal(int(os.Stdout.Fd())) {
		log.Info("using the generated token", "file", stateDir+"/"+tokenFile)
		return
	}
	_, port, _ := net.SplitHostPort(addr.String())
	host := advertisedHost(cfg)
	fmt.Fprintf(os.Stdout, "\nrelay.toml defines no token, so relayd made one (kept in %s/%s).\n", stateDir, tokenFile)
	fmt.Fprintf(os.Stdout, "On the machine with the server to share, run:\n\n")
	fmt.Fprintf(os.Stdout, "  relayctl expose --relay %s --token %s --fingerprint %s localhost:8080\n\n",
		net.JoinHostPort(host, port), secret, fp)
}

// advertisedHost guesses the name agents should dial: public_host, else the
// listen host when it is specific, else this machine's first global address.
func advertisedHost(cfg *Config) string {
	if cfg.Relay.PublicHost != "" {
		return cfg.Relay.PublicHost
	}
	h, _, _ := net.SplitHostPort(cfg.Relay.Listen)
	if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
		return h
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return "RELAY_HOST"
}
