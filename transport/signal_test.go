package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func signalFrame(typ byte, payload []byte) []byte {
	b := []byte{typ, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(payload)))
	return append(b, payload...)
}

func TestReadSignal(t *testing.T) {
	buf := make([]byte, MaxTCPDatagram)
	for _, tt := range []struct {
		name    string
		in      []byte
		typ     byte
		payload []byte
		err     string
	}{
		{"reset", signalFrame(sigReset, []byte{0, 0, 0, 7}), sigReset, []byte{0, 0, 0, 7}, ""},
		{"fin", signalFrame(sigFIN, []byte{0, 0, 1, 0}), sigFIN, []byte{0, 0, 1, 0}, ""},
		{"empty datagram", signalFrame(sigDatagram, nil), sigDatagram, []byte{}, ""},
		{"largest datagram", signalFrame(sigDatagram, bytes.Repeat([]byte{9}, MaxTCPDatagram)), sigDatagram, bytes.Repeat([]byte{9}, MaxTCPDatagram), ""},
		{"reset too long", signalFrame(sigReset, []byte{0, 0, 0, 0, 1}), 0, nil, "malformed signal frame: type 1 with 5 payload bytes"},
		{"fin too short", signalFrame(sigFIN, []byte{0}), 0, nil, "malformed signal frame: type 3 with 1 payload bytes"},
		{"unknown type", signalFrame(9, nil), 0, nil, "malformed signal frame: unknown type 9"},
		{"truncated payload", signalFrame(sigDatagram, []byte{1, 2, 3})[:5], 0, nil, "malformed signal frame: truncated: unexpected EOF"},
		{"truncated header", []byte{sigDatagram, 0}, 0, nil, "unexpected EOF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			typ, p, err := readSignal(bytes.NewReader(tt.in), buf)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || typ != tt.typ || !bytes.Equal(p, tt.payload) {
				t.Fatalf("got %d %x %v, want %d %x", typ, p, err, tt.typ, tt.payload)
			}
		})
	}
}

// FuzzReadSignal: any bytes on the signal stream either decode to a frame
// that re-encodes to the bytes read, or fail without panicking.
func FuzzReadSignal(f *testing.F) {
	f.Add(signalFrame(sigReset, []byte{0, 0, 0, 1}))
	f.Add(signalFrame(sigFIN, []byte{0, 0, 0, 2}))
	f.Add(signalFrame(sigDatagram, []byte("hello")))
	f.Add([]byte{sigDatagram, 0xff, 0xff})
	f.Add([]byte{7, 0, 0})
	buf := make([]byte, MaxTCPDatagram)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		typ, p, err := readSignal(r, buf)
		if err != nil {
			if !errors.Is(err, errSignal) && err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		consumed := len(data) - r.Len()
		if got := signalFrame(typ, p); !bytes.Equal(got, data[:consumed]) {
			t.Fatalf("re-encoded %x, read %x", got, data[:consumed])
		}
	})
}

// TestSignalBeforeOwnStreamRegistered: smux sends a stream's SYN inside
// OpenStream, before the session registers the stream, so the peer's RESET
// (a peer over its stream limit resets at once) can arrive first. It must
// still reach the stream: a writer that missed it wrote into a stream the
// peer had dropped, with every write succeeding. Either side opens streams,
// so both are checked; the signal is delivered by hand, in the order the
// race produces.
func TestSignalBeforeOwnStreamRegistered(t *testing.T) {
	c, s := newPair(t, KindTCP)
	for _, side := range []struct {
		name string
		sess *smuxSession
	}{{"client", c.(*smuxSession)}, {"server", s.(*smuxSession)}} {
		t.Run(side.name, func(t *testing.T) {
			sess := side.sess
			sess.mu.Lock()
			next := sess.maxOwnID + 2 // smux numbers each side's streams in steps of 2
			sess.mu.Unlock()
			sess.handleStreamSignal(next, sigReset)

			st, err := sess.OpenStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if id := st.(*smuxStream).st.ID(); id != next {
				t.Fatalf("opened stream %d, want %d", id, next)
			}
			err = within(t, 5*time.Second, "writing to a reset stream", func() error {
				_, err := st.Write([]byte("x"))
				return err
			})
			if !errors.Is(err, net.ErrClosed) || !strings.Contains(fmt.Sprint(err), "reset by peer") {
				t.Fatalf("write after the peer's early RESET: %v; want stream reset by peer", err)
			}

			// A late signal for a stream already forgotten is dropped,
			// not kept for a stream that will never come.
			st.Close()
			sess.handleStreamSignal(next, sigFIN)
			sess.mu.Lock()
			_, kept := sess.early[next]
			sess.mu.Unlock()
			if kept {
				t.Fatalf("a signal for closed stream %d was kept as early", next)
			}
		})
	}
}
