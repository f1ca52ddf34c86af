package tunnel

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytun/relay/internal/proctest"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// settled counts goroutines and open files once garbage is collected: the
// splice pipes net.TCPConn keeps in a pool for io.Copy are closed only by
// finalizers, two collections after their last use.
func settled(t *testing.T) (goroutines, fds int) {
	t.Helper()
	for range 3 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	return runtime.NumGoroutine(), openFDs(t)
}

// Many short connections through one tunnel leave nothing behind: once
// they are done, goroutines and open files return to their baseline.
//
// The test counts the whole process, so it does not run in parallel with
// other tests, and its subtests run one after the other. Each transport
// carries 10,000 connections, 16 at a time (4-9 s under -race on 2 cores;
// -short: 1,000). Over TCP this is also the regression test for smux
// streams whose SYNs reach the agent out of id order: their early FINs were
// once dropped, leaving a client waiting for ever (about once in 5,000).
func TestChurnReturnsToBaseline(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			n, concurrency := 10000, 16
			if testing.Short() {
				n = 1000
			}
			r := startRelay(t, nil)
			a := liveAgentUp(t, r.agentConfig(kind, proctest.StartEcho(t, "c:")))
			run := func(count int) error {
				var next atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, concurrency)
				for range concurrency {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(count) {
							if _, err := visit(a.Public(0), 2); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				return <-errs
			}
			// A first round lets pools and buffers reach their resting size.
			if err := run(200); err != nil {
				t.Fatal(err)
			}
			baseG, baseFD := settled(t)
			start := time.Now()
			if err := run(n); err != nil {
				t.Fatalf("a client failed: %v", err)
			}
			took := time.Since(start)
			const slackG, slackFD = 5, 2
			g, fd := settled(t)
			for deadline := time.Now().Add(30 * time.Second); g > baseG+slackG || fd > baseFD+slackFD; g, fd = settled(t) {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<20)
					t.Fatalf("30 s after %d connections: %d goroutines (%d before), %d open files (%d before)\n%s",
						n, g, baseG, fd, baseFD, buf[:runtime.Stack(buf, true)])
				}
			}
			t.Logf("%s: %d connections, %d at a time, in %v; goroutines %d before, %d after; open files %d before, %d after (%v to settle)",
				kind, n, concurrency, took.Round(time.Millisecond), baseG, g, baseFD, fd, (time.Since(start) - took).Round(time.Millisecond))
			if st := r.Relay.Stats(); st.ClientsActive != 0 || st.ClientsTotal < int64(n) {
				t.Errorf("the relay counts %d clients active, %d in total; want 0 and at least %d", st.ClientsActive, st.ClientsTotal, n)
			}
			if as := a.Status(); as.Tunnels[0].Active != 0 || as.Tunnels[0].Total < int64(n) {
				t.Errorf("agent: %d clients active, %d in total; want 0 and at least %d", as.Tunnels[0].Active, as.Tunnels[0].Total, n)
			}
		})
	}
}
