package main

import (
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// relayView is what the admin API reads from the relay: snapshots taken
// when asked, so the relay keeps the only count of everything.
type relayView interface {
	Tunnels() []tunnel.TunnelInfo
	Stats() tunnel.RelayStats
}

// relayCollector turns the relay's snapshots into metrics on each scrape.
type relayCollector struct {
	relay relayView

	sessions, tunnels, clientsActive, clientsTotal  *prometheus.Desc
	handshakeFailures, agentRefusals, clientRefused *prometheus.Desc
	tokenRefusals                                   *prometheus.Desc
	udpFlows, udpDrops                              *prometheus.Desc

	tunnelAgents, tunnelActive, tunnelTotal, tunnelIn, tunnelOut *prometheus.Desc
	tunnelRefused, tunnelUDPFlows, tunnelUDPDrops                *prometheus.Desc

	build *prometheus.Desc
}

func newRelayCollector(relay relayView) *relayCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("relayd_"+name, help, labels, nil)
	}
	t := []string{"tunnel", "token"}
	return &relayCollector{
		relay:             relay,
		sessions:          d("agent_sessions", "Authenticated agent sessions online.", "transport"),
		tunnels:           d("tunnels", "Tunnels open."),
		clientsActive:     d("client_connections", "Public client connections open, over all tunnels."),
		clientsTotal:      d("client_connections_total", "Public client connections carried since relayd started."),
		handshakeFailures: d("agent_handshake_failures_total", "Agent sessions that failed before authenticating, by reason.", "reason"),
		agentRefusals:     d("agent_refusals_total", "Agents or tunnel registrations the relay refused, by error code.", "reason"),
		tokenRefusals:     d("token_agent_refusals_total", "Refusals sent to the agents of a token, by error code.", "token", "reason"),
		clientRefused:     d("client_refusals_total", "Public clients turned away before reaching an agent, by reason.", "reason"),
		udpFlows:          d("udp_flows", "UDP flows (client addresses) open, over all tunnels."),
		udpDrops:          d("udp_dropped_total", "UDP datagrams dropped, over all tunnels."),
		tunnelAgents:      d("tunnel_agents", "Agents serving the tunnel.", t...),
		tunnelActive:      d("tunnel_client_connections", "Public client connections open on the tunnel.", t...),
		tunnelTotal:       d("tunnel_client_connections_total", "Public client connections the tunnel carried since it opened.", t...),
		tunnelIn:          d("tunnel_in_bytes_total", "Bytes from the tunnel's public clients to its agents.", t...),
		tunnelOut:         d("tunnel_out_bytes_total", "Bytes from the tunnel's agents to its public clients.", t...),
		tunnelRefused:     d("tunnel_client_refusals_total", "Public clients of the tunnel turned away, by reason.", append(t, "reason")...),
		tunnelUDPFlows:    d("tunnel_udp_flows", "UDP flows (client addresses) open on the tunnel.", t...),
		tunnelUDPDrops:    d("tunnel_udp_dropped_total", "UDP datagrams the tunnel dropped.", t...),
		build:             d("build_info", "The running relayd: always 1.", "version", "commit", "goversion", "protocol"),
	}
}

func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.sessions, c.tunnels, c.clientsActive, c.clientsTotal, c.handshakeFailures, c.agentRefusals, c.tokenRefusals, c.clientRefused,
		c.udpFlows, c.udpDrops,
		c.tunnelAgents, c.tunnelActive, c.tunnelTotal, c.tunnelIn, c.tunnelOut, c.tunnelRefused, c.tunnelUDPFlows, c.tunnelUDPDrops,
		c.build,
	} {
		ch <- d
	}
}

func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	byReason := func(d *prometheus.Desc, m map[string]int64, labels ...string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			counter(d, float64(m[k]), append(labels, k)...)
		}
	}

	st := c.relay.Stats()
	// Both transports always, so a dashboard sees 0 rather than no series.
	agents := map[string]int{transport.KindQUIC: 0, transport.KindTCP: 0}
	maps.Copy(agents, st.Agents)
	for _, k := range slices.Sorted(maps.Keys(agents)) {
		gauge(c.sessions, float64(agents[k]), k)
	}
	gauge(c.tunnels, float64(st.Tunnels))
	gauge(c.clientsActive, float64(st.ClientsActive))
	counter(c.clientsTotal, float64(st.ClientsTotal))
	byReason(c.handshakeFailures, st.HandshakeFailures)
	byReason(c.agentRefusals, st.AgentRefusals)
	for _, tok := range slices.Sorted(maps.Keys(st.TokenRefusals)) {
		byReason(c.tokenRefusals, st.TokenRefusals[tok], tok)
	}
	byReason(c.clientRefused, st.ClientRefusals)
	gauge(c.udpFlows, float64(st.UDPFlows))
	counter(c.udpDrops, float64(st.UDPDrops))

	for _, t := range mergeTunnels(c.relay.Tunnels()) {
		l := []string{t.Name, t.TokenID}
		gauge(c.tunnelAgents, float64(len(t.Members)), l...)
		gauge(c.tunnelActive, float64(t.Active), l...)
		counter(c.tunnelTotal, float64(t.Total), l...)
		counter(c.tunnelIn, float64(t.BytesIn), l...)
		counter(c.tunnelOut, float64(t.BytesOut), l...)
		byReason(c.tunnelRefused, t.Refused, l...)
		gauge(c.tunnelUDPFlows, float64(t.UDPFlows), l...)
		counter(c.tunnelUDPDrops, float64(t.UDPDrops), l...)
	}

	in := buildinfo.Read()
	gauge(c.build, 1, in.Version, in.Commit, in.GoVersion, strconv.Itoa(tunnel.ProtocolVersion))
}

// mergeTunnels sums the tunnels that share a name and token into one, so
// that two never give the same series (which would fail the whole scrape).
func mergeTunnels(ts []tunnel.TunnelInfo) []tunnel.TunnelInfo {
	type key struct{ name, token string }
	idx := map[key]int{}
	out := make([]tunnel.TunnelInfo, 0, len(ts))
	for _, t := range ts {
		k := key{t.Name, t.TokenID}
		i, ok := idx[k]
		if !ok {
			idx[k] = len(out)
			t.Refused = maps.Clone(t.Refused)
			out = append(out, t)
			continue
		}
		m := &out[i]
		m.Members = append(slices.Clip(m.Members), t.Members...)
		m.Active += t.Active
		m.Total += t.Total
		m.BytesIn += t.BytesIn
		m.BytesOut += t.BytesOut
		m.UDPFlows += t.UDPFlows
		m.UDPDrops += t.UDPDrops
		m.Closed = m.Closed && t.Closed
		if m.Refused == nil {
			m.Refused = map[string]int64{}
		}
		for r, n := range t.Refused {
			m.Refused[r] += n
		}
	}
	return out
}

// newRegistry gathers the relay's metrics with Go's and the process's.
func newRegistry(relay relayView) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newRelayCollector(relay),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}
