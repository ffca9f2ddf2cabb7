"""Hardening (spotsweep only): no request, fault or full disk leaves the daemon broken.

- Specs whose ranges overflow a sampler are refused, and every route keeps working after them.
- A full disk answers 507 (spotsweep's API) or 503 (MLflow's, which the client retries) naming
  the cause, is logged once, and writes resume by themselves once space is freed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

FULL_LOG = "the disk holding the database is full"


def v1(srv, method, path, body=None, **kw):
    kw.setdefault("timeout", 30)
    if body is not None:
        kw["json"] = body
    return srv.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", **kw)


def spec(parameters, **over):
    s = {
        "name": f"edge-{uuid.uuid4().hex[:8]}",
        "command": "true {args}",
        "parameters": parameters,
        "objective": {"metric": "loss"},
        "max_trials": 4,
    }
    s.update(over)
    return s


OVERFLOWING = [
    ({"x": {"type": "float", "low": -1e308, "high": 1e308}}, "parameters.x.high", {}),
    ({"x": {"type": "int", "low": -(2**63), "high": 2**63 - 1}}, "parameters.x.low", {}),
    ({"x": {"type": "int", "low": -(2**63), "high": 2**63 - 1}}, "parameters.x.low", {"sampler": {"type": "grid"}}),
    ({"x": {"type": "float", "low": -1e308, "high": 1e308, "step": 1e-300}}, "parameters.x", {"sampler": {"type": "grid"}}),
    ({"x": {"type": "float", "low": 0, "high": 1e300, "step": 1e-300}}, "parameters.x.step", {}),
    ({"x": {"type": "int", "low": 0, "high": 10, "step": 2**63 - 1}}, "parameters.x.step", {"sampler": {"type": "tpe"}}),
]


def every_write_works(srv, tag):
    """Experiments, runs, metrics, tokens, sweeps and leases all answer as usual."""
    r = srv.post("experiments/create", json={"name": f"after-{tag}-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200, r.text
    exp = r.json()["experiment_id"]
    r = srv.post("runs/create", json={"experiment_id": exp, "start_time": 1})
    assert r.status_code == 200, r.text
    run = r.json()["run"]["info"]["run_id"]
    r = srv.post("runs/log-metric", json={"run_id": run, "key": "m", "value": 1.0, "timestamp": 1, "step": 0})
    assert r.status_code == 200, r.text
    r = v1(srv, "POST", "tokens", {"name": f"after-{tag}"})
    assert r.status_code == 201, r.text
    # In a pool of its own, so that local agents leave its trials to this lease.
    good = v1(srv, "POST", "sweeps", spec({"x": {"type": "float", "low": 0, "high": 1}}, pool="by-hand"))
    assert good.status_code == 201, good.text
    r = v1(srv, "POST", "leases", {"agent_id": f"a-{tag}", "slots": 1, "sweep_id": good.json()["id"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["leases"]) == 1
    assert srv.get("/health").status_code == 200


def test_overflowing_specs_are_refused_and_every_route_still_works(server_factory):
    srv = server_factory(extra_args=["--local-agents", "1"])
    for parameters, field, over in OVERFLOWING:
        r = v1(srv, "POST", "sweeps", spec(parameters, **over))
        assert r.status_code == 400, (parameters, r.text)
        assert field in r.json()["message"], (field, r.json())
    # A generic lease (what local agents send) and every other write still work; nothing in
    # the log says a request panicked.
    every_write_works(srv, "specs")
    time.sleep(1.0)
    assert "panicked" not in srv.logs(2000), srv.logs(200)


# --------------------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str):
    """A tmpfs of `size` mounted on a fresh folder (needs root, as in CI)."""
    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path, leave_bytes: int, name: str = "filler"):
    """Writes a filler file so that about `leave_bytes` stay free on path's filesystem."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / name
    with open(filler, "wb") as f:
        remaining = max(free - leave_bytes, 0)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = min(remaining, len(chunk))
            with contextlib.suppress(OSError):
                f.write(chunk[:n])
            remaining -= n
    return filler


