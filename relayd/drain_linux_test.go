package main

import (
	"syscall"
	"testing"

	pt "github.com/relaytun/relay/internal/proctest"
)

// SIGTERM while clients are queued on a tunnel's port: their connects
// succeeded before the signal, but relayd had not accepted them yet. They
// are served through the drain; closing the port used to reset them all
// (the kernel resets what a listening socket still holds when it closes).
func TestSIGTERMServesQueuedClients(t *testing.T) {
	forTransports(t, func(t *testing.T, kind string) {
		r := pt.NewRelayd(t, "drain_timeout = \"60s\"\n\n"+pt.TokensTOML)
		local := pt.StartEcho(t, "qd:")
		_, urls := pt.StartExpose(t, 1, nil, exposeArgs(r, kind, pt.TestSecret, local)...)
		pt.CheckEcho(t, urls[0], "qd:", 100)
		conns := pt.QueuedClients(t, r.Proc, urls[0], 300, func() { r.Signal(syscall.SIGTERM) })
		pt.CheckServed(t, conns, "qd:", "queued on the port at SIGTERM")
		if code := r.Wait(pt.ExitTimeout); code != 0 {
			t.Errorf("relayd exited %d after draining, want 0", code)
		}
		if !pt.Refused(urls[0]) {
			t.Errorf("%s still accepts clients after relayd exited", urls[0])
		}
	})
}
