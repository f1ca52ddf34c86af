// Package tunnel is the relay protocol and its two ends: Relay, which runs on
// a public machine and gives each tunnel a public port, and Agent, which runs
// beside a private server and carries that port's connections to it.
//
// # Session flow
//
// The agent dials the relay over a transport.Session (QUIC, or TLS+smux on
// TCP) with ALPN "relay/1", then opens the control stream, the first stream of
// the session:
//
//	agent                                        relay
//	  | HELLO {version, software, key id,  ------>  |  version check
//	  |        instance}                            |
//	  | <------ CHALLENGE {version, software, nonce}|  (or ERROR bad-version)
//	  | AUTH {proof}                       ------>  |  proof = HMAC-SHA256(secret,
//	  |                                             |    "relay auth v1" | 0 | nonce | EKM)
//	  | <------------------- WELCOME {public host}  |  (or ERROR unauthorized)
//	  | REGISTER {req, name, protos, ports} ----->  |  lease a public port
//	  | <------------ REGISTERED {req, tunnel, port}|  (or ERROR {req, code, text})
//	  | PING / PONG, either way, any time           |  liveness and round-trip time
//	  | DRAIN {tunnel}, either way, any time        |  no new clients (see below)
//	  | <------------------------ LIMIT {rate}      |  a share of the token's max_bandwidth
//
// EKM is 32 bytes of TLS keying material (RFC 5705/8446 exporter, label
// "EXPORTER-relay-auth", no context), so a proof is bound to one TLS session:
// replaying it on another session fails, and the secret never crosses the
// wire. Each label is followed by one 0x00 byte. The key id is the first 16
// bytes of SHA-256("relay token id" | 0x00 | secret); it only tells the relay
// which secret to check the proof against.
//
// The instance is 16 random bytes an agent picks once per process. A session
// that authenticates with the token and instance of a session the relay still
// holds replaces it: that is how an agent returns after its network changed,
// before the relay has noticed the old session is dead. Agents with different
// instances registering the same name with the same token form a group that
// shares the tunnel's public port.
//
// The agent sends PING every keepalive interval; either side that hears
// nothing on the control stream for the liveness timeout closes the session.
//
// DRAIN from the agent says it takes no new clients on the tunnel (0: on all
// of them) while its clients in flight finish; from the relay it says the
// relay is stopping and will open no new streams, and the agent should
// reconnect once the session ends.
//
// For every client that connects to a tunnel's public port, the relay opens a
// new stream to the agent, writes a StreamHeader naming the tunnel and the
// client's address, and then copies bytes both ways. The agent dials the local
// server and does the same. EOF in either direction becomes CloseWrite on the
// other leg, so the remaining direction keeps flowing until it ends too.
//
// # Control frames
//
// Every control message is one frame:
//
//	+---------+-----------------+------------------------+
//	| type:1  | length:2 (BE)   | payload:length         |   length <= MaxControlPayload
//	+---------+-----------------+------------------------+
//
// Payload fields are big-endian integers and strings (str = len:2 | bytes,
// each with its own bound). A frame with an unknown type, a payload of the
// wrong size, or a field over its bound is an error that closes the session.
// The payloads, by type:
//
//	0x01 HELLO       version:2 | software:str(64) | key id:16 | instance:16
//	0x02 CHALLENGE   version:2 | software:str(64) | nonce:32
//	0x03 AUTH        proof:32
//	0x04 WELCOME     public host:str(255)
//	0x05 REGISTER    request:4 | name:str(63) | protos:1 | port low:2 | port high:2 |
//	                 allow:list | deny:list
//	                 (list = count:1 (at most 16) | that many str(49): CIDR prefixes)
//	0x06 REGISTERED  request:4 | tunnel:4 | protos:1 | port:2
//	0x07 ERROR       request:4 | code:2 | text:str(512)
//	0x08 PING        data:8
//	0x09 PONG        data:8
//	0x0a DRAIN       tunnel:4
//	0x0b CLOSED      tunnel:4 | code:2 | text:str(512)
//	0x0c MOVED       tunnel:4 | port:2 | text:str(512)
//	0x0d LIMIT       rate:8
//
// protos is a bit set: 1 TCP, 2 UDP. Ports 0-0 ask the relay to choose.
// In REGISTER, protos may also carry 0x80, no lease: the tunnel is for this
// session only (relayctl bench asks for it). The relay records no lease
// for it, so it leaves no port reserved behind; it gets a port that no
// lease holds, and when there is none it is refused rather than take an
// idle lease's port; and it neither joins another agent's live tunnel nor
// lets one join it. A relay older than the bit refuses such a REGISTER as
// an unsupported protocol set (ERROR unsupported, for that request alone),
// and the agent registers again without it, with a lease.
// Request 0 in ERROR means the session as a whole; the sender closes it next.
// CLOSED, from the relay, ends one tunnel of the session for good (a reload
// of the relay's rules no longer allows it; code and text say why) while the
// session and its other tunnels carry on: the agent does not register it
// again. An agent older than CLOSED takes it for an unknown frame and ends
// the session; back, it is refused that tunnel, as before.
// MOVED, from the relay, says a tunnel of the session now listens on
// another public port (a reload took its port out of the ports it may
// use; text says why): the tunnel id stays, clients connected on the old
// port carry on, and new ones must use the new port. The old port's UDP
// flows end with it. An agent older than MOVED ends the session on it and,
// back, is given the new port.
//
// LIMIT, from the relay, is how many bytes a second the agent may send on
// the session, over all its tunnels together (streams' bytes and
// datagrams' payloads; 0: no limit). It comes when the token has a
// max_bandwidth, once the first tunnel is registered, and again whenever
// the agent's share changes by more than a twentieth, or to or from 0. The
// token's limit is shared among its sessions that were granted a tunnel
// with the bit below (those whose tunnels have closed since too): a lone
// session gets all of it; with several, each starts with an even share,
// and once a second a session that used at least half of its share gets
// what the others leave, never less than an even share (Relay.shares). A
// session coming or going, and a reload that sets, changes or lifts the
// limit (LIMIT 0), share it again at once. The agent paces
// what it reads from its local servers to it and drops datagrams over it.
// The relay enforces the whole token's limit itself too, so an agent that
// does not keep to it gains nothing: the data it sends too fast waits
// unread in its own session's window, which stalls that session alone.
// An agent that keeps to LIMIT sets 0x40 in every REGISTER's protos; the
// relay sends LIMIT only to such a session, and refuses a tunnel of a
// token with a limit to one that does not (it would fill its session's
// window, and be dropped as silent); a reload that gives the token a
// limit closes such a session's tunnels by CLOSED, with the same text.
// A relay older than the bit refuses
// it as an unsupported protocol set, and the agent registers again
// without it.
//
// # Stream header
//
// The first bytes of every stream the relay opens:
//
//	+-----------+-----------+-----------+----------------+-------------+
//	| version:1 | tunnel:4  | family:1  | client IP:4/16 | client port:2|
//	+-----------+-----------+-----------+----------------+-------------+
//
// version is StreamHeaderVersion; family is 4 or 6. The relay sends client
// bytes right after it, without waiting. The agent's first byte back is a
// status: StatusConnected, then the local server's bytes; or
// StatusUnreachable, and the agent closes the stream.
//
// # Datagrams
//
// A UDP tunnel's datagrams never share a reliable stream: each travels as one
// transport datagram (a QUIC DATAGRAM frame, RFC 9221; on TLS+smux, a frame on
// the signal stream), both ways, prefixed with the stream header's layout:
//
//	+-----------+-----------+-----------+----------------+--------------+---------+
//	| version:1 | tunnel:4  | family:1  | client IP:4/16 | client port:2| payload |
//	+-----------+-----------+-----------+----------------+--------------+---------+
//
// From the relay it names the public client the payload came from; from the
// agent, the client it goes to. A flow is one client address on one tunnel;
// the agent gives each its own local UDP socket, so the server sees one peer
// per player. The relay forwards an agent's datagram only to a client with a
// live flow on that tunnel, so an agent cannot aim the relay at anyone else.
//
// A datagram too large for the path (a QUIC datagram must fit one packet)
// goes on the session's datagram stream instead, whole: a stream whose first
// byte is DatagramStreamMarker, opened by whichever side first needs one,
// then frames of len:2 (BE) | datagram as above. It arrives intact, though in
// order with the other large ones, and never truncated.
package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// ProtocolVersion is the control protocol version this build speaks.
const ProtocolVersion = 1