@pytest.mark.sqlite_only("fills the disk under the data dir, where the SQLite file is; a PostgreSQL server's disk is its own")
def test_a_full_disk_is_refused_cleanly_and_writes_resume_once_space_is_freed(server_factory, tmp_path):
    with small_tmpfs(tmp_path, "24m") as disk:
        srv = server_factory(data_dir=disk / "data")
        r = srv.post("experiments/create", json={"name": "disk"})
        assert r.status_code == 200, r.text
        exp = r.json()["experiment_id"]
        run = srv.post("runs/create", json={"experiment_id": exp, "start_time": 1}).json()["run"]["info"]["run_id"]
        filler = fill(disk, leave_bytes=256 << 10)

        # Write until the disk refuses: big batches of metrics and params.
        statuses = []
        refused = None
        for i in range(400):
            batch = {
                "run_id": run,
                "metrics": [
                    {"key": f"k{i}_{j}", "value": float(j), "timestamp": 1, "step": j} for j in range(200)
                ],
                "tags": [{"key": f"t{i}", "value": "x" * 4000}],
            }
            r = srv.post("runs/log-batch", json=batch)
            statuses.append(r.status_code)
            if r.status_code != 200:
                refused = r
                break
        assert refused is not None, f"the disk never filled: {statuses[-5:]}"
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "full" in refused.json()["message"], refused.text

        # A small write may still fit in a page or a WAL frame that has room: fill the last
        # bytes too, then spotsweep's own API says 507 with the cause.
        rest = fill(disk, leave_bytes=0, name="filler-2")
        for i in range(300):
            r = v1(srv, "POST", "tokens", {"name": f"on-a-full-disk-{i}"})
            if r.status_code != 201:
                break
        assert r.status_code == 507, r.text
        assert r.json()["code"] == "disk_full" and "free some space" in r.json()["message"]
        for _ in range(20):
            assert srv.post("runs/set-tag", json={"run_id": run, "key": "big", "value": "y" * 6000}).status_code != 200
        assert srv.get("/health").status_code == 200
        # Reads still work, a search ordered by a metric too (its order cannot be brought up to
        # date on a full disk: the latest values answer it).
        assert srv.get("runs/get", params={"run_id": run}).status_code == 200
        r = srv.post("runs/search", json={"experiment_ids": [exp], "order_by": ["metrics.k0_5 DESC"]})
        assert r.status_code == 200, r.text
        assert [x["info"]["run_id"] for x in r.json()["runs"]] == [run]

        # Free the space: writes succeed again, without a restart.
        filler.unlink()
        rest.unlink()
        deadline = time.monotonic() + 10
        while True:
            r = v1(srv, "POST", "tokens", {"name": "after-the-disk-was-freed"})
            if r.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 201, r.text
        every_write_works(srv, "disk")
        time.sleep(2.2)  # the disk counts as back when writes succeed 2 s after the last refusal
        r = srv.post("runs/log-batch", json={"run_id": run, "metrics": [{"key": "after", "value": 2.0, "timestamp": 1, "step": 0}]})
        assert r.status_code == 200, r.text
        assert srv.get("runs/get", params={"run_id": run}).json()["run"]["data"]["metrics"]

        # The log says it once when it started (not once a request), and once when it ended
        # (a few small writes that still fitted in between do not make it say it again).
        logs = srv.logs(5000)
        assert logs.count(FULL_LOG) == 1, logs
        assert logs.count("disk space is back") == 1, logs
        srv.stop()


