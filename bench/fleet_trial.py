"""A trial of the fleet simulation: "trains" for --seconds, logging its loss to the trial's MLflow
run over the REST API (standard library only), then exits."""

import argparse
import json
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
args = p.parse_args()
start = time.monotonic()
time.sleep(args.seconds)
log("loss", args.seconds, 0)
