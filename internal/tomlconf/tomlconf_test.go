package tomlconf

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type sample struct {
	Top    string   `toml:"top"`
	Wait   Duration `toml:"wait"`
	On     bool     `toml:"on"`
	Rate   float64  `toml:"rate"`
	Tags   []string `toml:"tags"`
	Server struct {
		Port int `toml:"port"`
	} `toml:"server"`
	Items []struct {
		Name string `toml:"name"`
		Size int    `toml:"size"`
	} `toml:"items"`
}

const sampleText = `top = "a"
wait = "1m30s"

[server]
port = 7

[[items]]
name = "one"

[[items]]
name = "two"
size = 2
`

func TestDecode(t *testing.T) {
	var s sample
	s.Server.Port = 99 // a default the file replaces
	if err := Decode("s.toml", sampleText, &s, "sample.toml"); err != nil {
		t.Fatal(err)
	}
	if s.Top != "a" || s.Wait.Duration != 90*time.Second || s.Server.Port != 7 || len(s.Items) != 2 || s.Items[1].Size != 2 {
		t.Errorf("decoded %+v", s)
	}
	if b, _ := s.Wait.MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText = %q, want 1m30s", b)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		want       string
	}{
		{"syntax", "top = \"a\"\n[server\n", "s.toml:3: expected '.' or ']' to end table name"},
		{"wrong type", "top = 3\n", "s.toml:1: top: want a string, got an integer"},
		{"bare number duration", "wait = 10\n", `s.toml:1: wait: 10 has no unit: give one, as in "10s"`},
		{"duration without unit", "wait = \"10\"\n", `s.toml:1: wait: 10 has no unit: give one, as in "10s"`},
		{"float duration", "wait = 1e3\n", `s.toml:1: wait: 1000.000000 has no unit: give one, as in "1000.000000s"`},
		{"fraction duration", "wait = \"1.5\"\n", `s.toml:1: wait: 1.5 has no unit: give one, as in "1.5s"`},
		{"exponent duration", "wait = \"1e3\"\n", `s.toml:1: wait: 1e3 has no unit: write it as a number with one, as in "30s" or "1.5m"`},
		{"not a duration", "wait = \"soon\"\n", `s.toml:1: wait: "soon" is not a duration with a unit, such as "10s"`},
		{"duration too large", "wait = \"100000000h\"\n", `s.toml:1: wait: "100000000h" is too large: a duration can be at most 2562047h47m16s (about 292 years)`},
		{"duration too large in parts", "wait = \"2562047h47m17s\"\n", `s.toml:1: wait: "2562047h47m17s" is too large: a duration can be at most 2562047h47m16s (about 292 years)`},
		{"exponent with a unit", "wait = \"-1.5e3h\"\n", `s.toml:1: wait: "-1.5e3h" is not a duration with a unit`},
		{"negative duration too large", "wait = \"-99999999999h\"\n", `s.toml:1: wait: "-99999999999h" is too large: a duration can be at most 2562047h47m16s (about 292 years)`},
		{"integer overflow", "top = 12345678901234567890\n", "s.toml:1: top: the number is too large for a TOML integer; if it is text (a secret, a name), put it in quotes"},
		// Neither echoes the value, which relayd logs: it may be a secret.
		{"float overflow", "top = 1e99999\n", "s.toml:1: top: the number is too large for a TOML float; if it is text (a secret, a name), put it in quotes"},
		{"bare word", "top = deadbeef0123\n", "s.toml:1: top: the value is not quoted text, a number, true or false, or a date; if it is text (a secret, a name), put it in quotes"},
		{"unknown top-level key", "top = \"a\"\ntopp = 1\n", "s.toml:2: topp: unknown key (see the sample sample.toml for the keys there are)"},
		{"unknown key in a table", "[server]\nport = 1\nhost = \"x\"\n", "s.toml:3: server.host: unknown key"},
		{"unknown table", "[client]\nport = 1\n", "s.toml:1: client: unknown key"},
		{"unknown dotted key at the top", "top = \"a\"\nserver.prot = 1\n", "s.toml:2: server.prot: unknown key"},
		{"unknown dotted key in a table", "[server]\nport = 1\nextra.rate = -1\n", "s.toml:3: server.extra.rate: unknown key"},
		{"unknown key in an inline table", "server = { port = 1,\n  host = \"x\" }\n", "s.toml:2: server.host: unknown key"},
		{"unknown key in the second item", "[[items]]\nname = \"a\"\n[[items]]\nname = \"b\"\nsise = 1\n", "s.toml:5: items.sise: unknown key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s sample
			err := Decode("s.toml", tt.text, &s, "sample.toml")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Decode: %v (%T), want an *Error", err, err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %q, want it to start with %q", err, tt.want)
			}
		})
	}
}

