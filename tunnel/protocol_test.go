package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// The wire helpers below build frames by hand from the layout in the package
// doc, independently of encoder, so the tests pin the documented format
// rather than whatever the encoder happens to produce.

func wireCat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func wireU8(v uint8) []byte   { return []byte{v} }
func wireU16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func wireU32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func wireU64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// wireStr is str = len:2 | bytes.
func wireStr(s string) []byte { return wireCat(wireU16(uint16(len(s))), []byte(s)) }

// wireFrame is type:1 | length:2 | payload; the length is the payload's own.
func wireFrame(typ byte, payload []byte) []byte {
	return wireCat([]byte{typ}, wireU16(uint16(len(payload))), payload)
}

// wirePattern returns n distinct-looking bytes starting at seed.
func wirePattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)*7
	}
	return b
}

type messageCase struct {
	name    string
	typ     byte
	msg     Message
	payload []byte // built by hand from the documented layout
}

// messageCases covers every message type, with every string field empty, at
// an ordinary length and exactly at its bound.
func messageCases() []messageCase {
	key := [keyIDLen]byte(wirePattern(keyIDLen, 1))
	nonce := [nonceLen]byte(wirePattern(nonceLen, 2))
	proof := [proofLen]byte(wirePattern(proofLen, 3))
	inst := [instanceLen]byte(wirePattern(instanceLen, 4))
	sw64 := strings.Repeat("s", maxSoftware)
	host255 := strings.Repeat("h", maxHost)
	name63 := strings.Repeat("n", MaxNameLen)
	text512 := strings.Repeat("t", maxErrorText)

	return []messageCase{
		{"hello", 0x01,
			&Hello{Version: 1, Software: "relay 1.2.3", KeyID: key, Instance: inst},
			wireCat(wireU16(1), wireStr("relay 1.2.3"), key[:], inst[:])},
		{"hello/empty", 0x01,
			&Hello{},
			wireCat(wireU16(0), wireStr(""), make([]byte, keyIDLen+instanceLen))},
		{"hello/software-at-bound", 0x01,
			&Hello{Version: 0xffff, Software: sw64, KeyID: key},
			wireCat(wireU16(0xffff), wireStr(sw64), key[:], make([]byte, instanceLen))},
		{"challenge", 0x02,
			&Challenge{Version: 1, Software: "relay 1.2.3", Nonce: nonce},
			wireCat(wireU16(1), wireStr("relay 1.2.3"), nonce[:])},
		{"challenge/software-at-bound", 0x02,
			&Challenge{Version: 7, Software: sw64, Nonce: nonce},
			wireCat(wireU16(7), wireStr(sw64), nonce[:])},
		{"auth", 0x03,
			&Auth{Proof: proof},
			proof[:]},
		{"auth/zero", 0x03,
			&Auth{},
			make([]byte, proofLen)},
		{"welcome", 0x04,
			&Welcome{PublicHost: "relay.example.com"},
			wireStr("relay.example.com")},
		{"welcome/empty", 0x04,
			&Welcome{},
			wireStr("")},
		{"welcome/not-utf8", 0x04,
			&Welcome{PublicHost: "\xff\x00\xfe"},
			wireStr("\xff\x00\xfe")},
		{"welcome/host-at-bound", 0x04,
			&Welcome{PublicHost: host255},
			wireStr(host255)},
		{"register/any-port", 0x05,
			&Register{Request: 1, Name: "web", Protos: ProtoTCP},
			wireCat(wireU32(1), wireStr("web"), wireU8(ProtoTCP), wireU16(0), wireU16(0), wireU8(0), wireU8(0))},
		{"register/lists", 0x05,
			&Register{Request: 3, Name: "web", Protos: ProtoTCP, Allow: []string{"10.0.0.0/8", "::1/128"}, Deny: []string{"10.1.0.0/16"}},
			wireCat(wireU32(3), wireStr("web"), wireU8(ProtoTCP), wireU16(0), wireU16(0),
				wireU8(2), wireStr("10.0.0.0/8"), wireStr("::1/128"), wireU8(1), wireStr("10.1.0.0/16"))},
		{"register/name-at-bound", 0x05,
			&Register{Request: 0xffffffff, Name: name63, Protos: ProtoTCP | ProtoUDP, PortLow: 20000, PortHigh: 29999},
			wireCat(wireU32(0xffffffff), wireStr(name63), wireU8(3), wireU16(20000), wireU16(29999), wireU8(0), wireU8(0))},
		{"register/no-lease", 0x05,
			&Register{Request: 4, Name: "bench-1", Protos: ProtoTCP | ProtoUDP, NoLease: true},
			wireCat(wireU32(4), wireStr("bench-1"), wireU8(0x83), wireU16(0), wireU16(0), wireU8(0), wireU8(0))},
		{"register/paces", 0x05,
			&Register{Request: 5, Name: "web", Protos: ProtoTCP, NoLease: true, Paces: true},
			wireCat(wireU32(5), wireStr("web"), wireU8(0xc1), wireU16(0), wireU16(0), wireU8(0), wireU8(0))},
		{"register/empty-name", 0x05,
			&Register{Request: 2, PortLow: 65535, PortHigh: 65535},
			wireCat(wireU32(2), wireStr(""), wireU8(0), wireU16(65535), wireU16(65535), wireU8(0), wireU8(0))},
		{"registered", 0x06,
			&Registered{Request: 7, Tunnel: 0xdeadbeef, Protos: ProtoUDP, Port: 65535},
			wireCat(wireU32(7), wireU32(0xdeadbeef), wireU8(ProtoUDP), wireU16(65535))},
		{"registered/zero", 0x06,
			&Registered{},
			make([]byte, 4+4+1+2)},
		{"error/session", 0x07,
			&Error{Code: CodeUnauthorized, Text: "unknown token"},
			wireCat(wireU32(0), wireU16(3), wireStr("unknown token"))},
		{"error/empty-text", 0x07,
			&Error{Request: 9, Code: CodePortTaken},
			wireCat(wireU32(9), wireU16(5), wireStr(""))},
		{"error/text-at-bound", 0x07,
			&Error{Request: 0xffffffff, Code: 0xffff, Text: text512},
			wireCat(wireU32(0xffffffff), wireU16(0xffff), wireStr(text512))},
		{"ping", 0x08,
			&Ping{Data: 0x0102030405060708},
			wireU64(0x0102030405060708)},
		{"ping/zero", 0x08,
			&Ping{},
			wireU64(0)},
		{"pong", 0x09,
			&Pong{Data: 0xffffffffffffffff},
			wireU64(0xffffffffffffffff)},
		{"drain/all", 0x0a,
			&Drain{},
			wireU32(0)},
		{"drain", 0x0a,
			&Drain{Tunnel: 0x01020304},
			wireU32(0x01020304)},
		{"closed", 0x0b,
			&Closed{Tunnel: 7, Code: CodeForbidden, Text: "no longer allowed"},
			wireCat(wireU32(7), wireU16(uint16(CodeForbidden)), wireStr("no longer allowed"))},
		{"closed/text-at-bound", 0x0b,
			&Closed{Tunnel: 0xffffffff, Code: 0xffff, Text: text512},
			wireCat(wireU32(0xffffffff), wireU16(0xffff), wireStr(text512))},
		{"moved", 0x0c,
			&Moved{Tunnel: 7, Port: 40001, Text: "port 40000 is no longer among the relay's ports"},
			wireCat(wireU32(7), wireU16(40001), wireStr("port 40000 is no longer among the relay's ports"))},
		{"moved/text-at-bound", 0x0c,
			&Moved{Tunnel: 0xffffffff, Port: 0xffff, Text: text512},
			wireCat(wireU32(0xffffffff), wireU16(0xffff), wireStr(text512))},
		{"limit", 0x0d,
			&Limit{Rate: 1_250_000},
			wireU64(1_250_000)},
		{"limit/none", 0x0d,
			&Limit{},
			wireU64(0)},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, tc := range messageCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := wireFrame(tc.typ, tc.payload)

			got, err := AppendMessage(nil, tc.msg)
			if err != nil {
				t.Fatalf("AppendMessage: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendMessage = %x, want %x", got, want)
			}

			prefix := []byte("prefix")
			got, err = AppendMessage(prefix, tc.msg)
			if err != nil {
				t.Fatalf("AppendMessage with prefix: %v", err)
			}
			if !bytes.Equal(got, wireCat(prefix, want)) {
				t.Fatalf("AppendMessage with prefix = %x, want %x", got, wireCat(prefix, want))
			}

			m, err := DecodeMessage(tc.typ, tc.payload)
			if err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			if !reflect.DeepEqual(m, tc.msg) {
				t.Fatalf("DecodeMessage = %#v, want %#v", m, tc.msg)
			}

			var buf bytes.Buffer
			if err := WriteMessage(&buf, tc.msg); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("WriteMessage wrote %x, want %x", buf.Bytes(), want)
			}
			m, err = ReadMessage(&buf)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if !reflect.DeepEqual(m, tc.msg) {
				t.Fatalf("ReadMessage = %#v, want %#v", m, tc.msg)
			}
			if buf.Len() != 0 {
				t.Fatalf("ReadMessage left %d bytes unread", buf.Len())
			}
		})
	}
}

