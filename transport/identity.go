package transport

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Relay identity.
//
// A relay is known by the SHA-256 of its certificate's public key
// (SubjectPublicKeyInfo), printed as "SHA256:" and unpadded base64, like SSH.
// Hashing the key rather than the certificate keeps the fingerprint when an
// operator renews the certificate with the same key.

// FingerprintPrefix starts every printed fingerprint.
const FingerprintPrefix = "SHA256:"

// Fingerprint returns the printed fingerprint of cert's public key.
func Fingerprint(cert *x509.Certificate) string {
	return FormatFingerprint(spkiHash(cert))
}

// FormatFingerprint prints a raw SHA-256 key hash.
func FormatFingerprint(sum []byte) string {
	return FingerprintPrefix + base64.RawStdEncoding.EncodeToString(sum)
}

func spkiHash(cert *x509.Certificate) []byte {
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return h[:]
}

// ParseFingerprint accepts what Fingerprint prints ("SHA256:" is optional and
// its case is ignored), or the same 32 bytes as hex with or without colons.
func ParseFingerprint(s string) ([]byte, error) {
	t := strings.TrimSpace(s)
	if len(t) >= len(FingerprintPrefix) && strings.EqualFold(t[:len(FingerprintPrefix)], FingerprintPrefix) {
		t = t[len(FingerprintPrefix):]
	}
	if b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(t, "=")); err == nil && len(b) == sha256.Size {
		return b, nil
	}
	if b, err := hex.DecodeString(strings.ReplaceAll(t, ":", "")); err == nil && len(b) == sha256.Size {
		return b, nil
	}
	return nil, fmt.Errorf("fingerprint %q is not a SHA-256 key fingerprint like the one `relayd fingerprint` prints (SHA256:…)", s)
}

// LoadOrCreateKey reads a PEM private key from path, or creates an ECDSA P-256
// key there (mode 0600, written atomically) when the file does not exist.
func LoadOrCreateKey(path string) (crypto.Signer, bool, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := parsePrivateKey(data)
		if err != nil {
			return nil, false, fmt.Errorf("reading key %s: %w", path, err)
		}
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("reading key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generating key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, fmt.Errorf("encoding key: %w", err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := WriteFileAtomic(path, pemBytes, 0o600); err != nil {
		return nil, false, fmt.Errorf("writing key: %w", err)
	}
	return key, true, nil
}

func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		var k any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
		return s, nil
	}
}

// SelfSignedCertificate makes a long-lived certificate for key. Agents pin the
// key, not the certificate, so it can be regenerated at every start.
func SelfSignedCertificate(key crypto.Signer, names ...string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "relayd"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// LoadCertificate loads an operator's certificate and key (PEM files).
func LoadCertificate(certFile, keyFile string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading certificate: %w", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("loading certificate: %w", err)
		}
	}
	return c, nil
}

// ServerTLSConfig serves cert with TLS 1.3 for ALPN protocol alpn. Clients
// offering another version of this project's protocol ("relay/N") complete
// the handshake anyway, so the tunnel hello can tell both sides which
// versions met; anything else fails at ALPN.
func ServerTLSConfig(cert tls.Certificate, alpn string) *tls.Config {
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpn},
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		for _, p := range hello.SupportedProtos {
			if p == alpn {
				return nil, nil
			}
		}
		for _, p := range hello.SupportedProtos {
			if strings.HasPrefix(p, ALPNPrefix) && len(p) <= 32 {
				c := base.Clone()
				c.GetConfigForClient = nil
				c.NextProtos = []string{p}
				return c, nil
			}
		}
		return nil, nil
	}
	return base
}

// IdentityError is a relay that failed verification. It is final: retrying or
// falling back to another transport will not fix it.
type IdentityError struct {
	Msg string
}

func (e *IdentityError) Error() string { return e.Msg }

// Verifier decides whether to trust a relay's certificate, in this order:
//
//  1. Pin set: the key's fingerprint must equal it.
//  2. Otherwise a certificate valid for the host under Roots (nil: the
//     system's roots) is trusted.
//  3. Otherwise trust on first use: the fingerprint is recorded in
//     KnownRelays against "host:port" and must match on every later
//     connection. A first use is logged as a warning.
//
// With no pin and no KnownRelays file, an unverifiable relay is refused.
type Verifier struct {
	Pin         []byte
	Roots       *x509.CertPool
	KnownRelays string
	Logger      *slog.Logger

	mu sync.Mutex // serialises known-relays file updates
}

