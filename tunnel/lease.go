package tunnel

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/relaytun/relay/transport"
)

// leaseKey is who a public port belongs to: the same token asking for the
// same tunnel name gets the same port back.
type leaseKey struct {
	Token string
	Name  string
}

// lease is one port promised to a leaseKey. Released is zero while the
// tunnel is live; afterwards the promise lasts for the lease lifetime.
type lease struct {
	Port     uint16
	Released time.Time
}

// leaseTable remembers which port each (token, name) last had, and, when
// it has a file, keeps it on disk so the promise survives a restart. It is
// guarded by Relay.mu.
type leaseTable struct {
	file string // "" keeps leases in memory only
	ttl  time.Duration
	m    map[leaseKey]*lease
	port map[uint16]leaseKey
}

// keyedLease is a lease with its key, as dropped from the table, to be
// restored.
type keyedLease struct {
	k leaseKey
	l *lease
}

// leaseChange is what opening one tunnel did to the lease table: the
// lease key had before (nil: none), and the leases of others dropped for
// it (the token's max_tunnels cap, or the longest-idle lease whose port it
// took). Relay.undoLeases puts them back.
type leaseChange struct {
	key     leaseKey
	prev    *lease
	dropped []keyedLease
}

// leaseFile is the on-disk form, versioned so a later format can tell.
type leaseFile struct {
	Version int          `json:"version"`
	Leases  []leaseEntry `json:"leases"`
}

type leaseEntry struct {
	Token    string     `json:"token"`
	Name     string     `json:"name"`
	Port     uint16     `json:"port"`
	Released *time.Time `json:"released,omitempty"`
}

const leaseFileVersion = 1

// loadLeases reads file, if it exists. A tunnel that was live when the
// relay stopped counts as released at load: its agent gets the lease's
// lifetime to come back.
func loadLeases(file string, ttl time.Duration, now time.Time) (*leaseTable, error) {
	t := &leaseTable{file: file, ttl: ttl, m: map[leaseKey]*lease{}, port: map[uint16]leaseKey{}}
	if file == "" {
		return t, nil
	}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return t, fmt.Errorf("reading port leases: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(data, &f); err != nil {
		return t, fmt.Errorf("reading port leases from %s: %w", file, err)
	}
	if f.Version != leaseFileVersion {
		return t, fmt.Errorf("reading port leases from %s: format version %d, this build reads %d", file, f.Version, leaseFileVersion)
	}
	for _, e := range f.Leases {
		if e.Port == 0 || !ValidName(e.Name) || e.Token == "" {
			continue
		}
		l := &lease{Port: e.Port, Released: now}
		if e.Released != nil && e.Released.Before(now) {
			l.Released = *e.Released
		}
		if now.Sub(l.Released) >= ttl {
			continue
		}
		k := leaseKey{e.Token, e.Name}
		if prev, ok := t.m[k]; ok {
			// One key twice (a hand edit too): keep its latest port, and
			// forget the other, so the port index never names a key for a
			// port its lease is not on.
			if prev.Released.After(l.Released) {
				continue
			}
			delete(t.port, prev.Port)
			delete(t.m, k)
		}
		if old, taken := t.port[e.Port]; taken {
			// Two keys on one port can only come from a hand-edited file:
			// keep the most recently used.
			if t.m[old].Released.After(l.Released) {
				continue
			}
			delete(t.m, old)
		}
		t.m[k] = l
		t.port[e.Port] = k
	}
	return t, nil
}

// get returns k's lease, if it has not expired.
func (t *leaseTable) get(k leaseKey, now time.Time) (*lease, bool) {
	l, ok := t.m[k]
	if !ok {
		return nil, false
	}
	if t.expired(l, now) {
		t.drop(k)
		return nil, false
	}
	return l, true
}

func (t *leaseTable) expired(l *lease, now time.Time) bool {
	return !l.Released.IsZero() && now.Sub(l.Released) >= t.ttl
}

