package tunnel

// growStack grows the calling goroutine's stack to 8 KiB in one step.
//
// A client's first goroutine on each side (carry: open or accept a stream,
// dial, log) starts on the runtime's starting stack, normally 2 KiB, and
// used to outgrow it twice, deep inside net's dial or smux's select, where
// each copy had ~20 frames to walk and adjust: 5-7% of relayctl's and
// relayd's CPU for a new connection. Called first thing, the copy has two
// shallow frames to move.
//
// The array's size puts the new stack at exactly 8 KiB: newstack doubles
// the stack until growStack's frame, the stack guard (928 bytes, 1,728
// under -race) and carry's frame (about 700 bytes) fit, and any size from
// about 2.5 to 5 KiB lands on 8 KiB from a 2 or 4 KiB start.
//
// The goroutines end once the client is joined, so an idle connection
// keeps no bigger stack. Two bounded exceptions: the agent's datagram
// stream reader, one per session, runs on the goroutine that found it; and
// on the relay a client held while its tunnel has no agent (up to 10 s,
// OpenStreamTimeout) holds its 8 KiB meanwhile. A collection halves a
// stack that is less than a quarter used.
//
//go:noinline
func growStack() {
	var b [4 << 10]byte
	touchStack(b[:])
}

// touchStack keeps growStack's array, and so its frame, from being
// optimised away; it does not let the array escape to the heap.
//
//go:noinline
func touchStack(b []byte) {
	if len(b) == 0 {
		panic("tunnel: touchStack on an empty slice")
	}
}
