package main

import (
	"context"
	"crypto"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/internal/debugpprof"
	"github.com/relaytun/relay/internal/gcfloor"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// runAction runs the relay. The first SIGINT or SIGTERM drains it (no new
// agents or clients; those connected get up to drain_timeout to finish), a
// second stops it at once; SIGHUP reloads relay.toml.
func runAction(c *cli.Context) error {
	// Catch signals first: a SIGTERM during start-up is a clean stop too.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running atomic.Pointer[runState]
	go handleSignals(sigs, cancel, &running)

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
	debugpprof.Start(log)
	gcfloor.Set(gcfloor.Relay)
	id, err := loadIdentity(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	rc, err := relayConfig(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	createdToken := false
	var generated []tunnel.Token
	if len(rc.Tokens) == 0 {
		tok, created, err := loadGeneratedToken(id.stateDir)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		generated, createdToken = []tunnel.Token{tok}, created
		rc.Tokens = generated
	}
	rc.Software = buildinfo.Software("relayd")
	rc.Logger = log
	rc.LeaseFile = filepath.Join(id.stateDir, leaseFile)
	relay, err := tunnel.NewRelay(rc)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	for _, w := range readableSecrets(cfg) {
		log.Warn(w.msg, "file", w.file, "mode", fmt.Sprintf("%04o", w.mode), "fix", w.fix)
	}

	stopAdmin, err := startAdmin(cfg, relay, log)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	defer stopAdmin()

	onHandshakeErr := func(a net.Addr, err error) {
		log.Debug("tcp handshake failed", "remote", a.String(), "err", err)
	}
	opts := transportOptions(cfg)
	if signer, ok := id.cert.PrivateKey.(crypto.Signer); ok {
		// The same key after a restart lets agents of the old process see at
		// once that their sessions are gone (QUIC stateless resets).
		if opts.ResetKey, err = transport.ResetKey(signer); err != nil {
			log.Warn("agents will notice a restart only at their idle timeout", "err", err)
		}
	}
	ln, err := transport.Listen(cfg.Relay.Listen, transport.ServerTLSConfig(id.cert, tunnel.ALPN), opts, onHandshakeErr)
	if err != nil {
		return cli.Exit(fmt.Sprintf("%v: stop whatever holds that port, or change [relay] listen", err), 1)
	}
	fp := transport.Fingerprint(id.cert.Leaf)
	log.Info("relayd listening", "listen", ln.Addr().String(), "transports", "quic (udp), tls+smux (tcp)",
		"ports", rc.Ports.String(), "fingerprint", fp, "state_dir", id.stateDir, "version", buildinfo.Read().Version)
	if id.createdKey {
		log.Info("created a new relay key", "file", id.stateDir+"/relay.key")
	}
	if len(cfg.Tokens) == 0 {
		printAgentLine(log, cfg, ln.Addr(), rc.Tokens[0].Secret, fp, createdToken, id.stateDir)
	}

	running.Store(&runState{relay: relay, cfg: cfg, generated: generated, log: log})
	if err := relay.Serve(ctx, ln); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	log.Info("relayd stopped")
	return nil
}

// leaseFile, in state_dir, keeps which port each tunnel had.
const leaseFile = "leases.json"

// runState is what signals act on once the relay runs.
type runState struct {
	relay     *tunnel.Relay
	cfg       *Config
	generated []tunnel.Token // the token made when relay.toml has none
	log       *slog.Logger
}

// handleSignals drains on the first stop signal, stops on the second, and
// reloads on SIGHUP. Before the relay runs, a stop signal just stops.
func handleSignals(sigs <-chan os.Signal, stop context.CancelFunc, running *atomic.Pointer[runState]) {
	draining := false
	for sig := range sigs {
		st := running.Load()
		switch {
		case st == nil:
			if sig != syscall.SIGHUP {
				stop()
			}
		case sig == syscall.SIGHUP:
			if next := reload(st.cfg, st.generated, st.relay, st.log); next != nil {
				running.Store(&runState{relay: st.relay, cfg: next, generated: st.generated, log: st.log})
			}
		case draining:
			st.log.Info("second signal: stopping now", "signal", sig.String())
			stop()
		default:
			draining = true
			timeout := st.cfg.Relay.DrainTimeout.Duration
			st.log.Info("stopping: draining clients (signal again to stop now)", "signal", sig.String(), "drain_timeout", timeout)
			go func() {
				dctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				st.relay.Shutdown(dctx)
				stop()
			}()
		}
	}
}

// reload re-reads running's file and applies it; on any error the running
// configuration stays and the error is logged. It returns the new config,
// or nil.
func reload(running *Config, generated []tunnel.Token, relay *tunnel.Relay, log *slog.Logger) *Config {
	if running.file == "" {
		log.Warn("reload asked, but relayd runs without --config: nothing to re-read")
		return nil
	}
	next, err := LoadConfig(running.file)
	if err == nil {
		var rc tunnel.RelayConfig
		if rc, err = relayConfig(next); err == nil {
			if len(rc.Tokens) == 0 {
				rc.Tokens = generated
			}
			var res tunnel.ReloadResult
			if res, err = relay.Reload(rc); err == nil {
				for _, k := range restartOnly(running, next) {
					log.Warn("changed in the config, but applies only after a restart", "key", k)
				}
				for _, w := range readableSecrets(next) {
					log.Warn(w.msg, "file", w.file, "mode", fmt.Sprintf("%04o", w.mode), "fix", w.fix)
				}
				log.Info("relay.toml reloaded", "file", running.file, "sessions_closed", res.SessionsClosed)
				return next
			}
		}
	}
	log.Error("reload failed; the running configuration stays", "file", running.file, "err", err)
	return nil
}

// restartOnly names the keys that differ between a and b and that a running
// relay cannot change.
func restartOnly(a, b *Config) []string {
	var out []string
	for _, k := range []struct {
		key  string
		same bool
	}{
		{"relay.listen", a.Relay.Listen == b.Relay.Listen},
		{"relay.state_dir", a.Relay.StateDir == b.Relay.StateDir},
		{"relay.cert_file", a.Relay.CertFile == b.Relay.CertFile},
		{"relay.key_file", a.Relay.KeyFile == b.Relay.KeyFile},
		{"relay.idle_timeout", a.Relay.IdleTimeout == b.Relay.IdleTimeout},
		{"relay.keepalive", a.Relay.KeepAlive == b.Relay.KeepAlive},
		{"relay.max_handshakes", a.Relay.MaxHandshakes == b.Relay.MaxHandshakes},
		{"limits.max_pending_sessions", a.Limits.MaxPendingSessions == b.Limits.MaxPendingSessions},
		{"log.level", a.Log.Level == b.Log.Level},
		{"log.format", a.Log.Format == b.Log.Format},
		{"admin.listen", a.Admin.Listen == b.Admin.Listen},
		{"admin.token", a.Admin.token == b.Admin.token},
	} {
		if !k.same {
			out = append(out, k.key)
		}
	}
	return out
}

// relayConfig maps relay.toml (validated) onto the relay's config: all but
// the logger, the software name and, when relay.toml defines no token, the
// generated one.
func relayConfig(cfg *Config) (tunnel.RelayConfig, error) {
	rc := tunnel.DefaultRelayConfig()
	ports, err := tunnel.ParsePortSet(cfg.Relay.Ports)
	if err != nil {
		return rc, cfg.fail("relay.ports", "%v", err)
	}
	rc.Ports = ports
	rc.BindHost, _, _ = net.SplitHostPort(cfg.Relay.Listen)
	rc.PublicHost = cfg.Relay.PublicHost
	rc.HandshakeTimeout = cfg.Relay.HandshakeTimeout.Duration
	rc.Liveness = cfg.Relay.IdleTimeout.Duration
	rc.LeaseTTL = cfg.Relay.LeaseDuration.Duration
	rc.RejoinWindow = cfg.Relay.RejoinWindow.Duration
	rc.FlowIdleTimeout = cfg.Relay.UDPFlowTimeout.Duration
	rc.MaxFlows = cfg.Limits.MaxUDPFlows
	rc.MaxPendingSessions = cfg.Limits.MaxPendingSessions
	if rc.Clients, err = cfg.clientLimits("limits", -1, cfg.Limits.ClientSection); err != nil {
		return rc, err
	}
	for i := range cfg.Tokens {
		tok, err := cfg.token(i, ports)
		if err != nil {
			return rc, err
		}
		rc.Tokens = append(rc.Tokens, tok)
	}
	return rc, nil
}

// transportOptions maps relay.toml onto the listener's options.
func transportOptions(cfg *Config) transport.Options {
	opts := transport.DefaultOptions()
	opts.HandshakeTimeout = cfg.Relay.HandshakeTimeout.Duration
	opts.IdleTimeout = cfg.Relay.IdleTimeout.Duration
	opts.KeepAlive = cfg.Relay.KeepAlive.Duration
	opts.MaxHandshakes = cfg.Relay.MaxHandshakes
	// Agents open the control stream and a datagram stream, nothing else;
	// the relay opens the rest. A session cannot pile up streams before it
	// authenticates.
	opts.MaxIncomingStreams = tunnel.MaxAgentStreams
	return opts
}

// fileWarning is a file holding a secret that other users can read.
type fileWarning struct {
	msg  string
	file string
	mode fs.FileMode
	fix  string
}

// readableSecrets finds the files holding token secrets that every user can
// read: relay.toml with a secret inline, or a secret_file. Group-readable is
// left alone: root:relayd 0640 is how a service is meant to read them.
func readableSecrets(cfg *Config) []fileWarning {
	var out []fileWarning
	inline := slices.ContainsFunc(cfg.Tokens, func(t TokenSection) bool { return t.Secret != "" })
	if fi, err := os.Stat(cfg.file); inline && err == nil && fi.Mode().Perm()&0o004 != 0 {
		out = append(out, fileWarning{
			msg:  "the config file holds token secrets and every user can read it",
			file: cfg.file, mode: fi.Mode().Perm(),
			fix: fmt.Sprintf("chmod 600 %s (or 640 with relayd's group), or move each secret to a file of its own named by secret_file", cfg.file),
		})
	}
	for _, t := range cfg.Tokens {
		if t.secretPath == "" {
			continue
		}
		if fi, err := os.Stat(t.secretPath); err == nil && fi.Mode().Perm()&0o004 != 0 {
			out = append(out, fileWarning{
				msg:  fmt.Sprintf("the secret_file of token %q can be read by every user", t.ID),
				file: t.secretPath, mode: fi.Mode().Perm(),
				fix: fmt.Sprintf("chmod 600 %s (or 640 with relayd's group)", t.secretPath),
			})
		}
	}
	return append(out, adminWarnings(cfg)...)
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
