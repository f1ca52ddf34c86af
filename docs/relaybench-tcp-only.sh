#!/usr/bin/env bash
# For ../shared/bench/relaybench.sh (EXTRA=docs/relaybench-tcp-only.sh): the
# same relay systems, with the iperf3 tunnel TCP only, for builds without UDP
# tunnels.
relay_common_tcp() {
  mkdir -p $W/state
  cat > $W/relay.toml <<EOF
[relay]
listen = "127.0.0.1:17300"
ports = "16000-16999"
state_dir = "$W/state"

[[tokens]]
id = "bench"
secret = "bench-secret-0123456789"
EOF
  local fp; fp=$($RELAYBIN/relayd fingerprint --config $W/relay.toml) || return 1
  $RELAYBIN/relayd --config $W/relay.toml >$W/relayd.log 2>&1 & SYSPIDS+=($!)
  wait_port 17300 || return 1
  local a=(--relay 127.0.0.1:17300 --token bench-secret-0123456789 --fingerprint "$fp" --transport $1)
  $RELAYBIN/relayctl expose "${a[@]}" --port 16301 127.0.0.1:$SVC_IPERF >$W/rc1.out 2>$W/rc1.log & SYSPIDS+=($!)
  $RELAYBIN/relayctl expose "${a[@]}" --port 16379 127.0.0.1:$SVC_REDIS >$W/rc2.out 2>$W/rc2.log & SYSPIDS+=($!)
  PUB_IPERF=16301; PUB_REDIS=16379
  wait_port $PUB_REDIS && wait_port $PUB_IPERF
}
start_relay-tcp() { relay_common_tcp tcp; }
start_relay-quic() { relay_common_tcp quic; }
