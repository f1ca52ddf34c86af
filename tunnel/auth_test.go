package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

func TestKeyID(t *testing.T) {
	if KeyID("s3cret") != KeyID("s3cret") {
		t.Fatal("KeyID is not deterministic")
	}

	// Independently computed: SHA-256("relay token id" | 0x00 | secret),
	// first 16 bytes.
	h := sha256.Sum256([]byte("relay token id\x00s3cret"))
	if got := KeyID("s3cret"); got != [keyIDLen]byte(h[:keyIDLen]) {
		t.Errorf("KeyID(%q) = %x, want %x", "s3cret", got, h[:keyIDLen])
	}

	secrets := []string{"", "a", "b", "ab", "a\x00", "s3cret", "s3cret ", "S3cret"}
	seen := map[[keyIDLen]byte]string{}
	for _, s := range secrets {
		id := KeyID(s)
		if prev, ok := seen[id]; ok {
			t.Errorf("KeyID(%q) == KeyID(%q) = %x", s, prev, id)
		}
		seen[id] = s
	}
}

func TestProof(t *testing.T) {
	nonce := [nonceLen]byte(wirePattern(nonceLen, 5))
	ekm := wirePattern(32, 9)
	base := Proof("s3cret", nonce, ekm)

	if Proof("s3cret", nonce, append([]byte(nil), ekm...)) != base {
		t.Fatal("Proof differs for the same inputs")
	}

	// Independently computed: HMAC-SHA256(secret, "relay auth v1" | 0x00 | nonce | ekm).
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write([]byte("relay auth v1\x00"))
	m.Write(nonce[:])
	m.Write(ekm)
	if want := [proofLen]byte(m.Sum(nil)); base != want {
		t.Errorf("Proof = %x, want %x", base, want)
	}

	otherNonce := nonce
	otherNonce[nonceLen-1] ^= 1
	otherEKM := append([]byte(nil), ekm...)
	otherEKM[0] ^= 0x80
	tests := []struct {
		name   string
		secret string
		nonce  [nonceLen]byte
		ekm    []byte
	}{
		{"secret", "s3creT", nonce, ekm},
		{"empty-secret", "", nonce, ekm},
		{"nonce", "s3cret", otherNonce, ekm},
		{"zero-nonce", "s3cret", [nonceLen]byte{}, ekm},
		{"ekm", "s3cret", nonce, otherEKM},
		{"ekm-short", "s3cret", nonce, ekm[:31]},
		{"ekm-none", "s3cret", nonce, nil},
	}
	seen := map[[proofLen]byte]string{base: "base"}
	for _, tt := range tests {
		p := Proof(tt.secret, tt.nonce, tt.ekm)
		if prev, ok := seen[p]; ok {
			t.Errorf("Proof with a different %s equals the %s proof: %x", tt.name, prev, p)
		}
		seen[p] = tt.name
	}

	// A proof for one session's keying material is no good on another.
	if Proof("s3cret", nonce, ekm) == Proof("s3cret", nonce, otherEKM) {
		t.Error("Proof does not depend on the session's keying material")
	}
}
