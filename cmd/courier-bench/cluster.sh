#!/usr/bin/env bash
# Stored S2C pushes through a cluster, to measure what crossing nodes costs
# (BENCHMARKS.md): starts a Consul dev agent and the nodes of LAYOUT on
# free loopback ports, runs `courier-bench push` with the devices on the
# gate nodes (gate discovery), the pushes through the api node and the
# node CPU summed over every node, keeps each node's metrics after the run
# (OUT/metrics-nodeN.txt), then stops everything.
#
#   cmd/courier-bench/cluster.sh LAYOUT [courier-bench push flags...]
#
#   LAYOUT  one      one node with every role (the baseline)
#           split2   node1 gate+api, node2 actors: each push crosses to
#                    the actor node and its delivery crosses back
#           split3   node1 gate, node2 actors, node3 api: the device's
#                    gate, its actor and the API on three nodes
#
#   BIN      where courier and courier-bench are (default: bin)
#   OUT      where the JSON result goes (default: a new temp dir)
#   DEVICES  simulated devices (default 2000)
#   STORE    "pebble" (each node its own, default) or "postgres" with
#            COURIER_STORE_DSN set (the cluster store)
#   NODE1_CPU  percent of one core node1 may use (a CPU cgroup with a
#            10 ms period; needs a writable cgroup v1 cpu controller or
#            cgroup v2 with cpu): makes node1's gate the one that falls
#            behind, to see the overload guard across nodes (split3)
#
# Membership does not change during a run, so Pebble per node measures
# the routing costs faithfully (an identity's actor stays where it is).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$root/bin}
OUT=${OUT:-$(mktemp -d -t courier-bench-cluster-XXXXXX)}
DEVICES=${DEVICES:-2000}
STORE=${STORE:-pebble}
layout=${1:?usage: cluster.sh one|split2|split3 [courier-bench push flags...]}
shift
case $layout in
one) roles=(gate,actors,api) ;;
split2) roles=(gate,api actors) ;;
split3) roles=(gate actors api) ;;
*) echo "cluster.sh: layout $layout: want one, split2 or split3" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
dir=$(mktemp -d -t courier-bench-nodes-XXXXXX)
consul=$("$root/scripts/consul.sh")

pids=()
cgroup=""
cleanup() {
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null || true
	done
	[ -z "$cgroup" ] || rmdir "$cgroup" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(free_port)
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$cport" -serf-lan-port "$(free_port)" \
	-serf-wan-port "$(free_port)" -server-port "$(free_port)" -dns-port -1 -grpc-port -1 \
	-hcl 'disable_update_check = true' -hcl 'check_update_interval = "0s"' >"$dir/consul.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
	curl -sf "http://127.0.0.1:$cport/v1/status/leader" 2>/dev/null | grep -q 127.0.0.1 && break
	sleep 0.1
done

store_flags=()
if [ "$STORE" = postgres ]; then
	[ -n "${COURIER_STORE_DSN:-}" ] || { echo "cluster.sh: STORE=postgres needs COURIER_STORE_DSN" >&2; exit 2; }
	store_flags=(--store postgres)
fi
node_pids=()
for i in "${!roles[@]}"; do
	n=node$((i + 1))
	"$BIN/courier" --dev --name "$n" --roles "${roles[i]}" --data-dir "$dir/$n" --addr-file "$dir/$n.json" \
		--gate.addr 127.0.0.1:0 --api-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --cluster.bind 127.0.0.1:0 \
		--cluster.provider consul --cluster.consul "127.0.0.1:$cport" \
		--gate.new-conns-per-ip 0 --gate.frames-per-second 0 --gate.bytes-per-second 0 --gate.c2c-per-second 0 --actors.logins-per-second 0 \
		"${store_flags[@]}" --log-level warn >"$dir/$n.log" 2>&1 &
	pids+=($!)
	node_pids+=($!)
done
# limit_cpu PID PERCENT puts PID in a new CPU cgroup of PERCENT of a core.
limit_cpu() {
	local quota=$(($2 * 100))
	if [ -w /sys/fs/cgroup/cpu ]; then
		cgroup=/sys/fs/cgroup/cpu/courier-bench-$$
		mkdir "$cgroup" && echo 10000 >"$cgroup/cpu.cfs_period_us" && echo "$quota" >"$cgroup/cpu.cfs_quota_us"
	elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control; then
		cgroup=/sys/fs/cgroup/courier-bench-$$
		mkdir "$cgroup" && echo "$quota 10000" >"$cgroup/cpu.max"
	else
		echo "cluster.sh: NODE1_CPU needs a writable cgroup cpu controller" >&2
		exit 2
	fi
	echo "$1" >"$cgroup/cgroup.procs"
	echo "node1 limited to $2% of a core ($cgroup)"
}
[ -z "${NODE1_CPU:-}" ] || limit_cpu "${node_pids[0]}" "$NODE1_CPU"
addr() { sed -E "s/.*\"$2\":\"([^\"]*)\".*/\1/" "$dir/$1.json"; }
api="" http=""
for i in "${!roles[@]}"; do
	n=node$((i + 1))
	for _ in $(seq 1 300); do
		[ -s "$dir/$n.json" ] && break
		kill -0 "${node_pids[i]}" 2>/dev/null || { echo "$n exited:"; cat "$dir/$n.log"; exit 1; }
		sleep 0.1
	done
	if [[ ${roles[i]} == *api* ]]; then
		api=$(addr "$n" api) http=$(addr "$n" http)
	fi
done
more=$(IFS=,; echo "${node_pids[*]:1}")
echo "layout $layout: roles ${roles[*]}; node pids ${node_pids[*]}; results in $OUT"
flags=(--discover "http://$http/v1/gates" --api "$api" --node-pid "${node_pids[0]}" --devices "$DEVICES")
[ -n "$more" ] && flags+=(--more-node-pids "$more")
"$BIN/courier-bench" push "${flags[@]}" --out "$OUT/push-$layout.json" "$@"
# Each node's metrics after the run, for what the figures leave out.
for i in "${!roles[@]}"; do
	n=node$((i + 1))
	curl -sf "http://$(addr "$n" http)/metrics" >"$OUT/metrics-$n.txt" || echo "cluster.sh: no metrics from $n" >&2
done