// TestReadMessageShortReads reads frames through readers that hand out a
// few bytes at a time, as a stream may.
func TestReadMessageShortReads(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	}
	for rname, wrap := range readers {
		for _, tc := range messageCases() {
			t.Run(rname+"/"+tc.name, func(t *testing.T) {
				m, err := ReadMessage(wrap(bytes.NewReader(wireFrame(tc.typ, tc.payload))))
				if err != nil {
					t.Fatalf("ReadMessage: %v", err)
				}
				if !reflect.DeepEqual(m, tc.msg) {
					t.Fatalf("ReadMessage = %#v, want %#v", m, tc.msg)
				}
			})
		}
	}
}

// TestReadMessageSequence reads back-to-back frames, then a clean io.EOF.
func TestReadMessageSequence(t *testing.T) {
	cases := messageCases()
	var buf bytes.Buffer
	for _, tc := range cases {
		if err := WriteMessage(&buf, tc.msg); err != nil {
			t.Fatalf("WriteMessage(%s): %v", tc.name, err)
		}
	}
	for _, tc := range cases {
		m, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("ReadMessage(%s): %v", tc.name, err)
		}
		if !reflect.DeepEqual(m, tc.msg) {
			t.Fatalf("ReadMessage = %#v, want %#v", m, tc.msg)
		}
	}
	if m, err := ReadMessage(&buf); err != io.EOF {
		t.Fatalf("ReadMessage at end = %v, %v; want nil, io.EOF", m, err)
	}
}

