#!/usr/bin/env bash
# Optimizer benchmark: spotsweep's TPE through the daemon's ask-and-tell API beside Optuna 5's
# TPESampler (defaults) on five black-box functions (median regret at 25, 50 and 100 trials over
# seeds 0-9, then over 40 seeds); suggestion latency through the durable store at 100, 1,000 and
# 5,000 finished trials beside Optuna's ask() in memory and on SQLite; and a pruning table on a
# learning-curve benchmark run through the daemon. Markdown tables on stdout.
#
#   bench/hpo.sh                 # everything (about 5 minutes on 2 cores)
#   bench/hpo.sh --save          # ... and write the tables to bench/HPO-RESULTS.md
#   bench/hpo.sh --only regret|latency|pruning
#
# Uses target/release/spotsweep as it is (built when missing, or always with HPO_BUILD=1) and the
# Optuna venv of the queue benchmark (.venv-queue, bench/queue-requirements.txt). Knobs:
# HPO_SEEDS (40; the first 10 make the main table, all of them a second one), HPO_ONLY (only
# functions whose name contains it). Loopback only; everything it starts and writes lives in a
# temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

orig_args="$*"
save=0
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --save) save=1 ;;
    --only) only="$2"; shift ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|regret|latency|pruning) ;; *) echo "--only regret|latency|pruning" >&2; exit 2 ;; esac
started=$(date +%s)
log() { printf '[hpo %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

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
if [ ! -x "$BIN" ] || [ "${HPO_BUILD:-0}" = 1 ]; then
  log "cargo build --release -p spotsweep-cli"
  cargo build --release -q -p spotsweep-cli
fi

work=$(mktemp -d /tmp/spotsweep-hpo.XXXXXX)
cleanup() {
  if [ -f "$work/spotsweep.pgid" ]; then kill -TERM -- "-$(cat "$work/spotsweep.pgid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$only" ] || [ "$only" = regret ]; then
  log "regret: 5 functions x ${HPO_SEEDS:-40} seeds x 100 trials, Optuna then spotsweep per seed"
  "$PY" bench/hpo_bench.py regret --bin "$BIN" --work "$work" --out "$work/regret.json"
fi
if [ -z "$only" ] || [ "$only" = latency ]; then
  log "latency: spotsweep's store (cargo run --release --example suggest_latency)"
  cargo run --release -q -p spotsweep-store --example suggest_latency > "$work/latency-spotsweep.json"
  log "latency: Optuna ask() in memory and on SQLite"
  "$PY" bench/hpo_bench.py latency --out "$work/latency-optuna.json"
fi
if [ -z "$only" ] || [ "$only" = pruning ]; then
  log "pruning: learning curves through the daemon, 5 pruners x 3 seeds x 60 trials"
  "$PY" bench/hpo_bench.py pruning --bin "$BIN" --work "$work" --out "$work/pruning.json"
fi

head_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" bench/hpo_report.py --work "$work" --command "bench/hpo.sh $orig_args" --rev "$head_rev" \
  --seconds "$(( $(date +%s) - started ))" > "$work/report.md"
cat "$work/report.md"
if [ "$save" = 1 ]; then
  cp "$work/report.md" bench/HPO-RESULTS.md
  log "wrote bench/HPO-RESULTS.md"
fi
