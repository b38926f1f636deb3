# Sourced by stores.sh and pgreads.sh: starts a throwaway PostgreSQL with
# production durability (fsync on, synchronous_commit on; Debian's
# package, run as the postgres user when root) on a free loopback port,
# stopped and removed when the script exits. Sets pgbin, pgdir, port and
# pgpid (the postmaster, for courier-bench --db-pid).
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
