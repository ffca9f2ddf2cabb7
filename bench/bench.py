"""Benchmarks one server (the reference `mlflow server` or spotsweep) and writes its figures as JSON.

bench/run.sh calls it once per server, one after the other, and bench/report.py puts the two
JSON files side by side. Order of the work on one server:

  1. launch to the first 200 on /health (spotsweep: three fresh launches, median; reference: one)
  2. seed 10,000 runs (10 params, 5 tags, 5 metrics) over HTTP, then runs/search p50 (wrk -c1)
  3. RSS of the whole process tree (after the runs are loaded and searched)
  4. runs/log-metric at concurrency 16 (wrk -t2 -c16, Lua: a different body on every request)
  5. runs/log-batch, 1000 metrics a request, at concurrency 4 (wrk -t2 -c4)
  6. a 100,000-point metric: MlflowClient().get_metric_history, median of 3
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

HERE = Path(__file__).resolve().parent

WARMUP_S = float(os.environ.get("BENCH_WARMUP", "3"))
DURATION_S = float(os.environ.get("BENCH_DURATION", "15"))
N_RUNS = int(os.environ.get("BENCH_RUNS", "10000"))
N_HISTORY = int(os.environ.get("BENCH_HISTORY", "100000"))
SEARCH_N = int(os.environ.get("BENCH_SEARCH_N", "50"))  # at least this many timed searches
SEARCH_MIN_S = float(os.environ.get("BENCH_SEARCH_MIN_S", "5"))  # and for at least this long

SEARCH_FILTER = "metrics.m0 > 0.5 AND params.p0 = 'v3'"
SEARCH_ORDER = ["metrics.m1 DESC"]
SEARCH_MAX = 100
# More searches over the same runs (name, filter, order_by): each kind of filter alone and
# together, and each kind of order key. The runs start at BASE_MS + i (see seed_search_runs).
BASE_MS = 1_700_000_000_000
SEARCH_SHAPES = [
    ("params only, order by metric", "params.p0 = 'v3' AND params.p1 = 'v5'", ["metrics.m1 DESC"]),
    ("metrics only, order by metric", "metrics.m0 > 0.5 AND metrics.m2 < 0.3", ["metrics.m1 DESC"]),
    ("tags and attributes, order by metric", f"tags.t0 = 'tag7' AND attributes.start_time > {BASE_MS + 2000}",
     ["metrics.m1 DESC"]),
    ("metric + param, order by param", "metrics.m0 > 0.5 AND params.p0 = 'v3'", ["params.p1 ASC"]),
    ("metric + param, order by attribute", "metrics.m0 > 0.5 AND params.p0 = 'v3'", ["attributes.start_time DESC"]),
    ("no filter, order by metric", "", ["metrics.m3 ASC"]),
]
SEARCH_SHAPES_ON = os.environ.get("BENCH_SEARCH_SHAPES", "1") == "1"
# log-batch shapes (distinct keys per request, steps per key); 10 x 100 is the main row.
BATCH_SHAPES = [(1000, 1), (100, 1), (10, 1), (1, 1), (100, 10), (1, 1000)]
BATCH_SHAPES_ON = os.environ.get("BENCH_BATCH_SHAPES", "1") == "1"
# spotsweep only (seeding 100,000 runs into the reference over HTTP takes about 40 minutes): the
# same search on this many runs, and a history of this many points (0 skips either).
N_RUNS_BIG = int(os.environ.get("BENCH_RUNS_BIG", "100000"))
N_HISTORY_BIG = int(os.environ.get("BENCH_HISTORY_BIG", "1000000"))

LOG_METRIC_RUNS = 16
LOG_BATCH_RUNS = 512
LOG_BATCH_POOL = 64  # metric lists per wrk thread (see log_batch.lua)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SPOTSWEEP_", "MLFLOW_", "BENCH_"))
    }


# ------------------------------------------------------------------------------ the server


class Server:
    """One server process (its own session, so the whole tree can be signalled and measured)."""

    def __init__(self, kind: str, binary: str, work: Path, tag: str):
        self.kind = kind
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-{tag}-", dir=work))
        self.pgid_file = work / f"{kind}-{tag}.pgid"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "server.log"
        self.launch_s: float | None = None

    def database(self) -> str | None:
        """With BENCH_POSTGRES (a PostgreSQL server where databases may be created; run.sh
        --postgres sets it): a fresh database for this server, as a URL."""
        server = os.environ.get("BENCH_POSTGRES", "").strip()
        if not server:
            return None
        name = f"bench_{self.kind}_{self.port}"
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", server, "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True)
        return f"{server.rsplit('/', 1)[0]}/{name}"

    def command(self) -> list[str]:
        database = self.database()
        if self.kind == "spotsweep":
            cmd = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.dir / "data")]
            return cmd + (["--database-url", database] if database else [])
        mlflow = str(Path(sys.executable).parent / "mlflow")
        # SQLAlchemy's name for the psycopg2 driver (bench/requirements.txt).
        store = database.replace("postgres://", "postgresql+psycopg2://", 1) if database else f"sqlite:///{self.dir}/mlflow.db"
        return [mlflow, "server", "--backend-store-uri", store,
                "--artifacts-destination", str(self.dir / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout: float) -> float:
        cmd = self.command()
        logf = open(self.log_path, "wb")
        health = self.url + "/health"
        sess = requests.Session()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=clean_env(), stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid_file.write_text(str(self.proc.pid))
        while True:
            with contextlib.suppress(requests.RequestException):
                if sess.get(health, timeout=5).status_code == 200:
                    break
            elapsed = time.perf_counter() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if elapsed > timeout:
                self.stop()
                raise RuntimeError(f"{self.kind} not healthy after {timeout}s")
            time.sleep(0.005 if elapsed < 2 else 0.05)
        self.launch_s = time.perf_counter() - t0
        sess.close()
        if self.kind == "spotsweep":
            token_file = self.dir / "data" / "admin.token"
            deadline = time.monotonic() + 10
            while not (token_file.exists() and token_file.read_text().strip()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {token_file}")
                time.sleep(0.01)
            self.token = token_file.read_text().strip()
        return self.launch_s

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers.update(self.headers())
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        s.mount("http://", adapter)
        return s

    def api(self, path: str) -> str:
        return f"{self.url}/api/2.0/mlflow/{path}"

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root] + root.children(recursive=True)

    @staticmethod
    def role(p: psutil.Process) -> str:
        cmd = " ".join(p.cmdline())
        if "spotsweep" in p.name():
            return "spotsweep"
        if "huey" in cmd or "_job_runner" in cmd:
            return "job runner + huey consumers"
        if "resource_tracker" in cmd:
            return "multiprocessing resource tracker"
        if "spawn_main" in cmd:
            return "uvicorn workers"
        if "uvicorn" in cmd:
            return "uvicorn supervisor"
        if "mlflow server" in cmd or cmd.endswith("mlflow") or " server " in cmd:
            return "`mlflow server` CLI parent"
        return p.name()

    def memory(self) -> dict:
        rss = pss = 0
        roles: dict[str, list] = {}
        count = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", 0)
                count += 1
                r = roles.setdefault(self.role(p), [0, 0])
                r[0] += 1
                r[1] += info.rss
        return {"rss_bytes": rss, "pss_bytes": pss, "processes": count,
                "roles": {k: {"processes": v[0], "rss_bytes": v[1]} for k, v in roles.items()}}

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # Workers of the reference may outlive the parent by a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.pgid_file.unlink(missing_ok=True)
        self.proc = None


# ------------------------------------------------------------------------------ HTTP helpers


def check(resp: requests.Response) -> dict:
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]}")
    return resp.json() if resp.content else {}


def create_experiment(srv: Server, sess: requests.Session, name: str) -> str:
    return check(sess.post(srv.api("experiments/create"), json={"name": name}, timeout=60))[
        "experiment_id"]


def create_run(srv: Server, sess: requests.Session, exp_id: str, name: str, start: int) -> str:
    body = {"experiment_id": exp_id, "run_name": name, "start_time": start,
            "tags": [{"key": "mlflow.user", "value": "bench"}]}
    return check(sess.post(srv.api("runs/create"), json=body, timeout=60))["run"]["info"]["run_id"]


def pooled(srv: Server, threads: int, items, fn):
    """Runs fn(session, item) over items with a pool of threads, one keep-alive session each."""
    local = threading.local()

    def call(item):
        if not hasattr(local, "s"):
            local.s = srv.session()
        return fn(local.s, item)

    with cf.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, items))


# ------------------------------------------------------------------------------ wrk


class CpuSampler:
    """CPU seconds of the server tree, of wrk (the only child waited for meanwhile) and of the
    whole machine over one wrk run."""

    def __init__(self, srv: Server):
        self.srv = srv

    @staticmethod
    def _machine():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]
        return sum(fields[:8]) / hz, idle / hz

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.server0 = self.srv.cpu_seconds()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.child0 = ru.ru_utime + ru.ru_stime
        self.machine0 = self._machine()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        total, idle = self._machine()
        busy = (total - self.machine0[0]) - (idle - self.machine0[1])
        self.result = {
            "wall_s": wall,
            "server_cpu_pct": 100 * (self.srv.cpu_seconds() - self.server0) / wall,
            "wrk_cpu_pct": 100 * (ru.ru_utime + ru.ru_stime - self.child0) / wall,
            "machine_busy_pct": 100 * busy / wall,  # of all cores: 200% = both cores busy
            "cores": os.cpu_count(),
        }


def wrk(srv: Server, script: str, threads: int, conns: int, seconds: float, env: dict,
        sample_cpu: bool = False) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
           "-s", str(HERE / script), srv.url]
    full_env = {**clean_env(), "BENCH_LUA_DIR": str(HERE), "BENCH_TOKEN": srv.token or "",
                **{k: str(v) for k, v in env.items()}}
    sampler = CpuSampler(srv)
    with sampler if sample_cpu else contextlib.nullcontext():
        out = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}\n{out.stdout}")
    m = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"no BENCH_JSON line from wrk:\n{out.stdout}\n{out.stderr}")
    res = json.loads(m.group(1))
    res["req_per_s"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in res if k.startswith("err_"))
    res["command"] = " ".join(cmd[:-1] + ["URL"])
    if sample_cpu:
        c = sampler.result
        # Everything else on the machine (the driver sleeps meanwhile): should be near 0.
        c["other_cpu_pct"] = max(0.0, c["machine_busy_pct"] - c["server_cpu_pct"] - c["wrk_cpu_pct"])
        res["cpu"] = c
    return res


def describe_wrk(label: str, r: dict) -> None:
    cpu = r.get("cpu")
    cpu_s = (f"; CPU: server {cpu['server_cpu_pct']:.0f}%, wrk {cpu['wrk_cpu_pct']:.0f}%, other "
             f"{cpu['other_cpu_pct']:.0f}%, machine {cpu['machine_busy_pct']:.0f}% of "
             f"{cpu['cores'] * 100}%") if cpu else ""
    log(f"{label}: {r['requests']} requests, {r['req_per_s']:.1f} req/s, p50 "
        f"{r['lat_p50_us'] / 1000:.2f} ms, p99 {r['lat_p99_us'] / 1000:.2f} ms, errors "
        f"{r['errors']}{cpu_s}")


# ------------------------------------------------------------------------------ the measures


def measure_launch(kind: str, binary: str, work: Path) -> tuple[Server, list[float]]:
    """Launches on a fresh data dir. spotsweep: two throwaway launches, then the one that stays."""
    times = []
    tries = 3 if kind == "spotsweep" else 1
    timeout = 20 if kind == "spotsweep" else 300
    for i in range(tries):
        srv = Server(kind, binary, work, f"launch{i}")
        times.append(srv.start(timeout))
        log(f"launch {i + 1}/{tries}: healthy after {times[-1]:.3f} s")
        if i < tries - 1:
            srv.stop()
    return srv, times


def seed_search_runs(srv: Server, n_runs: int = N_RUNS, name: str = "bench-search") -> dict:
    """10 params, 5 tags, 5 metrics on each of n_runs runs; the same data for both servers."""
    rng = random.Random(42)
    base = BASE_MS
    plan = []
    for i in range(n_runs):
        params = [{"key": f"p{j}", "value": f"v{rng.randrange(10)}"} for j in range(10)]
        tags = [{"key": f"t{j}", "value": f"tag{rng.randrange(100)}"} for j in range(5)]
        metrics = [{"key": f"m{j}", "value": rng.random(), "timestamp": base + i, "step": 0}
                   for j in range(5)]
        plan.append((i, params, tags, metrics))
    sess = srv.session()
    exp = create_experiment(srv, sess, name)
    done = [0]
    lock = threading.Lock()
    t0 = time.perf_counter()

    def seed(s, item):
        i, params, tags, metrics = item
        run_id = create_run(srv, s, exp, f"run-{i:05d}", base + i)
        check(s.post(srv.api("runs/log-batch"), timeout=120,
                     json={"run_id": run_id, "params": params, "tags": tags, "metrics": metrics}))
        with lock:
            done[0] += 1
            if done[0] % 10000 == 0 or (n_runs <= 10000 and done[0] % 1000 == 0):
                el = time.perf_counter() - t0
                log(f"seeded {done[0]}/{n_runs} runs in {el:.1f} s ({done[0] / el:.0f} runs/s)")

    pooled(srv, 8, plan, seed)
    seconds = time.perf_counter() - t0
    return {"experiment_id": exp, "seconds": seconds, "runs": n_runs,
            "requests": 2 * n_runs, "threads": 8}


def measure_search(srv: Server, exp: str, filter_: str = SEARCH_FILTER, order: list = SEARCH_ORDER) -> dict:
    body = {"experiment_ids": [exp], "filter": filter_, "run_view_type": "ACTIVE_ONLY",
            "max_results": SEARCH_MAX, "order_by": order}
    sess = srv.session()
    res = check(sess.post(srv.api("runs/search"), json=body, timeout=120))
    runs = res.get("runs", [])
    names = [r["info"]["run_name"] for r in runs]
    if order == ["metrics.m1 DESC"]:
        m1 = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "m1") for r in runs]
        if m1 != sorted(m1, reverse=True):
            raise RuntimeError("search result not ordered by metrics.m1 DESC")
    log(f"search {filter_!r} by {order}: returns {len(runs)} runs ({len(json.dumps(res))} bytes), first {names[:3]}")
    env = {"BENCH_BODY": json.dumps(body)}
    warm = wrk(srv, "search.lua", 1, 1, 2, env)
    describe_wrk("runs/search warm-up", warm)
    if warm["requests"] < 2:
        # Slower than wrk's window (the reference takes seconds on some shapes): timed one by
        # one instead, so that the row has a figure rather than none.
        r = timed_searches(sess, srv.api("runs/search"), body)
        describe_wrk("runs/search (sequential, timed one by one)", r)
        r.update({"body": body, "result_runs": len(runs), "result_names": names,
                  "has_next_page": "next_page_token" in res})
        return r
    # Long enough for SEARCH_N sequential searches at the warm-up's pace (wrk counts by time).
    seconds = min(120, max(SEARCH_MIN_S, 1.3 * SEARCH_N * warm["lat_mean_us"] / 1e6))
    r = wrk(srv, "search.lua", 1, 1, seconds, env, sample_cpu=True)
    if r["requests"] < SEARCH_N:
        log(f"warning: only {r['requests']} searches in {seconds:.0f} s")
    describe_wrk("runs/search (wrk -t1 -c1)", r)
    r.update({"body": body, "result_runs": len(runs), "result_names": names,
              "has_next_page": "next_page_token" in res})
    return r


def timed_searches(sess, url: str, body: dict) -> dict:
    """At least 3 searches and SEARCH_MIN_S, one after the other, in wrk's result shape."""
    times = []
    t0 = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t0 < SEARCH_MIN_S:
        t = time.perf_counter()
        check(sess.post(url, json=body, timeout=600))
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    duration = (time.perf_counter() - t0) * 1e6
    return {"requests": len(times), "duration_us": duration, "req_per_s": len(times) / (duration / 1e6),
            "lat_p50_us": statistics.median(times), "lat_p90_us": at(0.9), "lat_p99_us": at(0.99),
            "lat_max_us": times[-1], "lat_mean_us": statistics.fmean(times), "errors": 0,
            "command": "python requests, sequential"}


