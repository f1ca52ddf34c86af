package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/internal/clihelp"
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
	// draining is set by the first stop signal, for the admin API's /healthz.
	var draining atomic.Bool
	go handleSignals(sigs, cancel, &running, &draining)

	if c.Args().First() == "help" {
		return clihelp.Help(c, c.Args().Get(1), 2)
	}
	if c.Args().Present() {
		return cli.Exit(fmt.Sprintf("unexpected argument %q (commands: %s)", c.Args().First(), clihelp.Commands(c.App)), 2)
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
	for _, id := range spacedSecrets(cfg) {
		log.Warn(spacedSecretWarning, "token", id, "file", cfg.file)
	}
	warnEphemeral(log, cfg)

	stopAdmin, err := startAdmin(cfg, relay, draining.Load, log)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	defer stopAdmin()

	opts := transportOptions(cfg)
	if signer, ok := id.cert.PrivateKey.(crypto.Signer); ok {
		// The same key after a restart lets agents of the old process see at
		// once that their sessions are gone (QUIC stateless resets).
		if opts.ResetKey, err = transport.ResetKey(signer); err != nil {
			log.Warn("agents will notice a restart only at their idle timeout", "err", err)
		}
	}
	ln, err := transport.Listen(cfg.Relay.Listen, transport.ServerTLSConfig(id.cert, tunnel.ALPN), opts, relay.TransportHandshakeFailed)
	if err != nil {
		return cli.Exit(bindError(err, "[relay] listen").Error(), 1)
	}
	if createdToken {
		if err := saveGeneratedToken(id.stateDir, rc.Tokens[0]); err != nil {
			ln.Close()
			return cli.Exit(err.Error(), 1)
		}
	}
	var overridden []string
	for _, f := range []struct{ flag, key string }{{"log-level", "log.level"}, {"log-format", "log.format"}} {
		if c.IsSet(f.flag) {
			overridden = append(overridden, f.key)
		}
	}
	// Before "relayd listening": a SIGHUP sent on that line must reload
	// (handleSignals ignores one that comes before), and a stop signal
	// drain.
	running.Store(&runState{relay: relay, started: cfg, cfg: cfg, overridden: overridden, generated: generated, log: log})
	fp := transport.Fingerprint(id.cert.Leaf)
	log.Info("relayd listening", "listen", ln.Addr().String(), "transports", "quic (udp), tls+smux (tcp)",
		"ports", rc.Ports.String(), "fingerprint", fp, "state_dir", id.stateDir, "version", buildinfo.Read().Version)
	if id.createdKey {
		log.Info("created a new relay key", "file", id.stateDir+"/relay.key")
	}
	if len(cfg.Tokens) == 0 {
		printAgentLine(os.Stdout, term.IsTerminal(int(os.Stdout.Fd())), log, cfg, ln.Addr(), rc.Tokens[0].Secret, fp, createdToken, id.stateDir)
	}

	if err := relay.Serve(ctx, ln); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	log.Info("relayd stopped")
	return nil
}

// bindError adds to err, from binding the address key sets ("[relay]
// listen"), what to do about it. Only the causes with a known remedy get
// one: a port in use is not the only reason a bind fails, and advice to
// stop whatever holds it sends the operator after a process that does not
// exist.
func bindError(err error, key string) error {
	switch {
	case errors.Is(err, errAddrInUse):
		return fmt.Errorf("%w: stop whatever holds that port, or change %s", err, key)
	case errors.Is(err, errAccess):
		return fmt.Errorf("%w: ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (AmbientCapabilities= in a systemd unit): "+
			"run relayd with either, or change %s to a port from 1024 up", err, key)
	case errors.Is(err, errAddrNotAvail):
		return fmt.Errorf("%w: no interface of this machine has that address (behind NAT, the public one is not among them): change %s to one it has", err, key)
	}
	return err
}

// leaseFile, in state_dir, keeps which port each tunnel had.
const leaseFile = "leases.json"

// runState is what signals act on once the relay runs.
type runState struct {
	relay *tunnel.Relay
	// started is the config relayd started with: keys that apply only at
	// start keep its values until relayd stops, whatever reloads read.
	started *Config
	// cfg is the config last loaded, at start or by a reload: what the
	// keys that a reload applies (drain_timeout…) are now.
	cfg *Config
	// overridden names the keys a command-line flag sets (--log-level sets
	// log.level), which the file's value never changes, even at a restart.
	overridden []string
	generated  []tunnel.Token // the token made when relay.toml has none
	log        *slog.Logger
}