// TestDecodeTypeErrors: a value of the wrong type says what the key wants
// and what the file gives, in words, not BurntSushi/toml's Go types.
func TestDecodeTypeErrors(t *testing.T) {
	for _, tt := range []struct{ text, want string }{
		{"top = 3\n", "s.toml:1: top: want a string, got an integer"},
		{"\ntop = true\n", "s.toml:2: top: want a string, got a boolean"},
		{"top = [\"a\"]\n", "s.toml:1: top: want a string, got an array"},
		{"top = 1979-05-27\n", "s.toml:1: top: want a string, got a date or time"},
		{"top = {a = 1}\n", "s.toml:1: top: want a string, got a table"},
		{"[server]\nport = \"7000\"\n", "s.toml:2: server.port: want an integer, got a string"},
		{"[server]\nport = 7.5\n", "s.toml:2: server.port: want an integer, got a float"},
		{"on = \"yes\"\n", "s.toml:1: on: want a boolean (true or false), got a string"},
		{"rate = \"fast\"\n", "s.toml:1: rate: want a number, got a string"},
		{"tags = \"a\"\n", "s.toml:1: tags: want an array, got a string"},
		{"tags = [\"a\", 2]\n", "s.toml:1: tags: want a string, got an integer"},
		{"wait = [\"10s\"]\n", "s.toml:1: wait: want a string, got an array"},
		{"server = 3\n", "s.toml:1: server: want a table, got an integer"},
		{"[[server]]\nport = 1\n", "s.toml:1: server: want a table, got an array of tables"},
		{"items = 3\n", "s.toml:1: items: want an array, got an integer"},
	} {
		var s sample
		err := Decode("s.toml", tt.text, &s, "sample.toml")
		var e *Error
		if !errors.As(err, &e) || err.Error() != tt.want {
			t.Errorf("%q: %v (%T)\nwant the *Error %q", tt.text, err, err, tt.want)
		}
	}
}

func TestKeyLine(t *testing.T) {
	for _, tt := range []struct {
		key   string
		index int
		want  int
	}{
		{"top", 0, 1},
		{"wait", 0, 2},
		{"server.port", 0, 5},
		{"server", 0, 4},
		{"items.name", 0, 8},
		{"items.name", 1, 11},
		{"items.size", 1, 12},
		{"items.size", 0, 7},  // the first item has no size: its header
		{"items.name", 2, 0},  // no third item
		{"server.host", 0, 4}, // [server] has no host: its header
		{"port", 0, 0},        // port is in [server], not at the top
	} {
		if got := KeyLine(sampleText, strings.Split(tt.key, "."), tt.index); got != tt.want {
			t.Errorf("KeyLine(%s, %d) = %d, want %d", tt.key, tt.index, got, tt.want)
		}
	}
}

// keysText writes keys every way TOML allows but the plain one: dotted,
// quoted, in inline tables and in an array of them, with text that looks
// like keys inside strings and comments.
const keysText = `top = """
[server]
port = 1
"""
server.port = 7 # [items]
"server" . 'listen' = "a = b"
items = [
  # name = "no"
  { name = "one" },
  {
    name = "two", size = 2 },
  'x = 1',
]
wait = { at = [1, 2], "in.it" = 1 }

[other]
a.b.c = 1
`

// TestKeyLineDotted: KeyLine finds keys however the file writes them.
func TestKeyLineDotted(t *testing.T) {
	for _, tt := range []struct {
		key   []string
		index int
		want  int
	}{
		{[]string{"top"}, 0, 1},
		{[]string{"server", "port"}, 0, 5},
		{[]string{"server", "listen"}, 0, 6},
		{[]string{"server", "host"}, 0, 5}, // the first line to define server
		{[]string{"items"}, 0, 9},          // its first element, as for [[items]]
		{[]string{"items", "name"}, 0, 9},
		{[]string{"items", "name"}, 1, 11},
		{[]string{"items", "size"}, 1, 11},
		{[]string{"items", "size"}, 0, 9}, // the item's line
		{[]string{"items", "name"}, 3, 0}, // the third element is no table, and there is no fourth
		{[]string{"wait", "at"}, 0, 14},
		{[]string{"wait", "in.it"}, 0, 14},
		{[]string{"other", "a", "b", "c"}, 0, 17},
		{[]string{"other", "a", "x"}, 0, 17},
		{[]string{"other", "z"}, 0, 16},
		{[]string{"port"}, 0, 0},
	} {
		if got := KeyLine(keysText, tt.key, tt.index); got != tt.want {
			t.Errorf("KeyLine(%q, %d) = %d, want %d", tt.key, tt.index, got, tt.want)
		}
	}
}

