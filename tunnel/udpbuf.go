package tunnel

import (
	"log/slog"
	"net"
	"sync"
)

// udpBufferSize is the receive and send buffer a tunnel's UDP sockets ask
// for: the relay's public sockets and the agent's per-flow sockets. A burst
// from a client (or a server's tick to every player) lands in it while the
// relay or agent is busy; the kernel's default (about 200 KiB) holds under
// a hundred full-size datagrams, fewer than a 200 Mbit/s stream sends in 5 ms.
const udpBufferSize = 4 << 20

var udpBufferWarning sync.Once

// tuneUDPSocket asks the kernel for udpBufferSize in both directions,
// forcing it past the system limit where the process may (Linux, with
// CAP_NET_ADMIN). The first socket that gets less says so, once per
// process, with the fix.
func tuneUDPSocket(c *net.UDPConn, log *slog.Logger) {
	rd := setSocketBuffer(c, false, udpBufferSize)
	wr := setSocketBuffer(c, true, udpBufferSize)
	if rd >= udpBufferSize && wr >= udpBufferSize {
		return
	}
	udpBufferWarning.Do(func() {
		log.Warn("the kernel caps UDP socket buffers below what UDP tunnels want, so bursts may be dropped; raise its limits with sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608",
			"want_bytes", udpBufferSize, "receive_bytes", rd, "send_bytes", wr)
	})
}