// ALPN is the TLS application protocol for ProtocolVersion.
const ALPN = "relay/1"

// Message types.
const (
	typeHello      = 0x01
	typeChallenge  = 0x02
	typeAuth       = 0x03
	typeWelcome    = 0x04
	typeRegister   = 0x05
	typeRegistered = 0x06
	typeError      = 0x07
	typePing       = 0x08
	typePong       = 0x09
	typeDrain      = 0x0a
	typeClosed     = 0x0b
	typeMoved      = 0x0c
	typeLimit      = 0x0d
)

// Bounds.
const (
	MaxControlPayload = 1024
	maxSoftware       = 64
	maxHost           = 255
	MaxNameLen        = 63
	maxErrorText      = 512
	MaxPrefixes       = 16
	maxPrefixLen      = 49
	keyIDLen          = 16
	instanceLen       = 16
	nonceLen          = 32
	proofLen          = 32
)

// Protocol bits in REGISTER and REGISTERED.
const (
	ProtoTCP = 1 << 0
	ProtoUDP = 1 << 1
)

// flagNoLease is Register.NoLease on the wire: a bit of REGISTER's protos,
// where a relay that does not know it refuses it without ending the
// session.
const flagNoLease = 1 << 7

// flagPaces is Register.Paces on the wire, the same way.
const flagPaces = 1 << 6

