package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/internal/tomlconf"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// defaultRelayPort is added to a relay address without a port.
const defaultRelayPort = "7000"

// agentSpec is what expose's flags and agent.toml's keys both describe:
// agent.toml decodes into it, expose fills it from its flags, and build
// checks it once for both, so the two cannot drift apart. The toml names
// are also the keys errors carry; expose turns them into flag names.
type agentSpec struct {
	Relay       string `toml:"relay"`
	Token       string `toml:"token"`
	TokenFile   string `toml:"token_file"`
	Fingerprint string `toml:"fingerprint"`
	KnownRelays string `toml:"known_relays"`
	Transport   string `toml:"transport"`
	// Proxy is an HTTP or SOCKS5 proxy's URL to reach the relay through.
	Proxy string `toml:"proxy"`
	// Reconnecting: see tunnel.AgentConfig.
	MaxRetries    int               `toml:"max_retries"`
	RetryMaxDelay tomlconf.Duration `toml:"retry_max_delay"`
	WaitForRelay  bool              `toml:"wait_for_relay"`
	// DrainTimeout bounds the wait for open connections after a signal.
	DrainTimeout tomlconf.Duration `toml:"drain_timeout"`
	// IdleTimeout is how long the relay may stay silent before the agent
	// drops the session and reconnects; it pings every KeepAlive.
	IdleTimeout tomlconf.Duration `toml:"idle_timeout"`
	KeepAlive   tomlconf.Duration `toml:"keepalive"`
	// FlowTimeout ends a UDP flow quiet both ways for this long.
	FlowTimeout tomlconf.Duration `toml:"udp_flow_timeout"`
	Log         logSpec           `toml:"log"`
	Tunnels     []tunnelSpec      `toml:"tunnels"`

	// given names the keys the user set (by agent.toml's names), so that
	// a rule between two keys blames one of those rather than a default.
	given map[string]bool
}

type logSpec struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// tunnelSpec is one [[tunnels]] table, or one LOCAL of expose.
type tunnelSpec struct {
	Name  string     `toml:"name"`  // "": made from Local (deriveName)
	Local portString `toml:"local"` // LOCAL: "8080", "localhost:8080"
	Port  portString `toml:"port"`  // "", "N" or "A-B"
	Proto string     `toml:"proto"` // "": tcp
	// ProxyProtocol is "", "v1" or "v2".
	ProxyProtocol string `toml:"proxy_protocol"`
	// Transparent connects from each client's own address.
	Transparent bool     `toml:"transparent"`
	Allow       []string `toml:"allow"`
	Deny        []string `toml:"deny"`
}

// portString is a string that TOML may also give as a bare number, so
// `port = 25565` means what `port = "25565"` does.
type portString string

func (p *portString) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*p = portString(v)
	case int64:
		*p = portString(strconv.FormatInt(v, 10))
	default:
		return fmt.Errorf("%v is not a port number or a string", v)
	}
	return nil
}

func defaultSpec() agentSpec {
	return agentSpec{
		Transport:     tunnel.TransportAuto,
		RetryMaxDelay: tomlconf.Duration{Duration: 30 * time.Second},
		DrainTimeout:  tomlconf.Duration{Duration: 30 * time.Second},
		IdleTimeout:   tomlconf.Duration{Duration: 15 * time.Second},
		KeepAlive:     tomlconf.Duration{Duration: 5 * time.Second},
		FlowTimeout:   tomlconf.Duration{Duration: 120 * time.Second},
		Log:           logSpec{Level: "info", Format: "text"},
	}
}

// specError is a bad setting: Key is its agent.toml key ("tunnels.port"),
// Index the [[tunnels]] table it is in. Msg follows "KEY: " unless Whole,
// when it is a sentence of its own that names the settings involved.
type specError struct {
	Key   string
	Index int
	Msg   string
	Whole bool
}

func (e *specError) Error() string {
	if e.Whole || e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}

// naming says how the user wrote each setting, for messages: expose by its
// flags (--token-file), run by agent.toml's keys (token_file).
type naming struct {
	key func(key string) string
	// How the environment may give the token: said when the token is
	// missing, and when both token and token_file are set.
	tokenEnvMissing, tokenEnvBoth string
}

