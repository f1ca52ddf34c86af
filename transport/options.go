package transport

import (
	"errors"
	"time"
)

// Options tunes both transports. The zero value is not valid; start from
// DefaultOptions.
type Options struct {
	// HandshakeTimeout bounds the TCP+TLS or QUIC handshake, and on the
	// server side the wait for the smux signal stream.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a session that received nothing for this long.
	// Keep-alives are sent every KeepAlive, so a live but quiet peer stays.
	IdleTimeout time.Duration
	KeepAlive   time.Duration
	// MaxHandshakes caps TCP sessions in handshake on a listener; more are
	// closed at once. (quic-go bounds its own handshake queue.)
	MaxHandshakes int
	// MaxIncomingStreams caps streams the peer may have open at once.
	MaxIncomingStreams int
	// StreamWindow is the most a stream buffers unread (per direction).
	StreamWindow int
	// SessionWindow is the most a session buffers unread, all streams
	// together.
	SessionWindow int
	// DatagramQueue is how many received datagrams wait for
	// ReceiveDatagram before new ones are dropped; on TLS+smux, also at
	// most 2 KiB each on average (2 MiB for the default 1024).
	DatagramQueue int
	// ResetKey, on a QUIC listener, derives the stateless-reset tokens it
	// hands out. A server that restarts with the same key answers packets
	// of sessions it lost with a reset, so peers notice at once rather than
	// at the idle timeout. Empty: a random key per listener. See ResetKey.
	ResetKey []byte

	// plainTLS makes a TLS+smux dialer or listener behave as builds before
	// records (records.go) did, for the tests that check the two meet.
	plainTLS bool
	// noAborts makes a TLS+smux dialer or listener offer or serve records
	// without ABORT, as builds before it did.
	noAborts bool
}

// DefaultOptions are tuned for a relay on a public link: dead peers are found
// within IdleTimeout, and one stream can fill a fast long path.
func DefaultOptions() Options {
	return Options{
		HandshakeTimeout:   10 * time.Second,
		IdleTimeout:        15 * time.Second,
		KeepAlive:          5 * time.Second,
		MaxHandshakes:      256,
		MaxIncomingStreams: 65536,
		StreamWindow:       4 << 20,
		SessionWindow:      64 << 20,
		DatagramQueue:      1024,
	}
}

// Validate reports the first setting out of range.
func (o Options) Validate() error {
	switch {
	case o.HandshakeTimeout <= 0:
		return errors.New("transport: handshake timeout must be positive")
	case o.IdleTimeout <= 0:
		return errors.New("transport: idle timeout must be positive")
	case o.KeepAlive <= 0 || o.KeepAlive >= o.IdleTimeout:
		return errors.New("transport: keep-alive must be positive and shorter than the idle timeout")
	case o.MaxHandshakes <= 0:
		return errors.New("transport: max handshakes must be positive")
	case o.MaxIncomingStreams <= 0:
		return errors.New("transport: max incoming streams must be positive")
	case o.StreamWindow < 64<<10 || o.StreamWindow > 1<<30:
		return errors.New("transport: stream window must be between 64 KiB and 1 GiB")
	case o.SessionWindow < o.StreamWindow || o.SessionWindow > 1<<30:
		return errors.New("transport: session window must be between the stream window and 1 GiB")
	case o.DatagramQueue <= 0:
		return errors.New("transport: datagram queue must be positive")
	}
	return nil
}
