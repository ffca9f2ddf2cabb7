#!/usr/bin/env bash
# Performance benchmark: spotsweep against the reference `mlflow server` (mlflow==3.17.2, SQLite
# backend, its default 4 uvicorn workers), one after the other on this machine, and one markdown
# table with both columns side by side.
#
#   bench/run.sh                 # setup (idempotent) + both servers + the table
#   bench/run.sh --save          # ... and write the table to bench/RESULTS.md
#   bench/run.sh --setup-only    # only install wrk, the venv and build the release binary
#   bench/run.sh --only spotsweep|reference   # one server (the other column is left empty)
#   bench/run.sh --postgres      # both servers on PostgreSQL (a throw-away cluster with its
#                                # durability defaults, a fresh database each)
#
# Knobs (environment): BENCH_DURATION (seconds per wrk load, default 15), BENCH_WARMUP (default 3),
# BENCH_RUNS (runs seeded for the search, default 10000), BENCH_HISTORY (points of the long metric,
# default 100000), BENCH_SEARCH_N / BENCH_SEARCH_MIN_S (at least this many sequential searches, for
# at least this long; default 50 and 5), BENCH_QUIET_WAIT (seconds to wait for an idle machine
# before each server, default 300), BENCH_NO_BUILD=1 (measure the existing target/release/spotsweep
# instead of building it), BENCH_REV=<git rev> (build and measure that commit from a clean
# snapshot in target/bench-rev/, e.g. while the Rust sources are being edited).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# The command line as run, with the BENCH_* settings in force, for the report.
orig_cmd="$({ env | grep -E '^BENCH_[A-Z_]+=' || true; } | sort | tr '\n' ' ')bench/run.sh${*:+ $*}"
save=0
setup_only=0
only=""
postgres=0
while [ $# -gt 0 ]; do
  case "$1" in
    --save) save=1 ;;
    --setup-only) setup_only=1 ;;
    --only) only="$2"; shift ;;
    --postgres) postgres=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

started=$(date +%s)
log() { printf '[bench %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

# ------------------------------------------------------------------------------------ setup
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (apt)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q wrk >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q wrk >/dev/null
  fi
fi

venv=.venv-bench
stamp="$venv/.requirements.sha256"
want=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/mlflow" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating $venv (pip install -r bench/requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  echo "$want" > "$stamp"
fi
PY="$ROOT/$venv/bin/python"

BIN="$ROOT/target/release/spotsweep"
if [ -n "${BENCH_REV:-}" ]; then
  # Build a committed revision from a clean snapshot (target/bench-rev/), so that edits in
  # progress in the working tree can neither break nor change the binary measured.
  rev=$(git rev-parse --short "$BENCH_REV")
  snap="$ROOT/target/bench-rev"
  rm -rf "$snap/src"
  mkdir -p "$snap/src" "$snap/target"
  git archive "$rev" | tar -x -m -C "$snap/src"
  if [ ! -d "$snap/target/release" ] && [ -d target/release ]; then
    cp -a target/release "$snap/target/"  # compiled dependencies, to start warm
  fi
  log "cargo build --release -p spotsweep-cli (snapshot of $rev)"
  (cd "$snap/src" && CARGO_TARGET_DIR="$snap/target" cargo build --release -q -p spotsweep-cli)
  BIN="$snap/target/release/spotsweep"
  build_desc="commit $rev (BENCH_REV=$BENCH_REV, built from a clean snapshot of it)"
elif [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
  # For a tree that is being edited: measure the binary already there.
  [ -x "$BIN" ] || { echo "BENCH_NO_BUILD=1 but there is no $BIN" >&2; exit 1; }
  build_desc="the existing binary (BENCH_NO_BUILD=1), built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')"
  log "BENCH_NO_BUILD=1: using $BIN as it is"
else
  log "cargo build --release -p spotsweep-cli"
  cargo build --release -q -p spotsweep-cli
  [ -x "$BIN" ] || { echo "no $BIN after the build" >&2; exit 1; }
  build_desc="commit $(git rev-parse --short HEAD)"
  if ! git diff --quiet HEAD -- crates migrations Cargo.toml Cargo.lock 2>/dev/null; then
    build_desc="$build_desc plus uncommitted changes to the Rust sources"
  fi
fi
log "setup done"
[ "$setup_only" = 1 ] && exit 0

# ------------------------------------------------------------------------------------ run
work=$(mktemp -d /tmp/spotsweep-bench.XXXXXX)
cleanup() {
  # Each driver writes the process-group id of the server it started; stop whatever is left.
  for f in "$work"/*.pgid; do
    [ -e "$f" ] || continue
    pg=$(cat "$f")
    kill -TERM -- "-$pg" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  rm -rf "$work"
  if declare -F stop_postgres >/dev/null; then stop_postgres; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$postgres" = 1 ]; then
  SPOTSWEEP_PG_DURABLE=1 source scripts/test-postgres.sh
  trap cleanup EXIT
  export BENCH_POSTGRES="$SPOTSWEEP_TEST_DATABASE_URL" BENCH_BACKEND_NAME="PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')"
fi

targets="reference spotsweep"
[ -n "$only" ] && targets="$only"
for t in $targets; do
  log "=== $t ==="
  "$PY" bench/bench.py "$t" --bin "$BIN" --work "$work" --out "$work/$t.json"
done

elapsed=$(( $(date +%s) - started ))
args=(--elapsed "$elapsed" --command "$orig_cmd" --build "$build_desc")
[ -f "$work/reference.json" ] && args+=(--reference "$work/reference.json")
[ -f "$work/spotsweep.json" ] && args+=(--spotsweep "$work/spotsweep.json")
[ "$save" = 1 ] && args+=(--save bench/RESULTS.md)
"$PY" bench/report.py "${args[@]}"
