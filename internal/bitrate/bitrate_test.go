package bitrate

import "testing"

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want float64
		err  string
	}{
		{"0", 0, ""},
		{"500k", 500e3, ""},
		{" 100M ", 100e6, ""},
		{"2.5m", 2.5e6, ""},
		{"1G", 1e9, ""},
		{"8000", 8000, ""},
		{"100G", 100e9, ""},
		{"", 0, `"" is not a rate in bits per second such as 500k, 100M or 1G`},
		{"fast", 0, `"fast" is not a rate in bits per second such as 500k, 100M or 1G`},
		{"10Mbit", 0, `"10Mbit" is not a rate in bits per second such as 500k, 100M or 1G`},
		{"-1M", 0, `"-1M" is not a rate in bits per second such as 500k, 100M or 1G`},
		{"NaN", 0, `"NaN" is not a rate in bits per second such as 500k, 100M or 1G`},
		{"101G", 0, `"101G" is more than 100G bits per second`},
	} {
		got, err := Parse(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("Parse(%q) = %v, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// FuzzParse: any input either parses to a rate within [0, Max] or fails;
// it never panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "500k", "100M", "1G", "2.5m", "x", "1e3k", "-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err == nil && (r < 0 || r > Max) {
			t.Fatalf("Parse(%q) = %v, outside [0, %v]", s, r, Max)
		}
	})
}
