package tunnel

import (
	"sync"
	"sync/atomic"
	"time"
)

// TunnelInfo describes one live tunnel on a relay.
type TunnelInfo struct {
	Name    string
	TokenID string
	// Protos are the public listeners' protocols: "tcp", "udp".
	Protos []string
	Port   uint16
	Since  time.Time
	// Members are the agents serving the tunnel; a group has several.
	Members []MemberInfo
	// Active is how many public clients are connected now; Total, how
	// many were carried since the tunnel opened.
	Active, Total int64
	// BytesIn flowed from clients to agents; BytesOut, back.
	BytesIn, BytesOut int64
	// Refused counts public clients turned away, by reason (Refused*).
	Refused map[string]int64
	// UDPFlows is how many UDP flows are open; UDPDrops, datagrams dropped.
	UDPFlows, UDPDrops int64
	// Closed: the tunnel's port is closed (every agent of it drains, or a
	// reload took it away), and it is listed until its clients finish.
	// A tunnel of the same name may meanwhile be open again.
	Closed bool
}

// MemberInfo is one agent serving a tunnel.
type MemberInfo struct {
	Agent     string
	Transport string
	// ViaProxy: the agent came through a proxy (relayctl --proxy), so
	// Agent is the proxy's address.
	ViaProxy bool
	Since    time.Time
	// Active counts the member's open TCP connections; UDPFlows, the
	// tunnel's UDP flows it carries.
	Active   int64
	UDPFlows int64
	// Draining members finish their clients but get no new ones.
	Draining bool
}

// RelayStats are a relay's totals since it started.
type RelayStats struct {
	// Agents counts authenticated sessions online, by transport.
	Agents map[string]int
	// Tunnels counts live tunnels (a group counts once).
	Tunnels int
	// ClientsActive are public clients connected now; ClientsTotal,
	// every client carried.
	ClientsActive, ClientsTotal int64
	// HandshakeFailures counts sessions that never authenticated, by reason.
	HandshakeFailures map[string]int64
	// AgentRefusals counts refusals sent to agents, by error code name.
	AgentRefusals map[string]int64
	// TokenRefusals counts, by token id, the refusals sent to agents
	// that authenticated with it (by error code name): those of tokens
	// in force, since each was added (a token keeps its counts across
	// reloads that keep its secret).
	TokenRefusals map[string]map[string]int64
	// ClientRefusals counts public clients turned away, by reason.
	ClientRefusals map[string]int64
	// UDPFlows is how many UDP flows are open; UDPDrops, datagrams dropped.
	UDPFlows, UDPDrops int64
}

// AgentStatus is what an agent reports about itself.
type AgentStatus struct {
	Relay string
	// Proxy is the proxy the agent reaches the relay through, its
	// password shown as "xxxxx"; "" for none.
	Proxy     string
	Transport string // of the current session; "" while disconnected
	Connected bool
	// Since is when the current session (or the outage) began.
	Since time.Time
	// RTT is the current session's last control round trip to the relay:
	// 0 while disconnected, and until the session's first PONG.
	RTT time.Duration
	// Reconnects counts sessions after the first.
	Reconnects int
	// Limit is the current session's LIMIT from the relay, its share of
	// the token's max_bandwidth, in bytes a second (0: none).
	Limit uint64
	// Draining: Drain was called; the relay sends the agent no new
	// clients, and it exits once those connected are done.
	Draining bool
	Tunnels  []AgentTunnelStatus
}

// AgentTunnelStatus is one of an agent's tunnels.
type AgentTunnelStatus struct {
	Name, Local string
	// Public is the tunnel's URL, "" until the relay granted it, and once
	// it closed it for good.
	Public string
	// Closed is why the relay closed the tunnel for good, if it did.
	Closed        string
	Active, Total int64
	// BytesIn flowed from clients to the local server; BytesOut, back.
	BytesIn, BytesOut int64
	// UDPDrops counts the datagrams the agent dropped, either way: for a
	// client it could open no flow for, one too large, one the local
	// socket could not send, one over the relay's LIMIT or between
	// sessions. The relay counts its own drops apart.
	UDPDrops int64
}

// counterMap is a set of named monotonic counters, safe for concurrent use.
type counterMap struct{ m sync.Map }

func (c *counterMap) add(name string) { c.addN(name, 1) }

func (c *counterMap) addN(name string, n int64) {
	v, _ := c.m.LoadOrStore(name, new(atomic.Int64))
	v.(*atomic.Int64).Add(n)
}

func (c *counterMap) snapshot() map[string]int64 {
	out := map[string]int64{}
	c.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// traffic counts what a tunnel carried.
type traffic struct {
	active, total     atomic.Int64
	bytesIn, bytesOut atomic.Int64
}
