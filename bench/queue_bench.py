"""Trial-queue benchmark of spotsweep: lease → complete throughput, queue integrity, long-poll latency.

bench/queue.sh runs it (and bench/optuna_bench.py for the Optuna anchor), then `report` puts both
JSON files into one markdown table. Subcommands:

  spotsweep --bin BIN --work DIR --out FILE   start a fresh daemon on SQLite and measure it
  report --spotsweep FILE --optuna FILE ...   print the table (and --save it)

The load generator is not Python threads: QUEUE_CLIENT_PROCS processes (default 2), each an
asyncio loop over raw keep-alive HTTP/1.1 connections (one connection per simulated worker,
hand-written requests and a minimal response parser), so that the client costs little CPU on a
2-core machine. Its CPU use is measured and reported next to the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import platform
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

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKERS = int(os.environ.get("QUEUE_WORKERS", "64"))
CLIENT_PROCS = int(os.environ.get("QUEUE_CLIENT_PROCS", "2"))
WARMUP_S = float(os.environ.get("QUEUE_WARMUP_S", "2"))
WINDOW_S = float(os.environ.get("QUEUE_WINDOW_S", "15"))
POLLS = int(os.environ.get("QUEUE_POLLS", "20"))
POLL_WAIT_MS = 20_000
PARK_S = 0.3  # how long the idle client's long poll sits in the server before the trigger
MAX_TRIALS = 1_000_000  # never reached in the window: the window, not the sweep, ends the run
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals[:8])
    return total - idle, total


# ------------------------------------------------------------------------------ the server


class Server:
    def __init__(self, binary: str, work: Path):
        self.binary = str(Path(binary).resolve())
        self.dir = Path(tempfile.mkdtemp(prefix="queue-spotsweep-", dir=work))
        self.pgid_file = work / "spotsweep.pgid"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSWEEP_", "MLFLOW_", "QUEUE_"))}
        env.setdefault("RUST_LOG", "warn")
        self.log_path = self.dir / "server.log"
        logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.dir / "data")],
            cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pgid_file.write_text(str(self.proc.pid))
        token_file = self.dir / "data" / "admin.token"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spotsweep exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if token_file.exists() and token_file.read_text().strip():
                with contextlib.suppress(requests.RequestException):
                    if requests.get(self.url + "/health", timeout=2).status_code == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"spotsweep not up after {timeout}s:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.02)
        self.token = token_file.read_text().strip()

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

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
            self.proc.wait()
        self.proc = None
        self.pgid_file.unlink(missing_ok=True)


def create_sweep(sess: requests.Session, url: str, name: str, max_trials: int, parallelism: int) -> int:
    spec = {
        "name": name,
        "command": "true",
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss"},
        "max_trials": max_trials,
        "parallelism": parallelism,
    }
    r = sess.post(f"{url}/api/v1/sweeps", json=spec, timeout=30)
    r.raise_for_status()
    return r.json()["id"]


# ------------------------------------------------------------------------------ load generator


class Conn:
    """One keep-alive HTTP/1.1 connection with hand-written requests (JSON bodies, Content-Length
    responses), cheap enough that 64 of them in Python do not limit the server."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.head = (f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n").encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head
                          + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if length is not None:
            return status, await self.reader.readexactly(length)
        if chunked:
            out = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    return status, bytes(out)
                out += data[:-2]
        raise RuntimeError(f"response without a length: {head!r}")

    def close(self) -> None:
        self.writer.close()


async def worker(conn: Conn, wid: int, sweep_id: int, deadline: float, st: dict) -> None:
    lease_req = json.dumps({"agent_id": f"w{wid}", "slots": 1, "sweep_id": sweep_id, "wait_ms": 0}).encode()
    rnd = random.Random(wid)
    while time.monotonic() < deadline:
        status, body = await conn.post("/api/v1/leases", lease_req)
        if status != 200:
            st["lease_errors"].append(f"{status} {body[:200]!r}")
            await asyncio.sleep(0.01)
            continue
        leases = json.loads(body)["leases"]
        if not leases:
            st["empty_leases"] += 1
            await asyncio.sleep(0.001)
            continue
        lease = leases[0]
        number = lease["trial"]["number"]
        st["leased"].append(number)
        done = json.dumps({"outcome": "succeeded", "value": rnd.random()}).encode()
        status, body = await conn.post(f"/api/v1/leases/{lease['lease_id']}/complete", done)
        if status == 200 and json.loads(body).get("state") == "completed":
            st["completed"].append(number)
            st["completed_at"].append(time.monotonic())
        else:
            st["complete_errors"].append(f"{number}: {status} {body[:200]!r}")