// TestAppendMessageOverBound checks that nothing undecodable is ever encoded:
// a string one byte over its bound, or a payload over MaxControlPayload, is
// an error and leaves the buffer as it was.
func TestAppendMessageOverBound(t *testing.T) {
	tests := []struct {
		name    string
		msg     Message
		wantErr string
	}{
		{"hello/software", &Hello{Software: strings.Repeat("s", maxSoftware+1)},
			"encoding message type 0x1: malformed control frame: type 0x1: string of 65 bytes exceeds 64"},
		{"challenge/software", &Challenge{Software: strings.Repeat("s", maxSoftware+1)},
			"encoding message type 0x2: malformed control frame: type 0x2: string of 65 bytes exceeds 64"},
		{"welcome/host", &Welcome{PublicHost: strings.Repeat("h", maxHost+1)},
			"encoding message type 0x4: malformed control frame: type 0x4: string of 256 bytes exceeds 255"},
		{"register/name", &Register{Name: strings.Repeat("n", MaxNameLen+1)},
			"encoding message type 0x5: malformed control frame: type 0x5: string of 64 bytes exceeds 63"},
		{"error/text", &Error{Text: strings.Repeat("t", maxErrorText+1)},
			"encoding message type 0x7: malformed control frame: type 0x7: string of 513 bytes exceeds 512"},
		{"error/text-over-payload", &Error{Text: strings.Repeat("t", 2000)},
			"encoding message type 0x7: payload of 2008 bytes exceeds 1024"},
		// Longer than a str length field can say: must not wrap around.
		{"welcome/host-over-64k", &Welcome{PublicHost: strings.Repeat("h", 0x10000+3)},
			"encoding message type 0x4: payload of 65541 bytes exceeds 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			b, err := AppendMessage(prefix, tt.msg)
			if err == nil {
				t.Fatalf("AppendMessage succeeded with %x", b)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("AppendMessage error = %q, want %q", err, tt.wantErr)
			}
			if !bytes.Equal(b, prefix) {
				t.Errorf("AppendMessage returned %q on error, want the input %q", b, prefix)
			}

			var buf bytes.Buffer
			if err := WriteMessage(&buf, tt.msg); err == nil || err.Error() != tt.wantErr {
				t.Errorf("WriteMessage error = %v, want %q", err, tt.wantErr)
			}
			if buf.Len() != 0 {
				t.Errorf("WriteMessage wrote %d bytes on error", buf.Len())
			}
		})
	}
}

