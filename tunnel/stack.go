package tunnel

// growStack grows the calling goroutine's stack to 8 KiB in one step.
//
// A client's first goroutine on each side (carry: open or accept a stream,
// dial, log) starts on Go's smallest stack and used to outgrow it twice,
// deep inside net's dial or smux's select, where each copy had ~20 frames
// to walk and adjust: 5-7% of relayctl's and relayd's CPU for a new
// connection. Called first thing, the copy has one frame to move. The
// goroutine ends once the client is joined, so nothing idle keeps the
// bigger stack.
//
//go:noinline
func growStack() {
	var b [6 << 10]byte
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
