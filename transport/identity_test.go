package transport

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaytun/relay/internal/syncbuf"
)

// newCert makes a self-signed certificate for a fresh key.
func newCert(t *testing.T) *x509.Certificate {
	t.Helper()
	key, _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := SelfSignedCertificate(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf
}

func TestFingerprintRoundTrip(t *testing.T) {
	t.Parallel()
	leaf := newCert(t)
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	fp := Fingerprint(leaf)

	if !strings.HasPrefix(fp, FingerprintPrefix) {
		t.Fatalf("Fingerprint = %q, want the %q prefix", fp, FingerprintPrefix)
	}
	body := strings.TrimPrefix(fp, FingerprintPrefix)
	if len(body) != 43 || strings.Contains(body, "=") {
		t.Errorf("Fingerprint body %q: want 43 characters of unpadded base64", body)
	}
	if got := FormatFingerprint(sum[:]); got != fp {
		t.Errorf("FormatFingerprint(sha256(SPKI)) = %q, want %q", got, fp)
	}

	hexLower := hex.EncodeToString(sum[:])
	var colons []string
	for _, b := range sum {
		colons = append(colons, fmt.Sprintf("%02X", b))
	}
	for _, in := range []string{
		fp,
		"sha256:" + body,
		"Sha256:" + body,
		body,
		body + "=",
		"  " + fp + "\n",
		"SHA256:" + base64.StdEncoding.EncodeToString(sum[:]), // padded
		hexLower,
		strings.ToUpper(hexLower),
		strings.Join(colons, ":"),
		"SHA256:" + hexLower,
	} {
		got, err := ParseFingerprint(in)
		if err != nil {
			t.Errorf("ParseFingerprint(%q): %v", in, err)
			continue
		}
		if !bytes.Equal(got, sum[:]) {
			t.Errorf("ParseFingerprint(%q) = %x, want %x", in, got, sum)
		}
		if FormatFingerprint(got) != fp {
			t.Errorf("FormatFingerprint(ParseFingerprint(%q)) = %q, want %q", in, FormatFingerprint(got), fp)
		}
	}
}

// The fingerprint names the key, so a renewed certificate keeps it.
func TestFingerprintIsOfTheKey(t *testing.T) {
	t.Parallel()
	key, _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c1, err := SelfSignedCertificate(key, "relay.example")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := SelfSignedCertificate(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(c1.Leaf.Raw, c2.Leaf.Raw) {
		t.Fatal("two certificates are identical")
	}
	if Fingerprint(c1.Leaf) != Fingerprint(c2.Leaf) {
		t.Errorf("same key, different fingerprints: %s, %s", Fingerprint(c1.Leaf), Fingerprint(c2.Leaf))
	}
	if Fingerprint(newCert(t)) == Fingerprint(c1.Leaf) {
		t.Error("different keys, same fingerprint")
	}
}

func TestParseFingerprintErrors(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte("x"))
	for _, in := range []string{
		"",
		"garbage",
		"SHA256:",
		"SHA256:not base64 at all!",
		"SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:16]), // too short
		hex.EncodeToString(sum[:31]),                               // too short
		hex.EncodeToString(append(sum[:], 0)),                      // too long
		"MD5:" + base64.RawStdEncoding.EncodeToString(sum[:]),
	} {
		b, err := ParseFingerprint(in)
		if err == nil {
			t.Errorf("ParseFingerprint(%q) = %x, want an error", in, b)
			continue
		}
		msg := err.Error()
		for _, want := range []string{fmt.Sprintf("%q", in), "SHA256:", "relayd fingerprint"} {
			if !strings.Contains(msg, want) {
				t.Errorf("ParseFingerprint(%q) error %q does not mention %s", in, msg, want)
			}
		}
	}
}

func publicKeyDER(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestLoadOrCreateKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "relay.key")
	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreateKey = created %v, %v; want created", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %o, want 600", perm)
	}
	data, _ := os.ReadFile(path)
	if blk, _ := pem.Decode(data); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Errorf("key file is not a PEM PRIVATE KEY:\n%s", data)
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("second LoadOrCreateKey = created %v, %v; want loaded", created, err)
	}
	if !bytes.Equal(publicKeyDER(t, k1.Public()), publicKeyDER(t, k2.Public())) {
		t.Error("second LoadOrCreateKey returned a different key")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(after, data) {
		t.Error("loading rewrote the key file")
	}
	// No temporary files are left beside it.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key", len(entries))
	}
}

