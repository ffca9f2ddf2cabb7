"""A trial of the fleet simulations: "trains" for --seconds, logging its loss to the trial's MLflow
run over the REST API (standard library only), then exits.

With --resume, it works in steps of --step seconds and saves its step to
$SPOTSWEEP_CHECKPOINT_DIR/state.json after each one (a temporary file, then a rename):
`checkpoint` goes on from the saved step when the agent restored one, `scratch` always starts
over (the comparison)."""

import argparse
import json
import math
import os
import time
import urllib.request


def log(key, value, step):
    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric"
    body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": key, "value": value,
            "timestamp": int(time.time() * 1000), "step": step}
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    urllib.request.urlopen(urllib.request.Request(base, json.dumps(body).encode(), headers, method="POST"),
                           timeout=30).read()


p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, required=True)
p.add_argument("--resume", choices=["checkpoint", "scratch"])
p.add_argument("--step", type=float, default=0.25)
args = p.parse_args()
if args.resume is None:
    time.sleep(args.seconds)
else:
    steps = math.ceil(args.seconds / args.step)
    state = os.path.join(os.environ["SPOTSWEEP_CHECKPOINT_DIR"], "state.json")
    first = 0
    if args.resume == "checkpoint" and os.path.exists(state):
        with open(state) as f:
            first = json.load(f)["step"] + 1
    for step in range(first, steps):
        time.sleep(args.seconds / steps)
        with open(state + ".tmp", "w") as f:
            json.dump({"step": step}, f)
        os.replace(state + ".tmp", state)
log("loss", args.seconds, 0)
