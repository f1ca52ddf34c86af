// Package transport is the one seam between the tunnel protocol and the wire.
//
// An agent holds one Session to the relay. A Session multiplexes reliable,
// ordered, flow-controlled Streams (one per public client connection, plus the
// control stream) and unreliable datagrams. Two implementations exist:
//
//   - QUIC (quic-go): streams are QUIC streams, datagrams are RFC 9221
//     DATAGRAM frames.
//   - TLS 1.3 + smux v2 over TCP, for networks that block UDP: streams are
//     smux streams; datagrams and stream resets travel on an internal signal
//     stream (see tcp.go for its framing).
//
// Both listen on the same port number (UDP for QUIC, TCP for TLS), both use the
// same certificate, and both expose TLS keying material so the tunnel layer can
// bind authentication to the TLS session.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
)

// Stream is one bidirectional byte stream inside a Session.
//
// CloseWrite sends EOF to the peer and keeps the read side open. Close closes
// both directions on both transports: data already written is still delivered,
// the peer's further writes fail, and local Reads and Writes unblock.
type Stream interface {
	net.Conn
	CloseWrite() error
	// Abort ends both directions at once, as Close does, but tells the
	// peer that the stream failed: the peer's reads return ErrAborted
	// rather than reaching EOF, and data not yet delivered may be lost.
	// A relay uses it so that a connection cut on one side is not taken
	// for a complete one on the other. Over TLS+smux with a peer from
	// before ABORT (tcp.go) it is Close.
	Abort() error
}

// BufferWriter is a Stream that can send straight from the caller's
// buffer. TLS+smux's Write copies p first, since smux may still read a
// frame queued when a deadline fired or the session ended after Write has
// returned; WriteBuffer does not, so after it returns an error the caller
// must not reuse p (drop it rather than pool it). After it returns nil, p
// is the caller's again. QUIC's Write copies nothing of its own already.
type BufferWriter interface {
	WriteBuffer(p []byte) (int, error)
}

// Session is one authenticated-or-not TLS session between an agent and a relay.
type Session interface {
	// OpenStream opens a new stream. Over QUIC it blocks while the peer's
	// stream limit (Options.MaxIncomingStreams) is reached; TLS+smux has no
	// stream credit, so there the peer resets a stream over its limit and
	// the stream's writes fail.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for the next stream opened by the peer.
	AcceptStream(ctx context.Context) (Stream, error)
	// SendDatagram sends one unreliable message. It fails with a
	// *DatagramTooLargeError when p cannot travel as one datagram.
	SendDatagram(p []byte) error
	// ReceiveDatagram waits for the next datagram.
	ReceiveDatagram(ctx context.Context) ([]byte, error)
	// ExportKeyingMaterial returns RFC 5705 keying material from the
	// session's TLS state, for channel binding.
	ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error)
	// ConnectionState returns the TLS state (ALPN, peer certificates).
	ConnectionState() tls.ConnectionState
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// Kind names the transport: "quic" or "tcp".
	Kind() string
	// CloseWithError closes the session and every stream, sending code and
	// reason to the peer where the transport can.
	CloseWithError(code uint64, reason string) error
	Close() error
	// Done is closed once the session is closed, by either side.
	Done() <-chan struct{}
}

// Listener accepts sessions.
type Listener interface {
	Accept(ctx context.Context) (Session, error)
	Addr() net.Addr
	Close() error
}

// Dialer opens sessions to a relay.
type Dialer interface {
	Dial(ctx context.Context, addr string) (Session, error)
	Kind() string
}

// Transport kinds.
const (
	KindQUIC = "quic"
	KindTCP  = "tcp"
)

// ALPNPrefix starts every ALPN value this project uses; the tunnel protocol
// version follows it ("relay/1").
const ALPNPrefix = "relay/"

// ErrClosed is returned by operations on a closed session or listener.
var ErrClosed = net.ErrClosed

// ErrAborted is what reads of a stream return once the peer aborted it
// (Stream.Abort). It wraps net.ErrClosed.
var ErrAborted = fmt.Errorf("stream aborted by the peer: %w", net.ErrClosed)

// DatagramTooLargeError reports a datagram that cannot be sent as one unit on
// the session's current path.
type DatagramTooLargeError struct {
	Size, Max int
}

func (e *DatagramTooLargeError) Error() string {
	return fmt.Sprintf("datagram of %d bytes exceeds the path's limit of %d", e.Size, e.Max)
}

// IsClosed reports whether err means the session or stream is gone, as
// opposed to a failure worth logging.
func IsClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}
