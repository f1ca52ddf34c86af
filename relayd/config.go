package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/relaytun/relay/internal/bitrate"
	"github.com/relaytun/relay/internal/tomlconf"
	"github.com/relaytun/relay/tunnel"
)

// Config is relay.toml. Every field has a default (DefaultConfig); the
// sample relay.toml at the top of the repository documents each one.
type Config struct {
	Relay  RelaySection   `toml:"relay"`
	Limits LimitsSection  `toml:"limits"`
	Log    LogSection     `toml:"log"`
	Admin  AdminSection   `toml:"admin"`
	Tokens []TokenSection `toml:"tokens"`

	// file is where the config came from ("" for the embedded defaults);
	// data is its text, for pointing at lines in errors.
	file string
	data string
}

// RelaySection is [relay].
type RelaySection struct {
	Listen           string   `toml:"listen"`
	Ports            string   `toml:"ports"`
	StateDir         string   `toml:"state_dir"`
	PublicHost       string   `toml:"public_host"`
	CertFile         string   `toml:"cert_file"`
	KeyFile          string   `toml:"key_file"`
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	IdleTimeout      Duration `toml:"idle_timeout"`
	KeepAlive        Duration `toml:"keepalive"`
	// MaxHandshakes caps TCP+TLS handshakes in progress at once.
	MaxHandshakes int `toml:"max_handshakes"`
	// LeaseDuration is how long a tunnel's port stays reserved for its
	// token and name after its last agent left.
	LeaseDuration Duration `toml:"lease_duration"`
	// RejoinWindow is how long the port of a tunnel whose agents vanished
	// stays open, holding new clients, for one to come back ("0s": no wait).
	RejoinWindow Duration `toml:"rejoin_window"`
	// DrainTimeout bounds the wait for clients in flight on SIGTERM.
	DrainTimeout Duration `toml:"drain_timeout"`
	// UDPFlowTimeout ends a UDP flow quiet both ways for this long.
	UDPFlowTimeout Duration `toml:"udp_flow_timeout"`
}

// ClientSection holds the limits on a tunnel's public clients, per source
// IP: the relay-wide ones in [limits], and a token's own in [[tokens]].
type ClientSection struct {
	PerIPConnections int      `toml:"per_ip_connections"` // open at once; 0: no limit
	PerIPRate        float64  `toml:"per_ip_rate"`        // new connections per second; 0: no limit
	PerIPBurst       int      `toml:"per_ip_burst"`       // 0: twice the rate
	Allow            []string `toml:"allow"`              // CIDR prefixes or bare IPs
	Deny             []string `toml:"deny"`
}

// LimitsSection is [limits]: the defaults for every tunnel's public
// clients, and the cap on sessions still authenticating.
type LimitsSection struct {
	ClientSection
	MaxPendingSessions int `toml:"max_pending_sessions"`
	// MaxUDPFlows caps each UDP tunnel's flows (client addresses).
	MaxUDPFlows int `toml:"max_udp_flows"`
}

// LogSection is [log].
type LogSection struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// TokenSection is one [[tokens]] table: a credential and what it may do.
// Every limit is off when left out (0, or empty).
type TokenSection struct {
	ID string `toml:"id"`
	// Exactly one of Secret and SecretFile: the secret itself, or a file
	// holding it (read at load, surrounding whitespace trimmed).
	Secret     string `toml:"secret"`
	SecretFile string `toml:"secret_file"`
	// Names are glob patterns ("game-*") a tunnel name must match.
	Names []string `toml:"names"`
	// Ports are the public ports the token may use, within [relay] ports.
	Ports          string `toml:"ports"`
	MaxTunnels     int    `toml:"max_tunnels"`
	MaxConnections int    `toml:"max_connections"`
	// MaxBandwidth caps the token's traffic each way, in bits a second as
	// "100M" (k, M, G: powers of 1000); empty or "0": no cap.
	MaxBandwidth string `toml:"max_bandwidth"`
	// UDP allows UDP tunnels; left out, it is true.
	UDP *bool `toml:"udp"`
	// The token's own public-client limits; see tunnel.Token.Clients.
	ClientSection

	// secret is the secret in effect (Secret, or SecretFile's content), and
	// secretPath the file it came from, resolved; both set by Validate.
	secret     string
	secretPath string
}

