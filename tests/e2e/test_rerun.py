"""Rerun and checkout (spotsweep only): any finished trial runs again with the same parameters,
seed and code snapshot, as a new trial linked to the original, on the sweep's pool or another;
`spotsweep checkout` writes its code, parameters and command line into a directory, and running
that by hand gives the same numbers.

The training script exists only in a temporary git repository. It is deterministic given its
parameter and `SPOTSWEEP_SEED` (seeded noise on a learning curve), logs through MLflow's REST API
with nothing but the standard library when it has a run, and always prints its curve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import git_commit_all, spotsweep_bin, workdir_spec

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]


TRAIN = r'''
import json, os, random, sys, time, urllib.request

x = float(sys.argv[1])
rng = random.Random(int(os.environ["SPOTSWEEP_SEED"]))
curve = [(step, (x - 0.25) ** 2 + rng.random() / (step + 1)) for step in range(6)]
os.makedirs("outputs", exist_ok=True)
with open(os.path.join("outputs", "curve.json"), "w") as f:
    json.dump(curve, f)
for step, loss in curve:
    print("%d %r" % (step, loss))
if os.environ.get("MLFLOW_RUN_ID"):
    now = int(time.time() * 1000)
    body = {"run_id": os.environ["MLFLOW_RUN_ID"],
            "metrics": [{"key": "loss", "value": v, "timestamp": now, "step": s} for s, v in curve]}
    req = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-batch",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]},
        method="POST")
    urllib.request.urlopen(req, timeout=30).read()
'''


def v1(srv, method, path, body=None, token=None, **kw):
    kw.setdefault("timeout", 40)
    if body is not None:
        kw["json"] = body
    if token is not None:
        import requests

        return requests.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}",
                                headers={"Authorization": f"Bearer {token}"}, **kw)
    return srv.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", **kw)


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def trials(srv, sid) -> list[dict]:
    r = v1(srv, "GET", f"sweeps/{sid}/trials")
    assert r.status_code == 200, r.text
    return r.json()["trials"]


def history(srv, run_id) -> list[tuple[int, float]]:
    r = srv.request("GET", f"{srv.url}/api/2.0/mlflow/metrics/get-history",
                    params={"run_id": run_id, "metric_key": "loss"}, timeout=30)
    assert r.status_code == 200, r.text
    return sorted((m["step"], m["value"]) for m in r.json()["metrics"])


def tags(srv, run_id) -> dict:
    r = srv.request("GET", f"{srv.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
    assert r.status_code == 200, r.text
    return {t["key"]: t["value"] for t in r.json()["run"]["data"].get("tags", [])}


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSWEEP_", "MLFLOW_"))}
    env.update(HOME=str(home), NO_COLOR="1", SPOTSWEEP_CACHE_DIR=str(home / "cache"))
    env.update(extra)
    return env


def cli(srv, *args, cwd: Path, timeout=120):
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [str(spotsweep_bin()), *map(str, args), "--server", srv.url, "--token", srv.token],
        cwd=str(cwd), env=clean_env(home), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout,
    )


def make_repo(root: Path, name: str, max_trials: int) -> Path:
    """A committed git repository with the script, an ignored data file, a spec with
    `workdir: .`, and an uncommitted change. Returns the spec's path."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN)
    (root / ".gitignore").write_text("data/\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"\0" * 1024)
    (root / "README.md").write_text("a model\n")
    spec = root / "sweep.yaml"
    spec.write_text(workdir_spec(name, max_trials))
    git_commit_all(root)
    (root / "README.md").write_text("a model, changed\n")
    return spec


def submit_and_finish(srv, tmp_path: Path, name: str, max_trials: int) -> int:
    spec = make_repo(tmp_path / "repo", name, max_trials)
    elsewhere = tmp_path / "submitter"
    elsewhere.mkdir()
    p = cli(srv, "submit", spec, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    sid = int(p.stdout.strip())
    wait_for(lambda: v1(srv, "GET", f"sweeps/{sid}").json()["state"] == "completed", 120, "the sweep to end")
    return sid


def test_a_rerun_gives_the_same_metrics_and_a_checkout_runs_by_hand_to_the_same_numbers(server_factory, tmp_path):
    srv = server_factory(extra_args=("--local-agents", "1"))
    sid = submit_and_finish(srv, tmp_path, f"rerun-{uuid.uuid4().hex[:8]}", max_trials=3)
    before = v1(srv, "GET", f"sweeps/{sid}").json()
    original = trials(srv, sid)[1]
    assert original["state"] == "completed"

    # Rerun trial 1 and wait for it: a new trial after the sweep's three, linked to trial 1.
    p = cli(srv, "rerun", sid, 1, "--wait", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "a rerun of trial 1" in p.stdout, p.stdout
    rerun = trials(srv, sid)[3]
    assert rerun["rerun_of"] == 1 and rerun["number"] == 3, rerun
    assert rerun["state"] == "completed", rerun
    assert rerun["params"] == original["params"] and rerun["seed"] == original["seed"]
    assert rerun["run_id"] != original["run_id"]
    # Bit-identical: the same value and the same curve, step by step.
    assert rerun["value"] == original["value"]
    assert history(srv, rerun["run_id"]) == history(srv, original["run_id"])
    assert len(history(srv, rerun["run_id"])) == 6
    # The run says what it reran, and has the original's code, version and parent.
    mine, theirs = tags(srv, rerun["run_id"]), tags(srv, original["run_id"])
    assert mine["spotsweep.rerun_of"] == "1"
    assert mine["spotsweep.rerun_of_run"] == original["run_id"]
    for key in ("spotsweep.seed", "spotsweep.code", "mlflow.parentRunId", "mlflow.source.git.commit",
                "spotsweep.source.dirty"):
        assert mine[key] == theirs[key], key
    # The sweep stays completed, with its budget and its best.
    after = v1(srv, "GET", f"sweeps/{sid}").json()
    assert after["state"] == "completed"
    assert after["trials_created"] == before["trials_created"] == 3
    assert after["best"]["number"] == before["best"]["number"] != 3

    # Checkout: the code (ignored files left out), the parameters, a script that runs it.
    out = tmp_path / "by-hand"
    p = cli(srv, "checkout", sid, 1, out, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "train.py").read_text() == TRAIN
    assert (out / "README.md").read_text() == "a model, changed\n"
    assert not (out / "data").exists()
    info = json.loads((out / "spotsweep-trial.json").read_text())
    assert info["params"] == original["params"] and info["seed"] == original["seed"]
    assert info["run_id"] == original["run_id"] and info["code"] == tags(srv, original["run_id"])["spotsweep.code"]
    assert "train.py" in info["command"]
    # Run by hand, from elsewhere, with nothing of spotsweep's in the environment: the same curve.
    ran = subprocess.run([str(out / "spotsweep-trial.sh")], cwd=str(tmp_path), env=clean_env(tmp_path),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    curve = [(int(s), float(v)) for s, v in (line.split() for line in ran.stdout.splitlines())]
    assert curve == history(srv, original["run_id"])
    assert json.loads((out / "outputs" / "curve.json").read_text()) == [list(c) for c in curve]
    # A directory that is not empty is refused.
    p = cli(srv, "checkout", sid, 1, out, cwd=tmp_path)
    assert p.returncode != 0 and "not empty" in p.stderr, p.stderr


def test_a_rerun_on_another_pool_waits_for_an_agent_of_that_pool(server_factory, tmp_path):
    srv = server_factory(extra_args=("--local-agents", "1"))
    sid = submit_and_finish(srv, tmp_path, f"rerun-pool-{uuid.uuid4().hex[:8]}", max_trials=2)
    original = trials(srv, sid)[0]
    r = v1(srv, "POST", f"sweeps/{sid}/trials/0/rerun", {"pool": "workstation"})
    assert r.status_code == 201, r.text
    rerun = r.json()
    assert (rerun["pool"], rerun["rerun_of"], rerun["state"]) == ("workstation", 0, "queued")
    # The local pool's agent does not take it.
    time.sleep(2)
    assert trials(srv, sid)[rerun["number"]]["state"] == "queued"
    # An agent of that pool, in another directory with another HOME, runs it in the snapshot.
    machine = tmp_path / "workstation"
    machine.mkdir()
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(
        [str(spotsweep_bin()), "agent", "--server", srv.url, "--pool", "workstation", "--name", "ws",
         "--work-dir", str(machine / "work")],
        cwd=str(machine), env=clean_env(machine, SPOTSWEEP_TOKEN=srv.token), stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        done = wait_for(lambda: (t := trials(srv, sid)[rerun["number"]])["state"] in ("completed", "failed") and t,
                        60, "the rerun to end")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
    assert done["state"] == "completed", (done, (tmp_path / "agent.log").read_text())
    assert done["agent_id"].startswith("ws"), done
    assert done["value"] == original["value"]
    assert history(srv, done["run_id"]) == history(srv, original["run_id"])


def test_rerun_and_launch_answer_bad_requests_with_reasons(server_factory):
    srv = server_factory()
    spec = {"name": f"rerun-rest-{uuid.uuid4().hex[:8]}", "pool": "nobody", "max_trials": 3,
            "notebook": {"input": "train.ipynb", "output": "out/train.{trial}.ipynb"},
            "parameters": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
            "objective": {"metric": "loss"}, "env": {"DATA": "/data"}}
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = v1(srv, "POST", "leases", {"agent_id": "worker", "sweep_id": sid, "slots": 1})
    lease = r.json()["leases"][0]

    # A running trial cannot be rerun yet; a missing one or sweep is a 404.
    r = v1(srv, "POST", f"sweeps/{sid}/trials/0/rerun", {})
    assert r.status_code == 409 and "once it has ended" in r.json()["message"], r.text
    r = v1(srv, "POST", f"sweeps/{sid}/trials/9/rerun", {})
    assert r.status_code == 404 and "no trial 9" in r.json()["message"], r.text
    r = v1(srv, "POST", "sweeps/99999/trials/0/rerun", {})
    assert r.status_code == 404, r.text
    r = v1(srv, "POST", f"sweeps/{sid}/trials/x/rerun", {})
    assert r.status_code == 400, r.text
    for body in ({"pool": ""}, {"pool": "x" * 101}, {"pools": "a"}, {"pool": 3}):
        r = v1(srv, "POST", f"sweeps/{sid}/trials/0/rerun", body)
        assert r.status_code == 400, (body, r.text)

    r = v1(srv, "POST", f"leases/{lease['lease_id']}/complete", {"outcome": "succeeded", "value": 0.5})
    assert r.status_code == 200, r.text
    # A read-only token may look but not rerun.
    r = v1(srv, "POST", "tokens", {"name": f"viewer-{uuid.uuid4().hex[:6]}", "scope": "read"})
    viewer = r.json()["token"]
    r = v1(srv, "POST", f"sweeps/{sid}/trials/0/rerun", {}, token=viewer)
    assert r.status_code == 403, r.text
    r = v1(srv, "GET", f"sweeps/{sid}/trials/0", token=viewer)
    assert r.status_code == 200 and r.json()["value"] == 0.5, r.text
    # An empty body reruns on the sweep's pool.
    r = srv.request("POST", f"{srv.url}/api/v1/sweeps/{sid}/trials/0/rerun", timeout=30)
    assert r.status_code == 201 and "pool" not in r.json() and r.json()["rerun_of"] == 0, r.text

    # What the notebook trial ran: papermill's input and output, its parameters and environment.
    r = v1(srv, "GET", f"sweeps/{sid}/trials/0/launch")
    assert r.status_code == 200, r.text
    launch = r.json()
    assert launch["notebook"] == {"input": "train.ipynb", "output": "out/train.0.ipynb"}
    assert "command" not in launch
    assert json.loads(launch["env"]["SPOTSWEEP_PARAMS"]) == lease["trial"]["params"]
    assert launch["env"]["SPOTSWEEP_SEED"] == str(lease["trial"]["seed"])
    assert launch["env"]["DATA"] == "/data"
    r = v1(srv, "GET", f"sweeps/{sid}/trials/7/launch")
    assert r.status_code == 404, r.text


def test_checkout_of_a_sweep_without_a_snapshot_writes_the_command_and_names_the_commit(server_factory, tmp_path):
    srv = server_factory()
    spec = {"name": f"no-code-{uuid.uuid4().hex[:8]}", "pool": "nobody", "max_trials": 1,
            "command": "python3 train.py --x {x} --name {name}",
            "parameters": {"x": {"type": "float", "low": 0, "high": 1},
                           "name": {"type": "categorical", "choices": ["it's"]}},
            "objective": {"metric": "loss"},
            "source": {"commit": "0123456789abcdef0123456789abcdef01234567", "repo_url": "https://example.com/r.git",
                       "dirty": True, "diff": "--- a\n+++ b\n"}}
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = v1(srv, "POST", "leases", {"agent_id": "worker", "sweep_id": sid, "slots": 1})
    params = r.json()["leases"][0]["trial"]["params"]
    p = cli(srv, "checkout", sid, 0, tmp_path / "out", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "no code snapshot" in p.stderr and "0123456789abcdef" in p.stderr and "diff.patch" in p.stderr
    script = (tmp_path / "out" / "spotsweep-trial.sh").read_text()
    assert "train.py --x" in script
    # The script's command line is the one the agent ran, quotes and all.
    fake = tmp_path / "out" / "python3"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    ran = subprocess.run([str(tmp_path / "out" / "spotsweep-trial.sh")],
                         env=clean_env(tmp_path, PATH=f"{tmp_path / 'out'}:{os.environ['PATH']}"),
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["train.py", "--x", str(params["x"]), "--name", "it's"]
