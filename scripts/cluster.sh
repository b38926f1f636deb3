#!/usr/bin/env bash
# `make cluster`: a Courier cluster on this machine, in one command.
#
#   a Consul server agent     127.0.0.1:$CONSUL_PORT (default 8500), its
#                             data in .cluster/consul
#   the store                 $STORE: "pebble" (one per node, default) or
#                             "postgres" (shared; see start_store)
#   node1  gate,api           ports BASE+0..3   (gate, api, http, remoting)
#   node2  actors             ports BASE+10..13
#   node3  gate,actors,api    ports BASE+20..23 (BASE defaults to 7000)
#
# Every node runs with --dev (app 1, its demo token secret and API keys).
# TLS=1 makes the members talk over mutual TLS with certificates from
# `courierctl certs`. Everything lives in .cluster/ (ignored by git): data,
# logs (.cluster/*.log) and addrs.json with every node's addresses. Ctrl-C
# or SIGTERM stops every process this script started.
#
# The nodes and Consul run under a supervisor (as systemd's Restart=
# would): one that exits, for any reason, is started again after a
# second with the same settings and data. Their process ids are in
# .cluster/NAME.pid, and .cluster/pg_ctl runs pg_ctl on the PostgreSQL
# (STORE=postgres): what `courier-bench chaos` needs to apply faults.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=/usr/local/go/bin:$PATH

BASE=${BASE:-7000}
CONSUL_PORT=${CONSUL_PORT:-8500}
STORE=${STORE:-pebble}
TLS=${TLS:-0}
dir=$root/.cluster
bin=$root/bin

pids=()
stop_all() {
	trap - INT TERM EXIT
	echo
	echo "cluster: stopping"
	# Only a run that made $dir tells its supervisors to stop: a run that
	# failed its checks must not stop another cluster's.
	if [ -n "${created:-}" ]; then touch "$dir/stopping"; fi
	# Nodes first (graceful: they leave the cluster), then the services.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	stop_store
	echo "cluster: stopped (data and logs stay in $dir)"
}

# supervise NAME LOG COMMAND...: runs COMMAND in the background and again
# a second after it exits, until the cluster stops; NAME.pid holds the
# current process id, and while NAME.hold exists it is not started again.
# SIGTERM to the supervisor stops its process (continued first, in case it
# was paused) and the supervisor.
supervise() {
	local name=$1 log=$2
	shift 2
	(
		child=0
		trap 'kill -CONT $child 2>/dev/null; kill -TERM $child 2>/dev/null; wait $child 2>/dev/null; exit 0' TERM
		while [ ! -e "$dir/stopping" ]; do
			"$@" >>"$log" 2>&1 &
			child=$!
			echo "$child" >"$dir/$name.pid"
			wait "$child" && rc=0 || rc=$?
			[ -e "$dir/stopping" ] && break
			if [ "$rc" = 2 ]; then
				# A mistake in the settings: starting it again would not help.
				echo "cluster: $name exited (2: bad settings, see $log); not starting it again" | tee -a "$log" >&2
				break
			fi
			echo "cluster: $name exited ($rc); starting it again" | tee -a "$log" >&2
			sleep 1
			# NAME.hold keeps it down (a machine that takes a while to come
			# back: courier-bench chaos --down).
			while [ -e "$dir/$name.hold" ] && [ ! -e "$dir/stopping" ]; do sleep 0.2; done
		done
	) &
	pids+=($!)
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
	echo "cluster: $*" >&2
	exit 1
}

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, seconds, command...
	local what=$1 secs=$2
	shift 2
	for ((n = 0; n < secs * 10; n++)); do
		if "$@"; then return 0; fi
		sleep 0.1
	done
	fail "$what did not come up within ${secs}s (logs in $dir)"
}

# ---- the store ----------------------------------------------------------
# start_store prepares the inbox store and sets store_args, the flags every
# node gets. stop_store undoes it.
store_args=()
pg_dir=""
start_store() {
	case $STORE in
	pebble)
		echo "cluster: store: Pebble, one per node. An identity's inbox stays on the node that"
		echo "         held it, so it does not follow the identity when membership changes: for"
		echo "         that, the shared PostgreSQL store (STORE=postgres) is needed."
		;;
	postgres)
		start_postgres
		;;
	*) fail "STORE=$STORE: want pebble or postgres" ;;
	esac
}

