#!/usr/bin/env bash
# Stored pushes on Pebble and on PostgreSQL, side by side, in one session
# (BENCHMARKS.md's store comparison). Starts a throwaway PostgreSQL with
# production durability (fsync on, synchronous_commit on; Debian's
# package, run as the postgres user), then for each store a fresh node
# (courier-bench --spawn-node) and two runs: as fast as it goes, and at a
# fixed rate for the latency. The PostgreSQL runs also report the
# database's CPU (postmaster and backends, from /proc) and both report
# store commits/s and writes per commit.
#
#   BIN      where courier and courier-bench are (default: bin)
#   OUT      where the JSON results go (default: a new temp dir)
#   DEVICES  simulated devices (default 10000)
#   SECS     length of each run (default 30)
#   RATE     pushes/s of the fixed-rate run (default 20000)
#
# Run as root on a quiet machine: make build && cmd/courier-bench/stores.sh
set -euo pipefail

BIN=${BIN:-bin}
OUT=${OUT:-$(mktemp -d -t courier-stores-XXXXXX)}
DEVICES=${DEVICES:-10000}
SECS=${SECS:-30}
RATE=${RATE:-20000}
mkdir -p "$OUT"

. "$(dirname "$0")/pg.sh"

status=0
run() {
	local name=$1
	shift
	echo
	echo "### $name: courier-bench $*"
	"$BIN/courier-bench" "$@" --out "$OUT/$name.json" || {
		echo "courier-bench $name: exit status $?"
		status=1
	}
}
common=(--spawn-node "$BIN/courier" --devices "$DEVICES" --batch 100 --quiet)
for store in pebble postgres; do
	extra=()
	if [ "$store" = postgres ]; then
		db="bench_$RANDOM"
		"$pgbin/psql" -h 127.0.0.1 -p "$port" -U courier -d postgres -qc "CREATE DATABASE $db"
		export COURIER_STORE_DSN="postgres://courier@127.0.0.1:$port/$db?sslmode=disable"
		extra=(--node-arg=--store=postgres --db-pid "$pgpid")
	fi
	run "$store-stored" push "${common[@]}" "${extra[@]}" --duration "${SECS}s"
	run "$store-stored-rate" push "${common[@]}" "${extra[@]}" --duration "${SECS}s" --rate "$RATE"
	unset COURIER_STORE_DSN
done

echo
echo "### stored pushes, Pebble and PostgreSQL, on $(nproc) cores"
"$BIN/courier-bench" report "$OUT"/*.json
exit $status