// DefaultConfig is what relayd runs with when no file is given.
func DefaultConfig() Config {
	return Config{
		Relay: RelaySection{
			Listen:           "0.0.0.0:7000",
			Ports:            "20000-29999",
			HandshakeTimeout: Duration{10 * time.Second},
			IdleTimeout:      Duration{15 * time.Second},
			KeepAlive:        Duration{5 * time.Second},
			MaxHandshakes:    256,
			LeaseDuration:    Duration{24 * time.Hour},
			RejoinWindow:     Duration{10 * time.Second},
			DrainTimeout:     Duration{30 * time.Second},
			UDPFlowTimeout:   Duration{120 * time.Second},
		},
		Admin: defaultAdmin(),
		Limits: LimitsSection{
			ClientSection:      ClientSection{Allow: []string{}, Deny: []string{}},
			MaxPendingSessions: 256,
			MaxUDPFlows:        1024,
		},
		Log: LogSection{Level: "info", Format: "text"},
	}
}

// Duration is a time.Duration written as a string with a unit ("10s"): a
// tomlconf.Duration, as a type of relayd's own so that defaults read
// Duration{10 * time.Second}.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error { return (*tomlconf.Duration)(d).UnmarshalText(b) }
func (d Duration) MarshalText() ([]byte, error)  { return tomlconf.Duration(d).MarshalText() }

// ConfigError points at the place in relay.toml that is wrong.
type ConfigError = tomlconf.Error

// LoadConfig reads path over the defaults, strictly: a syntax error, an
// unknown key or an invalid value is an error naming the file, line and key.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return ParseConfig(path, string(data))
}

