package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"

	"github.com/relaytun/relay/transport"
)

const (
	ekmLabel   = "EXPORTER-relay-auth"
	proofLabel = "relay auth v1"
	keyIDLabel = "relay token id"
)

// KeyID names a secret without revealing it.
func KeyID(secret string) [keyIDLen]byte {
	h := sha256.New()
	h.Write([]byte(keyIDLabel))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	var id [keyIDLen]byte
	copy(id[:], h.Sum(nil))
	return id
}

// sessionBinding is the keying material both ends export from the session's
// TLS state; it differs for every TLS session.
func sessionBinding(s transport.Session) ([]byte, error) {
	ekm, err := s.ExportKeyingMaterial(ekmLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("exporting keying material: %w", err)
	}
	return ekm, nil
}

// Proof computes HMAC-SHA256(secret, label | nonce | ekm).
func Proof(secret string, nonce [nonceLen]byte, ekm []byte) [proofLen]byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(proofLabel))
	m.Write([]byte{0})
	m.Write(nonce[:])
	m.Write(ekm)
	var p [proofLen]byte
	copy(p[:], m.Sum(nil))
	return p
}
