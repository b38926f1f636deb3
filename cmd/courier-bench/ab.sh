#!/usr/bin/env bash
# A/B comparison of two node binaries on one noisy machine: runs the same
# courier-bench scenario against a fresh node of each binary, alternating
# A, B, A, B, … so that both see the same minutes of the machine, and
# prints every run and the median of each figure per binary.
#
#   cmd/courier-bench/ab.sh OLD_COURIER NEW_COURIER RUNS -- push --devices 10000 --batch 100 --duration 10s
#
#   BENCH  the courier-bench binary (default: bin/courier-bench)
#   OUT    where the JSON results go (default: a new temp dir)
#
# Compare node CPU per message first: it is the figure that survives a
# machine shared with other work (wall-clock rates and latencies do not).
# The machine's busy share says whether both sides saw the same machine.
set -euo pipefail

A=${1:?old courier binary}
B=${2:?new courier binary}
RUNS=${3:?runs per binary}
shift 3
[ "${1:-}" = "--" ] && shift
BENCH=${BENCH:-bin/courier-bench}
OUT=${OUT:-$(mktemp -d -t courier-ab-XXXXXX)}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

for i in $(seq 1 "$RUNS"); do
	for side in A B; do
		bin=$A
		[ "$side" = B ] && bin=$B
		"$BENCH" "$@" --spawn-node "$bin" --quiet --out "$OUT/$side-$i.json" >"$OUT/$side-$i.txt" 2>&1 ||
			echo "run $side-$i: exit status $? (see $OUT/$side-$i.txt)"
	done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
want = ["node CPU per delivered message", "node CPU per login", "delivered/s", "logins/s",
        "node RSS per device (2000→10000)", "node heap per device (2000→10000)", "lost", "failed",
        "of which refused as overloaded (RESOURCE_EXHAUSTED)",
        "this machine's CPU busy", "this machine's CPU in the kernel"]
lat = ["API call → device receipt", "API call → API answer", "login"]
def load(side, i):
    p = os.path.join(out, f"{side}-{i}.json")
    if not os.path.exists(p):
        return None
    d = json.load(open(p))
    f = {x["name"]: x["value"] for x in d.get("figures", [])}
    for l in d.get("latencies", []):
        for name in lat:
            if l["name"].startswith(name):
                f[name + " p50 ms"] = l["p50_us"] / 1000
                f[name + " p99 ms"] = l["p99_us"] / 1000
    return f
rows = {s: [r for r in (load(s, i) for i in range(1, runs + 1)) if r] for s in "AB"}
names = [n for n in want if any(n in r for r in rows["A"] + rows["B"])]
names += sorted({k for r in rows["A"] + rows["B"] for k in r if k.endswith(" ms")})
print(f"results in {out}")
print(f"{'figure':44s} {'A runs':>28s} {'B runs':>28s} {'A median':>10s} {'B median':>10s} {'B/A':>6s}")
for n in names:
    va = [r[n] for r in rows["A"] if n in r]
    vb = [r[n] for r in rows["B"] if n in r]
    if not va or not vb:
        continue
    ma, mb = statistics.median(va), statistics.median(vb)
    fmt = lambda v: ",".join(f"{x:.4g}" for x in v)
    ratio = f"{mb / ma:.3f}" if ma else "-"
    print(f"{n:44s} {fmt(va):>28s} {fmt(vb):>28s} {ma:10.4g} {mb:10.4g} {ratio:>6s}")
EOF
