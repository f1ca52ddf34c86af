package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/relaytun/relay/tunnel"
)

// Config is relay.toml. Every field has a default (DefaultConfig); the
// sample relay.toml at the top of the repository documents each one.
type Config struct {
	Relay  RelaySection   `toml:"relay"`
	Log    LogSection     `toml:"log"`
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
}

// LogSection is [log].
type LogSection struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// TokenSection is one [[tokens]] table.
type TokenSection struct {
	ID     string `toml:"id"`
	Secret string `toml:"secret"`
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
		},
		Log: LogSection{Level: "info", Format: "text"},
	}
}

// Duration is a time.Duration written as a string with a unit ("10s"). A
// bare number is refused rather than read as nanoseconds.
type Duration struct{ time.Duration }

// UnmarshalText parses "10s", "1m30s" and the like.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration with a unit, such as \"10s\"", b)
	}
	d.Duration = v
	return nil
}

// MarshalText prints the duration as UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// ConfigError points at the place in relay.toml that is wrong.
type ConfigError struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

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
	md, err := toml.Decode(data, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{File: path, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &ConfigError{File: path, Line: line, Key: m[2], Msg: m[3]}
		}
		return nil, &ConfigError{File: path, Msg: err.Error()}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, &ConfigError{File: path, Line: keyLine(data, k, 0), Key: k.String(),
			Msg: "unknown key (see the sample relay.toml for the keys there are)"}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// typeErrRE matches BurntSushi/toml's error for a value of the wrong type.
var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)

// keyLine finds the line that sets key, or 0. It understands the plain
// layout relay.toml uses: [table] and [[table]] headers, then key = value.
// For an array of tables, index picks the table (0 is the first); when that
// table does not set the key, its header's line is returned.
func keyLine(data string, key toml.Key, index int) int {
	if len(key) == 0 {
		return 0
	}
	table, last := strings.Join(key[:len(key)-1], "."), key[len(key)-1]
	cur := ""
	seen := -1  // tables named `table` so far, minus one
	header := 0 // line of the index-th such table's header
	for i, line := range strings.Split(data, "\n") {
		l := strings.TrimSpace(line)
		if m := headerRE.FindStringSubmatch(l); m != nil {
			if header > 0 && cur == table && seen == index {
				return header // that table ended without the key
			}
			cur = strings.TrimSpace(m[1])
			if cur == key.String() {
				return i + 1
			}
			if cur == table {
				if seen++; seen == index {
					header = i + 1
				}
			}
			continue
		}
		if cur != table || (table != "" && seen != index) {
			continue
		}
		if k, _, ok := strings.Cut(l, "="); ok && strings.Trim(strings.TrimSpace(k), `"'`) == last {
			return i + 1
		}
	}
	return header
}

var headerRE = regexp.MustCompile(`^\[\[?\s*([^\]]+?)\s*\]\]?`)

// fail makes a ConfigError for key (e.g. "relay.ports").
func (c *Config) fail(key string, format string, args ...any) error {
	return c.failAt(key, 0, format, args...)
}

// failAt is fail for a key of the index-th table of an array ([[tokens]]).
func (c *Config) failAt(key string, index int, format string, args ...any) error {
	file := c.file
	if file == "" {
		file = "(defaults)"
	}
	return &ConfigError{File: file, Line: keyLine(c.data, strings.Split(key, "."), index), Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every value.
func (c *Config) Validate() error {
	r := &c.Relay
	if _, port, err := net.SplitHostPort(r.Listen); err != nil || port == "" {
		return c.fail("relay.listen", "%q is not host:port (for example \"0.0.0.0:7000\")", r.Listen)
	}
	if _, err := tunnel.ParsePortSet(r.Ports); err != nil {
		return c.fail("relay.ports", "%v", err)
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
	}{{"relay.handshake_timeout", r.HandshakeTimeout.Duration}, {"relay.idle_timeout", r.IdleTimeout.Duration}, {"relay.keepalive", r.KeepAlive.Duration}} {
		if d.v <= 0 {
			return c.fail(d.key, "must be a positive duration such as \"10s\"")
		}
	}
	if r.KeepAlive.Duration >= r.IdleTimeout.Duration {
		return c.fail("relay.keepalive", "must be shorter than idle_timeout (%v)", r.IdleTimeout)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return c.fail("log.level", "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return c.fail("log.format", "%q is not text or json", c.Log.Format)
	}
	ids := map[string]bool{}
	secrets := map[string]string{}
	for i, t := range c.Tokens {
		if t.ID == "" {
			return c.failAt("tokens.id", i, "token %d has no id", i+1)
		}
		if ids[t.ID] {
			return c.failAt("tokens.id", i, "token id %q is used twice", t.ID)
		}
		ids[t.ID] = true
		if len(t.Secret) < tunnel.MinSecretLen {
			return c.failAt("tokens.secret", i, "token %q: secret must be at least %d characters (try `openssl rand -base64 24`)", t.ID, tunnel.MinSecretLen)
		}
		if other, ok := secrets[t.Secret]; ok {
			return c.failAt("tokens.secret", i, "tokens %q and %q have the same secret", other, t.ID)
		}
		secrets[t.Secret] = t.ID
	}
	return nil
}

// stateDir resolves [relay] state_dir: the configured folder, else
// systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/relayd, else
// ~/.local/state/relayd.
func (c *Config) stateDir() (string, error) {
	if c.Relay.StateDir != "" {
		return c.Relay.StateDir, nil
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
