"""A stand-in for a training script: the Branin function, "trained" over a few steps.

It logs to the trial's MLflow run the way any training code does. With the `mlflow` package
installed it uses it (`mlflow.start_run()` attaches to the run spotsweep created, through
MLFLOW_RUN_ID); without it, it speaks the same REST API with the standard library, so the demo
runs on a machine with nothing but Python.
"""

import argparse
import json
import math
import os
import time
import urllib.request


def branin(x1: float, x2: float) -> float:
    a, b, c = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi
    r, s, t = 6.0, 10.0, 1 / (8 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


class RestLogger:
    """The two MLflow calls this script needs, over plain HTTP."""

    def __init__(self):
        self.base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/"
        self.run_id = os.environ["MLFLOW_RUN_ID"]
        self.headers = {"Content-Type": "application/json"}
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]

    def _post(self, endpoint, body):
        req = urllib.request.Request(self.base + endpoint, json.dumps(body).encode(), self.headers, method="POST")
        urllib.request.urlopen(req, timeout=30).read()

    def log_metric(self, key, value, step):
        ts = int(time.time() * 1000)
        self._post("runs/log-metric", {"run_id": self.run_id, "key": key, "value": value, "timestamp": ts, "step": step})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--x1", type=float, required=True)
    p.add_argument("--x2", type=float, required=True)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    target = branin(args.x1, args.x2)
    try:
        import mlflow

        run = mlflow.start_run()
        log = lambda k, v, s: mlflow.log_metric(k, v, step=s)  # noqa: E731
    except ImportError:
        run = None
        log = RestLogger().log_metric
    # "Training": the loss approaches the function's value as steps go by.
    for step in range(args.steps):
        loss = target + 10.0 / (step + 1)
        log("loss", loss, step)
        time.sleep(0.02)
    log("loss", target, args.steps)
    if run is not None:
        mlflow.end_run()
    print(f"x1={args.x1} x2={args.x2} branin={target:.6f}")


if __name__ == "__main__":
    main()
