package tomlconf

import (
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// BurntSushi/toml keeps the position of each key to itself, so the lines
// errors point at come from a scan of the text of our own. It follows
// TOML's structure (headers, dotted and quoted keys, strings, arrays and
// inline tables) only as far as finding where each key is defined needs,
// and it reads text the decoder accepted already: on anything else it
// gives up on the line and carries on, and never fails.

// KeyLine finds the line that sets key, or 0. For a key under an array of
// tables ([[tokens]], or tokens = [{…}, {…}]), index picks the table (0 is
// the first); when that table does not set the key, the line of the
// nearest table around it that the file does define is returned (a
// header's, a dotted key's, an inline table's opening brace's).
func KeyLine(data string, key toml.Key, index int) int {
	if len(key) == 0 {
		return 0
	}
	defs := scanKeys(data)
	// The first part of key that is an array of tables, whose index-th
	// element the key is in.
	array := -1
	for _, d := range defs {
		for j := 0; j < len(d.path) && j < len(key) && d.path[j].name == key[j]; j++ {
			if d.path[j].index >= 0 && (array < 0 || j < array) {
				array = j
			}
		}
	}
	// A table around the key will do, but not one around the array: the
	// element asked for is not there.
	for n := len(key); n > max(array, 0); n-- {
		for _, d := range defs {
			if d.is(key[:n], array, index) {
				return d.line
			}
		}
	}
	return 0
}

// undecodedLine is KeyLine for a key whose table index is unknown: the
// first table of an array that sets it.
func undecodedLine(data string, key toml.Key) int {
	for _, d := range scanKeys(data) {
		if d.is(key, -1, 0) {
			return d.line
		}
	}
	return KeyLine(data, key, 0)
}

// keyDef is where the file defines a key: a table, a value, or an element
// of an array of tables.
type keyDef struct {
	path []keyPart
	line int
}

// keyPart is one part of a key, with the element it names when it is an
// array of tables (-1 when it is not).
type keyPart struct {
	name  string
	index int
}

// is reports whether d defines key, in the index-th element of the array
// of tables at key[array] (any element when array is -1).
func (d keyDef) is(key []string, array, index int) bool {
	if len(d.path) != len(key) {
		return false
	}
	for j, p := range d.path {
		if p.name != key[j] || (j == array && p.index != index) {
			return false
		}
	}
	return true
}

// keyScanner finds the keys a TOML text defines, in order.
type keyScanner struct {
	s     string
	i     int
	nl    []int          // offsets of the newlines, for lineAt
	count map[string]int // elements so far of each [[array]], by pathKey
	defs  []keyDef
}

func scanKeys(data string) []keyDef {
	sc := &keyScanner{s: data, count: map[string]int{}}
	for i := range len(data) {
		if data[i] == '\n' {
			sc.nl = append(sc.nl, i)
		}
	}
	var table []keyPart
	for sc.i < len(sc.s) {
		sc.skipSpace()
		if sc.i == len(sc.s) {
			break
		}
		start := sc.i
		switch sc.peek() {
		case '\n', '\r':
			sc.i++
			continue
		case '#':
		case '[':
			if t, ok := sc.header(); ok {
				table = t
			}
		default:
			sc.keyValue(table)
		}
		// The rest of the line: a comment, or what could not be read.
		sc.skipSpace()
		if sc.i == start || sc.peek() != '\n' {
			for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
				sc.i++
			}
		}
	}
	return sc.defs
}

func (sc *keyScanner) lineAt(i int) int { return 1 + sort.SearchInts(sc.nl, i) }

// peek is the next byte, 0 at the end.
func (sc *keyScanner) peek() byte {
	if sc.i >= len(sc.s) {
		return 0
	}
	return sc.s[sc.i]
}

func (sc *keyScanner) skipSpace() {
	for c := sc.peek(); c == ' ' || c == '\t'; c = sc.peek() {
		sc.i++
	}
}

// skipBlank skips space, newlines and comments, as between an array's
// elements.
func (sc *keyScanner) skipBlank() {
	for {
		switch sc.peek() {
		case ' ', '\t', '\n', '\r':
			sc.i++
		case '#':
			for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
				sc.i++
			}
		default:
			return
		}
	}
}

// header reads a [table] or [[table]] header and returns the table.
func (sc *keyScanner) header() ([]keyPart, bool) {
	line := sc.lineAt(sc.i)
	sc.i++
	array := sc.peek() == '['
	if array {
		sc.i++
	}
	names := sc.key()
	sc.skipSpace()
	if names == nil || sc.peek() != ']' {
		return nil, false
	}
	sc.i++
	if array {
		if sc.peek() != ']' {
			return nil, false
		}
		sc.i++
	}
	var path []keyPart
	for j, n := range names {
		path = sc.resolve(path, n, array && j == len(names)-1)
	}
	sc.defs = append(sc.defs, keyDef{path, line})
	return path, true
}