def write_runs_file(srv: Server, work: Path, name: str, n: int) -> Path:
    sess = srv.session()
    exp = create_experiment(srv, sess, f"bench-{name}")
    ids = [create_run(srv, sess, exp, f"{name}-{i}", 1_700_000_000_000 + i) for i in range(n)]
    path = srv.dir / f"{name}.runs"
    path.write_text("\n".join(ids) + "\n")
    return path


def measure_log_metric(srv: Server, work: Path) -> dict:
    runs = write_runs_file(srv, work, "logmetric", LOG_METRIC_RUNS)
    env = {"BENCH_RUNS_FILE": runs}
    describe_wrk("log-metric warm-up", wrk(srv, "log_metric.lua", 2, 16, WARMUP_S,
                                          {**env, "BENCH_PHASE": 0}))
    r = wrk(srv, "log_metric.lua", 2, 16, DURATION_S, {**env, "BENCH_PHASE": 1}, sample_cpu=True)
    describe_wrk("log-metric -t2 -c16", r)
    return r


def measure_log_batch(srv: Server, work: Path, keys: int = 10, steps: int = 100) -> dict:
    runs = write_runs_file(srv, work, f"logbatch-{keys}x{steps}", LOG_BATCH_RUNS)
    env = {"BENCH_RUNS_FILE": runs, "BENCH_POOL": LOG_BATCH_POOL, "BENCH_BATCH_KEYS": keys,
           "BENCH_BATCH_STEPS": steps}
    describe_wrk(f"log-batch {keys}x{steps} warm-up", wrk(srv, "log_batch.lua", 2, 4, WARMUP_S,
                                                         {**env, "BENCH_PHASE": 0}))
    r = wrk(srv, "log_batch.lua", 2, 4, DURATION_S, {**env, "BENCH_PHASE": 1}, sample_cpu=True)
    r["keys"], r["steps"] = keys, steps
    r["metrics_per_s"] = r["req_per_s"] * keys * steps
    # Each wrk thread sends pool x runs different bodies before one repeats.
    r["distinct_bodies"] = 2 * LOG_BATCH_POOL * LOG_BATCH_RUNS
    r["all_distinct"] = r["requests"] <= r["distinct_bodies"]
    describe_wrk("log-batch -t2 -c4", r)
    r["rss_after"] = srv.memory()["rss_bytes"]
    log(f"log-batch: {r['metrics_per_s']:.0f} metrics/s; all bodies distinct: {r['all_distinct']}; "
        f"{r['rss_after'] / 1e6:.1f} MB RSS after it")
    return r


