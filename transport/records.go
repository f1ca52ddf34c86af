package transport

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/relaytun/relay/internal/rawfd"
)

// Records: how two builds of this project protect a TLS+smux session's
// frames after the TLS handshake.
//
// crypto/tls copies each record's payload into a buffer of its own before
// sealing it, the batch queue then copied the record, and on the way in
// TLS copies the opened payload out to smux: in bulk transfer, copies were
// 10-13% of each process's CPU. Records of our own are sealed straight
// into the batch queue and opened straight into smux's frame buffer.
//
// Negotiation is by ALPN: a dialer offers P+"+rec1" after each protocol P,
// and a TLS 1.3 listener that would pick P picks P+"+rec1" instead, turning
// TLS session tickets off, so that nothing follows either side's Finished
// message. (A later format would be "+rec2".) Older peers
// see an ALPN value they do not know and go on with plain TLS. crypto/tls
// may read past the last handshake message, so neither side may send a
// record while the other might still be reading TLS: the listener, whose
// handshake ends last (when it has read the dialer's Finished), sends the
// first record, the hello, and the dialer sends nothing before the hello.
//
// Keys come from the TLS exporter (label recordsLabel, 64 bytes): the first
// 32 bytes are the dialer's sending secret, the last 32 the listener's. A
// secret s gives the key HKDF-Expand-SHA256(s, "key", 16) and the IV
// HKDF-Expand-SHA256(s, "iv", 12) for AES-128-GCM; after recordsPerKey
// records, a direction moves to the secret HKDF-Expand-SHA256(s, "next",
// 32) and counts its records from 0 again. A record:
//
//	+---------------+------------------------------------------+
//	| length:3 (BE) | AES-GCM ciphertext and tag, length bytes |
//	+---------------+------------------------------------------+
//
// The nonce is the IV with the record's number (big-endian) XORed into its
// last 8 bytes; the additional data is the 3 length bytes. A record carries
// 1 to maxRecordPlain bytes. The hello's plaintext is one byte,
// recordsVersion. A length out of range, or a record that does not open,
// ends the session.

const (
	recordsALPNSuffix = "+rec1"
	// abortsALPNSuffix is records, and the ABORT signal (tcp.go) too.
	abortsALPNSuffix = "+rec1+abort"
	recordsLabel     = "EXPORTER-relay-smux-records"
	recordsVersion   = 1
	recordHeaderSize = 3
	recordTagSize    = 16
	maxRecordPlain   = 64 << 10
	maxRecord        = recordHeaderSize + maxRecordPlain + recordTagSize
	// recordBufSize is the receive buffer, pooled and held only while
	// bytes wait in it: several records per read system call.
	recordBufSize = 256 << 10
)

// recordsPerKey is how many records a key seals before the next one takes
// over: at most 2^20 × 64 KiB = 64 GiB, far inside AES-GCM's limits.
const recordsPerKey = 1 << 20

var recordBufs = sync.Pool{New: func() any { b := make([]byte, recordBufSize); return &b }}

// recordsWork reports whether this process can seal records: not when
// crypto is restricted to FIPS 140 mode, which refuses GCM with nonces
// of our own. Without it, a side neither offers nor serves records.
var recordsWork = sync.OnceValue(func() bool {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		return false
	}
	_, err = cipher.NewGCM(block)
	return err == nil
})

// offerRecords returns c with P+"+rec1+abort" and P+"+rec1" offered after
// each ALPN protocol P.
func offerRecords(c *tls.Config, aborts bool) *tls.Config {
	if c == nil || !recordsWork() {
		return c
	}
	c = c.Clone()
	var protos []string
	for _, p := range c.NextProtos {
		protos = append(protos, p)
		if aborts {
			protos = append(protos, p+abortsALPNSuffix)
		}
		protos = append(protos, p+recordsALPNSuffix)
	}
	c.NextProtos = protos
	return c
}

func isRecordsProto(p string) bool {
	return strings.HasSuffix(p, recordsALPNSuffix) || strings.HasSuffix(p, abortsALPNSuffix)
}

