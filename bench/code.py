"""Code snapshot benchmark: `spotsweep submit` of a spec with `workdir: .` over a tree of 5,000
files and 50 MB, against a daemon on loopback, timed from the command's start to its exit.

- changed code: one file edited before each submit, so the tree is packed (tar.gz, sha256) and
  uploaded whole, and the sweep created (goal: at most 2 s);
- unchanged code: the same tree submitted again: the CLI's index knows its id, the daemon
  answers the HEAD that it has it, nothing is packed or sent (goal: under 0.2 s);
- for comparison, unchanged code with an empty index: packed again to learn its id, not sent;
- a fleet: 10 agents, each a machine of its own (its own work directory and code cache), run a
  sweep of 100 trials in that snapshot (a script of the tree logs the loss through MLflow's REST
  API): the daemon sends the snapshot once per machine (goal: 10 downloads), each trial runs in
  its own copy.

The tree is made of text files (seeded pseudo-code from a small vocabulary) and a fifth of
binary files (seeded random bytes, which do not compress), in 50 directories.

Usage (after `cargo build --release -p spotsweep-cli`):

    python3 bench/code.py             # prints a markdown table
    python3 bench/code.py --save      # ... and writes bench/CODE-RESULTS.md
    python3 bench/code.py --bin target/debug/spotsweep --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The daemon's "code snapshot sent" log lines: one per download.
SENT: list[bytes] = []

TRAIN = '''
import json, os, sys, time, urllib.request
x = float(sys.argv[1])
body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": "loss", "value": (x - 0.5) ** 2,
        "timestamp": int(time.time() * 1000), "step": 0}
req = urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
    json.dumps(body).encode(),
    {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]},
    method="POST")
urllib.request.urlopen(req, timeout=30).read()
'''

WORDS = (
    "def class return import from self if else elif for while in not and or None True False "
    "lambda yield with as try except finally raise assert model loss optimizer step batch epoch "
    "tensor grad backward forward layer hidden dropout learning_rate config logger metrics"
).split()


def make_tree(root: Path, files: int, total_mb: int, seed: int = 7) -> int:
    """`files` files of `total_mb` MB in all under `root`; returns the bytes written."""
    rng = random.Random(seed)
    sizes = [rng.lognormvariate(0, 1) for _ in range(files)]
    scale = total_mb * 1_000_000 / sum(sizes)
    written = 0
    text_block = " ".join(rng.choice(WORDS) for _ in range(400_000)).encode()
    for i, weight in enumerate(sizes):
        size = max(1, int(weight * scale))
        path = root / f"pkg{i % 50:02d}" / f"module_{i:05d}.{'bin' if i % 5 == 4 else 'py'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 5 == 4:
            data = rng.randbytes(size)
        else:
            start = rng.randrange(0, len(text_block) - size) if size < len(text_block) else 0
            data = (text_block * (1 + size // len(text_block)))[start:start + size]
        path.write_bytes(data)
        written += len(data)
    return written


def start_daemon(binary: Path, data: Path) -> tuple[subprocess.Popen, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--mlflow-ui", "off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    found = threading.Event()
    url = {}

    def pump():
        for raw in iter(proc.stdout.readline, b""):
            if b"code snapshot sent" in raw:
                SENT.append(raw)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", raw.decode("utf-8", "replace"))
            if m and not found.is_set():
                url["url"] = m.group(1)
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(20):
        proc.kill()
        sys.exit("the daemon did not start")
    token = (data / "admin.token").read_text().strip()
    return proc, url["url"], token


def timed_submit(binary: Path, spec: Path, url: str, token: str, cache: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env.update(NO_COLOR="1", SPOTSWEEP_CACHE_DIR=str(cache))
    started = time.perf_counter()
    p = subprocess.run(
        [str(binary), "submit", str(spec), "--server", url, "--token", token],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - started
    if p.returncode != 0:
        sys.exit(f"submit failed: {p.stderr}")
    return elapsed, p.stderr


def fleet(binary: Path, tree: Path, work: Path, url: str, token: str, machines: int, trials: int) -> dict:
    """Runs a sweep of `trials` trials of the tree's train.py on `machines` agents with caches of
    their own; what the daemon sent and how long it took."""
    (tree / "train.py").write_text(TRAIN)
    spec = tree / "fleet.yaml"
    spec.write_text(
        f"name: code-fleet\nworkdir: .\ncommand: '\"{sys.executable}\" train.py {{x}}'\n"
        "parameters:\n  x: {type: float, low: 0, high: 1}\n"
        f"objective: {{metric: loss}}\nmax_trials: {trials}\nparallelism: {machines}\nmax_retries: 0\n"
    )
    import urllib.request

    def call(method: str, path: str) -> dict:
        req = urllib.request.Request(f"{url}/api/v1/{path}", method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    # The timed submissions' sweeps are for nobody: the agents get the fleet's alone.
    for earlier in call("GET", "sweeps?state=running")["sweeps"]:
        call("POST", f"sweeps/{earlier['id']}/cancel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    env.update(NO_COLOR="1", SPOTSWEEP_TOKEN=token)
    agents = []
    for i in range(machines):
        home = work / f"machine-{i}"
        home.mkdir()
        agents.append(subprocess.Popen(
            [str(binary), "agent", "--server", url, "--name", f"m{i}", "--slots", "1", "--gpus", "none",
             "--work-dir", str(home / "work")],
            cwd=str(home), env={**env, "HOME": str(home)}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    try:
        started = time.perf_counter()
        _, err = timed_submit(binary, spec, url, token, work / "fleet-cache")
        code = re.search(r"code: (sha256:[0-9a-f]{64})", err).group(1)

        def sweep() -> dict:
            return call("GET", "sweeps?max_results=1")["sweeps"][0]

        while (s := sweep())["state"] != "completed":
            if time.perf_counter() - started > 900:
                sys.exit(f"the fleet sweep did not end: {s}")
            time.sleep(0.2)
        took = time.perf_counter() - started
        downloads = sum(1 for line in SENT if f"code={code}".encode() in line)
        return {"downloads": downloads, "seconds": took, "counts": s["counts"],
                "machines": machines, "trials": trials}
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            try:
                a.wait(15)
            except subprocess.TimeoutExpired:
                a.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "spotsweep")
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--save", action="store_true", help="write bench/CODE-RESULTS.md")
    args = ap.parse_args()
    args.bin = args.bin.resolve()
    if not args.bin.exists():
        sys.exit(f"{args.bin} is missing: cargo build --release -p spotsweep-cli")
    work = Path(tempfile.mkdtemp(prefix="spotsweep-code-bench-"))
    proc = None
    try:
        tree = work / "tree"
        tree.mkdir()
        t0 = time.perf_counter()
        written = make_tree(tree, args.files, args.mb)
        made_in = time.perf_counter() - t0
        (tree / ".gitignore").write_text("outputs/\n")
        spec = tree / "sweep.yaml"
        spec.write_text(
            "name: code-bench\nworkdir: .\ncommand: python train.py {x}\n"
            "parameters:\n  x: {type: float, low: 0, high: 1}\n"
            "objective: {metric: loss}\nmax_trials: 1\n"
        )
        proc, url, token = start_daemon(args.bin, work / "data")
        cache = work / "cache"
        changed, unchanged, cold = [], [], []
        packed = ""
        victim = tree / "pkg00" / "module_00000.py"
        for i in range(args.repeat):
            # An edit: the tree is packed and sent whole.
            with open(victim, "a") as f:
                f.write(f"\n# edit {i}\n")
            elapsed, err = timed_submit(args.bin, spec, url, token, cache)
            assert " uploaded (" in err, err
            packed = next((ln for ln in err.splitlines() if "packed to" in ln), packed)
            changed.append(elapsed)
            # Unchanged: the index knows it, the daemon has it.
            elapsed, err = timed_submit(args.bin, spec, url, token, cache)
            assert "nothing uploaded" in err and "unchanged since" in err, err
            unchanged.append(elapsed)
            # Unchanged, but an empty index: packed to learn its id, not sent.
            empty = work / f"empty-cache-{i}"
            elapsed, err = timed_submit(args.bin, spec, url, token, empty)
            assert "nothing uploaded" in err and "packed to" in err, err
            cold.append(elapsed)
        ran = fleet(args.bin, tree, work, url, token, args.machines, args.trials)
        rows = [
            ("changed code: pack + upload + submit", changed, "≤ 2 s", statistics.median(changed) <= 2.0),
            ("unchanged code: re-submit", unchanged, "< 0.2 s", statistics.median(unchanged) < 0.2),
            ("unchanged code, empty index: pack, no upload", cold, "—", None),
        ]
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        lines = [
            "# Code snapshot benchmark\n",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- command: `python3 bench/code.py --bin {args.bin.relative_to(REPO) if args.bin.is_relative_to(REPO) else args.bin}"
            f" --repeat {args.repeat}`, HEAD {rev.stdout.strip() or 'unknown'}",
            f"- machine: {platform.machine()}, {platform.system()} {platform.release()}, {os.cpu_count()} CPUs",
            f"- tree: {args.files} files, {written / 1e6:.1f} MB (a fifth random bytes, the rest text), made in"
            f" {made_in:.1f} s; daemon and CLI on loopback; each time is a whole `spotsweep submit` process",
            f"- last packing: `{packed.strip()}`\n",
            "| case | median | min | max | goal | met |",
            "|---|---|---|---|---|---|",
        ]
        for name, xs, goal, met in rows:
            verdict = "—" if met is None else ("yes" if met else "**NO**")
            lines.append(
                f"| {name} | {statistics.median(xs):.3f} s | {min(xs):.3f} s | {max(xs):.3f} s | {goal} | {verdict} |"
            )
        ok = ran["downloads"] == ran["machines"] and ran["counts"]["completed"] == ran["trials"]
        lines += [
            "",
            "| fleet | downloads of the snapshot | goal | trials completed | wall time | met |",
            "|---|---|---|---|---|---|",
            f"| {ran['machines']} agents (each its own machine and cache), {ran['trials']} trials |"
            f" {ran['downloads']} | {ran['machines']} | {ran['counts']['completed']} of {ran['trials']} |"
            f" {ran['seconds']:.1f} s | {'yes' if ok else '**NO**'} |",
        ]
        report = "\n".join(lines)
        print(report)
        if args.save:
            (REPO / "bench" / "CODE-RESULTS.md").write_text(report + "\n")
            print("wrote bench/CODE-RESULTS.md", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