def measure_history(srv: Server, n_points: int = N_HISTORY, client: bool = True) -> dict:
    sess = srv.session()
    exp = create_experiment(srv, sess, f"bench-history-{n_points}")
    run_id = create_run(srv, sess, exp, "history", 1_700_000_000_000)
    rng = random.Random(7)
    base = 1_700_000_000_000
    batches = []
    for b in range(0, n_points, 1000):
        batches.append([{"key": "loss", "value": rng.random(), "timestamp": base + s, "step": s}
                        for s in range(b, min(b + 1000, n_points))])
    t0 = time.perf_counter()
    pooled(srv, 4, batches, lambda s, m: check(
        s.post(srv.api("runs/log-batch"), json={"run_id": run_id, "metrics": m}, timeout=300)))
    seed_s = time.perf_counter() - t0
    log(f"logged {n_points} points in {seed_s:.1f} s")
    client_times = []
    if client:
        client_times = history_through_client(srv, exp, run_id, n_points)

    # The same pages over raw HTTP, bodies read but not parsed: the server's share of it.
    raw_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        token, pages, nbytes = None, 0, 0
        while True:
            params = {"run_id": run_id, "run_uuid": run_id, "metric_key": "loss",
                      "max_results": 25000}
            if token:
                params["page_token"] = token
            resp = sess.get(srv.api("metrics/get-history"), params=params, timeout=600)
            if resp.status_code != 200:
                raise RuntimeError(resp.text[:300])
            pages += 1
            nbytes += len(resp.content)
            m = re.search(rb'"next_page_token"\s*:\s*"([^"]*)"', resp.content)
            token = m.group(1).decode() if m else None
            if not token:
                break
        raw_times.append(time.perf_counter() - t0)
    log(f"raw HTTP paging x3 ({pages} pages, {nbytes} bytes): {[round(t, 3) for t in raw_times]} s")
    out = {"points": n_points, "seed_s": seed_s, "raw_s": raw_times,
           "raw_median_s": statistics.median(raw_times), "pages": pages, "bytes": nbytes}
    if client_times:
        out.update(client_s=client_times, client_median_s=statistics.median(client_times))
    return out


