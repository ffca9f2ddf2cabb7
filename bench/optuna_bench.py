"""The anchor of the trial-queue benchmark: Optuna with QUEUE_OPTUNA_PROCS processes (default 4)
sharing one SQLite storage file (`optuna.storages.RDBStorage("sqlite:///...")`), each running an
ask/tell loop with the RandomSampler on a trivial objective. Writes trials/s as JSON.

  optuna_bench.py --work DIR --out FILE

Each process counts the trials it told as COMPLETE and when; a storage error (SQLite's
"database is locked") is counted and the loop goes on. The trials/s figure counts completions in
a fixed window after a warm-up, as for spotsweep; the study is checked afterwards (numbers
0..N-1 once each, every told trial COMPLETE).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_bench import all_procs_cpu, log, machine_cpu, machine_usage, others_cpu_pct, top_procs, wait_quiet  # noqa: E402

PROCS = int(os.environ.get("QUEUE_OPTUNA_PROCS", "4"))
WARMUP_S = float(os.environ.get("QUEUE_OPTUNA_WARMUP_S", "2"))
WINDOW_S = float(os.environ.get("QUEUE_OPTUNA_WINDOW_S", "20"))
LOOP = os.environ.get("QUEUE_OPTUNA_LOOP", "optimize")  # or "ask-tell" (a study.ask / study.tell loop)
STUDY = "queue-bench"


def worker(idx: int, url: str, ready, go, shared, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=STUDY, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=idx))
    ready.put(idx)
    go.wait()
    start_at, deadline = shared[0], shared[2]
    time.sleep(max(0.0, start_at - time.monotonic()))
    done, errors, examples = [], 0, []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    if LOOP == "optimize":
        def objective(trial):
            return trial.suggest_float("x", 0.0, 1.0) ** 2

        def record(_study, frozen):
            if frozen.state == optuna.trial.TrialState.COMPLETE:
                done.append((frozen.number, time.monotonic()))

    while time.monotonic() < deadline:
        try:
            if LOOP == "optimize":
                study.optimize(objective, timeout=max(0.01, deadline - time.monotonic()), callbacks=[record])
                continue
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, x * x)
            done.append((trial.number, time.monotonic()))
        except Exception as e:  # noqa: BLE001 - SQLite lock errors: count them and go on
            errors += 1
            if len(examples) < 3:
                examples.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    out.put({"done": done, "errors": errors, "examples": examples, "cpu_s": cpu})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = Path(tempfile.mkdtemp(prefix="queue-optuna-", dir=args.work))
    url = f"sqlite:///{d}/optuna.db"
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=STUDY, storage=storage, direction="minimize",
                        sampler=optuna.samplers.RandomSampler())
    storage.engine.dispose()
    del storage

    log(f"Optuna {optuna.__version__}: {PROCS} processes, one SQLite file, {LOOP} + RandomSampler, "
        f"{WARMUP_S:g} s warm-up + {WINDOW_S:g} s window")
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shared = ctx.Array("d", 3, lock=False)
    procs = [ctx.Process(target=worker, args=(i, url, ready, go, shared, out), daemon=True) for i in range(PROCS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    quiet_s = wait_quiet()
    start_at = time.monotonic() + 0.3
    window_from = start_at + WARMUP_S
    deadline = window_from + WINDOW_S
    shared[0], shared[1], shared[2] = start_at, window_from, deadline
    go.set()
    time.sleep(max(0.0, window_from - time.monotonic()))
    m0, p0, t0 = machine_cpu(), all_procs_cpu(), time.monotonic()
    time.sleep(max(0.0, deadline - time.monotonic()))
    m1, p1, t1 = machine_cpu(), all_procs_cpu(), time.monotonic()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)

    done = [x for r in results for x in r["done"]]
    in_window = sum(1 for _, t in done if window_from <= t < deadline)
    pids = {p.pid for p in procs}
    others = others_cpu_pct(p0, p1, t1 - t0, pids | {os.getpid()})
    top = top_procs(p0, p1, t1 - t0)
    for row in top:
        row["role"] = "optuna worker" if row["pid"] in pids else "bench driver" if row["pid"] == os.getpid() else "other"

    # The study afterwards: every trial number once, every told trial COMPLETE.
    storage = optuna.storages.RDBStorage(url)
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    told = sorted(n for n, _ in done)
    problems = []
    if numbers != list(range(len(numbers))):
        problems.append("trial numbers are not 0..N-1 once each")
    if len(told) != len(set(told)):
        problems.append("a trial number was told twice")
    if states.get("COMPLETE", 0) != len(told):
        problems.append(f"{len(told)} tells but {states.get('COMPLETE', 0)} COMPLETE trials")
    st = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    integrity = (f"{'ok' if not problems else 'FAILED: ' + '; '.join(problems)}: {len(trials)} trials "
                 f"({st})")
    mu = machine_usage(m0, m1)
    result = {
        "optuna_version": optuna.__version__,
        "sqlalchemy_version": sqlalchemy.__version__,
        "procs": PROCS,
        "loop": LOOP,
        "warmup_s": WARMUP_S,
        "window_s": WINDOW_S,
        "completed_in_window": in_window,
        "trials_per_s": in_window / WINDOW_S,
        "total_completed": len(done),
        "errors": sum(r["errors"] for r in results),
        "error_examples": [e for r in results for e in r["examples"]][:5],
        "cpu_pct": 100 * sum(r["cpu_s"] for r in results) / (deadline - start_at),
        "machine": mu,
        "machine_busy_pct": mu["busy"],
        "top_processes": top,
        "others_cpu_pct": others,
        "quiet_wait_s": quiet_s,
        "integrity": integrity,
    }
    log(f"  {result['trials_per_s']:.1f} trials/s ({in_window} in the window), {result['errors']} errors; "
        f"integrity: {integrity}")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
