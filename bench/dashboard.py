"""The dashboard benchmark: a sweep of 10,000 finished trials with 8 parameters, in headless chromium.

Measures what issue #14 sets goals for, in one run:

- the trial table's payload (`GET /api/v1/sweeps/{id}/table`) as the browser receives it (gzip), goal <= 1 MB;
- the sweep page, from navigation until it is interactive (`window.__dashboard.ready()`: the table's
  first page and the charts in view drawn; the charts below the fold follow while the page already
  answers input), loaded in a fresh browser context --repeat times, goal <= 1 s; and, for information,
  until every chart has finished drawing (`settled()`);
- brushing: once the lines are drawn, a range selected on a parallel-coordinates axis until the table
  shows the filtered rows (two animation frames later, so the rows are on screen), goal <= 100 ms;
- live: a trial completed through the API until the open page shows it, goal <= 1 s;
- 100 open dashboards when nothing changes: the daemon's CPU over --idle seconds with 100 live-update
  streams open, against the same time with none; goal < 5% of a core. (An idle page makes no request
  but its event stream: the benchmark checks that too, on one real page.)

Usage (after `scripts/test` made the venv and `cargo build --release -p spotsweep-cli`):

    .venv-e2e/bin/python bench/dashboard.py            # prints a markdown table
    .venv-e2e/bin/python bench/dashboard.py --save     # ... and writes bench/DASHBOARD-RESULTS.md

Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from browser import launch_browser  # noqa: E402

PARAMS = {
    "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "wd": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "momentum": {"type": "float", "low": 0.5, "high": 0.999},
    "layers": {"type": "int", "low": 1, "high": 12},
    "width": {"type": "int", "low": 32, "high": 1024, "log": True},
    "opt": {"type": "categorical", "choices": ["adam", "adamw", "sgd", "lion"]},
    "act": {"type": "categorical", "choices": ["relu", "gelu", "silu"]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary: Path, data: Path) -> tuple[str, str, subprocess.Popen]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["SPOTSWEEP_LOG"] = "warn"
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--mlflow-ui", "off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    token_file = data / "admin.token"
    while not token_file.exists():
        time.sleep(0.05)
    return url, token_file.read_text().strip(), proc


def fill(url: str, token: str, trials: int) -> int:
    """A finished sweep of `trials` trials, run over ask-and-tell with a known objective."""
    h = {"Authorization": f"Bearer {token}"}
    spec = {
        "name": "bench-dashboard", "command": "true", "parameters": PARAMS,
        "objective": {"metric": "loss", "goal": "minimize"},
        "max_trials": trials, "parallelism": trials, "sampler": {"type": "random", "seed": 1},
    }
    r = requests.post(f"{url}/api/v1/sweeps", json=spec, headers=h, timeout=60)
    r.raise_for_status()
    sid = r.json()["id"]
    rng = random.Random(7)
    session = requests.Session()
    session.headers.update(h)

    def finish(ls):
        p = ls["trial"]["params"]
        value = (abs(math.log10(p["lr"]) + 3) + p["dropout"] + 0.1 * p["layers"]
                 + (0.5 if p["opt"] == "sgd" else 0.0) + rng.random() * 0.05)
        session.post(f"{url}/api/v1/leases/{ls['lease_id']}/complete",
                     json={"outcome": "succeeded", "value": value}, timeout=60).raise_for_status()

    done = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while done < trials:
            r = session.post(f"{url}/api/v1/leases", json={"agent_id": f"bench-{done // 2000}", "slots": 256,
                                                           "sweep_id": sid}, timeout=60)
            r.raise_for_status()
            leases = r.json()["leases"]
            if not leases:
                break
            list(pool.map(finish, leases))
            done += len(leases)
    return sid


def payload(url: str, token: str, sid: int) -> tuple[int, int]:
    h = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    r = requests.get(f"{url}/api/v1/sweeps/{sid}/table", headers=h, timeout=60, stream=True)
    compressed = len(r.raw.read())
    plain = len(requests.get(f"{url}/api/v1/sweeps/{sid}/table", headers={**h, "Accept-Encoding": "identity"},
                             timeout=60).content)
    return compressed, plain


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cost(url: str, token: str, pid: int, streams: int, seconds: float) -> float:
    """The daemon's share of a core over `seconds` with `streams` event streams open."""
    stop = threading.Event()
    opened = []

    def hold():
        with requests.get(f"{url}/api/v1/events", headers={"Authorization": f"Bearer {token}"}, stream=True,
                          timeout=(5, seconds + 60)) as r:
            opened.append(r.status_code)
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(opened) < streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(opened) == streams and set(opened) <= {200}, opened
    time.sleep(1)
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    share = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
    stop.set()
    return share


