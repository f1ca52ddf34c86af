package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/relaytun/relay/transport"
)

// dgramLink sends tunnel datagrams on one session: as transport datagrams
// when they fit the path, else whole on the session's datagram stream.
type dgramLink struct {
	sess transport.Session

	mu  sync.Mutex
	out transport.Stream
	buf []byte
}

func newDgramLink(sess transport.Session) *dgramLink { return &dgramLink{sess: sess} }

// dgramStreamWait bounds how long a large datagram may wait for the
// datagram stream: a datagram late by more is worth less than the ones
// behind it.
const dgramStreamWait = 250 * time.Millisecond

// send sends one tunnel datagram (header and payload).
func (l *dgramLink) send(p []byte) error {
	err := l.sess.SendDatagram(p)
	if err == nil {
		return nil // no errors.As on the hot path: it allocates
	}
	var tooLarge *transport.DatagramTooLargeError
	if !errors.As(err, &tooLarge) {
		return err
	}
	return l.sendOnStream(p)
}

func (l *dgramLink) sendOnStream(p []byte) error {
	if len(p) > 0xffff {
		return fmt.Errorf("datagram of %d bytes exceeds %d", len(p), 0xffff)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out == nil {
		ctx, cancel := context.WithTimeout(context.Background(), dgramStreamWait)
		st, err := l.sess.OpenStream(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("opening the datagram stream: %w", err)
		}
		if _, err := st.Write([]byte{DatagramStreamMarker}); err != nil {
			st.Close()
			return fmt.Errorf("opening the datagram stream: %w", err)
		}
		l.out = st
	}
	// One write per frame: the length and the datagram travel together.
	// A peer that does not keep up costs this datagram, not the sender's
	// whole read loop: after a short wait it is dropped, and the stream,
	// which may hold half a frame, is closed (the next one opens afresh).
	l.buf = binary.BigEndian.AppendUint16(l.buf[:0], uint16(len(p)))
	l.buf = append(l.buf, p...)
	l.out.SetWriteDeadline(time.Now().Add(dgramStreamWait))
	if _, err := l.out.Write(l.buf); err != nil {
		l.out.Close()
		l.out = nil
		return fmt.Errorf("writing to the datagram stream: %w", err)
	}
	return nil
}

func (l *dgramLink) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out != nil {
		l.out.Close()
		l.out = nil
	}
}

// readDatagramStream reads len:2 | datagram frames from r (its marker byte
// already read) and hands each to deliver, until r ends.
func readDatagramStream(r io.Reader, deliver func([]byte)) error {
	buf := make([]byte, 0xffff)
	var n [2]byte
	for {
		if _, err := io.ReadFull(r, n[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		p := buf[:binary.BigEndian.Uint16(n[:])]
		if _, err := io.ReadFull(r, p); err != nil {
			return fmt.Errorf("%w: truncated datagram on the datagram stream: %w", ErrFrame, err)
		}
		deliver(p)
	}
}
