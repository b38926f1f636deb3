#!/usr/bin/env bash
# Prints the path of the Consul agent the tests and `make cluster` run,
# building it first if this machine has none: Consul v1.13.9 from the Go
# module proxy (tools/consul, whose go.sum is committed), a few minutes on
# two cores, once per machine. The binary is cached under $COURIER_CACHE
# (default ~/.cache/courier), keyed by the tools module's content, and
# linked from .cache/bin/consul in the repository (ignored by git).
# Concurrent callers (parallel test packages) wait for one build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH
src=$root/tools/consul
key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
cache=${COURIER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/courier}
dir=$cache/consul-1.13.9-$key
bin=$dir/consul
if [ ! -x "$bin" ]; then
	mkdir -p "$dir"
	exec 9>"$dir/.lock"
	flock 9
	if [ ! -x "$bin" ]; then
		echo "consul.sh: building Consul v1.13.9 from the module proxy into $dir (once per machine)" >&2
		start=$SECONDS
		(cd "$src" && go build -trimpath -o "$bin.tmp" .) >&2
		mv "$bin.tmp" "$bin"
		echo "consul.sh: built in $((SECONDS - start))s" >&2
	fi
	exec 9>&-
fi
mkdir -p "$root/.cache/bin"
ln -sfn "$bin" "$root/.cache/bin/consul"
echo "$bin"
