#!/usr/bin/env bash
# The standard benchmark set (make bench): starts a fresh node like
# `make run` but on free loopback ports, in a temporary data directory,
# with the gate's per-connection and per-IP limits off and pprof on; runs
# short scenarios of courier-bench against it; prints a summary of each
# and a side-by-side table; stops the node.
#
#   BIN      where courier and courier-bench are (default: bin)
#   OUT      where the JSON results go (default: a new temp dir)
#   DEVICES  simulated devices per scenario (default 2000)
#   SECONDS_PER_RUN  length of each push run (default 10)
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-$(mktemp -d -t courier-bench-XXXXXX)}
DEVICES=${DEVICES:-2000}
SECS=${SECONDS_PER_RUN:-10}
mkdir -p "$OUT"
dir=$(mktemp -d -t courier-bench-node-XXXXXX)

"$BIN/courier" --dev --data-dir "$dir/data" --addr-file "$dir/addrs.json" \
	--gate.addr 127.0.0.1:0 --api-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --pprof-addr 127.0.0.1:0 \
	--gate.new-conns-per-ip 0 --gate.frames-per-second 0 --gate.bytes-per-second 0 --gate.c2c-per-second 0 --actors.logins-per-second 0 \
	--log-level warn >"$dir/node.log" 2>&1 &
node=$!
cleanup() {
	kill "$node" 2>/dev/null && wait "$node" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
	[ -s "$dir/addrs.json" ] && break
	kill -0 "$node" 2>/dev/null || { echo "courier exited:"; cat "$dir/node.log"; exit 1; }
	sleep 0.1
done
[ -s "$dir/addrs.json" ] || { echo "courier did not start"; exit 1; }
addr() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/" "$dir/addrs.json"; }

node_flags=(--gate "$(addr gate)" --api "$(addr api)" --node-metrics "$(addr http)"
	--node-pprof "$(addr pprof)" --node-pid "$node" --devices "$DEVICES")
echo "node pid $node: gate $(addr gate), api $(addr api); results in $OUT"

status=0
run() {
	local name=$1
	shift
	echo
	echo "### courier-bench $*"
	"$BIN/courier-bench" "$@" "${node_flags[@]}" --out "$OUT/$name.json" || {
		echo "courier-bench $1: exit status $?"
		status=1
	}
}
run connect connect
run push-stored push --duration "${SECS}s" --batch 100
run push-ff push --ff --duration "${SECS}s" --batch 100
run c2c c2c --rate 5000 --duration 5s
run upstream upstream --rate 5000 --duration 5s

echo
echo "### standard set on $(nproc) cores, $(go env GOVERSION 2>/dev/null || true)"
"$BIN/courier-bench" report "$OUT"/*.json
exit $status
