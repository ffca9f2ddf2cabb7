"""Versions on every run, and a sweep as a parent run (spotsweep only).

A sweep submitted with the CLI from a temporary git repository with an uncommitted change:
every trial's run carries the commit, branch, remote (without its credentials), dirty flag and
`mlflow.source.*` tags, and is a child of the sweep's own run, which keeps the spec, the diff and
the best value so far. A cancelled sweep's run is KILLED.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import git_commit_all, spotsweep_bin, workdir_spec

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

# The trials' PATH finds this interpreter (with mlflow installed) as `python3`.
TRIAL_PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"

TRAIN = r'''
import json, os, sys, time, urllib.request
x = float(sys.argv[1])
body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": "loss", "value": (x - 0.25) ** 2,
        "timestamp": int(time.time() * 1000), "step": 0}
req = urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
    json.dumps(body).encode(),
    {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]},
    method="POST")
urllib.request.urlopen(req, timeout=30).read()
time.sleep(float(os.environ.get("HOLD", "0")))
'''


def v1(srv, method, path, **kw):
    kw.setdefault("timeout", 40)
    return srv.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", **kw)


def get_sweep(srv, sid) -> dict:
    r = v1(srv, "GET", f"sweeps/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def make_repo(root: Path, name: str, max_trials: int, hold: float) -> Path:
    """A committed git repository on branch `exp` with a remote carrying credentials, then an
    uncommitted change to a tracked file. Returns the spec's path."""
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "notes.txt").write_text("first\n")
    spec = root / "sweep.yaml"
    spec.write_text(workdir_spec(name, max_trials, env=f"{{HOLD: '{hold}', PATH: '{TRIAL_PATH}'}}"))
    commit = git_commit_all(root, branch="exp", remote="https://alice:s3cret@example.com/lab/repo.git")
    (root / "notes.txt").write_text("first\nuncommitted line\n")
    return spec, commit


def submit(srv, spec: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["SPOTSWEEP_CACHE_DIR"] = str(spec.parent.parent / "cache")
    p = subprocess.run([str(spotsweep_bin()), "submit", str(spec), "--server", srv.url, "--token", srv.token],
                       cwd=str(spec.parent.parent), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


def test_trial_runs_carry_the_version_and_are_children_of_the_sweep_run(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=("--local-agents", "1"))
    client = connect(srv)
    spec, commit = make_repo(tmp_path / "repo", f"versions-{uuid.uuid4().hex[:8]}", max_trials=5, hold=0)
    sid = submit(srv, spec)
    sweep = wait_for(lambda: (s := get_sweep(srv, sid))["state"] == "completed" and s, 120, "the sweep to end")
    parent_id = sweep["run_id"]
    assert parent_id

    trials = v1(srv, "GET", f"sweeps/{sid}/trials").json()["trials"]
    assert len(trials) == 5
    environments = set()
    for t in trials:
        tags = client.get_run(t["run_id"]).data.tags
        assert tags["mlflow.parentRunId"] == parent_id
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.git.branch"] == "exp"
        assert tags["mlflow.source.git.repoURL"] == "https://example.com/lab/repo.git"
        assert tags["mlflow.source.type"] == "PROJECT"
        assert tags["mlflow.source.name"] == "sweep.yaml"
        assert tags["spotsweep.source.dirty"] == "true"
        assert tags["spotsweep.code"].startswith("sha256:")
        # The machine's environment: short facts as tags, the full record as an artifact.
        assert tags["spotsweep.python.version"] == platform.python_version()
        assert tags["spotsweep.agent.version"]
        assert tags["spotsweep.os"]
        assert len(tags["spotsweep.environment"]) == 64
        environments.add(tags["spotsweep.environment"])
        path = client.download_artifacts(t["run_id"], "environment.json", str(tmp_path / t["run_id"]))
        record = json.loads(Path(path).read_text())
        assert any(line.lower().startswith("mlflow==") for line in record["pip_freeze"]), record["pip_freeze"]
        assert record["python"]["version"] == platform.python_version()
    # One machine, one environment.
    assert len(environments) == 1

    # MLflow's client finds exactly the trials under the sweep's run.
    children = client.search_runs([sweep["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t["run_id"] for t in trials)

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == sweep["name"]
    assert parent.data.params["max_trials"] == "5"
    assert parent.data.params["sampler"] == "random"
    assert parent.data.params["objective"] == "loss"
    assert parent.data.params["goal"] == "minimize"
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    assert parent.data.tags["spotsweep.source.dirty"] == "true"
    names = {a.path for a in client.list_artifacts(parent_id)}
    assert {"spec.json", "diff.patch"} <= names
    out = tmp_path / "dl"
    spec_json = json.loads(Path(client.download_artifacts(parent_id, "spec.json", str(out))).read_text())
    assert spec_json["name"] == sweep["name"] and "diff" not in spec_json["source"]
    diff = Path(client.download_artifacts(parent_id, "diff.patch", str(out))).read_text()
    assert "+uncommitted line" in diff

    # The best value's history is the running minimum of the trials' values, by trial number.
    history = client.get_metric_history(parent_id, "best_loss")
    running, expected = None, []
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "completed" and (running is None or t["value"] < running):
            running = t["value"]
            expected.append((t["number"], t["value"]))
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == expected
    assert sweep["best"]["value"] == expected[-1][1]


def test_a_cancelled_sweeps_run_is_killed(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=("--local-agents", "1"))
    client = connect(srv)
    spec, _ = make_repo(tmp_path / "repo", f"versions-cancel-{uuid.uuid4().hex[:8]}", max_trials=20, hold=30)
    sid = submit(srv, spec)
    wait_for(lambda: get_sweep(srv, sid)["counts"]["running"] > 0, 60, "a trial to run")
    r = v1(srv, "POST", f"sweeps/{sid}/cancel")
    assert r.status_code == 200, r.text
    sweep = get_sweep(srv, sid)
    assert sweep["state"] == "cancelled"
    assert client.get_run(sweep["run_id"]).info.status == "KILLED"