// baseProto is p without the records suffixes: the protocol the caller
// named.
func baseProto(p string) string {
	if s, ok := strings.CutSuffix(p, abortsALPNSuffix); ok {
		return s
	}
	return strings.TrimSuffix(p, recordsALPNSuffix)
}

// serveRecords returns base choosing records for a TLS 1.3 client that
// offers them with a protocol the server would pick. base's own
// GetConfigForClient sees every client first, with the offers of records
// taken out of its hello, so what it decides (a certificate, a refusal,
// the protocol) holds for clients with records too.
func serveRecords(base *tls.Config, aborts bool) *tls.Config {
	if base == nil || !recordsWork() {
		return base
	}
	c := base.Clone()
	next := base.GetConfigForClient
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		h := *hello
		h.SupportedProtos = slices.DeleteFunc(slices.Clone(hello.SupportedProtos), isRecordsProto)
		var conf *tls.Config // nil: base as it is
		if next != nil {
			var err error
			if conf, err = next(&h); err != nil {
				return nil, err
			}
		}
		serve := base
		if conf != nil {
			serve = conf
		}
		if slices.Contains(hello.SupportedVersions, tls.VersionTLS13) && (serve.MaxVersion == 0 || serve.MaxVersion >= tls.VersionTLS13) {
			for _, p := range serve.NextProtos { // in the server's order, as ALPN goes
				suffixes := []string{abortsALPNSuffix, recordsALPNSuffix}
				if !aborts {
					suffixes = suffixes[1:]
				}
				for _, suffix := range suffixes {
					if slices.Contains(hello.SupportedProtos, p+suffix) {
						rc := serve.Clone()
						rc.GetConfigForClient = nil
						rc.NextProtos = []string{p + suffix}
						rc.SessionTicketsDisabled = true
						return rc, nil
					}
				}
			}
		}
		return conf, nil
	}
	return c
}

// usesRecords reports whether the handshake chose records. Only TLS 1.3
// qualifies: its handshake ends with the listener reading, so the hello
// cannot be read ahead into the dialer's TLS buffer.
func usesRecords(cs tls.ConnectionState) bool {
	return cs.Version == tls.VersionTLS13 && isRecordsProto(cs.NegotiatedProtocol)
}

// recordKeys is one direction's keys.
type recordKeys struct {
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	nbuf   [12]byte
	seq    uint64
	limit  uint64 // records per key: recordsPerKey but in tests
}

func newRecordKeys(secret []byte, limit uint64) (*recordKeys, error) {
	k := &recordKeys{secret: secret, limit: limit}
	return k, k.setup()
}

func (k *recordKeys) setup() error {
	key, err := hkdf.Expand(sha256.New, k.secret, "key", 16)
	if err != nil {
		return err
	}
	iv, err := hkdf.Expand(sha256.New, k.secret, "iv", 12)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return err
	}
	copy(k.iv[:], iv)
	return nil
}

// nonce is the current record's; the slice is k's own, good until the
// next call.
func (k *recordKeys) nonce() []byte {
	k.nbuf = k.iv
	for i := range 8 {
		k.nbuf[4+i] ^= byte(k.seq >> (56 - 8*i))
	}
	return k.nbuf[:]
}

// next counts a record and moves to the next key after recordsPerKey.
func (k *recordKeys) next() error {
	k.seq++
	if k.seq < k.limit {
		return nil
	}
	s, err := hkdf.Expand(sha256.New, k.secret, "next", 32)
	if err != nil {
		return err
	}
	k.secret, k.seq = s, 0
	return k.setup()
}

// recordConn is a session's connection after the switch to records: what
// smux reads and writes instead of the TLS connection.
type recordConn struct {
	raw *batchConn
	rc  syscall.RawConn // the socket's, to wait for bytes holding no buffer

	wmu  sync.Mutex
	seal *recordKeys
	werr error // sticky

	rmu   sync.Mutex
	open  *recordKeys
	buf   *[]byte // from recordBufs; nil while nothing waits in it
	start int     // the next record's first byte in buf
	end   int     // the end of what was read into buf
	plain []byte  // the rest of an opened record not yet read
	rerr  error   // sticky
}

