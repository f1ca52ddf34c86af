// Package gcfloor keeps Go's garbage collector from running while the heap
// is small.
//
// With a small live heap Go collects every 4 MiB allocated. A relay carrying
// UDP allocates much faster than that: quic-go copies every datagram once
// on the relay and twice on the agent, 25 and 55 MB/s at 200 Mbit/s, and
// relayctl collected 23 times a second. Each collection holds up the
// datagram path for a moment; the datagrams that queue meanwhile leave as a
// burst, and a burst is what overflows the receiving server's socket. Set
// raises the collector's target (GOGC) so the heap may grow to a floor
// before it collects, and lowers it back as the live heap grows: above
// half the floor the target is the usual one, so a relay holding many
// connections uses no more memory than before. The goal counts goroutine
// stacks and globals as Go's does, so it stays within the floor.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Relay is the floor relayd and relayctl keep. At 200 Mbit/s of datagrams
// relayctl collected 114 times in 5 s and collects 9 times with it; in
// return a process that carried traffic may keep up to this much heap,
// garbage included, where it kept 4 to 8 MiB.
const Relay = 32 << 20

// basePercent is GOGC's default, the target once the live heap is large.
const basePercent = 100

// minHeap is the heap Go lets grow before collecting at GOGC=100; it
// scales with GOGC. (4 MiB unless Go is built with the
// heapminimum512kib experiment.)
const minHeap = 4 << 20

var (
	once    sync.Once
	started bool // under once; for the tests
)

// Set keeps the collector's heap goal at floor bytes or more, for the life
// of the process, by adjusting GOGC after every collection; from then on
// it owns GOGC. It does nothing when GOGC is set, non-empty, in the
// environment (the operator chose), when floor is below Go's own minimum
// heap, or after its first call that did something.
func Set(floor uint64) {
	if floor < minHeap || os.Getenv("GOGC") != "" {
		return
	}
	once.Do(func() {
		started = true
		t := &tuner{floor: floor}
		t.m[0].Name = "/gc/heap/live:bytes"
		t.m[1].Name = "/gc/scan/stack:bytes"
		t.m[2].Name = "/gc/scan/globals:bytes"
		t.m[3].Name = "/gc/gogc:percent"
		t.tune()
	})
}

type tuner struct {
	floor uint64
	// The live heap, stacks and globals as of the last collection, and
	// GOGC now.
	m [4]metrics.Sample
}

// marker is what tune watches to learn that a collection happened: a fresh
// one per cycle, unreachable at once, whose cleanup runs after the
// collection that frees it. (16 bytes, so it is not packed with others.)
type marker [16]byte

func (t *tuner) tune() {
	metrics.Read(t.m[:])
	var v [4]uint64
	for i, m := range t.m {
		if m.Value.Kind() == metrics.KindUint64 {
			v[i] = m.Value.Uint64()
		}
	}
	if p := percentFor(v[0], v[1]+v[2], t.floor); uint64(p) != v[3] {
		debug.SetGCPercent(p)
	}
	runtime.AddCleanup(new(marker), (*tuner).tune, t)
}

// percentFor is the GOGC that puts the heap goal at floor, never below the
// default, for a live heap of live bytes and roots (goroutine stacks and
// globals) of roots bytes: Go's goal is live + (live + roots) × GOGC/100.
// It is also no higher than keeps Go's minimum heap (4 MiB × GOGC/100)
// within floor, which is the goal before the first collection and while
// almost nothing is live.
func percentFor(live, roots, floor uint64) int {
	most := max(basePercent, floor*basePercent/minHeap)
	switch {
	case live >= floor:
		return basePercent
	case live+roots == 0: // before the first collection
		return int(most)
	}
	p := (floor - live) * 100 / (live + roots)
	return int(max(basePercent, min(p, most)))
}
