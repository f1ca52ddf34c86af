package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
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
