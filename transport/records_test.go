package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/looptest"
)

// recordPair is two record connections over loopback TCP, keyed as a
// dialer and a listener would be, with limit records per key.
func recordPair(t *testing.T, limit uint64) (a, b *recordConn) {
	t.Helper()
	x, y := looptest.TCPPair(t)
	return recordPairOn(t, x, y, limit)
}

func recordPairOn(t *testing.T, x, y net.Conn, limit uint64) (a, b *recordConn) {
	t.Helper()
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, err := newRecordConnKeys(newBatchConn(x), k1, k2, limit)
	if err != nil {
		t.Fatal(err)
	}
	b, err = newRecordConnKeys(newBatchConn(y), k2, k1, limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestRecordsRoundTrip sends frames the way smux does (small ones whole,
// large ones as header and payload) and plain writes up to 200 KiB, and
// reads them back in pieces of every size smux and io.Copy use, across key
// changes every 5 records.
func TestRecordsRoundTrip(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		a, b := recordPair(t, 5)
		testRecordsRoundTrip(t, a, b)
	})
	t.Run("pipe", func(t *testing.T) {
		// Not a socket: reads go through the connection's Read.
		x, y := net.Pipe()
		a, b := recordPairOn(t, x, y, 5)
		if b.rc != nil {
			t.Fatal("raw reads on a net.Pipe")
		}
		testRecordsRoundTrip(t, a, b)
	})
}

func testRecordsRoundTrip(t *testing.T, a, b *recordConn) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	var want bytes.Buffer
	errc := make(chan error, 1)
	var sends [][]byte
	for i := range 200 {
		n := rng.IntN(40 << 10)
		if i%20 == 0 {
			n = 200 << 10
		}
		sends = append(sends, randBytes(n))
		want.Write(sends[i])
	}
	go func() {
		for i, p := range sends {
			var err error
			switch i % 3 {
			case 0:
				_, err = a.Write(p)
			case 1:
				hdr := min(8, len(p))
				_, err = a.WriteBuffers([][]byte{p[:hdr], p[hdr:]})
			default:
				_, err = a.WriteBuffers([][]byte{p})
			}
			if err != nil {
				errc <- err
				return
			}
		}
		errc <- a.raw.Close()
	}()
	var got bytes.Buffer
	buf := make([]byte, 300<<10)
	for {
		n, err := b.Read(buf[:1+rng.IntN(len(buf))])
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", got.Len(), err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("read %d bytes, not the %d written", got.Len(), want.Len())
	}
	if b.buf != nil {
		t.Error("the receive buffer is still held after everything was read")
	}
}

// wireRecords returns the bytes a record connection writes for frames.
func wireRecords(t *testing.T, frames ...[]byte) []byte {
	t.Helper()
	a, b := recordPair(t, recordsPerKey)
	go func() {
		for _, f := range frames {
			a.Write(f)
		}
		a.raw.Close()
	}()
	raw, err := io.ReadAll(b.raw.Conn)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// readWire feeds wire to a record connection keyed to open what
// wireRecords wrote, and returns what it read and the error that ended it.
func readWire(t *testing.T, wire []byte) ([]byte, error) {
	t.Helper()
	x, y := looptest.TCPPair(t)
	r, err := newRecordConnKeys(newBatchConn(y), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{1}, 32), recordsPerKey)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		x.Write(wire)
		x.Close()
	}()
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			return got.Bytes(), err
		}
	}
}

func TestRecordsRejectBadInput(t *testing.T) {
	good := wireRecords(t, []byte("first record"), []byte("second record"))
	if got, err := readWire(t, good); err != io.EOF || string(got) != "first recordsecond record" {
		t.Fatalf("untouched records: read %q, %v", got, err)
	}
	tampered := bytes.Clone(good)
	tampered[len(tampered)-20] ^= 1 // in the second record
	corrupt := bytes.Clone(good)
	corrupt[5] ^= 0x80 // in the first
	tests := []struct {
		name string
		wire []byte
		read string
		err  string
	}{
		{"tampered", tampered, "first record", "records: a record failed authentication"},
		{"corrupt", corrupt, "", "records: a record failed authentication"},
		{"reordered", append(bytes.Clone(good[15+16:]), good[:15+16]...), "", "records: a record failed authentication"},
		{"too long", []byte{0x01, 0x00, 0x11}, "", "records: a record of 65553 bytes (at most 65552)"},
		{"empty", []byte{0, 0, 16}, "", "records: a record of 16 bytes (at least 17)"},
		{"cut short", good[:len(good)-1], "first record", io.ErrUnexpectedEOF.Error()},
		{"cut in the header", append(bytes.Clone(good[:15+16]), 0), "first record", io.ErrUnexpectedEOF.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readWire(t, tt.wire)
			if string(got) != tt.read {
				t.Errorf("read %q before the error, want %q", got, tt.read)
			}
			if err == nil || err.Error() != tt.err {
				t.Errorf("error %v, want %q", err, tt.err)
			}
		})
	}
}