// TestDecodeMessageOverBound hand-builds frames with each string one byte
// over its bound; the decoders must refuse them.
func TestDecodeMessageOverBound(t *testing.T) {
	key := make([]byte, keyIDLen)
	nonce := make([]byte, nonceLen)
	tests := []struct {
		name    string
		typ     byte
		payload []byte
		wantErr string
	}{
		{"hello/software", 0x01,
			wireCat(wireU16(1), wireStr(strings.Repeat("s", maxSoftware+1)), key),
			"malformed control frame: type 0x1: string of 65 bytes exceeds 64"},
		{"challenge/software", 0x02,
			wireCat(wireU16(1), wireStr(strings.Repeat("s", maxSoftware+1)), nonce),
			"malformed control frame: type 0x2: string of 65 bytes exceeds 64"},
		{"welcome/host", 0x04,
			wireStr(strings.Repeat("h", maxHost+1)),
			"malformed control frame: type 0x4: string of 256 bytes exceeds 255"},
		{"register/name", 0x05,
			wireCat(wireU32(1), wireStr(strings.Repeat("n", MaxNameLen+1)), wireU8(1), wireU16(0), wireU16(0), wireU8(0), wireU8(0)),
			"malformed control frame: type 0x5: string of 64 bytes exceeds 63"},
		{"register/too-many-prefixes", 0x05,
			wireCat(wireU32(1), wireStr("a"), wireU8(1), wireU16(0), wireU16(0), wireU8(MaxPrefixes+1)),
			"malformed control frame: type 0x5: list of 17 items exceeds 16"},
		{"register/prefix-too-long", 0x05,
			wireCat(wireU32(1), wireStr("a"), wireU8(1), wireU16(0), wireU16(0), wireU8(1), wireStr(strings.Repeat("1", maxPrefixLen+1)), wireU8(0)),
			"malformed control frame: type 0x5: string of 50 bytes exceeds 49"},
		{"error/text", 0x07,
			wireCat(wireU32(1), wireU16(1), wireStr(strings.Repeat("t", maxErrorText+1))),
			"malformed control frame: type 0x7: string of 513 bytes exceeds 512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMessage(tt.typ, tt.payload)
			checkFrameErr(t, "DecodeMessage", m, err, tt.wantErr)
			m, err = ReadMessage(bytes.NewReader(wireFrame(tt.typ, tt.payload)))
			checkFrameErr(t, "ReadMessage", m, err, tt.wantErr)
		})
	}
}

func checkFrameErr(t *testing.T, fn string, m Message, err error, wantErr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s = %#v, want error %q", fn, m, wantErr)
	}
	if m != nil {
		t.Errorf("%s returned %#v with its error", fn, m)
	}
	if !errors.Is(err, ErrFrame) {
		t.Errorf("%s error %q does not wrap ErrFrame", fn, err)
	}
	if err.Error() != wantErr {
		t.Errorf("%s error = %q, want %q", fn, err, wantErr)
	}
}

func TestReadMessageErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		wantErr string
		wantIs  []error
		notIs   []error
	}{
		{"empty", nil,
			"EOF", []error{io.EOF}, []error{ErrFrame}},
		{"header/1-byte", []byte{typePing},
			"unexpected EOF", []error{io.ErrUnexpectedEOF}, []error{ErrFrame}},
		{"header/2-bytes", []byte{typePing, 0},
			"unexpected EOF", []error{io.ErrUnexpectedEOF}, []error{ErrFrame}},
		{"unknown-type/0x00", wireFrame(0x00, nil),
			"malformed control frame: unknown message type 0x0", []error{ErrFrame}, nil},
		{"unknown-type/0x0e", wireFrame(0x0e, wireU64(1)),
			"malformed control frame: unknown message type 0xe", []error{ErrFrame}, nil},
		{"unknown-type/0xff", wireFrame(0xff, nil),
			"malformed control frame: unknown message type 0xff", []error{ErrFrame}, nil},
		{"length/one-over", wireCat([]byte{typeWelcome}, wireU16(MaxControlPayload+1), make([]byte, MaxControlPayload+1)),
			"malformed control frame: payload length 1025 exceeds 1024", []error{ErrFrame}, nil},
		{"length/max-uint16", wireCat([]byte{typePing}, wireU16(0xffff)),
			"malformed control frame: payload length 65535 exceeds 1024", []error{ErrFrame}, nil},
		// At exactly MaxControlPayload the length passes; the string bound
		// then refuses it.
		{"length/at-bound", wireFrame(typeWelcome, wireStr(strings.Repeat("h", MaxControlPayload-2))),
			"malformed control frame: type 0x4: string of 1022 bytes exceeds 255", []error{ErrFrame}, nil},
		{"truncated/no-payload", wireCat([]byte{typePing}, wireU16(8)),
			"malformed control frame: truncated payload: unexpected EOF", []error{ErrFrame, io.ErrUnexpectedEOF}, nil},
		{"truncated/part-payload", wireCat([]byte{typePing}, wireU16(8), []byte{1, 2, 3}),
			"malformed control frame: truncated payload: unexpected EOF", []error{ErrFrame, io.ErrUnexpectedEOF}, nil},
		{"truncated/string", wireCat([]byte{typeWelcome}, wireU16(20), wireStr("example.com")),
			"malformed control frame: truncated payload: unexpected EOF", []error{ErrFrame, io.ErrUnexpectedEOF}, nil},
		{"short/ping", wireFrame(typePing, make([]byte, 7)),
			"malformed control frame: type 0x8: truncated", []error{ErrFrame}, nil},
		{"short/auth", wireFrame(typeAuth, make([]byte, proofLen-1)),
			"malformed control frame: type 0x3: truncated", []error{ErrFrame}, nil},
		{"short/empty-registered", wireFrame(typeRegistered, nil),
			"malformed control frame: type 0x6: truncated", []error{ErrFrame}, nil},
		{"trailing/ping", wireFrame(typePing, make([]byte, 9)),
			"malformed control frame: type 0x8: 1 trailing bytes", []error{ErrFrame}, nil},
		{"trailing/welcome", wireFrame(typeWelcome, wireCat(wireStr("a"), []byte("xyz"))),
			"malformed control frame: type 0x4: 3 trailing bytes", []error{ErrFrame}, nil},
		{"string-past-payload/welcome", wireFrame(typeWelcome, wireCat(wireU16(10), []byte("abc"))),
			"malformed control frame: type 0x4: truncated", []error{ErrFrame}, nil},
		{"string-past-payload/hello", wireFrame(typeHello, wireCat(wireU16(1), wireU16(40), make([]byte, keyIDLen))),
			"malformed control frame: type 0x1: truncated", []error{ErrFrame}, nil},
		{"string-length-cut/welcome", wireFrame(typeWelcome, []byte{0}),
			"malformed control frame: type 0x4: truncated", []error{ErrFrame}, nil},
		{"string-past-payload/error", wireFrame(typeError, wireCat(wireU32(1), wireU16(1), wireU16(512), []byte("oops"))),
			"malformed control frame: type 0x7: truncated", []error{ErrFrame}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatalf("ReadMessage = %#v, want error %q", m, tt.wantErr)
			}
			if m != nil {
				t.Errorf("ReadMessage returned %#v with its error", m)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("ReadMessage error = %q, want %q", err, tt.wantErr)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%q, %q) = false, want true", err, target)
				}
			}
			for _, target := range tt.notIs {
				if errors.Is(err, target) {
					t.Errorf("errors.Is(%q, %q) = true, want false", err, target)
				}
			}
		})
	}
}

