// Quickstart is the one-command demo: a relay, an agent and a local web
// server, all in one process on loopback, wired the way relayd and relayctl
// wire them across the Internet.
//
//	go run ./examples/quickstart
//
// It prints the tunnel's public address (tcp://127.0.0.1:PORT), the curl and
// nc commands to reach the web server through it, what each part is, and the
// relayd/relayctl commands for a real deployment; then it runs until Ctrl-C.
// Flags:
//
//	-transport auto|quic|tcp   how the agent reaches the relay (default auto:
//	                           QUIC, falling back to TLS+smux over TCP)
//	-check                     fetch / once through the public address, print
//	                           the result and exit: 0 on success, 1 on failure
//	-v                         log at info level (default: warnings only)
//
// Logs go to stderr; everything meant for you goes to stdout.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

func main() {
	var opts options
	var verbose bool
	flag.StringVar(&opts.transport, "transport", tunnel.TransportAuto, "auto, quic or tcp: how the agent reaches the relay")
	flag.BoolVar(&opts.check, "check", false, "fetch / once through the tunnel, print the result and exit (0 on success, 1 on failure)")
	flag.BoolVar(&verbose, "v", false, "log at info level (default: warnings only)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "quickstart: unexpected argument %q\n", flag.Arg(0))
		flag.Usage()
		os.Exit(2)
	}
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	opts.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one kills the process at once.
	context.AfterFunc(ctx, stop)
	if err := run(ctx, opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// options are the demo's settings.
type options struct {
	// transport is tunnel.TransportAuto, TransportQUIC or TransportTCP.
	transport string
	// check fetches / through the tunnel once and returns, instead of
	// running until ctx ends.
	check bool
	// log receives the relay's and agent's logs; nil discards them.
	log *slog.Logger
	// tempRoot is where the temporary state directory is made; empty means
	// os.TempDir().
	tempRoot string
	// ports are the relay's public ports; nil means the default range.
	ports tunnel.PortSet
}

const (
	// tunnelName is the agent's one tunnel.
	tunnelName = "quickstart-web"
	// readyTimeout bounds the wait for the tunnel to go live.
	readyTimeout = 20 * time.Second
	// shutdownTimeout bounds the local web server's graceful stop.
	shutdownTimeout = 5 * time.Second
	// checkTimeout bounds the -check request.
	checkTimeout = 10 * time.Second
)

// run starts the relay, the local web server and the agent, prints how to
// use them, and then either checks the tunnel once (opts.check) or waits for
// ctx to end. Either way it stops all three and removes its state directory
// before returning. An interrupted run returns nil.
func run(ctx context.Context, opts options, stdout io.Writer) error {
	log := opts.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	// The relay's identity, as relayd keeps it in its state_dir: a private
	// key, and a self-signed certificate that agents pin by the key's
	// fingerprint.
	dir, err := os.MkdirTemp(opts.tempRoot, "relay-quickstart-")
	if err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	defer os.RemoveAll(dir) // deferred first, so it runs after everything has stopped
	key, _, err := transport.LoadOrCreateKey(filepath.Join(dir, "relay.key"))
	if err != nil {
		return err
	}
	cert, err := transport.SelfSignedCertificate(key, "127.0.0.1")
	if err != nil {
		return err
	}
	fingerprint := transport.Fingerprint(cert.Leaf)
	token := rand.Text() // 26 random base32 characters, like relayd's generated token

	// The relay: agents connect to one port (QUIC on UDP, TLS+smux on TCP);
	// tunnels get public ports from the default range, on loopback only.
	rc := tunnel.DefaultRelayConfig()
	rc.BindHost = "127.0.0.1"
	rc.Tokens = []tunnel.Token{{ID: "quickstart", Secret: token}}
	if opts.ports != nil {
		rc.Ports = opts.ports
	}
	rc.Software = "quickstart-relay"
	rc.Logger = log.With("component", "relay")
	relay, err := tunnel.NewRelay(rc)
	if err != nil {
		return err
	}
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLSConfig(cert, tunnel.ALPN), transport.DefaultOptions(), nil)
	if err != nil {
		return err
	}
	defer ln.Close() // Serve closes it too; this covers returning before Serve starts
	relayAddr := ln.Addr().String()

	// The local server: what a developer would have on localhost:8080.
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the local server: %w", err)
	}
	defer webLn.Close()
	web := &http.Server{
		Handler:           localHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.With("component", "local-server").Handler(), slog.LevelWarn),
	}

	// The agent: what `relayctl expose` runs. It pins the relay's key the
	// way --fingerprint does.
	pin, err := transport.ParseFingerprint(fingerprint)
	if err != nil {
		return err
	}
	ready := make(chan []tunnel.Endpoint, 1)
	ac := tunnel.DefaultAgentConfig()
	ac.Relay = relayAddr
	ac.Token = token
	ac.Transport = opts.transport
	ac.Verifier = &transport.Verifier{Pin: pin, Logger: log.With("component", "agent")}
	ac.Tunnels = []tunnel.TunnelSpec{{Name: tunnelName, Local: webLn.Addr().String()}}
	ac.Software = "quickstart-agent"
	ac.Logger = log.With("component", "agent")
	ac.OnReady = func(eps []tunnel.Endpoint) { ready <- eps }
	agent, err := tunnel.NewAgent(ac)
	if err != nil {
		return err
	}

	// Start all three; the deferred function stops them and waits.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	relayDone := make(chan error, 1)
	webDone := make(chan error, 1)
	agentDone := make(chan error, 1)
	wg.Go(func() { relayDone <- relay.Serve(ctx, ln) })
	wg.Go(func() { webDone <- web.Serve(webLn) })
	wg.Go(func() { agentDone <- agent.Run(ctx) })
	defer func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer scancel()
		if err := web.Shutdown(sctx); err != nil {
			web.Close()
		}
		wg.Wait()
		log.Info("stopped")
	}()

	var eps []tunnel.Endpoint
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case eps = <-ready:
	case err := <-agentDone:
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("the agent stopped before its tunnel was live: %w", unexpected(err))
	case err := <-relayDone:
		return fmt.Errorf("the relay stopped: %w", unexpected(err))
	case err := <-webDone:
		return fmt.Errorf("the local server stopped: %w", unexpected(err))
	case <-timer.C:
		return fmt.Errorf("the tunnel was not live after %v; run with -v to see why", readyTimeout)
	case <-ctx.Done():
		return nil
	}
	ep := eps[0]

	printIntro(stdout, intro{
		public:      ep,
		relayAddr:   relayAddr,
		ports:       rc.Ports.String(),
		transport:   sessionKind(relay, ep.Port, opts.transport),
		local:       webLn.Addr().String(),
		stateDir:    dir,
		token:       token,
		fingerprint: fingerprint,
		check:       opts.check,
	})

	if opts.check {
		return check(ctx, "http://"+net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port)))+"/", stdout)
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "\nStopping.")
		return nil
	case err := <-agentDone:
		return fmt.Errorf("the agent stopped: %w", unexpected(err))
	case err := <-relayDone:
		return fmt.Errorf("the relay stopped: %w", unexpected(err))
	case err := <-webDone:
		return fmt.Errorf("the local server stopped: %w", unexpected(err))
	}
}

