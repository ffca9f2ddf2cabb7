"""Least privilege for every token (spotsweep only).

- No API token can revoke the admin token; a lost one is replaced offline with
  `spotsweep token reset-admin`; API tokens may expire.
- Each trial gets a token of its own, good for its run, its experiment (reads) and its lease,
  never the admin token; local agents hold an agent's token, not the admin token.
- One daemon per data dir; the database files are private.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import POSTGRES, database_url_for, spotsweep_bin

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

PY = sys.executable


def v1(srv, method, path, body=None, token="__default__", **kw):
    kw.setdefault("timeout", 30)
    if body is not None:
        kw["json"] = body
    headers = srv.headers(token)
    return requests.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", headers=headers, **kw)


def admin_id(srv) -> str:
    tokens = v1(srv, "GET", "tokens").json()["tokens"]
    admins = [t for t in tokens if t["role"] == "admin"]
    assert len(admins) == 1, tokens
    return admins[0]["id"]


def test_no_token_can_revoke_the_admin_token(server_factory):
    srv = server_factory()
    user = v1(srv, "POST", "tokens", {"name": "someone"}).json()
    assert user["role"] == "user"
    aid = admin_id(srv)
    for who in (user["token"], srv.token):
        r = v1(srv, "DELETE", f"tokens/{aid}", token=who)
        assert r.status_code == 403, r.text
        assert "reset-admin" in r.json()["message"]
    # Users may revoke users, the admin may too; the admin token still works after a restart.
    other = v1(srv, "POST", "tokens", {"name": "other"}).json()
    assert v1(srv, "DELETE", f"tokens/{other['id']}", token=user["token"]).status_code == 204
    assert v1(srv, "DELETE", f"tokens/{user['id']}").status_code == 204
    srv.restart()
    assert v1(srv, "GET", "tokens").status_code == 200
    assert srv.get("experiments/search", params={"max_results": 1}).status_code == 200


def test_tokens_may_expire(server_factory):
    srv = server_factory()
    r = v1(srv, "POST", "tokens", {"name": "short", "expires_in": 1})
    assert r.status_code == 201, r.text
    short = r.json()
    assert abs(short["expires_at"] - (short["created_at"] + 1000)) < 50
    assert v1(srv, "GET", "tokens", token=short["token"]).status_code == 200
    time.sleep(1.3)
    r = v1(srv, "GET", "tokens", token=short["token"])
    assert r.status_code == 401, r.text
    assert "expired" in r.json()["message"]
    assert short["id"] not in {t["id"] for t in v1(srv, "GET", "tokens").json()["tokens"]}
    for bad in (0, -5, 10**12, "soon"):
        r = v1(srv, "POST", "tokens", {"name": "bad", "expires_in": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "expires_in" in r.json()["message"]


def test_a_token_that_expires_makes_none_that_outlives_it(server_factory):
    srv = server_factory()
    short = v1(srv, "POST", "tokens", {"name": "short", "expires_in": 60}).json()
    for body in ({"name": "forever"}, {"name": "longer", "expires_in": 3600}):
        made = v1(srv, "POST", "tokens", body, token=short["token"]).json()
        assert made["expires_at"] == short["expires_at"], made
    shorter = v1(srv, "POST", "tokens", {"name": "shorter", "expires_in": 10}, token=short["token"]).json()
    assert shorter["expires_at"] < short["expires_at"]


def test_without_tokens_another_site_cannot_post(server_factory):
    srv = server_factory(auth=False)
    body = {"name": f"csrf-{uuid.uuid4().hex[:6]}"}
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = requests.post(srv.api("experiments/create"), json=body, headers=headers, timeout=10)
        assert r.status_code == 403, (headers, r.text)
    # The CLI and the MLflow client send no Origin; a page of the daemon itself sends its own.
    assert requests.post(srv.api("experiments/create"), json=body, timeout=10).status_code == 200
    body["name"] += "-2"
    same = {"Origin": srv.url}
    assert requests.post(srv.api("experiments/create"), json=body, headers=same, timeout=10).status_code == 200


def test_token_creation_takes_json_without_a_content_type(server_factory):
    srv = server_factory()
    r = requests.post(
        f"{srv.url}/api/v1/tokens",
        data='{"name": "curl"}',
        headers={**srv.headers(), "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert r.status_code == 201, r.text


@pytest.mark.sqlite_only("the data dir's lock and its SQLite file; on PostgreSQL see the test below")
def test_reset_admin_replaces_a_lost_admin_token_offline(server_factory):
    srv = server_factory()
    old = srv.token
    user = v1(srv, "POST", "tokens", {"name": "keeps-working"}).json()
    # While the daemon runs, the data dir is locked.
    running = subprocess.run(
        [str(spotsweep_bin()), "token", "reset-admin", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert running.returncode != 0
    assert "another spotsweep daemon" in running.stderr, running.stderr
    srv.stop()
    (srv.data_dir / "admin.token").unlink()  # lost
    done = subprocess.run(
        [str(spotsweep_bin()), "token", "reset-admin", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    token_file = srv.data_dir / "admin.token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    srv.start()  # reads the new admin.token
    assert srv.token != old
    assert v1(srv, "GET", "tokens").status_code == 200
    assert v1(srv, "GET", "tokens", token=old).status_code == 401
    assert v1(srv, "GET", "tokens", token=user["token"]).status_code == 200
    assert admin_id(srv)


@pytest.mark.skipif(not POSTGRES, reason="needs a PostgreSQL server (SPOTSWEEP_E2E_POSTGRES)")
def test_reset_admin_on_postgres_replaces_the_admin_token_while_the_daemon_runs(server_factory, tmp_path):
    """On a shared database the daemons may keep running: the new admin token works at once, the
    old one stops within a moment (the daemons hear of it), other tokens keep working."""
    srv = server_factory()
    old = srv.token
    user = v1(srv, "POST", "tokens", {"name": "keeps-working"}).json()
    elsewhere = tmp_path / "admin-machine"
    done = subprocess.run(
        [str(spotsweep_bin()), "token", "reset-admin", "--data-dir", str(elsewhere)],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")},
             "SPOTSWEEP_DATABASE_URL": database_url_for(srv.data_dir)},
    )
    assert done.returncode == 0, done.stderr
    new = (elsewhere / "admin.token").read_text().strip()
    assert stat.S_IMODE(os.stat(elsewhere / "admin.token").st_mode) == 0o600
    assert v1(srv, "GET", "tokens", token=new).status_code == 200
    deadline = time.monotonic() + 5
    while v1(srv, "GET", "tokens", token=old).status_code != 401:
        assert time.monotonic() < deadline, "the old admin token still works"
        time.sleep(0.05)
    assert v1(srv, "GET", "tokens", token=user["token"]).status_code == 200


def test_one_daemon_per_data_dir_and_private_database_files(server_factory):
    srv = server_factory()
    second = subprocess.run(
        [str(spotsweep_bin()), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")},
    )
    assert second.returncode != 0
    assert "another spotsweep daemon" in (second.stdout + second.stderr)
    srv.post("experiments/create", json={"name": "private"})
    for name in ("spotsweep.db", "spotsweep.db-wal", "admin.token"):
        path = srv.data_dir / name
        if path.exists():
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, (name, oct(os.stat(path).st_mode))


# A trial that records its environment and probes what its token reaches, then logs the loss.
PROBE_TRIAL = r'''
import json, os, sys, urllib.request, urllib.error

uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
run = os.environ["MLFLOW_RUN_ID"]
exp = os.environ["MLFLOW_EXPERIMENT_ID"]
other_run, other_exp = sys.argv[2], sys.argv[3]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(uri + path, data, {"Authorization": "Bearer " + token,
                                                    "Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

metric = lambda r: {"run_id": r, "key": "probe", "value": 1.0, "timestamp": 1, "step": 0}
seen = {
    "token": token,
    "agent_token_in_env": os.environ.get("SPOTSWEEP_TOKEN"),
    "own_run_write": call("POST", "/api/2.0/mlflow/runs/log-metric", metric(run)),
    "own_run_read": call("GET", "/api/2.0/mlflow/runs/get?run_id=" + run),
    "own_experiment_read": call("GET", "/api/2.0/mlflow/experiments/get?experiment_id=" + exp),
    "own_artifact_upload": call("PUT", "/api/2.0/mlflow-artifacts/artifacts/%s/%s/artifacts/probe.txt" % (exp, run), {}),
    "other_run_write": call("POST", "/api/2.0/mlflow/runs/log-metric", metric(other_run)),
    "other_run_read": call("GET", "/api/2.0/mlflow/runs/get?run_id=" + other_run),
    "other_experiment_read": call("GET", "/api/2.0/mlflow/experiments/get?experiment_id=" + other_exp),
    "create_experiment": call("POST", "/api/2.0/mlflow/experiments/create", {"name": "x"}),
    "list_tokens": call("GET", "/api/v1/tokens"),
    "create_token": call("POST", "/api/v1/tokens", {"name": "escalate"}),
    "list_sweeps": call("GET", "/api/v1/sweeps"),
    "complete_own_lease": call("POST", "/api/v1/leases/%s/complete" % os.environ["SPOTSWEEP_LEASE_ID"],
                               {"outcome": "preempted"}),
}
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
status = call("POST", "/api/2.0/mlflow/runs/log-metric",
              {"run_id": run, "key": "loss", "value": 0.5, "timestamp": 1, "step": 0})
assert status == 200, status
'''


def test_each_trial_gets_a_token_for_its_own_run_only(server_factory, tmp_path):
    srv = server_factory(extra_args=["--local-agents", "1"])
    other_exp = srv.post("experiments/create", json={"name": f"other-{uuid.uuid4().hex[:6]}"}).json()["experiment_id"]
    other_run = srv.post("runs/create", json={"experiment_id": other_exp, "start_time": 1}).json()["run"]["info"]["run_id"]
    script = tmp_path / "probe.py"
    script.write_text(PROBE_TRIAL)
    out = tmp_path / "seen.json"
    spec = {
        "name": f"probe-{uuid.uuid4().hex[:6]}",
        "command": f'"{PY}" "{script}" "{out}" {other_run} {other_exp} # {{x}}',
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss"},
        "max_trials": 1,
    }
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    deadline = time.monotonic() + 90
    while v1(srv, "GET", f"sweeps/{sid}").json()["state"] != "completed":
        assert time.monotonic() < deadline, v1(srv, "GET", f"sweeps/{sid}/trials").text + srv.logs(100)
        time.sleep(0.2)
    seen = json.loads(out.read_text())
    trial_token = seen.pop("token")
    assert trial_token and trial_token != srv.token
    assert trial_token.startswith("sstr_")
    assert seen.pop("agent_token_in_env") is None
    assert seen == {
        "own_run_write": 200,
        "own_run_read": 200,
        "own_experiment_read": 200,
        "own_artifact_upload": 200,
        "other_run_write": 403,
        "other_run_read": 403,
        "other_experiment_read": 403,
        "create_experiment": 403,
        "list_tokens": 403,
        "create_token": 403,
        "list_sweeps": 403,
        "complete_own_lease": 403,
    }, seen
    # The lease has ended: so has the token.
    r = requests.get(srv.api("runs/get"), params={"run_id": other_run},
                     headers={"Authorization": f"Bearer {trial_token}"}, timeout=10)
    assert r.status_code == 401, r.text
    # The local agent's own token (which a trial could read from /proc) is no API token either.
    agent_tokens = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"agent" in cmdline and srv.url.encode() in cmdline:
                env = dict(
                    line.split(b"=", 1) for line in (proc / "environ").read_bytes().split(b"\0") if b"=" in line
                )
                agent_tokens.append(env.get(b"SPOTSWEEP_TOKEN", b"").decode())
        except (OSError, ValueError):
            continue
    assert agent_tokens and all(t and t != srv.token for t in agent_tokens), agent_tokens
    for t in agent_tokens:
        assert v1(srv, "GET", "tokens", token=t).status_code == 403
