package main

import (
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
