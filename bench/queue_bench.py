"""Trial-queue benchmark of spotsweep: lease → complete throughput, queue integrity, long-poll latency.

bench/queue.sh runs it (and bench/optuna_bench.py for the Optuna anchor), then `report` puts both
JSON files into one markdown table. Subcommands:

  spotsweep --bin BIN --work DIR --out FILE   start a fresh daemon on SQLite and measure it
  spotsweep-pg --bin BIN --work DIR --out FILE --database-url URL [--daemons 3]
                                              the same load over several daemons on one PostgreSQL
                                              database, and long polls woken from another daemon
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
# A diagnostic pass: the same load again while two nice-19 spin loops keep both cores from going
# idle, to show how much of the time is threads waking up on idle (virtual) CPUs. 0 skips it.
SPIN_WINDOW_S = float(os.environ.get("QUEUE_SPIN_WINDOW_S", "8"))
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


STAT_COLS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]


def machine_cpu() -> list[int]:
    """The machine's jiffies by kind (STAT_COLS), from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def machine_usage(m0: list[int], m1: list[int]) -> dict:
    """Per kind of time between two machine_cpu() samples, in % of one core (200% = 2 busy cores);
    `busy` is everything but idle and iowait."""
    d = [b - a for a, b in zip(m0, m1)]
    scale = 100 * os.cpu_count() / max(1, sum(d))
    out = {k: v * scale for k, v in zip(STAT_COLS, d)}
    out["busy"] = sum(v for k, v in out.items() if k not in ("idle", "iowait"))
    return out


def all_procs_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, cpu seconds) of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{d}/stat") as f:
                    raw = f.read()
                name = raw[raw.index("(") + 1:raw.rindex(")")]
                fields = raw.rsplit(")", 1)[1].split()
                out[int(d)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def threads_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, cpu seconds) of every thread of a process now."""
    out = {}
    for d in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/task/{d}/stat") as f:
                raw = f.read()
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            out[int(d)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def threads_by_name(t0: dict, t1: dict, seconds: float) -> list[dict]:
    """CPU of a process's threads between two threads_cpu() samples, summed by thread name (with
    trailing digits dropped), in % of one core, busiest first."""
    groups: dict[str, list] = {}
    for tid, (name, c1) in t1.items():
        key = re.sub(r"[-_ ]?\d+$", "", name) or name
        g = groups.setdefault(key, [0, 0.0, 0.0])
        g[0] += 1
        g[1] += c1 - t0.get(tid, (name, 0.0))[1]
        g[2] = max(g[2], c1 - t0.get(tid, (name, 0.0))[1])
    return sorted(({"name": k, "threads": v[0], "cpu_pct": 100 * v[1] / seconds,
                    "busiest_thread_pct": 100 * v[2] / seconds} for k, v in groups.items()),
                  key=lambda r: -r["cpu_pct"])


def others_cpu_pct(p0: dict, p1: dict, seconds: float, mine: set[int]) -> float:
    """CPU used by every process not in `mine` (nor a child of this driver) between two
    all_procs_cpu() samples, in % of one core: another job on the machine skews the figures."""
    total = 0.0
    for pid, (name, c1) in p1.items():
        if pid not in mine:
            total += c1 - p0.get(pid, (name, 0.0))[1]
    return 100 * total / seconds


def wait_quiet(limit_s: float = float(os.environ.get("QUEUE_QUIET_WAIT", "60"))) -> float:
    """Waits (up to limit_s) until the machine is idle (under 25% of one core busy over 2 s), so
    another job does not skew the figures. Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        m0, p0 = machine_cpu(), all_procs_cpu()
        time.sleep(2)
        m1, p1 = machine_cpu(), all_procs_cpu()
        busy = machine_usage(m0, m1)["busy"]
        if busy < 25:
            return time.monotonic() - t0
        top = ", ".join(f"{r['name']}({r['pid']}) {r['cpu_pct']:.0f}%" for r in top_procs(p0, p1, 2, 3))
        if time.monotonic() - t0 > limit_s:
            log(f"warning: the machine is still {busy:.0f}% busy after {limit_s:.0f} s ({top}); going on")
            return time.monotonic() - t0
        log(f"machine {busy:.0f}% busy (of {os.cpu_count() * 100}%: {top}); waiting for it to calm down")
        time.sleep(3)


def top_procs(p0: dict, p1: dict, seconds: float, n: int = 6) -> list[dict]:
    """The processes that used the most CPU between two all_procs_cpu() samples (% of one core)."""
    rows = []
    for pid, (name, c1) in p1.items():
        c0 = p0.get(pid, (name, 0.0))[1]
        if c1 - c0 > 0:
            rows.append({"pid": pid, "name": name, "cpu_pct": 100 * (c1 - c0) / seconds})
    return sorted(rows, key=lambda r: -r["cpu_pct"])[:n]


