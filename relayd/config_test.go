package main

import (
	"errors"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const samplePath = "../relay.toml"

// TestSampleConfig: the repository's relay.toml loads, and says exactly
// what the built-in defaults are.
func TestSampleConfig(t *testing.T) {
	c, err := LoadConfig(samplePath)
	if err != nil {
		t.Fatalf("LoadConfig(%s): %v", samplePath, err)
	}
	def := DefaultConfig()
	if c.Relay != def.Relay {
		t.Errorf("[relay] in %s:\n got %+v\nwant %+v (DefaultConfig)", samplePath, c.Relay, def.Relay)
	}
	if c.Log != def.Log {
		t.Errorf("[log] in %s:\n got %+v\nwant %+v (DefaultConfig)", samplePath, c.Log, def.Log)
	}
	if len(c.Tokens) != 0 || len(def.Tokens) != 0 {
		t.Errorf("tokens: sample has %d, defaults %d; want none in either", len(c.Tokens), len(def.Tokens))
	}
	// Every field compared above: a new field in Config needs a look here.
	if n := reflect.TypeFor[Config]().NumField(); n != 5 {
		t.Errorf("Config has %d fields; update this test to compare the new ones", n)
	}
}

// TestSampleDocumentsEveryKey: each key relayd reads appears in the sample
// (the token keys commented out, since the sample defines no token).
func TestSampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range []struct {
		prefix string
		typ    reflect.Type
	}{
		{"", reflect.TypeFor[RelaySection]()},
		{"", reflect.TypeFor[LogSection]()},
		{`#\s*`, reflect.TypeFor[TokenSection]()},
	} {
		for i := range sec.typ.NumField() {
			key := sec.typ.Field(i).Tag.Get("toml")
			if !regexp.MustCompile(`(?m)^` + sec.prefix + regexp.QuoteMeta(key) + ` = `).Match(data) {
				t.Errorf("%s does not document %s.%s", samplePath, sec.typ.Name(), key)
			}
		}
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("empty.toml", "")
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if def := DefaultConfig(); c.Relay != def.Relay || c.Log != def.Log || len(c.Tokens) != 0 {
		t.Errorf("empty file: got %+v, want the defaults", c)
	}

	const full = `
[relay]
listen = "127.0.0.1:7100"
ports = "24100-24109, 25565"
state_dir = "/var/lib/relayd"
public_host = "relay.example.com"
cert_file = "/etc/relayd/cert.pem"
key_file = "/etc/relayd/key.pem"
handshake_timeout = "3s"
idle_timeout = "1m30s"
keepalive = "500ms"

[log]
level = "DEBUG"
format = "json"

[[tokens]]
id = "alice"
secret = "alice-secret-0123456789"

[[tokens]]
id = "bob"
secret = "bob-secret-0123456789"
`
	c, err = ParseConfig("full.toml", full)
	if err != nil {
		t.Fatalf("full file: %v", err)
	}
	want := RelaySection{
		Listen: "127.0.0.1:7100", Ports: "24100-24109, 25565", StateDir: "/var/lib/relayd",
		PublicHost: "relay.example.com", CertFile: "/etc/relayd/cert.pem", KeyFile: "/etc/relayd/key.pem",
		HandshakeTimeout: Duration{3 * time.Second}, IdleTimeout: Duration{90 * time.Second},
		KeepAlive: Duration{500 * time.Millisecond},
	}
	if c.Relay != want {
		t.Errorf("[relay]:\n got %+v\nwant %+v", c.Relay, want)
	}
	if c.Log != (LogSection{Level: "DEBUG", Format: "json"}) {
		t.Errorf("[log]: got %+v", c.Log)
	}
	wantTokens := []TokenSection{{"alice", "alice-secret-0123456789"}, {"bob", "bob-secret-0123456789"}}
	if !reflect.DeepEqual(c.Tokens, wantTokens) {
		t.Errorf("tokens: got %+v, want %+v", c.Tokens, wantTokens)
	}

	// Only what is set changes; the rest keeps its default.
	c, err = ParseConfig("part.toml", "[relay]\nports = \"30000\"\n")
	if err != nil {
		t.Fatal(err)
	}
	want = DefaultConfig().Relay
	want.Ports = "30000"
	if c.Relay != want {
		t.Errorf("partial [relay]:\n got %+v\nwant %+v", c.Relay, want)
	}
}

func TestDurationText(t *testing.T) {
	for _, s := range []string{"10s", "1m30s", "250ms", "2h0m0s"} {
		var d Duration
		if err := d.UnmarshalText([]byte(s)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", s, err)
			continue
		}
		b, _ := d.MarshalText()
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("%q: MarshalText gave %q, which reads back as %v, %v", s, b, back, err)
		}
	}
	for _, s := range []string{"", "5", "abc", "10 s"} {
		var d Duration
		if err := d.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("UnmarshalText(%q) = %v, want an error", s, d)
		}
	}
}

// A long enough secret, and another.
const (
	secretA = "0123456789abcdef"
	secretB = "fedcba9876543210"
)