func TestLoadOrCreateKeyFormats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	// An "EC PRIVATE KEY" after an unrelated block, as openssl may write.
	sec1 := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	path := filepath.Join(dir, "sec1.pem")
	if err := os.WriteFile(path, sec1, 0o600); err != nil {
		t.Fatal(err)
	}
	k, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("LoadOrCreateKey(SEC 1 key) = created %v, %v", created, err)
	}
	if !bytes.Equal(publicKeyDER(t, k.Public()), publicKeyDER(t, ec.Public())) {
		t.Error("SEC 1 key loaded as a different key")
	}

	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("LoadOrCreateKey(garbage) = %v; want an error naming %s", err, bad)
	}
	if got, _ := os.ReadFile(bad); string(got) != "not a key\n" {
		t.Error("LoadOrCreateKey overwrote an unreadable key file")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, content := range []string{"first\n", "second, longer\n", ""} {
		if err := WriteFileAtomic(path, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("read back %q, %v; want %q", got, err, content)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
			t.Errorf("mode = %o, want 640", fi.Mode().Perm())
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(entries))
	}
}

// identityError returns err's *IdentityError, failing t if there is none.
func identityError(t *testing.T, err error) *IdentityError {
	t.Helper()
	if err == nil {
		t.Fatal("dial succeeded, want it refused")
	}
	var ie *IdentityError
	if !errors.As(err, &ie) {
		t.Fatalf("dial error %v (%T) holds no *IdentityError", err, err)
	}
	return ie
}

func mustContain(t *testing.T, msg string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not mention %q", msg, w)
		}
	}
}

func TestPinMismatch(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	other := newCert(t)
	otherPin, _ := ParseFingerprint(Fingerprint(other))
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			_, err := srv.dialWith(t, kind, &Verifier{Pin: otherPin}, testALPN)
			ie := identityError(t, err)
			mustContain(t, ie.Error(), Fingerprint(srv.cert.Leaf), Fingerprint(other), srv.addr, "--fingerprint, or fingerprint in agent.toml")
			// The error is final, whatever wraps it.
			mustContain(t, err.Error(), Fingerprint(srv.cert.Leaf))
		})
	}
}

// TestDialRefusalIsNotClosed: a refused handshake is a failure to report,
// not the quiet end of a session, on both transports (the tunnel skips
// logging errors that match IsClosed).
func TestDialRefusalIsNotClosed(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	otherPin, _ := ParseFingerprint(Fingerprint(newCert(t)))
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			_, err := srv.dialWith(t, kind, &Verifier{Pin: otherPin}, testALPN)
			if err == nil || IsClosed(err) {
				t.Errorf("dial refused for its fingerprint: IsClosed(%v) = true", err)
			}
			_, err = srv.dialWith(t, kind, &Verifier{Pin: srv.pin}, "http/1.1")
			if err == nil || IsClosed(err) {
				t.Errorf("dial refused for its ALPN: IsClosed(%v) = true", err)
			}
		})
	}
}

func TestPinMatch(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			// A server each: connect takes the listener's next session,
			// which could be the other subtest's.
			srv := newTestServer(t, testOptions(), nil)
			c, s := srv.connect(t, kind)
			if got := Fingerprint(c.ConnectionState().PeerCertificates[0]); got != Fingerprint(srv.cert.Leaf) {
				t.Errorf("client sees %s, want %s", got, Fingerprint(srv.cert.Leaf))
			}
			_ = s
		})
	}
}