func TestReadMessageReaderError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ReadMessage(iotest.ErrReader(boom))
	if !errors.Is(err, boom) {
		t.Errorf("ReadMessage(header error) = %v, want %v", err, boom)
	}
	r := io.MultiReader(bytes.NewReader(wireCat([]byte{typePing}, wireU16(8), []byte{1})), iotest.ErrReader(boom))
	_, err = ReadMessage(r)
	if !errors.Is(err, boom) || !errors.Is(err, ErrFrame) {
		t.Errorf("ReadMessage(payload error) = %v, want %v wrapped with ErrFrame", err, boom)
	}
}

// budgetReader fails the test's read if the reader asks for more than budget
// bytes in total: ReadMessage must not trust a frame's length to size reads.
type budgetReader struct {
	r         io.Reader
	requested int
	budget    int
}

func (b *budgetReader) Read(p []byte) (int, error) {
	b.requested += len(p)
	if b.requested > b.budget {
		return 0, fmt.Errorf("asked for %d bytes in total, budget %d", b.requested, b.budget)
	}
	return b.r.Read(p)
}

func TestReadMessageOversizeLengthNotRead(t *testing.T) {
	for _, n := range []int{MaxControlPayload + 1, 4096, 0xffff} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			// The claimed payload is really there: a reader that trusted
			// the length would read it all.
			in := wireCat([]byte{typeWelcome}, wireU16(uint16(n)), make([]byte, n))
			br := &budgetReader{r: bytes.NewReader(in), budget: MaxControlPayload + 3}
			_, err := ReadMessage(br)
			want := fmt.Sprintf("malformed control frame: payload length %d exceeds %d", n, MaxControlPayload)
			if err == nil || err.Error() != want {
				t.Fatalf("ReadMessage error = %v, want %q", err, want)
			}
			if br.requested > 3 {
				t.Errorf("ReadMessage asked for %d bytes of an oversized frame, want only its 3-byte header", br.requested)
			}
		})
	}

	// A frame of exactly MaxControlPayload fits the budget.
	in := wireFrame(typeWelcome, wireStr(strings.Repeat("h", MaxControlPayload-2)))
	br := &budgetReader{r: bytes.NewReader(in), budget: MaxControlPayload + 3}
	_, err := ReadMessage(br)
	if err == nil || !strings.Contains(err.Error(), "string of 1022 bytes exceeds 255") {
		t.Fatalf("ReadMessage(max-size frame) error = %v, want the string bound", err)
	}
}

func TestDecodeMessageUnknownType(t *testing.T) {
	for _, typ := range []byte{0x00, 0x0e, 0x10, 0x80, 0xff} {
		m, err := DecodeMessage(typ, wireU64(0))
		checkFrameErr(t, "DecodeMessage", m, err, fmt.Sprintf("malformed control frame: unknown message type %#x", typ))
	}
}