// Message is one control message.
type Message interface {
	msgType() byte
	encode(e *encoder)
	decode(d *decoder)
}

// Hello opens the control stream.
type Hello struct {
	Version  uint16
	Software string
	KeyID    [keyIDLen]byte
	// Instance identifies the agent process across its sessions.
	Instance [instanceLen]byte
}

// Challenge answers Hello with a fresh nonce.
type Challenge struct {
	Version  uint16
	Software string
	Nonce    [nonceLen]byte
}

// Auth proves the agent holds the token's secret.
type Auth struct {
	Proof [proofLen]byte
}

// Welcome accepts the agent.
type Welcome struct {
	// PublicHost is the host name clients should use, or empty to let the
	// agent use the host it dialed.
	PublicHost string
}

// Register asks for a tunnel.
type Register struct {
	Request  uint32
	Name     string
	Protos   uint8
	PortLow  uint16
	PortHigh uint16
	// Allow and Deny restrict which public clients the tunnel admits
	// (CIDR prefixes), on top of the relay's own limits.
	Allow []string
	Deny  []string
	// NoLease asks for a tunnel that leaves no port lease behind (see
	// the package doc).
	NoLease bool
	// Paces says the agent keeps to LIMIT.
	Paces bool
}

// Registered grants a tunnel.
type Registered struct {
	Request uint32
	Tunnel  uint32
	Protos  uint8
	Port    uint16
}

// Error refuses a request (Request != 0) or the session (Request == 0).
type Error struct {
	Request uint32
	Code    ErrorCode
	Text    string
}

// Ping asks for a Pong with the same data.
type Ping struct{ Data uint64 }

// Pong answers a Ping.
type Pong struct{ Data uint64 }

// Drain stops new clients for one tunnel, or all of the sender's (0).
type Drain struct{ Tunnel uint32 }

// Closed ends one tunnel of the session for good (relay to agent).
type Closed struct {
	Tunnel uint32
	Code   ErrorCode
	Text   string
}

// Moved says one tunnel of the session now has another public port, and
// why (relay to agent).
type Moved struct {
	Tunnel uint32
	Port   uint16
	Text   string
}

// Limit caps the bytes a second the agent sends on the session (relay to
// agent; 0: no limit).
type Limit struct{ Rate uint64 }

