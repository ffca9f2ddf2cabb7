"""The dashboard's side of the API (spotsweep only): read-only tokens, who-am-I, the sweep
list's paging and filters, a sweep's trial table, attempts and learning curves, live change
events, compressed responses, and the dashboard's embedded files.

Trials here are run by the test itself over ask-and-tell (`POST /api/v1/leases` on a sweep),
so every number is known in advance.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid

import pytest
import requests

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]


def v1(srv, method, path, body=None, token="__default__", **kw):
    kw.setdefault("timeout", 30)
    if body is not None:
        kw["json"] = body
    headers = {**srv.headers(token), **kw.pop("headers", {})}
    return requests.request(method, f"{srv.url}/api/v1/{path.lstrip('/')}", headers=headers, **kw)


def spec(name, **over):
    s = {
        "name": name,
        "command": "true",
        "parameters": {
            "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "layers": {"type": "int", "low": 1, "high": 4},
            "opt": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
        "objective": {"metric": "loss", "goal": "minimize"},
        "max_trials": 20,
        "parallelism": 4,
    }
    s.update(over)
    return s


def create(srv, s):
    r = v1(srv, "POST", "sweeps", s)
    assert r.status_code == 201, r.text
    return r.json()


def lease(srv, sid, agent="worker-a", slots=1):
    r = v1(srv, "POST", "leases", {"agent_id": agent, "agent_name": agent, "slots": slots, "sweep_id": sid})
    assert r.status_code == 200, r.text
    return r.json()["leases"]


def complete(srv, lease_id, outcome="succeeded", value=None):
    body = {"outcome": outcome}
    if value is not None:
        body["value"] = value
    r = v1(srv, "POST", f"leases/{lease_id}/complete", body)
    assert r.status_code == 200, r.text
    return r.json()


def read_token(srv, name="watcher"):
    r = v1(srv, "POST", "tokens", {"name": name, "scope": "read"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["scope"] == "read"
    return body["token"]


def test_read_tokens_see_everything_and_change_nothing(server):
    sweep = create(server, spec(f"ro-{uuid.uuid4().hex[:8]}"))
    ro = read_token(server)
    # Every read works: the sweep API, the dashboard's endpoints, MLflow reads and searches.
    for path in ["sweeps", f"sweeps/{sweep['id']}", f"sweeps/{sweep['id']}/table", f"sweeps/{sweep['id']}/attempts",
                 f"sweeps/{sweep['id']}/curves", f"sweeps/{sweep['id']}/importance", "pools", "cost", "tokens", "me"]:
        r = v1(server, "GET", path, token=ro)
        assert r.status_code == 200, (path, r.status_code, r.text)
    me = v1(server, "GET", "me", token=ro).json()
    assert me == {"name": "watcher", "role": "user", "scope": "read", "auth": True, "mlflow_ui": me["mlflow_ui"]}
    h = server.headers(ro)
    r = requests.post(server.api("experiments/search"), json={"max_results": 10}, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(server.api("runs/search"), json={"experiment_ids": [sweep["experiment_id"]]}, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    # Nothing that changes state: the sweep's actions, tokens, MLflow writes.
    refused = [
        ("POST", f"{server.url}/api/v1/sweeps/{sweep['id']}/pause", None),
        ("POST", f"{server.url}/api/v1/sweeps/{sweep['id']}/cancel", None),
        ("POST", f"{server.url}/api/v1/sweeps", spec("nope")),
        ("POST", f"{server.url}/api/v1/sweeps/{sweep['id']}/trials", {"params": {"lr": 0.1, "layers": 2, "opt": "sgd"}}),
        ("POST", f"{server.url}/api/v1/tokens", {"name": "escalate"}),
        ("POST", server.api("experiments/create"), {"name": "nope"}),
        ("POST", server.api("runs/create"), {"experiment_id": sweep["experiment_id"]}),
    ]
    for method, url, body in refused:
        r = requests.request(method, url, json=body, headers=h, timeout=30)
        assert r.status_code == 403, (url, r.status_code, r.text)
        assert "read-only" in r.json()["message"], r.text
    tokens = {t["name"]: t for t in v1(server, "GET", "tokens").json()["tokens"]}
    assert tokens["watcher"]["scope"] == "read" and tokens["admin"]["scope"] == "write"
    assert v1(server, "GET", f"sweeps/{sweep['id']}").json()["state"] == "running"
    # A bad scope is a 400 that says what is allowed.
    r = v1(server, "POST", "tokens", {"name": "x", "scope": "admin"})
    assert r.status_code == 400 and "scope" in r.text, r.text


def test_me_for_write_tokens_and_without_auth(server, server_factory):
    me = v1(server, "GET", "me").json()
    assert me == {"name": "admin", "role": "admin", "scope": "write", "auth": True, "mlflow_ui": me["mlflow_ui"]}
    open_srv = server_factory(auth=False, extra_args=["--mlflow-ui", "off"])
    r = requests.get(f"{open_srv.url}/api/v1/me", timeout=30)
    assert r.json() == {"name": "anonymous", "role": "user", "scope": "write", "auth": False, "mlflow_ui": False}


def test_sweep_list_pages_filters_and_leaves_out_specs(server):
    tag = uuid.uuid4().hex[:8]
    made = [create(server, spec(f"list-{tag}-{i}")) for i in range(5)]
    r = v1(server, "POST", f"sweeps/{made[1]['id']}/pause")
    assert r.status_code == 200, r.text
    seen, token = [], None
    while True:
        params = {"name": f"list-{tag}", "max_results": 2}
        if token:
            params["page_token"] = token
        body = v1(server, "GET", "sweeps", params=params).json()
        assert len(body["sweeps"]) <= 2
        seen += body["sweeps"]
        token = body.get("next_page_token")
        if not token:
            break
    assert [s["id"] for s in seen] == [s["id"] for s in reversed(made)]
    assert all("spec" not in s and s["cost_usd"] == 0 for s in seen)
    paused = v1(server, "GET", "sweeps", params={"state": "paused", "name": tag.upper()}).json()["sweeps"]
    assert [s["id"] for s in paused] == [made[1]["id"]]
    assert "spec" in v1(server, "GET", f"sweeps/{made[0]['id']}").json()
    # The name filter is literal: SQL wildcards match nothing.
    assert v1(server, "GET", "sweeps", params={"name": "%"}).json()["sweeps"] == []
    # Malformed path and query values get the JSON error too (#18, point 8), not plain text.
    for path in ["sweeps/abc", "sweeps/abc/table", "sweeps/1/curves?top=x", "sweeps?max_results=many"]:
        r = v1(server, "GET", path)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), (path, r.text)
        assert r.json()["code"] == "invalid_request" and r.json()["message"], r.text
    for bad in [{"state": "sleeping"}, {"max_results": 0}, {"max_results": 5000}, {"page_token": "abc"}]:
        r = v1(server, "GET", "sweeps", params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["code"] == "invalid_request"


def test_table_attempts_and_curves_of_a_sweep(server):
    sweep = create(server, spec(f"table-{uuid.uuid4().hex[:8]}", max_trials=6, max_retries=0))
    sid = sweep["id"]
    values, offset = {}, {}
    # Trial 0 is preempted once, then succeeds on another agent; the others succeed or fail.
    leases = lease(server, sid, agent="vm-a", slots=4)
    assert len(leases) == 4
    first = leases[0]
    complete(server, first["lease_id"], "preempted")
    for i, ls in enumerate(leases[1:], start=1):
        run_id = ls["trial"]["run_id"]
        offset[ls["trial"]["number"]] = i
        for step in range(5):
            r = requests.post(server.api("runs/log-metric"), headers=server.headers(),
                              json={"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1) + i,
                                    "timestamp": 0, "step": step}, timeout=30)
            assert r.status_code == 200, r.text
        if i == 3:
            complete(server, ls["lease_id"], "failed")
        else:
            values[ls["trial"]["number"]] = 0.5 + i
            complete(server, ls["lease_id"], "succeeded", 0.5 + i)
    again = lease(server, sid, agent="vm-b", slots=1)
    assert [ls["trial"]["number"] for ls in again] == [first["trial"]["number"]]
    complete(server, again[0]["lease_id"], "succeeded", 0.25)
    values[first["trial"]["number"]] = 0.25

    r = v1(server, "GET", f"sweeps/{sid}/table")
    assert r.status_code == 200, r.text
    table = r.json()
    assert table["params"] == ["lr", "layers", "opt"]
    cols = table["columns"]
    assert cols["n"] == sorted(cols["n"]) and all(len(v) == len(cols["n"]) for k, v in cols.items() if k != "p")
    assert len(cols["p"]) == 3 and all(len(col) == len(cols["n"]) for col in cols["p"])
    rows = {n: {k: v[i] for k, v in cols.items() if k != "p"} | {"p": [col[i] for col in cols["p"]]}
            for i, n in enumerate(cols["n"])}
    t0 = rows[first["trial"]["number"]]
    assert t0["state"] == "completed" and t0["value"] == 0.25
    assert t0["attempts"] == 2 and t0["preemptions"] == 1 and t0["agent"] == "vm-b"
    assert t0["finished_at"] >= t0["started_at"]
    params = first["trial"]["params"]
    # Floats to 10 significant digits (the table's precision); ints and choices exactly.
    assert t0["p"][0] == pytest.approx(params["lr"], rel=5e-10) and t0["p"][1:] == [params["layers"], params["opt"]]
    assert sorted(t["state"] for t in rows.values()) == ["completed"] * 3 + ["failed"]
    assert all(t["run_id"] for t in rows.values())

    attempts = v1(server, "GET", f"sweeps/{sid}/attempts").json()["attempts"]
    assert len(attempts) == 5
    mine = [a for a in attempts if a["n"] == first["trial"]["number"]]
    assert [(a["attempt"], a["agent"], a["outcome"]) for a in mine] == [(1, "vm-a", "preempted"), (2, "vm-b", "succeeded")]
    assert all(a["ended_at"] >= a["started_at"] for a in attempts)

    curves = v1(server, "GET", f"sweeps/{sid}/curves", params={"top": 1}).json()
    assert curves["metric"] == "loss"
    # top=1: only the best completed trial, and it logged no history (its value came with the
    # completion): no curve. Running and pruned trials: none.
    assert curves["curves"] == []
    curves = v1(server, "GET", f"sweeps/{sid}/curves", params={"top": 10}).json()["curves"]
    completed_with_history = sorted(n for n in values if n in offset)
    assert [c["n"] for c in curves] == completed_with_history
    for c in curves:
        assert c["state"] == "completed" and c["pruned_step"] is None
        assert c["steps"] == [0, 1, 2, 3, 4]
        assert c["values"] == pytest.approx([1.0 / (s + 1) + offset[c["n"]] for s in range(5)])
    assert v1(server, "GET", f"sweeps/{sid}/curves", params={"top": 0}).status_code == 400
    assert v1(server, "GET", "sweeps/999999/table").status_code == 404


def read_events(url, headers, out, stop):
    with requests.get(url, headers=headers, stream=True, timeout=(5, 60)) as r:
        out.append(("status", r.status_code, r.headers.get("content-type")))
        event = None
        for raw in r.iter_lines(decode_unicode=True):
            if stop.is_set():
                return
            if raw.startswith("event:"):
                event = raw.split(":", 1)[1].strip()
            elif raw.startswith("data:"):
                out.append((event, json.loads(raw.split(":", 1)[1]), time.monotonic()))


def test_change_events_arrive_within_a_second(server):
    sweep = create(server, spec(f"live-{uuid.uuid4().hex[:8]}", max_trials=2))
    out, stop = [], threading.Event()
    t = threading.Thread(target=read_events, args=(f"{server.url}/api/v1/events", server.headers(), out, stop),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not out and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out and out[0][1] == 200 and out[0][2].startswith("text/event-stream"), out
    ls = lease(server, sweep["id"])
    time.sleep(0.5)
    done_at = time.monotonic()
    complete(server, ls[0]["lease_id"], "succeeded", 1.0)
    deadline = time.monotonic() + 5
    after = []
    while time.monotonic() < deadline:
        after = [e for e in out[1:] if e[0] == "change" and e[2] >= done_at and sweep["id"] in e[1]["sweeps"]]
        if after:
            break
        time.sleep(0.02)
    stop.set()
    assert after, out
    assert after[0][2] - done_at < 1.0, f"the change took {after[0][2] - done_at:.3f} s"


def test_shutdown_is_not_held_by_open_event_streams(server_factory):
    srv = server_factory()
    out, stop = [], threading.Event()
    threading.Thread(target=read_events, args=(f"{srv.url}/api/v1/events", srv.headers(), out, stop),
                     daemon=True).start()
    time.sleep(0.5)
    started = time.monotonic()
    assert srv.terminate(timeout=15) is not None
    assert time.monotonic() - started < 10


def test_api_answers_are_compressed_for_browsers(server):
    sweep = create(server, spec(f"gz-{uuid.uuid4().hex[:8]}", max_trials=50, parallelism=50))
    for _ in lease(server, sweep["id"], slots=50):
        pass
    r = requests.get(f"{server.url}/api/v1/sweeps/{sweep['id']}/table", headers={**server.headers(), "Accept-Encoding": "gzip"},
                     timeout=30, stream=True)
    assert r.headers.get("content-encoding") == "gzip", r.headers
    raw = r.raw.read()
    assert len(json.loads(gzip.decompress(raw))["columns"]["n"]) == 50
    plain = requests.get(f"{server.url}/api/v1/sweeps/{sweep['id']}/table", headers={**server.headers(), "Accept-Encoding": "identity"}, timeout=30)
    assert "content-encoding" not in plain.headers and len(plain.json()["columns"]["n"]) == 50


def test_dashboard_files_are_served_with_etags(server):
    r = requests.get(f"{server.url}/dashboard/", allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/signin?next=/dashboard/"
    page = requests.get(f"{server.url}/signin?next=/dashboard/", timeout=30)
    assert 'name="next" value="/dashboard/"' in page.text
    s = requests.Session()
    r = s.post(f"{server.url}/signin", data={"token": server.token, "next": "/dashboard/"}, allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303) and r.headers["location"] == "/dashboard/"
    # Another site as `next` is refused: sign-in goes home instead.
    r = s.post(f"{server.url}/signin", data={"token": server.token, "next": "//evil.example/"}, allow_redirects=False, timeout=30)
    assert r.headers["location"] == "/"
    index = s.get(f"{server.url}/dashboard/", timeout=30)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html"), index.text[:300]
    lib = s.get(f"{server.url}/dashboard/vendor/echarts.min.js", headers={"Accept-Encoding": "gzip"}, timeout=30, stream=True)
    assert lib.status_code == 200 and lib.headers["content-encoding"] == "gzip"
    assert lib.headers["content-type"].startswith("text/javascript")
    etag = lib.headers["etag"]
    again = s.get(f"{server.url}/dashboard/vendor/echarts.min.js", headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304
    assert "Apache License" in s.get(f"{server.url}/dashboard/vendor/echarts-LICENSE.txt", timeout=30).text
    assert s.get(f"{server.url}/dashboard/../admin.token", timeout=30).status_code == 404
    assert s.get(f"{server.url}/dashboard/nope.js", timeout=30).status_code == 404