// newRecordConn switches c, whose TLS handshake cs is, to records.
func newRecordConn(c *batchConn, cs tls.ConnectionState, dialer bool) (*recordConn, error) {
	km, err := cs.ExportKeyingMaterial(recordsLabel, nil, 64)
	if err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	mine, theirs := km[:32], km[32:]
	if !dialer {
		mine, theirs = theirs, mine
	}
	return newRecordConnKeys(c, mine, theirs, recordsPerKey)
}

// newRecordConnKeys is newRecordConn with the two sending secrets given.
func newRecordConnKeys(c *batchConn, mine, theirs []byte, limit uint64) (*recordConn, error) {
	r := &recordConn{raw: c}
	var err error
	if r.seal, err = newRecordKeys(mine, limit); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	if r.open, err = newRecordKeys(theirs, limit); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	// Raw reads only from a plain socket: a wrapper might hold bytes of
	// its own that a read of the descriptor would skip.
	if tc, ok := c.Conn.(*net.TCPConn); ok && rawfd.Supported {
		r.rc, _ = tc.SyscallConn()
	}
	return r, nil
}

// sendHello is the listener's first record.
func (r *recordConn) sendHello() error {
	_, err := r.Write([]byte{recordsVersion})
	return err
}

// readHello waits for the listener's hello.
func (r *recordConn) readHello() error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("records: waiting for the hello: %w", err)
	}
	if b[0] != recordsVersion || len(r.plain) != 0 {
		return errors.New("records: unexpected hello")
	}
	return nil
}

// Write seals p as records of at most maxRecordPlain bytes each.
func (r *recordConn) Write(p []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	return r.writeChunks(p)
}

