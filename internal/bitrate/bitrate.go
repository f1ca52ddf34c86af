// Package bitrate reads and writes rates in bits a second as people and
// iperf write them: 500k, 100M, 1G.
package bitrate

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Parse reads a rate in bits a second: a number with an optional k, M or
// G (powers of 1000). It refuses negative, infinite and NaN rates.
func Parse(s string) (float64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			mult, t = 1e3, t[:len(t)-1]
		case 'm', 'M':
			mult, t = 1e6, t[:len(t)-1]
		case 'g', 'G':
			mult, t = 1e9, t[:len(t)-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsInf(v*mult, 0) || math.IsNaN(v) {
		return 0, errNotRate
	}
	return v * mult, nil
}

var errNotRate = errors.New("not a rate")

// Format spells bits a second as iperf does: 2.50 Gbit/s, 100.0 Mbit/s,
// 500 kbit/s.
func Format(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.1f Mbit/s", bps/1e6)
	}
	return fmt.Sprintf("%.0f kbit/s", bps/1e3)
}