def page_timings(url: str, token: str, sid: int, repeat: int):
    """Cold loads of the sweep page until interactive and until settled, brushing times, and the
    requests an idle page made in 10 s."""
    loads, settles, brushes, idle_requests = [], [], [], -1
    with launch_browser() as browser:
        for i in range(repeat):
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            ctx.add_cookies([])
            page = ctx.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))
            page.goto(f"{url}/signin?next=/dashboard/", wait_until="domcontentloaded")
            page.fill("#token", token)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.goto("about:blank")
            t0 = time.perf_counter()
            page.goto(f"{url}/dashboard/#/sweeps/{sid}", wait_until="commit")
            page.wait_for_function("window.__dashboard && window.__dashboard.ready && window.__dashboard.ready()",
                                   timeout=60_000, polling="raf")
            loads.append(time.perf_counter() - t0)
            page.wait_for_function("window.__dashboard.settled()", timeout=60_000, polling="raf")
            settles.append(time.perf_counter() - t0)
            ms = page.evaluate(
                """async () => {
                    const d = window.__dashboard;
                    const before = d.visibleTrials().length;
                    const t0 = performance.now();
                    await d.brush('lr', [1e-4, 1e-2]);
                    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                    const after = d.visibleTrials().length;
                    if (!(after > 0 && after < before)) throw new Error(`brush did not filter: ${before} -> ${after}`);
                    return performance.now() - t0;
                }"""
            )
            brushes.append(ms / 1000)
            if i == repeat - 1:
                seen = []
                page.on("request", lambda r: seen.append(r.url))
                page.wait_for_timeout(10_000)
                idle_requests = len(seen)
            assert not errors, errors
            ctx.close()
    return loads, settles, brushes, idle_requests


def live_latency(url: str, token: str, repeat: int) -> list[float]:
    """A trial of a second sweep completed over the API while its page is open: seconds until the
    page's table shows it completed."""
    h = {"Authorization": f"Bearer {token}"}
    spec = {"name": "bench-live", "command": "true", "parameters": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "goal": "minimize"}, "max_trials": repeat, "parallelism": repeat}
    sid = requests.post(f"{url}/api/v1/sweeps", json=spec, headers=h, timeout=60).json()["id"]
    out = []
    with launch_browser() as browser:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(f"{url}/signin?next=/dashboard/", wait_until="domcontentloaded")
        page.fill("#token", token)
        with page.expect_navigation():
            page.click("button[type=submit]")
        leases = requests.post(f"{url}/api/v1/leases", json={"agent_id": "bench-live", "slots": repeat, "sweep_id": sid},
                               headers=h, timeout=60).json()["leases"]
        page.goto(f"{url}/dashboard/#/sweeps/{sid}")
        page.wait_for_function("window.__dashboard && window.__dashboard.ready && window.__dashboard.ready()",
                               timeout=60_000)
        for ls in leases:
            n = ls["trial"]["number"]
            page.wait_for_timeout(500)
            t0 = time.perf_counter()
            requests.post(f"{url}/api/v1/leases/{ls['lease_id']}/complete", json={"outcome": "succeeded", "value": 0.5},
                          headers=h, timeout=60).raise_for_status()
            page.wait_for_function(f"document.querySelector(\"tr[data-trial='{n}']\")?.dataset.state === 'completed'",
                                   timeout=30_000, polling="raf")
            out.append(time.perf_counter() - t0)
        ctx.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "spotsweep")
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, token, proc = start(args.binary, Path(tmp) / "data")
        try:
            t0 = time.monotonic()
            sid = fill(url, token, args.trials)
            filled = time.monotonic() - t0
            compressed, plain = payload(url, token, sid)
            loads, settles, brushes, idle_requests = page_timings(url, token, sid, args.repeat)
            live = live_latency(url, token, args.repeat)
            none = idle_cost(url, token, proc.pid, 0, args.idle)
            hundred = idle_cost(url, token, proc.pid, 100, args.idle)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def med(xs):
        return f"{statistics.median(xs):.3f} s ({min(xs):.3f}-{max(xs):.3f})"

    rows = [
        ("trial table payload, gzip", f"{compressed / 1e6:.2f} MB ({plain / 1e6:.1f} MB uncompressed)", "<= 1 MB",
         compressed <= 1_000_000),
        ("sweep page, navigation to interactive", med(loads), "<= 1 s", statistics.median(loads) <= 1.0),
        ("(info) sweep page, navigation until every chart has drawn", med(settles), "-", None),
        ("brushing an axis until the table shows it", f"{statistics.median(brushes) * 1000:.0f} ms "
         f"({min(brushes) * 1000:.0f}-{max(brushes) * 1000:.0f})", "<= 100 ms", statistics.median(brushes) <= 0.1),
        ("live: a trial completed until the open page shows it", med(live), "<= 1 s", statistics.median(live) <= 1.0),
        ("100 open dashboards, nothing changing", f"{hundred * 100:.2f}% of a core (none open: {none * 100:.2f}%)",
         "< 5%", hundred < 0.05),
        ("requests of an idle page in 10 s", str(idle_requests), "0 (its event stream only)", idle_requests == 0),
    ]
    head = [
        "# Dashboard benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, binary `{args.binary.relative_to(REPO) if args.binary.is_relative_to(REPO) else args.binary}`",
        f"- command: `.venv-e2e/bin/python bench/dashboard.py` ({args.trials} trials x 8 parameters, filled in {filled:.0f} s; "
        f"{args.repeat} cold page loads), machine: {os.cpu_count()} cores, {platform.platform()}",
        "",
        "| measure | spotsweep | goal | met |",
        "|---|---|---|---|",
    ]
    table = "\n".join(head + [f"| {a} | {b} | {c} | {'-' if d is None else 'yes' if d else '**no**'} |" for a, b, c, d in rows]) + "\n"
    print(table)
    if args.save:
        (REPO / "bench" / "DASHBOARD-RESULTS.md").write_text(table)


if __name__ == "__main__":
    main()