// relayAddr checks a relay address as the user wrote it and returns it as
// HOST:PORT, with defaultRelayPort when it has none. A scheme, a path or a
// port that is not a number would otherwise reach the dialer and fail as an
// unreachable relay (exit 1, and retried for ever with --wait-for-relay),
// when it is a usage mistake.
func relayAddr(s string) (string, error) {
	if i := strings.Index(s, "://"); i >= 0 {
		return "", fmt.Errorf("not a URL: give HOST:PORT, without %s", s[:i+3])
	}
	if strings.ContainsAny(s, "/ ") {
		return "", errors.New("not HOST:PORT")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port, or a bare IPv6 address (::1, [::1]).
		host, port = strings.Trim(s, "[]"), defaultRelayPort
		if strings.Contains(host, ":") {
			if _, err := netip.ParseAddr(host); err != nil {
				return "", errors.New("not HOST:PORT (an IPv6 address goes in brackets: [2001:db8::1]:7000)")
			}
		}
	}
	if host == "" {
		return "", errors.New("no host: give HOST:PORT")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return net.JoinHostPort(host, port), nil
}

// agentPlan is a checked agentSpec, ready to run.
type agentPlan struct {
	cfg          tunnel.AgentConfig
	drainTimeout time.Duration
	log          *slog.Logger
}

// build checks every setting and turns s into a plan; errors are
// *specError.
func (s *agentSpec) build(n naming) (*agentPlan, error) {
	fail := func(key string, index int, format string, args ...any) error {
		return &specError{Key: key, Index: index, Msg: fmt.Sprintf(format, args...)}
	}
	whole := func(key string, format string, args ...any) error {
		return &specError{Key: key, Msg: fmt.Sprintf(format, args...), Whole: true}
	}
	cfg := tunnel.DefaultAgentConfig()
	cfg.Software = buildinfo.Software("relayctl")

	if s.Relay == "" {
		return nil, whole("relay", "%s is required: the relay's HOST:PORT, e.g. relay.example.com:7000", n.key("relay"))
	}
	relay, err := relayAddr(s.Relay)
	if err != nil {
		return nil, fail("relay", 0, "%q: %v, e.g. relay.example.com:7000 (the port is 7000 when left out)", s.Relay, err)
	}
	cfg.Relay = relay
	switch {
	case s.Token != "" && s.TokenFile != "":
		return nil, whole("token_file", "%s and %s are both set%s: use one", n.key("token"), n.key("token_file"), n.tokenEnvBoth)
	case s.TokenFile != "":
		secret, err := readTokenFile(s.TokenFile)
		if err != nil {
			return nil, fail("token_file", 0, "%v", err)
		}
		cfg.Token = secret
	case s.Token == "":
		return nil, whole("token", "%s or %s%s is required: the secret from the relay's operator (relayd prints one on first start)",
			n.key("token"), n.key("token_file"), n.tokenEnvMissing)
	default:
		cfg.Token = s.Token
	}
	switch s.Transport {
	case tunnel.TransportAuto, tunnel.TransportQUIC, tunnel.TransportTCP:
		cfg.Transport = s.Transport
	default:
		return nil, fail("transport", 0, "%q is not auto, quic or tcp", s.Transport)
	}
	if s.Proxy != "" {
		p, err := transport.ParseProxy(s.Proxy)
		if err != nil {
			return nil, fail("proxy", 0, "%v", err)
		}
		if cfg.Transport == tunnel.TransportQUIC {
			return nil, whole("proxy", "%s carries TCP only, and QUIC needs UDP: set %s to tcp, or auto (which then means tcp)",
				n.key("proxy"), n.key("transport"))
		}
		cfg.Proxy = p
	}
	v := &transport.Verifier{}
	if s.Fingerprint != "" {
		pin, err := transport.ParseFingerprint(s.Fingerprint)
		if err != nil {
			return nil, fail("fingerprint", 0, "%v", err)
		}
		v.Pin = pin
	} else {
		v.KnownRelays = s.KnownRelays
		if v.KnownRelays == "" {
			dir, err := os.UserConfigDir()
			if err != nil {
				return nil, whole("fingerprint", "no %s and no config directory for the known-relays file: set %s or %s",
					n.key("fingerprint"), n.key("fingerprint"), n.key("known_relays"))
			}
			v.KnownRelays = filepath.Join(dir, "relayctl", "known_relays")
		}
	}
	cfg.Verifier = v

	if s.MaxRetries < 0 {
		return nil, fail("max_retries", 0, "%d: must be 0 (retry forever) or more", s.MaxRetries)
	}
	if s.RetryMaxDelay.Duration < cfg.RetryBaseDelay {
		return nil, fail("retry_max_delay", 0, "%v: must be at least %v, the wait before the second attempt (the default is 30s)", s.RetryMaxDelay, cfg.RetryBaseDelay)
	}
	if s.DrainTimeout.Duration < 0 {
		return nil, fail("drain_timeout", 0, "%v: must be a duration such as \"30s\", or \"0s\" to close open connections at once", s.DrainTimeout)
	}
	cfg.MaxRetries, cfg.RetryMaxDelay, cfg.WaitForRelay = s.MaxRetries, s.RetryMaxDelay.Duration, s.WaitForRelay
	if s.KeepAlive.Duration <= 0 {
		return nil, fail("keepalive", 0, "%v: must be a positive duration such as \"5s\"", s.KeepAlive)
	}
	if s.IdleTimeout.Duration <= s.KeepAlive.Duration {
		const why = ", so a live relay is never taken for dead"
		switch {
		case !s.given["keepalive"]:
			return nil, fail("idle_timeout", 0, "%v: must be longer than the keepalive (%v, its default; set %s too)"+why, s.IdleTimeout, s.KeepAlive, n.key("keepalive"))
		case !s.given["idle_timeout"]:
			return nil, fail("keepalive", 0, "%v: must be shorter than %s (%v, its default; set %s too)"+why, s.KeepAlive, n.key("idle_timeout"), s.IdleTimeout, n.key("idle_timeout"))
		}
		return nil, fail("idle_timeout", 0, "%v: must be longer than the keepalive (%v)"+why, s.IdleTimeout, s.KeepAlive)
	}
	if s.FlowTimeout.Duration <= 0 {
		return nil, fail("udp_flow_timeout", 0, "%v: must be a positive duration such as \"120s\"", s.FlowTimeout)
	}
	cfg.TransportOptions.IdleTimeout, cfg.TransportOptions.KeepAlive = s.IdleTimeout.Duration, s.KeepAlive.Duration
	cfg.FlowIdleTimeout = s.FlowTimeout.Duration

	var level slog.Level
	if err := level.UnmarshalText([]byte(s.Log.Level)); err != nil {
		return nil, fail("log.level", 0, "%q is not debug, info, warn or error", s.Log.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	switch s.Log.Format {
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		return nil, fail("log.format", 0, "%q is not text or json", s.Log.Format)
	}
	cfg.Logger, v.Logger = log, log

	if len(s.Tunnels) == 0 {
		return nil, fail("tunnels", 0, "no tunnel: add a [[tunnels]] table with local = \"PORT\" for each local server")
	}
	names := map[string]int{}
	ports := map[uint16]int{}
	for i, ts := range s.Tunnels {
		// No "tunnel NAME:" in messages: agent.toml's line points at the
		// table, and expose's flags apply to every tunnel alike.
		expanded, err := ts.build()
		if err != nil {
			err.Index = i
			return nil, err
		}
		for _, t := range expanded {
			if j, ok := names[t.Name]; ok {
				hint := ""
				if ts.Name == "" {
					hint = fmt.Sprintf(" (made from %s %q; set %s)", n.key("tunnels.local"), ts.Local, n.key("tunnels.name"))
				}
				return nil, fail("tunnels.name", i, "tunnel name %q%s is already taken by tunnel %d", t.Name, hint, j+1)
			}
			names[t.Name] = i
			if t.Ports.Low != 0 && t.Ports.Low == t.Ports.High {
				if j, ok := ports[t.Ports.Low]; ok {
					return nil, fail("tunnels.port", i, "port %d is already asked for by tunnel %d, and a port serves one tunnel", t.Ports.Low, j+1)
				}
				ports[t.Ports.Low] = i
			}
			cfg.Tunnels = append(cfg.Tunnels, t)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, &specError{Msg: err.Error()}
	}
	return &agentPlan{cfg: cfg, drainTimeout: s.DrainTimeout.Duration, log: log}, nil
}

// build checks one tunnel's settings. A LOCAL range ("2456-2458") makes
// one tunnel per port, each asking for its place in the public range, so
// the offsets between the ports are kept (what Valheim needs).
func (ts *tunnelSpec) build() ([]tunnel.TunnelSpec, *specError) {
	fail := func(key, format string, args ...any) *specError {
		return &specError{Key: "tunnels." + key, Msg: fmt.Sprintf(format, args...)}
	}
	t := tunnel.TunnelSpec{Name: ts.Name}
	if ts.Local == "" {
		return nil, fail("local", "missing: the local server's PORT or HOST:PORT, e.g. local = \"8080\"")
	}
	host, local, err := parseLocalRange(string(ts.Local))
	if err != nil {
		return nil, fail("local", "%v", err)
	}
	if t.Name != "" && !tunnel.ValidName(t.Name) {
		return nil, fail("name", "tunnel name %q is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", t.Name)
	}
	if ts.Port != "" {
		r, err := tunnel.ParsePortRange(string(ts.Port))
		if err != nil {
			return nil, fail("port", "%v", err)
		}
		t.Ports = r
	}
	switch ts.Proto {
	case "", "tcp":
		t.Protos = tunnel.ProtoTCP
	case "udp":
		t.Protos = tunnel.ProtoUDP
	case "tcp,udp", "udp,tcp":
		t.Protos = tunnel.ProtoTCP | tunnel.ProtoUDP
	default:
		return nil, fail("proto", "%q is not tcp, udp or tcp,udp", ts.Proto)
	}
	switch ts.ProxyProtocol {
	case "":
	case "v1", "1":
		if t.Protos&tunnel.ProtoUDP != 0 {
			return nil, fail("proxy_protocol", "v1 has no form for UDP: use v2 (Geyser, Velocity and HAProxy read it)")
		}
		t.ProxyProtocol = 1
	case "v2", "2":
		t.ProxyProtocol = 2
	default:
		return nil, fail("proxy_protocol", "%q is not v1 or v2", ts.ProxyProtocol)
	}
	t.Transparent = ts.Transparent
	if t.Allow, err = parsePrefixList(ts.Allow); err != nil {
		return nil, fail("allow", "%v", err)
	}
	if t.Deny, err = parsePrefixList(ts.Deny); err != nil {
		return nil, fail("deny", "%v", err)
	}
	n := int(local.High-local.Low) + 1
	if n > 1 && (t.Ports.Low == 0 || int(t.Ports.High-t.Ports.Low)+1 != n) {
		return nil, fail("port", "local %s is a range of %d ports: give a public range of the same length within the relay's ports (e.g. %d-%d, if it allows those), so the offsets between them are kept",
			ts.Local, n, local.Low, local.High)
	}
	var out []tunnel.TunnelSpec
	for i := range n {
		one := t
		one.Local = net.JoinHostPort(host, strconv.Itoa(int(local.Low)+i))
		switch {
		case ts.Name == "":
			one.Name = deriveName(one.Local)
		case n > 1:
			one.Name = fmt.Sprintf("%s-%d", ts.Name, int(local.Low)+i)
		}
		if n > 1 {
			p := t.Ports.Low + uint16(i)
			one.Ports = tunnel.PortRange{Low: p, High: p}
		}
		out = append(out, one)
	}
	return out, nil
}

// parsePrefixList parses allow or deny: CIDR prefixes or bare IPs, nil
// for none.
func parsePrefixList(ss []string) ([]netip.Prefix, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	if len(ss) > tunnel.MaxPrefixes {
		return nil, fmt.Errorf("%d prefixes given, at most %d: use wider prefixes", len(ss), tunnel.MaxPrefixes)
	}
	return tunnel.ParsePrefixes(ss)
}

// maxTokenFile bounds a token file: it holds one secret, not a document.
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
