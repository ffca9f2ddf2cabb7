#!/usr/bin/env bash
# Fleet simulation: a 200-trial sweep (1 to 3 s each) on a gce pool of 4 one-slot Spot VMs
# against the fake Compute API, every VM booting the real startup script and agent on this
# machine; the first zone stocked out, a 2 s boot delay, and a 10% chance per attempt that its VM
# is preempted while it runs. Prints a markdown table (and the raw JSON with --json).
#
#   bench/fleet.sh            # about 3 minutes on 2 cores
#   bench/fleet.sh --save     # ... and write it to bench/FLEET-RESULTS.md
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
SPOTSWEEP_LOG=warn target/release/examples/fleet_sim target/release/spotsweep > "$out"
report=$(python3 - "$out" "$(( $(date +%s) - started ))" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys, datetime, platform
d = json.load(open(sys.argv[1]))
secs, rev = sys.argv[2], sys.argv[3]
ok = lambda b: "yes" if b else "**NO**"
med = d["median_preemption_to_running_ms"]
rows = [
    ("billed VM-seconds / useful trial-slot-seconds", f"{d['billed_vm_seconds']:.1f} / {d['useful_slot_seconds']:.1f} = {d['ratio']:.3f}", "≤ 1.15", ok(d["ratio"] <= 1.15)),
    ("median time from a preemption to the trial running again", "-" if med is None else f"{med / 1000:.2f} s (over {d['preemptions_measured']} preemptions)", "reported", "—"),
    ("orphaned instances at the end", str(d["orphans"]), "0", ok(d["orphans"] == 0)),
    ("budget overrun", f"${d['budget_overrun_usd']:.2f} (spent ${d['spent_usd']:.3f} of ${d['budget_usd']:.2f})", "0", ok(d["budget_overrun_usd"] == 0)),
]
print("# Fleet simulation\n")
print(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print(f"- command: `bench/fleet.sh` ({secs} s in all), HEAD {rev}")
print(f"- machine: {platform.machine()}, {platform.system()} {platform.release()}")
print(f"- sweep: {d['trials']} trials of 1 to 3 s, {d['completed']} completed in {d['sweep_seconds']:.0f} s; pool of {d['vms_max']} one-slot VMs;"
      f" first zone stocked out ({d['vms_failed_stockout']} inserts failed there); {d['preemptions']} preemptions"
      f" ({d['preempt_chance']:.0%} of attempts); {d['vms_created']} VM records in all\n")
print("| measurement | result | goal | met |\n|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
)
echo "$report"
if [ "$save" = 1 ]; then echo "$report" > bench/FLEET-RESULTS.md; echo "wrote bench/FLEET-RESULTS.md" >&2; fi