def client_proc(idx: int, port: int, token: str, sweep_id: int, wids: list[int], ready, go, shared, out) -> None:
    async def main() -> dict:
        conns = [Conn(port, token) for _ in wids]
        for c in conns:
            await c.open()
        ready.put(idx)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        start_at, window_from, deadline = shared[0], shared[1], shared[2]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        st = {"leased": [], "completed": [], "completed_at": [], "lease_errors": [],
              "complete_errors": [], "empty_leases": 0, "cpu": {}}
        loop = asyncio.get_running_loop()

        def sample(tag: str) -> None:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            st["cpu"][tag] = (time.monotonic(), ru.ru_utime + ru.ru_stime)

        loop.call_at(loop.time() + (window_from - time.monotonic()), sample, "from")
        loop.call_at(loop.time() + (deadline - time.monotonic()), sample, "to")
        await asyncio.gather(*(worker(c, w, sweep_id, deadline, st) for c, w in zip(conns, wids)))
        sample("end")
        for c in conns:
            c.close()
        return st

    out.put(asyncio.run(main()))


def run_load(server: Server, sweep_id: int) -> dict:
    ctx = mp.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shared = ctx.Array("d", 3, lock=False)
    procs = []
    for i in range(CLIENT_PROCS):
        wids = list(range(i, WORKERS, CLIENT_PROCS))
        p = ctx.Process(target=client_proc,
                        args=(i, server.port, server.token, sweep_id, wids, ready, go, shared, out), daemon=True)
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=60)
    start_at = time.monotonic() + 0.3
    window_from = start_at + WARMUP_S
    deadline = window_from + WINDOW_S
    shared[0], shared[1], shared[2] = start_at, window_from, deadline
    go.set()
    time.sleep(max(0.0, window_from - time.monotonic()))
    s0, m0 = server.cpu_s(), machine_cpu()
    t0 = time.monotonic()
    time.sleep(max(0.0, deadline - time.monotonic()))
    s1, m1 = server.cpu_s(), machine_cpu()
    t1 = time.monotonic()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    completed_at = [t for r in results for t in r["completed_at"]]
    in_window = sum(1 for t in completed_at if window_from <= t < deadline)
    client_cpu = sum(r["cpu"]["to"][1] - r["cpu"]["from"][1] for r in results)
    return {
        "workers": WORKERS,
        "client_procs": CLIENT_PROCS,
        "warmup_s": WARMUP_S,
        "window_s": WINDOW_S,
        "completed_in_window": in_window,
        "trials_per_s": in_window / WINDOW_S,
        "total_completed": len(completed_at),
        "total_s": max(completed_at) - start_at if completed_at else 0,
        "server_cpu_pct": 100 * (s1 - s0) / (t1 - t0),
        "client_cpu_pct": 100 * client_cpu / WINDOW_S,
        "machine_busy_pct": 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * os.cpu_count(),
        "leased": sorted(n for r in results for n in r["leased"]),
        "completed": sorted(n for r in results for n in r["completed"]),
        "lease_errors": [e for r in results for e in r["lease_errors"]][:20],
        "n_lease_errors": sum(len(r["lease_errors"]) for r in results),
        "complete_errors": [e for r in results for e in r["complete_errors"]][:20],
        "n_complete_errors": sum(len(r["complete_errors"]) for r in results),
        "empty_leases": sum(r["empty_leases"] for r in results),
    }