# ------------------------------------------------------------------------------ the server


class Server:
    def __init__(self, binary: str, work: Path, database_url: str | None = None, token: str | None = None):
        self.binary = str(Path(binary).resolve())
        self.dir = Path(tempfile.mkdtemp(prefix="queue-spotsweep-", dir=work))
        self.pgid_file = self.dir / "spotsweep.pgid"
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.token = ""
        self.database_url = database_url
        if token:  # a replica: the first daemon on the database wrote the admin token
            (self.dir / "data").mkdir(parents=True)
            (self.dir / "data" / "admin.token").write_text(token + "\n")

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSWEEP_", "MLFLOW_", "QUEUE_"))}
        env.setdefault("RUST_LOG", "warn")
        self.log_path = self.dir / "server.log"
        logf = open(self.log_path, "wb")
        cmd = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.dir / "data")]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        # queue.sh's cleanup stops whatever a crashed driver left.
        (self.work / f"spotsweep-{self.port}.pgid").write_text(str(self.proc.pid))
        self.pgid_file = self.work / f"spotsweep-{self.port}.pgid"
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


def client_proc(idx: int, ports: list[int], token: str, sweep_id: int, wids: list[int], ready, go, shared,
                out) -> None:
    async def main() -> dict:
        # Worker w talks to daemon w mod n all along, as an agent behind a load balancer keeps
        # its connection.
        conns = [Conn(ports[w % len(ports)], token) for w in wids]
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