func (*Hello) msgType() byte      { return typeHello }
func (*Challenge) msgType() byte  { return typeChallenge }
func (*Auth) msgType() byte       { return typeAuth }
func (*Welcome) msgType() byte    { return typeWelcome }
func (*Register) msgType() byte   { return typeRegister }
func (*Registered) msgType() byte { return typeRegistered }
func (*Error) msgType() byte      { return typeError }
func (*Ping) msgType() byte       { return typePing }
func (*Pong) msgType() byte       { return typePong }
func (*Drain) msgType() byte      { return typeDrain }
func (*Closed) msgType() byte     { return typeClosed }
func (*Moved) msgType() byte      { return typeMoved }
func (*Limit) msgType() byte      { return typeLimit }

func (m *Hello) encode(e *encoder) {
	e.u16(m.Version)
	e.str(m.Software)
	e.bytes(m.KeyID[:])
	e.bytes(m.Instance[:])
}
func (m *Hello) decode(d *decoder) {
	m.Version = d.u16()
	m.Software = d.str(maxSoftware)
	d.fixed(m.KeyID[:])
	d.fixed(m.Instance[:])
}

func (m *Challenge) encode(e *encoder) { e.u16(m.Version); e.str(m.Software); e.bytes(m.Nonce[:]) }
func (m *Challenge) decode(d *decoder) {
	m.Version = d.u16()
	m.Software = d.str(maxSoftware)
	d.fixed(m.Nonce[:])
}

func (m *Auth) encode(e *encoder) { e.bytes(m.Proof[:]) }
func (m *Auth) decode(d *decoder) { d.fixed(m.Proof[:]) }

func (m *Welcome) encode(e *encoder) { e.str(m.PublicHost) }
func (m *Welcome) decode(d *decoder) { m.PublicHost = d.str(maxHost) }

func (m *Register) encode(e *encoder) {
	e.u32(m.Request)
	e.str(m.Name)
	protos := m.Protos
	if m.NoLease {
		protos |= flagNoLease
	}
	if m.Paces {
		protos |= flagPaces
	}
	e.u8(protos)
	e.u16(m.PortLow)
	e.u16(m.PortHigh)
	e.list(m.Allow)
	e.list(m.Deny)
}
func (m *Register) decode(d *decoder) {
	m.Request = d.u32()
	m.Name = d.str(MaxNameLen)
	protos := d.u8()
	m.Protos, m.NoLease, m.Paces = protos&^(flagNoLease|flagPaces), protos&flagNoLease != 0, protos&flagPaces != 0
	m.PortLow = d.u16()
	m.PortHigh = d.u16()
	m.Allow = d.list(MaxPrefixes, maxPrefixLen)
	m.Deny = d.list(MaxPrefixes, maxPrefixLen)
}

func (m *Registered) encode(e *encoder) {
	e.u32(m.Request)
	e.u32(m.Tunnel)
	e.u8(m.Protos)
	e.u16(m.Port)
}
func (m *Registered) decode(d *decoder) {
	m.Request = d.u32()
	m.Tunnel = d.u32()
	m.Protos = d.u8()
	m.Port = d.u16()
}

func (m *Error) encode(e *encoder) { e.u32(m.Request); e.u16(uint16(m.Code)); e.str(m.Text) }
func (m *Error) decode(d *decoder) {
	m.Request = d.u32()
	m.Code = ErrorCode(d.u16())
	m.Text = d.str(maxErrorText)
}

func (m *Ping) encode(e *encoder)  { e.u64(m.Data) }
func (m *Ping) decode(d *decoder)  { m.Data = d.u64() }
func (m *Pong) encode(e *encoder)  { e.u64(m.Data) }
func (m *Pong) decode(d *decoder)  { m.Data = d.u64() }
func (m *Drain) encode(e *encoder) { e.u32(m.Tunnel) }
func (m *Drain) decode(d *decoder) { m.Tunnel = d.u32() }

func (m *Closed) encode(e *encoder) { e.u32(m.Tunnel); e.u16(uint16(m.Code)); e.str(m.Text) }
func (m *Closed) decode(d *decoder) {
	m.Tunnel = d.u32()
	m.Code = ErrorCode(d.u16())
	m.Text = d.str(maxErrorText)
}

func (m *Limit) encode(e *encoder) { e.u64(m.Rate) }
func (m *Limit) decode(d *decoder) { m.Rate = d.u64() }