// TestDecodeMessageWrongSize checks that no proper prefix of a valid payload
// decodes (every field is fixed-size or length-prefixed), and that one extra
// byte is refused as trailing.
func TestDecodeMessageWrongSize(t *testing.T) {
	for _, tc := range messageCases() {
		t.Run(tc.name, func(t *testing.T) {
			for n := range len(tc.payload) {
				m, err := DecodeMessage(tc.typ, tc.payload[:n])
				checkFrameErr(t, fmt.Sprintf("DecodeMessage(%d of %d bytes)", n, len(tc.payload)), m, err,
					fmt.Sprintf("malformed control frame: type %#x: truncated", tc.typ))
			}
			m, err := DecodeMessage(tc.typ, wireCat(tc.payload, []byte{0}))
			checkFrameErr(t, "DecodeMessage(one extra byte)", m, err,
				fmt.Sprintf("malformed control frame: type %#x: 1 trailing bytes", tc.typ))
		})
	}
}

// TestDecodeMessageCopies checks that a decoded message does not alias the
// payload buffer, which a reader may reuse.
func TestDecodeMessageCopies(t *testing.T) {
	for _, tc := range messageCases() {
		p := bytes.Clone(tc.payload)
		m, err := DecodeMessage(tc.typ, p)
		if err != nil {
			t.Fatalf("%s: DecodeMessage: %v", tc.name, err)
		}
		for i := range p {
			p[i] ^= 0xff
		}
		if !reflect.DeepEqual(m, tc.msg) {
			t.Errorf("%s: message changed with its payload buffer: %#v", tc.name, m)
		}
	}
}

type streamHeaderCase struct {
	name string
	in   StreamHeader
	want StreamHeader // what reading it back gives
	wire []byte
}

func streamHeaderCases() []streamHeaderCase {
	ap := netip.MustParseAddrPort
	return []streamHeaderCase{
		{"ipv4", StreamHeader{1, ap("192.0.2.1:80")}, StreamHeader{1, ap("192.0.2.1:80")},
			wireCat([]byte{1}, wireU32(1), []byte{4, 192, 0, 2, 1}, wireU16(80))},
		{"ipv4/port-0", StreamHeader{0, ap("0.0.0.0:0")}, StreamHeader{0, ap("0.0.0.0:0")},
			wireCat([]byte{1}, wireU32(0), []byte{4, 0, 0, 0, 0}, wireU16(0))},
		{"ipv4/port-65535", StreamHeader{0xffffffff, ap("255.255.255.255:65535")}, StreamHeader{0xffffffff, ap("255.255.255.255:65535")},
			wireCat([]byte{1}, wireU32(0xffffffff), []byte{4, 255, 255, 255, 255}, wireU16(65535))},
		{"ipv6", StreamHeader{0xdeadbeef, ap("[2001:db8::1]:65535")}, StreamHeader{0xdeadbeef, ap("[2001:db8::1]:65535")},
			wireCat([]byte{1}, wireU32(0xdeadbeef), []byte{6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, wireU16(65535))},
		{"ipv6/port-0", StreamHeader{2, ap("[::]:0")}, StreamHeader{2, ap("[::]:0")},
			wireCat([]byte{1}, wireU32(2), []byte{6}, make([]byte, 16), wireU16(0))},
		// An IPv4-mapped IPv6 address travels, and comes back, as IPv4.
		{"ipv4-mapped", StreamHeader{3, ap("[::ffff:192.0.2.1]:443")}, StreamHeader{3, ap("192.0.2.1:443")},
			wireCat([]byte{1}, wireU32(3), []byte{4, 192, 0, 2, 1}, wireU16(443))},
		// Zones are local to a host; they do not travel.
		{"ipv6/zone", StreamHeader{4, ap("[fe80::1%eth0]:22")}, StreamHeader{4, ap("[fe80::1]:22")},
			wireCat([]byte{1}, wireU32(4), []byte{6, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, wireU16(22))},
	}
}

func TestStreamHeaderRoundTrip(t *testing.T) {
	for _, tc := range streamHeaderCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendStreamHeader(nil, tc.in)
			if !bytes.Equal(got, tc.wire) {
				t.Fatalf("AppendStreamHeader = %x, want %x", got, tc.wire)
			}
			prefix := []byte("prefix")
			if got := AppendStreamHeader(prefix, tc.in); !bytes.Equal(got, wireCat(prefix, tc.wire)) {
				t.Fatalf("AppendStreamHeader with prefix = %x, want %x", got, wireCat(prefix, tc.wire))
			}

			// The client's first bytes follow the header on the stream;
			// reading the header must leave them be.
			r := bytes.NewReader(wireCat(tc.wire, []byte("client bytes")))
			h, err := ReadStreamHeader(r)
			if err != nil {
				t.Fatalf("ReadStreamHeader: %v", err)
			}
			if h != tc.want {
				t.Fatalf("ReadStreamHeader = %+v, want %+v", h, tc.want)
			}
			rest, _ := io.ReadAll(r)
			if string(rest) != "client bytes" {
				t.Fatalf("after the header, the stream holds %q, want %q", rest, "client bytes")
			}

			h, err = ReadStreamHeader(iotest.OneByteReader(bytes.NewReader(tc.wire)))
			if err != nil || h != tc.want {
				t.Fatalf("ReadStreamHeader(one byte at a time) = %+v, %v; want %+v", h, err, tc.want)
			}
		})
	}
}

