package transport

// A TLS+smux session's TCP socket holds few bytes unsent on a slow path
// (TCP_NOTSENT_LOWAT, where the system has it). batchConn starts it at
// minNotSent and then sets it, while bytes wait for the socket, to what
// the socket sends in batchDrain: up to maxNotSent, beyond which (a fast
// link, loopback) it leaves the system's default, no bound.
//
// Without a bound the kernel takes all the socket buffer it grows to
// (tcp_wmem, 4 MiB by default): on a 20 Mbit/s home uplink that is more
// than a second of a bulk stream's frames, in front of every other
// stream's frames and every datagram, which a game feels as a second of
// lag and a web request as a second's wait (TestNetSimLatencyUnderLoad:
// 1.25-1.65 s during a download). With one, what waits stays in smux's
// queue, which takes each stream's frames in turn, and the kernel still
// keeps every byte in flight that the congestion window allows: only the
// unsent ones are bounded.
//
// The bound follows the rate because a fixed one costs either way: 16 or
// 32 KiB cost single-stream bulk on loopback 10-20% in relayctl bench
// (the sender wakes for every few dozen KiB), while 128 KiB, which cost
// little or nothing there, is 52 ms of a 20 Mbit/s uplink.
const (
	minNotSent = 16 << 10
	maxNotSent = 1 << 20
)