def history_through_client(srv: Server, exp: str, run_id: str, n_points: int) -> list[float]:
    """The real client path: MlflowClient pages through metrics/get-history 25,000 at a time."""
    os.environ["MLFLOW_TRACKING_URI"] = srv.url
    if srv.token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = srv.token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "600"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=srv.url)
    client.get_experiment(exp)  # imports, connection pool: not part of the timing
    client_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        hist = client.get_metric_history(run_id, "loss")
        client_times.append(time.perf_counter() - t0)
        if len(hist) != n_points:
            raise RuntimeError(f"get_metric_history returned {len(hist)} points, not {n_points}")
    log(f"MlflowClient.get_metric_history x3: {[round(t, 3) for t in client_times]} s")
    return client_times


def machine_busy(seconds: float) -> float:
    """Percent of all cores busy over the next `seconds` (200% = 2 cores)."""
    a = CpuSampler._machine()
    time.sleep(seconds)
    b = CpuSampler._machine()
    wall = b[0] - a[0]
    return 100 * os.cpu_count() * (wall - (b[1] - a[1])) / wall if wall > 0 else 0.0


def wait_quiet(limit_s: float = float(os.environ.get("BENCH_QUIET_WAIT", "300"))) -> float:
    """Waits (up to limit_s) until the machine is idle, so another job does not skew the figures."""
    t0 = time.perf_counter()
    while True:
        procs = list(psutil.process_iter(["pid", "name"]))
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent()
        busy = machine_busy(2)
        if busy < 25:
            return time.perf_counter() - t0
        usage = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                usage.append((p.cpu_percent(), f"{p.info['name']}({p.info['pid']})"))
        top = ", ".join(f"{n} {c:.0f}%" for c, n in sorted(usage, reverse=True)[:3])
        if time.perf_counter() - t0 > limit_s:
            log(f"warning: the machine is still {busy:.0f}% busy after {limit_s:.0f} s ({top}); "
                "going on")
            return time.perf_counter() - t0
        log(f"machine {busy:.0f}% busy (of {os.cpu_count() * 100}%: {top}); waiting for it to calm down")
        time.sleep(8)


