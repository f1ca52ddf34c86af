// Package tomlconf holds what relayd's relay.toml and relayctl's agent.toml
// share: strict decoding over defaults, durations that must carry a unit,
// and errors that point at FILE:LINE: KEY.
//
// A config type decodes with Decode, keeps the file's name and text in a
// Source, and reports each invalid value with Source.Fail, so every message
// reads the same way in both programs.
package tomlconf

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/relaytun/relay/internal/editdist"
)

// Duration is a time.Duration written as a string with a unit ("10s"). A
// bare number is refused rather than read as nanoseconds.
type Duration struct{ time.Duration }

// UnmarshalText parses "10s", "1m30s" and the like.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		if _, nerr := strconv.ParseFloat(string(b), 64); nerr == nil {
			// 30 or "30": a bare number, whether quoted or not (the
			// decoder hands a TOML integer over as its text). The
			// example is the value with an s when that parses; 1e3,
			// inf and a float the decoder spells out do not.
			if _, serr := time.ParseDuration(string(b) + "s"); serr != nil {
				return fmt.Errorf("%s has no unit: write it as a number with one, as in \"30s\" or \"1.5m\"", b)
			}
			return fmt.Errorf("%s has no unit: give one, as in \"%ss\"", b, b)
		}
		if durationRE.Match(b) {
			// Written right, so time.ParseDuration's only complaint left
			// is that it overflows.
			return fmt.Errorf("%q is too large: a duration can be at most %v (about 292 years)", b, maxDuration)
		}
		return fmt.Errorf("%q is not a duration with a unit, such as \"10s\"", b)
	}
	d.Duration = v
	return nil
}

// durationRE is what time.ParseDuration reads, whatever the size.
var durationRE = regexp.MustCompile(`^[-+]?((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$`)

// maxDuration is the longest time.Duration, in whole seconds.
var maxDuration = time.Duration(math.MaxInt64).Truncate(time.Second)

// MarshalText prints the duration as UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Error points at the place in a config file that is wrong.
type Error struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e *Error) Error() string {
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

// Decode decodes data, the text of the file path, over v (which holds the
// defaults), strictly: a syntax error, a value of the wrong type or a key v
// has no field for is an *Error naming path, the line and the key. sample
// names the commented sample file that lists the keys there are.
func Decode(path, data string, v any, sample string) error {
	md, err := toml.Decode(data, v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			switch {
			case strings.HasSuffix(msg, " is out of range for int64"):
				// Digits only, unquoted: TOML reads a number, and a
				// secret or name of 19 digits or more overflows it. The
				// number stays out of the message, which relayd logs: it
				// may be the secret.
				msg = "the number is too large for a TOML integer; if it is text (a secret, a name), put it in quotes"
			case strings.HasSuffix(msg, " is out of range for float64"):
				msg = "the number is too large for a TOML float; if it is text (a secret, a name), put it in quotes"
			case strings.HasPrefix(msg, "expected value but found "):
				// Unquoted text: the parser echoes its leading letters,
				// which may be a secret's.
				msg = "the value is not quoted text, a number, true or false, or a date; if it is text (a secret, a name), put it in quotes"
			}
			return &Error{File: path, Line: pe.Position.Line, Key: pe.LastKey, Msg: msg}
		}
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			if line == 0 {
				line = undecodedLine(data, strings.Split(m[2], "."))
			}
			return &Error{File: path, Line: line, Key: m[2], Msg: typeMsg(m[3])}
		}
		return &Error{File: path, Msg: err.Error()}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		msg := fmt.Sprintf("unknown key (see the sample %s for the keys there are)", sample)
		if h := unknownKeyHint(reflect.TypeOf(v), k); h != "" {
			msg += "; " + h
		}
		return &Error{File: path, Line: undecodedLine(data, k), Key: k.String(), Msg: msg}
	}
	return nil
}

// A known key of a config type, for the hint to an unknown one.
type knownKey struct {
	table string // "relay", "tokens"; "" at the top
	name  string
	kind  int // keyValue, keyTable or keyArray
}

const (
	keyValue = iota
	keyTable
	keyArray // an array of tables, [[tokens]]
)

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	tomlUnmarshaler = reflect.TypeFor[toml.Unmarshaler]()
)

// knownKeys lists the keys the struct type t decodes, as toml tags name
// them, with the tables they are in.
func knownKeys(t reflect.Type, table string, out []knownKey) []knownKey {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return out
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if (!f.IsExported() && !f.Anonymous) || name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			out = knownKeys(ft, table, out) // its keys are the table's own
			continue
		}
		if name == "" {
			name = f.Name
		}
		sub := name
		if table != "" {
			sub = table + "." + name
		}
		switch {
		case !isValue(ft):
			out = append(out, knownKey{table, name, keyTable})
			out = knownKeys(ft, sub, out)
		case ft.Kind() == reflect.Slice && !isValue(ft.Elem()):
			out = append(out, knownKey{table, name, keyArray})
			out = knownKeys(ft.Elem(), sub, out)
		default:
			out = append(out, knownKey{table, name, keyValue})
		}
	}
	return out
}

// isValue says whether t decodes from a single TOML value (a string that
// a Duration reads, say) rather than a table.
func isValue(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return true
	}
	p := reflect.PointerTo(t)
	return p.Implements(textUnmarshaler) || p.Implements(tomlUnmarshaler)
}