// FuzzKeyLine: KeyLine reads any text without panicking or looping, and
// gives a line of it.
func FuzzKeyLine(f *testing.F) {
	f.Add(sampleText, "items.size", 1)
	f.Add(keysText, "wait.in.it", 0)
	f.Add("a = [{b = '''x", "a.b", 0)
	f.Add("0\n\x00\x00", "a", 0) // a NUL byte was taken for the end, and the scan stood still
	f.Fuzz(func(t *testing.T, data, key string, index int) {
		n := KeyLine(data, strings.Split(key, "."), index)
		if n < 0 || n > strings.Count(data, "\n")+1 {
			t.Fatalf("KeyLine = %d, outside the text's lines", n)
		}
	})
}

func TestSourceFail(t *testing.T) {
	err := Source{File: "s.toml", Data: sampleText}.Fail("items.size", 1, "must be %s", "small")
	if got, want := err.Error(), "s.toml:12: items.size: must be small"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	err = Source{}.Fail("top", 0, "bad")
	if got, want := err.Error(), "(defaults): top: bad"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestDecodeUnknownKeyHints: an unknown key says what it was likely meant
// to be. A line added at the end of the sample relay.toml lands in its last
// table, [admin], and "admin.public_host: unknown key" alone left the user
// looking at a key the sample has.
func TestDecodeUnknownKeyHints(t *testing.T) {
	const unknown = "unknown key (see the sample sample.toml for the keys there are)"
	const why = " (a key belongs to the table whose header comes before it)"
	for _, tt := range []struct{ name, text, want string }{
		{"top-level key in a table", "[server]\nport = 1\ntop = \"x\"\n",
			"s.toml:3: server.top: " + unknown + "; top is a top-level key: move it above the first table header" + why},
		{"key of another table", "[server]\nport = 1\n[[items]]\nname = \"a\"\nport = 2\n",
			"s.toml:5: items.port: " + unknown + "; port is a key of [server]: move it under that header" + why},
		{"key of two other tables", "[[items]]\nname = \"a\"\nlisten = \"x\"\n",
			"s.toml:3: items.listen: " + unknown + "; listen is a key of [server] or [admin]: move it under one of those headers" + why},
		{"table as a key", "[server]\nadmin = 1\n",
			"s.toml:2: server.admin: " + unknown + "; admin is a table of its own: start it with its header, [admin]"},
		{"misspelt key", "[server]\nports = 1\n", "s.toml:2: server.ports: " + unknown + "; did you mean port?"},
		{"misspelt key in an item", "[[items]]\nname = \"a\"\nsizes = 1\n", "s.toml:3: items.sizes: " + unknown + "; did you mean size?"},
		{"misspelt top-level key", "tag = [\"a\"]\n", "s.toml:1: tag: " + unknown + "; did you mean tags?"},
		{"misspelt duration", "wait_for = \"1s\"\n", "s.toml:1: wait_for: " + unknown},
		{"misspelt table", "[servers]\nport = 1\n", "s.toml:1: servers: " + unknown + "; did you mean [server]?"},
		{"misspelt array of tables", "[[item]]\nname = \"a\"\n", "s.toml:1: item: " + unknown + "; did you mean [[items]]?"},
		{"nothing close", "[server]\nxyzzy = 1\n", "s.toml:2: server.xyzzy: " + unknown},
		// A dotted key is a key of the table it is written in.
		{"another table's key, dotted", "[server]\nport = 1\nadmin.listen = \"x\"\n",
			"s.toml:3: server.admin.listen: " + unknown + "; admin.listen is a key of [admin]: move it under that header as listen" + why},
		{"misspelt dotted key", "server.portt = 1\n", "s.toml:1: server.portt: " + unknown + "; did you mean port?"},
		{"unknown key in an inline item", "items = [\n  {name = \"a\"},\n  {name = \"b\", sizes = 2},\n]\n",
			"s.toml:3: items.sizes: " + unknown + "; did you mean size?"},
		{"short and two edits away", "id = 1\n", "s.toml:1: id: " + unknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s struct {
				Top    string   `toml:"top"`
				Wait   Duration `toml:"wait"`
				Tags   []string `toml:"tags"`
				Server struct {
					Port   int    `toml:"port"`
					Listen string `toml:"listen"`
				} `toml:"server"`
				Admin struct {
					Listen string `toml:"listen"`
				} `toml:"admin"`
				Items []struct {
					Name string `toml:"name"`
					Size int    `toml:"size"`
				} `toml:"items"`
			}
			err := Decode("s.toml", tt.text, &s, "sample.toml")
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v\nwant %s", err, tt.want)
			}
		})
	}
}
