//go:build unix

package transport

import (
	"syscall"
	"testing"
	"time"
)

// cpuMeter reports the process's CPU time (user and system) per operation
// as cpu-ns/op: unlike ns/op, it barely moves when other work shares the
// machine.
type cpuMeter struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuMeter { return cpuMeter{processCPU()} }

func (m cpuMeter) report(b *testing.B) {
	b.ReportMetric(float64(processCPU()-m.start)/float64(b.N), "cpu-ns/op")
}
