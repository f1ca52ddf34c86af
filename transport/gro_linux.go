package transport

import (
	"encoding/binary"
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// groConn is a QUIC session's UDP socket with generic receive offload.
//
// quic-go sends a burst of packets as one GSO system call (up to 20 KiB of
// 1452-byte packets), but receives packet by packet: without UDP_GRO, the
// kernel cuts every such burst back into packets and queues each on the
// socket, which profiles showed to be most of a receiving process's CPU
// during bulk transfer (recvmmsg 30% of relayctl's). With UDP_GRO set, the
// burst arrives whole, with its segment size in a control message, and
// groConn hands quic-go its packets one by one from its own buffers.
//
// quic-go reads through ReadBatch when the socket has it (sys_conn_oob.go);
// everything else, sending with GSO included, is the *net.UDPConn's.
type groConn struct {
	*net.UDPConn
	pc *ipv4.PacketConn

	// Bursts from the last recvmmsg, handed out from msgs[next], at byte
	// off of it.
	msgs    []ipv4.Message
	n, next int
	off     int
	seg     []int    // each burst's segment size
	ipOOB   [][]byte // each burst's control messages, less UDP_GRO's
}

const (
	// groBursts is how many bursts one system call may read: with
	// quic-go's 20 KiB bursts, up to 56 packets. The buffers, 256 KiB a
	// socket, are made on the first read.
	groBursts  = 4
	groBufSize = 64 << 10 // the most UDP_GRO coalesces into one read
)

// newGROConn turns on UDP_GRO for c. It returns c itself when the kernel
// does not have UDP_GRO (before Linux 5.0).
func newGROConn(c *net.UDPConn) net.PacketConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return c
	}
	return &groConn{UDPConn: c, pc: ipv4.NewPacketConn(c)}
}

func (g *groConn) allocate() {
	g.msgs = make([]ipv4.Message, groBursts)
	g.seg = make([]int, groBursts)
	g.ipOOB = make([][]byte, groBursts)
	for i := range g.msgs {
		g.msgs[i].Buffers = [][]byte{make([]byte, groBufSize)}
		g.msgs[i].OOB = make([]byte, 256)
		g.ipOOB[i] = make([]byte, 0, 256)
	}
}

// ReadBatch fills ms with packets, one per message, from the bursts that
// the last system call read, and reads more only when those are used up.
// quic-go calls it from one goroutine.
func (g *groConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if g.next >= g.n {
		if g.msgs == nil {
			g.allocate()
		}
		n, err := g.pc.ReadBatch(g.msgs, flags)
		if err != nil {
			return 0, err
		}
		g.n, g.next, g.off = n, 0, 0
		for i := range n {
			g.seg[i], g.ipOOB[i] = splitGRO(g.msgs[i].OOB[:g.msgs[i].NN], g.ipOOB[i][:0])
		}
	}
	out := 0
	for out < len(ms) && g.next < g.n {
		m := &g.msgs[g.next]
		data := m.Buffers[0][g.off:min(m.N, len(m.Buffers[0]))]
		if seg := g.seg[g.next]; seg > 0 && seg < len(data) {
			data = data[:seg]
		}
		d := &ms[out]
		d.N = copy(d.Buffers[0], data)
		d.Flags = m.Flags
		d.NN = 0
		if oob := g.ipOOB[g.next]; len(oob) <= len(d.OOB) {
			d.NN = copy(d.OOB, oob)
		} else {
			d.Flags |= unix.MSG_CTRUNC // not half a control message
		}
		if d.N < len(data) {
			d.Flags |= unix.MSG_TRUNC
		}
		d.Addr = m.Addr
		out++
		g.off += len(data)
		if g.off >= min(m.N, len(m.Buffers[0])) {
			g.next++
			g.off = 0
		}
	}
	return out, nil
}

// splitGRO returns the segment size that oob's UDP_GRO control message
// gives (0 if none: a single datagram) and the other control messages,
// appended to keep.
func splitGRO(oob, keep []byte) (int, []byte) {
	seg := 0
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(body) >= 4 {
			seg = int(int32(binary.NativeEndian.Uint32(body)))
		} else {
			keep = append(keep, oob[:len(oob)-len(rest)]...)
		}
		oob = rest
	}
	return seg, keep
}
