#!/usr/bin/env bash
# Checkpoint benchmark: a 20-trial sweep (8 to 16 s of work each) on a gce pool of 4 one-slot
# Spot VMs against the fake Compute API (every VM boots the real startup script and agent on this
# machine), every fifth attempt preempted at a random point of the work it has left.
# Twice, in one run: trials that checkpoint every 0.25 s and resume, then the same trials
# starting over after each preemption. Prints a markdown table (the raw JSON with --json).
#
#   bench/checkpoints.sh            # about 3 minutes on 2 cores
#   bench/checkpoints.sh --save     # ... and write it to bench/CHECKPOINT-RESULTS.md
#
# Needs bash, curl, python3 and openssl (the fake VMs' startup script and trials use them).
set -euo pipefail
cd "$(dirname "$0")/.."
save=0
[ "${1:-}" = "--save" ] && save=1
started=$(date +%s)
cargo build --release -q -p spotsweep-cli --bin spotsweep --example fleet_sim
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SPOTSWEEP_LOG=warn target/release/examples/fleet_sim target/release/spotsweep --checkpoints > "$out"
[ "${1:-}" = "--json" ] && cat "$out"
report=$(python3 - "$out" "$(( $(date +%s) - started ))" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys, datetime, platform
d = json.load(open(sys.argv[1]))
secs, rev = sys.argv[2], sys.argv[3]
by = {s["resume"]: s for s in d["sweeps"]}
print("# Checkpoint benchmark\n")
print(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print(f"- command: `bench/checkpoints.sh` ({secs} s in all), HEAD {rev}")
print(f"- machine: {platform.machine()}, {platform.system()} {platform.release()}")
print(f"- {d['trials']} trials of 8 to 16 s on {d['vms']} one-slot fake Spot VMs (real startup script and agent);"
      f" every {d['preempt_every']}th attempt to start is preempted (a {1 / d['preempt_every']:.0%} rate) at a random point"
      f" of the work it has left; trial-seconds spent = every attempt's lease time (the daemon's records),"
      f" needed = the trials' own lengths\n")
print("| trials | attempts | preemptions | trial-seconds spent / needed | goal | met |\n|---|---|---|---|---|---|")
for name, label in (("checkpoint", "checkpoint every 0.25 s, resume"), ("scratch", "restart from scratch (comparison)")):
    s = by[name]
    goal = "≤ 1.10" if name == "checkpoint" else "—"
    met = ("yes" if s["ratio"] <= 1.10 else "**NO**") if name == "checkpoint" else "—"
    print(f"| {label} | {s['attempts']} | {s['preemptions']} | {s['spent_trial_seconds']:.1f} / {s['needed_trial_seconds']:.1f} = {s['ratio']:.3f} | {goal} | {met} |")
PY
)
echo "$report"
if [ "$save" = 1 ]; then echo "$report" > bench/CHECKPOINT-RESULTS.md; echo "wrote bench/CHECKPOINT-RESULTS.md" >&2; fi