// unexpected turns the nil a component returns when it stops cleanly into
// an error, for when nothing asked it to stop.
func unexpected(err error) error {
	if err == nil {
		return errors.New("stopped unexpectedly")
	}
	return err
}

// sessionKind is the transport the agent's session uses, as the relay sees
// it ("quic" or "tcp"), or what was asked for if the relay does not list the
// tunnel.
func sessionKind(r *tunnel.Relay, port uint16, asked string) string {
	for _, t := range r.Tunnels() {
		if t.Port == port && len(t.Members) > 0 {
			return t.Members[0].Transport
		}
	}
	return asked
}

// localHandler is the local web server: a plain-text greeting on / and "ok"
// on /healthz. Plain text reads well in curl and nc.
func localHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from the local server, through the relay!\n\n")
		fmt.Fprintf(w, "remote address: %s (the agent's connection to this server)\n", r.RemoteAddr)
		fmt.Fprintf(w, "host:           %s\n", r.Host)
		fmt.Fprintf(w, "time:           %s\n", time.Now().Format(time.RFC1123))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// intro is what printIntro shows.
type intro struct {
	public      tunnel.Endpoint
	relayAddr   string
	ports       string
	transport   string
	local       string
	stateDir    string
	token       string
	fingerprint string
	check       bool
}

func printIntro(w io.Writer, in intro) {
	hostPort := net.JoinHostPort(in.public.Host, strconv.Itoa(int(in.public.Port)))
	fmt.Fprintf(w, `Relay quickstart: a relay, an agent and a local web server, in this one process, on loopback.

Public address:

    %s

Try it with real clients, from another terminal:

    curl http://%s/
    nc %s %d
        (nc talks HTTP by hand: type GET / HTTP/1.0 and press Enter twice)

What is running:

    relay         %s: agents connect here (QUIC on UDP, TLS+smux on TCP);
                  tunnels get public ports %s on 127.0.0.1
    agent         connected to the relay over %s; carries each client of
                  tunnel %q to the local server
    local server  http://%s/ (the server being shared)
    state dir     %s (the relay's key; removed on exit)

The same setup in a real deployment: relayd on a public machine (a VPS),
relayctl next to your server.

    on the VPS:   relayd
                  (listens on :7000 and prints the relayctl line to use,
                  with its own token; `+"`relayd fingerprint`"+` prints its key)
    at home:      relayctl expose localhost:8080 --relay HOST:7000 --token TOKEN --fingerprint FINGERPRINT

This demo's relay takes relayctl too, while it runs. With its address,
token and fingerprint, this shares the same local server on a second
public port (from another terminal in this folder; a relayctl you built,
as the README's Deploying shows, takes the same arguments):

    go run ./relayctl expose %s --relay %s --token %s --fingerprint %s

`,
		in.public.URL(),
		hostPort, in.public.Host, in.public.Port,
		in.relayAddr, in.ports, in.transport, in.public.Name, in.local, in.stateDir,
		in.local, in.relayAddr, in.token, in.fingerprint)
	if in.check {
		fmt.Fprintf(w, "Checking the tunnel with one request (-check).\n\n")
	} else {
		fmt.Fprintf(w, "Press Ctrl-C to stop.\n")
	}
}

// check fetches url once and prints the status and the body's first line.
// It fails unless the status is 200 OK.
func check(ctx context.Context, url string, w io.Writer) error {
	client := &http.Client{
		Timeout: checkTimeout,
		// No proxy from the environment, and no idle connection left open
		// through the tunnel when the demo stops.
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(w, "check: GET %s failed: %v\n", url, err)
		return fmt.Errorf("check failed: %w", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(w, "check: GET %s: %s, but reading the body failed: %v\n", url, resp.Status, err)
		return fmt.Errorf("check failed: reading the body: %w", err)
	}
	fmt.Fprintf(w, "check: GET %s -> %s\n", url, resp.Status)
	fmt.Fprintf(w, "check: %s\n", strings.TrimSpace(line))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("check failed: %s", resp.Status)
	}
	fmt.Fprintln(w, "check: OK, the request went client -> relay -> agent -> local server and back")
	return nil
}
