// Package bitrate reads rates written as iperf writes them: bits per
// second, with an optional k, M or G (powers of 1000): "500k", "100M",
// "1G", "2.5M".
package bitrate

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Max is the largest rate Parse accepts, 100 Gbit/s: anything above is a
// typo, not a link.
const Max = 100e9

// Parse reads s as bits per second. "0" is 0.
func Parse(s string) (float64, error) {
	s = strings.TrimSpace(s)
	num, mult := s, 1.0
	if num != "" {
		switch num[len(num)-1] {
		case 'k', 'K':
			mult, num = 1e3, num[:len(num)-1]
		case 'm', 'M':
			mult, num = 1e6, num[:len(num)-1]
		case 'g', 'G':
			mult, num = 1e9, num[:len(num)-1]
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a rate in bits per second such as 500k, 100M or 1G", s)
	}
	if r := v * mult; r <= Max {
		return r, nil
	}
	return 0, fmt.Errorf("%q is more than 100G bits per second", s)
}
