package tunnel

import (
	"reflect"
	"slices"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	good := []struct {
		in   string
		want PortRange
	}{
		{"1", PortRange{1, 1}},
		{"80", PortRange{80, 80}},
		{"65535", PortRange{65535, 65535}},
		{"80-80", PortRange{80, 80}},
		{"1-65535", PortRange{1, 65535}},
		{"20000-29999", PortRange{20000, 29999}},
		{" 8080 ", PortRange{8080, 8080}},
	}
	for _, tt := range good {
		got, err := ParsePortRange(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}

	bad := []struct {
		in      string
		wantErr string
	}{
		{"", `port "": "" is not a port number from 1 to 65535`},
		{"0", `port "0": "0" is not a port number from 1 to 65535`},
		{"65536", `port "65536": "65536" is not a port number from 1 to 65535`},
		{"99999999999999999999", `port "99999999999999999999": "99999999999999999999" is not a port number from 1 to 65535`},
		{"abc", `port "abc": "abc" is not a port number from 1 to 65535`},
		{"1.5", `port "1.5": "1.5" is not a port number from 1 to 65535`},
		{"-1", `port "-1": "" is not a port number from 1 to 65535`},
		{"0-10", `port "0-10": "0" is not a port number from 1 to 65535`},
		{"10-5", `port range "10-5": 5 is below 10`},
		{"10-", `port range "10-": "" is not a port number from 1 to 65535`},
		{"1-65536", `port range "1-65536": "65536" is not a port number from 1 to 65535`},
		{"1-2-3", `port range "1-2-3": "2-3" is not a port number from 1 to 65535`},
		{"80,443", `port "80,443": "80,443" is not a port number from 1 to 65535`},
	}
	for _, tt := range bad {
		got, err := ParsePortRange(tt.in)
		if err == nil {
			t.Errorf("ParsePortRange(%q) = %v, want error %q", tt.in, got, tt.wantErr)
			continue
		}
		if err.Error() != tt.wantErr {
			t.Errorf("ParsePortRange(%q) error = %q, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestParsePortSet(t *testing.T) {
	good := []struct {
		in       string
		want     PortSet
		wantStr  string
		wantSize int
	}{
		{"20000-29999", PortSet{{20000, 29999}}, "20000-29999", 10000},
		{"24100-24109,25565", PortSet{{24100, 24109}, {25565, 25565}}, "24100-24109,25565", 11},
		{"25565,24100-24109", PortSet{{24100, 24109}, {25565, 25565}}, "24100-24109,25565", 11},
		{" 443 , 80 ", PortSet{{80, 80}, {443, 443}}, "80,443", 2},
		{"80,,443,", PortSet{{80, 80}, {443, 443}}, "80,443", 2},
		{"80-80", PortSet{{80, 80}}, "80", 1},
		// Adjacent ranges do not overlap; they are kept as written.
		{"1-2,3-4", PortSet{{1, 2}, {3, 4}}, "1-2,3-4", 4},
		{"65535,1", PortSet{{1, 1}, {65535, 65535}}, "1,65535", 2},
		{"1-65535", PortSet{{1, 65535}}, "1-65535", 65535},
	}
	for _, tt := range good {
		got, err := ParsePortSet(tt.in)
		if err != nil {
			t.Errorf("ParsePortSet(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParsePortSet(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.wantStr {
			t.Errorf("ParsePortSet(%q).String() = %q, want %q", tt.in, s, tt.wantStr)
		}
		if n := got.Size(); n != tt.wantSize {
			t.Errorf("ParsePortSet(%q).Size() = %d, want %d", tt.in, n, tt.wantSize)
		}
		// String is canonical: it parses back to the same set.
		again, err := ParsePortSet(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("ParsePortSet(%q) = %v, %v; want %v", got.String(), again, err, got)
		}
	}

	bad := []struct {
		in      string
		wantErr string
	}{
		{"", `port list "" names no port`},
		{" , ,", `port list " , ," names no port`},
		{"0", `port "0": "0" is not a port number from 1 to 65535`},
		{"65536", `port "65536": "65536" is not a port number from 1 to 65535`},
		{"abc", `port "abc": "abc" is not a port number from 1 to 65535`},
		{"10-5", `port range "10-5": 5 is below 10`},
		{"80,abc", `port "abc": "abc" is not a port number from 1 to 65535`},
		{"80,10-5", `port range "10-5": 5 is below 10`},
		{"1-2,2-3", `port list "1-2,2-3": 2-3 overlaps 1-2`},
		{"2-3,1-2", `port list "2-3,1-2": 2-3 overlaps 1-2`},
		{"80,80", `port list "80,80": 80 overlaps 80`},
		{"10-20,15", `port list "10-20,15": 15 overlaps 10-20`},
		{"1-100,50-60", `port list "1-100,50-60": 50-60 overlaps 1-100`},
		{"200,1-100,300,50", `port list "200,1-100,300,50": 50 overlaps 1-100`},
	}
	for _, tt := range bad {
		got, err := ParsePortSet(tt.in)
		if err == nil {
			t.Errorf("ParsePortSet(%q) = %v, want error %q", tt.in, got, tt.wantErr)
			continue
		}
		if got != nil {
			t.Errorf("ParsePortSet(%q) returned %v with its error", tt.in, got)
		}
		if err.Error() != tt.wantErr {
			t.Errorf("ParsePortSet(%q) error = %q, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestPortRange(t *testing.T) {
	tests := []struct {
		r        PortRange
		wantStr  string
		wantSize int
		in, out  []uint16
	}{
		{PortRange{80, 80}, "80", 1, []uint16{80}, []uint16{0, 79, 81, 65535}},
		{PortRange{10, 20}, "10-20", 11, []uint16{10, 15, 20}, []uint16{9, 21}},
		{PortRange{1, 65535}, "1-65535", 65535, []uint16{1, 65535}, []uint16{0}},
	}
	for _, tt := range tests {
		if s := tt.r.String(); s != tt.wantStr {
			t.Errorf("%#v.String() = %q, want %q", tt.r, s, tt.wantStr)
		}
		if n := tt.r.Size(); n != tt.wantSize {
			t.Errorf("%v.Size() = %d, want %d", tt.r, n, tt.wantSize)
		}
		for _, p := range tt.in {
			if !tt.r.Contains(p) {
				t.Errorf("%v.Contains(%d) = false, want true", tt.r, p)
			}
		}
		for _, p := range tt.out {
			if tt.r.Contains(p) {
				t.Errorf("%v.Contains(%d) = true, want false", tt.r, p)
			}
		}
	}
}

func mustParsePortSet(t *testing.T, s string) PortSet {
	t.Helper()
	set, err := ParsePortSet(s)
	if err != nil {
		t.Fatalf("ParsePortSet(%q): %v", s, err)
	}
	return set
}

func TestPortSetContainsSizeNth(t *testing.T) {
	set := mustParsePortSet(t, "30-31,10-12,20")
	if n := set.Size(); n != 6 {
		t.Fatalf("Size() = %d, want 6", n)
	}
	wantNth := []uint16{10, 11, 12, 20, 30, 31}
	for i, want := range wantNth {
		if got := set.Nth(i); got != want {
			t.Errorf("Nth(%d) = %d, want %d", i, got, want)
		}
	}
	for p, want := range map[uint16]bool{
		0: false, 9: false, 10: true, 11: true, 12: true, 13: false,
		19: false, 20: true, 21: false, 29: false, 30: true, 31: true, 32: false, 65535: false,
	} {
		if got := set.Contains(p); got != want {
			t.Errorf("Contains(%d) = %v, want %v", p, got, want)
		}
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("Nth(Size()) did not panic")
			}
		}()
		set.Nth(set.Size())
	}()
}

// TestPortSetNthEnumerates checks, over whole sets, that Nth(0..Size()-1)
// lists exactly the ports Contains accepts, in increasing order.
func TestPortSetNthEnumerates(t *testing.T) {
	for _, s := range []string{"80", "1", "65535", "1-65535", "10-12,20,30-31", "1-2,3-4", "1,65535", "24100-24109,25565"} {
		set := mustParsePortSet(t, s)
		n := set.Size()
		contained := 0
		for p := range 65536 {
			if set.Contains(uint16(p)) {
				contained++
			}
		}
		if contained != n {
			t.Errorf("%s: Contains accepts %d ports, Size() = %d", s, contained, n)
		}
		prev := -1
		for i := range n {
			p := set.Nth(i)
			if int(p) <= prev {
				t.Errorf("%s: Nth(%d) = %d, not above Nth(%d) = %d", s, i, p, i-1, prev)
				break
			}
			if !set.Contains(p) {
				t.Errorf("%s: Nth(%d) = %d, which Contains rejects", s, i, p)
				break
			}
			prev = int(p)
		}
	}
}

func TestPortSetIntersect(t *testing.T) {
	set := mustParsePortSet(t, "10-12,20,30-31")
	tests := []struct {
		r    PortRange
		want string // "" for empty
	}{
		{PortRange{1, 65535}, "10-12,20,30-31"},
		{PortRange{10, 31}, "10-12,20,30-31"},
		{PortRange{11, 30}, "11-12,20,30"},
		{PortRange{12, 12}, "12"},
		{PortRange{20, 20}, "20"},
		{PortRange{12, 30}, "12,20,30"},
		{PortRange{1, 9}, ""},
		{PortRange{13, 19}, ""},
		{PortRange{32, 65535}, ""},
		{PortRange{31, 10}, ""}, // empty range
	}
	for _, tt := range tests {
		got := set.Intersect(tt.r)
		if got.String() != tt.want {
			t.Errorf("Intersect(%v) = %q, want %q", tt.r, got, tt.want)
		}
		if tt.want == "" && len(got) != 0 {
			t.Errorf("Intersect(%v) = %v, want empty", tt.r, got)
		}
		for _, x := range got {
			for p := int(x.Low); p <= int(x.High); p++ {
				if !set.Contains(uint16(p)) || !tt.r.Contains(uint16(p)) {
					t.Errorf("Intersect(%v) holds %d, outside the set or the range", tt.r, p)
				}
			}
		}
	}
	if got := PortSet(nil).Intersect(PortRange{1, 65535}); len(got) != 0 {
		t.Errorf("empty set Intersect = %v, want empty", got)
	}
	if s := set.String(); s != "10-12,20,30-31" {
		t.Errorf("Intersect changed the set to %q", s)
	}
}

// FuzzParsePortSet: relay.toml's ports and --port from anyone: a set
// parsed is sorted, its ranges in order and apart, and its String parses
// back to the same set.
func FuzzParsePortSet(f *testing.F) {
	for _, s := range []string{"20000-29999", "24100-24109,25565", " 1 , 65535", "5-3", "0", "1-2,2", "", ",", "08", "-1", "1-65536"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParsePortSet(s)
		if err != nil {
			if set != nil {
				t.Fatalf("ParsePortSet(%q) returned %v with error %v", s, set, err)
			}
			return
		}
		for i, r := range set {
			if r.Low < 1 || r.High < r.Low || i > 0 && r.Low <= set[i-1].High {
				t.Fatalf("ParsePortSet(%q) = %v: range %d out of order or overlapping", s, set, i)
			}
		}
		again, err := ParsePortSet(set.String())
		if err != nil || !slices.Equal(again, set) {
			t.Fatalf("ParsePortSet(%q) = %v, whose String %q parses to %v, %v", s, set, set.String(), again, err)
		}
	})
}
