package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, roots, floor uint64
		want               int
	}{
		{0, 0, 32 * mib, 800},               // before the first collection: the minimum heap is the floor
		{1 * mib, 0, 32 * mib, 800},         // capped so the minimum heap stays within the floor
		{4 * mib, 0, 32 * mib, 700},         // goal 4 + 4 × 7 = 32 MiB
		{8 * mib, 0, 32 * mib, 300},         // goal 8 + 8 × 3 = 32 MiB
		{9 * mib, 3 * mib, 32 * mib, 191},   // stacks count: goal 9 + 12 × 1.91 ≈ 32 MiB
		{12 * mib, 8 * mib, 32 * mib, 100},  // goal 12 + 20 = 32 MiB
		{16 * mib, 0, 32 * mib, 100},        // half the floor: the default
		{100 * mib, 1 * mib, 32 * mib, 100}, // a large heap: the default
		{2 * mib, 0, 4 * mib, 100},          // a floor at Go's own minimum changes nothing
		{1 * mib, 0, 1024 * mib, 25600},     // a large floor
		{1 << 40, 1 << 30, 32 * mib, 100},   // far past the floor
		{1, 0, 1 << 40, 26214400},           // no overflow
	} {
		if got := percentFor(c.live, c.roots, c.floor); got != c.want {
			t.Errorf("percentFor(live %d, roots %d, floor %d) = %d, want %d", c.live, c.roots, c.floor, got, c.want)
		}
		// The goal it gives is within the floor, unless the default
		// alone passes it.
		if p := percentFor(c.live, c.roots, c.floor); p > basePercent && c.live > 0 {
			goal := c.live + (c.live+c.roots)*uint64(p)/100
			if goal > c.floor {
				t.Errorf("live %d, roots %d, floor %d: GOGC %d puts the goal at %d", c.live, c.roots, c.floor, p, goal)
			}
		}
	}
}

// An operator's GOGC is left alone. (Before the next test, which starts
// the process's tuner for good.)
func TestSetLeavesGOGCAlone(t *testing.T) {
	if started {
		t.Skip("the tuner runs from an earlier -count run, and owns GOGC")
	}
	t.Setenv("GOGC", "50")
	old := debug.SetGCPercent(50)
	defer debug.SetGCPercent(old)
	Set(64 << 20)
	runtime.GC()
	runtime.GC()
	if p := debug.SetGCPercent(old); p != 50 {
		t.Fatalf("GOGC=50 in the environment became %d", p)
	}
}

var sink []byte

// chunk is the garbage cycles makes at a time.
const chunk = 64 << 10

// cycles counts the collections that allocating n bytes of garbage costs.
//
// It never lets the heap pass the collector's goal. A loop that does
// nothing but allocate outruns a collection that other work on the machine
// slows down (its threads wait for a CPU between the phases), and what it
// allocates while the collection marks counts as live, so the next goal
// grows by as much: on a loaded machine one cycle at a 4 MiB goal ended
// at 24 MiB with 20 "live", the next goal was 40 MiB, and 48 MiB of
// garbage cost 3 collections. Waiting measures the target, not how
// quickly the collector got a CPU.
func cycles(t *testing.T, n int) uint64 {
	t.Helper()
	s := []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
	}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	for range n / chunk {
		waitBelowGoal(t, s)
		sink = make([]byte, chunk)
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}

// waitBelowGoal waits until one more chunk fits under the heap goal: for
// the collection under way to end, or for the sweeper to free the garbage
// the last one found (the heap's objects count it until then). Both go on
// without this goroutine, so the wait ends.
func waitBelowGoal(t *testing.T, s []metrics.Sample) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		metrics.Read(s)
		if s[2].Value.Uint64()+chunk <= s[1].Value.Uint64() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the heap stayed at %d bytes, past its goal of %d, for 30s", s[2].Value.Uint64(), s[1].Value.Uint64())
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// With a floor, garbage that would cost several collections at the
// default target costs at most one; and the target follows each
// collection.
func TestSetRaisesTheTarget(t *testing.T) {
	t.Setenv("GOGC", "")
	// The tuner lasts for the process: with -count above 1 it is already
	// running, and the default is gone.
	if !started {
		// The default, whatever GOGC this test process started with.
		old := debug.SetGCPercent(basePercent)
		runtime.GC()
		n := cycles(t, 48<<20)
		debug.SetGCPercent(old)
		if n < 6 {
			t.Fatalf("48 MiB of garbage at the default target: %d collections, want 6 or more", n)
		}
	}
	Set(64 << 20)
	runtime.GC() // the tuner sees a small live heap
	if n := cycles(t, 48<<20); n > 1 {
		t.Fatalf("48 MiB of garbage with a 64 MiB floor: %d collections, want at most 1", n)
	}
	if p := gogc(); p <= basePercent {
		t.Fatalf("GOGC with a 64 MiB floor and a small heap: %d, want above %d", p, basePercent)
	}
	// A live heap past half the floor brings the default back.
	for range 48 {
		held = append(held, make([]byte, 1<<20))
	}
	runtime.GC()
	waitGOGC(t, basePercent)
	held = nil
	runtime.GC()
	waitGOGC(t, 1600)
}

var held [][]byte

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// waitGOGC waits for the tuner, which runs after a collection, to set
// GOGC to want.
func waitGOGC(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for gogc() != want {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC %d, want %d", gogc(), want)
		}
		time.Sleep(10 * time.Millisecond)
		// The tuner may have looked before this collection's heap
		// was known; another collection asks again.
		runtime.GC()
	}
}