func TestReadStreamHeaderErrors(t *testing.T) {
	v4 := func(version, family byte) []byte {
		return wireCat([]byte{version}, wireU32(1), []byte{family, 192, 0, 2, 1}, wireU16(80))
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"version/0", v4(0, 4), "malformed control frame: stream header version 0, want 1"},
		{"version/2", v4(2, 4), "malformed control frame: stream header version 2, want 1"},
		{"version/255", v4(255, 4), "malformed control frame: stream header version 255, want 1"},
		// The version is checked as soon as the fixed part is in, before
		// the address.
		{"version/fixed-part-only", []byte{9, 0, 0, 0, 1, 4}, "malformed control frame: stream header version 9, want 1"},
		{"family/0", v4(1, 0), "malformed control frame: stream header address family 0"},
		{"family/5", v4(1, 5), "malformed control frame: stream header address family 5"},
		{"family/16", v4(1, 16), "malformed control frame: stream header address family 16"},
		{"family/AF_INET6", v4(1, 10), "malformed control frame: stream header address family 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadStreamHeader(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatalf("ReadStreamHeader = %+v, want error %q", h, tt.wantErr)
			}
			if !errors.Is(err, ErrFrame) {
				t.Errorf("ReadStreamHeader error %q does not wrap ErrFrame", err)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("ReadStreamHeader error = %q, want %q", err, tt.wantErr)
			}
			if h != (StreamHeader{}) {
				t.Errorf("ReadStreamHeader returned %+v with its error", h)
			}
		})
	}
}

// TestReadStreamHeaderTruncated cuts every header at every length: nothing
// is a clean io.EOF except no bytes at all.
func TestReadStreamHeaderTruncated(t *testing.T) {
	for _, tc := range streamHeaderCases() {
		for n := range len(tc.wire) {
			h, err := ReadStreamHeader(bytes.NewReader(tc.wire[:n]))
			if err == nil {
				t.Errorf("%s: ReadStreamHeader(%d of %d bytes) = %+v, want error", tc.name, n, len(tc.wire), h)
				continue
			}
			want := io.ErrUnexpectedEOF
			if n == 0 {
				want = io.EOF
			}
			if !errors.Is(err, want) || !strings.HasPrefix(err.Error(), "reading stream header: ") {
				t.Errorf("%s: ReadStreamHeader(%d of %d bytes) error = %q, want %q wrapped as reading stream header", tc.name, n, len(tc.wire), err, want)
			}
			if n > 0 && errors.Is(err, io.EOF) {
				t.Errorf("%s: ReadStreamHeader(%d of %d bytes) error %q is io.EOF, which reads as a clean close", tc.name, n, len(tc.wire), err)
			}
		}
	}

	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(streamHeaderCases()[0].wire[:7]), iotest.ErrReader(boom))
	if _, err := ReadStreamHeader(r); !errors.Is(err, boom) {
		t.Errorf("ReadStreamHeader(reader error) = %v, want %v", err, boom)
	}
}

// Fuzz targets. Seeds are every valid frame and header above plus a few
// invalid ones; run with e.g.
//
//	go test ./tunnel -run '^$' -fuzz '^FuzzReadMessage$' -fuzztime 30s

func FuzzReadMessage(f *testing.F) {
	cases := messageCases()
	for _, tc := range cases {
		f.Add(wireFrame(tc.typ, tc.payload))
	}
	f.Add(wireCat(wireFrame(cases[0].typ, cases[0].payload), wireFrame(typePing, wireU64(1))))
	f.Add([]byte{})
	f.Add([]byte{typePing, 0})
	f.Add(wireCat([]byte{typeWelcome}, wireU16(0xffff)))
	f.Add(wireFrame(typeWelcome, wireCat(wireU16(10), []byte("abc"))))
	f.Add(wireFrame(0x0e, nil))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		m, err := ReadMessage(r)
		consumed := len(data) - r.Len()
		if err != nil {
			if m != nil {
				t.Fatalf("ReadMessage returned %#v with error %v", m, err)
			}
			switch {
			case len(data) == 0:
				if err != io.EOF {
					t.Fatalf("ReadMessage(empty) error = %v, want io.EOF", err)
				}
			case len(data) < 3:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("ReadMessage(short header) error = %v, want io.ErrUnexpectedEOF", err)
				}
			default:
				if !errors.Is(err, ErrFrame) {
					t.Fatalf("ReadMessage error %q does not wrap ErrFrame", err)
				}
			}
			if consumed > MaxControlPayload+3 {
				t.Fatalf("ReadMessage consumed %d bytes of a bad frame", consumed)
			}
			return
		}

		// The encoding is canonical: re-encoding gives back exactly the
		// bytes read, and nothing past the frame was read.
		enc, err := AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("AppendMessage(%#v) after a successful read: %v", m, err)
		}
		if !bytes.Equal(enc, data[:consumed]) {
			t.Fatalf("re-encoded %x, read %x", enc, data[:consumed])
		}
		if want := 3 + int(binary.BigEndian.Uint16(data[1:3])); consumed != want {
			t.Fatalf("ReadMessage consumed %d bytes, frame is %d", consumed, want)
		}
		m2, err := DecodeMessage(enc[0], enc[3:])
		if err != nil {
			t.Fatalf("DecodeMessage of re-encoded %x: %v", enc, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message: %#v became %#v", m, m2)
		}
	})
}

