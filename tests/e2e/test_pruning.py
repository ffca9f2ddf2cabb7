"""Pruning end to end (spotsweep only): trials run by local agents log their objective metric
by step to the daemon; the median pruner compares them with the completed trials at the same
step and hopeless ones are stopped at a heartbeat and marked pruned, with their step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from test_sweeps import FAST_TTL, create_sweep, get_sweep, get_trials, unique_name, wait_sweep

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

PY = sys.executable

# argv: I. Logs loss by step for STEPS steps, STEP_S apart, through the REST API (importing
# mlflow costs seconds per trial). Trials 0-2 learn (loss falls towards 0); the others are
# hopeless (loss stays at 10 and more).
CURVE_TRIAL = r'''
import json, os, sys, time, urllib.request

STEPS, STEP_S = 12, 0.4

def log_metric(key, value, step):
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": key, "value": value,
            "timestamp": int(time.time() * 1000), "step": step}
    req = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
        json.dumps(body).encode(), headers, method="POST")
    urllib.request.urlopen(req, timeout=30).read()

i = int(sys.argv[1])
for step in range(STEPS):
    loss = 1.0 / (step + 1) if i < 3 else 10.0 + i
    log_metric("loss", loss, step)
    time.sleep(STEP_S)
'''


def test_median_pruner_stops_hopeless_trials(server_factory, tmp_path: Path):
    srv = server_factory(extra_args=["--local-agents", "2"], env=FAST_TTL)
    script = tmp_path / "curve.py"
    script.write_text(CURVE_TRIAL)
    spec = {
        "name": unique_name("prune"),
        "command": f'"{PY}" "{script}" {{i}}',
        "parameters": {"i": {"type": "int", "low": 0, "high": 5}},
        "objective": {"metric": "loss", "goal": "minimize"},
        # In order: trials 0 and 1 (good) run first, side by side, and set the bar.
        "sampler": {"type": "grid"},
        "pruner": {"type": "median", "startup_trials": 2, "warmup_steps": 1},
        "max_trials": 6,
        "parallelism": 2,
        "max_retries": 0,
    }
    started = time.monotonic()
    sweep = create_sweep(srv, spec)
    assert sweep["spec"]["pruner"]["type"] == "median"
    done = wait_sweep(srv, sweep["id"], timeout=120)
    assert done["state"] == "completed"
    trials = {t["number"]: t for t in get_trials(srv, sweep["id"])}
    for n in (0, 1, 2):
        assert trials[n]["state"] == "completed", trials[n]
        assert abs(trials[n]["value"] - 1.0 / 12) < 1e-9
    for n in (3, 4, 5):
        t = trials[n]
        assert t["state"] == "pruned", t
        assert t["pruned_step"] >= 1, t
        assert "median" in t["reason"] and f"step {t['pruned_step']}" in t["reason"], t
        # Stopped well before its 12 steps (4.8 s): within a few heartbeats of step 1.
        assert t["finished_at"] - t["started_at"] < 4500, t
    counts = get_sweep(srv, sweep["id"])["counts"]
    assert counts["pruned"] == 3 and counts["completed"] == 3, counts
    # The pruned trials' MLflow runs ended as KILLED; the completed ones FINISHED.
    for n, status in ((0, "FINISHED"), (4, "KILLED")):
        r = srv.request("GET", f"{srv.url}/api/2.0/mlflow/runs/get", params={"run_id": trials[n]["run_id"]})
        assert r.json()["run"]["info"]["status"] == status
    assert time.monotonic() - started < 60


def test_pruner_spec_errors_name_the_field(server_factory):
    srv = server_factory()
    base = {
        "name": "p",
        "command": "true {x}",
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss"},
        "max_trials": 2,
    }
    for pruner, field in (
        ({"type": "hyperband"}, "pruner.max_steps"),
        ({"type": "asha", "reduction_factor": 1}, "pruner.reduction_factor"),
        ({"type": "percentile", "percentile": 150}, "pruner.percentile"),
        ({"type": "bogus"}, "pruner"),
    ):
        r = srv.request("POST", f"{srv.url}/api/v1/sweeps", json={**base, "pruner": pruner})
        assert r.status_code == 400, r.text
        assert field in r.json()["message"], (pruner, r.text)
    r = srv.request(
        "POST", f"{srv.url}/api/v1/sweeps", json={**base, "sampler": {"type": "qmc", "startup_trials": 3}}
    )
    assert r.status_code == 400 and "sampler" in r.json()["message"], r.text