// ClientTLSConfig returns the TLS configuration for dialing addr ("host:port")
// with ALPN protocol alpn, verified by v.
func (v *Verifier) ClientTLSConfig(addr, alpn string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("relay address %q: %w", addr, err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: host,
		NextProtos: []string{alpn},
		// Verification is done below, by VerifyConnection, in the order the
		// Verifier documents; the standard chain check is one of its steps.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return v.verify(addr, host, cs)
		},
	}, nil
}

func (v *Verifier) verify(addr, host string, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &IdentityError{Msg: "relay presented no certificate"}
	}
	leaf := cs.PeerCertificates[0]
	got := spkiHash(leaf)
	if v.Pin != nil {
		if !bytes.Equal(got, v.Pin) {
			return &IdentityError{Msg: fmt.Sprintf("relay %s has fingerprint %s, not the expected %s: check the pinned fingerprint (--fingerprint, or fingerprint in agent.toml) against what `relayd fingerprint` prints on the relay",
				addr, FormatFingerprint(got), FormatFingerprint(v.Pin))}
		}
		return nil
	}
	opts := x509.VerifyOptions{DNSName: host, Roots: v.Roots, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err == nil {
		return nil
	}
	if v.KnownRelays == "" {
		return &IdentityError{Msg: fmt.Sprintf("relay %s has a certificate that is not valid for %q under the system's roots, and no fingerprint was given: pass --fingerprint %s after checking it with `relayd fingerprint` on the relay",
			addr, host, FormatFingerprint(got))}
	}
	return v.trustOnFirstUse(addr, got)
}

func (v *Verifier) trustOnFirstUse(addr string, got []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	data, err := os.ReadFile(v.KnownRelays)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return &IdentityError{Msg: fmt.Sprintf("reading known relays: %v: %s", err, v.knownRelaysFix(got))}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || strings.HasPrefix(f[0], "#") || f[0] != addr {
			continue
		}
		want, err := ParseFingerprint(f[1])
		if err != nil {
			return &IdentityError{Msg: fmt.Sprintf("%s:%d: %v", v.KnownRelays, line, err)}
		}
		if !bytes.Equal(want, got) {
			return &IdentityError{Msg: fmt.Sprintf("relay %s now presents key %s, but %s:%d recorded %s for it: the relay's key changed or someone is intercepting. If the operator confirms the new key, delete that line or pass --fingerprint",
				addr, FormatFingerprint(got), v.KnownRelays, line, f[1])}
		}
		return nil
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	data = append(data, addr+" "+FormatFingerprint(got)+"\n"...)
	if err := os.MkdirAll(filepath.Dir(v.KnownRelays), 0o700); err != nil {
		return &IdentityError{Msg: fmt.Sprintf("recording relay key: %v: %s", err, v.knownRelaysFix(got))}
	}
	if err := WriteFileAtomic(v.KnownRelays, data, 0o600); err != nil {
		return &IdentityError{Msg: fmt.Sprintf("recording relay key: %v: %s", err, v.knownRelaysFix(got))}
	}
	if v.Logger != nil {
		v.Logger.Warn("trusting relay on first use; pass --fingerprint to pin it instead",
			"relay", addr, "fingerprint", FormatFingerprint(got), "recorded_in", v.KnownRelays)
	}
	return nil
}

// knownRelaysFix says what to do when the known-relays file cannot be read
// or written: trust on first use needs it, a pinned key does not.
func (v *Verifier) knownRelaysFix(got []byte) string {
	return fmt.Sprintf("trusting a relay on first use needs %s readable and writable: fix that, point --known-relays (known_relays in agent.toml) at a file that is, or pin the key with --fingerprint %s after checking it with `relayd fingerprint` on the relay",
		v.KnownRelays, FormatFingerprint(got))
}

// WriteFileAtomic writes data to a temporary file beside path and renames it
// into place, so readers see the old or the new content, never a part.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ResetKey derives Options.ResetKey from a server's private key, so the same
// key file gives the same stateless-reset tokens across restarts without
// another secret to keep.
func ResetKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("deriving the reset key: %w", err)
	}
	sum := sha256.Sum256(append([]byte("relay reset key\x00"), der...))
	return sum[:], nil
}