// badConfigs are mistakes an operator can make, each with the line and key
// the error must name. line -1: the line is not checked (see the comment).
// relayd_test.go runs `relayd check` on each as well.
var badConfigs = []struct {
	name string
	text string
	line int
	key  string
	msg  string
}{
	{"unknown key in relay", "[relay]\nlisten = \"0.0.0.0:7000\"\nlissten = \"0.0.0.0:7001\"\n", 3, "relay.lissten", "unknown key"},
	{"unknown key in tokens", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nscret = \"x\"\n", 4, "tokens.scret", "unknown key"},
	{"unknown table", "[relay]\nports = \"20000-20010\"\n\n[metrics]\nlisten = \"127.0.0.1:9100\"\n", 4, "metrics", "unknown key"},
	{"unknown top-level key", "# comment\nlisten = \"0.0.0.0:7000\"\n", 2, "listen", "unknown key"},
	{"key in the wrong table", "[log]\nports = \"20000\"\n", 2, "log.ports", "unknown key"},
	{"ports reversed", "[relay]\nports = \"30000-20000\"\n", 2, "relay.ports", "below"},
	{"ports not numbers", "[relay]\nports = \"abc\"\n", 2, "relay.ports", "not a port number"},
	{"port zero", "[relay]\nports = \"0\"\n", 2, "relay.ports", "not a port number"},
	{"port too big", "[relay]\nports = \"20000-70000\"\n", 2, "relay.ports", "not a port number"},
	{"ports empty", "[relay]\nports = \"\"\n", 2, "relay.ports", "names no port"},
	{"ports overlap", "[relay]\nports = \"20000-20010,20005\"\n", 2, "relay.ports", "overlaps"},
	{"listen without port", "[relay]\nlisten = \"0.0.0.0\"\n", 2, "relay.listen", "not host:port"},
	{"duration word", "[relay]\nhandshake_timeout = \"abc\"\n", 2, "relay.handshake_timeout", "not a duration"},
	{"duration bare number", "[relay]\n\nidle_timeout = 5\n", 3, "relay.idle_timeout", "not a duration"},
	{"duration without unit", "[relay]\nkeepalive = \"5\"\n", 2, "relay.keepalive", "not a duration"},
	{"duration zero", "[relay]\nhandshake_timeout = \"0s\"\n", 2, "relay.handshake_timeout", "positive"},
	{"keepalive not below idle", "[relay]\nidle_timeout = \"5s\"\nkeepalive = \"5s\"\n", 3, "relay.keepalive", "shorter than idle_timeout"},
	{"secret too short", "[[tokens]]\nid = \"alice\"\nsecret = \"short\"\n", 3, "tokens.secret", "at least 16"},
	// A missing key points at its table's header.
	{"token without id", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nsecret = \"" + secretB + "\"\n", 4, "tokens.id", "no id"},
	// A later [[tokens]] table's mistake points at that table, not the first.
	{"duplicate token ids", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n\n[[tokens]]\nid = \"alice\"\nsecret = \"" + secretB + "\"\n", 6, "tokens.id", `"alice" is used twice`},
	{"duplicate secrets", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nid = \"bob\"\nsecret = \"" + secretA + "\"\n", 6, "tokens.secret", "same secret"},
	{"second secret too short", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nid = \"bob\"\nsecret = \"x\"\n", 6, "tokens.secret", "at least 16"},
	{"cert_file without key_file", "[relay]\ncert_file = \"/etc/relayd/cert.pem\"\n", 2, "relay.cert_file", "set both or neither"},
	{"key_file without cert_file", "[relay]\nkey_file = \"/etc/relayd/key.pem\"\n", 2, "relay.key_file", "set both or neither"},
	{"wrong type", "[relay]\nlisten = 7000\n", 2, "relay.listen", "incompatible types"},
	{"bad log level", "[log]\nlevel = \"loud\"\n", 2, "log.level", `"loud" is not debug, info, warn or error`},
	{"bad log format", "[log]\nformat = \"xml\"\n", 2, "log.format", `"xml" is not text or json`},
	{"syntax: unterminated string", "[relay]\nlisten = \"0.0.0.0:7000\nports = \"1-2\"\n", 2, "", "newlines"},
	// The TOML parser counts the newline that ends "[relay" as line 2.
	{"syntax: unterminated table", "[relay\nlisten = \"0.0.0.0:7000\"\n", -1, "", "table name"},
	{"syntax: no value", "[relay]\nports =\n", 2, "", ""},
	{"syntax: duplicate key", "[relay]\nports = \"1\"\nports = \"2\"\n", 3, "", "already been defined"},
}

func TestParseConfigErrors(t *testing.T) {
	for _, tt := range badConfigs {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("bad.toml", tt.text)
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %+v", tt.text, c)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %q is a %T, want a *ConfigError", err, err)
			}
			if ce.File != "bad.toml" {
				t.Errorf("File = %q, want bad.toml", ce.File)
			}
			if tt.line >= 0 && ce.Line != tt.line {
				t.Errorf("Line = %d, want %d (error %q)", ce.Line, tt.line, err)
			}
			if tt.key != "" && ce.Key != tt.key {
				t.Errorf("Key = %q, want %q (error %q)", ce.Key, tt.key, err)
			}
			if !strings.Contains(ce.Msg, tt.msg) {
				t.Errorf("Msg = %q, want it to say %q", ce.Msg, tt.msg)
			}
			if want := wantPrefix("bad.toml", tt.line, tt.key); !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
		})
	}
}

// wantPrefix is how an error about line and key in file starts.
func wantPrefix(file string, line int, key string) string {
	s := file + ":"
	if line >= 0 {
		s += strconv.Itoa(line) + ":"
	}
	if key != "" {
		if line < 0 {
			return s // FILE:LINE: KEY with an unchecked line
		}
		s += " " + key + ":"
	}
	return s
}

func TestConfigErrorText(t *testing.T) {
	for _, tt := range []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{"r.toml", 3, "relay.ports", "bad"}, "r.toml:3: relay.ports: bad"},
		{ConfigError{"r.toml", 0, "relay.ports", "bad"}, "r.toml: relay.ports: bad"},
		{ConfigError{"r.toml", 7, "", "bad"}, "r.toml:7: bad"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}