// handleSignals drains on the first stop signal, stops on the second, and
// reloads on SIGHUP. Before the relay runs, a stop signal just stops.
// draining is set from the first stop signal on.
func handleSignals(sigs <-chan os.Signal, stop context.CancelFunc, running *atomic.Pointer[runState], draining *atomic.Bool) {
	for sig := range sigs {
		st := running.Load()
		switch {
		case st == nil:
			if sig != syscall.SIGHUP {
				stop()
			}
		case sig == syscall.SIGHUP:
			if next := reload(st); next != nil {
				reloaded := *st
				reloaded.cfg = next
				running.Store(&reloaded)
			}
		case draining.Load():
			st.log.Info("second signal: stopping now", "signal", sig.String())
			stop()
		default:
			// Before the agents hear of it: a load balancer asking /healthz
			// should stop sending new ones at once.
			draining.Store(true)
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

// reload re-reads the config file and applies it; on any error the running
// configuration stays and the error is logged. It returns the new config,
// or nil.
func reload(st *runState) *Config {
	file, relay, log := st.cfg.file, st.relay, st.log
	if file == "" {
		log.Warn("reload asked, but relayd runs without --config: nothing to re-read")
		return nil
	}
	next, err := LoadConfig(file)
	if err == nil {
		var rc tunnel.RelayConfig
		if rc, err = relayConfig(next); err == nil {
			if len(rc.Tokens) == 0 {
				rc.Tokens = st.generated
			}
			var res tunnel.ReloadResult
			if len(rc.Tokens) == 0 {
				// The relay's own "no tokens configured" says nothing of
				// what to do.
				err = errNoTokensLeft
			} else if res, err = relay.Reload(rc); err == nil {
				// Against what started, not the last file read: the warning
				// stays until the file agrees with what runs again.
				for _, k := range restartOnly(st.started, next, st.overridden) {
					if note := partlyApplied[k]; note != "" {
						log.Warn("changed in the config, but applies only after a restart", "key", k, "note", note)
						continue
					}
					log.Warn("changed in the config, but applies only after a restart", "key", k)
				}
				for _, w := range readableSecrets(next) {
					log.Warn(w.msg, "file", w.file, "mode", fmt.Sprintf("%04o", w.mode), "fix", w.fix)
				}
				if next.Relay.Ports != st.cfg.Relay.Ports {
					warnEphemeral(log, next)
				}
				// The keys this reload applied: what changed since the last
				// file read, but for the ones warned about above.
				waits := restartOnly(st.cfg, next, nil)
				var applied []string
				for _, k := range changedKeys(st.cfg, next) {
					if !slices.Contains(waits, k) {
						applied = append(applied, k)
					}
				}
				log.Info("relay.toml reloaded", "file", file, "changed", strings.Join(applied, ","),
					"tokens_added", strings.Join(res.TokensAdded, ","), "tokens_removed", strings.Join(res.TokensRemoved, ","),
					"tokens_changed", strings.Join(res.TokensChanged, ","), "tokens_renamed", strings.Join(res.TokensRenamed, ","),
					"tunnels_moved", res.TunnelsMoved, "tunnels_closed", res.TunnelsClosed, "sessions_closed", res.SessionsClosed)
				return next
			}
		}
	}
	log.Error("reload failed; the running configuration stays", "file", file, "err", err)
	return nil
}

// errNoTokensLeft is reload's error for a relay.toml that takes away every
// token of a relayd started with some: relayd makes a token of its own
// only when it starts without any.
var errNoTokensLeft = errors.New("relay.toml defines no [[tokens]] now, and a reload cannot take every token away: " +
	"add one, or restart relayd to have it make a token of its own")

// partlyApplied notes, for the restart-only keys that a reload does apply
// in part, which part.
var partlyApplied = map[string]string{
	"relay.handshake_timeout": "agents' authentication takes the new value now; the TLS and QUIC handshakes after a restart",
	"relay.idle_timeout":      "agents' silence is judged by the new value now; the transport's idle timeout changes after a restart",
}

// changedKeys names the keys of relay.toml, as section.key, whose value
// differs between a and b; for a token in both (by secret, the relay's
// way, or by id when its secret changed), as tokens.ID.key with b's id.
// A token's secret is tokens.ID.secret when its value changed, whether in
// secret or in a secret_file's content, and nothing when only the key or
// file holding it did. The tokens added or removed, the relay's reload
// result names.
func changedKeys(a, b *Config) []string {
	var out []string
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		for i := range x.NumField() {
			f := x.Type().Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			switch {
			case f.Anonymous && f.Type.Kind() == reflect.Struct:
				walk(prefix, x.Field(i), y.Field(i)) // inline: [limits]' client keys
			case tag == "" || tag == "-" || tag == "tokens":
			case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]():
				walk(prefix+tag+".", x.Field(i), y.Field(i))
			case !reflect.DeepEqual(x.Field(i).Interface(), y.Field(i).Interface()):
				out = append(out, prefix+tag)
			}
		}
	}
	walk("", reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem())
	for j := range b.Tokens {
		tb := &b.Tokens[j]
		// The relay keeps a token by its secret, under a new id too (a
		// rename); by its id only when its old secret went and its new
		// one is no other token's.
		i := slices.IndexFunc(a.Tokens, func(t TokenSection) bool { return t.secret == tb.secret })
		if i < 0 {
			i = slices.IndexFunc(a.Tokens, func(t TokenSection) bool {
				return t.ID == tb.ID && !slices.ContainsFunc(b.Tokens, func(n TokenSection) bool { return n.secret == t.secret })
			})
		}
		if i >= 0 {
			ta := &a.Tokens[i]
			prefix := "tokens." + tb.ID + "."
			n := len(out)
			walk(prefix, reflect.ValueOf(ta).Elem(), reflect.ValueOf(tb).Elem())
			// The relay applies the secret, not where it was written: a
			// secret moved from secret_file to secret, unchanged, must not
			// read as a new one, which closes the token's sessions.
			keys := slices.DeleteFunc(out[n:], func(k string) bool { return k == prefix+"secret" || k == prefix+"secret_file" })
			if ta.secret != tb.secret {
				keys = slices.Insert(keys, 0, prefix+"secret")
			}
			out = append(out[:n], keys...)
		}
	}
	return out
}

// restartOnly names the keys that a running relay cannot change and whose
// value in next differs from the one it started with, but for those in
// overridden. handshake_timeout and idle_timeout also bound authentication
// and agent liveness, which a reload does change; they are listed because
// their transport part (the TLS and QUIC handshakes, the transport's idle
// timeout) keeps its value until a restart.
func restartOnly(started, next *Config, overridden []string) []string {
	var out []string
	for _, k := range []struct {
		key  string
		same bool
	}{
		{"relay.listen", started.Relay.Listen == next.Relay.Listen},
		{"relay.state_dir", started.Relay.StateDir == next.Relay.StateDir},
		{"relay.cert_file", started.Relay.CertFile == next.Relay.CertFile},
		{"relay.key_file", started.Relay.KeyFile == next.Relay.KeyFile},
		{"relay.handshake_timeout", started.Relay.HandshakeTimeout == next.Relay.HandshakeTimeout},
		{"relay.idle_timeout", started.Relay.IdleTimeout == next.Relay.IdleTimeout},
		{"relay.keepalive", started.Relay.KeepAlive == next.Relay.KeepAlive},
		{"relay.max_handshakes", started.Relay.MaxHandshakes == next.Relay.MaxHandshakes},
		{"limits.max_pending_sessions", started.Limits.MaxPendingSessions == next.Limits.MaxPendingSessions},
		{"log.level", started.Log.Level == next.Log.Level},
		{"log.format", started.Log.Format == next.Log.Format},
		{"admin.listen", started.Admin.Listen == next.Admin.Listen},
		{"admin.token", started.Admin.token == next.Admin.token},
	} {
		if !k.same && !slices.Contains(overridden, k.key) {
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

// spacedSecrets are the ids of the tokens whose secret, inline in the
// config file, has whitespace at its start or end: agents must send it as
// written (--token), since secret_file and relayctl's --token-file leave it
// out. Warned of rather than refused: such agents have been let in.
func spacedSecrets(cfg *Config) []string {
	var ids []string
	for _, t := range cfg.Tokens {
		if t.secretPath == "" && strings.TrimSpace(t.Secret) != t.Secret {
			ids = append(ids, t.ID)
		}
	}
	return ids
}

// spacedSecretWarning is spacedSecrets' sentence.
const spacedSecretWarning = "the token's secret has whitespace at its start or end, which secret_file and relayctl's --token-file leave out: only agents that give it as written (--token) get in; take it off, and tell the token's agents"

// printAgentLine prints on out the relayctl command that reaches this relay
// with the generated token: always when this start made the token, and on
// later starts, which reuse it, when out is a terminal (never into a
// service's log). The sentence above the command says which of the two.
func printAgentLine(out io.Writer, tty bool, log *slog.Logger, cfg *Config, addr net.Addr, secret, fp string, created bool, stateDir string) {
	file := stateDir + "/" + tokenFile
	if !created && !tty {
		log.Info("using the generated token", "file", file)
		return
	}
	_, port, _ := net.SplitHostPort(addr.String())
	host := advertisedHost(cfg)
	if created {
		fmt.Fprintf(out, "\nrelay.toml defines no token, so relayd made one (kept in %s).\n", file)
	} else {
		fmt.Fprintf(out, "\nrelay.toml defines no token, so relayd uses the one it made on an earlier run (kept in %s).\n", file)
	}
	fmt.Fprintf(out, "On the machine with the server to share, run:\n\n")
	fmt.Fprintf(out, "  relayctl expose --relay %s --token %s --fingerprint %s localhost:8080\n\n",
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
