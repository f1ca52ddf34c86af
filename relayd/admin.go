package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/relaytun/relay/tunnel"
)

// AdminSection is [admin]: the HTTP endpoint for health checks, Prometheus
// metrics and the JSON API.
type AdminSection struct {
	// Listen is host:port; "" turns the admin API off.
	Listen string `toml:"listen"`
	// Token, or the file TokenFile names, is the bearer token requests
	// must carry. Required when Listen is not a loopback address.
	Token     string `toml:"token"`
	TokenFile string `toml:"token_file"`

	// token is the token in effect and tokenPath the file it came from,
	// resolved; both set by validateAdmin.
	token     string
	tokenPath string
}

const defaultAdminListen = "127.0.0.1:7001"

func defaultAdmin() AdminSection { return AdminSection{Listen: defaultAdminListen} }

// validateAdmin checks [admin] and reads token_file.
func (c *Config) validateAdmin() error {
	a := &c.Admin
	a.token, a.tokenPath = a.Token, ""
	if a.Token != "" && a.TokenFile != "" {
		return c.fail("admin.token_file", "both token and token_file are set: keep one")
	}
	if a.TokenFile != "" {
		path := a.TokenFile
		if !filepath.IsAbs(path) && c.file != "" {
			path = filepath.Join(filepath.Dir(c.file), path)
		}
		tok, err := readSecretFile(path)
		if err != nil {
			return c.fail("admin.token_file", "%v", err)
		}
		a.token, a.tokenPath = tok, path
	}
	key := "admin.token"
	if a.tokenPath != "" {
		key = "admin.token_file"
	}
	// The API trims the bearer token it is sent, as token_file's is.
	if strings.TrimSpace(a.token) != a.token {
		return c.fail(key, "the admin token has whitespace at its start or end, which the admin API and token_file leave out: remove it")
	}
	if a.token != "" && len(a.token) < tunnel.MinSecretLen {
		return c.fail(key, "the admin token must be at least %d characters (try `openssl rand -base64 24`)", tunnel.MinSecretLen)
	}
	if a.Listen == "" {
		return nil
	}
	host, _, err := splitListen(a.Listen)
	if errors.Is(err, errNotHostPort) {
		return c.fail("admin.listen", "%q is not host:port (for example %q), or \"\" to turn the admin API off", a.Listen, defaultAdminListen)
	}
	if err != nil {
		return c.fail("admin.listen", "%q: %v", a.Listen, err)
	}
	if a.token == "" && !isLoopback(host) {
		return c.fail("admin.listen", "%q can be reached from other machines, so the admin API needs a bearer token: set [admin] token or token_file, or listen on 127.0.0.1", a.Listen)
	}
	return nil
}

// isLoopback reports whether host names this machine only. A host name
// other than localhost might resolve anywhere, so it does not count.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// adminWarnings finds the files holding the admin token that every user
// can read, as readableSecrets does for the tokens' secrets.
func adminWarnings(cfg *Config) []fileWarning {
	a := &cfg.Admin
	switch {
	case a.tokenPath != "":
		return worldReadable(a.tokenPath, "the admin token_file can be read by every user",
			fmt.Sprintf("chmod 600 %s (or 640 with relayd's group)", a.tokenPath))
	case a.Token != "" && !slices.ContainsFunc(cfg.Tokens, func(t TokenSection) bool { return t.Secret != "" }):
		// With a token's secret inline too, readableSecrets warns already.
		return worldReadable(cfg.file, "the config file holds the admin token and every user can read it",
			fmt.Sprintf("chmod 600 %s (or 640 with relayd's group), or move the token to a file named by [admin] token_file", cfg.file))
	}
	return nil
}

// worldReadable is a warning about path when every user can read it.
func worldReadable(path, msg, fix string) []fileWarning {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return nil
	}
	return []fileWarning{{msg: msg, file: path, mode: fi.Mode().Perm(), fix: fix}}
}

// listenAdmin binds [admin] listen. It returns a nil listener, and no
// error, when the admin API is off, or when the default address is taken:
// relayd did not ask for that port by name, so another program (or a
// second relayd) holding it should not stop the relay; it is logged.
func listenAdmin(cfg *Config, log *slog.Logger) (net.Listener, error) {
	addr := cfg.Admin.Listen
	if addr == "" {
		log.Info("admin API off ([admin] listen is empty)")
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if !cfg.defined("admin", "listen") {
		log.Info("admin API off: its default address is in use; set [admin] listen to a free address, or \"\" to silence this",
			"listen", addr, "err", err)
		return nil, nil
	}
	return nil, fmt.Errorf("admin API: %w (\"\" turns the admin API off)", bindError(err, "[admin] listen"))
}

// serveAdmin serves h on ln. The returned wait shuts the server down
// gracefully (a scrape in flight completes) and returns once it is down:
// relayd calls it after the relay has stopped, so the metrics stay up
// while agents drain.
func serveAdmin(ln net.Listener, h http.Handler, log *slog.Logger) (wait func()) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}
}

// requireToken wraps h so that every request must carry token as a bearer
// token; with no token, h is returned as it is.
func requireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	// Comparing hashes keeps the comparison's time independent of the
	// token's length as well as its content.
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The scheme is case-insensitive (RFC 9110).
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		ok = ok && strings.EqualFold(scheme, "Bearer")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		switch {
		case !ok:
			unauthorized(w, "missing bearer token: send the header \"Authorization: Bearer TOKEN\" with [admin] token")
		case subtle.ConstantTimeCompare(sum[:], want[:]) != 1:
			unauthorized(w, "wrong bearer token: it does not match [admin] token")
		default:
			h.ServeHTTP(w, r)
		}
	})
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="relayd"`)
	http.Error(w, msg, http.StatusUnauthorized)
}

// startAdmin starts the admin API on [admin] listen, if it is on, and
// returns what stops it. draining is adminHandler's.
func startAdmin(cfg *Config, relay relayView, draining func() bool, log *slog.Logger) (stop func(), err error) {
	ln, err := listenAdmin(cfg, log)
	if err != nil || ln == nil {
		return func() {}, err
	}
	auth := "none (loopback only)"
	if cfg.Admin.token != "" {
		auth = "bearer token"
	}
	log.Info("admin API listening", "admin", ln.Addr().String(), "auth", auth,
		"endpoints", "/healthz /metrics /api/v1/tunnels /api/v1/stats")
	return serveAdmin(ln, adminHandler(relay, advertisedHost(cfg), cfg.Admin.token, draining), log), nil
}
