package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"
)

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error (default: [log] level, info)"},
		&cli.StringFlag{Name: "log-format", Usage: "text or json (default: [log] format, text)"},
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// newLogger builds the logger from the flags, falling back to [log].
func newLogger(c *cli.Context, cfg *Config, w io.Writer) (*slog.Logger, error) {
	level, format := cfg.Log.Level, cfg.Log.Format
	if c.IsSet("log-level") {
		level = c.String("log-level")
	}
	if c.IsSet("log-format") {
		format = c.String("log-format")
	}
	l, err := parseLevel(level)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--log-level: %v", err), 2)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, cli.Exit(fmt.Sprintf("--log-format: %q is not text or json", format), 2)
}
