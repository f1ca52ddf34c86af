// Package debugpprof serves net/http/pprof when the environment asks for it,
// for profiling relayd and relayctl under load:
//
//	RELAY_PPROF=127.0.0.1:6060 relayd --config relay.toml
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
//
// It listens on loopback addresses only: profiles show tunnel names, client
// addresses and timings that are nobody else's business.
package debugpprof

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// EnvVar names the variable that turns profiling on; its value is the
// loopback host:port to serve on.
const EnvVar = "RELAY_PPROF"

// Start serves pprof on $RELAY_PPROF, if set, for the life of the process.
// A bad or non-loopback address is logged and ignored: profiling must never
// keep the program from running.
func Start(log *slog.Logger) {
	addr := os.Getenv(EnvVar)
	if addr == "" {
		return
	}
	if err := start(addr, log); err != nil {
		log.Warn("pprof not started", "env", EnvVar, "err", err)
	}
}

func start(addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("serving pprof", "addr", ln.Addr().String())
	go srv.Serve(ln)
	return nil
}