def test_searches_take_hundreds_of_clauses_and_order_keys(server_factory):
    srv = server_factory()
    exp = srv.post("experiments/create", json={"name": f"wide-{uuid.uuid4().hex[:6]}"}).json()["experiment_id"]
    runs = []
    for n in range(3):
        run = srv.post("runs/create", json={"experiment_id": exp, "start_time": 1 + n}).json()["run"]["info"]["run_id"]
        batch = {
            "run_id": run,
            "metrics": [{"key": f"m{i}", "value": float(n), "timestamp": 1, "step": 0} for i in range(80)],
            "params": [{"key": f"p{i}", "value": "v"} for i in range(80)],
            "tags": [{"key": f"t{i}", "value": str(n)} for i in range(80)],
        }
        assert srv.post("runs/log-batch", json=batch).status_code == 200
        runs.append(run)
    clauses = (
        [f"metrics.m{i} >= 0" for i in range(80)]
        + [f"params.p{i} = 'v'" for i in range(80)]
        + [f"tags.t{i} != 'x'" for i in range(80)]
    )
    r = srv.post("runs/search", json={"experiment_ids": [exp], "filter": " AND ".join(clauses)})
    assert r.status_code == 200, r.text
    assert len(r.json()["runs"]) == 3
    r = srv.post("runs/search", json={"experiment_ids": [exp], "filter": " AND ".join(clauses + ["metrics.m79 < 2"])})
    assert r.status_code == 200, r.text
    assert {x["info"]["run_id"] for x in r.json()["runs"]} == set(runs[:2])
    # A hundred sort keys: the first decides (m0 descending: the last run first).
    order = [f"metrics.m{i} DESC" for i in range(80)] + [f"params.p{i}" for i in range(20)] + ["tags.t79 ASC"]
    r = srv.post("runs/search", json={"experiment_ids": [exp], "order_by": order})
    assert r.status_code == 200, r.text
    assert [x["info"]["run_id"] for x in r.json()["runs"]] == runs[::-1]


def test_an_artifact_name_too_long_for_the_disk_is_a_400(server_factory):
    srv = server_factory()
    exp = srv.post("experiments/create", json={"name": f"long-{uuid.uuid4().hex[:6]}"}).json()["experiment_id"]
    run = srv.post("runs/create", json={"experiment_id": exp, "start_time": 1}).json()["run"]["info"]["run_id"]
    base = f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts"
    r = srv.request("PUT", f"{base}/{'a' * 300}.txt", data=b"x")
    assert r.status_code == 400, r.text
    assert "longer than 255 bytes" in r.json()["message"]
    assert srv.request("PUT", f"{base}/{'a' * 200}.txt", data=b"x").status_code == 200
    assert srv.get("/health").status_code == 200


def test_another_agents_request_id_gets_nothing_of_its_leases(server):
    sweep = v1(server, "POST", "sweeps", spec({"x": {"type": "float", "low": 0.0, "high": 1.0}}, max_trials=2))
    assert sweep.status_code == 201, sweep.text
    sid = sweep.json()["id"]
    rid = uuid.uuid4().hex
    mine = v1(server, "POST", "leases", {"agent_id": "agent-a", "slots": 1, "sweep_id": sid, "request_id": rid})
    assert mine.status_code == 200 and len(mine.json()["leases"]) == 1, mine.text
    theirs = v1(server, "POST", "leases", {"agent_id": "agent-b", "slots": 1, "sweep_id": sid, "request_id": rid})
    assert theirs.status_code == 409, theirs.text
    assert "another agent" in theirs.json()["message"] and mine.json()["leases"][0]["lease_id"] not in theirs.text
    # The same agent retrying still gets its lease back.
    again = v1(server, "POST", "leases", {"agent_id": "agent-a", "slots": 1, "sweep_id": sid, "request_id": rid})
    assert [ls["lease_id"] for ls in again.json()["leases"]] == [ls["lease_id"] for ls in mine.json()["leases"]]


def test_a_spec_of_two_megabytes_is_taken_and_a_bigger_one_is_a_json_413(server):
    def big(n):
        return spec({"c": {"type": "categorical", "choices": [f"choice-{i}" for i in range(n)]}}, command="true {c}")

    started = time.monotonic()
    r = v1(server, "POST", "sweeps", big(125_000))  # 2.0 MB of JSON
    assert r.status_code == 201, r.text[:300]
    # Validation is linear in the choices (a set, not a scan per choice): seconds at worst here.
    assert time.monotonic() - started < 20
    r = v1(server, "POST", "sweeps", big(160_000))  # 2.6 MB: over the limit
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/json"), r.text[:300]
    assert r.json()["code"] == "too_large" and "2 MiB" in r.json()["message"]
