package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIdentityErrors: a state_dir that cannot be made, and a token file
// there too short to use, each stop relayd with a line that names the
// path and says what to do.
func TestIdentityErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "file", "", 0o600)
	inFile := filepath.Join(file, "state")

	cfg := DefaultConfig()
	cfg.Relay.StateDir = inFile
	_, err := loadIdentity(&cfg)
	if want := "creating state_dir " + inFile + ": mkdir " + file + ": not a directory: set [relay] state_dir to a folder relayd can write"; err == nil || err.Error() != want {
		t.Errorf("loadIdentity with state_dir under a file: %v\nwant %s", err, want)
	}
	_, _, err = loadGeneratedToken(inFile)
	if want := "reading token: open " + filepath.Join(inFile, "token") + ": not a directory"; err == nil || err.Error() != want {
		t.Errorf("loadGeneratedToken under a file: %v\nwant %s", err, want)
	}

	short := t.TempDir()
	path := writeFile(t, short, "token", "  tiny-tok\n", 0o600)
	_, _, err = loadGeneratedToken(short)
	if want := path + ": the token there is shorter than 16 characters; delete the file to make a new one"; err == nil || err.Error() != want {
		t.Errorf("loadGeneratedToken with a short token: %v\nwant %s", err, want)
	}
	if err != nil && strings.Contains(err.Error(), "tiny-tok") {
		t.Errorf("the error shows the token: %q", err)
	}
}

// TestRelativeStateDir: a relative state_dir (and cert_file, key_file)
// starts at relay.toml's folder, as secret_file does, whatever folder relayd
// runs in: `relayd fingerprint --config d/relay.toml` from another folder
// used to make a second key there and print its fingerprint, which no
// relay served. A key that only the working directory's state_dir holds
// (where relayd used to look) is still used.
func TestRelativeStateDir(t *testing.T) {
	confDir, cwd := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	path := writeFile(t, confDir, "relay.toml", "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\ncert_file = \"tls/cert.pem\"\nkey_file = \"tls/key.pem\"\n", 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(confDir, "state")
	if got, err := cfg.stateDir(); err != nil || got != want {
		t.Errorf("stateDir() = %q, %v; want %q", got, err, want)
	}
	for _, p := range []string{"tls/cert.pem", "tls/key.pem"} {
		if got, want := cfg.path(p), filepath.Join(confDir, p); got != want {
			t.Errorf("path(%q) = %q, want %q", p, got, want)
		}
	}
	cfg.Relay.CertFile, cfg.Relay.KeyFile = "", ""
	if _, err := loadIdentity(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(want, "relay.key")); err != nil {
		t.Errorf("no key in relay.toml's state_dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cwd, "state")); !os.IsNotExist(err) {
		t.Errorf("a state_dir was made in the working directory (stat: %v)", err)
	}

	// A deployment that relied on the working directory keeps its key.
	other := filepath.Join(t.TempDir(), "relay.toml")
	if err := os.WriteFile(other, []byte("[relay]\nstate_dir = \"state\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = LoadConfig(other)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cfg.stateDir(); err != nil || got != filepath.Join(filepath.Dir(other), "state") {
		t.Errorf("with no state_dir anywhere: stateDir() = %q, %v", got, err)
	}
	if err := os.Mkdir(filepath.Join(cwd, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cwd, "state"), "relay.key", "", 0o600)
	if got, err := cfg.stateDir(); err != nil || got != "state" {
		t.Errorf("with only the working directory's state_dir: stateDir() = %q, %v; want \"state\"", got, err)
	}
}
