package main

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// identity is the relay's certificate and where its state lives.
type identity struct {
	cert       tls.Certificate
	stateDir   string
	createdKey bool
}

// loadIdentity uses cert_file/key_file, or the key in state_dir (created on
// first use) with a self-signed certificate.
func loadIdentity(cfg *Config) (*identity, error) {
	dir, err := cfg.stateDir()
	if err != nil {
		return nil, err
	}
	if cfg.Relay.CertFile != "" {
		cert, err := cfg.certificate()
		if err != nil {
			return nil, err
		}
		return &identity{cert: cert, stateDir: dir}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stateDirError(dir, err)
	}
	key, created, err := transport.LoadOrCreateKey(filepath.Join(dir, "relay.key"))
	if err != nil {
		return nil, keyError(err)
	}
	cert, err := transport.SelfSignedCertificate(key, cfg.Relay.PublicHost)
	if err != nil {
		return nil, err
	}
	return &identity{cert: cert, stateDir: dir, createdKey: created}, nil
}

// certificate loads [relay] cert_file and key_file. An error points at
// cert_file's line, as the file's other errors point at theirs (it was a
// bare "loading certificate: open …" that named no key).
func (c *Config) certificate() (tls.Certificate, error) {
	cert, err := transport.LoadCertificate(c.path(c.Relay.CertFile), c.path(c.Relay.KeyFile))
	if err != nil {
		return cert, c.fail("relay.cert_file", "%v (key_file is %s)", err, c.path(c.Relay.KeyFile))
	}
	return cert, nil
}

// keyError says what to do about relay.key when what it holds is no key:
// restore it, or delete it. Not replaced on its own: a new key changes the
// fingerprint every agent pinned. A file that could not be read or written
// (permission denied: a relay.key made by root, under sudo, and a service
// running as its own user) is no reason to delete the key, and its error
// says what happened as it is.
func keyError(err error) error {
	var pathErr *fs.PathError
	var linkErr *os.LinkError
	if errors.As(err, &pathErr) || errors.As(err, &linkErr) {
		return err
	}
	return fmt.Errorf("%w (restore relay.key from a backup, or delete it to have relayd make a new key, "+
		"whose fingerprint every agent must then be given)", err)
}

// stateDirError is the error for a state_dir that cannot be created,
// with what to do about it.
func stateDirError(dir string, err error) error {
	return fmt.Errorf("creating state_dir %s: %w: set [relay] state_dir to a folder relayd can write", dir, err)
}

// tokenFile holds the token relayd makes when relay.toml defines none.
const tokenFile = "token"

// generatedTokenID names that token in logs.
const generatedTokenID = "default"

// loadGeneratedToken returns the token kept in state_dir for a relay.toml
// without [[tokens]], or a new one on first use (created reports that),
// which saveGeneratedToken keeps once relayd listens: a first start that
// fails to bind must leave the next start to print the token as made,
// not only log its file.
func loadGeneratedToken(stateDir string) (tok tunnel.Token, created bool, err error) {
	path := filepath.Join(stateDir, tokenFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		secret := strings.TrimSpace(string(data))
		if len(secret) < tunnel.MinSecretLen {
			return tok, false, fmt.Errorf("%s: the token there is shorter than %d characters; delete the file to make a new one", path, tunnel.MinSecretLen)
		}
		return tunnel.Token{ID: generatedTokenID, Secret: secret}, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return tok, false, fmt.Errorf("reading token: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return tok, false, stateDirError(stateDir, err)
	}
	return tunnel.Token{ID: generatedTokenID, Secret: rand.Text()}, true, nil
}

// saveGeneratedToken writes tok, made by loadGeneratedToken, to state_dir.
func saveGeneratedToken(stateDir string, tok tunnel.Token) error {
	if err := transport.WriteFileAtomic(filepath.Join(stateDir, tokenFile), []byte(tok.Secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing token: %w", err)
	}
	return nil
}