func TestRecordsHello(t *testing.T) {
	for _, tt := range []struct {
		name  string
		hello []byte
		err   string
	}{
		{"version 1", []byte{recordsVersion}, ""},
		{"version 2", []byte{2}, "records: unexpected hello"},
		{"more than the version", []byte{recordsVersion, 0}, "records: unexpected hello"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := recordPair(t, recordsPerKey)
			if _, err := a.Write(tt.hello); err != nil {
				t.Fatal(err)
			}
			err := b.readHello()
			if got := ""; err != nil {
				got = err.Error()
				if got != tt.err {
					t.Fatalf("readHello: %v, want %q", err, tt.err)
				}
			} else if tt.err != "" {
				t.Fatalf("readHello: nil, want %q", tt.err)
			}
		})
	}
	a, b := recordPair(t, recordsPerKey)
	a.raw.Close()
	if err := b.readHello(); err == nil || !strings.Contains(err.Error(), "records: waiting for the hello: EOF") {
		t.Fatalf("readHello from a closed peer: %v", err)
	}
}

// Sessions between two current builds run on records with ABORT; with a
// build from before ABORT on either side, on records without it; with a
// build from before records, on plain TLS. All of them work.
func TestRecordsNegotiation(t *testing.T) {
	for _, tt := range []struct {
		name                           string
		plainClient, plainServer       bool
		noAbortsClient, noAbortsServer bool
		records, aborts                bool
	}{
		{name: "both new", records: true, aborts: true},
		{name: "old client", plainClient: true},
		{name: "old server", plainServer: true},
		{name: "client before abort", noAbortsClient: true, records: true},
		{name: "server before abort", noAbortsServer: true, records: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			so := testOptions()
			so.plainTLS = tt.plainServer
			so.noAborts = tt.noAbortsServer
			s := newTestServer(t, so, nil)
			tlsConf, err := (&Verifier{Pin: s.pin}).ClientTLSConfig(s.addr, testALPN)
			if err != nil {
				t.Fatal(err)
			}
			co := testOptions()
			co.plainTLS = tt.plainClient
			co.noAborts = tt.noAbortsClient
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := (&TCPDialer{TLS: tlsConf, Options: co}).Dial(ctx, s.addr)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			sv := s.accept(t)
			for _, sess := range []Session{c, sv} {
				ss := sess.(*smuxSession)
				if ss.records() != tt.records || ss.aborts != tt.aborts {
					t.Errorf("records, aborts = %v, %v; want %v, %v", ss.records(), ss.aborts, tt.records, tt.aborts)
				}
				if p := ss.ConnectionState().NegotiatedProtocol; p != testALPN {
					t.Errorf("NegotiatedProtocol %q, want %q", p, testALPN)
				}
			}
			a, b := openPair(t, c, sv)
			exchange(t, a, b, strings.Repeat("request ", 5000), strings.Repeat("reply ", 9000))

			// Abort reaches a peer that knows ABORT as a failure, and
			// one that does not as Close: its data, then EOF.
			a, b = openPair(t, c, sv)
			if _, err := a.Write([]byte("partial")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // the data arrives first
			a.Abort()
			b.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(b)
			if tt.aborts {
				if !errors.Is(err, ErrAborted) {
					t.Errorf("reading an aborted stream: %q, %v; want %v", got, err, ErrAborted)
				}
			} else if err != nil || string(got) != "partial" {
				t.Errorf("reading a stream aborted for a peer without ABORT: %q, %v; want its data and EOF", got, err)
			}
		})
	}
}

