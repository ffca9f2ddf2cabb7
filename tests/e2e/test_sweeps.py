"""Sweeps end to end (spotsweep only): the sweep queue, local and remote agents, ask-and-tell
over HTTP, crash safety of agents and of the daemon, cancellation, spec validation,
reproducibility, failure handling, `spotsweep run`, and notebook trials through papermill.

Trials are small Python scripts written into the test's tmp_path and run with this test
interpreter (`sys.executable`), so `import mlflow` works inside them. Commands use absolute
paths: trials run with `sh -c` in the daemon's working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, spotsweep_bin

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

PY = sys.executable
VENV_BIN = str(Path(sys.executable).parent)
# Short leases: a lost agent's trial is requeued within seconds, heartbeats every 1.25 s, so a
# cancellation reaches the trial quickly. 5000 ms is the daemon's minimum.
FAST_TTL = {"SPOTSWEEP_LEASE_TTL_MS": "5000"}
ENDED = ("completed", "cancelled")
ULP = 1e-15  # relative tolerance of one or two ulps of a float


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def v1(srv, method, path, body=None, **kw):
    kw.setdefault("timeout", 40)
    if body is not None:
        kw["json"] = body
    return srv.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", **kw)


def create_sweep(srv, spec) -> dict:
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    return r.json()


def get_sweep(srv, sid) -> dict:
    r = v1(srv, "GET", f"sweeps/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def get_trials(srv, sid) -> list[dict]:
    r = v1(srv, "GET", f"sweeps/{sid}/trials")
    assert r.status_code == 200, r.text
    return r.json()["trials"]


def lease(srv, sweep_id=None, slots=1, agent_id="worker-1", **extra) -> list[dict]:
    body = {"agent_id": agent_id, "slots": slots, **extra}
    if sweep_id is not None:
        body["sweep_id"] = sweep_id
    r = v1(srv, "POST", "leases", body)
    assert r.status_code == 200, r.text
    return r.json()["leases"]


def complete(srv, lease_id, **body):
    return v1(srv, "POST", f"leases/{lease_id}/complete", body)


def wait_for(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_sweep(srv, sid, timeout=60.0, states=ENDED) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = get_sweep(srv, sid)
        if s["state"] in states:
            return s
        if time.monotonic() > deadline:
            trials = get_trials(srv, sid)
            raise AssertionError(
                f"sweep {sid} still {s['state']} after {timeout}s: counts {s['counts']}\n"
                + "\n".join(json.dumps(t) for t in trials)
            )
        time.sleep(0.1)


def spec_of(name, command, **over) -> dict:
    spec = {
        "name": name,
        "command": command,
        "parameters": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
        "objective": {"metric": "loss", "goal": "minimize"},
        "max_trials": 1,
        "parallelism": 1,
    }
    spec.update(over)
    return spec


def unique_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_with_cmdline(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (a path unique to this test)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            out.append(int(d))
    return out


def kill_pids(pids):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def download_text(client, run_id, path, dst: Path) -> str:
    dst.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(run_id, path, str(dst))
    return Path(local).read_text()


# A trial that talks to MLflow with nothing but the standard library (importing mlflow costs
# seconds per trial). argv: MODE X STATE_DIR SECONDS. Writes STATE_DIR/trial<N>-attempt<A>.json
# (its pid and environment) first, then:
#   normal     sleeps SECONDS, logs loss = x**2
#   hang-first on attempt 1 sleeps 120 s (it is killed), later attempts behave as normal
#   hang       sleeps 120 s (it is cancelled)
REST_TRIAL = r'''
import json, os, sys, time, urllib.request

def log_metric(key, value, step=0):
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": key, "value": value,
            "timestamp": int(time.time() * 1000), "step": step}
    req = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
        json.dumps(body).encode(), headers, method="POST")
    urllib.request.urlopen(req, timeout=30).read()

mode, x, state_dir, seconds = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
attempt = os.environ["SPOTSWEEP_ATTEMPT"]
number = os.environ["SPOTSWEEP_TRIAL_NUMBER"]
keys = ["MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "SPOTSWEEP_TRIAL_ID",
        "SPOTSWEEP_PARAMS", "SPOTSWEEP_SEED", "SPOTSWEEP_ATTEMPT", "CUDA_VISIBLE_DEVICES"]
state = {"pid": os.getpid(), "env": {k: os.environ.get(k) for k in keys}}
path = os.path.join(state_dir, "trial%s-attempt%s.json" % (number, attempt))
with open(path + ".tmp", "w") as f:
    json.dump(state, f)
os.replace(path + ".tmp", path)
print("trial %s attempt %s x=%s" % (number, attempt, x), flush=True)
if mode == "hang" or (mode == "hang-first" and attempt == "1"):
    time.sleep(120)
time.sleep(seconds)
log_metric("loss", x * x, 0)
'''


def write_rest_trial(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "rest_trial.py"
    script.write_text(REST_TRIAL)
    state = tmp_path / "state"
    state.mkdir()
    return script, state


def rest_command(script, state, mode, seconds=0.0) -> str:
    return f'"{PY}" "{script}" {mode} {{x}} "{state}" {seconds}'


@pytest.fixture
def agents(tmp_path):
    """start(name, srv, *extra_args, env=None) -> Popen of a `spotsweep agent`, in its own process group;
    every agent still running at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(name, srv, *extra, env=None):
        log = open(tmp_path / f"{name}.log", "wb")
        cmd = [
            str(spotsweep_bin()), "agent", "--server", srv.url, "--name", name,
            "--work-dir", str(tmp_path / f"work-{name}"), *extra,
        ]
        if "--slots" not in extra:
            cmd += ["--slots", "1"]
        env = clean_env(SPOTSWEEP_LOG="info", **(env or {}))
        if srv.token:
            env["SPOTSWEEP_TOKEN"] = srv.token
        p = subprocess.Popen(
            cmd, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        p.log_path = tmp_path / f"{name}.log"
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# --------------------------------------------------------------------------------------
# 1. a random sweep run by local agents, through the real MLflow client
# --------------------------------------------------------------------------------------

MLFLOW_TRIAL = r'''
import argparse, json, os, sys, time
import mlflow

p = argparse.ArgumentParser()
for name in ("--x", "--lr", "--opt", "--layers"):
    p.add_argument(name, required=True)
a = p.parse_args()
x, lr, layers = float(a.x), float(a.lr), int(a.layers)
keys = ["MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "SPOTSWEEP_TRIAL_ID",
        "SPOTSWEEP_PARAMS", "SPOTSWEEP_SEED", "SPOTSWEEP_ATTEMPT", "CUDA_VISIBLE_DEVICES"]
info = {"argv": {"x": a.x, "lr": a.lr, "opt": a.opt, "layers": a.layers},
        "env": {k: os.environ.get(k) for k in keys},
        "has_token": bool(os.environ.get("MLFLOW_TRACKING_TOKEN"))}
print("TRIAL-INFO " + json.dumps(info), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
expected_run = os.environ["MLFLOW_RUN_ID"]  # mlflow.start_run() consumes (unsets) it
with mlflow.start_run() as run:
    assert run.info.run_id == expected_run, run.info.run_id
    target = (x - 0.3) ** 2 + (0.5 if a.opt == "sgd" else 0.0) + 0.1 * layers + lr
    for step in range(4):
        mlflow.log_metric("loss", target + 1.0 / (step + 1), step=step)
        time.sleep(0.01)
    mlflow.log_metric("loss", target, step=4)
'''


def test_random_sweep_with_local_agents_and_mlflow_client(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "2"], env=FAST_TTL)
    try:
        script = tmp_path / "train.py"
        script.write_text(MLFLOW_TRIAL)
        exp_name = unique_name("sweep-exp")
        spec = {
            "name": unique_name("random"),
            "experiment": exp_name,
            "command": f'"{PY}" "{script}" --x {{x}} --lr {{lr}} --opt {{opt}} --layers {{layers}}',
            "parameters": {
                "x": {"type": "float", "low": -2.0, "high": 2.0},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
                "layers": {"type": "int", "low": 1, "high": 4},
            },
            "objective": {"metric": "loss", "goal": "minimize"},
            "sampler": {"type": "random", "seed": 1234},
            "max_trials": 20,
            "parallelism": 2,
            "max_retries": 0,
        }
        created = create_sweep(srv, spec)
        sid = created["id"]
        assert created["state"] == "running"
        assert created["seed"] == 1234 and created["max_trials"] == 20

        # Parallelism is never exceeded while it runs.
        deadline = time.monotonic() + 150
        max_running = 0
        while True:
            s = get_sweep(srv, sid)
            max_running = max(max_running, s["counts"]["running"])
            if s["state"] in ENDED:
                break
            assert time.monotonic() < deadline, f"sweep did not end: {s}"
            time.sleep(0.2)
        assert s["state"] == "completed", s
        assert max_running <= 2
        assert s["counts"] == {
            "queued": 0, "running": 0, "completed": 20, "failed": 0, "pruned": 0,
            "preempted": 0, "cancelled": 0,
        }
        assert s["trials_created"] == 20
        assert s["finished_at"] is not None

        trials = get_trials(srv, sid)
        assert [t["number"] for t in trials] == list(range(20))
        best = min(trials, key=lambda t: (t["value"], t["number"]))
        assert s["best"] == {"number": best["number"], "value": best["value"], "run_id": best["run_id"]}

        client = connect(srv)
        exp = client.get_experiment(s["experiment_id"])
        assert exp.name == exp_name
        # The trials' runs are the children of the sweep's own run.
        children = f"tags.mlflow.parentRunId = '{s['run_id']}'"
        runs = {r.info.run_id: r for r in client.search_runs([s["experiment_id"]], children, max_results=100)}
        assert len(runs) == 20
        assert set(runs) == {t["run_id"] for t in trials}

        for t in trials:
            assert t["state"] == "completed" and t["attempts"] == 1 and t["failures"] == 0, t
            assert t["experiment_id"] == s["experiment_id"]
            run = runs[t["run_id"]]
            p = t["params"]
            assert -2.0 <= p["x"] <= 2.0 and 1e-4 <= p["lr"] <= 1e-1
            assert p["opt"] in ("sgd", "adam") and isinstance(p["layers"], int) and 1 <= p["layers"] <= 4
            # Params: the trial's, as strings. Floats are compared to within an ulp here: they
            # must be identical (test_float_params_identical_everywhere checks it exactly).
            params = run.data.params
            assert set(params) == {"x", "lr", "opt", "layers"}
            assert float(params["x"]) == pytest.approx(p["x"], rel=ULP)
            assert float(params["lr"]) == pytest.approx(p["lr"], rel=ULP)
            assert params["opt"] == p["opt"] and params["layers"] == str(p["layers"])
            tags = run.data.tags
            assert tags["spotsweep.sweep_id"] == str(sid)
            assert tags["spotsweep.trial"] == str(t["number"])
            assert tags["spotsweep.seed"] == str(t["seed"])
            assert tags["spotsweep.attempt"] == "1"
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(t["run_id"], "loss")
            assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
            latest = max(history, key=lambda m: (m.step, m.timestamp)).value
            assert run.data.metrics["loss"] == latest
            assert t["value"] == latest
            arts = {a.path for a in client.list_artifacts(t["run_id"], "logs")}
            assert {"logs/stdout.txt", "logs/stderr.txt"} <= arts

            # What the trial saw: argv strings are the run's param strings; the environment.
            out = download_text(client, t["run_id"], "logs/stdout.txt", tmp_path / "dl" / t["run_id"])
            line = next(ln for ln in out.splitlines() if ln.startswith("TRIAL-INFO "))
            info = json.loads(line[len("TRIAL-INFO "):])
            argv = info["argv"]
            assert argv["opt"] == params["opt"] and argv["layers"] == params["layers"]
            assert float(argv["x"]) == pytest.approx(float(params["x"]), rel=ULP)
            assert float(argv["lr"]) == pytest.approx(float(params["lr"]), rel=ULP)
            env = info["env"]
            assert env["MLFLOW_TRACKING_URI"] == srv.url
            assert env["MLFLOW_RUN_ID"] == t["run_id"]
            assert env["MLFLOW_EXPERIMENT_ID"] == s["experiment_id"]
            assert env["SPOTSWEEP_TRIAL_ID"] == f"{sid}-{t['number']}"
            assert json.loads(env["SPOTSWEEP_PARAMS"]) == p
            assert env["SPOTSWEEP_SEED"] == str(t["seed"])
            assert env["SPOTSWEEP_ATTEMPT"] == "1"
            # Local agents are started without --gpus: nothing set by the agent.
            assert env["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")
            assert info["has_token"] is True
            err = download_text(client, t["run_id"], "logs/stderr.txt", tmp_path / "dl" / t["run_id"])
            assert "a line on stderr" in err

        # Trials have distinct seeds and (random floats) distinct parameters.
        assert len({t["seed"] for t in trials}) == 20
        assert len({t["params"]["x"] for t in trials}) == 20

        listed = v1(srv, "GET", "sweeps").json()["sweeps"]
        assert [x["id"] for x in listed if x["id"] == sid] == [sid]
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------
# 2. ask-and-tell over HTTP
# --------------------------------------------------------------------------------------


