//go:build !linux

package tunnel

import "testing"

func forEachPumpMode(t *testing.T, body func(t *testing.T)) { body(t) }