func TestNoPinNoKnownRelaysRefused(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			_, err := srv.dialWith(t, kind, &Verifier{}, testALPN)
			ie := identityError(t, err)
			mustContain(t, ie.Error(), "--fingerprint", Fingerprint(srv.cert.Leaf), srv.addr, "relayd fingerprint")
		})
	}
}

// A certificate that verifies under Roots needs no pin; a pin, when given,
// is still checked first.
func TestRootsAndPinPrecedence(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	roots := x509.NewCertPool()
	roots.AddCert(srv.cert.Leaf)
	otherPin, _ := ParseFingerprint(Fingerprint(newCert(t)))
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			if _, err := srv.dialWith(t, kind, &Verifier{Roots: roots}, testALPN); err != nil {
				t.Errorf("dial with the certificate in Roots: %v", err)
			} else {
				srv.accept(t)
			}
			_, err := srv.dialWith(t, kind, &Verifier{Roots: roots, Pin: otherPin}, testALPN)
			identityError(t, err)
		})
	}
}

// TestTrustOnFirstUse: the first dial records the relay's key, later dials
// (over either transport) accept it, and a different key at that address is
// refused naming the file.
func TestTrustOnFirstUse(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	known := filepath.Join(t.TempDir(), "config", "relay", "known_relays") // directories do not exist yet
	var logs syncbuf.Buffer
	v := &Verifier{KnownRelays: known, Logger: slog.New(slog.NewTextHandler(&logs, nil))}

	if _, err := srv.dialWith(t, KindQUIC, v, testALPN); err != nil {
		t.Fatalf("first dial: %v", err)
	}
	srv.accept(t)
	data, err := os.ReadFile(known)
	if err != nil {
		t.Fatalf("known relays file: %v", err)
	}
	wantLine := srv.addr + " " + Fingerprint(srv.cert.Leaf) + "\n"
	if string(data) != wantLine {
		t.Fatalf("known relays file = %q, want %q", data, wantLine)
	}
	if fi, _ := os.Stat(known); fi.Mode().Perm() != 0o600 {
		t.Errorf("known relays mode = %o, want 600", fi.Mode().Perm())
	}
	mustContain(t, logs.String(), "first use", Fingerprint(srv.cert.Leaf), known)

	// Again, over both transports, with a fresh Verifier reading the file.
	for _, kind := range kinds {
		v2 := &Verifier{KnownRelays: known}
		if _, err := srv.dialWith(t, kind, v2, testALPN); err != nil {
			t.Fatalf("%s dial to a known relay: %v", kind, err)
		}
		srv.accept(t)
	}
	if again, _ := os.ReadFile(known); !bytes.Equal(again, data) {
		t.Errorf("known relays file changed on a later dial: %q", again)
	}

	// Another relay (another key) answering at an address recorded with the
	// first relay's key: simulate it by recording srv's key for srv2's address.
	srv2 := newTestServer(t, testOptions(), nil)
	known2 := filepath.Join(t.TempDir(), "known_relays")
	content := "# relays I trust\n" + strings.Replace(string(data), srv.addr, srv2.addr, 1)
	if err := os.WriteFile(known2, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, kind := range kinds {
		_, err := srv2.dialWith(t, kind, &Verifier{KnownRelays: known2}, testALPN)
		ie := identityError(t, err)
		mustContain(t, ie.Error(), known2+":2", srv2.addr, Fingerprint(srv2.cert.Leaf), Fingerprint(srv.cert.Leaf), "--fingerprint")
	}
	if after, _ := os.ReadFile(known2); string(after) != content {
		t.Errorf("a refused dial changed the known relays file: %q", after)
	}
}

// TestTrustOnFirstUseKeepsOtherEntries: recording appends, keeping comments
// and other relays, and mends a missing final newline.
func TestTrustOnFirstUseKeepsOtherEntries(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	known := filepath.Join(t.TempDir(), "known_relays")
	before := "# comment\n192.0.2.1:7000 " + Fingerprint(newCert(t)) // no final newline
	if err := os.WriteFile(known, []byte(before), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.dialWith(t, KindTCP, &Verifier{KnownRelays: known}, testALPN); err != nil {
		t.Fatalf("dial: %v", err)
	}
	srv.accept(t)
	got, _ := os.ReadFile(known)
	want := before + "\n" + srv.addr + " " + Fingerprint(srv.cert.Leaf) + "\n"
	if string(got) != want {
		t.Errorf("known relays file = %q, want %q", got, want)
	}
}

// TestTrustOnFirstUseUnwritable: a known-relays file that cannot be read or
// written says what to do (another file, or a pinned key), not only why.
func TestTrustOnFirstUseUnwritable(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	known := filepath.Join(notDir, "known_relays") // its folder is a file
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			_, err := srv.dialWith(t, kind, &Verifier{KnownRelays: known}, testALPN)
			ie := identityError(t, err)
			mustContain(t, ie.Error(), known, "not a directory", "--known-relays", "--fingerprint "+Fingerprint(srv.cert.Leaf))
		})
	}
}