start_postgres() {
	local pgbin
	pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	if [ -z "$pgbin" ]; then
		echo "cluster: installing PostgreSQL (apt-get)"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
		pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
	fi
	local port=$((BASE + 432))
	port_free "$port" || fail "port $port (PostgreSQL) is taken: set BASE"
	pg_dir=$dir/postgres
	rm -rf "$pg_dir" && mkdir -p "$pg_dir"
	local as=()
	if [ "$(id -u)" = 0 ]; then
		chown postgres "$pg_dir"
		as=(runuser -u postgres --)
	fi
	"${as[@]}" "$pgbin/initdb" -D "$pg_dir/data" -A trust -U courier >"$dir/postgres-init.log"
	"${as[@]}" "$pgbin/pg_ctl" -D "$pg_dir/data" -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" \
		-l "$pg_dir/postgres.log" start >/dev/null
	pg_ctl_cmd=("${as[@]}" "$pgbin/pg_ctl" -D "$pg_dir/data")
	# For faults (courier-bench chaos): .cluster/pg_ctl restart -m fast -w
	cat >"$dir/pg_ctl" <<EOF
#!/bin/sh
exec ${as[*]} "$pgbin/pg_ctl" -D "$pg_dir/data" -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1" -l "$pg_dir/postgres.log" "\$@"
EOF
	chmod +x "$dir/pg_ctl"
	echo "cluster: PostgreSQL on 127.0.0.1:$port (log $pg_dir/postgres.log)"
	# The nodes find it in COURIER_STORE_DSN (not in argv, which every
	# local user can read).
	if "$bin/courier" --help 2>&1 | grep -q -- '--store.dsn'; then
		store_args=(--store postgres)
		export COURIER_STORE_DSN="postgres://courier@127.0.0.1:$port/postgres?sslmode=disable"
	else
		echo "cluster: this build has no PostgreSQL store yet: the nodes use Pebble" >&2
	fi
}

stop_store() {
	if [ -n "$pg_dir" ]; then
		"${pg_ctl_cmd[@]}" stop -m fast >/dev/null 2>&1 || true
	fi
}