// unknownKeyHint says what an unknown key was likely meant to be: a key of
// another table (a line added at the end of the file lands in the last
// table there, [admin] in the sample relay.toml), or a key of its own
// table spelt a little differently. "" when nothing is close.
func unknownKeyHint(t reflect.Type, k toml.Key) string {
	if t == nil || len(k) == 0 {
		return ""
	}
	known := knownKeys(t, "", nil)
	table, last := strings.Join(k[:len(k)-1], "."), k[len(k)-1]
	kinds := map[string]int{}
	for _, kk := range known {
		if kk.kind != keyValue {
			kinds[join(kk.table, kk.name)] = kk.kind
		}
	}
	header := func(table string) string {
		if kinds[table] == keyArray {
			return "[[" + table + "]]"
		}
		return "[" + table + "]"
	}
	const why = " (a key belongs to the table whose header comes before it)"
	// A dotted key naming another table's key, as limits.per_ip_rate
	// under [relay]: it is a key of [relay] then, not of [limits].
	for j := 1; j < len(k)-1; j++ {
		other := strings.Join(k[j:len(k)-1], ".")
		if slices.ContainsFunc(known, func(kk knownKey) bool { return kk.table == other && kk.name == last }) {
			return fmt.Sprintf("%s is a key of %s: move it under that header as %s%s", strings.Join(k[j:], "."), header(other), last, why)
		}
	}
	var elsewhere []string
	top := false
	for _, kk := range known {
		if kk.name != last || kk.table == table {
			continue
		}
		if kk.table == "" {
			top = true
		} else {
			elsewhere = append(elsewhere, header(kk.table))
		}
	}
	switch {
	case top && kinds[last] != keyValue:
		return fmt.Sprintf("%s is a table of its own: start it with its header, %s", last, header(last))
	case top:
		return fmt.Sprintf("%s is a top-level key: move it above the first table header%s", last, why)
	case len(elsewhere) == 1:
		return fmt.Sprintf("%s is a key of %s: move it under that header%s", last, elsewhere[0], why)
	case len(elsewhere) > 1:
		return fmt.Sprintf("%s is a key of %s: move it under one of those headers%s", last, strings.Join(elsewhere, " or "), why)
	}
	best, bestD := "", 3
	for _, kk := range known {
		if kk.table != table {
			continue
		}
		d, limit := editdist.Distance(last, kk.name), 2
		if len(last) <= 4 {
			limit = 1 // "id" is two edits from "on"
		}
		if d <= limit && d < bestD {
			best, bestD = kk.name, d
			if kk.kind != keyValue {
				best = header(join(kk.table, kk.name))
			}
		}
	}
	if best != "" {
		return "did you mean " + best + "?"
	}
	return ""
}

func join(table, name string) string {
	if table == "" {
		return name
	}
	return table + "." + name
}

// typeErrRE matches BurntSushi/toml's error for a value of the wrong type.
// It is a plain fmt error, with no type to match, so its text is all there
// is to go on; the line is missing when the parser kept no position.
var typeErrRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]+)"\): (.*)$`)

// The two texts typeErrRE's message takes for a value of the wrong type:
// a key set to the wrong kind of value, and a value where a table belongs.
var (
	incompatibleRE = regexp.MustCompile(`^incompatible types: TOML value has type (\S+); destination has type (.+)$`)
	notTableRE     = regexp.MustCompile(`^type mismatch for .+: expected table but found (\S+)$`)
)

// typeMsg words BurntSushi/toml's type error as "want a string, got an
// integer": the operator wrote TOML and should not have to read Go's type
// names (int64, []map[string]any) to see which quotes or brackets to fix.
// Any other message is returned as it is.
func typeMsg(msg string) string {
	if m := incompatibleRE.FindStringSubmatch(msg); m != nil {
		want, ok := wantNames[m[2]]
		if !ok {
			want = m[2]
		}
		return fmt.Sprintf("want %s, got %s", want, tomlName(m[1]))
	}
	if m := notTableRE.FindStringSubmatch(msg); m != nil {
		return "want a table, got " + tomlName(m[1])
	}
	return msg
}

// wantNames words the destination kinds BurntSushi/toml names. A
// "primitive (string-like)" is a type that reads text (Duration).
var wantNames = map[string]string{
	"string":                  "a string",
	"primitive (string-like)": "a string",
	"integer":                 "an integer",
	"float":                   "a number",
	"boolean":                 "a boolean (true or false)",
	"slice":                   "an array",
	"map":                     "a table",
}

// tomlName words the Go type BurntSushi/toml decoded a TOML value into.
func tomlName(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "int64":
		return "an integer"
	case goType == "float64":
		return "a float"
	case goType == "bool":
		return "a boolean"
	case goType == "time.Time":
		return "a date or time"
	case strings.HasPrefix(goType, "map["):
		return "a table"
	case strings.HasPrefix(goType, "[]map["):
		return "an array of tables"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	}
	return goType
}

// Defined reports whether data, a config's text that Decode took, sets key
// itself, rather than leaving it at its default: a rule between two keys
// blames the one the user wrote.
func Defined(data string, key ...string) bool {
	md, err := toml.Decode(data, &struct{}{})
	return err == nil && md.IsDefined(key...)
}

// Source is a config file's name and text, for errors that point into it.
// File "" stands for embedded defaults.
type Source struct {
	File string
	Data string
}

// Fail makes an *Error for key ("relay.ports", "tunnels.local") in the
// index-th table of an array of tables (0 for keys outside one).
func (s Source) Fail(key string, index int, format string, args ...any) error {
	file := s.File
	if file == "" {
		file = "(defaults)"
	}
	return &Error{File: file, Line: KeyLine(s.Data, strings.Split(key, "."), index), Key: key, Msg: fmt.Sprintf(format, args...)}
}