def test_ask_and_tell_over_http(server_factory):
    srv = server_factory()
    spec = spec_of(
        unique_name("ask"),
        "train --lr {lr} --trial {trial}",
        parameters={"lr": {"type": "float", "low": 0.001, "high": 0.1}},
        max_trials=3,
        parallelism=1,
    )
    sweep = create_sweep(srv, spec)
    sid = sweep["id"]

    # Paused: nothing is leased; resumed: work again.
    assert v1(srv, "POST", f"sweeps/{sid}/pause").json()["state"] == "paused"
    assert lease(srv, sid) == []
    assert v1(srv, "POST", f"sweeps/{sid}/resume").json()["state"] == "running"

    values = [3.5, None, 1.25]  # trial 1 reports its value through its run's metrics
    answers = []
    for n, value in enumerate(values):
        rid = f"req-{uuid.uuid4().hex}"
        got = lease(srv, sid, request_id=rid, ttl_ms=30000)
        assert len(got) == 1, got
        ls = got[0]
        t = ls["trial"]
        assert t["number"] == n and t["state"] == "running" and t["attempts"] == 1
        assert t["agent_id"] == "worker-1"
        assert ls["objective_metric"] == "loss"
        assert ls["artifact_uri"].startswith("mlflow-artifacts:")
        assert ls["heartbeat_interval_ms"] > 0 and ls["expires_at"] > time.time() * 1000
        assert "notebook" not in ls
        m = re.fullmatch(r"train --lr (\S+) --trial (\d+)", ls["command"])
        assert m, ls["command"]
        assert float(m.group(1).strip("'")) == t["params"]["lr"] and int(m.group(2)) == n

        # A retried request (same request_id) gets the same lease, not a new trial.
        again = lease(srv, sid, request_id=rid, ttl_ms=30000)
        assert [x["lease_id"] for x in again] == [ls["lease_id"]]
        # Parallelism 1: nothing more while this one runs.
        assert lease(srv, sid, agent_id="worker-2") == []

        hb = v1(srv, "POST", f"leases/{ls['lease_id']}/heartbeat", {"ttl_ms": 20000})
        assert hb.status_code == 200 and hb.json() == {"action": "continue"}, hb.text

        if value is None:
            for step, v in enumerate([5.0, 3.0, 4.0]):
                r = srv.post("runs/log-metric", json={
                    "run_id": t["run_id"], "key": "loss", "value": v,
                    "timestamp": int(time.time() * 1000), "step": step})
                assert r.status_code == 200, r.text
            body = {"outcome": "succeeded"}
            expect = 4.0  # the latest value (highest step)
        else:
            body = {"outcome": "succeeded", "value": value}
            expect = value
        r1 = complete(srv, ls["lease_id"], **body)
        assert r1.status_code == 200, r1.text
        assert r1.json()["state"] == "completed" and r1.json()["value"] == expect
        # Idempotent: the same completion again gets the same answer.
        r2 = complete(srv, ls["lease_id"], **body)
        assert r2.status_code == 200, r2.text
        assert r2.json() == r1.json()
        # A different outcome for an ended lease is a conflict.
        r3 = complete(srv, ls["lease_id"], outcome="failed", reason="late")
        assert r3.status_code == 409, r3.text
        # A heartbeat on an ended lease says stop.
        hb = v1(srv, "POST", f"leases/{ls['lease_id']}/heartbeat", {})
        assert hb.status_code == 200 and hb.json()["action"] == "stop"
        answers.append(r1.json())

    s = get_sweep(srv, sid)
    assert s["state"] == "completed", s
    assert s["trials_created"] == 3 and s["counts"]["completed"] == 3
    assert s["best"]["number"] == 2 and s["best"]["value"] == 1.25
    # max_trials is never overshot.
    assert lease(srv, sid, slots=5) == []
    assert lease(srv, sid, slots=5, wait_ms=300) == []
    assert len(get_trials(srv, sid)) == 3

    # The same with many slots at once: exactly max_trials leases.
    spec2 = spec_of(unique_name("ask-many"), "true {x}", max_trials=3, parallelism=10)
    sid2 = create_sweep(srv, spec2)["id"]
    got = lease(srv, sid2, slots=10, ttl_ms=30000)
    assert sorted(x["trial"]["number"] for x in got) == [0, 1, 2]
    assert lease(srv, sid2, slots=10) == []
    r = v1(srv, "POST", f"sweeps/{sid2}/trials", {"params": {"x": 0.5}})
    assert r.status_code == 400, r.text
    for x in got:
        assert complete(srv, x["lease_id"], outcome="succeeded", value=1.0).status_code == 200
    assert get_sweep(srv, sid2)["state"] == "completed"

    # Unknown ids.
    assert complete(srv, "ls_nope", outcome="succeeded", value=1.0).status_code == 404
    assert v1(srv, "GET", "sweeps/999999").status_code == 404
    # A bad outcome and a non-finite value are 400s.
    spec3 = spec_of(unique_name("ask-bad"), "true {x}", max_trials=1)
    sid3 = create_sweep(srv, spec3)["id"]
    ls = lease(srv, sid3)[0]
    assert complete(srv, ls["lease_id"], outcome="won").status_code == 400
    r = v1(srv, "POST", f"leases/{ls['lease_id']}/complete",
           data='{"outcome": "succeeded", "value": NaN}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert get_trials(srv, sid3)[0]["state"] == "running"


def test_enqueue_fixed_params(server_factory):
    srv = server_factory()
    spec = spec_of(
        unique_name("enqueue"),
        "true {args}",
        parameters={
            "lr": {"type": "float", "low": 0.001, "high": 1.0},
            "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
            "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"opt": "sgd"}},
        },
        max_trials=3,
    )
    sid = create_sweep(srv, spec)["id"]
    r = v1(srv, "POST", f"sweeps/{sid}/trials", {"params": {"lr": 1, "opt": "sgd", "momentum": 0.9}})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["number"] == 0 and t["state"] == "queued"
    assert t["params"] == {"lr": 1.0, "opt": "sgd", "momentum": 0.9}
    # Missing, inactive, unknown and out-of-range parameters are refused, naming the parameter.
    for params, field in [
        ({"lr": 0.5, "opt": "sgd"}, "params.momentum"),
        ({"lr": 0.5, "opt": "adam", "momentum": 0.5}, "params.momentum"),
        ({"lr": 0.5, "opt": "adam", "beta": 1}, "params.beta"),
        ({"lr": 5.0, "opt": "adam"}, "params.lr"),
        ({"lr": 0.5, "opt": "rmsprop"}, "params.opt"),
    ]:
        r = v1(srv, "POST", f"sweeps/{sid}/trials", {"params": params})
        assert r.status_code == 400, (params, r.text)
        assert field in r.json()["message"], (params, r.text)
    # The enqueued trial is leased first, with its own parameters.
    ls = lease(srv, sid)[0]
    assert ls["trial"]["number"] == 0 and ls["trial"]["params"] == t["params"]
    assert "--momentum 0.9" in ls["command"] and "--lr 1.0" in ls["command"]
    runs = srv.post("runs/search", json={"experiment_ids": [ls["trial"]["experiment_id"]]}).json()["runs"]
    params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
    assert params == {"lr": "1.0", "opt": "sgd", "momentum": "0.9"}


def test_expired_lease_late_completion(server_factory):
    """A lease that expires requeues its trial; a late completion still counts if nobody took
    the trial since, and is refused (409) once it was leased again."""
    srv = server_factory()
    late = create_sweep(srv, spec_of(unique_name("late"), "true {x}", max_retries=1))["id"]
    taken = create_sweep(srv, spec_of(unique_name("taken"), "true {x}", max_retries=1))["id"]
    [l_late] = lease(srv, late, ttl_ms=5000)
    [l_taken] = lease(srv, taken, ttl_ms=5000)
    wait_for(lambda: get_trials(srv, late)[0]["state"] == "queued" and
             get_trials(srv, taken)[0]["state"] == "queued", 15, "both leases to expire")
    t = get_trials(srv, late)[0]
    assert t["failures"] == 1 and "expired" in t["reason"], t
    assert v1(srv, "POST", f"leases/{l_late['lease_id']}/heartbeat", {}).json()["action"] == "stop"

    # Nobody took it: the late result is kept, and the failure the expiry counted is undone.
    r = complete(srv, l_late["lease_id"], outcome="succeeded", value=0.5)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "completed" and r.json()["value"] == 0.5
    assert r.json()["failures"] == 0 and r.json()["attempts"] == 1
    assert get_sweep(srv, late)["state"] == "completed"

    # Taken again: the old lease's result is refused; the new lease's is taken.
    [again] = lease(srv, taken, ttl_ms=30000)
    assert again["trial"]["number"] == 0 and again["trial"]["attempts"] == 2
    assert again["trial"]["run_id"] == l_taken["trial"]["run_id"]
    r = complete(srv, l_taken["lease_id"], outcome="succeeded", value=9.0)
    assert r.status_code == 409, r.text
    r = complete(srv, again["lease_id"], outcome="succeeded", value=1.5)
    assert r.status_code == 200 and r.json()["value"] == 1.5, r.text
    assert get_sweep(srv, taken)["best"]["value"] == 1.5


# --------------------------------------------------------------------------------------
# 3. an agent killed with kill -9 mid-trial
# --------------------------------------------------------------------------------------


def test_agent_killed_mid_trial_is_requeued_on_another_agent(server_factory, agents, tmp_path):
    srv = server_factory()
    script, state = write_rest_trial(tmp_path)
    a0 = agents("a0", srv, "--lease-ttl-ms", "5000", "--grace-seconds", "1", "--gpus", "7")
    a1 = agents("a1", srv, "--lease-ttl-ms", "5000", "--grace-seconds", "1", "--gpus", "7")
    by_name = {"a0": a0, "a1": a1}
    sweep = create_sweep(
        srv, spec_of(unique_name("agentkill"), rest_command(script, state, "hang-first", 0.1))
    )
    sid = sweep["id"]
    first = wait_for(lambda: (state / "trial0-attempt1.json").exists() and
                     json.loads((state / "trial0-attempt1.json").read_text()), 30, "attempt 1 to start")
    assert first["env"]["CUDA_VISIBLE_DEVICES"] == "7"
    [t] = get_trials(srv, sid)
    assert t["state"] == "running" and t["attempts"] == 1
    holder = t["agent_id"].split("-")[0]
    other = "a1" if holder == "a0" else "a0"
    victim = by_name[holder]

    # The machine is lost: the agent and its trial (its own process group) die at once.
    killed_at = time.monotonic()
    victim.kill()
    victim.wait(5)
    pgid = os.getpgid(first["pid"])
    assert pgid not in (os.getpgid(0), victim.pid)
    os.killpg(pgid, signal.SIGKILL)

    s = wait_sweep(srv, sid, timeout=40)
    took = time.monotonic() - killed_at
    assert s["state"] == "completed", s
    [t] = get_trials(srv, sid)
    assert t["state"] == "completed", t
    assert t["attempts"] == 2, t
    assert t["agent_id"].startswith(other + "-"), t
    assert t["value"] == pytest.approx(t["params"]["x"] ** 2)
    # Within the lease TTL (5 s) plus a little.
    assert took < 20, took
    second = json.loads((state / "trial0-attempt2.json").read_text())
    assert second["env"]["MLFLOW_RUN_ID"] == first["env"]["MLFLOW_RUN_ID"] == t["run_id"]
    assert second["env"]["SPOTSWEEP_SEED"] == first["env"]["SPOTSWEEP_SEED"]
    # One run, finished, on its second attempt.
    children = f"tags.mlflow.parentRunId = '{s['run_id']}'"
    runs = srv.post("runs/search", json={"experiment_ids": [s["experiment_id"]], "filter": children}).json()["runs"]
    assert [r["info"]["run_id"] for r in runs] == [t["run_id"]]
    tags = {x["key"]: x["value"] for x in runs[0]["data"]["tags"]}
    assert tags["spotsweep.attempt"] == "2"
    assert runs[0]["info"]["status"] == "FINISHED"
    assert by_name[other].poll() is None


# --------------------------------------------------------------------------------------
# 4. the daemon killed with kill -9 mid-sweep
# --------------------------------------------------------------------------------------


def test_daemon_killed_mid_sweep_resumes_without_duplicates(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "2"], env=FAST_TTL)
    script, state = write_rest_trial(tmp_path)
    try:
        spec = spec_of(
            unique_name("daemonkill"), rest_command(script, state, "normal", 0.5),
            max_trials=10, parallelism=2, sampler={"type": "random", "seed": 99},
        )
        sid = create_sweep(srv, spec)["id"]
        wait_for(lambda: get_sweep(srv, sid)["counts"]["completed"] >= 2, 60, "2 completed trials")
        srv.kill()
        # The whole machine goes down: the orphaned local agents and their trials die too.
        kill_pids(pids_with_cmdline(str(srv.data_dir / "agents")))
        kill_pids(pids_with_cmdline(str(script)))
        srv.start()

        before = get_sweep(srv, sid)
        assert before["counts"]["completed"] < 10, "the sweep ended before the crash"
        # What was running at the crash is run again (its lease expires), on the same run.
        at_crash = {t["number"]: t for t in get_trials(srv, sid) if t["state"] == "running"}
        assert at_crash, "no trial was running at the crash"
        s = wait_sweep(srv, sid, timeout=60)
        assert s["state"] == "completed", s
        assert s["counts"]["completed"] == 10 and s["trials_created"] == 10
        trials = get_trials(srv, sid)
        assert sorted(t["number"] for t in trials) == list(range(10))
        assert all(t["state"] == "completed" for t in trials), trials
        for t in trials:
            assert t["value"] == pytest.approx(t["params"]["x"] ** 2)
            if t["number"] in at_crash:
                assert t["attempts"] == at_crash[t["number"]]["attempts"] + 1, t
                assert t["run_id"] == at_crash[t["number"]]["run_id"]

        client = connect(srv)
        runs = client.search_runs([s["experiment_id"]], f"tags.mlflow.parentRunId = '{s['run_id']}'", max_results=100)
        assert len(runs) == 10
        assert {r.info.run_id for r in runs} == {t["run_id"] for t in trials}
        assert sorted(int(r.data.tags["spotsweep.trial"]) for r in runs) == list(range(10))
        assert all(r.info.status == "FINISHED" for r in runs)
        by_run = {t["run_id"]: t for t in trials}
        for r in runs:
            assert r.data.tags["spotsweep.attempt"] == str(by_run[r.info.run_id]["attempts"])
    finally:
        srv.stop()
        kill_pids(pids_with_cmdline(str(script)))


