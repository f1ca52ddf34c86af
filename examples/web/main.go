// Web is a small HTTP server to put behind the relay. It answers / with a
// short page showing the request's remote address, Host header and the time,
// and /healthz with "ok".
//
// Run it, expose it through a relay, and fetch it from anywhere:
//
//	go run ./examples/web &
//	relayctl expose 8080 --relay HOST:7000 --token SECRET --fingerprint SHA256:…
//	curl http://HOST:PORT/
//	curl http://HOST:PORT/healthz
//
// relayctl prints the public address as tcp://HOST:PORT. The remote address
// the page shows is the agent's connection to this server, not the browser's:
// the relay logs the client's real address. Flags:
//
//	-listen ADDR   address to listen on (default 127.0.0.1:8080)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *listen, log); err != nil {
		fmt.Fprintln(os.Stderr, "web:", err)
		os.Exit(1)
	}
}

// serve runs the HTTP server on addr until ctx ends, then shuts it down,
// letting requests in flight finish for up to five seconds.
func serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	srv := &http.Server{
		Handler:           logRequests(newMux(), log),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("web server listening", "url", "http://"+ln.Addr().String()+"/")

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	log.Info("web server stopped")
	return nil
}

// page is the response to /. html/template escapes the Host header, which
// the client chose.
var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Behind the relay</title></head>
<body>
<h1>Hello from behind the relay</h1>
<table>
<tr><th align="left">Remote address</th><td>{{.RemoteAddr}}</td></tr>
<tr><th align="left">Host</th><td>{{.Host}}</td></tr>
<tr><th align="left">Time</th><td>{{.Time}}</td></tr>
</table>
</body></html>
`))

func newMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		page.Execute(w, struct{ RemoteAddr, Host, Time string }{
			r.RemoteAddr, r.Host, time.Now().Format(time.RFC1123),
		})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// logRequests logs each request once it is answered.
func logRequests(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		log.Info("request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"duration", time.Since(start).Round(time.Microsecond))
	})
}
