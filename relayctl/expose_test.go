package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/tunnel"
)

// parseExpose runs exposePlan on args (after "relayctl expose") with env
// set, as main would.
func parseExpose(t *testing.T, env map[string]string, args ...string) (tunnel.AgentConfig, error) {
	t.Helper()
	for _, k := range []string{"RELAY_ADDR", "RELAY_TOKEN", "RELAY_TOKEN_FILE", "RELAY_FINGERPRINT", "RELAY_TRANSPORT", "RELAY_KNOWN_RELAYS", "RELAY_PROXY"} {
		t.Setenv(k, env[k])
		if env[k] == "" {
			os.Unsetenv(k)
		}
	}
	var cfg tunnel.AgentConfig
	cmd := *exposeCommand
	// Fresh flags each run: urfave/cli keeps a value read from the
	// environment in the flag itself. cli.HelpFlag stays out: a Run of the
	// real command earlier in this process (TestUnknownCommand, before
	// this test under -count=2 or -shuffle) appended it to
	// exposeCommand.Flags, and Run appends it again unless it finds that
	// very pointer, so a copy of it would define --help twice (a panic).
	cmd.Flags = nil
	for _, f := range exposeCommand.Flags {
		if f == cli.HelpFlag {
			continue
		}
		v := reflect.New(reflect.TypeOf(f).Elem())
		v.Elem().Set(reflect.ValueOf(f).Elem())
		cmd.Flags = append(cmd.Flags, v.Interface().(cli.Flag))
	}
	cmd.Action = func(c *cli.Context) error {
		p, err := exposePlan(c)
		if p != nil {
			cfg = p.cfg
		}
		return err
	}
	app := newApp()
	app.Commands = []*cli.Command{&cmd}
	err := app.Run(reorderArgs(app, append([]string{"relayctl", "expose"}, args...)))
	return cfg, err
}

func TestExposeConfigAllowDeny(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	cfg, err := parseExpose(t, nil, "8080", "9090", "--relay", "r", "--token", "s", "--fingerprint", fp,
		"--allow", "10.0.0.0/8, 192.0.2.7", "--allow", "2001:db8::/32", "--deny", "10.1.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	allow := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32")}
	deny := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	if len(cfg.Tunnels) != 2 {
		t.Fatalf("%d tunnels, want 2", len(cfg.Tunnels))
	}
	for _, spec := range cfg.Tunnels {
		if !reflect.DeepEqual(spec.Allow, allow) || !reflect.DeepEqual(spec.Deny, deny) {
			t.Errorf("tunnel %s: allow %v, deny %v; want %v and %v", spec.Name, spec.Allow, spec.Deny, allow, deny)
		}
	}

	// Without the flags, the lists are empty.
	cfg, err = parseExpose(t, nil, "8080", "--relay", "r", "--token", "s", "--fingerprint", fp)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Tunnels[0]; s.Allow != nil || s.Deny != nil {
		t.Errorf("no flags: allow %v, deny %v; want none", s.Allow, s.Deny)
	}

	// Sixteen is the most the protocol carries.
	sixteen := strings.TrimSuffix(strings.Repeat("10.0.0.0/8,", tunnel.MaxPrefixes), ",")
	if _, err := parseExpose(t, nil, "8080", "--relay", "r", "--token", "s", "--fingerprint", fp, "--deny", sixteen); err != nil {
		t.Errorf("%d deny prefixes: %v", tunnel.MaxPrefixes, err)
	}
}

