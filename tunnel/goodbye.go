package tunnel

import (
	"context"
	"time"
)

// finishClients waits, after an agent's goodbye, until the clients its
// session carried through members are done. The agent says goodbye once
// it has written its clients' last bytes, but those may not have crossed the
// relay yet: closing the session at once would cut the end off a transfer
// in flight. The agent closes the session itself if this takes too long.
func (a *agentConn) finishClients(ctx context.Context, members []*member) {
	busy := func() bool {
		for _, m := range members {
			if m.active.Load() > 0 {
				return true
			}
		}
		return false
	}
	if !busy() {
		return
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for busy() {
		select {
		case <-tick.C:
		case <-a.sess.Done():
			return
		case <-ctx.Done():
			return
		}
	}
}