def run_load(server: Server | list[Server], sweep_id: int, window_s: float = WINDOW_S) -> dict:
    servers = server if isinstance(server, list) else [server]
    server = servers[0]
    ports = [s.port for s in servers]
    server_pids = {s.proc.pid for s in servers}
    ctx = mp.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shared = ctx.Array("d", 3, lock=False)
    procs = []
    for i in range(CLIENT_PROCS):
        wids = list(range(i, WORKERS, CLIENT_PROCS))
        p = ctx.Process(target=client_proc,
                        args=(i, ports, server.token, sweep_id, wids, ready, go, shared, out), daemon=True)
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=60)
    start_at = time.monotonic() + 0.3
    window_from = start_at + WARMUP_S
    deadline = window_from + window_s
    shared[0], shared[1], shared[2] = start_at, window_from, deadline
    go.set()
    time.sleep(max(0.0, window_from - time.monotonic()))
    s0, m0, p0, th0 = sum(s.cpu_s() for s in servers), machine_cpu(), all_procs_cpu(), threads_cpu(server.proc.pid)
    t0 = time.monotonic()
    time.sleep(max(0.0, deadline - time.monotonic()))
    s1, m1, p1, th1 = sum(s.cpu_s() for s in servers), machine_cpu(), all_procs_cpu(), threads_cpu(server.proc.pid)
    t1 = time.monotonic()
    client_pids = {p.pid for p in procs}
    others = others_cpu_pct(p0, p1, t1 - t0, client_pids | server_pids | {os.getpid()})
    top = top_procs(p0, p1, t1 - t0)
    for row in top:
        row["role"] = ("spotsweep server" if row["pid"] in server_pids
                       else "load generator" if row["pid"] in client_pids
                       else "bench driver" if row["pid"] == os.getpid() else "other")
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    completed_at = [t for r in results for t in r["completed_at"]]
    in_window = sum(1 for t in completed_at if window_from <= t < deadline)
    per_s = [0] * int(deadline - start_at + 1)  # completions in each second since the start
    for t in completed_at:
        if start_at <= t < deadline:
            per_s[int(t - start_at)] += 1
    client_cpu = sum(r["cpu"]["to"][1] - r["cpu"]["from"][1] for r in results)
    return {
        "workers": WORKERS,
        "daemons": len(servers),
        "client_procs": CLIENT_PROCS,
        "warmup_s": WARMUP_S,
        "window_s": window_s,
        "completed_in_window": in_window,
        "trials_per_s": in_window / window_s,
        "total_completed": len(completed_at),
        "per_second": per_s,
        "total_s": max(completed_at) - start_at if completed_at else 0,
        "server_cpu_pct": 100 * (s1 - s0) / (t1 - t0),
        "client_cpu_pct": 100 * client_cpu / window_s,
        "machine": machine_usage(m0, m1),
        "machine_busy_pct": machine_usage(m0, m1)["busy"],
        "top_processes": top,
        "others_cpu_pct": others,
        "server_threads": threads_by_name(th0, th1, t1 - t0),
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


def long_poll_bench(server: Server, trigger_on: Server | None = None) -> dict:
    """Long polls on `server`, made to answer by requests to `trigger_on` (another daemon on the
    same database), or to `server` itself."""
    sess = (trigger_on or server).session()
    url = (trigger_on or server).url
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
        quiet_s = wait_quiet()
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
        spin = None
        if SPIN_WINDOW_S > 0:
            log(f"diagnostic: the same load for {SPIN_WINDOW_S:g} s on a new sweep while two nice-19 spin loops "
                "keep both cores busy")
            spin_sweep = create_sweep(sess, server.url, "queue-bench-spin", MAX_TRIALS, WORKERS)
            # Bounded by `timeout` and in their own groups, which queue.sh's cleanup kills too.
            spinners = [subprocess.Popen(["timeout", str(int(SPIN_WINDOW_S + 60)), "nice", "-n", "19",
                                          "sh", "-c", "while :; do :; done"], start_new_session=True)
                        for _ in range(os.cpu_count() or 2)]
            for i, p in enumerate(spinners):
                (work / f"spin-{i}.pgid").write_text(str(p.pid))
            try:
                spin = run_load(server, spin_sweep, SPIN_WINDOW_S)
            finally:
                for i, p in enumerate(spinners):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    (work / f"spin-{i}.pgid").unlink(missing_ok=True)
            spin["integrity"] = verify(server, spin_sweep, spin)
            for k in ("leased", "completed"):
                spin.pop(k)
            log(f"  {spin['trials_per_s']:.0f} trials/s; server CPU {spin['server_cpu_pct']:.0f}%, "
                f"integrity {'ok' if spin['integrity']['ok'] else 'FAILED'}")
        for k in ("leased", "completed"):
            load.pop(k)
        result = {"quiet_wait_s": quiet_s, "load": load, "spin": spin, "integrity": check, "long_poll": lp,
                  "db_bytes": sum(f.stat().st_size for f in (server.dir / "data").rglob("*") if f.is_file())}
    finally:
        server.stop()
    Path(args.out).write_text(json.dumps(result, indent=1))


def cmd_spotsweep_pg(args) -> None:
    """Several daemons on one PostgreSQL database, the workers spread over them."""
    work = Path(args.work)
    servers = [Server(args.bin, work, args.database_url)]
    try:
        log(f"starting {args.daemons} spotsweep daemons on one PostgreSQL database")
        servers[0].start()
        for _ in range(args.daemons - 1):
            servers.append(Server(args.bin, work, args.database_url, token=servers[0].token))
            servers[-1].start()
        sess = servers[0].session()
        sweep_id = create_sweep(sess, servers[0].url, "queue-bench-pg", MAX_TRIALS, WORKERS)
        quiet_s = wait_quiet()
        log(f"load: {WORKERS} workers over {len(servers)} daemons in {CLIENT_PROCS} client processes, "
            f"lease → complete, {WARMUP_S:g} s warm-up + {WINDOW_S:g} s window")
        load = run_load(servers, sweep_id)
        log(f"  {load['trials_per_s']:.0f} trials/s ({load['completed_in_window']} in the window); "
            f"daemons' CPU {load['server_cpu_pct']:.0f}%, client CPU {load['client_cpu_pct']:.0f}%")
        check = verify(servers[-1], sweep_id, load)
        log(f"  integrity: {'ok' if check['ok'] else 'FAILED: ' + '; '.join(check['problems'])} "
            f"({check['trials']} trials)")
        log(f"long poll on one daemon, woken by another: {POLLS} × slot freed, {POLLS} × sweep resumed")
        lp = long_poll_bench(servers[0], trigger_on=servers[1 % len(servers)])
        for k, v in lp.items():
            log(f"  {k}: p50 {statistics.median(v['ms_from_send']):.1f} ms, max {max(v['ms_from_send']):.1f} ms")
        for k in ("leased", "completed"):
            load.pop(k)
        result = {"quiet_wait_s": quiet_s, "load": load, "integrity": check, "long_poll": lp}
    finally:
        for server in servers:
            server.stop()
    Path(args.out).write_text(json.dumps(result, indent=1))
    L = result["load"]
    lines = [
        f"| daemons | workers | trials/s | integrity | trials | long poll p50, slot freed elsewhere | "
        "sweep resumed elsewhere |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        f"| {L['daemons']} | {L['workers']} | {L['trials_per_s']:,.0f} | "
        f"{'ok' if check['ok'] else 'FAILED'} | {check['trials']:,} | "
        f"{statistics.median(lp['slot_freed']['ms_from_send']):.1f} ms | "
        f"{statistics.median(lp['sweep_resumed']['ms_from_send']):.1f} ms |",
    ]
    print("\n".join(lines))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def sh_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


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
    L = sp["load"] if sp else {}
    I = sp["integrity"] if sp else {}

    def g(d, k, f="{:.0f}"):
        return f.format(d[k]) if d and d.get(k) is not None else dash

    lines = ["# Trial-queue benchmark", ""]
    lines += [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
              f"- command: `{args.command}` ({args.elapsed} s in all)",
              f"- machine: {machine_lines()[0]}",
              f"- spotsweep: `target/release/spotsweep serve` on SQLite (fresh data dir), {args.build}",
              "- storage: every SQLite file in a temp dir under /tmp "
              f"({sh_out(['findmnt', '-no', 'FSTYPE', '-T', tempfile.gettempdir()]) or '?'}), loopback HTTP only",
              "- waited for a quiet machine: "
              + ", ".join(f"{k} {d.get('quiet_wait_s', 0):.0f} s" for k, d in (("spotsweep", sp), ("Optuna", op)) if d)]
    if op:
        lines.append(f"- anchor: Optuna {op['optuna_version']} (SQLAlchemy {op['sqlalchemy_version']}), "
                     f"{op['procs']} processes sharing one `RDBStorage(\"sqlite:///…\")` file, RandomSampler, "
                     + ("`study.optimize`" if op.get("loop") == "optimize" else "ask/tell loop")
                     + " on `x ** 2`, in `.venv-queue` (bench/queue-requirements.txt)")
    lines += ["", "## Throughput: lease → complete", "",
              "| | spotsweep (HTTP API, SQLite) | Optuna (shared SQLite file) | goal |",
              "|---|---|---|---|"]
    lines.append(f"| **trials/s** | **{g(L, 'trials_per_s')}** | **{g(op, 'trials_per_s', '{:.1f}')}** "
                 "| spotsweep ≥ 1,000 |")
    if sp and op and op.get("trials_per_s"):
        lines.append(f"| ratio | {L['trials_per_s'] / op['trials_per_s']:.0f}× Optuna | 1× | |")
    lines.append(f"| workers | {g(L, 'workers')} simulated workers, one keep-alive connection each "
                 f"(asyncio, {g(L, 'client_procs')} client processes), `wait_ms` 0 | "
                 f"{g(op, 'procs')} processes | |")
    lines.append(f"| trials counted | {g(L, 'completed_in_window')} completed in a {g(L, 'window_s', '{:g}')} s "
                 f"window after {g(L, 'warmup_s', '{:g}')} s warm-up | {g(op, 'completed_in_window')} completed in "
                 f"a {g(op, 'window_s', '{:g}')} s window after {g(op, 'warmup_s', '{:g}')} s warm-up | |")
    if sp:
        integ = "ok" if I["ok"] else "**FAILED**: " + "; ".join(I["problems"])
        sp_int = (f"{integ}: {I['trials']} trials, numbers 0..{I['trials'] - 1} once each in "
                  f"`GET /sweeps/{{id}}/trials`, all completed, each leased once (attempts = 1); "
                  f"{I['client_200_completions']} completions answered 200 = {I['completed_count']} completed "
                  f"in the sweep's counts; {L['n_lease_errors']} lease / {L['n_complete_errors']} completion "
                  f"errors, {L['empty_leases']} empty leases")
    else:
        sp_int = dash
    lines.append(f"| integrity (all trials of the run) | {sp_int} | {op['integrity'] if op else dash}"
                 f"{'; ' + str(op['errors']) + ' storage errors' if op else ''} | no lost or duplicated trial |")
    lines.append(f"| server CPU (% of one core) | {g(L, 'server_cpu_pct')}% | no server | |")
    lines.append(f"| client CPU (% of one core) | {g(L, 'client_cpu_pct')}% (load generator) | "
                 f"{g(op, 'cpu_pct')}% (the {g(op, 'procs')} Optuna processes) | |")
    lines.append(f"| machine busy (% of one core; 200% = both cores) | {g(L, 'machine_busy_pct')}% | "
                 f"{g(op, 'machine_busy_pct')}% | |")
    lines.append(f"| other processes on the machine meanwhile | {g(L, 'others_cpu_pct')}% | "
                 f"{g(op, 'others_cpu_pct')}% | ~0 |")
    S = sp.get("spin") if sp else None
    if S:
        lines.append(f"| diagnostic: the same load for {S['window_s']:g} s on a new sweep while 2 nice-19 spin loops "
                     f"keep both cores from idling | {S['trials_per_s']:.0f} trials/s (server CPU "
                     f"{S['server_cpu_pct']:.0f}%, client {S['client_cpu_pct']:.0f}%; integrity "
                     f"{'ok' if S['integrity']['ok'] else 'FAILED'}, {S['integrity']['trials']} trials) | | |")
    if op and op.get("errors"):
        lines.append(f"| Optuna storage errors | | {op['errors']} (e.g. `{op['error_examples'][0]}`) | |")
    if sp:
        lines += ["", f"## Long-poll latency (spotsweep, `POST /api/v1/leases` with `wait_ms` {POLL_WAIT_MS})", "",
                  "An idle client long-polls a sweep with no available trial; once it has waited "
                  f"{PARK_S * 1000:.0f} ms, another client makes a trial available. Latency: from just before "
                  "that call is sent until the long poll has returned the lease (in brackets: from when that "
                  "call's own answer came back).", "",
                  "| trial made available by | n | p50 | p90 | max | goal |", "|---|---|---|---|---|---|"]
        names = {"slot_freed": "completing the running trial of a sweep at parallelism 1 (`…/complete`)",
                 "sweep_resumed": "resuming a paused sweep (`…/resume`)"}
        for k, v in sp["long_poll"].items():
            a, b = v["ms_from_send"], v["ms_from_answer"]
            lines.append(f"| {names.get(k, k)} | {len(a)} | {statistics.median(a):.1f} ms ({statistics.median(b):.1f}) "
                         f"| {pct(a, 90):.1f} ms ({pct(b, 90):.1f}) | {max(a):.1f} ms ({max(b):.1f}) | ≤ 50 ms |")
    if sp:
        th = ", ".join(f"{t['name']} ×{t['threads']} {t['cpu_pct']:.0f}%"
                       + (f" (busiest {t['busiest_thread_pct']:.0f}%)" if t["threads"] > 1 else "")
                       for t in L["server_threads"] if t["cpu_pct"] >= 1)
        mu = L["machine"]
        lines += ["", "## Where the time goes (spotsweep window)", "",
                  f"- server threads (% of one core): {th}",
                  f"- machine (% of one core): user {mu['user'] + mu['nice']:.0f}%, system {mu['system']:.0f}%, "
                  f"softirq {mu['softirq']:.0f}%, iowait {mu['iowait']:.0f}%, steal {mu['steal']:.0f}%, "
                  f"idle {mu['idle']:.0f}%",
                  "- busiest processes: " + ", ".join(f"{r['name']} ({r['role']}) {r['cpu_pct']:.0f}%"
                                                      for r in L["top_processes"])]
        ps = L.get("per_second") or []
        if len(ps) > 2:
            lines.append(f"- trials completed in each second since the start (warm-up included): {ps[:-1]}")
        if S:
            lines.append(f"- with both cores kept busy by spin loops (no idle CPU to wake up) the same server did "
                         f"{S['trials_per_s']:.0f} trials/s against {L['trials_per_s']:.0f} on the quiet machine: "
                         "so the quiet-machine figure is limited by threads waking up on idle CPUs (each SQL statement "
                         "of the single writer is a hand-off from a tokio worker to the SQLite writer thread and back), "
                         "not by CPU: server CPU per trial was "
                         f"{10 * L['server_cpu_pct'] / max(1, L['trials_per_s']):.2f} ms quiet, "
                         f"{10 * S['server_cpu_pct'] / max(1, S['trials_per_s']):.2f} ms with the spin loops")
        if L["trials_per_s"] < 1000:
            lines.append(f"- below 1,000 trials/s: the server used {L['server_cpu_pct']:.0f}% of a core and the "
                         f"client {L['client_cpu_pct']:.0f}%, with {mu['idle'] + mu['iowait']:.0f}% of the "
                         f"machine's 200% idle")
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
    g = sub.add_parser("spotsweep-pg")
    g.add_argument("--bin", required=True)
    g.add_argument("--work", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--database-url", required=True)
    g.add_argument("--daemons", type=int, default=3)
    r = sub.add_parser("report")
    r.add_argument("--spotsweep")
    r.add_argument("--optuna")
    r.add_argument("--command", default="bench/queue.sh")
    r.add_argument("--build", default="")
    r.add_argument("--elapsed", default="?")
    r.add_argument("--save")
    args = ap.parse_args()
    {"spotsweep": cmd_spotsweep, "spotsweep-pg": cmd_spotsweep_pg, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
