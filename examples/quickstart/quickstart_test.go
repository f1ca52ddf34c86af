package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytun/relay/tunnel"
)

// transports are the agent transports every test body runs over.
var transports = []string{tunnel.TransportQUIC, tunnel.TransportTCP}

// testOptions logs warnings to the test's output and keeps the state dir in
// a test temp dir, so the test can see that run removed it. The relay's
// public ports stay below 20000-29999, which proctest.ClosedPort promises
// other packages' tests stay closed.
func testOptions(t *testing.T, kind string) options {
	t.Helper()
	return options{
		transport: kind,
		log:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		tempRoot:  t.TempDir(),
		ports:     tunnel.PortSet{{Low: 1024, High: 19999}},
	}
}

// assertStateDirRemoved fails unless run left root empty.
func assertStateDirRemoved(t *testing.T, root string) {
	t.Helper()
	left, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("run left %s behind in %s", e.Name(), root)
	}
}

var publicRE = regexp.MustCompile(`(?m)^\s*tcp://127\.0\.0\.1:(\d+)$`)

func TestCheck(t *testing.T) {
	for _, kind := range transports {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			opts := testOptions(t, kind)
			opts.check = true
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			if err := run(ctx, opts, &out); err != nil {
				t.Fatalf("run: %v\noutput:\n%s", err, &out)
			}
			got := out.String()
			m := publicRE.FindStringSubmatch(got)
			if m == nil {
				t.Fatalf("no tcp://127.0.0.1:PORT line in the output:\n%s", got)
			}
			port := m[1]
			for _, want := range []string{
				"curl http://127.0.0.1:" + port + "/",
				"nc 127.0.0.1 " + port,
				"GET / HTTP/1.0",
				"over " + kind + ";",
				"go run ./relayctl expose 127.0.0.1:", // runnable before anything is built
				"--fingerprint SHA256:",
				"check: GET http://127.0.0.1:" + port + "/ -> 200 OK",
				"check: Hello from the local server, through the relay!",
				"check: OK",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("output lacks %q:\n%s", want, got)
				}
			}
			assertStateDirRemoved(t, opts.tempRoot)
		})
	}
}

// TestStopsOnCancel runs the demo as `go run` does, without -check, and
// cancels it (as Ctrl-C would) once it has printed its intro.
func TestStopsOnCancel(t *testing.T) {
	for _, kind := range transports {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			opts := testOptions(t, kind)
			out := newWatchWriter("Press Ctrl-C to stop.")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- run(ctx, opts, out) }()

			select {
			case <-out.seen:
			case err := <-done:
				t.Fatalf("run returned before it was ready: %v\noutput:\n%s", err, out)
			case <-time.After(10 * time.Second):
				t.Fatalf("no %q after 10s; output:\n%s", "Press Ctrl-C to stop.", out)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("run after cancel: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("run did not return within 5s of cancel")
			}
			assertStateDirRemoved(t, opts.tempRoot)
		})
	}
}

// watchWriter collects output and closes seen once it contains want.
type watchWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func newWatchWriter(want string) *watchWriter {
	return &watchWriter{want: want, seen: make(chan struct{})}
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if w.want != "" && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
		w.want = ""
	}
	return n, err
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
