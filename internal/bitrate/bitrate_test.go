package bitrate

import (
	"math"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]float64{
		"0": 0, "500k": 500e3, "500K": 500e3, "100M": 100e6, "1.5G": 1.5e9, " 20m ": 20e6, "64000": 64e3,
	} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "fast", "10MB", "-1M", "Inf", "NaN", "1e400", "1e308G", "10 M"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", in, got)
		}
	}
}

func TestFormat(t *testing.T) {
	for bps, want := range map[float64]string{
		2.5e9: "2.50 Gbit/s", 1e9: "1.00 Gbit/s", 20e6: "20.0 Mbit/s", 1048576: "1.0 Mbit/s", 524288: "524 kbit/s", 64e3: "64 kbit/s",
	} {
		if got := Format(bps); got != want {
			t.Errorf("Format(%v) = %q, want %q", bps, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "500k", "100M", "1G", "1.5g", "", "k", "-1", "1e308G", "0x10M"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		if err != nil {
			if v != 0 {
				t.Fatalf("Parse(%q) = %v with error %v", s, v, err)
			}
			return
		}
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("Parse(%q) = %v: want a rate of 0 or more", s, v)
		}
	})
}
