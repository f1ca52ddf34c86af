package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// TestIdentityErrors: a state_dir that cannot be made, and a token file
// there too short to use, each stop relayd with a line that names the
// path and says what to do; a relay.key that holds no key is named, and
// left as it is.
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

	// A relay.key that holds no key (a file copied in its place, or cut
	// short) is refused, not replaced: a new key would change the
	// fingerprint the agents pinned.
	bad := t.TempDir()
	key := writeFile(t, bad, "relay.key", "garbage\n", 0o600)
	cfg.Relay.StateDir = bad
	_, err = loadIdentity(&cfg)
	if want := "reading key " + key + ": no PEM private key found (restore relay.key from a backup, or delete it to have relayd make a new key, " +
		"whose fingerprint every agent must then be given)"; err == nil || err.Error() != want {
		t.Errorf("loadIdentity with a garbage relay.key: %v\nwant %s", err, want)
	}
	if data, _ := os.ReadFile(key); string(data) != "garbage\n" {
		t.Errorf("the garbage relay.key was replaced by %q", data)
	}

	// One that cannot be read, or a folder where it cannot be written, is
	// no reason to delete the key: the error stays as it is. (As root the
	// test cannot make either happen for real; these are the errors
	// transport.LoadOrCreateKey returns then.)
	for _, ioErr := range []error{
		fmt.Errorf("reading key: %w", &fs.PathError{Op: "open", Path: key, Err: fs.ErrPermission}),
		fmt.Errorf("writing key: %w", &fs.PathError{Op: "open", Path: filepath.Join(bad, ".relay.key.tmp1"), Err: fs.ErrPermission}),
		fmt.Errorf("writing key: %w", &os.LinkError{Op: "rename", Old: filepath.Join(bad, ".relay.key.tmp1"), New: key, Err: fs.ErrPermission}),
	} {
		if got := keyError(ioErr); got != ioErr {
			t.Errorf("keyError(%q) = %q; want it as it is", ioErr, got)
		}
	}
}

// TestStartStateErrors: relayd itself stops on the errors above with exit
// 1 and their one line, having printed no token.
func TestStartStateErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "file", "", 0o600)
	short := t.TempDir()
	tokenPath := writeFile(t, short, "token", "tiny-tok\n", 0o600)
	for _, tt := range []struct {
		name, stateDir, want string
	}{
		{"state_dir under a file", filepath.Join(file, "state"),
			"creating state_dir " + filepath.Join(file, "state") + ": mkdir " + file + ": not a directory: set [relay] state_dir to a folder relayd can write"},
		{"short generated token", short,
			tokenPath + ": the token there is shorter than 16 characters; delete the file to make a new one"},
	} {
		config := writeFile(t, t.TempDir(), "relay.toml", fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = %q\n[admin]\nlisten = \"\"\n", tt.stateDir), 0o600)
		out, errOut, code := pt.Run(t, nil, pt.RelaydBin, "--config", config)
		if code != 1 || out != "" || errOut != "relayd: "+tt.want+"\n" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q\nwant exit 1, nothing, %q", tt.name, code, out, errOut, "relayd: "+tt.want)
		}
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

// TestDefaultStateDir: with no state_dir, the key and token go to
// systemd's $STATE_DIRECTORY (its first folder), else
// $XDG_STATE_HOME/relayd, else ~/.local/state/relayd; with none of them
// (a service started with no home), relayd says which key to set.
func TestDefaultStateDir(t *testing.T) {
	home := t.TempDir()
	cfg := DefaultConfig()
	for _, tt := range []struct {
		stateDirectory, xdg, home string
		want, err                 string
	}{
		{"/var/lib/relayd:/var/lib/other", "/xdg", home, "/var/lib/relayd", ""},
		{"", "/xdg", home, "/xdg/relayd", ""},
		{"", "", home, filepath.Join(home, ".local", "state", "relayd"), ""},
		{"", "", "", "", "no state_dir configured and no home directory: $HOME is not defined"},
	} {
		for k, v := range map[string]string{"STATE_DIRECTORY": tt.stateDirectory, "XDG_STATE_HOME": tt.xdg, "HOME": tt.home} {
			t.Setenv(k, v)
			if v == "" {
				os.Unsetenv(k)
			}
		}
		got, err := cfg.stateDir()
		if got != tt.want || tt.err == "" && err != nil || tt.err != "" && (err == nil || err.Error() != tt.err) {
			t.Errorf("STATE_DIRECTORY=%q XDG_STATE_HOME=%q HOME=%q: %q, %v; want %q, %q", tt.stateDirectory, tt.xdg, tt.home, got, err, tt.want, tt.err)
		}
	}
	if _, err := loadIdentity(&cfg); err == nil || !strings.HasPrefix(err.Error(), "no state_dir configured") {
		t.Errorf("loadIdentity with no home: %v, want the state_dir error", err)
	}
}
