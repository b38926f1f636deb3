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

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pgbin/postgres" ] || { echo "no PostgreSQL: apt-get install -y postgresql"; exit 1; }
pgdir=$(mktemp -d -t courier-pg-XXXXXX)
chown postgres "$pgdir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$pgbin/initdb" -D "$pgdir/data" -A trust -U courier -E UTF8 --no-locale >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start \
	-o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=512MB -c max_wal_size=4GB" >/dev/null
cleanup() {
	as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$pgdir"
}
trap cleanup EXIT
pgpid=$(head -1 "$pgdir/data/postmaster.pid")
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') pid $pgpid on 127.0.0.1:$port; results in $OUT"

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
