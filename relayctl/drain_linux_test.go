package main

import (
	"net"
	"syscall"
	"testing"
	"time"

	pt "github.com/relaytun/relay/internal/proctest"
)

// SIGTERM to relayctl while clients are queued on its tunnel's port at the
// relay (connected, not yet accepted: relayd is stopped meanwhile). The
// relay closes the port when it reads the agent's DRAIN, and the clients
// it takes from the queue then go to the draining agent, which serves them
// as it serves those it already has; they used to be turned away (reset),
// the tunnel having no agent that was not draining.
func TestDrainServesClientsQueuedAtTheRelay(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"quic", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := pt.NewRelayd(t, pt.TokensTOML)
			local := pt.StartEcho(t, "qa:")
			p, urls := pt.StartExpose(t, 1, nil, local, "--relay", r.Addr, "--token", pt.TestSecret, "--fingerprint", r.FP, "--transport", kind)
			// A client held open keeps relayctl draining until it is done.
			held := pt.Hold(t, urls[0], "qa:")
			conns := pt.QueuedClients(t, r.Proc, urls[0], 300, func() {
				p.Signal(syscall.SIGTERM)
				p.WaitFor(&p.Stderr, regexpDraining, pt.StartTimeout)
			})
			pt.CheckServed(t, conns, "qa:", "queued at the relay when relayctl drained")
			held.(*net.TCPConn).CloseWrite()
			held.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := held.Read(make([]byte, 1)); err == nil {
				t.Error("the held client got more than its tag")
			}
			if code := p.Wait(pt.ExitTimeout); code != 0 {
				t.Errorf("relayctl exited %d after draining, want 0", code)
			}
			if !pt.Refused(urls[0]) {
				t.Errorf("%s still accepts clients after relayctl drained", urls[0])
			}
		})
	}
}
