package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/tunnel"
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
	if !reflect.DeepEqual(c.Limits, def.Limits) {
		t.Errorf("[limits] in %s:\n got %#v\nwant %#v (DefaultConfig)", samplePath, c.Limits, def.Limits)
	}
	if c.Log != def.Log {
		t.Errorf("[log] in %s:\n got %+v\nwant %+v (DefaultConfig)", samplePath, c.Log, def.Log)
	}
	if c.Admin != def.Admin {
		t.Errorf("[admin] in %s:\n got %+v\nwant %+v (DefaultConfig)", samplePath, c.Admin, def.Admin)
	}
	if len(c.Tokens) != 0 || len(def.Tokens) != 0 {
		t.Errorf("tokens: sample has %d, defaults %d; want none in either", len(c.Tokens), len(def.Tokens))
	}
	// Every field compared above: a new field in Config needs a look here.
	if n := reflect.TypeFor[Config]().NumField(); n != 7 {
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
		{"", reflect.TypeFor[LimitsSection]()},
		{"", reflect.TypeFor[LogSection]()},
		{"", reflect.TypeFor[AdminSection]()},
		{`#\s*`, reflect.TypeFor[TokenSection]()},
	} {
		n := 0
		for _, f := range reflect.VisibleFields(sec.typ) {
			key := f.Tag.Get("toml")
			if f.Anonymous || !f.IsExported() || key == "" {
				continue
			}
			n++
			if !regexp.MustCompile(`(?m)^` + sec.prefix + regexp.QuoteMeta(key) + ` = `).Match(data) {
				t.Errorf("%s does not document %s.%s", samplePath, sec.typ.Name(), key)
			}
		}
		if n == 0 {
			t.Errorf("%s has no keys: the check above is not looking", sec.typ.Name())
		}
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("empty.toml", "")
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if def := DefaultConfig(); c.Relay != def.Relay || !reflect.DeepEqual(c.Limits, def.Limits) || c.Log != def.Log || len(c.Tokens) != 0 {
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
max_handshakes = 64
lease_duration = "2h"
rejoin_window = "0s"
drain_timeout = "5s"
udp_flow_timeout = "30s"

[limits]
per_ip_connections = 64
per_ip_rate = 20
per_ip_burst = 50
allow = ["0.0.0.0/0", "::/0"]
deny = ["203.0.113.0/24", "2001:db8::1"]
max_pending_sessions = 32

[log]
level = "DEBUG"
format = "json"

[[tokens]]
id = "alice"
secret = "alice-secret-0123456789"
names = ["game-*", "mc"]
ports = "24100-24105,25565"
max_tunnels = 3
max_connections = 100
udp = false
per_ip_connections = 8
per_ip_rate = 0.5
per_ip_burst = 2
allow = ["10.0.0.0/8"]
deny = ["10.1.2.3"]

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
		KeepAlive: Duration{500 * time.Millisecond}, MaxHandshakes: 64,
		LeaseDuration: Duration{2 * time.Hour}, RejoinWindow: Duration{0}, DrainTimeout: Duration{5 * time.Second},
		UDPFlowTimeout: Duration{30 * time.Second},
	}
	if c.Relay != want {
		t.Errorf("[relay]:\n got %+v\nwant %+v", c.Relay, want)
	}
	wantLimits := LimitsSection{
		ClientSection: ClientSection{PerIPConnections: 64, PerIPRate: 20, PerIPBurst: 50,
			Allow: []string{"0.0.0.0/0", "::/0"}, Deny: []string{"203.0.113.0/24", "2001:db8::1"}},
		MaxPendingSessions: 32, MaxUDPFlows: 1024,
	}
	if !reflect.DeepEqual(c.Limits, wantLimits) {
		t.Errorf("[limits]:\n got %+v\nwant %+v", c.Limits, wantLimits)
	}
	if c.Log != (LogSection{Level: "DEBUG", Format: "json"}) {
		t.Errorf("[log]: got %+v", c.Log)
	}
	no := false
	wantTokens := []TokenSection{
		{ID: "alice", Secret: "alice-secret-0123456789", Names: []string{"game-*", "mc"}, Ports: "24100-24105,25565",
			MaxTunnels: 3, MaxConnections: 100, UDP: &no,
			ClientSection: ClientSection{PerIPConnections: 8, PerIPRate: 0.5, PerIPBurst: 2,
				Allow: []string{"10.0.0.0/8"}, Deny: []string{"10.1.2.3"}},
			secret: "alice-secret-0123456789"},
		{ID: "bob", Secret: "bob-secret-0123456789", secret: "bob-secret-0123456789"},
	}
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
	// Dotted keys and inline tables have their lines too.
	{"unknown dotted key", "relay.portz = \"1\"\n", 1, "relay.portz",
		"unknown key (see the sample relay.toml for the keys there are); did you mean ports?"},
	{"another table's key, dotted", "[relay]\nlisten = \"127.0.0.1:30700\"\nlimits.per_ip_rate = -1\n", 3, "relay.limits.per_ip_rate",
		"unknown key (see the sample relay.toml for the keys there are); limits.per_ip_rate is a key of [limits]: move it under that header as per_ip_rate (a key belongs to the table whose header comes before it)"},
	{"inline token's short secret", "tokens = [\n  {id = \"a\", secret = \"" + secretA + "\"},\n  {id = \"b\", secret = \"x\"},\n]\n", 3, "tokens.secret",
		`token "b": secret must be at least 16 characters (try ` + "`openssl rand -base64 24`)"},
	{"inline token without id", "tokens = [ {id = \"a\", secret = \"" + secretA + "\"},\n{secret = \"" + secretB + "\"} ]\n", 2, "tokens.id", "token 2 has no id"},
	{"unknown key in an inline token", "tokens = [ {id = \"a\",\n  secrett = \"" + secretA + "\"} ]\n", 2, "tokens.secrett", "unknown key"},
	{"dotted [limits] key", "limits.per_ip_rate = -1\n", 1, "limits.per_ip_rate", "must be 0 (no limit) or a positive number of new connections per second"},
	{"ports reversed", "[relay]\nports = \"30000-20000\"\n", 2, "relay.ports", "below"},
	{"ports not numbers", "[relay]\nports = \"abc\"\n", 2, "relay.ports", "not a port number"},
	{"port zero", "[relay]\nports = \"0\"\n", 2, "relay.ports", "not a port number"},
	{"port too big", "[relay]\nports = \"20000-70000\"\n", 2, "relay.ports", "not a port number"},
	{"ports empty", "[relay]\nports = \"\"\n", 2, "relay.ports", "names no port"},
	{"ports overlap", "[relay]\nports = \"20000-20010,20005\"\n", 2, "relay.ports", "overlaps"},
	{"listen without port", "[relay]\nlisten = \"0.0.0.0\"\n", 2, "relay.listen", "not host:port"},
	{"duration word", "[relay]\nhandshake_timeout = \"abc\"\n", 2, "relay.handshake_timeout", "not a duration"},
	{"duration bare number", "[relay]\n\nidle_timeout = 5\n", 3, "relay.idle_timeout", `5 has no unit: give one, as in "5s"`},
	{"duration without unit", "[relay]\nkeepalive = \"5\"\n", 2, "relay.keepalive", `5 has no unit: give one, as in "5s"`},
	{"duration too large", "[relay]\ndrain_timeout = \"100000000h\"\n", 2, "relay.drain_timeout",
		`"100000000h" is too large: a duration can be at most 2562047h47m16s (about 292 years)`},
	{"duration zero", "[relay]\nhandshake_timeout = \"0s\"\n", 2, "relay.handshake_timeout", "positive"},
	{"lease zero", "[relay]\nlease_duration = \"0s\"\n", 2, "relay.lease_duration", "positive"},
	{"drain negative", "[relay]\ndrain_timeout = \"-1s\"\n", 2, "relay.drain_timeout", "positive"},
	{"udp flow timeout zero", "[relay]\nudp_flow_timeout = \"0s\"\n", 2, "relay.udp_flow_timeout", "positive"},
	{"max udp flows zero", "[limits]\nmax_udp_flows = 0\n", 2, "limits.max_udp_flows", "at least 1"},
	{"rejoin negative", "[relay]\nrejoin_window = \"-5s\"\n", 2, "relay.rejoin_window", "not be negative"},
	{"rejoin without unit", "[relay]\nrejoin_window = \"10\"\n", 2, "relay.rejoin_window", `10 has no unit: give one, as in "10s"`},
	{"keepalive not below idle", "[relay]\nidle_timeout = \"5s\"\nkeepalive = \"5s\"\n", 3, "relay.keepalive", "must be shorter than idle_timeout (5s)"},
	// With one of the pair left at its default, the one the file sets is
	// blamed, and the default named.
	{"idle below the default keepalive", "[relay]\nidle_timeout = \"3s\"\n", 2, "relay.idle_timeout",
		"must be longer than keepalive (5s, its default; set keepalive too)"},
	{"keepalive above the default idle", "[relay]\nlisten = \"127.0.0.1:7000\"\nkeepalive = \"20s\"\n", 3, "relay.keepalive",
		"must be shorter than idle_timeout (15s, its default; set idle_timeout too)"},
	{"secret too short", "[[tokens]]\nid = \"alice\"\nsecret = \"short\"\n", 3, "tokens.secret", "at least 16"},
	// Whitespace around a secret does not count: secret_file leaves it out.
	{"secret of spaces", "[[tokens]]\nid = \"alice\"\nsecret = \"" + strings.Repeat(" ", 20) + "\"\n", 3, "tokens.secret",
		`token "alice": secret must be at least 16 characters, not counting whitespace at its start or end, (try ` + "`openssl rand -base64 24`)"},
	// A missing key points at its table's header.
	{"token without id", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nsecret = \"" + secretB + "\"\n", 4, "tokens.id", "no id"},
	// A later [[tokens]] table's mistake points at that table, not the first.
	{"duplicate token ids", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n\n[[tokens]]\nid = \"alice\"\nsecret = \"" + secretB + "\"\n", 6, "tokens.id", `"alice" is used twice`},
	{"duplicate secrets", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nid = \"bob\"\nsecret = \"" + secretA + "\"\n", 6, "tokens.secret", "same secret"},
	{"second secret too short", "[[tokens]]\nid = \"alice\"\nsecret = \"" + secretA + "\"\n[[tokens]]\nid = \"bob\"\nsecret = \"x\"\n", 6, "tokens.secret", "at least 16"},
	{"cert_file without key_file", "[relay]\ncert_file = \"/etc/relayd/cert.pem\"\n", 2, "relay.cert_file", "set both or neither"},
	{"key_file without cert_file", "[relay]\nkey_file = \"/etc/relayd/key.pem\"\n", 2, "relay.key_file", "set both or neither"},
	{"wrong type", "[relay]\nlisten = 7000\n", 2, "relay.listen", "want a string, got an integer"},
	{"numeric secret", "[[tokens]]\nid = \"alice\"\nsecret = 12345678901234567890\n", 3, "tokens.secret", "too large for a TOML integer; if it is text (a secret, a name), put it in quotes"},
	{"bad log level", "[log]\nlevel = \"loud\"\n", 2, "log.level", `"loud" is not debug, info, warn or error`},
	{"bad log format", "[log]\nformat = \"xml\"\n", 2, "log.format", `"xml" is not text or json`},
	{"syntax: unterminated string", "[relay]\nlisten = \"0.0.0.0:7000\nports = \"1-2\"\n", 2, "", "newlines"},
	// The TOML parser counts the newline that ends "[relay" as line 2.
	{"syntax: unterminated table", "[relay\nlisten = \"0.0.0.0:7000\"\n", -1, "", "table name"},
	{"syntax: no value", "[relay]\nports =\n", 2, "", ""},
	{"syntax: duplicate key", "[relay]\nports = \"1\"\nports = \"2\"\n", 3, "", "already been defined"},

	// [relay] max_handshakes and [limits].
	{"max_handshakes zero", "[relay]\nmax_handshakes = 0\n", 2, "relay.max_handshakes", "at least 1"},
	{"max_handshakes not a number", "[relay]\nmax_handshakes = \"many\"\n", 2, "relay.max_handshakes", "want an integer, got a string"},
	{"unknown key in limits", "[limits]\nper_ip_connections = 4\nper_ip_conns = 5\n", 3, "limits.per_ip_conns", "unknown key"},
	{"limits per_ip_connections negative", "[limits]\nper_ip_connections = -1\n", 2, "limits.per_ip_connections", "0 (no limit) or more"},
	{"limits per_ip_rate negative", "[limits]\n\nper_ip_rate = -1\n", 3, "limits.per_ip_rate", "0 (no limit) or a positive number"},
	{"limits per_ip_rate nan", "[limits]\nper_ip_rate = nan\n", 2, "limits.per_ip_rate", "0 (no limit) or a positive number"},
	{"limits per_ip_rate inf", "[limits]\nper_ip_rate = inf\n", 2, "limits.per_ip_rate", "0 (no limit) or a positive number"},
	{"limits per_ip_rate string", "[limits]\nper_ip_rate = \"20/s\"\n", 2, "limits.per_ip_rate", "want a number, got a string"},
	{"limits per_ip_burst negative", "[limits]\nper_ip_rate = 1\nper_ip_burst = -2\n", 3, "limits.per_ip_burst", "0 (twice the rate) or more"},
	{"limits per_ip_burst without rate", "[limits]\nper_ip_burst = 10\n", 2, "limits.per_ip_burst", "applies to per_ip_rate, which this table does not set"},
	{"limits allow not an address", "[limits]\nallow = [\"10.0.0.0/8\", \"nope\"]\n", 2, "limits.allow", `"nope" is not an IP address or CIDR prefix`},
	{"limits deny prefix too long", "[limits]\ndeny = [\"10.0.0.0/33\"]\n", 2, "limits.deny", `"10.0.0.0/33" is not an IP address or CIDR prefix`},
	{"limits allow not a list", "[limits]\nallow = \"10.0.0.0/8\"\n", 2, "limits.allow", "want an array, got a string"},
	{"max_pending_sessions zero", "[limits]\nmax_pending_sessions = 0\n", 2, "limits.max_pending_sessions", "at least 1"},
	{"max_pending_sessions negative", "[limits]\nmax_pending_sessions = -5\n", 2, "limits.max_pending_sessions", "at least 1"},

	// [[tokens]] scopes and limits.
	{"secret and secret_file", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nsecret_file = \"a.secret\"\n", 4, "tokens.secret_file", "both secret and secret_file"},
	{"neither secret nor secret_file", "[[tokens]]\nid = \"a\"\nnames = [\"x\"]\n", 1, "tokens.secret", `token "a" has no secret`},
	{"secret_file missing", "[[tokens]]\nid = \"a\"\nsecret_file = \"no-such.secret\"\n", 3, "tokens.secret_file", "no-such.secret: no such file"},
	{"names bad pattern", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nnames = [\"game-*\", \"[bad\"]\n", 4, "tokens.names", `name pattern "[bad"`},
	{"names empty pattern", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nnames = [\"\"]\n", 4, "tokens.names", "empty name pattern"},
	{"names not a list", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nnames = \"game-*\"\n", 4, "tokens.names", "want an array, got a string"},
	// A later token's mistake points at its own line.
	{"second token's names", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nnames = [\"ok-*\"]\n\n[[tokens]]\nid = \"b\"\nsecret = \"" + secretB + "\"\nnames = [\"a[\"]\n", 9, "tokens.names", `token "b"`},
	{"token ports outside relay ports", "[relay]\nports = \"20000-20009\"\n\n[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nports = \"20005-20011\"\n", 7, "tokens.ports", "port 20010 is outside [relay] ports (20000-20009)"},
	{"token single port outside", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nports = \"20000,30000\"\n", 4, "tokens.ports", "port 30000 is outside [relay] ports (20000-29999)"},
	{"token ports not numbers", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nports = \"web\"\n", 4, "tokens.ports", "not a port number"},
	{"token ports overlap", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nports = \"20000-20005,20003\"\n", 4, "tokens.ports", "overlaps"},
	{"max_tunnels negative", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_tunnels = -1\n", 4, "tokens.max_tunnels", "0 (no limit) or more"},
	{"max_tunnels fraction", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_tunnels = 1.5\n", 4, "tokens.max_tunnels", "want an integer, got a float"},
	{"max_connections negative", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_connections = -3\n", 4, "tokens.max_connections", "0 (no limit) or more"},
	{"max_bandwidth not a rate", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_bandwidth = \"fast\"\n", 4, "tokens.max_bandwidth",
		`token "a": "fast" is not a rate in bits a second such as "500k", "100M" or "1G" ("0": no limit)`},
	{"max_bandwidth in bytes", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_bandwidth = \"10MB\"\n", 4, "tokens.max_bandwidth", `"10MB" is not a rate in bits a second`},
	{"max_bandwidth a number", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_bandwidth = 100\n", 4, "tokens.max_bandwidth", "want a string"},
	{"max_bandwidth too low", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_bandwidth = \"8k\"\n", 4, "tokens.max_bandwidth",
		`token "a": "8k" is below 64 kbit/s: give "64k" or more ("0": no limit)`},
	{"max_bandwidth too high", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_bandwidth = \"2000G\"\n", 4, "tokens.max_bandwidth", `"2000G" is more than 1000G`},
	{"udp not a bool", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nudp = \"yes\"\n", 4, "tokens.udp", "want a boolean (true or false), got a string"},
	{"token allow not an address", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nallow = [\"nope\"]\n", 4, "tokens.allow", `token "a": "nope" is not an IP address or CIDR prefix`},
	{"token deny not an address", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\ndeny = [\"1.2.3\"]\n", 4, "tokens.deny", `"1.2.3" is not an IP address`},
	{"token per_ip_rate negative", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nper_ip_rate = -1\n", 4, "tokens.per_ip_rate", "0 (no limit) or a positive number"},
	{"token per_ip_connections negative", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nper_ip_connections = -1\n", 4, "tokens.per_ip_connections", "0 (no limit) or more"},
	{"token per_ip_burst without rate", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nper_ip_burst = 4\n", 4, "tokens.per_ip_burst",
		`token "a": applies to per_ip_rate, which neither this table nor [limits] sets`},
	{"unknown key in a token", "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\nmax_tunnel = 1\n", 4, "tokens.max_tunnel", "unknown key"},
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

// listenBadConfigs are listen addresses and ports that relayd would fail
// to bind, at start or when a tunnel gets its port, each with the whole
// error ParseConfig gives for it as bad.toml. relayd_test.go runs `relayd
// check` on each as well.
var listenBadConfigs = []struct {
	name, text, want string
}{
	{"relay listen port too big", "[relay]\nlisten = \"0.0.0.0:99999\"\n",
		`bad.toml:2: relay.listen: "0.0.0.0:99999": "99999" is not a port number from 1 to 65535 (or 0, for a free one)`},
	{"relay listen port negative", "[relay]\nlisten = \"0.0.0.0:-1\"\n",
		`bad.toml:2: relay.listen: "0.0.0.0:-1": "-1" is not a port number from 1 to 65535 (or 0, for a free one)`},
	{"relay listen port a name", "[relay]\nlisten = \"0.0.0.0:http\"\n",
		`bad.toml:2: relay.listen: "0.0.0.0:http": "http" is not a port number from 1 to 65535 (or 0, for a free one)`},
	{"relay listen a host alone", "[relay]\nlisten = \"relay.example.com\"\n",
		`bad.toml:2: relay.listen: "relay.example.com" is not host:port (for example "0.0.0.0:7000")`},
	{"admin listen port too big", "[admin]\nlisten = \"127.0.0.1:70000\"\n",
		`bad.toml:2: admin.listen: "127.0.0.1:70000": "70000" is not a port number from 1 to 65535 (or 0, for a free one)`},
	{"admin on relay listen's port", "[relay]\nlisten = \"0.0.0.0:7000\"\n\n[admin]\nlisten = \"127.0.0.1:7000\"\n",
		`bad.toml:5: admin.listen: "127.0.0.1:7000" shares TCP port 7000 with [relay] listen (0.0.0.0:7000), where agents connect: give the admin API another port`},
	{"admin equal to relay listen", "[relay]\nlisten = \"127.0.0.1:7100\"\n[admin]\nlisten = \"127.0.0.1:7100\"\n",
		`bad.toml:4: admin.listen: "127.0.0.1:7100" shares TCP port 7100 with [relay] listen (127.0.0.1:7100), where agents connect: give the admin API another port`},
	{"admin on every address, relay on one", "[relay]\nlisten = \"192.0.2.1:7000\"\n[admin]\nlisten = \":7000\"\ntoken = \"" + adminToken + "\"\n",
		`bad.toml:4: admin.listen: ":7000" shares TCP port 7000 with [relay] listen (192.0.2.1:7000), where agents connect: give the admin API another port`},
	{"relay on :: takes IPv4 too", "[relay]\nlisten = \"[::]:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"\n",
		`bad.toml:4: admin.listen: "127.0.0.1:7000" shares TCP port 7000 with [relay] listen ([::]:7000), where agents connect: give the admin API another port`},
	{"relay on 0.0.0.0 takes IPv6 too", "[relay]\nlisten = \"0.0.0.0:7000\"\n[admin]\nlisten = \"[::1]:7000\"\n",
		`bad.toml:4: admin.listen: "[::1]:7000" shares TCP port 7000 with [relay] listen (0.0.0.0:7000), where agents connect: give the admin API another port`},
	{"relay listen on the default admin port", "[relay]\nlisten = \"0.0.0.0:7001\"\n",
		`bad.toml:2: relay.listen: "0.0.0.0:7001" shares TCP port 7001 with the admin API ([admin] listen, by default 127.0.0.1:7001): pick another port, or set [admin] listen`},
	{"relay listen's port in ports", "[relay]\nlisten = \"0.0.0.0:7000\"\nports = \"7000-7010\"\n",
		`bad.toml:3: relay.ports: "7000-7010" includes 7000, the port of [relay] listen (0.0.0.0:7000): a tunnel could be given the relay's own port; leave it out`},
	{"relay listen in the default ports", "[relay]\nlisten = \"0.0.0.0:25000\"\n",
		`bad.toml:2: relay.listen: "0.0.0.0:25000": port 25000 is one of [relay] ports (20000-29999), which tunnels get: pick a port outside them`},
	{"admin listen in ports", "[admin]\nlisten = \"127.0.0.1:20000\"\n",
		`bad.toml:2: admin.listen: "127.0.0.1:20000": port 20000 is one of [relay] ports (20000-29999), which tunnels get on 0.0.0.0:7000: give the admin API a port outside them`},
	{"ports include the default admin port", "[relay]\nports = \"7001-7100\"\n",
		`bad.toml:2: relay.ports: "7001-7100" includes 7001, the admin API's port ([admin] listen, by default 127.0.0.1:7001): a tunnel given it could not listen; leave it out, or set [admin] listen`},
	// Host names are not resolved: one against a wildcard overlaps, and
	// two names overlap when they are the same, whatever their case.
	{"admin on a host name, relay on every address", "[relay]\nlisten = \"0.0.0.0:7000\"\n[admin]\nlisten = \"relay.internal:7000\"\ntoken = \"" + adminToken + "\"\n",
		`bad.toml:4: admin.listen: "relay.internal:7000" shares TCP port 7000 with [relay] listen (0.0.0.0:7000), where agents connect: give the admin API another port`},
	{"one host name in two cases", "[relay]\nlisten = \"relay.internal:7000\"\n[admin]\nlisten = \"RELAY.Internal:7000\"\ntoken = \"" + adminToken + "\"\n",
		`bad.toml:4: admin.listen: "RELAY.Internal:7000" shares TCP port 7000 with [relay] listen (relay.internal:7000), where agents connect: give the admin API another port`},
}

// publicHostBadConfigs are public_host values agents could not print as
// tcp://HOST:PORT, with the whole error; relayd_test.go runs `relayd check`
// on each as well.
var publicHostBadConfigs = []struct {
	name, text, want string
}{
	{"scheme", "[relay]\npublic_host = \"https://relay.example.com\"\n",
		`bad.toml:2: relay.public_host: "https://relay.example.com" has a scheme: write the host alone ("relay.example.com"); agents print it as tcp://HOST:PORT`},
	{"scheme, port and path", "[relay]\n\npublic_host = \"tcp://203.0.113.7:7000/\"\n",
		`bad.toml:3: relay.public_host: "tcp://203.0.113.7:7000/" has a scheme: write the host alone ("203.0.113.7"); agents print it as tcp://HOST:PORT`},
	{"path", "[relay]\npublic_host = \"relay.example.com/x\"\n",
		`bad.toml:2: relay.public_host: "relay.example.com/x" has a path: write the host alone ("relay.example.com"); agents print it as tcp://HOST:PORT`},
	{"port", "[relay]\npublic_host = \"relay.example.com:7000\"\n",
		`bad.toml:2: relay.public_host: "relay.example.com:7000" has a port: write the host alone ("relay.example.com"); each tunnel has its own port, which agents print as tcp://HOST:PORT`},
	{"IPv6 with a port", "[relay]\npublic_host = \"[2001:db8::1]:7000\"\n",
		`bad.toml:2: relay.public_host: "[2001:db8::1]:7000" has a port: write the host alone ("2001:db8::1"); each tunnel has its own port, which agents print as tcp://HOST:PORT`},
	{"IPv6 in brackets", "[relay]\npublic_host = \"[2001:db8::1]\"\n",
		`bad.toml:2: relay.public_host: "[2001:db8::1]": write an IPv6 address without brackets ("2001:db8::1")`},
	{"space", "[relay]\npublic_host = \"relay example com\"\n",
		`bad.toml:2: relay.public_host: "relay example com" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
	{"scheme alone", "[relay]\npublic_host = \"https://\"\n",
		`bad.toml:2: relay.public_host: "https://" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
	{"label starting with a hyphen", "[relay]\npublic_host = \"-relay.example.com\"\n",
		`bad.toml:2: relay.public_host: "-relay.example.com" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
	{"label ending with a hyphen", "[relay]\npublic_host = \"relay-.example.com\"\n",
		`bad.toml:2: relay.public_host: "relay-.example.com" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
	{"empty label", "[relay]\npublic_host = \"relay..example.com\"\n",
		`bad.toml:2: relay.public_host: "relay..example.com" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
	{"label too long", "[relay]\npublic_host = \"" + strings.Repeat("a", 64) + ".example.com\"\n",
		`bad.toml:2: relay.public_host: "` + strings.Repeat("a", 64) + `.example.com" is not a host name or IP address (for example "relay.example.com" or "203.0.113.7")`},
}

func TestPublicHost(t *testing.T) {
	for _, tt := range publicHostBadConfigs {
		if _, err := ParseConfig("bad.toml", tt.text); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v\nwant %s", tt.name, err, tt.want)
		}
	}
	for _, h := range []string{"", "relay.example.com", "relay.example.com.", "relay", "xn--rl-bja.example", "203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7"} {
		if _, err := ParseConfig("good.toml", "[relay]\npublic_host = \""+h+"\"\n"); err != nil {
			t.Errorf("public_host %q: %v", h, err)
		}
	}
}

func TestListenConfigErrors(t *testing.T) {
	for _, tt := range listenBadConfigs {
		if _, err := ParseConfig("bad.toml", tt.text); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v\nwant %s", tt.name, err, tt.want)
		}
	}
}

// TestListenConfigsAllowed: addresses that share a port number but not an
// address, port 0, and the admin API off, all load.
func TestListenConfigsAllowed(t *testing.T) {
	for _, text := range []string{
		"[relay]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
		"[relay]\nlisten = \"192.0.2.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"\n",
		"[relay]\nlisten = \"0.0.0.0:7001\"\n[admin]\nlisten = \"\"\n",
		"[relay]\nlisten = \"0.0.0.0:7001\"\n[admin]\nlisten = \"127.0.0.1:7002\"\n",
		"[relay]\nlisten = \"0.0.0.0:7000\"\n[admin]\nlisten = \"localhost:7001\"\n",
		// Tunnels listen on 192.0.2.1: the admin API's port on loopback is free for them.
		"[relay]\nlisten = \"192.0.2.1:7000\"\n[admin]\nlisten = \"127.0.0.1:20000\"\n",
		"[relay]\nlisten = \"[::1]:65535\"\nports = \"1-65534\"\n[admin]\nlisten = \"\"\n",
		// Two host names are not resolved: only the same name overlaps.
		"[relay]\nlisten = \"relay.internal:7000\"\n[admin]\nlisten = \"admin.internal:7000\"\ntoken = \"" + adminToken + "\"\n",
	} {
		if _, err := ParseConfig("good.toml", text); err != nil {
			t.Errorf("%q: %v", text, err)
		}
	}
}

func TestConfigErrorText(t *testing.T) {
	for _, tt := range []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{File: "r.toml", Line: 3, Key: "relay.ports", Msg: "bad"}, "r.toml:3: relay.ports: bad"},
		{ConfigError{File: "r.toml", Line: 0, Key: "relay.ports", Msg: "bad"}, "r.toml: relay.ports: bad"},
		{ConfigError{File: "r.toml", Line: 7, Key: "", Msg: "bad"}, "r.toml:7: bad"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}

// writeFile writes data to dir/name with mode (umask aside) and returns
// the path.
func writeFile(t *testing.T, dir, name, data string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSecretFile: secret_file is read at load, trimmed, relative to the
// config's folder; a file that cannot serve is a ConfigError naming
// tokens.secret_file, the line, and the file.
func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "alice.secret", "  alice-secret-from-a-file\n\n", 0o600)
	bobPath := writeFile(t, dir, "bob.secret", "bob-secret-0123456789\n", 0o600)
	config := writeFile(t, dir, "relay.toml", `[[tokens]]
id = "alice"
secret_file = "alice.secret"

[[tokens]]
id = "bob"
secret_file = "`+bobPath+`"

[[tokens]]
id = "carol"
secret = "carol-secret-0123456789"
`, 0o600)
	c, err := LoadConfig(config)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	rc, err := relayConfig(c)
	if err != nil {
		t.Fatalf("relayConfig: %v", err)
	}
	got := map[string]string{}
	for _, tok := range rc.Tokens {
		got[tok.ID] = tok.Secret
	}
	want := map[string]string{"alice": "alice-secret-from-a-file", "bob": "bob-secret-0123456789", "carol": "carol-secret-0123456789"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("secrets: got %q, want %q", got, want)
	}

	writeFile(t, dir, "short.secret", "short\n", 0o600)
	writeFile(t, dir, "empty.secret", "\n \n", 0o600)
	writeFile(t, dir, "big.secret", strings.Repeat("x", 5000), 0o600)
	writeFile(t, dir, "carol.secret", "carol-secret-0123456789", 0o600)
	if err := os.Mkdir(filepath.Join(dir, "folder.secret"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, file, msg string
	}{
		{"missing", "missing.secret", "cannot read " + filepath.Join(dir, "missing.secret") + ": no such file or directory"},
		{"too short", "short.secret", "the secret in " + filepath.Join(dir, "short.secret") + " is shorter than 16 characters"},
		{"only whitespace", "empty.secret", "the secret in " + filepath.Join(dir, "empty.secret") + " is shorter than 16 characters"},
		{"too big", "big.secret", filepath.Join(dir, "big.secret") + " is larger than 4096 bytes"},
		{"a folder", "folder.secret", "cannot read " + filepath.Join(dir, "folder.secret")},
		{"same secret as another token", "carol.secret", `tokens "carol" and "dave" have the same secret`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "relay.toml",
				"[[tokens]]\nid = \"carol\"\nsecret = \"carol-secret-0123456789\"\n\n[[tokens]]\nid = \"dave\"\n"+
					"secret_file = \""+filepath.Join(dir, tt.file)+"\"\n", 0o600)
			_, err := LoadConfig(path)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("LoadConfig: %v (%T), want a *ConfigError", err, err)
			}
			if ce.Line != 7 || ce.Key != "tokens.secret_file" || !strings.Contains(ce.Msg, tt.msg) {
				t.Errorf("got %q, want line 7, tokens.secret_file and %q", err, tt.msg)
			}
			if strings.Contains(err.Error(), "carol-secret") {
				t.Errorf("the error shows a secret: %q", err)
			}
		})
	}
}

// TestRelayConfig: relayConfig puts each relay.toml key where the relay
// reads it.
func TestRelayConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.secret", "web-secret-0123456789\n", 0o600)
	config := writeFile(t, dir, "relay.toml", `
[relay]
listen = "192.0.2.1:7100"
ports = "24000-24999"
public_host = "relay.example.com"
handshake_timeout = "4s"
max_handshakes = 17

[limits]
per_ip_connections = 64
per_ip_rate = 20
allow = ["0.0.0.0/0", "::/0"]
deny = ["203.0.113.7", "2001:db8::/32", "10.1.2.3/8"]
max_pending_sessions = 33

[[tokens]]
id = "game"
secret = "game-secret-0123456789"
names = ["game-*", "mc"]
ports = "24100-24109,24565"
max_tunnels = 3
max_connections = 100
max_bandwidth = "25M"
udp = false
per_ip_connections = 8
per_ip_rate = 0.5
per_ip_burst = 2
allow = ["10.0.0.0/8"]
deny = ["10.1.2.3", "::1"]

[[tokens]]
id = "web"
secret_file = "web.secret"
udp = true

[[tokens]]
id = "plain"
secret = "plain-secret-0123456789"
`, 0o600)
	c, err := LoadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := relayConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	if want := (tunnel.PortSet{{Low: 24000, High: 24999}}); !reflect.DeepEqual(rc.Ports, want) {
		t.Errorf("Ports = %v, want %v", rc.Ports, want)
	}
	if rc.BindHost != "192.0.2.1" || rc.PublicHost != "relay.example.com" || rc.HandshakeTimeout != 4*time.Second {
		t.Errorf("BindHost %q, PublicHost %q, HandshakeTimeout %v", rc.BindHost, rc.PublicHost, rc.HandshakeTimeout)
	}
	if rc.MaxPendingSessions != 33 {
		t.Errorf("MaxPendingSessions = %d, want 33", rc.MaxPendingSessions)
	}
	wantClients := tunnel.ClientLimits{MaxConnsPerIP: 64, RatePerIP: 20,
		Allow: pfx("0.0.0.0/0", "::/0"), Deny: pfx("203.0.113.7/32", "2001:db8::/32", "10.0.0.0/8")}
	if !reflect.DeepEqual(rc.Clients, wantClients) {
		t.Errorf("Clients:\n got %+v\nwant %+v", rc.Clients, wantClients)
	}
	wantTokens := []tunnel.Token{
		{ID: "game", Secret: "game-secret-0123456789", Names: []string{"game-*", "mc"},
			Ports: tunnel.PortSet{{Low: 24100, High: 24109}, {Low: 24565, High: 24565}}, MaxTunnels: 3, MaxConnections: 100, DenyUDP: true,
			MaxBandwidth: 25e6 / 8,
			Clients: tunnel.ClientLimits{MaxConnsPerIP: 8, RatePerIP: 0.5, BurstPerIP: 2,
				Allow: pfx("10.0.0.0/8"), Deny: pfx("10.1.2.3/32", "::1/128")}},
		{ID: "web", Secret: "web-secret-0123456789"},
		{ID: "plain", Secret: "plain-secret-0123456789"},
	}
	if len(rc.Tokens) != len(wantTokens) {
		t.Fatalf("%d tokens, want %d: %+v", len(rc.Tokens), len(wantTokens), rc.Tokens)
	}
	for i, want := range wantTokens {
		if got := rc.Tokens[i]; !reflect.DeepEqual(got, want) {
			t.Errorf("token %d:\n got %+v\nwant %+v", i, got, want)
		}
	}
	// The relay agrees with what relayd check accepted.
	if err := rc.Validate(); err != nil {
		t.Errorf("the relay refuses the config: %v", err)
	}
	if opts := transportOptions(c); opts.MaxHandshakes != 17 || opts.HandshakeTimeout != 4*time.Second || opts.Validate() != nil {
		t.Errorf("transport options %+v (Validate: %v), want MaxHandshakes 17 and HandshakeTimeout 4s", opts, opts.Validate())
	}

	// No file: the defaults, which turn every per-IP limit off.
	def := DefaultConfig()
	rc, err = relayConfig(&def)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rc.Clients, tunnel.ClientLimits{}) || rc.MaxPendingSessions != 256 || len(rc.Tokens) != 0 {
		t.Errorf("defaults: Clients %+v, MaxPendingSessions %d, %d tokens; want no limits, 256, none",
			rc.Clients, rc.MaxPendingSessions, len(rc.Tokens))
	}
	if opts := transportOptions(&def); opts.MaxHandshakes != 256 {
		t.Errorf("default MaxHandshakes = %d, want 256", opts.MaxHandshakes)
	}
}

// TestTokenBurstAlone: a token's per_ip_burst without a per_ip_rate of its
// own is the burst of [limits]' rate, which the relay combines (see
// tunnel's TestTokenRateAndBurst).
func TestTokenBurstAlone(t *testing.T) {
	c, err := ParseConfig("relay.toml", "[limits]\nper_ip_rate = 10\n\n[[tokens]]\nid = \"a\"\nsecret = \""+secretA+"\"\nper_ip_burst = 50\n")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := relayConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Clients.RatePerIP != 10 || !reflect.DeepEqual(rc.Tokens[0].Clients, tunnel.ClientLimits{BurstPerIP: 50}) {
		t.Errorf("relay's clients %+v, token's %+v; want a rate of 10 and a burst of 50 alone", rc.Clients, rc.Tokens[0].Clients)
	}
	if err := rc.Validate(); err != nil {
		t.Errorf("the relay refuses the config: %v", err)
	}
}

// TestReadableSecrets: relay.toml holding a secret is flagged when its
// group or others can read it; a secret_file when everyone can.
func TestReadableSecrets(t *testing.T) {
	for _, tt := range []struct {
		name       string
		configMode os.FileMode
		inline     bool
		fileMode   os.FileMode // 0: no secret_file
		want       []string    // files warned about ("relay.toml", "x.secret")
	}{
		{"inline 0600", 0o600, true, 0, nil},
		{"inline 0400", 0o400, true, 0, nil},
		{"inline 0644", 0o644, true, 0, []string{"relay.toml"}},
		{"inline 0640", 0o640, true, 0, nil},
		{"inline 0604", 0o604, true, 0, []string{"relay.toml"}},
		{"secret_file only, config 0644, file 0600", 0o644, false, 0o600, nil},
		{"secret_file 0640", 0o600, false, 0o640, nil},
		{"secret_file 0644", 0o600, false, 0o644, []string{"x.secret"}},
		{"both readable", 0o644, true, 0o604, []string{"relay.toml", "x.secret"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			text := ""
			if tt.inline {
				text += "[[tokens]]\nid = \"a\"\nsecret = \"" + secretA + "\"\n"
			}
			if tt.fileMode != 0 {
				writeFile(t, dir, "x.secret", secretB+"\n", tt.fileMode)
				text += "[[tokens]]\nid = \"b\"\nsecret_file = \"x.secret\"\n"
			}
			config := writeFile(t, dir, "relay.toml", text, tt.configMode)
			c, err := LoadConfig(config)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range readableSecrets(c) {
				got = append(got, filepath.Base(w.file))
				if !strings.Contains(w.fix, "chmod 600 "+w.file) {
					t.Errorf("warning %+v does not say chmod 600 %s", w, w.file)
				}
				if w.file == config && !strings.Contains(w.fix, "secret_file") {
					t.Errorf("warning %+v does not suggest secret_file", w)
				}
				if strings.Contains(w.msg+w.fix, secretA) || strings.Contains(w.msg+w.fix, secretB) {
					t.Errorf("warning %+v shows a secret", w)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("warned about %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzParseConfig: relay.toml as anyone may write it. ParseConfig never
// panics, every error names the file, and a config it takes turns into
// the relay's own (relayConfig) without one either.
func FuzzParseConfig(f *testing.F) {
	sample, err := os.ReadFile(samplePath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(sample))
	for _, tt := range listenBadConfigs {
		f.Add(tt.text)
	}
	for _, tt := range publicHostBadConfigs {
		f.Add(tt.text)
	}
	f.Add("[relay]\nports = \"20000-20010\"\nidle_timeout = \"20s\"\n[limits]\nallow = [\"10.0.0.0/8\"]\n" +
		"[[tokens]]\nid = \"a\"\nsecret = \"0123456789abcdef\"\nports = \"20000-20005\"\nnames = [\"web\"]\nmax_bandwidth = \"10M\"\n")
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := ParseConfig("f.toml", data)
		if err != nil {
			if cfg != nil || !strings.HasPrefix(err.Error(), "f.toml") {
				t.Fatalf("ParseConfig: %v, %v; want no config and an error naming the file", cfg, err)
			}
			return
		}
		// What ParseConfig accepts, relayd can run with: relayConfig
		// parses the same fields again.
		if _, err := relayConfig(cfg); err != nil {
			t.Fatalf("ParseConfig accepted a config relayConfig refuses: %v", err)
		}
	})
}