# --------------------------------------------------------------------------------------
# 5. cancel
# --------------------------------------------------------------------------------------


def test_cancel_stops_running_trials(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "2"], env=FAST_TTL)
    script, state = write_rest_trial(tmp_path)
    try:
        spec = spec_of(
            unique_name("cancel"), rest_command(script, state, "hang"), max_trials=6, parallelism=2
        )
        sid = create_sweep(srv, spec)["id"]
        files = [state / "trial0-attempt1.json", state / "trial1-attempt1.json"]
        wait_for(lambda: all(f.exists() for f in files), 30, "two trials to start")
        pids = [json.loads(f.read_text())["pid"] for f in files]
        assert all(pid_alive(p) for p in pids)
        assert get_sweep(srv, sid)["counts"]["running"] == 2

        r = v1(srv, "POST", f"sweeps/{sid}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cancelled"
        cancelled_at = time.monotonic()
        wait_for(lambda: not any(pid_alive(p) for p in pids), 15, "the trial processes to exit")
        wait_for(
            lambda: all(t["state"] == "cancelled" for t in get_trials(srv, sid)), 15,
            "the trials to be cancelled",
        )
        assert time.monotonic() - cancelled_at < 15
        s = get_sweep(srv, sid)
        assert s["state"] == "cancelled" and s["finished_at"] is not None
        assert s["trials_created"] == 2 and s["counts"]["cancelled"] == 2, s
        assert s["counts"]["running"] == 0
        # Nothing new starts; the sweep cannot be resumed; the runs are KILLED.
        time.sleep(1.5)
        assert sorted(p.name for p in state.iterdir()) == sorted(f.name for f in files)
        assert v1(srv, "POST", f"sweeps/{sid}/resume").status_code == 400
        client = connect(srv)
        # The two trials' runs and the sweep's own run.
        runs = client.search_runs([s["experiment_id"]])
        assert len(runs) == 3 and all(r.info.status == "KILLED" for r in runs)
    finally:
        srv.stop()
        kill_pids(pids_with_cmdline(str(script)))


# --------------------------------------------------------------------------------------
# 6. bad specs
# --------------------------------------------------------------------------------------


def _base_spec():
    return {
        "name": "bad",
        "command": "train --lr {lr}",
        "parameters": {"lr": {"type": "float", "low": 0.001, "high": 1.0}},
        "objective": {"metric": "loss"},
        "max_trials": 2,
    }


def _with(**changes):
    spec = _base_spec()
    for path, value in changes.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return spec


_DELETE = object()

BAD_SPECS = [
    ("log-low-zero",
     _with(parameters={"lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
     ["parameters.lr.low", "log"]),
    ("unknown-placeholder", _with(command="train --lr {lr} --depth {depth}"), ["command", "{depth}"]),
    ("max-trials-zero", _with(max_trials=0), ["max_trials"]),
    ("unknown-top-level-field", _with(max_trial=3), ["max_trial"]),
    ("categorical-without-choices", _with(parameters={"opt": {"type": "categorical"}}, command="t {opt}"),
     ["choices"]),
    ("categorical-empty-choices",
     _with(parameters={"opt": {"type": "categorical", "choices": []}}, command="t {opt}"),
     ["parameters.opt.choices"]),
    ("condition-on-missing-parameter",
     _with(parameters={"lr": {"type": "float", "low": 0.1, "high": 1, "when": {"optimizer": "sgd"}}}),
     ["parameters.lr.when", "optimizer"]),
    ("low-above-high", _with(parameters={"lr": {"type": "float", "low": 2, "high": 1}}), ["parameters.lr.low"]),
    ("int-log-low-zero", _with(parameters={"lr": {"type": "int", "low": 0, "high": 8, "log": True}}),
     ["parameters.lr.low"]),
    ("step-with-log",
     _with(parameters={"lr": {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}}),
     ["parameters.lr.step"]),
    ("condition-cycle",
     _with(command="t {a} {b}", parameters={
         "a": {"type": "categorical", "choices": [1, 2], "when": {"b": 1}},
         "b": {"type": "categorical", "choices": [1, 2], "when": {"a": 1}}}),
     ["parameters.", "cycle"]),
    ("condition-value-not-a-choice",
     _with(command="t {opt} {lr}", parameters={
         "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
         "lr": {"type": "float", "low": 0.1, "high": 1, "when": {"opt": "rmsprop"}}}),
     ["parameters.lr.when.opt", "rmsprop"]),
    ("grid-float-without-step", _with(sampler={"type": "grid"}), ["parameters.lr", "step"]),
    ("parallelism-zero", _with(parallelism=0), ["parallelism"]),
    ("empty-name", _with(name="  "), ["name"]),
    ("no-parameters", _with(parameters={}, command="true"), ["parameters"]),
    ("no-command", _with(command=_DELETE), ["command"]),
    ("command-and-notebook", _with(notebook={"input": "a.ipynb", "output": "b.ipynb"}), ["command", "notebook"]),
    ("empty-metric", _with(objective={"metric": " "}), ["objective.metric"]),
    ("bad-goal", _with(objective={"metric": "loss", "goal": "up"}), ["`up`", "minimize"]),
    ("missing-max-trials", _with(max_trials=_DELETE), ["max_trials"]),
    ("unknown-distribution", _with(parameters={"lr": {"type": "gauss", "low": 0, "high": 1}}), ["gauss"]),
    ("unknown-parameter-field",
     _with(parameters={"lr": {"type": "float", "low": 0.1, "high": 1, "lgo": True}}), ["lgo"]),
    ("reserved-parameter-name",
     _with(command="t {args}", parameters={"trial": {"type": "int", "low": 0, "high": 3}}),
     ["parameters.trial"]),
    ("empty-pool", _with(pool=""), ["pool"]),
]


def test_bad_specs_are_400_naming_the_field(server_factory):
    srv = server_factory()
    problems = []
    for case, spec, needles in BAD_SPECS:
        r = v1(srv, "POST", "sweeps", spec)
        if r.status_code != 400:
            problems.append(f"{case}: HTTP {r.status_code} {r.text}")
            continue
        body = r.json()
        if body.get("code") != "invalid_request" or not all(n in body.get("message", "") for n in needles):
            problems.append(f"{case}: {body} does not name {needles}")
    r = v1(srv, "POST", "sweeps", data="{not json", headers={"Content-Type": "application/json"})
    if r.status_code != 400:
        problems.append(f"malformed JSON: HTTP {r.status_code}")
    assert not problems, "\n".join(problems)
    # Nothing was created, and the valid base spec is accepted.
    assert v1(srv, "GET", "sweeps").json()["sweeps"] == []
    assert v1(srv, "POST", "sweeps", _base_spec()).status_code == 201


# --------------------------------------------------------------------------------------
# 7. reproducibility
# --------------------------------------------------------------------------------------


def _repro_spec(seed=None):
    spec = {
        "name": "repro",
        "command": "train {args} --trial {trial}",
        "parameters": {
            "x": {"type": "float", "low": -5.0, "high": 5.0},
            "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
            "layers": {"type": "int", "low": 1, "high": 7, "step": 2},
            "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
            "momentum": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.1, "when": {"opt": "sgd"}},
        },
        "objective": {"metric": "loss"},
        "max_trials": 12,
        "parallelism": 12,
    }
    if seed is not None:
        spec["sampler"] = {"type": "random", "seed": seed}
    return spec


def _lease_all(srv, sid, n):
    got = lease(srv, sid, slots=n, agent_id=f"repro-{sid}")
    assert len(got) == n
    got.sort(key=lambda x: x["trial"]["number"])
    return got


def test_same_seed_same_params_and_seed_recorded(server_factory):
    srv = server_factory()
    a = create_sweep(srv, _repro_spec(seed=424242))
    b = create_sweep(srv, _repro_spec(seed=424242))
    assert a["seed"] == b["seed"] == 424242
    la, lb = _lease_all(srv, a["id"], 12), _lease_all(srv, b["id"], 12)
    pa = [x["trial"]["params"] for x in la]
    assert pa == [x["trial"]["params"] for x in lb]
    assert [x["trial"]["seed"] for x in la] == [x["trial"]["seed"] for x in lb]
    assert [x["command"] for x in la] == [x["command"] for x in lb]
    # Key order follows the spec; conditional parameters only when active; values in range.
    for x in la:
        p = x["trial"]["params"]
        active = ["x", "lr", "layers", "opt"] + (["momentum"] if p["opt"] == "sgd" else [])
        assert list(p) == active, p
        assert -5 <= p["x"] <= 5 and 1e-5 <= p["lr"] <= 1 and p["layers"] in (1, 3, 5, 7)
        if "momentum" in p:
            assert round(p["momentum"] * 10) == pytest.approx(p["momentum"] * 10)
        assert ("--momentum" in x["command"]) == (p["opt"] == "sgd")
        assert x["command"].endswith(f"--trial {x['trial']['number']}")
    assert {p["opt"] for p in pa} == {"sgd", "adam"}

    # Another seed: another sequence.
    c = create_sweep(srv, _repro_spec(seed=424243))
    assert [x["trial"]["params"] for x in _lease_all(srv, c["id"], 12)] != pa

    # No seed: one is drawn, returned and recorded in the stored spec; reusing it reproduces.
    d = create_sweep(srv, _repro_spec())
    assert isinstance(d["seed"], int) and 0 <= d["seed"] < 2**64
    assert d["spec"]["sampler"]["seed"] == d["seed"]
    assert get_sweep(srv, d["id"])["spec"]["sampler"]["seed"] == d["seed"]
    e = create_sweep(srv, _repro_spec(seed=d["seed"]))
    pd = [x["trial"]["params"] for x in _lease_all(srv, d["id"], 12)]
    assert pd == [x["trial"]["params"] for x in _lease_all(srv, e["id"], 12)]
    # Two seedless sweeps get different seeds.
    assert create_sweep(srv, _repro_spec())["seed"] != d["seed"]


def test_float_params_identical_everywhere(server_factory):
    srv = server_factory()
    spec = spec_of(
        unique_name("floats"), "train --x {x}", max_trials=200, parallelism=200,
        parameters={"x": {"type": "float", "low": -2.0, "high": 2.0}},
        sampler={"type": "random", "seed": 1234},
    )
    sid = create_sweep(srv, spec)["id"]
    leases = lease(srv, sid, slots=200)
    assert len(leases) == 200
    r = srv.post("runs/search", json={"experiment_ids": [leases[0]["trial"]["experiment_id"]],
                                      "max_results": 1000})
    assert r.status_code == 200, r.text
    logged = {run["info"]["run_id"]: {p["key"]: p["value"] for p in run["data"]["params"]}
              for run in r.json()["runs"]}
    listed = {t["number"]: t["params"]["x"] for t in get_trials(srv, sid)}
    mismatches = []
    for ls in leases:
        t = ls["trial"]
        in_command = ls["command"].split()[-1].strip("'")
        in_mlflow = logged[t["run_id"]]["x"]
        if not (float(in_command) == t["params"]["x"] == listed[t["number"]] == float(in_mlflow)):
            mismatches.append(
                f"trial {t['number']}: api {t['params']['x']!r}, command {in_command}, mlflow {in_mlflow}"
            )
    assert not mismatches, f"{len(mismatches)} of 200 differ:\n" + "\n".join(mismatches[:10])


# --------------------------------------------------------------------------------------
# 8. failures: no objective metric; non-zero exit and retries
# --------------------------------------------------------------------------------------


def test_missing_metric_fails_and_nonzero_exit_is_retried(server_factory, connect, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "2"], env=FAST_TTL)
    try:
        no_metric = create_sweep(srv, spec_of(
            unique_name("nometric"), "echo trained {x}",
            objective={"metric": "val_accuracy_xyz", "goal": "maximize"},
        ))
        exits = create_sweep(srv, spec_of(
            unique_name("exit1"), 'echo "boom x={x}" >&2; exit 1', max_retries=2,
        ))
        a = wait_sweep(srv, no_metric["id"], timeout=60)
        b = wait_sweep(srv, exits["id"], timeout=60)

        assert a["state"] == "completed" and a["counts"]["failed"] == 1 and "best" not in a, a
        [ta] = get_trials(srv, no_metric["id"])
        assert ta["state"] == "failed" and ta["attempts"] == 1, ta
        assert "val_accuracy_xyz" in ta["reason"], ta

        assert b["state"] == "completed" and b["counts"]["failed"] == 1, b
        [tb] = get_trials(srv, exits["id"])
        assert tb["state"] == "failed", tb
        assert tb["attempts"] == 3 and tb["failures"] == 3, tb  # max_retries + 1
        assert "exit code 1" in tb["reason"] and "boom x=" in tb["reason"], tb

        client = connect(srv)
        ra, rb = client.get_run(ta["run_id"]), client.get_run(tb["run_id"])
        assert ra.info.status == "FAILED" and rb.info.status == "FAILED"
        assert rb.data.tags["spotsweep.attempt"] == "3"
        assert "trained" in download_text(client, ta["run_id"], "logs/stdout.txt", tmp_path / "a")
        assert "boom x=" in download_text(client, tb["run_id"], "logs/stderr.txt", tmp_path / "b")
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------
# 9. spotsweep run examples/branin.yaml
# --------------------------------------------------------------------------------------


def test_spotsweep_run_branin_example(tmp_path):
    data = tmp_path / "data"
    p = subprocess.run(
        [str(spotsweep_bin()), "run", "examples/branin.yaml", "--data-dir", str(data)],
        cwd=str(REPO_ROOT), env=clean_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=150,
    )
    out = p.stdout
    assert p.returncode == 0, f"rc {p.returncode}\nstdout:\n{out}\nstderr:\n{p.stderr[-3000:]}"
    assert "completed" in out and "best:" in out, out
    m = re.search(r"'branin-demo' completed: (\d+) completed, (\d+) failed", out)
    assert m and m.group(1) == "20" and m.group(2) == "0", out
    m = re.search(r"best: trial (\d+) with loss = (\S+)", out)
    assert m, out
    best = float(m.group(2))
    assert math.isfinite(best) and best >= 0.397887 - 1e-6, out
    # The embedded daemon stopped its agents: nothing of this run is left behind.
    assert pids_with_cmdline(str(data)) == []


def test_cli_submit_watch_status(server_factory, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "1"], env=FAST_TTL)
    script, state = write_rest_trial(tmp_path)
    try:
        spec_file = tmp_path / "sweep.yaml"
        spec_file.write_text(
            f"name: cli-sweep\n"
            f"command: '{rest_command(script, state, 'normal', 0.05)}'\n"
            "parameters:\n"
            "  x: {type: float, low: -1, high: 1}\n"
            "objective: {metric: loss, goal: minimize}\n"
            "sampler: {type: random, seed: 5}\n"
            "max_trials: 3\n"
        )
        cli = [str(spotsweep_bin())]
        where = ["--data-dir", str(srv.data_dir)]

        def run(*args, timeout=60):
            return subprocess.run([*cli, *args, *where], env=clean_env(), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)

        p = run("submit", str(spec_file))
        assert p.returncode == 0, p.stderr
        sid = int(p.stdout.strip())
        p = run("watch", str(sid), timeout=90)
        assert p.returncode == 0, p.stderr
        assert f"sweep {sid} 'cli-sweep' completed: 3 completed" in p.stdout, p.stdout
        assert "best: trial" in p.stdout and srv.url in p.stdout, p.stdout
        p = run("status", str(sid), "--output", "json")
        assert p.returncode == 0, p.stderr
        body = json.loads(p.stdout)
        assert body["sweep"]["state"] == "completed" and body["sweep"]["seed"] == 5
        assert [t["state"] for t in body["trials"]] == ["completed"] * 3
        p = run("status")
        assert p.returncode == 0 and "cli-sweep" in p.stdout and "completed" in p.stdout, p.stdout

        # A bad spec: non-zero exit, and the daemon's message naming the field.
        bad = tmp_path / "bad.yaml"
        bad.write_text(spec_file.read_text().replace("low: -1", "low: 0, log: true"))
        p = run("submit", str(bad))
        assert p.returncode != 0
        assert "parameters.x.low must be > 0 when log is true" in p.stderr, p.stderr
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------
# 10. a notebook sweep through papermill
# --------------------------------------------------------------------------------------