// ParseConfig is LoadConfig on text already read; path is for messages.
func ParseConfig(path, data string) (*Config, error) {
	c := DefaultConfig()
	c.file, c.data = path, data
	if err := tomlconf.Decode(path, data, &c, "relay.toml"); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// fail makes a ConfigError for key (e.g. "relay.ports").
func (c *Config) fail(key string, format string, args ...any) error {
	return c.failAt(key, 0, format, args...)
}

// failAt is fail for a key of the index-th table of an array ([[tokens]]).
func (c *Config) failAt(key string, index int, format string, args ...any) error {
	return tomlconf.Source{File: c.file, Data: c.data}.Fail(key, index, format, args...)
}

// Validate checks every value.
func (c *Config) Validate() error {
	r := &c.Relay
	relayHost, relayPort, err := splitListen(r.Listen)
	if errors.Is(err, errNotHostPort) {
		return c.fail("relay.listen", "%q is not host:port (for example \"0.0.0.0:7000\")", r.Listen)
	}
	if err != nil {
		return c.fail("relay.listen", "%q: %v", r.Listen, err)
	}
	relayPorts, err := tunnel.ParsePortSet(r.Ports)
	if err != nil {
		return c.fail("relay.ports", "%v", err)
	}
	if relayPort != 0 && relayPorts.Contains(uint16(relayPort)) {
		if c.defined("relay", "ports") {
			return c.fail("relay.ports", "%q includes %d, the port of [relay] listen (%s): a tunnel could be given the relay's own port; leave it out",
				r.Ports, relayPort, r.Listen)
		}
		return c.fail("relay.listen", "%q: port %d is one of [relay] ports (%s), which tunnels get: pick a port outside them",
			r.Listen, relayPort, relayPorts)
	}
	if err := checkPublicHost(r.PublicHost); err != nil {
		return c.fail("relay.public_host", "%v", err)
	}
	if r.CertFile != "" && r.KeyFile == "" {
		return c.fail("relay.cert_file", "cert_file needs key_file: set both or neither")
	}
	if r.KeyFile != "" && r.CertFile == "" {
		return c.fail("relay.key_file", "key_file needs cert_file: set both or neither")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"relay.handshake_timeout", r.HandshakeTimeout.Duration}, {"relay.idle_timeout", r.IdleTimeout.Duration},
		{"relay.keepalive", r.KeepAlive.Duration}, {"relay.lease_duration", r.LeaseDuration.Duration},
		{"relay.drain_timeout", r.DrainTimeout.Duration}, {"relay.udp_flow_timeout", r.UDPFlowTimeout.Duration},
	} {
		if d.v <= 0 {
			return c.fail(d.key, "must be a positive duration such as \"10s\"")
		}
	}
	if r.RejoinWindow.Duration < 0 {
		return c.fail("relay.rejoin_window", "must not be negative (\"0s\" closes a tunnel's port as soon as its agents are gone)")
	}
	if r.KeepAlive.Duration >= r.IdleTimeout.Duration {
		// Blame the key the file sets: the other kept its default.
		switch {
		case !c.defined("relay", "keepalive"):
			return c.fail("relay.idle_timeout", "must be longer than keepalive (%v, its default; set keepalive too)", r.KeepAlive)
		case !c.defined("relay", "idle_timeout"):
			return c.fail("relay.keepalive", "must be shorter than idle_timeout (%v, its default; set idle_timeout too)", r.IdleTimeout)
		}
		return c.fail("relay.keepalive", "must be shorter than idle_timeout (%v)", r.IdleTimeout)
	}
	if r.MaxHandshakes < 1 {
		return c.fail("relay.max_handshakes", "must be at least 1 (the default is 256)")
	}
	if _, err := c.clientLimits("limits", -1, c.Limits.ClientSection); err != nil {
		return err
	}
	if c.Limits.MaxPendingSessions < 1 {
		return c.fail("limits.max_pending_sessions", "must be at least 1 (the default is 256)")
	}
	if c.Limits.MaxUDPFlows < 1 {
		return c.fail("limits.max_udp_flows", "must be at least 1 (the default is 1024)")
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return c.fail("log.level", "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return c.fail("log.format", "%q is not text or json", c.Log.Format)
	}
	if err := c.validateAdmin(); err != nil {
		return err
	}
	if err := c.checkAdminPort(relayHost, relayPort, relayPorts); err != nil {
		return err
	}
	ids := map[string]bool{}
	secrets := map[string]string{}
	for i := range c.Tokens {
		t := &c.Tokens[i]
		if t.ID == "" {
			return c.failAt("tokens.id", i, "token %d has no id", i+1)
		}
		if ids[t.ID] {
			return c.failAt("tokens.id", i, "token id %q is used twice", t.ID)
		}
		ids[t.ID] = true
		if err := c.resolveSecret(i); err != nil {
			return err
		}
		if other, ok := secrets[t.secret]; ok {
			return c.failAt(t.secretKey(), i, "tokens %q and %q have the same secret", other, t.ID)
		}
		secrets[t.secret] = t.ID
		if _, err := c.token(i, relayPorts); err != nil {
			return err
		}
	}
	return nil
}

// checkPublicHost refuses a public_host that is not a bare host name or IP
// ("" is fine: agents then print the host they dialed). Agents print it as
// tcp://HOST:PORT and the self-signed certificate names it, so a scheme, a
// path or a port would come out as tcp://https://relay.example.com:24817.
func checkPublicHost(h string) error {
	if h == "" {
		return nil
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	// What the operator most likely meant, to show in the message.
	bare := h
	if _, rest, ok := strings.Cut(bare, "://"); ok {
		bare = rest
	}
	bare, _, _ = strings.Cut(bare, "/")
	if host, _, err := net.SplitHostPort(bare); err == nil {
		bare = host
	}
	bare = strings.TrimSuffix(strings.TrimPrefix(bare, "["), "]")
	if _, err := netip.ParseAddr(bare); err != nil && !isHostName(bare) {
		bare = ""
	}
	var what string
	switch {
	case strings.Contains(h, "://"):
		what = "has a scheme"
	case strings.Contains(h, "/"):
		what = "has a path"
	case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") && bare != "":
		return fmt.Errorf("%q: write an IPv6 address without brackets (%q)", h, bare)
	case strings.Contains(h, ":") && bare != "":
		return fmt.Errorf("%q has a port: write the host alone (%q); each tunnel has its own port, which agents print as tcp://HOST:PORT", h, bare)
	case isHostName(h):
		return nil
	}
	if what == "" || bare == "" {
		return fmt.Errorf("%q is not a host name or IP address (for example \"relay.example.com\" or \"203.0.113.7\")", h)
	}
	return fmt.Errorf("%q %s: write the host alone (%q); agents print it as tcp://HOST:PORT", h, what, bare)
}

// isHostName reports whether s is a DNS host name: dot-separated labels of
// letters, digits and hyphens, none starting or ending with a hyphen, with
// an optional final dot.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// errNotHostPort is splitListen's error for an address without a port.
var errNotHostPort = errors.New("not host:port")

// splitListen splits a listen address into its host and port. The port
// must be a number: a service name ("http") would be looked up, and one
// out of range fails only when relayd binds it. 0, a free port the kernel
// picks, is allowed: tests rely on it.
func splitListen(addr string) (host string, port int, err error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil || p == "" {
		return "", 0, errNotHostPort
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 || strings.Trim(p, "0123456789") != "" {
		return "", 0, fmt.Errorf("%q is not a port number from 1 to 65535 (or 0, for a free one)", p)
	}
	return host, n, nil
}

// hostsOverlap reports whether listening on hosts a and b at one port
// would collide: the same address, or a wildcard, which takes every other.
// "0.0.0.0" as much as "::": Go listens on both for either (a dual-stack
// socket, on "tcp" and "udp"), so "0.0.0.0:7000" holds [::1]:7000 too.
// Host names are not resolved (check runs offline): beyond localhost, only
// the same name, or a name against a wildcard, counts.
func hostsOverlap(a, b string) bool {
	if a == "" || b == "" {
		return true
	}
	ipa, ipb := listenIP(a), listenIP(b)
	wildcard := func(ip netip.Addr) bool { return ip.IsValid() && ip.IsUnspecified() }
	switch {
	case wildcard(ipa) || wildcard(ipb):
		return true
	case ipa.IsValid() && ipb.IsValid():
		return ipa == ipb
	}
	return strings.EqualFold(a, b)
}

// listenIP is the address net.Listen binds for host, when that is known
// without a lookup: an IP, or localhost (127.0.0.1, as Go picks IPv4).
func listenIP(host string) netip.Addr {
	if strings.EqualFold(host, "localhost") {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

// checkAdminPort refuses an [admin] listen that would collide with the
// relay's own ports: [relay] listen's (relayd binds the admin API first,
// so the relay would fail to start), or one of [relay] ports, which
// tunnels bind on [relay] listen's host (the tunnel given it would fail).
// The error names whichever key the file sets: with [admin] listen left
// at its default, the fix is in [relay].
func (c *Config) checkAdminPort(relayHost string, relayPort int, relayPorts tunnel.PortSet) error {
	a, r := c.Admin.Listen, c.Relay.Listen
	if a == "" {
		return nil
	}
	host, port, _ := splitListen(a) // validateAdmin checked it
	if port == 0 || !hostsOverlap(host, relayHost) {
		return nil
	}
	set := c.defined("admin", "listen")
	switch {
	case port == relayPort && set:
		return c.fail("admin.listen", "%q shares TCP port %d with [relay] listen (%s), where agents connect: give the admin API another port",
			a, port, r)
	case port == relayPort:
		return c.fail("relay.listen", "%q shares TCP port %d with the admin API ([admin] listen, by default %s): pick another port, or set [admin] listen",
			r, port, a)
	case relayPorts.Contains(uint16(port)) && set:
		return c.fail("admin.listen", "%q: port %d is one of [relay] ports (%s), which tunnels get on %s: give the admin API a port outside them",
			a, port, relayPorts, r)
	case relayPorts.Contains(uint16(port)):
		return c.fail("relay.ports", "%q includes %d, the admin API's port ([admin] listen, by default %s): a tunnel given it could not listen; leave it out, or set [admin] listen",
			c.Relay.Ports, port, a)
	}
	return nil
}

// defined reports whether the file sets key itself, rather than leaving
// it at its default. (The text decoded already; this asks it one more
// question.)
func (c *Config) defined(key ...string) bool { return tomlconf.Defined(c.data, key...) }

// maxSecretFile bounds a secret_file: it holds one secret, not a document.
const maxSecretFile = 4 << 10

// resolveSecret sets the index-th token's secret from secret or
// secret_file; a relative secret_file is taken from the config's folder.
func (c *Config) resolveSecret(i int) error {
	t := &c.Tokens[i]
	t.secret, t.secretPath = t.Secret, ""
	switch {
	case t.Secret != "" && t.SecretFile != "":
		return c.failAt("tokens.secret_file", i, "token %q sets both secret and secret_file: keep one", t.ID)
	case t.Secret == "" && t.SecretFile == "":
		return c.failAt("tokens.secret", i, "token %q has no secret: set secret, or secret_file to a file holding it", t.ID)
	case t.SecretFile != "":
		path := t.SecretFile
		if !filepath.IsAbs(path) && c.file != "" {
			path = filepath.Join(filepath.Dir(c.file), path)
		}
		secret, err := readSecretFile(path)
		if err != nil {
			return c.failAt("tokens.secret_file", i, "token %q: %v", t.ID, err)
		}
		t.secret, t.secretPath = secret, path
		if len(secret) < tunnel.MinSecretLen {
			return c.failAt("tokens.secret_file", i, "token %q: the secret in %s is shorter than %d characters (`openssl rand -base64 24 > %s` makes one)",
				t.ID, path, tunnel.MinSecretLen, path)
		}
		return nil
	}
	// Whitespace around a secret is not counted: secret_file leaves it
	// out, and 20 spaces are no secret. Around a secret long enough it is
	// only warned of (spacedSecrets), since agents that send it as written
	// (--token) have been let in.
	if n := len(strings.TrimSpace(t.Secret)); n < tunnel.MinSecretLen {
		also := ""
		if n != len(t.Secret) {
			also = ", not counting whitespace at its start or end,"
		}
		return c.failAt("tokens.secret", i, "token %q: secret must be at least %d characters%s (try `openssl rand -base64 24`)", t.ID, tunnel.MinSecretLen, also)
	}
	return nil
}

// readSecretFile reads a secret from path, trimming surrounding whitespace.
// Errors name the file.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", path, pathErr(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", path, pathErr(err))
	}
	if len(data) > maxSecretFile {
		return "", fmt.Errorf("%s is larger than %d bytes: it should hold the secret alone", path, maxSecretFile)
	}
	return strings.TrimSpace(string(data)), nil
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

// secretKey is the key the token's secret came from, for messages.
func (t *TokenSection) secretKey() string {
	if t.secretPath != "" {
		return "tokens.secret_file"
	}
	return "tokens.secret"
}

// token checks the index-th [[tokens]] table (after resolveSecret) and
// turns it into the relay's tunnel.Token. relayPorts is [relay] ports.
func (c *Config) token(i int, relayPorts tunnel.PortSet) (tunnel.Token, error) {
	t := &c.Tokens[i]
	tok := tunnel.Token{ID: t.ID, Secret: t.secret, MaxTunnels: t.MaxTunnels, MaxConnections: t.MaxConnections}
	for _, p := range t.Names {
		if err := tunnel.ValidNamePattern(p); err != nil {
			return tok, c.failAt("tokens.names", i, "token %q: %v (patterns use * ? and [a-z], as in \"game-*\")", t.ID, err)
		}
	}
	tok.Names = t.Names
	if strings.TrimSpace(t.Ports) != "" {
		ports, err := tunnel.ParsePortSet(t.Ports)
		if err != nil {
			return tok, c.failAt("tokens.ports", i, "token %q: %v", t.ID, err)
		}
		for _, r := range ports {
			for p := int(r.Low); p <= int(r.High); p++ {
				if !relayPorts.Contains(uint16(p)) {
					return tok, c.failAt("tokens.ports", i, "token %q: port %d is outside [relay] ports (%s)", t.ID, p, relayPorts)
				}
			}
		}
		tok.Ports = ports
	}
	if t.MaxTunnels < 0 {
		return tok, c.failAt("tokens.max_tunnels", i, "token %q: must be 0 (no limit) or more", t.ID)
	}
	if t.MaxConnections < 0 {
		return tok, c.failAt("tokens.max_connections", i, "token %q: must be 0 (no limit) or more", t.ID)
	}
	if s := strings.TrimSpace(t.MaxBandwidth); s != "" {
		bps, err := bitrate.Parse(s)
		switch {
		case err != nil:
			return tok, c.failAt("tokens.max_bandwidth", i, "token %q: %q is not a rate in bits a second such as \"500k\", \"100M\" or \"1G\" (\"0\": no limit)", t.ID, t.MaxBandwidth)
		case bps != 0 && bps < minBandwidth:
			return tok, c.failAt("tokens.max_bandwidth", i, "token %q: %q is below %s: give \"64k\" or more (\"0\": no limit)", t.ID, t.MaxBandwidth, bitrate.Format(minBandwidth))
		case bps > maxBandwidth:
			return tok, c.failAt("tokens.max_bandwidth", i, "token %q: %q is more than 1000G: give \"1000G\" or less (\"0\": no limit)", t.ID, t.MaxBandwidth)
		}
		tok.MaxBandwidth = uint64(bps / 8)
	}
	tok.DenyUDP = t.UDP != nil && !*t.UDP
	cl, err := c.clientLimits("tokens", i, t.ClientSection)
	if err != nil {
		return tok, err
	}
	tok.Clients = cl
	return tok, nil
}

// The bounds of max_bandwidth, in bits a second: below 64 kbit/s a
// 1472-byte datagram takes a fifth of a second, and a game is not playable.
const (
	minBandwidth = 64e3
	maxBandwidth = 1000e9
)

// clientLimits checks a ClientSection and turns it into tunnel.ClientLimits.
// table is "limits" or "tokens"; index is the token's (-1 for [limits]).
func (c *Config) clientLimits(table string, index int, s ClientSection) (tunnel.ClientLimits, error) {
	fail := func(key, format string, args ...any) error {
		if index >= 0 {
			format = fmt.Sprintf("token %q: ", c.Tokens[index].ID) + format
		}
		return c.failAt(table+"."+key, max(index, 0), format, args...)
	}
	l := tunnel.ClientLimits{MaxConnsPerIP: s.PerIPConnections, RatePerIP: s.PerIPRate, BurstPerIP: s.PerIPBurst}
	if s.PerIPConnections < 0 {
		return l, fail("per_ip_connections", "must be 0 (no limit) or more")
	}
	if s.PerIPRate < 0 || math.IsNaN(s.PerIPRate) || math.IsInf(s.PerIPRate, 0) {
		return l, fail("per_ip_rate", "must be 0 (no limit) or a positive number of new connections per second")
	}
	if s.PerIPBurst < 0 {
		return l, fail("per_ip_burst", "must be 0 (twice the rate) or more")
	}
	// A token's burst alone applies to [limits]' rate (see
	// tunnel.Token.Clients).
	switch {
	case s.PerIPBurst == 0 || s.PerIPRate > 0:
	case index < 0:
		return l, fail("per_ip_burst", "applies to per_ip_rate, which this table does not set")
	case c.Limits.PerIPRate == 0:
		return l, fail("per_ip_burst", "applies to per_ip_rate, which neither this table nor [limits] sets")
	}
	var err error
	if l.Allow, err = parsePrefixes(s.Allow); err != nil {
		return l, fail("allow", "%v", err)
	}
	if l.Deny, err = parsePrefixes(s.Deny); err != nil {
		return l, fail("deny", "%v", err)
	}
	return l, nil
}

// parsePrefixes is tunnel.ParsePrefixes, with nil for an empty list.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	return tunnel.ParsePrefixes(ss)
}

// stateDir resolves [relay] state_dir: the configured folder, else
// systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/relayd, else
// ~/.local/state/relayd.
func (c *Config) stateDir() (string, error) {
	if c.Relay.StateDir != "" {
		return c.path(c.Relay.StateDir), nil
	}
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0], nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "relayd"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no state_dir configured and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "relayd"), nil
}

// path resolves a path relay.toml gives for state_dir, cert_file or
// key_file: a relative one starts at relay.toml's folder, as secret_file's
// and token_file's do, so `relayd fingerprint --config /etc/relayd/relay.toml`
// run from any folder finds the relay's key rather than making another.
// relayd used to take these from its working directory: when only that
// one exists, it is kept, so a deployment that relied on it keeps its key.
func (c *Config) path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.file == "" {
		return p
	}
	joined := filepath.Join(filepath.Dir(c.file), p)
	if _, err := os.Stat(joined); err != nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return joined
}