func (m *Moved) encode(e *encoder) { e.u32(m.Tunnel); e.u16(m.Port); e.str(m.Text) }
func (m *Moved) decode(d *decoder) {
	m.Tunnel = d.u32()
	m.Port = d.u16()
	m.Text = d.str(maxErrorText)
}

func newMessage(t byte) Message {
	switch t {
	case typeHello:
		return new(Hello)
	case typeChallenge:
		return new(Challenge)
	case typeAuth:
		return new(Auth)
	case typeWelcome:
		return new(Welcome)
	case typeRegister:
		return new(Register)
	case typeRegistered:
		return new(Registered)
	case typeError:
		return new(Error)
	case typePing:
		return new(Ping)
	case typePong:
		return new(Pong)
	case typeDrain:
		return new(Drain)
	case typeClosed:
		return new(Closed)
	case typeMoved:
		return new(Moved)
	case typeLimit:
		return new(Limit)
	}
	return nil
}

// ErrFrame is wrapped by every decoding failure.
var ErrFrame = errors.New("malformed control frame")

// AppendMessage appends m's frame to b. Strings over their bound are an
// error, so nothing undecodable is ever sent.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	e := encoder{b: append(b, m.msgType(), 0, 0)}
	start := len(e.b)
	m.encode(&e)
	n := len(e.b) - start
	if n > MaxControlPayload {
		return b, fmt.Errorf("encoding message type %#x: payload of %d bytes exceeds %d", m.msgType(), n, MaxControlPayload)
	}
	// Decode-check string bounds: cheaper than threading limits through encode.
	if _, err := DecodeMessage(m.msgType(), e.b[start:]); err != nil {
		return b, fmt.Errorf("encoding message type %#x: %w", m.msgType(), err)
	}
	binary.BigEndian.PutUint16(e.b[start-2:], uint16(n))
	return e.b, nil
}

// WriteMessage writes m as one frame.
func WriteMessage(w io.Writer, m Message) error {
	b, err := AppendMessage(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadMessage reads one frame. It never allocates more than
// MaxControlPayload for a frame, whatever the header claims.
func ReadMessage(r io.Reader) (Message, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > MaxControlPayload {
		return nil, fmt.Errorf("%w: payload length %d exceeds %d", ErrFrame, n, MaxControlPayload)
	}
	if newMessage(hdr[0]) == nil {
		return nil, fmt.Errorf("%w: unknown message type %#x", ErrFrame, hdr[0])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: truncated payload: %w", ErrFrame, err)
	}
	return DecodeMessage(hdr[0], p)
}

// DecodeMessage decodes one payload of type t.
func DecodeMessage(t byte, p []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return nil, fmt.Errorf("%w: unknown message type %#x", ErrFrame, t)
	}
	d := decoder{b: p}
	m.decode(&d)
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: type %#x: %w", ErrFrame, t, d.err)
	}
	return m, nil
}

type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)     { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16)   { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32)   { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64)   { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) bytes(p []byte) { e.b = append(e.b, p...) }
func (e *encoder) str(s string)   { e.u16(uint16(min(len(s), 0xffff))); e.b = append(e.b, s...) }
func (e *encoder) list(ss []string) {
	e.u8(uint8(min(len(ss), 0xff)))
	for _, s := range ss {
		e.str(s)
	}
}
func (d *decoder) fail(err error)  { d.err = err; d.b = nil }
func (d *decoder) need(n int) bool { return d.err == nil && len(d.b) >= n }

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if !d.need(n) {
		if d.err == nil {
			d.fail(errors.New("truncated"))
		}
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) fixed(dst []byte) { copy(dst, d.take(len(dst))) }

func (d *decoder) str(limit int) string {
	n := int(d.u16())
	if d.err == nil && n > limit {
		d.fail(fmt.Errorf("string of %d bytes exceeds %d", n, limit))
		return ""
	}
	return string(d.take(n))
}

func (d *decoder) list(maxItems, maxLen int) []string {
	n := int(d.u8())
	if d.err == nil && n > maxItems {
		d.fail(fmt.Errorf("list of %d items exceeds %d", n, maxItems))
		return nil
	}
	var out []string
	for range n {
		s := d.str(maxLen)
		if d.err != nil {
			return nil
		}
		out = append(out, s)
	}
	return out
}