NOTEBOOK_CELLS = [
    ("code", ["parameters"], "x = 0.0\nlayers = 1\n"),
    ("code", [], (
        "import os\n"
        "import mlflow\n"
        "expected_run = os.environ['MLFLOW_RUN_ID']\n"
        "with mlflow.start_run() as run:\n"
        "    assert run.info.run_id == expected_run\n"
        "    mlflow.log_metric('loss', (x - 0.25) ** 2 + layers)\n"
        "print('notebook done', x, layers)\n"
    )),
]


def _write_notebook(path: Path):
    nb = {
        "cells": [
            {"cell_type": kind, "metadata": {"tags": tags}, "source": src, "outputs": [],
             "execution_count": None, "id": f"cell{i}"}
            for i, (kind, tags, src) in enumerate(NOTEBOOK_CELLS)
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


@pytest.mark.skipif(
    not (Path(VENV_BIN) / "papermill").exists(),
    reason="papermill is not installed next to this interpreter (pip install -r tests/e2e/requirements.txt)",
)
def test_notebook_sweep_through_papermill(server_factory, connect, tmp_path):
    nb = tmp_path / "train.ipynb"
    _write_notebook(nb)
    out_dir = tmp_path / "executed"
    # The agent runs `papermill` from PATH: this interpreter's (with ipykernel and mlflow).
    env = {**FAST_TTL, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    srv = server_factory(extra_args=["--local-agents", "2"], env=env)
    try:
        spec = {
            "name": unique_name("notebook"),
            "notebook": {"input": str(nb), "output": str(out_dir / "trial-{trial}.ipynb")},
            "parameters": {
                "x": {"type": "float", "low": -1.0, "high": 1.0},
                "layers": {"type": "int", "low": 1, "high": 3},
            },
            "objective": {"metric": "loss"},
            "max_trials": 2,
            "parallelism": 2,
            "max_retries": 0,
        }
        sid = create_sweep(srv, spec)["id"]
        s = wait_sweep(srv, sid, timeout=120)
        trials = get_trials(srv, sid)
        assert s["state"] == "completed" and s["counts"]["completed"] == 2, (s, trials)
        client = connect(srv)
        digest = hashlib.sha256(nb.read_bytes()).hexdigest()
        for t in trials:
            p = t["params"]
            assert t["value"] == pytest.approx((p["x"] - 0.25) ** 2 + p["layers"])
            run = client.get_run(t["run_id"])
            assert run.data.tags["spotsweep.notebook.sha256"] == digest
            assert run.info.status == "FINISHED"
            name = f"trial-{t['number']}.ipynb"
            arts = {a.path for a in client.list_artifacts(t["run_id"], "notebooks")}
            assert f"notebooks/{name}" in arts, arts
            executed = json.loads(download_text(client, t["run_id"], f"notebooks/{name}", tmp_path / "dl" / name))
            injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
            assert injected, "papermill did not inject the parameters"
            src = "".join(injected[0]["source"])
            assert f"layers = {p['layers']}" in src and "x = " in src, src
            assert (out_dir / name).exists()
    finally:
        srv.stop()


@pytest.mark.skipif(
    not (Path(VENV_BIN) / "papermill").exists(),
    reason="papermill is not installed next to this interpreter (pip install -r tests/e2e/requirements.txt)",
)
def test_notebook_command_runs_a_grid_from_a_parameters_file(tmp_path):
    """The seed user's one-liner: `spotsweep notebook NB -o OUT -p parameters.yml -j 2`."""
    nb = tmp_path / "Test.ipynb"
    _write_notebook(nb)
    params = tmp_path / "parameters.yml"
    params.write_text("x: [0.0, 0.5]\nlayers: [1, 2]\n")
    data = tmp_path / "data"
    env = {**clean_env(), **FAST_TTL, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    p = subprocess.run(
        [str(spotsweep_bin()), "notebook", str(nb), "-o", "out/Test.{run_id}.ipynb", "-p", str(params),
         "-j", "2", "--data-dir", str(data), "--format", "json"],
        cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, f"rc {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"
    sweep = json.loads(p.stdout)
    # The grid of 2 x 2, two at a time, the best by the notebook's own `loss`.
    assert sweep["name"] == "Test" and sweep["max_trials"] == 4 and sweep["spec"]["parallelism"] == 2, sweep
    assert sweep["counts"]["completed"] == 4, sweep
    assert sweep["best"]["value"] == pytest.approx(0.0625 + 1), sweep
    executed = sorted((tmp_path / "out").glob("Test.*.ipynb"))
    assert len(executed) == 4, executed
    assert sweep["best"]["run_id"] in {e.name.split(".")[1] for e in executed}
    # Bad parameters files are refused before anything runs, with the reason.
    params.write_text("x: []\n")
    p = subprocess.run(
        [str(spotsweep_bin()), "notebook", str(nb), "-o", "o.ipynb", "-p", str(params), "--data-dir", str(data)],
        cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert p.returncode != 0 and "parameter 'x'" in p.stderr, p.stderr


# --------------------------------------------------------------------------------------
# known problems
# --------------------------------------------------------------------------------------


def test_agent_with_too_short_lease_ttl_fails_fast(server_factory, agents, tmp_path):
    srv = server_factory()
    sid = create_sweep(srv, spec_of(unique_name("shortttl"), f'"{PY}" -c "pass" {{x}}'))["id"]
    agent = agents("short", srv, "--lease-ttl-ms", "3000")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if agent.poll() is not None or get_sweep(srv, sid)["state"] != "running":
            break
        time.sleep(0.2)
    log = agent.log_path.read_text()
    exited_with_reason = agent.poll() not in (None, 0) and "ttl" in log.lower()
    ran = get_trials(srv, sid) != []
    assert exited_with_reason or ran, log


def test_structural_spec_errors_name_the_field_path(server_factory):
    srv = server_factory()
    cases = [
        (_with(objective={"metric": "loss", "goal": "up"}), "objective.goal"),
        (_with(max_trials=-1), "max_trials"),
        (_with(parameters={"opt": {"type": "categorical"}}, command="t {opt}"), "parameters.opt"),
        (_with(parameters={"lr": {"type": "float", "low": 0.1, "high": 1, "lgo": True}}), "parameters.lr"),
    ]
    problems = []
    for spec, field in cases:
        r = v1(srv, "POST", "sweeps", spec)
        assert r.status_code == 400, r.text
        if field not in r.json()["message"]:
            problems.append(f"{field}: {r.json()['message']}")
    assert not problems, "\n".join(problems)