func FuzzDecodeMessage(f *testing.F) {
	for _, tc := range messageCases() {
		f.Add(tc.typ, tc.payload)
	}
	f.Add(byte(0), []byte{})
	f.Add(byte(0xff), wireU64(0))
	f.Add(byte(typeError), wireCat(wireU32(1), wireU16(1), wireU16(512), []byte("oops")))

	f.Fuzz(func(t *testing.T, typ byte, payload []byte) {
		p := bytes.Clone(payload)
		m, err := DecodeMessage(typ, p)
		if err != nil {
			if m != nil {
				t.Fatalf("DecodeMessage returned %#v with error %v", m, err)
			}
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("DecodeMessage error %q does not wrap ErrFrame", err)
			}
			return
		}
		if m.msgType() != typ {
			t.Fatalf("DecodeMessage(%#x) gave a message of type %#x", typ, m.msgType())
		}
		if len(payload) > MaxControlPayload {
			t.Fatalf("DecodeMessage accepted a %d-byte payload", len(payload))
		}
		enc, err := AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("AppendMessage(%#v) after a successful decode: %v", m, err)
		}
		if want := wireFrame(typ, payload); !bytes.Equal(enc, want) {
			t.Fatalf("re-encoded %x, want %x", enc, want)
		}

		// The message must not alias the payload.
		for i := range p {
			p[i] ^= 0xff
		}
		enc2, err := AppendMessage(nil, m)
		if err != nil || !bytes.Equal(enc2, enc) {
			t.Fatalf("message changed with its payload buffer: %x, then %x (%v)", enc, enc2, err)
		}
	})
}

func FuzzReadStreamHeader(f *testing.F) {
	for _, tc := range streamHeaderCases() {
		f.Add(tc.wire)
		f.Add(wireCat(tc.wire, []byte("client bytes")))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1, 0, 80}) // 4in6 sent as family 6
	f.Add([]byte{2, 0, 0, 0, 1, 4, 192, 0, 2, 1, 0, 80})
	f.Add([]byte{1, 0, 0, 0, 1, 5, 192, 0, 2, 1, 0, 80})

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadStreamHeader(r)
		consumed := len(data) - r.Len()
		if consumed > maxStreamHeader {
			t.Fatalf("ReadStreamHeader consumed %d bytes, more than a header", consumed)
		}
		if err != nil {
			if h != (StreamHeader{}) {
				t.Fatalf("ReadStreamHeader returned %+v with error %v", h, err)
			}
			if !errors.Is(err, ErrFrame) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("ReadStreamHeader error %q is neither ErrFrame nor a short read", err)
			}
			return
		}
		wantLen := map[byte]int{4: 1 + 4 + 1 + 4 + 2, 6: maxStreamHeader}[data[5]]
		if consumed != wantLen {
			t.Fatalf("ReadStreamHeader consumed %d bytes of a family-%d header, want %d", consumed, data[5], wantLen)
		}
		if !h.Client.IsValid() {
			t.Fatalf("ReadStreamHeader gave an invalid client address %v", h.Client)
		}

		enc := AppendStreamHeader(nil, h)
		h2, err := ReadStreamHeader(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("ReadStreamHeader of re-encoded %x: %v", enc, err)
		}
		// An IPv4-mapped address sent as family 6 re-encodes as family 4,
		// so compare the decoded values, unmapped, and bytes otherwise.
		want := StreamHeader{h.Tunnel, netip.AddrPortFrom(h.Client.Addr().Unmap(), h.Client.Port())}
		if h2 != want {
			t.Fatalf("round trip changed the header: %+v became %+v", h, h2)
		}
		mapped := data[5] == 6 && h.Client.Addr().Is4()
		if !mapped && !bytes.Equal(enc, data[:consumed]) {
			t.Fatalf("re-encoded %x, read %x", enc, data[:consumed])
		}
	})
}