func TestTrustOnFirstUseBadEntry(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	known := filepath.Join(t.TempDir(), "known_relays")
	if err := os.WriteFile(known, []byte("\n\n"+srv.addr+" SHA256:bogus\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := srv.dialWith(t, KindTCP, &Verifier{KnownRelays: known}, testALPN)
	ie := identityError(t, err)
	mustContain(t, ie.Error(), known+":3", "bogus")
}

// TestALPN: the server accepts any relay/N so the hello can report a version
// mismatch in words, and refuses other protocols during the handshake.
func TestALPN(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, testOptions(), nil)
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			c, err := srv.dialWith(t, kind, &Verifier{Pin: srv.pin}, "relay/9")
			if err != nil {
				t.Fatalf("dial offering relay/9: %v", err)
			}
			s := srv.accept(t)
			if got := c.ConnectionState().NegotiatedProtocol; got != "relay/9" {
				t.Errorf("client NegotiatedProtocol = %q, want relay/9", got)
			}
			if got := s.ConnectionState().NegotiatedProtocol; got != "relay/9" {
				t.Errorf("server NegotiatedProtocol = %q, want relay/9", got)
			}
			for _, alpn := range []string{"http/1.1", "relay/" + strings.Repeat("9", 40)} {
				if _, err := srv.dialWith(t, kind, &Verifier{Pin: srv.pin}, alpn); err == nil {
					t.Errorf("dial offering only %q succeeded", alpn)
				} else if errors.As(err, new(*IdentityError)) {
					t.Errorf("dial offering only %q: %v, an identity error", alpn, err)
				}
			}
		})
	}
}

// FuzzParseFingerprint: --fingerprint and known_relays lines as anyone
// may paste them. What parses is a SHA-256, and the form relayd prints
// for it parses back to the same bytes.
func FuzzParseFingerprint(f *testing.F) {
	sum := sha256.Sum256([]byte("key"))
	for _, s := range []string{
		FingerprintPrefix + base64.RawStdEncoding.EncodeToString(sum[:]),
		"sha256:" + base64.StdEncoding.EncodeToString(sum[:]),
		hex.EncodeToString(sum[:]),
		"AB:CD:" + strings.Repeat("00:", 29) + "EF",
		"SHA256:", "", "SHA256:abc",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseFingerprint(s)
		if err != nil {
			return
		}
		if len(b) != sha256.Size {
			t.Fatalf("ParseFingerprint(%q) = %d bytes", s, len(b))
		}
		again, err := ParseFingerprint(FingerprintPrefix + base64.RawStdEncoding.EncodeToString(b))
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("ParseFingerprint(%q) = %x, whose printed form parses to %x, %v", s, b, again, err)
		}
	})
}
