"""The web UI benchmark: MLflow's own UI in headless chromium, served by spotsweep and by
`mlflow server` (3.17.2) on the same data on the same machine, in one run.

Two pages, each loaded cold (a fresh browser context) --repeat times on each server, timed from
navigation until every request the page made has answered (the same measure as the browser tests):

- the runs page of an experiment with --runs runs (10,000), each with 3 params, 2 metrics and a tag;
- a run's metric page whose metric has --points points (100,000).

Usage (after `scripts/test` made the venv and `cargo build --release -p spotsweep-cli`):

    .venv-e2e/bin/python bench/ui.py            # prints a markdown table
    .venv-e2e/bin/python bench/ui.py --save     # ... and writes bench/UI-RESULTS.md

Both servers get the same data: spotsweep through its REST API (runs/create, runs/log-batch),
`mlflow server` through its own store class before it starts (its REST API takes about 40 minutes
for 10,000 runs on this machine). Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from browser import Page, launch_browser  # noqa: E402

UI_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not become healthy")


def start_spotsweep(binary: Path, data: Path) -> tuple[str, str, subprocess.Popen]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["SPOTSWEEP_LOG"] = "warn"
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--mlflow-ui", str(UI_BUILD)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    token_file = data / "admin.token"
    while not token_file.exists():
        time.sleep(0.05)
    return url, token_file.read_text().strip(), proc


def seed_reference_store(data: Path, runs: int, points: int) -> dict:
    """The same data as `seed`, written with mlflow's own SQL store (the server is not running)."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    data.mkdir(parents=True)
    store = SqlAlchemyStore(f"sqlite:///{data}/mlflow.db", str(data / "artifacts"))
    now = int(time.time() * 1000)
    exp = store.create_experiment("bench-10k", artifact_location="mlflow-artifacts:/1")
    for i in range(runs):
        run = store.create_run(exp, "", now + i, [], f"trial-{i}").info.run_id
        store.log_batch(
            run,
            metrics=[Metric("loss", 1.0 / (1 + i % 97), now, 0), Metric("accuracy", (i % 89) / 89.0, now, 0)],
            params=[Param("lr", str(10 ** (-1 - i % 4))), Param("layers", str(1 + i % 8)),
                    Param("opt", ["sgd", "adam"][i % 2])],
            tags=[RunTag("sweep", "bench")],
        )
        store.update_run_info(run, RunStatus.FINISHED, now + i + 1000, None)
    hist_exp = store.create_experiment("bench-history", artifact_location="mlflow-artifacts:/2")
    run = store.create_run(hist_exp, "", now, [], "long").info.run_id
    for start in range(0, points, 1000):
        store.log_batch(run, metrics=[
            Metric("loss", 1.0 / (1 + s) + (s % 13) * 1e-4, now + s, s) for s in range(start, min(start + 1000, points))
        ], params=[], tags=[])
    store.engine.dispose()
    return {"exp": exp, "hist_exp": hist_exp, "hist_run": run}


def start_reference(data: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_exe), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{data}/mlflow.db", "--artifacts-destination", str(data / "artifacts")],
        cwd=str(data), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return url, proc