func (r *recordConn) writeChunks(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxRecordPlain)]
		if err := r.writeRecord(len(chunk), func(dst []byte) []byte {
			return r.seal.aead.Seal(dst, r.seal.nonce(), chunk, dst[len(dst)-recordHeaderSize:])
		}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// WriteBuffers is how smux writes a frame: header and payload. A small
// frame goes as one record. A large one goes as a record for its header
// and records for its payload, so that the payload is sealed straight into
// the batch queue here, and opened straight into smux's frame buffer by
// the reader: neither side copies it.
func (r *recordConn) WriteBuffers(v [][]byte) (int, error) {
	size := 0
	for _, b := range v {
		size += len(b)
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if size > frameCopyMax {
		n := 0
		for _, b := range v {
			m, err := r.writeChunks(b)
			n += m
			if err != nil {
				return n, err
			}
		}
		return n, nil
	}
	if size == 0 {
		return 0, nil
	}
	err := r.writeRecord(size, func(dst []byte) []byte {
		at := len(dst)
		for _, b := range v {
			dst = append(dst, b...)
		}
		pt := dst[at:]
		r.seal.aead.Seal(pt[:0], r.seal.nonce(), pt, dst[at-recordHeaderSize:at])
		return dst[:at+size+recordTagSize]
	})
	if err != nil {
		return 0, err
	}
	return size, nil
}

// writeRecord queues a record of size plaintext bytes: seal appends the
// sealed bytes to its argument, which ends with the record's header. r.wmu
// is held. Any failure is final, so no nonce is used twice.
func (r *recordConn) writeRecord(size int, seal func(dst []byte) []byte) error {
	if r.werr != nil {
		return r.werr
	}
	err := r.raw.writeFill(recordHeaderSize+size+recordTagSize, func(dst []byte) []byte {
		clen := size + recordTagSize
		dst = append(dst, byte(clen>>16), byte(clen>>8), byte(clen))
		return seal(dst)
	})
	if err == nil {
		err = r.seal.next()
	}
	r.werr = err
	return err
}

// Read returns the rest of the last record opened, or opens the next: into
// p itself when it has room for the whole record (smux reading a frame's
// payload), else in place in the receive buffer.
func (r *recordConn) Read(p []byte) (int, error) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	if len(r.plain) > 0 {
		n := copy(p, r.plain)
		r.plain = r.plain[n:]
		r.release()
		return n, nil
	}
	if r.rerr != nil {
		return 0, r.rerr
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := r.openRecord(p)
	if err != nil {
		r.rerr = err
		r.plain = nil
		r.release()
	}
	return n, err
}

func (r *recordConn) openRecord(p []byte) (int, error) {
	clen, err := r.nextRecord()
	if err != nil {
		return 0, err
	}
	b := *r.buf
	hdr := b[r.start : r.start+recordHeaderSize]
	ct := b[r.start+recordHeaderSize : r.start+recordHeaderSize+clen]
	r.start += recordHeaderSize + clen
	n := clen - recordTagSize
	var out []byte
	if len(p) >= n {
		out, err = r.open.aead.Open(p[:0], r.open.nonce(), ct, hdr)
	} else {
		out, err = r.open.aead.Open(ct[:0], r.open.nonce(), ct, hdr)
		if err == nil {
			n = copy(p, out)
			r.plain = out[n:]
		}
	}
	if err != nil {
		return 0, errors.New("records: a record failed authentication")
	}
	if err := r.open.next(); err != nil {
		return 0, err
	}
	r.release()
	return n, nil
}

// nextRecord reads until buf holds the next whole record at start, and
// returns its ciphertext's length.
func (r *recordConn) nextRecord() (int, error) {
	for {
		need := recordHeaderSize
		if r.buf != nil && r.end-r.start >= recordHeaderSize {
			b := (*r.buf)[r.start:]
			clen := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
			switch {
			case clen <= recordTagSize:
				return 0, fmt.Errorf("records: a record of %d bytes (at least %d)", clen, recordTagSize+1)
			case clen > maxRecordPlain+recordTagSize:
				return 0, fmt.Errorf("records: a record of %d bytes (at most %d)", clen, maxRecordPlain+recordTagSize)
			}
			if r.end-r.start >= recordHeaderSize+clen {
				return clen, nil
			}
			need = recordHeaderSize + clen
		}
		if r.buf != nil && (len(*r.buf)-r.start < need || len(*r.buf)-r.end < maxRecord/2) && r.start > 0 {
			// Move the partial record down to make room.
			r.end = copy(*r.buf, (*r.buf)[r.start:r.end])
			r.start = 0
		}
		if err := r.readMore(); err != nil {
			if err == io.EOF && r.buf != nil && r.end > r.start {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
}

// readMore reads what the socket has into buf, taking a buffer only once
// there is something to read.
func (r *recordConn) readMore() error {
	if r.rc == nil {
		if r.buf == nil {
			r.buf = recordBufs.Get().(*[]byte)
		}
		n, err := r.raw.Read((*r.buf)[r.end:])
		r.end += n
		if n > 0 {
			return nil
		}
		return err
	}
	var (
		n    int
		rerr error
	)
	err := r.rc.Read(func(fd uintptr) bool {
		if r.buf == nil {
			r.buf = recordBufs.Get().(*[]byte)
		}
		n, rerr = rawfd.Read(fd, (*r.buf)[r.end:])
		if n > 0 && r.raw.quickAck.Load() {
			setQuickAck(fd)
		}
		if rerr == syscall.EAGAIN {
			r.release()
			return false
		}
		return true
	})
	switch {
	case err != nil:
		if r.raw.isClosed() {
			return net.ErrClosed
		}
		return err
	case rerr != nil:
		return &net.OpError{Op: "read", Net: "tcp", Source: r.raw.LocalAddr(), Addr: r.raw.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return io.EOF
	}
	r.end += n
	return nil
}

// release gives the receive buffer back once nothing waits in it.
func (r *recordConn) release() {
	if r.buf != nil && r.start == r.end && len(r.plain) == 0 {
		recordBufs.Put(r.buf)
		r.buf, r.start, r.end = nil, 0, 0
	}
}

func (r *recordConn) Close() error { return r.raw.Close() }