// StreamHeaderVersion is the version byte of StreamHeader.
const StreamHeaderVersion = 1

// DatagramStreamMarker is the first byte of a datagram stream, where a
// StreamHeader would have its version.
const DatagramStreamMarker = 0x44

// MaxDatagram is the largest UDP payload a tunnel carries.
const MaxDatagram = 65507

// Stream status bytes, the agent's first byte on each stream.
const (
	StatusConnected   = 0
	StatusUnreachable = 1
)

// StreamHeader starts every stream the relay opens for a client.
type StreamHeader struct {
	Tunnel uint32
	Client netip.AddrPort
}

// maxStreamHeader is the header's size with an IPv6 address.
const maxStreamHeader = 1 + 4 + 1 + 16 + 2

// AppendStreamHeader appends h's encoding to b.
func AppendStreamHeader(b []byte, h StreamHeader) []byte {
	b = append(b, StreamHeaderVersion)
	b = binary.BigEndian.AppendUint32(b, h.Tunnel)
	ip := h.Client.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
	} else {
		b = append(b, 6)
		ip = netip.AddrFrom16(ip.As16())
	}
	b = append(b, ip.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, h.Client.Port())
}

// ReadStreamHeader reads a StreamHeader from r.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return StreamHeader{}, fmt.Errorf("reading stream header: %w", err)
	}
	return readStreamHeaderAfter(r, b[0])
}

// readStreamHeaderAfter reads the rest of a StreamHeader whose first byte,
// already read, is first.
func readStreamHeaderAfter(r io.Reader, first byte) (StreamHeader, error) {
	var b [maxStreamHeader]byte
	b[0] = first
	if _, err := io.ReadFull(r, b[1:6]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return StreamHeader{}, fmt.Errorf("reading stream header: %w", err)
	}
	if b[0] != StreamHeaderVersion {
		return StreamHeader{}, fmt.Errorf("%w: stream header version %d, want %d", ErrFrame, b[0], StreamHeaderVersion)
	}
	var ipLen int
	switch b[5] {
	case 4:
		ipLen = 4
	case 6:
		ipLen = 16
	default:
		return StreamHeader{}, fmt.Errorf("%w: stream header address family %d", ErrFrame, b[5])
	}
	rest := b[6 : 6+ipLen+2]
	if _, err := io.ReadFull(r, rest); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header has begun: EOF here is not a clean close
		}
		return StreamHeader{}, fmt.Errorf("reading stream header: %w", err)
	}
	ip, _ := netip.AddrFromSlice(rest[:ipLen])
	ip = ip.Unmap() // the canonical form, as AppendStreamHeader sends it
	return StreamHeader{
		Tunnel: binary.BigEndian.Uint32(b[1:5]),
		Client: netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rest[ipLen:])),
	}, nil
}

// ParseDatagram splits a tunnel datagram into its header and payload. The
// payload aliases p.
func ParseDatagram(p []byte) (StreamHeader, []byte, error) {
	if len(p) < 6 {
		return StreamHeader{}, nil, fmt.Errorf("%w: datagram of %d bytes is shorter than its header", ErrFrame, len(p))
	}
	if p[0] != StreamHeaderVersion {
		return StreamHeader{}, nil, fmt.Errorf("%w: datagram header version %d, want %d", ErrFrame, p[0], StreamHeaderVersion)
	}
	var ipLen int
	switch p[5] {
	case 4:
		ipLen = 4
	case 6:
		ipLen = 16
	default:
		return StreamHeader{}, nil, fmt.Errorf("%w: datagram header address family %d", ErrFrame, p[5])
	}
	n := 6 + ipLen + 2
	if len(p) < n {
		return StreamHeader{}, nil, fmt.Errorf("%w: datagram of %d bytes is shorter than its header", ErrFrame, len(p))
	}
	ip, _ := netip.AddrFromSlice(p[6 : 6+ipLen])
	return StreamHeader{
		Tunnel: binary.BigEndian.Uint32(p[1:5]),
		Client: netip.AddrPortFrom(ip.Unmap(), binary.BigEndian.Uint16(p[6+ipLen:])),
	}, p[n:], nil
}
