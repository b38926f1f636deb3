#!/usr/bin/env bash
# Store reads on PostgreSQL, before and after: two node binaries (A, B)
# against one throwaway PostgreSQL (production durability, as stores.sh),
# interleaved A, B, A, B, … so that both see the same minutes of a shared
# machine. Each round runs, on a fresh database per run:
#   push     stored pushes, each with an idempotency key of its own (the
#            node looks every key up before accepting the push), as fast
#            as they go
#   rate     the same at a fixed rate (RATE/s), which both binaries
#            sustain: CPU per message and latency at equal load
#   connect  logins of identities the node has never seen (a load each)
# and, for reference, the same push run on Pebble. It prints every run
# and the median of each figure per binary. Node and database CPU per
# message (from /proc) are the figures that survive a busy machine.
#
#   cmd/courier-bench/pgreads.sh OLD_COURIER NEW_COURIER
#
#   BENCH    the courier-bench binary (default: bin/courier-bench)
#   OUT      where the JSON results go (default: a new temp dir)
#   RUNS     rounds (default 3)
#   DEVICES  devices of the push runs (default 10000)
#   LOGINS   logins of the connect runs (default 15000: below the node's
#            connection cap, 20,000 open files minus gate.fd-reserve)
#   SECS     length of a push run (default 20)
#   RATE     pushes/s of the fixed-rate run (default 4000)
#
# The nodes run with their overload refusals off (api.max-gate-backlog
# and api.max-push-delay 0): on a busy machine those refuse a share of
# the pushes that depends on what else runs, and both binaries should
# take every push offered. Each database is dropped after its run and
# the server checkpointed before the next, so that no run pays for
# another's vacuum or checkpoint.
set -euo pipefail

A=${1:?old courier binary}
B=${2:?new courier binary}
BENCH=${BENCH:-bin/courier-bench}
OUT=${OUT:-$(mktemp -d -t courier-pgreads-XXXXXX)}
RUNS=${RUNS:-3}
DEVICES=${DEVICES:-10000}
LOGINS=${LOGINS:-15000}
SECS=${SECS:-20}
RATE=${RATE:-4000}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

. "$(dirname "$0")/pg.sh"

psql_() { "$pgbin/psql" -h 127.0.0.1 -p "$port" -U courier -d postgres "$@"; }

run() { # name bin store args...
	local name=$1 bin=$2 store=$3
	shift 3
	local extra=(--node-arg=--api.max-gate-backlog=0 --node-arg=--api.max-push-delay=0) db=""
	if [ "$store" = postgres ]; then
		db="bench_$RANDOM$RANDOM"
		psql_ -qc "CHECKPOINT" -qc "CREATE DATABASE $db"
		export COURIER_STORE_DSN="postgres://courier@127.0.0.1:$port/$db?sslmode=disable"
		extra+=(--node-arg=--store=postgres --db-pid "$pgpid")
	fi
	"$BENCH" "$@" --spawn-node "$bin" "${extra[@]}" --quiet --out "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 ||
		echo "run $name: exit status $? (see $OUT/$name.txt)"
	unset COURIER_STORE_DSN
	[ -z "$db" ] || psql_ -qc "DROP DATABASE $db WITH (FORCE)"
	echo "done: $name"
}

for i in $(seq 1 "$RUNS"); do
	for side in A B; do
		bin=$A
		[ "$side" = B ] && bin=$B
		run "push-pg-$side-$i" "$bin" postgres push --devices "$DEVICES" --batch 100 --duration "${SECS}s" --idempotency-keys
		run "rate-pg-$side-$i" "$bin" postgres push --devices "$DEVICES" --batch 20 --concurrency 64 --rate "$RATE" --duration "${SECS}s" --idempotency-keys
		run "connect-pg-$side-$i" "$bin" postgres connect --devices "$LOGINS"
		run "push-pebble-$side-$i" "$bin" pebble push --devices "$DEVICES" --batch 100 --duration "${SECS}s" --idempotency-keys
	done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
want = ["delivered/s", "node CPU per delivered message", "database CPU per delivered message",
        "logins/s", "node CPU per login", "database CPU per login", "login failures",
        "store read round trips/s", "store reads per round trip", "store commits/s", "store writes per commit",
        "node CPU share", "database CPU share", "lost", "failed"]
lat = ["API call → device receipt", "login"]
def load(name):
    p = os.path.join(out, name + ".json")
    if not os.path.exists(p):
        return None
    d = json.load(open(p))
    f = {x["name"]: x["value"] for x in d.get("figures", [])}
    for l in d.get("latencies", []):
        for n in lat:
            if l["name"].startswith(n):
                f[n + " p50 ms"] = l["p50_us"] / 1000
                f[n + " p99 ms"] = l["p99_us"] / 1000
    return f
print(f"results in {out}")
for scen in ["push-pg", "rate-pg", "connect-pg", "push-pebble"]:
    rows = {s: [r for r in (load(f"{scen}-{s}-{i}") for i in range(1, runs + 1)) if r] for s in "AB"}
    names = [n for n in want if any(n in r for r in rows["A"] + rows["B"])]
    names += sorted({k for r in rows["A"] + rows["B"] for k in r if k.endswith(" ms")})
    print(f"\n### {scen}")
    print(f"{'figure':38s} {'A runs':>26s} {'B runs':>26s} {'A median':>10s} {'B median':>10s} {'B/A':>6s}")
    for n in names:
        va = [r[n] for r in rows["A"] if n in r]
        vb = [r[n] for r in rows["B"] if n in r]
        fmt = lambda v: ",".join(f"{x:.4g}" for x in v)
        ma = statistics.median(va) if va else float("nan")
        mb = statistics.median(vb) if vb else float("nan")
        ratio = f"{mb / ma:.3f}" if va and vb and ma else "-"
        print(f"{n:38s} {fmt(va):>26s} {fmt(vb):>26s} {ma:10.4g} {mb:10.4g} {ratio:>6s}")
EOF
