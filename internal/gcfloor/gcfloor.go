// Package gcfloor keeps Go's garbage collector from running while the heap
// is small.
//
// With a small live heap Go collects every 4 MiB allocated. A relay carrying
// UDP allocates much faster than that: quic-go copies every datagram once
// on the relay and twice on the agent, 25 and 55 MB/s at 200 Mbit/s, so
// relayctl collected about 14 times a second. Each collection holds up the
// datagram path for a moment; the datagrams that queue meanwhile leave as a
// burst, and a burst is what overflows the receiving server's socket. Set
// raises the collector's target (GOGC) so the heap may grow to a floor
// before it collects, and lowers it back as the live heap grows: above
// half the floor the target is the usual one, so a relay holding many
// connections uses no more memory than before.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Relay is the floor relayd and relayctl keep. At 200 Mbit/s of datagrams
// relayctl collects about twice a second instead of 14 times; in return a
// process that carried traffic may keep up to this much heap, garbage
// included, where it kept 4 to 8 MiB.
const Relay = 32 << 20

// basePercent is GOGC's default, the target once the live heap is large.
const basePercent = 100

// minHeap is the heap Go lets grow before collecting at GOGC=100; it
// scales with GOGC.
const minHeap = 4 << 20

var (
	once    sync.Once
	started bool // under once
)

// Set keeps the collector's heap goal at floor bytes or more, for the life
// of the process, by adjusting GOGC after every collection. It does
// nothing when GOGC is set in the environment (the operator chose), or
// after its first call.
func Set(floor uint64) {
	if floor < minHeap || os.Getenv("GOGC") != "" {
		return
	}
	once.Do(func() {
		started = true
		t := &tuner{floor: floor, last: basePercent}
		t.tune()
	})
}

type tuner struct {
	floor uint64
	last  int
	live  [1]metrics.Sample
}

// marker is what tune watches to learn that a collection happened: a fresh
// one per cycle, unreachable at once, whose cleanup runs after the
// collection that frees it. (16 bytes, so it is not packed with others.)
type marker [16]byte

func (t *tuner) tune() {
	t.live[0].Name = "/gc/heap/live:bytes"
	metrics.Read(t.live[:])
	var live uint64
	if t.live[0].Value.Kind() == metrics.KindUint64 {
		live = t.live[0].Value.Uint64()
	}
	if p := percentFor(live, t.floor); p != t.last {
		debug.SetGCPercent(p)
		t.last = p
	}
	runtime.AddCleanup(new(marker), (*tuner).tune, t)
}

// percentFor is the GOGC that puts the heap goal, live × (1 + GOGC/100),
// at floor, never below the default; and no higher than keeps Go's minimum
// heap (4 MiB × GOGC/100) within floor, which is the goal before the first
// collection and while almost nothing is live.
func percentFor(live, floor uint64) int {
	most := int(floor * basePercent / minHeap)
	if live == 0 {
		return max(most, basePercent)
	}
	p := int(floor*100/live) - 100
	return max(basePercent, min(p, most))
}
