// Echo is a TCP echo server to put behind the relay. It sends back whatever a
// client sends and, when the client half-closes (EOF), half-closes its side
// too (CloseWrite), so every byte has arrived before the connection ends:
// the same rule the relay follows for the streams it carries.
//
// Run it, expose it through a relay, and talk to it from anywhere:
//
//	go run ./examples/echo &
//	relayctl expose 9000 --relay HOST:7000 --token SECRET --fingerprint SHA256:…
//	nc HOST PORT
//
// relayctl prints the public address as tcp://HOST:PORT. Whatever you type
// into nc comes back; Ctrl-D half-closes, and the echo follows suit. Flags:
//
//	-listen ADDR   address to listen on (default 127.0.0.1:9000)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "address to listen on")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *listen, log); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

// serve accepts connections on addr until ctx ends, then closes the listener
// and every open connection and waits for their goroutines.
func serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	log.Info("echo server listening", "addr", ln.Addr().String())

	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()

	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				log.Info("echo server stopped")
				return nil
			}
			return fmt.Errorf("accepting: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
			echo(c, log)
		})
	}
}

// echo copies c's input back to it; on EOF it half-closes, so the client
// reads everything and then EOF.
func echo(c net.Conn, log *slog.Logger) {
	defer c.Close()
	log = log.With("client", c.RemoteAddr().String())
	log.Info("connection opened")
	start := time.Now()
	n, err := io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok && err == nil {
		err = cw.CloseWrite()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		log.Warn("connection failed", "bytes", n, "duration", time.Since(start).Round(time.Millisecond), "err", err)
		return
	}
	log.Info("connection closed", "bytes", n, "duration", time.Since(start).Round(time.Millisecond))
}