def verify(server: Server, sweep_id: int, load: dict) -> dict:
    sess = server.session()
    trials = sess.get(f"{server.url}/api/v1/sweeps/{sweep_id}/trials", timeout=120).json()["trials"]
    sweep = sess.get(f"{server.url}/api/v1/sweeps/{sweep_id}", timeout=30).json()
    numbers = [t["number"] for t in trials]
    n = len(trials)
    problems = []
    if numbers != list(range(n)):
        missing = sorted(set(range(n)) - set(numbers))
        dup = n - len(set(numbers))
        problems.append(f"trial numbers are not 0..{n - 1} once each ({len(missing)} missing, {dup} duplicated)")
    if sweep["trials_created"] != n:
        problems.append(f"trials_created = {sweep['trials_created']} but {n} trials listed")
    not_done = [t["number"] for t in trials if t["state"] != "completed"]
    if not_done:
        problems.append(f"{len(not_done)} trials not completed (e.g. {not_done[:5]})")
    again = [t["number"] for t in trials if t["attempts"] != 1]
    if again:
        problems.append(f"{len(again)} trials leased more than once (e.g. {again[:5]})")
    if load["leased"] != list(range(n)):
        problems.append(f"the workers' leases are not trials 0..{n - 1} once each "
                        f"({len(load['leased'])} leases, {len(set(load['leased']))} distinct)")
    if load["completed"] != list(range(n)):
        problems.append(f"the workers' 200 completions are not trials 0..{n - 1} once each "
                        f"({len(load['completed'])} completions, {len(set(load['completed']))} distinct)")
    completed_count = sweep["counts"]["completed"]
    if len(load["completed"]) != completed_count:
        problems.append(f"{len(load['completed'])} completions got 200 but the sweep counts {completed_count}")
    if load["n_lease_errors"] or load["n_complete_errors"]:
        problems.append(f"{load['n_lease_errors']} lease errors, {load['n_complete_errors']} completion errors")
    return {
        "trials": n,
        "completed_count": completed_count,
        "client_200_completions": len(load["completed"]),
        "running_left": sweep["counts"]["running"],
        "ok": not problems,
        "problems": problems,
    }


# ------------------------------------------------------------------------------ long poll


def long_poll_once(server: Server, sweep_id: int, trigger) -> tuple[float, float, dict]:
    """An idle client long-polls the sweep; after PARK_S, `trigger()` makes a trial available.
    Returns (ms from just before the trigger was sent, ms from when its answer came back, lease)."""
    box: dict = {}
    sess = server.session()

    def poll() -> None:
        r = sess.post(f"{server.url}/api/v1/leases",
                      json={"agent_id": "idle-agent", "slots": 1, "sweep_id": sweep_id, "wait_ms": POLL_WAIT_MS},
                      timeout=POLL_WAIT_MS / 1000 + 10)
        box["t"] = time.perf_counter()
        box["r"] = r

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(PARK_S)
    if "t" in box:
        raise RuntimeError(f"the long poll returned before the trigger: {box['r'].status_code} {box['r'].text[:200]}")
    t_send = time.perf_counter()
    trigger()
    t_back = time.perf_counter()
    th.join()
    sess.close()
    r = box["r"]
    r.raise_for_status()
    leases = r.json()["leases"]
    if not leases:
        raise RuntimeError("the long poll returned no lease after the trigger")
    return 1000 * (box["t"] - t_send), 1000 * (box["t"] - t_back), leases[0]


def long_poll_bench(server: Server) -> dict:
    sess = server.session()
    url = server.url
    out = {}

    # (a) parallelism reached: a holder has the only slot; completing its trial frees the slot.
    sid = create_sweep(sess, url, "longpoll-slot", MAX_TRIALS, 1)
    r = sess.post(f"{url}/api/v1/leases", json={"agent_id": "holder", "slots": 1, "sweep_id": sid, "wait_ms": 0})
    held = r.json()["leases"][0]
    lat, lat_back = [], []
    for _ in range(POLLS):
        lease_id = held["lease_id"]

        def free_slot() -> None:
            sess.post(f"{url}/api/v1/leases/{lease_id}/complete",
                      json={"outcome": "succeeded", "value": 0.5}).raise_for_status()

        a, b, held = long_poll_once(server, sid, free_slot)
        lat.append(a)
        lat_back.append(b)
    out["slot_freed"] = {"ms_from_send": lat, "ms_from_answer": lat_back}

    # (b) a paused sweep is resumed.
    sid = create_sweep(sess, url, "longpoll-resume", MAX_TRIALS, 64)
    sess.post(f"{url}/api/v1/sweeps/{sid}/pause").raise_for_status()
    lat, lat_back = [], []
    for _ in range(POLLS):
        def resume() -> None:
            sess.post(f"{url}/api/v1/sweeps/{sid}/resume").raise_for_status()

        a, b, lease = long_poll_once(server, sid, resume)
        lat.append(a)
        lat_back.append(b)
        sess.post(f"{url}/api/v1/sweeps/{sid}/pause").raise_for_status()
        sess.post(f"{url}/api/v1/leases/{lease['lease_id']}/complete",
                  json={"outcome": "succeeded", "value": 0.5}).raise_for_status()
    out["sweep_resumed"] = {"ms_from_send": lat, "ms_from_answer": lat_back}
    return out


