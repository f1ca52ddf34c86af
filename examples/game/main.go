// Game is a tiny authoritative UDP game server to put behind the relay, the
// way a Minecraft Bedrock, Valheim or Factorio server would be: players send
// small datagrams, the server runs the world at a fixed tick and sends every
// player the state after each tick.
//
// The protocol is text, one command per datagram:
//
//	join NAME        enter the world (at 0,0)
//	move DX DY       move by DX, DY (each -1, 0 or 1)
//	ping N           answered at once with "pong N" (for round-trip times)
//	leave            leave the world
//
// After each tick the server sends every player "tick T NAME=X,Y ..." with
// each player's position and the address the server sees them at, so you
// can check that every player arrives as a distinct peer. A player silent
// for 10 s is dropped.
//
// Run it, expose it through a relay, and play from anywhere:
//
//	go run ./examples/game &                        # udp 127.0.0.1:27960
//	relayctl expose 27960 --proto udp --relay HOST:7000 --token SECRET --fingerprint SHA256:…
//	go run ./examples/game -client udp://HOST:PORT -name alice
//
// The client joins, moves in a square, pings, prints the round trip and the
// latest state once a second, and leaves on Ctrl-C. Flags:
//
//	-listen ADDR   address to serve on (default 127.0.0.1:27960)
//	-tick D        tick interval (default 50ms: 20 ticks a second)
//	-client URL    run a client against udp://HOST:PORT instead
//	-name NAME     the client's player name (default player)
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27960", "address to serve on")
	tick := flag.Duration("tick", 50*time.Millisecond, "tick interval")
	client := flag.String("client", "", "run a client against udp://HOST:PORT")
	name := flag.String("name", "player", "the client's player name")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if *client != "" {
		err = play(ctx, strings.TrimPrefix(*client, "udp://"), *name, os.Stdout)
	} else {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", *listen); err == nil {
			log.Info("game server listening", "addr", pc.LocalAddr().String(), "tick", *tick)
			err = NewWorld(*tick, log).Serve(ctx, pc)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "game:", err)
		os.Exit(1)
	}
}

// World is the server's state: the players and their positions.
type World struct {
	tick time.Duration
	log  *slog.Logger

	mu      sync.Mutex
	players map[string]*player // by address
	ticks   uint64
}

type player struct {
	name string
	addr net.Addr
	x, y int
	seen time.Time
}

// idleLimit is how long a silent player stays in the world.
const idleLimit = 10 * time.Second

// NewWorld returns an empty world ticking every tick.
func NewWorld(tick time.Duration, log *slog.Logger) *World {
	return &World{tick: tick, log: log, players: map[string]*player{}}
}

// Serve runs the world on pc until ctx ends, then closes pc.
func (w *World) Serve(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	go w.run(ctx, pc)
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading: %w", err)
		}
		if reply := w.handle(string(buf[:n]), from); reply != "" {
			pc.WriteTo([]byte(reply), from)
		}
	}
}

// handle applies one command and returns the immediate reply, if any.
func (w *World) handle(cmd string, from net.Addr) string {
	f := strings.Fields(cmd)
	if len(f) == 0 {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	key := from.String()
	p := w.players[key]
	switch {
	case f[0] == "join" && len(f) == 2:
		if p == nil {
			p = &player{name: f[1], addr: from}
			w.players[key] = p
			w.log.Info("player joined", "name", f[1], "addr", key)
		}
		p.seen = time.Now()
		return "welcome " + f[1]
	case f[0] == "ping" && len(f) == 2:
		if p != nil {
			p.seen = time.Now()
		}
		return "pong " + f[1]
	case p == nil:
		return "error join first"
	case f[0] == "move" && len(f) == 3:
		dx, _ := strconv.Atoi(f[1])
		dy, _ := strconv.Atoi(f[2])
		p.x += clamp(dx)
		p.y += clamp(dy)
		p.seen = time.Now()
	case f[0] == "leave":
		delete(w.players, key)
		w.log.Info("player left", "name", p.name, "addr", key)
	default:
		return "error unknown command"
	}
	return ""
}

func clamp(d int) int { return max(-1, min(1, d)) }

// run ticks the world: drop silent players, then send everyone the state.
func (w *World) run(ctx context.Context, pc net.PacketConn) {
	t := time.NewTicker(w.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			w.mu.Lock()
			w.ticks++
			var parts []string
			var addrs []net.Addr
			for key, p := range w.players {
				if now.Sub(p.seen) > idleLimit {
					delete(w.players, key)
					w.log.Info("player timed out", "name", p.name, "addr", key)
					continue
				}
				parts = append(parts, fmt.Sprintf("%s=%d,%d@%s", p.name, p.x, p.y, key))
				addrs = append(addrs, p.addr)
			}
			sort.Strings(parts)
			state := fmt.Sprintf("tick %d %s", w.ticks, strings.Join(parts, " "))
			w.mu.Unlock()
			for _, a := range addrs {
				pc.WriteTo([]byte(state), a)
			}
		}
	}
}

// play is the client: join, walk in a square, ping, and print what the
// server says once a second.
func play(ctx context.Context, addr, name string, out *os.File) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() {
		c.Write([]byte("leave"))
		c.Close()
	})
	defer stop()
	if _, err := c.Write([]byte("join " + name)); err != nil {
		return err
	}
	pings := map[string]time.Time{}
	var mu sync.Mutex
	go func() {
		moves := []string{"move 1 0", "move 0 1", "move -1 0", "move 0 -1"}
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			c.Write([]byte("join " + name)) // harmless when joined; rejoins after a timeout
			c.Write([]byte(moves[i%len(moves)]))
			id := strconv.Itoa(i)
			mu.Lock()
			pings[id] = time.Now()
			mu.Unlock()
			c.Write([]byte("ping " + id))
		}
	}()
	buf := make([]byte, 1500)
	var last time.Time
	var state, rtt string
	for {
		n, err := c.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		msg := string(buf[:n])
		switch {
		case strings.HasPrefix(msg, "pong "):
			mu.Lock()
			if sent, ok := pings[msg[5:]]; ok {
				rtt = time.Since(sent).Round(10 * time.Microsecond).String()
				delete(pings, msg[5:])
			}
			mu.Unlock()
		case strings.HasPrefix(msg, "tick "):
			state = msg
		}
		// A line once a second, from the first one that has both.
		if rtt != "" && state != "" && time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintf(out, "rtt %s | %s\n", rtt, state)
		}
	}
}