func TestExposeConfigTokenFile(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("\t secret-from-file \r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag", nil, []string{"--token-file", path}},
		{"env", map[string]string{"RELAY_TOKEN_FILE": path}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseExpose(t, tc.env, append([]string{"8080", "--relay", "r", "--fingerprint", fp}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Token != "secret-from-file" {
				t.Errorf("Token = %q, want the file's content trimmed", cfg.Token)
			}
		})
	}

	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("x", maxTokenFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := parseExpose(t, nil, "8080", "--relay", "r", "--fingerprint", fp, "--token-file", big)
	var ec cli.ExitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.Contains(err.Error(), big+" is larger than") {
		t.Errorf("a %d-byte token file: %v, want exit %d naming the file", maxTokenFile+1, err, exitUsage)
	}
}

// TestExposeRetryFlags: the reconnect and drain flags reach the plan, and
// bad values are usage errors naming the flag.
func TestExposeRetryFlags(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	base := []string{"8080", "--relay", "r", "--token", "s", "--fingerprint", fp}
	cfg, err := parseExpose(t, nil, base...)
	if err != nil {
		t.Fatal(err)
	}
	if msg := retryMismatch(cfg, 0, 30*time.Second, false); msg != "" {
		t.Errorf("defaults: %s", msg)
	}
	cfg, err = parseExpose(t, nil, append(base, "--max-retries", "3", "--retry-max-delay", "5s", "--wait-for-relay", "--drain-timeout", "1m")...)
	if err != nil {
		t.Fatal(err)
	}
	if msg := retryMismatch(cfg, 3, 5*time.Second, true); msg != "" {
		t.Errorf("flags: %s", msg)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-retries", "-1"}, "--max-retries: -1: must be 0 (retry forever) or more"},
		{[]string{"--retry-max-delay", "0s"}, "--retry-max-delay: 0s: must be at least 500ms"},
		{[]string{"--retry-max-delay", "30"}, "--retry-max-delay: 30 has no unit: write it with one, such as 30s"},
		{[]string{"--drain-timeout", "1.5"}, "--drain-timeout: 1.5 has no unit: write it with one, such as 1.5s"},
		{[]string{"--max-retries", "1.5"}, `invalid value "1.5" for flag --max-retries: parse error (see relayctl expose --help)`}, // not a duration
		{[]string{"--drain-timeout", "-1s"}, "--drain-timeout: -1s: must be a duration"},
	} {
		_, err := parseExpose(t, nil, append(base, tt.args...)...)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want exit %d saying %q", tt.args, err, exitUsage, tt.want)
		}
	}
}

// TestExposeRelayAddress: --relay takes HOST, HOST:PORT and IPv6 in either
// form; a URL, a port that is no number or no host is a usage error naming
// --relay, not a relay that cannot be reached (exit 1, retried for ever
// with --wait-for-relay).
func TestExposeRelayAddress(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	for _, tt := range []struct{ relay, want string }{
		{"relay.example.com", "relay.example.com:7000"},
		{"relay.example.com:24000", "relay.example.com:24000"},
		{"127.0.0.1", "127.0.0.1:7000"},
		{"::1", "[::1]:7000"},
		{"[::1]", "[::1]:7000"},
		{"[::1]:24000", "[::1]:24000"},
	} {
		cfg, err := parseExpose(t, nil, "8080", "--relay", tt.relay, "--token", "s", "--fingerprint", fp)
		if err != nil {
			t.Errorf("--relay %s: %v", tt.relay, err)
		} else if cfg.Relay != tt.want {
			t.Errorf("--relay %s: dials %s, want %s", tt.relay, cfg.Relay, tt.want)
		}
	}
	for _, tt := range []struct{ relay, want string }{
		{"tcp://relay.example.com:24000", `--relay: "tcp://relay.example.com:24000": not a URL: give HOST:PORT, without tcp://`},
		{"https://relay.example.com", "not a URL"},
		{"relay.example.com:seven", `port "seven" is not a number from 1 to 65535`},
		{"relay.example.com:70000", `port "70000" is not a number`},
		{"relay.example.com:0", `port "0" is not a number`},
		{"relay.example.com:", `port "" is not a number`},
		{":7000", "no host"},
		{"relay.example.com/x", "not HOST:PORT"},
		{"2001:db8::1:7000:x", "an IPv6 address goes in brackets"},
	} {
		_, err := parseExpose(t, nil, "8080", "--relay", tt.relay, "--token", "s", "--fingerprint", fp)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("--relay %s: %v, want exit %d saying %q", tt.relay, err, exitUsage, tt.want)
		}
	}
}

// TestExposeSameName: two LOCALs that would make one tunnel name say so in
// expose's terms, with a fix that works: --name makes NAME-PORT, so setting
// it (what agent.toml's message suggests) cannot part two LOCALs on one port.
func TestExposeSameName(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	// Two servers whose names differ only where a tunnel name, at most 63
	// characters, leaves them out.
	long := "." + strings.Repeat("x", 60) + ".example.com:8080"
	longName := deriveName("a" + long)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"8080", "8080"}, `LOCAL "8080" is given twice: give it once`},
		{[]string{"8080", "localhost:8080"}, `LOCAL "8080" and "localhost:8080" are the same server, localhost:8080: give it once`},
		{[]string{"127.0.0.1:8080", "[::1]:8080", "--name", "web"}, `LOCAL "127.0.0.1:8080" and "[::1]:8080" would both be tunnel "web-8080" (--name web names each web-PORT): run expose once for each, with a --name each, or leave --name out`},
		// Without --name, two servers can still make one name.
		{[]string{"a" + long, "b" + long}, `LOCAL "a` + long + `" and "b` + long + `" would both be tunnel "` + longName + `": run expose once for each, with a --name each`},
		{[]string{"1:8080", "[::1]:8080"}, `LOCAL "1:8080" and "[::1]:8080" would both be tunnel "1-8080": run expose once for each, with a --name each`},
	} {
		_, err := parseExpose(t, nil, append(tt.args, "--relay", "r", "--token", "s", "--fingerprint", fp)...)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want exit %d saying %q", tt.args, err, exitUsage, tt.want)
		}
	}
	// A --name that is no tunnel name is reported as such, not as two
	// LOCALs sharing it.
	cfg, err := parseExpose(t, nil, "8080", "9090", "--name", "Bad!", "--relay", "r", "--token", "s", "--fingerprint", fp)
	if want := `--name: tunnel name "Bad!" is invalid`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("8080 9090 --name Bad!: %v, want it saying %q", err, want)
	}
	// Without --name the two hosts make two names.
	cfg, err = parseExpose(t, nil, "127.0.0.1:8080", "[::1]:8080", "--relay", "r", "--token", "s", "--fingerprint", fp)
	if err != nil || len(cfg.Tunnels) != 2 || cfg.Tunnels[0].Name == cfg.Tunnels[1].Name {
		t.Errorf("127.0.0.1:8080 [::1]:8080: %v, tunnels %+v; want two names", err, cfg.Tunnels)
	}
}