# ---- build ---------------------------------------------------------------
make -s build
consul=$(scripts/consul.sh)
# Another make cluster here? Found before anything of its is touched
# (its data, logs and pid files are in $dir).
for f in "$dir"/*.pid; do
	[ -e "$f" ] || continue
	pid=$(cat "$f" 2>/dev/null)
	# A pid file left by a cluster that died (a reboot, SIGKILL) may name
	# a pid reused since: only ours count (courier or the Consul agent).
	if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "$bin/courier|$consul"; then
		fail "a cluster is already running from $dir ($(basename "$f" .pid) is up): stop it (Ctrl-C in its terminal) first"
	fi
done
port_free "$CONSUL_PORT" || fail "port $CONSUL_PORT (Consul) is taken: set CONSUL_PORT"
rm -rf "$dir"
mkdir -p "$dir"
created=1

# ---- Consul --------------------------------------------------------------
port_free "$CONSUL_PORT" || fail "port $CONSUL_PORT (Consul) is taken: set CONSUL_PORT"
# A server with its data in .cluster/consul (not -dev): restarted, it
# comes back with the members' registrations.
supervise consul "$dir/consul.log" "$consul" agent -server -bootstrap-expect 1 -data-dir "$dir/consul" -node courier-cluster \
	-bind 127.0.0.1 -client 127.0.0.1 -http-port "$CONSUL_PORT" \
	-serf-lan-port $((CONSUL_PORT + 1)) -serf-wan-port $((CONSUL_PORT + 2)) -server-port $((CONSUL_PORT + 3)) \
	-dns-port -1 -grpc-port -1 -hcl 'performance { raft_multiplier = 1 }' -hcl 'disable_update_check = true' \
	-hcl 'check_update_interval = "0s"' -ui
consul_ready() {
	curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" 2>/dev/null | grep -q 127.0.0.1 &&
		curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/catalog/nodes" 2>/dev/null | grep -q courier-cluster
}
wait_for "Consul" 60 consul_ready
echo "cluster: Consul on 127.0.0.1:$CONSUL_PORT (UI http://127.0.0.1:$CONSUL_PORT/ui, log $dir/consul.log)"

start_store

# ---- TLS -----------------------------------------------------------------
tls_args() { :; }
if [ "$TLS" = 1 ]; then
	"$bin/courierctl" certs --dir "$dir/certs" --nodes node1,node2,node3 --hosts 127.0.0.1,localhost >/dev/null
	tls_args() {
		echo --cluster.tls-ca "$dir/certs/ca.pem" --cluster.tls-cert "$dir/certs/$1.pem" --cluster.tls-key "$dir/certs/$1-key.pem"
	}
	echo "cluster: members use mutual TLS (certificates in $dir/certs)"
fi

# ---- nodes ---------------------------------------------------------------
names=(node1 node2 node3)
roles=(gate,api actors gate,actors,api)
for i in 0 1 2; do
	name=${names[i]}
	p=$((BASE + 10 * i))
	for q in $p $((p + 1)) $((p + 2)) $((p + 3)); do
		port_free "$q" || fail "port $q ($name) is taken: set BASE"
	done
	args=(--dev --name "$name" --roles "${roles[i]}" --data-dir "$dir/$name"
		--gate.addr "127.0.0.1:$p" --api-addr "127.0.0.1:$((p + 1))" --http-addr "127.0.0.1:$((p + 2))"
		--cluster.bind "127.0.0.1:$((p + 3))" --cluster.provider consul --cluster.consul "127.0.0.1:$CONSUL_PORT"
		--addr-file "$dir/$name.json")
	args+=("${store_args[@]}") # actors keep their inboxes there, gates their access lists
	# shellcheck disable=SC2046
	supervise "$name" "$dir/$name.log" "$bin/courier" "${args[@]}" $(tls_args "$name")
done
for name in "${names[@]}"; do
	wait_for "$name" 60 test -s "$dir/$name.json"
done
{
	printf '{"consul": "127.0.0.1:%s", "discover": "http://127.0.0.1:%s", "nodes": [' "$CONSUL_PORT" $((BASE + 2))
	sep=""
	for name in "${names[@]}"; do
		printf '%s\n  %s' "$sep" "$(cat "$dir/$name.json")"
		sep=","
	done
	printf '\n]}\n'
} >"$dir/addrs.json"

cat <<EOF

Courier cluster running: three nodes on Consul (logs in $dir/*.log).
  node1  gate,api          gate 127.0.0.1:$BASE  api 127.0.0.1:$((BASE + 1))  http 127.0.0.1:$((BASE + 2))
  node2  actors            (no gate, no API)     http 127.0.0.1:$((BASE + 12))
  node3  gate,actors,api   gate 127.0.0.1:$((BASE + 20))  api 127.0.0.1:$((BASE + 21))  http 127.0.0.1:$((BASE + 22))
Every address is in $dir/addrs.json.

Try it, in another terminal:
  bin/courierctl members --api 127.0.0.1:$((BASE + 1)) --key courier-dev-operator-key
  curl 'http://127.0.0.1:$((BASE + 2))/v1/gates?app=1'
  bin/courierctl device --discover http://127.0.0.1:$((BASE + 2))/v1/gates --app 1 --uid alice --secret courier-dev-secret-app-1
  bin/courierctl push --api 127.0.0.1:$((BASE + 21)) --key courier-dev-api-key-0001 --app 1 --uid alice --payload 'hello from node3'
  bin/courierctl drain node3 --api 127.0.0.1:$((BASE + 1)) --key courier-dev-operator-key   # it comes back by itself
  make chaos        # faults under load for 10 minutes, then the ledger (CHAOS_ARGS=--duration=2m)

Ctrl-C stops the cluster. A node or Consul that exits is started again.
EOF
# Wait until a signal (a supervisor ends only when the cluster stops).
set +e
wait -n "${pids[@]}"
echo "cluster: a supervisor ended by itself; see $dir/*.log" >&2
exit 1