// resolve appends name to path: when it names an array of tables, as its
// last element, or as a new one when next is set ([[name]]).
func (sc *keyScanner) resolve(path []keyPart, name string, next bool) []keyPart {
	path = append(path[:len(path):len(path)], keyPart{name, -1})
	k := pathKey(path)
	if next {
		sc.count[k]++
	}
	if n := sc.count[k]; n > 0 {
		path[len(path)-1].index = n - 1
	}
	return path
}

// pathKey is path as a map key, its last part's index left out.
func pathKey(path []keyPart) string {
	var b strings.Builder
	for j, p := range path {
		b.WriteString(strconv.Quote(p.name))
		if j < len(path)-1 {
			b.WriteString(strconv.Itoa(p.index))
		}
	}
	return b.String()
}

// keyValue reads key = value in table. A dotted key (a.b = 1) defines the
// tables it goes through on its line too.
func (sc *keyScanner) keyValue(table []keyPart) {
	line := sc.lineAt(sc.i)
	names := sc.key()
	sc.skipSpace()
	if names == nil || sc.peek() != '=' {
		return
	}
	sc.i++
	path := table
	for _, n := range names {
		path = sc.resolve(path, n, false)
		sc.defs = append(sc.defs, keyDef{path, line})
	}
	sc.value(path)
}

// key reads a key, bare, quoted or dotted, as its parts; nil if there is
// none.
func (sc *keyScanner) key() []string {
	var names []string
	for {
		sc.skipSpace()
		switch c := sc.peek(); {
		case c == '"' || c == '\'':
			start := sc.i
			if strings.HasPrefix(sc.s[start:], strings.Repeat(string(c), 3)) || !sc.str() {
				return nil
			}
			raw := sc.s[start+1 : sc.i-1]
			if c == '"' {
				if u, err := strconv.Unquote(`"` + raw + `"`); err == nil {
					raw = u
				}
			}
			names = append(names, raw)
		case isBare(c):
			start := sc.i
			for isBare(sc.peek()) {
				sc.i++
			}
			names = append(names, sc.s[start:sc.i])
		default:
			return nil
		}
		sc.skipSpace()
		if sc.peek() != '.' {
			return names
		}
		sc.i++
	}
}

func isBare(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value reads the value of the key at path: the keys of an inline table,
// and those of inline tables in an array, as elements of path.
func (sc *keyScanner) value(path []keyPart) {
	sc.skipSpace()
	switch sc.peek() {
	case '"', '\'':
		sc.str()
	case '{':
		sc.inlineTable(path)
	case '[':
		sc.i++
		last := len(path) - 1
		n := 0
		sc.items(']', func() {
			elem := append(path[:last:last], keyPart{path[last].name, n})
			if sc.peek() == '{' {
				sc.defs = append(sc.defs, keyDef{elem, sc.lineAt(sc.i)})
			}
			sc.value(elem)
			n++
		})
	default:
		// A number, a boolean or a date (which may hold a space).
		for c := sc.peek(); c != 0 && !strings.ContainsRune(",]}#\r\n", rune(c)); c = sc.peek() {
			sc.i++
		}
	}
}

func (sc *keyScanner) inlineTable(path []keyPart) {
	sc.i++
	sc.items('}', func() { sc.keyValue(path) })
}

// items reads the comma-separated items of an array or inline table, up
// to and past end, with item, which moves past one; the scan moves on a
// byte when item cannot, so it always ends.
func (sc *keyScanner) items(end byte, item func()) {
	for {
		sc.skipBlank()
		switch sc.peek() {
		case 0:
			return
		case end:
			sc.i++
			return
		case ',':
			sc.i++
			continue
		}
		start := sc.i
		item()
		if sc.i == start {
			sc.i++
		}
	}
}

// str skips a string, in either quotes, on one line or in three quotes
// over several. It reports whether the string ended.
func (sc *keyScanner) str() bool {
	q := sc.s[sc.i]
	triple := strings.Repeat(string(q), 3)
	multi := strings.HasPrefix(sc.s[sc.i:], triple)
	if multi {
		sc.i += 3
	} else {
		sc.i++
	}
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == '\\' && q == '"':
			sc.i = min(sc.i+2, len(sc.s))
		case multi && strings.HasPrefix(sc.s[sc.i:], triple):
			sc.i += 3
			// Up to two quotes more are the string's own: """a""""".
			for k := 0; k < 2 && sc.peek() == q; k++ {
				sc.i++
			}
			return true
		case c == '\n' && !multi:
			return false
		default:
			sc.i++
			if c == q && !multi {
				return true
			}
		}
	}
	return false
}