// holder reports which key holds port, if an unexpired lease does.
func (t *leaseTable) holder(port uint16, now time.Time) (leaseKey, bool) {
	k, ok := t.port[port]
	if !ok {
		return leaseKey{}, false
	}
	if t.expired(t.m[k], now) {
		t.drop(k)
		return leaseKey{}, false
	}
	return k, true
}

// oldestIdle is the released lease unused the longest, to take when every
// other port is gone.
func (t *leaseTable) oldestIdle(ok func(uint16) bool) (leaseKey, bool) {
	var best leaseKey
	var found bool
	for k, l := range t.m {
		if l.Released.IsZero() || !ok(l.Port) {
			continue
		}
		if !found || l.Released.Before(t.m[best].Released) {
			best, found = k, true
		}
	}
	return best, found
}

// take records that k is live on port, and reports whether that is a new
// promise (k had no lease, or another port).
func (t *leaseTable) take(k leaseKey, port uint16) bool {
	changed := true
	if old, ok := t.m[k]; ok {
		if old.Port != port {
			delete(t.port, old.Port)
		} else {
			changed = false
		}
	}
	if other, ok := t.port[port]; ok && other != k {
		delete(t.m, other)
	}
	t.m[k] = &lease{Port: port}
	t.port[port] = k
	return changed
}

// release starts k's lease lifetime.
func (t *leaseTable) release(k leaseKey, now time.Time) {
	if l, ok := t.m[k]; ok {
		l.Released = now
	}
}

func (t *leaseTable) drop(k leaseKey) {
	if l, ok := t.m[k]; ok {
		delete(t.port, l.Port)
		delete(t.m, k)
	}
}

// restore puts back k's lease l, which drop took, unless k or its port has
// another lease since, and reports whether it did.
func (t *leaseTable) restore(k leaseKey, l *lease) bool {
	if _, ok := t.m[k]; ok {
		return false
	}
	if _, ok := t.port[l.Port]; ok {
		return false
	}
	t.m[k] = l
	t.port[l.Port] = k
	return true
}

// ownIdle counts the leases of token but for except's, and finds the
// oldest of them released.
func (t *leaseTable) ownIdle(token string, except leaseKey) (n int, oldest leaseKey, found bool) {
	for k, l := range t.m {
		if k.Token != token || k == except {
			continue
		}
		n++
		if !l.Released.IsZero() && (!found || l.Released.Before(t.m[oldest].Released)) {
			oldest, found = k, true
		}
	}
	return n, oldest, found
}

// rename moves the leases of each token renamed (old id → new id) to its
// new id, so its tunnels keep their ports. A lease already under a new id
// (a token gone whose id the renamed one takes) gives way.
func (t *leaseTable) rename(ids map[string]string) {
	moved := map[leaseKey]*lease{}
	for k, l := range t.m {
		if to, ok := ids[k.Token]; ok {
			delete(t.m, k)
			delete(t.port, l.Port)
			moved[leaseKey{to, k.Name}] = l
		}
	}
	for k, l := range moved {
		t.drop(k)
		t.m[k] = l
		t.port[l.Port] = k
	}
}

// snapshot encodes the table for save, which writes outside Relay.mu.
func (t *leaseTable) snapshot() []byte {
	f := leaseFile{Version: leaseFileVersion, Leases: make([]leaseEntry, 0, len(t.m))}
	for k, l := range t.m {
		e := leaseEntry{Token: k.Token, Name: k.Name, Port: l.Port}
		if !l.Released.IsZero() {
			r := l.Released.UTC()
			e.Released = &r
		}
		f.Leases = append(f.Leases, e)
	}
	sort.Slice(f.Leases, func(i, j int) bool { return f.Leases[i].Port < f.Leases[j].Port })
	b, _ := json.MarshalIndent(f, "", "  ")
	return append(b, '\n')
}

// save writes data to file atomically, so a crash leaves the old table or
// the new one, never half of either.
func saveLeases(file string, data []byte) error {
	if file == "" {
		return nil
	}
	if err := transport.WriteFileAtomic(file, data, 0o600); err != nil {
		return fmt.Errorf("saving port leases: %w", err)
	}
	return nil
}
