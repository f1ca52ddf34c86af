package tunnel

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"
)

// forEachPumpMode runs body with the pumps of new pairs hot, then parked
// (every hot place taken).
func forEachPumpMode(t *testing.T, body func(t *testing.T)) {
	t.Run("hot", body)
	t.Run("parked", func(t *testing.T) {
		hotPumps.Add(maxHot)
		defer hotPumps.Add(-maxHot)
		body(t)
	})
}

// Many idle pairs: beyond maxHot, and once quiet for hotIdle, a pair holds
// one goroutine, not two; every pair still carries data after its idle spell.
func TestStartJoinIdlePairs(t *testing.T) {
	const pairs = 300
	before := runtime.NumGoroutine()
	sjs := make([]*startedJoin, pairs)
	for i := range sjs {
		sjs[i] = startJoined(t, context.Background())
	}
	roundAll := func(msg []byte) {
		var wg sync.WaitGroup
		errs := make(chan string, pairs)
		for _, sj := range sjs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := sj.client.Write(msg); err != nil {
					errs <- err.Error()
					return
				}
				got := make([]byte, len(msg))
				sj.server.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(sj.server, got); err != nil {
					errs <- "server: " + err.Error()
					return
				}
				sj.server.Write(got)
				sj.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(sj.client, got); err != nil || !bytes.Equal(got, msg) {
					errs <- "client: " + errString(err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
	}
	roundAll([]byte("first"))
	if h := hotPumps.Load(); h > maxHot {
		t.Fatalf("%d hot pumps, more than %d", h, maxHot)
	}
	// Past hotIdle every pump has parked: one goroutine per pair remains.
	waitForGoroutines(t, before+pairs+pairs/10, 3*hotIdle)
	roundAll(bytes.Repeat([]byte("after the idle spell "), 100))
	roundAll([]byte("again"))
	for _, sj := range sjs {
		sj.client.Close()
		sj.server.Close()
	}
	for _, sj := range sjs {
		sj.wait(t)
	}
	if h := hotPumps.Load(); h != 0 {
		t.Fatalf("%d hot pumps left after every pair ended", h)
	}
}
