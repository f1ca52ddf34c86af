package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/relaytun/relay/internal/tomlconf"
)

var runCommand = &cli.Command{
	Name:      "run",
	Usage:     "run the tunnels an agent.toml describes",
	ArgsUsage: "[-- COMMAND [ARG...]]",
	Description: "agent.toml holds the relay, the token and one [[tunnels]] table per local server\n" +
		"(examples/agent.toml lists every key). Once every tunnel is live, one line per public\n" +
		"listener is printed on stdout: tcp://HOST:PORT or udp://HOST:PORT. Logs go to stderr.\n\n" +
		"With -- COMMAND, relayctl starts COMMAND, exposes the tunnels once their local servers\n" +
		"accept connections, passes signals on to it, and exits with its exit code when it ends.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "the agent's `FILE` (agent.toml)"},
		controlFlag(),
	},
	Action: runAction,
}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("unexpected argument %q: run takes its tunnels from --config; a command to wrap goes after --", c.Args().First()), exitUsage)
	}
	path := c.String("config")
	if path == "" {
		return cli.Exit("run needs --config FILE: an agent.toml (examples/agent.toml is a sample)", exitUsage)
	}
	plan, err := loadAgentFile(path)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	return runAgent(c, plan)
}

// loadAgentFile reads agent.toml over the defaults, strictly, and checks
// it: every error names the file, line and key. A relative token_file or
// known_relays is taken from the file's folder. When the file sets neither
// token nor token_file, RELAY_TOKEN or RELAY_TOKEN_FILE may give the token;
// one without proxy takes RELAY_PROXY's.
func loadAgentFile(path string) (*agentPlan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %v", path, pathErr(err))
	}
	return parseAgentFile(path, string(data))
}

// parseAgentFile is loadAgentFile on text already read.
func parseAgentFile(path, data string) (*agentPlan, error) {
	s := defaultSpec()
	if err := tomlconf.Decode(path, data, &s, "examples/agent.toml"); err != nil {
		return nil, err
	}
	s.given = map[string]bool{}
	for _, k := range []string{"idle_timeout", "keepalive"} {
		s.given[k] = tomlconf.Defined(data, k)
	}
	for _, p := range []*string{&s.TokenFile, &s.KnownRelays} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	if s.Token == "" && s.TokenFile == "" {
		s.Token, s.TokenFile = os.Getenv("RELAY_TOKEN"), os.Getenv("RELAY_TOKEN_FILE")
	}
	if s.Proxy == "" {
		s.Proxy = os.Getenv("RELAY_PROXY")
	}
	plan, err := s.build(fileNaming)
	if err != nil {
		src := tomlconf.Source{File: path, Data: data}
		var se *specError
		switch {
		case !errors.As(err, &se) || se.Key == "":
			return nil, &tomlconf.Error{File: path, Msg: err.Error()}
		case se.Whole:
			// The message names its keys: point at the line alone.
			e := src.Fail(se.Key, se.Index, "%s", se.Msg).(*tomlconf.Error)
			e.Key = ""
			return nil, e
		}
		return nil, src.Fail(se.Key, se.Index, "%s", se.Msg)
	}
	return plan, nil
}

// fileNaming names settings by agent.toml's keys.
var fileNaming = naming{
	key:             func(key string) string { return strings.TrimPrefix(key, "tunnels.") },
	tokenEnvMissing: " (or RELAY_TOKEN or RELAY_TOKEN_FILE in the environment)",
	tokenEnvBoth:    " (RELAY_TOKEN and RELAY_TOKEN_FILE count when the file sets neither)",
}
