#!/usr/bin/env bash
# Trial-queue benchmark: spotsweep's lease → complete throughput with 64 simulated workers over
# its HTTP API on SQLite (and a check that no trial was lost or duplicated), against Optuna with
# 4 processes sharing one SQLite storage file; then spotsweep's long-poll latency. One markdown
# table on stdout.
#
#   bench/queue.sh                 # setup (idempotent) + both + the table
#   bench/queue.sh --save          # ... and write the table to bench/QUEUE-RESULTS.md
#   bench/queue.sh --only spotsweep|optuna
#   bench/queue.sh --postgres      # instead: 3 daemons on one throw-away PostgreSQL (QUEUE_DAEMONS)
#   bench/queue.sh --setup-only    # only the venv (and the binary, if missing)
#
# The release binary target/release/spotsweep is used as it is; it is built (cargo build --release
# -p spotsweep-cli) only when missing, or always with QUEUE_BUILD=1.
# Knobs (environment): QUEUE_WORKERS (64), QUEUE_CLIENT_PROCS (load-generator processes, 2),
# QUEUE_WARMUP_S (2) / QUEUE_WINDOW_S (15) for spotsweep, QUEUE_OPTUNA_PROCS (4),
# QUEUE_OPTUNA_WARMUP_S (2) / QUEUE_OPTUNA_WINDOW_S (20), QUEUE_OPTUNA_LOOP (optimize | ask-tell),
# QUEUE_POLLS (long polls per trigger, 20),
# QUEUE_QUIET_WAIT (seconds to wait for an idle machine before each measurement, 60).
# Loopback only; everything it starts and writes lives in a temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

orig_args="$*"
save=0
setup_only=0
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --save) save=1 ;;
    --setup-only) setup_only=1 ;;
    --only) only="$2"; shift ;;
    --postgres) only=postgres ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|spotsweep|optuna|postgres) ;; *) echo "--only spotsweep|optuna" >&2; exit 2 ;; esac

started=$(date +%s)
log() { printf '[queue %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

# ------------------------------------------------------------------------------------ setup
venv=.venv-queue
stamp="$venv/.requirements.sha256"
want=$(sha256sum bench/queue-requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating $venv (pip install -r bench/queue-requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/queue-requirements.txt
  echo "$want" > "$stamp"
fi
PY="$ROOT/$venv/bin/python"

BIN="$ROOT/target/release/spotsweep"
if [ ! -x "$BIN" ] || [ "${QUEUE_BUILD:-0}" = 1 ]; then
  log "cargo build --release -p spotsweep-cli"
  cargo build --release -q -p spotsweep-cli
  [ -x "$BIN" ] || { echo "no $BIN after the build" >&2; exit 1; }
fi
build_desc="binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! git diff --quiet HEAD -- crates migrations Cargo.toml Cargo.lock 2>/dev/null; then
  build_desc="$build_desc (the tree has uncommitted Rust changes)"
fi
log "setup done"
[ "$setup_only" = 1 ] && exit 0

# ------------------------------------------------------------------------------------ run
work=$(mktemp -d /tmp/spotsweep-queue-bench.XXXXXX)
cleanup() {
  # The driver writes the process-group id of the server it started; stop whatever is left.
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

if [ "$only" = postgres ]; then
  # PostgreSQL's own durability defaults (fsync, synchronous commit), as a lab would run it.
  SPOTSWEEP_PG_DURABLE=1 source scripts/test-postgres.sh
  trap cleanup EXIT
  log "=== spotsweep, ${QUEUE_DAEMONS:-3} daemons on one PostgreSQL ==="
  db="${SPOTSWEEP_TEST_DATABASE_URL%/*}/queue_bench"
  psql -q "$SPOTSWEEP_TEST_DATABASE_URL" -c "CREATE DATABASE queue_bench"
  "$PY" bench/queue_bench.py spotsweep-pg --bin "$BIN" --work "$work" --out "$work/pg.json" \
    --database-url "$db" --daemons "${QUEUE_DAEMONS:-3}"
  exit 0
fi

args=()
if [ -z "$only" ] || [ "$only" = spotsweep ]; then
  log "=== spotsweep ==="
  "$PY" bench/queue_bench.py spotsweep --bin "$BIN" --work "$work" --out "$work/spotsweep.json"
  args+=(--spotsweep "$work/spotsweep.json")
fi
if [ -z "$only" ] || [ "$only" = optuna ]; then
  log "=== Optuna (anchor) ==="
  "$PY" bench/optuna_bench.py --work "$work" --out "$work/optuna.json"
  args+=(--optuna "$work/optuna.json")
fi

elapsed=$(( $(date +%s) - started ))
args+=(--elapsed "$elapsed" --command "bench/queue.sh${orig_args:+ $orig_args}" --build "$build_desc")
[ "$save" = 1 ] && args+=(--save bench/QUEUE-RESULTS.md)
"$PY" bench/queue_bench.py report "${args[@]}"
