package main

import (
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/transport"
	"github.com/relaytun/relay/tunnel"
)

// The JSON the admin API serves under /api/v1. Fields are only ever added.

// apiTunnel is one tunnel in GET /api/v1/tunnels.
type apiTunnel struct {
	Name      string   `json:"name"`
	Token     string   `json:"token"`
	Protocols []string `json:"protocols"`
	// Public is the host:port clients connect to.
	Public   string           `json:"public"`
	Agents   []apiAgent       `json:"agents"`
	Active   int64            `json:"active"`
	Total    int64            `json:"total"`
	BytesIn  int64            `json:"bytes_in"`
	BytesOut int64            `json:"bytes_out"`
	Refused  map[string]int64 `json:"refused"`
	UDPFlows int64            `json:"udp_flows"`
	UDPDrops int64            `json:"udp_drops"`
	Since    time.Time        `json:"since"`
	// Closed: the port is closed (its agents drain) and the tunnel is
	// listed until its clients finish; the name may be open again beside it.
	Closed bool `json:"closed"`
}

// apiAgent is one agent serving a tunnel.
type apiAgent struct {
	Address   string    `json:"address"`
	Transport string    `json:"transport"`
	ViaProxy  bool      `json:"via_proxy"` // address is then the proxy's
	Since     time.Time `json:"since"`
	Active    int64     `json:"active"`    // open TCP connections
	UDPFlows  int64     `json:"udp_flows"` // UDP flows it carries
	Draining  bool      `json:"draining"`
}

// apiStats is GET /api/v1/stats.
type apiStats struct {
	Agents            map[string]int   `json:"agents"`
	Tunnels           int              `json:"tunnels"`
	ClientsActive     int64            `json:"clients_active"`
	ClientsTotal      int64            `json:"clients_total"`
	HandshakeFailures map[string]int64 `json:"handshake_failures"`
	AgentRefusals     map[string]int64 `json:"agent_refusals"`
	// TokenRefusals is AgentRefusals for the agents of each token.
	TokenRefusals  map[string]map[string]int64 `json:"agent_refusals_by_token"`
	ClientRefusals map[string]int64            `json:"client_refusals"`
	UDPFlows       int64                       `json:"udp_flows"`
	UDPDrops       int64                       `json:"udp_drops"`
	Started        time.Time                   `json:"started"`
	Version        apiVersion                  `json:"version"`
}

type apiVersion struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go"`
	Protocol  int    `json:"protocol"`
}

// adminHandler is the whole admin API. publicHost is the host the public
// ports are reached at; token, when not empty, guards everything but
// /healthz (a load balancer's probe learns nothing from it). draining
// reports whether relayd is draining after a stop signal: /healthz then
// answers 503, so a load balancer sends agents elsewhere while the API
// goes on serving the drain's progress.
func adminHandler(relay relayView, publicHost, token string, draining func() bool) http.Handler {
	started := time.Now()
	guarded := http.NewServeMux()
	guarded.Handle("GET /metrics", promhttp.HandlerFor(newRegistry(relay), promhttp.HandlerOpts{}))
	guarded.HandleFunc("GET /api/v1/tunnels", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, apiTunnels(relay.Tunnels(), publicHost))
	})
	guarded.HandleFunc("GET /api/v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, newAPIStats(relay.Stats(), started))
	})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if draining() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("draining\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/", requireToken(token, guarded))
	return mux
}

func apiTunnels(ts []tunnel.TunnelInfo, publicHost string) []apiTunnel {
	out := make([]apiTunnel, 0, len(ts))
	for _, t := range ts {
		at := apiTunnel{
			Name: t.Name, Token: t.TokenID, Protocols: t.Protos,
			Public: net.JoinHostPort(publicHost, strconv.Itoa(int(t.Port))),
			Agents: make([]apiAgent, 0, len(t.Members)),
			Active: t.Active, Total: t.Total, BytesIn: t.BytesIn, BytesOut: t.BytesOut,
			Refused: nonNil(t.Refused), UDPFlows: t.UDPFlows, UDPDrops: t.UDPDrops, Since: t.Since,
			Closed: t.Closed,
		}
		if at.Protocols == nil {
			at.Protocols = []string{}
		}
		for _, m := range t.Members {
			at.Agents = append(at.Agents, apiAgent{Address: m.Agent, Transport: m.Transport, ViaProxy: m.ViaProxy, Since: m.Since, Active: m.Active, UDPFlows: m.UDPFlows, Draining: m.Draining})
		}
		out = append(out, at)
	}
	return out
}

func newAPIStats(st tunnel.RelayStats, started time.Time) apiStats {
	if st.TokenRefusals == nil {
		st.TokenRefusals = map[string]map[string]int64{}
	}
	agents := map[string]int{transport.KindQUIC: 0, transport.KindTCP: 0}
	maps.Copy(agents, st.Agents)
	in := buildinfo.Read()
	return apiStats{
		Agents: agents, Tunnels: st.Tunnels, ClientsActive: st.ClientsActive, ClientsTotal: st.ClientsTotal,
		HandshakeFailures: nonNil(st.HandshakeFailures), AgentRefusals: nonNil(st.AgentRefusals), TokenRefusals: st.TokenRefusals,
		ClientRefusals: nonNil(st.ClientRefusals), UDPFlows: st.UDPFlows, UDPDrops: st.UDPDrops, Started: started,
		Version: apiVersion{Version: in.Version, Commit: in.Commit, GoVersion: in.GoVersion, Protocol: tunnel.ProtocolVersion},
	}
}

// nonNil keeps an empty map {} in the JSON rather than null.
func nonNil(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
