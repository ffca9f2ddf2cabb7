"""Staging: a sweep's `setup` command runs once per agent before its first trial, however many
trials follow; a setup that fails takes the machine out (no trial runs or fails there), the trial
goes back to the queue, and a sweep whose setup fails everywhere is paused, saying why.
"""
from __future__ import annotations

import json
import time

import pytest
from test_sweeps import (  # noqa: F401 (agents is a fixture)
    PY,
    agents,
    create_sweep,
    get_sweep,
    get_trials,
    spec_of,
    unique_name,
    wait_for,
    wait_sweep,
)

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

# argv: DATA_DIR. Reads the "dataset" the setup staged, logs loss = its size.
TRIAL = r'''
import json, os, sys, time, urllib.request
data = open(os.path.join(sys.argv[1], "dataset.txt")).read()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}
body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": "loss", "value": float(len(data)),
        "timestamp": int(time.time() * 1000), "step": 0}
urllib.request.urlopen(urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
    json.dumps(body).encode(), headers, method="POST"), timeout=30).read()
'''


def test_setup_runs_once_per_agent_however_many_trials_follow(server_factory, agents, tmp_path):
    srv = server_factory()
    script = tmp_path / "trial.py"
    script.write_text(TRIAL)
    staged = tmp_path / "staged"
    runs = tmp_path / "setup-runs.txt"
    # "Copies the dataset" to local disk, slowly, counting its runs.
    setup = f'sleep 0.5 && echo run >> "{runs}" && mkdir -p "{staged}" && echo 0123456789 > "{staged}/dataset.txt"'
    for name in ("a0", "a1"):
        agents(name, srv, "--slots", "3")
    spec = spec_of(unique_name("setup"), f'"{PY}" "{script}" "{staged}"',
                   max_trials=12, parallelism=6, setup=setup)
    sid = create_sweep(srv, spec)["id"]
    s = wait_sweep(srv, sid, timeout=60)
    assert s["state"] == "completed" and s["counts"]["completed"] == 12, s
    # Twelve trials on two agents: the setup ran twice, once per agent, never per trial.
    lines = runs.read_text().split()
    assert len(lines) == 2, lines
    trials = get_trials(srv, sid)
    assert {t["agent_id"].split("-")[0] for t in trials} == {"a0", "a1"}
    assert all(t["value"] == 11.0 for t in trials)


def test_a_failed_setup_takes_the_machine_out_and_pauses_the_sweep(server_factory, agents, tmp_path):
    srv = server_factory()
    a = agents("bad", srv, "--slots", "2")
    spec = spec_of(unique_name("badsetup"), "true", max_trials=4, parallelism=2,
                   setup="echo 'gsutil: bucket not found' >&2; exit 7")
    sid = create_sweep(srv, spec)["id"]
    s = wait_for(lambda: (lambda s: s["state"] == "paused" and s)(get_sweep(srv, sid)), 30, "the sweep to pause")
    # The agent stops (a supervisor may start a fresh one) instead of failing trial after trial.
    assert a.wait(30) != 0
    log = a.log_path.read_text()
    assert "setup failed" in log, log[-2000:]
    trials = get_trials(srv, sid)
    assert trials and all(t["state"] == "queued" and t["failures"] == 0 for t in trials), trials
    reasons = " ".join(t["reason"] or "" for t in trials)
    assert "exit code 7" in reasons and "bucket not found" in reasons and "paused" in reasons, trials
    # The setup's output is with the trial's run.
    run_id = next(t for t in trials if "paused" in (t["reason"] or ""))["run_id"]
    r = srv.get("artifacts/list", params={"run_id": run_id, "path": "logs"})
    assert "logs/setup.txt" in [f["path"] for f in r.json()["files"]], r.text
    assert s["counts"]["failed"] == 0
