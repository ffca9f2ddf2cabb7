"""Durability (spotsweep only): kill -9 under concurrent writes, and graceful SIGTERM."""

import threading
import time

import pytest
import requests

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

N_WORKERS = 4
WRITE_SECONDS = 2.0
TS0 = 1_700_000_000_000


def _history(srv, run_id, key):
    out, token = [], None
    for _ in range(1000):
        params = {"run_id": run_id, "metric_key": key, "max_results": 25000}
        if token:
            params["page_token"] = token
        r = srv.get("metrics/get-history", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body.get("metrics", [])
        token = body.get("next_page_token")
        if not token:
            return out
    raise AssertionError("get-history paging did not end")


def test_kill9_keeps_acknowledged_writes(server_factory):
    srv = server_factory()
    exp_id = srv.post("experiments/create", json={"name": "crash"}).json()["experiment_id"]
    run_id = srv.post("runs/create", json={"experiment_id": exp_id, "start_time": TS0}).json()[
        "run"
    ]["info"]["run_id"]
    headers = srv.headers()
    url_metric = srv.api("runs/log-metric")
    url_batch = srv.api("runs/log-batch")

    acked = [[] for _ in range(N_WORKERS)]  # steps acknowledged with HTTP 200
    acked_params = [[] for _ in range(N_WORKERS)]
    errors = []
    stop = threading.Event()

    def worker(i):
        key = f"w{i}"
        sess = requests.Session()
        step = 0
        n = 0
        while not stop.is_set():
            try:
                if n % 10 == 9:
                    steps = list(range(step, step + 5))
                    body = {
                        "run_id": run_id,
                        "metrics": [
                            {"key": key, "value": s + i / 10, "timestamp": TS0 + s, "step": s}
                            for s in steps
                        ],
                        "params": [{"key": f"p{i}_{n}", "value": str(n)}],
                    }
                    r = sess.post(url_batch, json=body, headers=headers, timeout=10)
                    if r.status_code == 200:
                        acked[i].extend(steps)
                        acked_params[i].append((f"p{i}_{n}", str(n)))
                        step += 5
                else:
                    body = {
                        "run_id": run_id,
                        "key": key,
                        "value": step + i / 10,
                        "timestamp": TS0 + step,
                        "step": step,
                    }
                    r = sess.post(url_metric, json=body, headers=headers, timeout=10)
                    if r.status_code == 200:
                        acked[i].append(step)
                        step += 1
                if r.status_code not in (200, 503):
                    errors.append((r.status_code, r.text[:200]))
                    return
                n += 1
            except requests.RequestException:
                return  # the server is gone

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    time.sleep(WRITE_SECONDS)
    srv.kill()  # SIGKILL while the writers are busy
    stop.set()
    for t in threads:
        t.join(15)
    assert not errors, errors[:5]
    total = sum(len(a) for a in acked)
    print(f"acknowledged metric writes per worker: {[len(a) for a in acked]}")
    assert total >= 4 * N_WORKERS, f"too few acknowledged writes to be meaningful: {acked}"

    srv.start()  # same data dir
    for i in range(N_WORKERS):
        hist = _history(srv, run_id, f"w{i}")
        by_step = {m["step"]: m for m in hist}
        missing = sorted(set(acked[i]) - set(by_step))
        assert not missing, f"worker {i}: acknowledged steps lost after kill -9: {missing[:20]}"
        for s in acked[i]:
            assert by_step[s]["value"] == pytest.approx(s + i / 10)
            assert by_step[s]["timestamp"] == TS0 + s
    run = srv.get("runs/get", params={"run_id": run_id}).json()["run"]
    latest = {m["key"]: m for m in run["data"].get("metrics", [])}
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    for i in range(N_WORKERS):
        if acked[i]:
            assert latest[f"w{i}"]["step"] >= max(acked[i])
        for k, v in acked_params[i]:
            assert params.get(k) == v

    # and it keeps working after recovery
    r = srv.post(
        "runs/log-metric",
        json={"run_id": run_id, "key": "after", "value": 1, "timestamp": TS0, "step": 0},
    )
    assert r.status_code == 200, r.text
    srv.stop()


def test_sigterm_graceful_shutdown(server_factory, connect, workdir):
    srv = server_factory()
    token_before = srv.token
    client = connect(srv)
    exp_id = client.create_experiment("graceful")
    run = client.create_run(exp_id, run_name="g")
    rid = run.info.run_id
    client.log_param(rid, "p", "1")
    for s in range(50):
        client.log_metric(rid, "m", float(s), timestamp=TS0 + s, step=s)
    client.set_tag(rid, "t", "v")
    f = workdir / "art.txt"
    f.write_text("persist me")
    client.log_artifact(rid, str(f))
    client.set_terminated(rid, "FINISHED")

    t0 = time.monotonic()
    rc = srv.terminate(timeout=15)
    assert rc == 0, f"SIGTERM exit code {rc}:\n{srv.logs(40)}"
    assert time.monotonic() - t0 < 10

    srv.start()
    assert srv.token == token_before, "the admin token must survive a restart"
    client = connect(srv)
    r = client.get_run(rid)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"p": "1"}
    assert r.data.metrics == {"m": 49.0}
    assert r.data.tags["t"] == "v"
    assert [m.step for m in client.get_metric_history(rid, "m")] == list(range(50))
    assert client.get_experiment_by_name("graceful").experiment_id == exp_id
    d = workdir / "dl"
    d.mkdir()
    assert (
        open(client.download_artifacts(rid, "art.txt", str(d))).read() == "persist me"
    )
    # ids keep increasing after a restart
    new_exp = client.create_experiment("graceful-2")
    assert int(new_exp) > int(exp_id)
    assert srv.terminate(timeout=15) == 0
