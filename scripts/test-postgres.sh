# Sourced by scripts/test: starts a throw-away PostgreSQL cluster for the store's conformance
# suite and exports SPOTSWEEP_TEST_DATABASE_URL; the cluster and its files go when the calling
# shell exits. Installs Debian's postgresql when no server is on the machine. As root, the
# cluster runs as the unprivileged `postgres` user (PostgreSQL refuses to run as root).

pg_bin=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && pg_bin="$d"
done
if [ -z "$pg_bin" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    for d in /usr/lib/postgresql/*/bin; do
      [ -x "$d/initdb" ] && pg_bin="$d"
    done
  fi
  if [ -z "$pg_bin" ]; then
    echo "scripts/test: the PostgreSQL tests need a server: sudo apt-get install postgresql" >&2
    exit 1
  fi
fi

pg_dir=$(mktemp -d /tmp/spotsweep-pg.XXXXXX)
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  chown postgres "$pg_dir"
  as_pg() { runuser -u postgres -- "$@"; }
fi
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U spotsweep -A trust --no-sync >/dev/null
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Loopback only, enough connections for the tests run in parallel, no durability needed for a
# test cluster (fsync off) unless SPOTSWEEP_PG_DURABLE=1 (benchmarks: PostgreSQL's defaults).
pg_opts="-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=400"
if [ "${SPOTSWEEP_PG_DURABLE:-0}" != 1 ]; then
  pg_opts="$pg_opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
fi
as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -o "$pg_opts" start >/dev/null
stop_postgres() {
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap stop_postgres EXIT
export SPOTSWEEP_TEST_DATABASE_URL="postgres://spotsweep@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') for the tests on 127.0.0.1:$pg_port"