// TestExposeProxyProtocol: --proxy-protocol takes v1 or v2, with or
// without the v, and v2 on UDP too; the tunnels ask the agent for that
// header.
func TestExposeProxyProtocol(t *testing.T) {
	fp := "SHA256:" + strings.Repeat("A", 43)
	for _, tt := range []struct {
		flag, proto string
		want        int
	}{
		{"", "tcp", 0},
		{"v1", "tcp", 1},
		{"1", "tcp", 1},
		{"v2", "tcp", 2},
		{"2", "tcp", 2},
		{"v2", "udp", 2},
		{"2", "tcp,udp", 2},
	} {
		args := []string{"8080", "9090", "--proto", tt.proto, "--relay", "r", "--token", "s", "--fingerprint", fp}
		if tt.flag != "" {
			args = append(args, "--proxy-protocol", tt.flag)
		}
		cfg, err := parseExpose(t, nil, args...)
		if err != nil {
			t.Errorf("--proxy-protocol %q --proto %s: %v", tt.flag, tt.proto, err)
			continue
		}
		for _, spec := range cfg.Tunnels {
			if spec.ProxyProtocol != tt.want {
				t.Errorf("--proxy-protocol %q --proto %s: tunnel %s has version %d, want %d", tt.flag, tt.proto, spec.Name, spec.ProxyProtocol, tt.want)
			}
		}
	}
}

// TestExposeTransparent: --transparent asks every tunnel of the command to
// connect from its clients' addresses.
func TestExposeTransparent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("--transparent is refused off Linux (TestRefusals)")
	}
	fp := "SHA256:" + strings.Repeat("A", 43)
	for _, on := range []bool{false, true} {
		args := []string{"8080", "localhost:9090", "--proto", "tcp,udp", "--relay", "r", "--token", "s", "--fingerprint", fp}
		if on {
			args = append(args, "--transparent")
		}
		cfg, err := parseExpose(t, nil, args...)
		if err != nil {
			t.Fatalf("--transparent=%v: %v", on, err)
		}
		for _, spec := range cfg.Tunnels {
			if spec.Transparent != on {
				t.Errorf("--transparent=%v: tunnel %s has Transparent %v", on, spec.Name, spec.Transparent)
			}
		}
	}
}

// TestNoConfigDir: without --fingerprint, the relay's key is checked
// against the known-relays file in the user's config folder; with no such
// folder ($XDG_CONFIG_HOME and $HOME unset, as for some services), a usage
// error names the settings that do without it.
func TestNoConfigDir(t *testing.T) {
	for _, k := range []string{"HOME", "XDG_CONFIG_HOME"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	_, err := parseExpose(t, nil, "8080", "--relay", "r", "--token", "s")
	var ec cli.ExitCoder
	if want := "no --fingerprint and no config directory for the known-relays file: set --fingerprint or --known-relays"; !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != want {
		t.Errorf("expose with no config folder: %v, want exit %d and %q", err, exitUsage, want)
	}
	if _, err := parseExpose(t, nil, "8080", "--relay", "r", "--token", "s", "--known-relays", filepath.Join(t.TempDir(), "known")); err != nil {
		t.Errorf("expose with --known-relays and no config folder: %v", err)
	}

	clearTokenEnv(t)
	_, err = parseAgentFile("agent.toml", "relay = \"r\"\ntoken = \"s\"\n[[tunnels]]\nlocal = \"8080\"\n")
	if want := "agent.toml: no fingerprint and no config directory for the known-relays file: set fingerprint or known_relays"; err == nil || err.Error() != want {
		t.Errorf("agent.toml with no config folder: %v, want %q", err, want)
	}
}
