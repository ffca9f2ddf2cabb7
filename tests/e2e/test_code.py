"""Code snapshots end to end (spotsweep only): a spec's `workdir` packed by the CLI (the files
git would see), uploaded once under its sha256, downloaded once per machine by agents that
run each trial in its own copy of it, far from the directory it came from.

Trials are small Python scripts that exist only in a temporary git repository; they report
with nothing but the standard library (importing mlflow costs seconds per trial) and write
what they saw as JSON into a state directory named in the spec's `env`.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import git_commit_all, spotsweep_bin, workdir_spec

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

PY = sys.executable
VENV_BIN = str(Path(sys.executable).parent)
ENDED = ("completed", "cancelled")
# The CLI's index of packed directories, away from the user's own cache.
CACHE = tempfile.mkdtemp(prefix="spotsweep-code-cache-")
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def v1(srv, method, path, body=None, **kw):
    kw.setdefault("timeout", 40)
    if body is not None:
        kw["json"] = body
    return srv.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", **kw)


def get_sweep(srv, sid) -> dict:
    r = v1(srv, "GET", f"sweeps/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def get_trials(srv, sid) -> list[dict]:
    r = v1(srv, "GET", f"sweeps/{sid}/trials")
    assert r.status_code == 200, r.text
    return r.json()["trials"]


def wait_for(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_sweep(srv, sid, timeout=90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = get_sweep(srv, sid)
        if s["state"] in ENDED:
            return s
        if time.monotonic() > deadline:
            trials = get_trials(srv, sid)
            raise AssertionError(
                f"sweep {sid} still {s['state']} after {timeout}s: counts {s['counts']}\n"
                + "\n".join(json.dumps(t) for t in trials)
            )
        time.sleep(0.1)


def unique_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["NO_COLOR"] = "1"
    env["SPOTSWEEP_CACHE_DIR"] = CACHE
    env.update(extra)
    return env


def cli(*args, cwd, timeout=120, env=None):
    return subprocess.run(
        [str(spotsweep_bin()), *map(str, args)], cwd=str(cwd), env=env or clean_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def submit(srv, spec_path, cwd, *extra):
    p = cli("submit", spec_path, "--server", srv.url, "--token", srv.token, *extra, cwd=cwd)
    return p


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A snapshot made by hand (as any REST client could)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def code_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def count(lines: str, needle: str) -> int:
    return sum(1 for line in lines.splitlines() if needle in line)


@pytest.fixture
def agents(tmp_path):
    """start(name, srv, *extra_args) -> Popen of a `spotsweep agent` that lives in a directory
    of its own with a HOME of its own (another machine, as far as the code is concerned);
    `.home` and `.log_path` say where. Every agent still running at the end is stopped."""
    started: list[subprocess.Popen] = []

    def start(name, srv, *extra):
        home = tmp_path / f"machine-{name}"
        home.mkdir()
        log_path = tmp_path / f"{name}.log"
        cmd = [str(spotsweep_bin()), "agent", "--server", srv.url, "--name", name,
               "--work-dir", str(home / "work"), *extra]
        env = clean_env(SPOTSWEEP_LOG="info", HOME=str(home), SPOTSWEEP_TOKEN=srv.token)
        p = subprocess.Popen(
            cmd, cwd=str(home), stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        p.home, p.log_path = home, log_path
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


# A training script that exists only in the repository. argv: X. It imports a module of the
# repository, writes an output file into its working directory, appends to a tracked file,
# holds for HOLD seconds (so that trials overlap), then records what it saw and logs the loss.
TRAIN = r'''
import json, os, sys, time, urllib.request
from lib.helper import loss

def log_metric(key, value, step=0):
    headers = {"Content-Type": "application/json",
               "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}
    body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": key, "value": value,
            "timestamp": int(time.time() * 1000), "step": step}
    req = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
        json.dumps(body).encode(), headers, method="POST")
    urllib.request.urlopen(req, timeout=30).read()

x = float(sys.argv[1])
n = os.environ["SPOTSWEEP_TRIAL_NUMBER"]
code = os.environ["SPOTSWEEP_CODE_DIR"]
started = time.time()
os.makedirs("outputs", exist_ok=True)
with open(os.path.join("outputs", "trial-%s.txt" % n), "w") as f:
    f.write(n)
with open("notes.txt", "a") as f:
    f.write("trial %s\n" % n)
time.sleep(float(os.environ.get("HOLD", "0")))
files = sorted(os.path.relpath(os.path.join(d, f), code) for d, _, fs in os.walk(code) for f in fs)
info = {
    "cwd": os.getcwd(), "code_dir": code, "home": os.environ.get("HOME"), "files": files,
    "notes": open("notes.txt").read(), "outputs": sorted(os.listdir("outputs")),
    "started": started, "ended": time.time(),
}
state = os.path.join(os.environ["STATE_DIR"], "sweep%s-trial%s.json" % (os.environ["SPOTSWEEP_SWEEP_ID"], n))
with open(state, "w") as f:
    json.dump(info, f)
log_metric("loss", loss(x))
'''


def make_repo(root: Path, state: Path, name: str, max_trials: int, parallelism: int, hold: float) -> Path:
    """A git repository with the training script, a module, a tracked notes file, ignored data and
    a spec with `workdir: .`; committed. Returns the spec's path."""
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "lib").mkdir()
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "helper.py").write_text("def loss(x):\n    return (x - 0.25) ** 2\n")
    (root / "notes.txt").write_text("tracked\n")
    (root / ".gitignore").write_text("data/\nsecret.txt\n__pycache__/\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(os.urandom(4096))
    (root / "secret.txt").write_text("not for the agents\n")
    (root / ".spotsweepignore").write_text("scratch/\n")
    (root / "scratch").mkdir()
    (root / "scratch" / "notes.md").write_text("local only\n")
    spec = root / "sweep.yaml"
    spec.write_text(workdir_spec(name, max_trials, parallelism, env=f"{{STATE_DIR: '{state}', HOLD: '{hold}'}}"))
    git_commit_all(root)
    return spec


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


def test_a_sweep_from_a_git_repo_runs_in_per_trial_copies_on_agents_elsewhere(server_factory, agents, tmp_path):
    srv = server_factory()
    state = tmp_path / "state"
    state.mkdir()
    spec = make_repo(tmp_path / "repo", state, unique_name("code"), max_trials=6, parallelism=4, hold=1.5)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Submitted from another directory: workdir is relative to the spec file.
    p = submit(srv, spec, elsewhere)
    assert p.returncode == 0, p.stderr
    sid = int(p.stdout.strip())
    m = re.search(r"code: (sha256:[0-9a-f]{64}) uploaded", p.stderr)
    assert m, p.stderr
    code = m.group(1)
    stored = get_sweep(srv, sid)["spec"]
    assert stored["code"] == code and "workdir" not in stored, stored

    # One agent with two slots first, so that two trials surely share it; then another.
    a1 = agents("a1", srv, "--slots", "2")
    wait_for(lambda: get_sweep(srv, sid)["counts"]["running"] == 2, 30, "two trials running on a1")
    a2 = agents("a2", srv, "--slots", "2")
    s = wait_sweep(srv, sid)
    trials = get_trials(srv, sid)
    assert s["state"] == "completed" and s["counts"]["completed"] == 6, (s, trials)

    by_agent: dict[str, list[dict]] = {}
    for t in trials:
        assert t["state"] == "completed" and t["value"] == pytest.approx((t["params"]["x"] - 0.25) ** 2), t
        info = json.loads((state / f"sweep{sid}-trial{t['number']}.json").read_text())
        agent = t["agent_id"].rsplit("-", 1)[0]
        home = {"a1": a1.home, "a2": a2.home}[agent]
        by_agent.setdefault(agent, []).append(info)
        # Its own copy, on its machine, as its working directory.
        assert info["cwd"] == info["code_dir"], info
        assert Path(info["code_dir"]).is_relative_to(home / "work"), info
        assert info["home"] == str(home)
        # What git sees went; ignored files did not.
        for f in ["train.py", "lib/helper.py", "notes.txt", ".gitignore", "sweep.yaml"]:
            assert f in info["files"], info["files"]
        for f in ["secret.txt", "data/big.bin", "scratch/notes.md"]:
            assert f not in info["files"], info["files"]
        assert not any(f.startswith(".git/") for f in info["files"]), info["files"]
        # Trials do not see each other's outputs, nor their changes to tracked files.
        assert info["outputs"] == [f"trial-{t['number']}.txt"], info
        assert info["notes"] == f"tracked\ntrial {t['number']}\n", info
        run = srv.get(f"runs/get?run_id={t['run_id']}").json()["run"]
        tags = {x["key"]: x["value"] for x in run["data"].get("tags", [])}
        assert tags["spotsweep.code"] == code, tags
    # Two trials overlapped on a1.
    on_a1 = sorted(by_agent["a1"], key=lambda i: i["started"])
    assert any(b["started"] < a["ended"] for a, b in zip(on_a1, on_a1[1:])), on_a1
    # Each machine downloaded the snapshot once for all its trials, and removed the trials' copies.
    for a in (a1, a2):
        log = a.log_path.read_text()
        ran = a is a1 or "a2" in by_agent
        assert count(log, "code snapshot downloaded") == (1 if ran else 0), log[-3000:]
        assert list((a.home / "work").glob("sweep*/code")) == []

    # The same code again: not even packed, nothing is uploaded, the daemon stored it once, the
    # machines reuse their copies.
    p = submit(srv, spec, elsewhere)
    assert p.returncode == 0, p.stderr
    assert "unchanged since it was last packed" in p.stderr, p.stderr
    assert f"code: {code} is already on the daemon: nothing uploaded" in p.stderr, p.stderr
    sid2 = int(p.stdout.strip())
    assert get_sweep(srv, sid2)["spec"]["code"] == code
    assert wait_sweep(srv, sid2)["counts"]["completed"] == 6
    assert count(srv.logs(2000), "code snapshot stored") == 1, srv.logs(200)
    for a in (a1, a2):
        assert count(a.log_path.read_text(), "code snapshot downloaded") <= 1
    r = v1(srv, "HEAD", f"code/{code}")
    assert r.status_code == 200 and int(r.headers["content-length"]) > 0
    # Another daemon does not have it: packed again (to the same bytes) and uploaded.
    other = server_factory()
    p = submit(other, spec, elsewhere)
    assert p.returncode == 0, p.stderr
    assert f"code: {code} uploaded" in p.stderr, p.stderr
    v1(other, "POST", f"sweeps/{int(p.stdout.strip())}/cancel", {})

    # A change to the code is a new snapshot.
    (spec.parent / "train.py").write_text(TRAIN + "# changed\n")
    p = submit(srv, spec, elsewhere)
    assert p.returncode == 0, p.stderr
    m = re.search(r"code: (sha256:[0-9a-f]{64}) uploaded", p.stderr)
    assert m and m.group(1) != code, p.stderr
    v1(srv, "POST", f"sweeps/{int(p.stdout.strip())}/cancel", {})


def test_a_workdir_over_the_limit_is_refused_naming_its_largest_files(server_factory, tmp_path):
    srv = server_factory()
    state = tmp_path / "state"
    state.mkdir()
    spec = make_repo(tmp_path / "repo", state, unique_name("big"), max_trials=1, parallelism=1, hold=0)
    (spec.parent / "weights.pt").write_bytes(b"\0" * (3 << 20))
    (spec.parent / "models").mkdir()
    (spec.parent / "models" / "dataset.npy").write_bytes(b"\0" * (2 << 20))
    before = len(v1(srv, "GET", "sweeps").json()["sweeps"])
    p = submit(srv, spec, tmp_path, "--code-limit-mb", "1")
    assert p.returncode != 0
    err = p.stderr
    assert "over the 1.0 MiB limit" in err, err
    assert err.index("weights.pt") < err.index("models/dataset.npy"), err
    assert "3.0 MiB" in err and "bucket" in err and ".spotsweepignore" in err, err
    # Under the default limit it goes; the environment may set the limit too.
    p = submit(srv, spec, tmp_path)
    assert p.returncode == 0, p.stderr
    v1(srv, "POST", f"sweeps/{int(p.stdout.strip())}/cancel", {})
    p = cli("submit", spec, "--server", srv.url, "--token", srv.token, cwd=tmp_path,
            env=clean_env(SPOTSWEEP_CODE_LIMIT_MB="2"))
    assert p.returncode != 0 and "over the 2.0 MiB limit" in p.stderr, p.stderr
    assert len(v1(srv, "GET", "sweeps").json()["sweeps"]) == before + 1
    assert count(srv.logs(2000), "code snapshot stored") == 1


def test_uploads_are_checked_against_their_hash_and_sweeps_against_the_store(server_factory):
    srv = server_factory()
    good = tar_gz({"train.py": b"print('hello')\n"})
    gid = code_id(good)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    # Bytes that do not hash to the name: 400, and nothing kept.
    r = v1(srv, "PUT", f"code/{gid}", data=tampered, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
    assert "hash to sha256:" in r.json()["message"] and gid in r.json()["message"], r.text
    assert v1(srv, "HEAD", f"code/{gid}").status_code == 404
    assert list((srv.data_dir / "code").iterdir()) == []
    # A sweep naming a snapshot the daemon does not have: 400 saying so.
    spec = {
        "name": unique_name("rest-code"), "command": "python train.py {x}", "code": gid,
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss"}, "max_trials": 1,
    }
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 400 and "no snapshot" in r.json()["message"] and gid in r.json()["message"], r.text
    # Not an id at all; a workdir sent over REST.
    assert v1(srv, "POST", "sweeps", {**spec, "code": "sha256:abc"}).status_code == 400
    r = v1(srv, "POST", "sweeps", {**{k: v for k, v in spec.items() if k != "code"}, "workdir": "."})
    assert r.status_code == 400 and "PUT /api/v1/code" in r.json()["message"], r.text
    assert v1(srv, "PUT", "code/md5:1234", data=b"x").status_code == 400
    # The right bytes: stored (201), private; again: 200 without writing; then the sweep is taken.
    r = v1(srv, "PUT", f"code/{gid}", data=good)
    assert r.status_code == 201, r.text
    assert r.json() == {"code": gid, "size_bytes": len(good), "created": True}
    stored = srv.data_dir / "code" / f"{gid.split(':')[1]}.tar.gz"
    assert stored.read_bytes() == good
    assert stored.stat().st_mode & 0o777 == 0o600
    r = v1(srv, "PUT", f"code/{gid}", data=good)
    assert r.status_code == 200 and r.json()["created"] is False, r.text
    r = v1(srv, "HEAD", f"code/{gid}")
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(good)
    # Sent as stored, not compressed again for a client that takes gzip.
    r = v1(srv, "GET", f"code/{gid}", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.content == good
    assert "content-encoding" not in r.headers and int(r.headers["content-length"]) == len(good), r.headers
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["code"] == gid
    v1(srv, "POST", f"sweeps/{r.json()['id']}/cancel", {})
    # Without a token: nothing.
    assert requests.get(f"{srv.url}/api/v1/code/{gid}", timeout=10).status_code == 401


def test_a_missing_or_corrupt_snapshot_fails_the_trial_with_a_clear_reason(server_factory, agents, tmp_path):
    srv = server_factory()

    def sweep_with(files):
        data = tar_gz(files)
        cid = code_id(data)
        assert v1(srv, "PUT", f"code/{cid}", data=data).status_code == 201
        spec = {
            "name": unique_name("broken"), "command": f'"{PY}" train.py', "code": cid,
            "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
            "objective": {"metric": "loss"}, "max_trials": 1, "max_retries": 0,
        }
        r = v1(srv, "POST", "sweeps", spec)
        assert r.status_code == 201, r.text
        return r.json()["id"], srv.data_dir / "code" / f"{cid.split(':')[1]}.tar.gz"

    corrupt, path = sweep_with({"train.py": b"print(1)\n"})
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    missing, path = sweep_with({"train.py": b"print(2)\n"})
    path.unlink()
    agent = agents("a1", srv, "--slots", "2")
    for sid, words in ((corrupt, "is corrupt"), (missing, "is missing on the daemon")):
        s = wait_sweep(srv, sid, timeout=60)
        (t,) = get_trials(srv, sid)
        assert s["counts"]["failed"] == 1 and t["state"] == "failed", t
        assert words in t["reason"] and "sha256:" in t["reason"], t["reason"]
    # The agent goes on taking work.
    assert agent.poll() is None


@pytest.mark.skipif(
    not (Path(VENV_BIN) / "papermill").exists(),
    reason="papermill is not installed next to this interpreter (pip install -r tests/e2e/requirements.txt)",
)
def test_run_and_notebook_pack_their_workdir_and_local_agents_share_one_cache(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    spec = make_repo(tmp_path / "repo", state, unique_name("run"), max_trials=3, parallelism=2, hold=0)
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = cli("run", spec, "--data-dir", data, "--output", "json", cwd=elsewhere, timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = json.loads(p.stdout)
    assert sweep["counts"]["completed"] == 3 and sweep["spec"]["code"].startswith("sha256:"), sweep
    # The local agents share one cache: one unpacked snapshot for the machine.
    cached = [d for d in (data / "agents" / "code").iterdir() if d.is_dir()]
    assert [d.name for d in cached] == [sweep["spec"]["code"].split(":")[1]]

    # A notebook that imports a module of its directory, packed with --workdir.
    repo = spec.parent
    (repo / "nb").mkdir()
    (repo / "nb" / "model.py").write_text("def loss(x):\n    return (x - 0.5) ** 2\n")
    cells = [
        ("code", ["parameters"], "x = 0.0\n"),
        ("code", [], "import os, mlflow\nfrom model import loss\n"
                     "assert os.getcwd() == os.environ['SPOTSWEEP_CODE_DIR']\n"
                     "with mlflow.start_run():\n    mlflow.log_metric('loss', loss(x))\n"),
    ]
    nb = {
        "cells": [{"cell_type": k, "metadata": {"tags": t}, "source": s, "outputs": [],
                   "execution_count": None, "id": f"c{i}"} for i, (k, t, s) in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (repo / "nb" / "Train.ipynb").write_text(json.dumps(nb))
    params = tmp_path / "parameters.yml"
    params.write_text("x: [0.0, 0.5]\n")
    env = clean_env(PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    p = cli("notebook", repo / "nb" / "Train.ipynb", "-o", "out/{trial}.ipynb", "-p", params, "-j", "2",
            "--workdir", repo / "nb", "--data-dir", tmp_path / "nbdata", "--format", "json",
            cwd=elsewhere, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = json.loads(p.stdout)
    assert sweep["counts"]["completed"] == 2 and sweep["best"]["value"] == 0.0, sweep
    assert sweep["spec"]["notebook"]["input"] == "Train.ipynb", sweep["spec"]
    assert sorted(x.name for x in (elsewhere / "out").iterdir()) == ["0.ipynb", "1.ipynb"]
    # Each trial's run says which notebook (its sha256, as packed) and which commit it ran: read
    # from the daemon's database file, the embedded daemon being gone.
    import hashlib as _hashlib
    import sqlite3

    db = sqlite3.connect(tmp_path / "nbdata" / "spotsweep.db")
    try:
        rows = db.execute(
            "SELECT t.number, g.key, g.value FROM trials t JOIN tags g ON g.run_id = t.run_id "
            "WHERE g.key IN ('spotsweep.notebook.sha256', 'mlflow.source.type', 'mlflow.source.name', "
            "'mlflow.source.git.commit', 'spotsweep.code')").fetchall()
    finally:
        db.close()
    by_trial: dict[int, dict] = {}
    for n, key, value in rows:
        by_trial.setdefault(n, {})[key] = value
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    want = {
        "spotsweep.notebook.sha256": _hashlib.sha256((repo / "nb" / "Train.ipynb").read_bytes()).hexdigest(),
        "mlflow.source.type": "NOTEBOOK",
        "mlflow.source.name": "nb/Train.ipynb",
        "mlflow.source.git.commit": commit,
        "spotsweep.code": sweep["spec"]["code"],
    }
    assert by_trial == {0: want, 1: want}, by_trial
    # Outside its workdir, a notebook is refused before anything runs.
    p = cli("notebook", repo / "nb" / "Train.ipynb", "-o", "o.ipynb", "-p", params,
            "--workdir", repo / "lib", "--data-dir", tmp_path / "nbdata2", cwd=elsewhere, timeout=60, env=env)
    assert p.returncode != 0 and "is not inside workdir" in p.stderr, p.stderr