def seed(url: str, token: str | None, runs: int, points: int) -> dict:
    """The same experiments on either server, through the REST API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    session = requests.Session()
    session.headers.update(headers)
    api = url + "/api/2.0/mlflow/"

    def post(path, body):
        for attempt in range(5):
            r = session.post(api + path, json=body, timeout=120)
            if r.status_code == 200:
                return r.json()
            time.sleep(0.5 * (attempt + 1))
        raise SystemExit(f"{url} {path}: {r.status_code} {r.text[:200]}")

    exp = post("experiments/create", {"name": "bench-10k"})["experiment_id"]
    now = int(time.time() * 1000)

    def one_run(i: int) -> None:
        run = post("runs/create", {"experiment_id": exp, "start_time": now + i, "run_name": f"trial-{i}"})["run"]["info"]["run_id"]
        post("runs/log-batch", {
            "run_id": run,
            "params": [{"key": "lr", "value": str(10 ** (-1 - i % 4))},
                       {"key": "layers", "value": str(1 + i % 8)}, {"key": "opt", "value": ["sgd", "adam"][i % 2]}],
            "metrics": [{"key": "loss", "value": 1.0 / (1 + i % 97), "timestamp": now, "step": 0},
                        {"key": "accuracy", "value": (i % 89) / 89.0, "timestamp": now, "step": 0}],
            "tags": [{"key": "sweep", "value": "bench"}],
        })
        post("runs/update", {"run_id": run, "status": "FINISHED", "end_time": now + i + 1000})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one_run, range(runs)))

    hist_exp = post("experiments/create", {"name": "bench-history"})["experiment_id"]
    run = post("runs/create", {"experiment_id": hist_exp, "start_time": now, "run_name": "long"})["run"]["info"]["run_id"]

    def chunk(start: int) -> None:
        post("runs/log-batch", {"run_id": run, "metrics": [
            {"key": "loss", "value": 1.0 / (1 + s) + (s % 13) * 1e-4, "timestamp": now + s, "step": s}
            for s in range(start, min(start + 1000, points))]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(chunk, range(0, points, 1000)))
    return {"exp": exp, "hist_exp": hist_exp, "hist_run": run}


def time_page(browser, url: str, token: str | None, path: str, repeat: int) -> tuple[list[float], int]:
    times, failures = [], 0
    for _ in range(repeat):
        page = Page(browser, url, bearer=token, viewport=(1600, 1000))
        try:
            visit = page.goto(path, quiet_ms=1000, timeout_s=300)
            times.append(visit.all_answered_s)
            failures += len([r for r in visit.failed if not r.path.endswith("/users/current")])
        finally:
            page.close()
    return times, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    release = REPO / "target" / "release" / "spotsweep"
    binary = release if release.exists() else REPO / "target" / "debug" / "spotsweep"
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeded = {}
        t0 = time.monotonic()
        seeded["mlflow server"] = seed_reference_store(tmp / "reference", args.runs, args.points)
        print(f"seeded mlflow server's store in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        ss_url, ss_token, ss_proc = start_spotsweep(binary, tmp / "spotsweep")
        ref_url, ref_proc = start_reference(tmp / "reference")
        try:
            t0 = time.monotonic()
            seeded["spotsweep"] = seed(ss_url, ss_token, args.runs, args.points)
            print(f"seeded spotsweep in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            rows = []
            with launch_browser() as browser:
                for label, page_of in (
                    (f"experiment runs page, {args.runs:,} runs", lambda d: f"/#/experiments/{d['exp']}/runs"),
                    (f"run metric page, {args.points:,}-point metric",
                     lambda d: f"/#/experiments/{d['hist_exp']}/runs/{d['hist_run']}/model-metrics"),
                ):
                    ours, our_fail = time_page(browser, ss_url, ss_token, page_of(seeded["spotsweep"]), args.repeat)
                    ref, ref_fail = time_page(browser, ref_url, None, page_of(seeded["mlflow server"]), args.repeat)
                    rows.append((label, ours, ref, our_fail, ref_fail))
        finally:
            ss_proc.terminate()
            os.killpg(ref_proc.pid, 15)
            ss_proc.wait(30)
            ref_proc.wait(30)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    lines = [
        "# Web UI benchmark\n",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, HEAD {rev}, "
        f"`{binary.relative_to(REPO)}`, mlflow {mlflow.__version__}",
        f"- command: `.venv-e2e/bin/python bench/ui.py` ({time.monotonic() - started:.0f} s in all), "
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- each page loaded cold {args.repeat} times per server in headless chromium; time from navigation until "
        "every request the page made has answered (median, min-max); the same data on both servers\n",
        "| page | spotsweep | mlflow server | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for label, ours, ref, our_fail, ref_fail in rows:
        m_ours, m_ref = statistics.median(ours), statistics.median(ref)
        ratio = m_ours / m_ref
        lines.append(
            f"| {label} | {m_ours:.2f} s ({min(ours):.2f}-{max(ours):.2f}) | {m_ref:.2f} s ({min(ref):.2f}-{max(ref):.2f}) "
            f"| {ratio:.2f} | ≤ 0.10 | {'yes' if ratio <= 0.10 else '**no**'} |"
        )
        if our_fail or ref_fail:
            lines.append(f"|  failed requests: spotsweep {our_fail}, mlflow server {ref_fail} | | | | | |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.save:
        (REPO / "bench" / "UI-RESULTS.md").write_text(report)


if __name__ == "__main__":
    main()