def quiet(out: dict) -> None:
    out["quiet_wait_s"] = out.get("quiet_wait_s", 0) + wait_quiet()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["reference", "spotsweep"])
    ap.add_argument("--bin", required=True, help="the spotsweep binary")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()

    out: dict = {"kind": a.kind, "settings": {
        "warmup_s": WARMUP_S, "duration_s": DURATION_S, "runs": N_RUNS, "history": N_HISTORY,
        "search_n": SEARCH_N, "search_min_s": SEARCH_MIN_S}}
    quiet(out)
    started = time.perf_counter()
    srv, launches = measure_launch(a.kind, a.bin, a.work)
    try:
        out["launch_s"] = launches
        out["launch_median_s"] = statistics.median(launches)
        out["memory_idle"] = srv.memory()
        log(f"idle: {out['memory_idle']['rss_bytes'] / 1e6:.1f} MB RSS in "
            f"{out['memory_idle']['processes']} processes: " + ", ".join(
                f"{k} x{v['processes']} {v['rss_bytes'] / 1e6:.0f} MB"
                for k, v in out["memory_idle"]["roles"].items()))

        quiet(out)
        out["seed"] = seed_search_runs(srv)
        log(f"seeded {N_RUNS} runs in {out['seed']['seconds']:.1f} s")
        quiet(out)
        out["search"] = measure_search(srv, out["seed"]["experiment_id"])
        out["memory_after_search"] = srv.memory()
        log(f"after search: {out['memory_after_search']['rss_bytes'] / 1e6:.1f} MB RSS, "
            f"{out['memory_after_search']['pss_bytes'] / 1e6:.1f} MB PSS in "
            f"{out['memory_after_search']['processes']} processes")

        if SEARCH_SHAPES_ON:
            out["search_shapes"] = []
            for name, filter_, order in SEARCH_SHAPES:
                quiet(out)
                r = measure_search(srv, out["seed"]["experiment_id"], filter_, order)
                out["search_shapes"].append({"name": name, **r})

        quiet(out)
        out["log_metric"] = measure_log_metric(srv, a.work)
        quiet(out)
        out["log_batch"] = measure_log_batch(srv, a.work)
        if BATCH_SHAPES_ON:
            out["log_batch_shapes"] = []
            for keys, steps in BATCH_SHAPES:
                quiet(out)
                out["log_batch_shapes"].append(measure_log_batch(srv, a.work, keys, steps))
        quiet(out)
        out["history"] = measure_history(srv)
        if a.kind == "spotsweep" and N_HISTORY_BIG:
            quiet(out)
            out["history_big"] = measure_history(srv, N_HISTORY_BIG, client=False)
            out["memory_history_big"] = srv.memory()
            log(f"after the {N_HISTORY_BIG}-point history: {out['memory_history_big']['rss_bytes'] / 1e6:.1f} MB RSS")
        if a.kind == "spotsweep" and N_RUNS_BIG:
            quiet(out)
            out["seed_big"] = seed_search_runs(srv, N_RUNS_BIG, "bench-search-big")
            log(f"seeded {N_RUNS_BIG} runs in {out['seed_big']['seconds']:.1f} s")
            quiet(out)
            out["search_big"] = measure_search(srv, out["seed_big"]["experiment_id"])
        out["memory_end"] = srv.memory()
        log(f"at the end: {out['memory_end']['rss_bytes'] / 1e6:.1f} MB RSS")
        db = [p for p in srv.dir.rglob("*.db")]
        out["db_bytes"] = sum(p.stat().st_size for p in db)
    finally:
        srv.stop()
    out["elapsed_s"] = time.perf_counter() - started
    a.out.write_text(json.dumps(out, indent=1))
    log(f"{a.kind} done in {out['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