# ------------------------------------------------------------------------------ commands


def cmd_spotsweep(args) -> None:
    work = Path(args.work)
    server = Server(args.bin, work)
    try:
        log(f"starting spotsweep on 127.0.0.1:{server.port} (SQLite in {server.dir})")
        server.start()
        sess = server.session()
        sweep_id = create_sweep(sess, server.url, "queue-bench", MAX_TRIALS, WORKERS)
        log(f"load: {WORKERS} workers in {CLIENT_PROCS} client processes, lease → complete, "
            f"{WARMUP_S:g} s warm-up + {WINDOW_S:g} s window")
        load = run_load(server, sweep_id)
        log(f"  {load['trials_per_s']:.0f} trials/s ({load['completed_in_window']} in the window); "
            f"server CPU {load['server_cpu_pct']:.0f}%, client CPU {load['client_cpu_pct']:.0f}%")
        check = verify(server, sweep_id, load)
        log(f"  integrity: {'ok' if check['ok'] else 'FAILED: ' + '; '.join(check['problems'])} "
            f"({check['trials']} trials)")
        log(f"long poll: {POLLS} × slot freed, {POLLS} × sweep resumed (wait_ms {POLL_WAIT_MS})")
        lp = long_poll_bench(server)
        for k, v in lp.items():
            log(f"  {k}: p50 {statistics.median(v['ms_from_send']):.1f} ms, max {max(v['ms_from_send']):.1f} ms")
        for k in ("leased", "completed"):
            load.pop(k)
        result = {"load": load, "integrity": check, "long_poll": lp,
                  "db_bytes": sum(f.stat().st_size for f in (server.dir / "data").rglob("*") if f.is_file())}
    finally:
        server.stop()
    Path(args.out).write_text(json.dumps(result, indent=1))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def machine_lines() -> list[str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    osname = "?"
    if Path("/etc/os-release").exists():
        m = re.search(r'PRETTY_NAME="([^"]*)"', Path("/etc/os-release").read_text())
        osname = m.group(1) if m else "?"
    return [f"{os.cpu_count()} × {cpu}; {mem_kb / 1024 / 1024:.1f} GiB; {osname}, Linux {platform.release()}; "
            f"Python {platform.python_version()}"]


def cmd_report(args) -> None:
    sp = json.loads(Path(args.spotsweep).read_text()) if args.spotsweep else None
    op = json.loads(Path(args.optuna).read_text()) if args.optuna else None
    dash = "—"
    lines = ["# Trial-queue benchmark", ""]
    lines += [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
              f"- command: `{args.command}` ({args.elapsed} s in all)",
              f"- machine: {machine_lines()[0]}",
              f"- spotsweep: `target/release/spotsweep serve` on SQLite, {args.build}"]
    if op:
        lines.append(f"- Optuna {op['optuna_version']} (SQLAlchemy {op['sqlalchemy_version']}), "
                     f"`RDBStorage(\"sqlite:///…\")`, RandomSampler, ask/tell loop on `x ** 2`, in `.venv-queue`")
    lines.append("")
    lines += ["## Throughput: lease → complete", "",
              "| | spotsweep (HTTP API, SQLite) | Optuna anchor (shared SQLite file) | goal |",
              "|---|---|---|---|"]
    L = sp["load"] if sp else {}
    I = sp["integrity"] if sp else {}

    def g(d, k, f="{:.0f}"):
        return f.format(d[k]) if d and d.get(k) is not None else dash

    lines.append(f"| **trials/s** | **{g(L, 'trials_per_s')}** | **{g(op, 'trials_per_s', '{:.1f}')}** | ≥ 1,000 (spotsweep) |")
    if sp and op and op.get("trials_per_s"):
        lines.append(f"| ratio | {L['trials_per_s'] / op['trials_per_s']:.0f}× Optuna | 1× | |")
    lines.append(f"| workers | {g(L, 'workers')} simulated workers (one keep-alive connection each, "
                 f"in {g(L, 'client_procs')} asyncio client processes) | "
                 f"{g(op, 'procs')} processes | |")
    lines.append(f"| trials counted | {g(L, 'completed_in_window')} completed in a {g(L, 'window_s', '{:g}')} s window "
                 f"after {g(L, 'warmup_s', '{:g}')} s warm-up | {g(op, 'completed_in_window')} completed in a "
                 f"{g(op, 'window_s', '{:g}')} s window after {g(op, 'warmup_s', '{:g}')} s warm-up | |")
    if sp:
        integ = ("ok" if I["ok"] else "**FAILED**: " + "; ".join(I["problems"]))
        lines.append(f"| integrity (all trials of the run) | {integ}: {I['trials']} trials, numbers 0..{I['trials'] - 1} "
                     f"once each in `GET /sweeps/{{id}}/trials`, each completed with 1 attempt; "
                     f"{I['client_200_completions']} completions answered 200 = {I['completed_count']} completed; "
                     f"{L['n_lease_errors']} lease / {L['n_complete_errors']} completion errors, "
                     f"{L['empty_leases']} empty leases | "
                     f"{op['integrity'] if op else dash} | no lost or duplicated trial |")
    elif op:
        lines.append(f"| integrity | {dash} | {op['integrity']} | |")
    lines.append(f"| server CPU (% of one core) | {g(L, 'server_cpu_pct')}% | (no server: "
                 f"{g(op, 'cpu_pct')}% in the 4 Optuna processes) | |")
    lines.append(f"| client CPU (% of one core) | {g(L, 'client_cpu_pct')}% | {dash} | |")
    lines.append(f"| machine busy (% of one core; 200% = both cores) | {g(L, 'machine_busy_pct')}% | "
                 f"{g(op, 'machine_busy_pct')}% | |")
    if op and op.get("errors"):
        lines.append(f"| errors | 0 | {op['errors']} (e.g. {op['error_examples'][:1]}) | |")
    if sp:
        lines += ["", f"## Long-poll latency (spotsweep, `POST /api/v1/leases` with `wait_ms` {POLL_WAIT_MS})", "",
                  "An idle client long-polls a sweep with no available trial; after it has waited "
                  f"{PARK_S * 1000:.0f} ms, another client makes a trial available. Latency: from just before "
                  "that call is sent to the moment the long poll has the lease (in brackets: from the moment "
                  "that call's answer came back).", "",
                  "| trial made available by | n | p50 | p90 | max | goal |", "|---|---|---|---|---|---|"]
        names = {"slot_freed": "completing the running trial of a sweep at parallelism 1 (`…/complete`)",
                 "sweep_resumed": "resuming a paused sweep (`…/resume`)"}
        for k, v in sp["long_poll"].items():
            a, b = v["ms_from_send"], v["ms_from_answer"]
            lines.append(f"| {names.get(k, k)} | {len(a)} | {statistics.median(a):.1f} ms ({statistics.median(b):.1f}) | "
                         f"{pct(a, 90):.1f} ms ({pct(b, 90):.1f}) | {max(a):.1f} ms ({max(b):.1f}) | ≤ 50 ms |")
    if sp and L.get("trials_per_s", 0) < 1000:
        lines += ["", "Below 1,000 trials/s: in the window the server used "
                  f"{L['server_cpu_pct']:.0f}% of a core, the client {L['client_cpu_pct']:.0f}%, the machine "
                  f"{L['machine_busy_pct']:.0f}% of its 200%."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        Path(args.save).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("spotsweep")
    a.add_argument("--bin", required=True)
    a.add_argument("--work", required=True)
    a.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--spotsweep")
    r.add_argument("--optuna")
    r.add_argument("--command", default="bench/queue.sh")
    r.add_argument("--build", default="")
    r.add_argument("--elapsed", default="?")
    r.add_argument("--save")
    args = ap.parse_args()
    {"spotsweep": cmd_spotsweep, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