func FuzzRecordsRead(f *testing.F) {
	f.Add([]byte{0, 0, 17, 1, 2, 3})
	f.Add([]byte{0, 0, 16})
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, wire []byte) {
		got, err := readWire(t, wire)
		if err == nil {
			t.Fatal("reading ended without an error")
		}
		if len(got) != 0 && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			// Only a record that opened could have given bytes, and
			// random bytes do not open.
			t.Fatalf("read %d bytes from random input, then %v", len(got), err)
		}
	})
}

// listenTCPWith is a TLS+smux listener on loopback serving conf, closed
// when t ends, and a client configuration that trusts s's key for it.
func (s *testServer) listenTCPWith(t *testing.T, conf *tls.Config, onErr func(net.Addr, error)) (Listener, *tls.Config) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenTCP(ln, conf, testOptions(), onErr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cc, err := (&Verifier{Pin: s.pin}).ClientTLSConfig(ln.Addr().String(), testALPN)
	if err != nil {
		t.Fatal(err)
	}
	return l, cc
}

// A session over TLS 1.2 keeps TLS: its handshake ends with the listener
// writing, so the dialer's TLS might read the hello ahead.
func TestRecordsNotOverTLS12(t *testing.T) {
	s := newTestServer(t, testOptions(), nil)
	conf := ServerTLSConfig(s.cert, testALPN)
	conf.MinVersion, conf.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	l, cc := s.listenTCPWith(t, conf, nil)
	cc.MinVersion = tls.VersionTLS12
	c, sv := dialTCP(t, l, l.Addr().String(), cc)
	for _, sess := range []Session{c, sv} {
		if v := sess.ConnectionState().Version; v != tls.VersionTLS12 {
			t.Fatalf("TLS version %#x, want 1.2", v)
		}
		if sess.(*smuxSession).records() {
			t.Fatal("records over TLS 1.2")
		}
	}
	a, b := openPair(t, c, sv)
	exchange(t, a, b, "over TLS 1.2", "still works")
}

// The server's own GetConfigForClient decides for clients that offer
// records too: here it refuses every client.
func TestRecordsKeepTheServersChoice(t *testing.T) {
	s := newTestServer(t, testOptions(), nil)
	conf := ServerTLSConfig(s.cert, testALPN)
	conf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return nil, errors.New("not today")
	}
	var refused error
	done := make(chan struct{})
	l, cc := s.listenTCPWith(t, conf, func(_ net.Addr, err error) {
		refused = err
		close(done)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := (&TCPDialer{TLS: cc, Options: testOptions()}).Dial(ctx, l.Addr().String()); err == nil {
		c.Close()
		t.Fatal("Dial succeeded against a server that refuses every client")
	}
	<-done
	if refused == nil || !strings.Contains(refused.Error(), "not today") {
		t.Fatalf("handshake failure %v, want the server's refusal", refused)
	}
}

// A listener that chose records but never sends the hello: the dial ends
// with its context, saying what it waited for.
func TestRecordsHelloWait(t *testing.T) {
	s := newTestServer(t, testOptions(), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	handshaken := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, serveRecords(ServerTLSConfig(s.cert, testALPN), true))
		if tc.Handshake() == nil {
			close(handshaken)
			io.Copy(io.Discard, c) // no hello
		}
	}()
	cc, err := (&Verifier{Pin: s.pin}).ClientTLSConfig(ln.Addr().String(), testALPN)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		// The dialer's handshake ends before the listener's: from here on
		// it waits for the hello.
		select {
		case <-handshaken:
			time.Sleep(50 * time.Millisecond)
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err = (&TCPDialer{TLS: cc, Options: testOptions()}).Dial(ctx, ln.Addr().String())
	if err == nil || err.Error() != "records: waiting for the hello: context canceled" {
		t.Fatalf("Dial: %v", err)
	}
}

func TestRecordsLabelReserved(t *testing.T) {
	c, _ := newPair(t, KindTCP)
	if _, err := c.ExportKeyingMaterial(recordsLabel, nil, 32); err == nil || err.Error() != "transport: the records' exporter label is reserved" {
		t.Fatalf("ExportKeyingMaterial(recordsLabel): %v", err)
	}
	if _, err := c.ExportKeyingMaterial("EXPORTER-other", nil, 32); err != nil {
		t.Fatalf("another label: %v", err)
	}
}
