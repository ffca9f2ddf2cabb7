"""Puts the JSON of bench.py for both servers into one markdown report (stdout, and --save FILE)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(build: str) -> list[str]:
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
    wrk_v = sh(["sh", "-c", "wrk -v 2>&1 | head -1"]).split(" [")[0]
    return [
        f"- CPU: {os.cpu_count()} × {cpu}; memory {mem_kb / 1024 / 1024:.1f} GiB; {osname}, "
        f"Linux {platform.release()}",
        f"- spotsweep: `target/release/spotsweep` (release profile), {build}",
        f"- reference: mlflow 3.17.2 `mlflow server` ({backend()} backend, default 4 uvicorn workers), "
        f"Python {platform.python_version()}",
        f"- load generator: {wrk_v}; Python drivers in `.venv-bench`",
    ]


def backend() -> str:
    """Which database both servers ran on (run.sh --postgres passes it on)."""
    return os.environ.get("BENCH_BACKEND_NAME", "SQLite")


def fmt(v, unit="", digits=3):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.{digits}g}"
    return f"{s} {unit}".strip()


def ratio(x):
    if x is None:
        return "—"
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--spotsweep", type=Path)
    ap.add_argument("--elapsed", type=float)
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--build", default="?", help="what the spotsweep binary was built from")
    ap.add_argument("--save", type=Path)
    a = ap.parse_args()
    ref = json.loads(a.reference.read_text()) if a.reference else None
    ss = json.loads(a.spotsweep.read_text()) if a.spotsweep else None

    rows = []

    def row(name, r, s, unit, higher_better, goal, met_fn, digits=3, note_r="", note_s="",
            word=None):
        if r is not None and s is not None and r > 0 and s > 0:
            q = s / r if higher_better else r / s
            rt = ratio(q) + " " + (word or ("more" if higher_better else "faster"))
        else:
            q, rt = None, "—"
        met = "—"
        if met_fn is not None and s is not None:
            ok = met_fn(s, q)
            met = "—" if ok is None else ("**yes**" if ok else "**NO**")
        rows.append((name, fmt(r, unit, digits) + note_r, fmt(s, unit, digits) + note_s, rt, goal,
                     met))

    # 1. launch
    r_l, s_l = get(ref, "launch_median_s"), get(ss, "launch_median_s")
    row("1. launch → first 200 on `/health`", r_l, s_l, "s", False, "spotsweep < 0.5 s",
        lambda s, q: s < 0.5, note_r=" (1 launch)" if ref else "",
        note_s=" (median of 3)" if ss else "")
    # 2. log-metric
    r_m, s_m = get(ref, "log_metric"), get(ss, "log_metric")
    row("2a. `runs/log-metric`, c16: throughput", get(r_m, "req_per_s"), get(s_m, "req_per_s"),
        "req/s", True, "≥ 100× reference", lambda s, q: None if q is None else q >= 100)
    p99 = lambda d: None if d is None else d["lat_p99_us"] / 1000
    row("2b. `runs/log-metric`, c16: p99 latency", p99(r_m), p99(s_m), "ms", False, "≤ 5 ms",
        lambda s, q: s <= 5)
    # 3. log-batch
    r_b, s_b = get(ref, "log_batch"), get(ss, "log_batch")
    row("3. `runs/log-batch` ×1000 metrics, c4", get(r_b, "metrics_per_s"), get(s_b, "metrics_per_s"),
        "metrics/s", True, "≥ 100× reference", lambda s, q: None if q is None else q >= 100)
    # 4. search
    r_s, s_s = get(ref, "search"), get(ss, "search")
    p50 = lambda d: None if d is None else d["lat_p50_us"] / 1000
    row("4. `runs/search`, 10k runs: p50 latency", p50(r_s), p50(s_s), "ms", False,
        "≤ 1/50 of reference", lambda s, q: None if q is None else q >= 50)
    # 5. history
    r_h, s_h = get(ref, "history"), get(ss, "history")
    row("5. full history, 100k points: the server (HTTP, the client's 4 pages)",
        get(r_h, "raw_median_s"), get(s_h, "raw_median_s"), "s", False, "≥ 30× faster",
        lambda s, q: None if q is None else q >= 30)
    # 6. RSS
    mb = lambda d: None if d is None else d["rss_bytes"] / 1e6
    r_mem, s_mem = get(ref, "memory_after_search"), get(ss, "memory_after_search")
    row("6. RSS of the process tree after search", mb(r_mem), mb(s_mem), "MB", False,
        "spotsweep < 100 MB", lambda s, q: s < 100, word="less",
        note_r=f" ({r_mem['processes']} processes)" if r_mem else "",
        note_s=f" ({s_mem['processes']} process{'es' if s_mem['processes'] > 1 else ''})"
        if s_mem else "")
    # The shapes of #16: every kind of log-batch, search and history a training script sends.
    row("4b. `runs/search`, 10k runs: p99 latency", p99(r_s), p99(s_s), "ms", False,
        "≤ 1/20 of reference", lambda s, q: None if q is None else q >= 20)
    shapes_r = {(b["keys"], b["steps"]): b for b in get(ref, "log_batch_shapes") or []}
    for b in get(ss, "log_batch_shapes") or []:
        k, st = b["keys"], b["steps"]
        rb = shapes_r.get((k, st))
        wide = (k, st) == (1000, 1)
        row(f"7. `runs/log-batch` {k:,} keys × {st:,} steps, c4", get(rb, "metrics_per_s"),
            b["metrics_per_s"], "metrics/s", True, "≥ 100× reference" if wide else "—",
            (lambda s, q: None if q is None else q >= 100) if wide else None)
        row(f"7. … {k:,} × {st:,}: p99 latency", p99(rb), p99(b), "ms", False,
            "≤ 50 ms" if wide else "—", (lambda s, q: s <= 50) if wide else None)
    searches_r = {x["name"]: x for x in get(ref, "search_shapes") or []}
    for x in get(ss, "search_shapes") or []:
        rx = searches_r.get(x["name"])
        row(f"8. `runs/search`, 10k runs, {x['name']}: p50", p50(rx), p50(x), "ms", False, "—", None)
        row(f"8. … {x['name']}: p99", p99(rx), p99(x), "ms", False, "—", None)
    big = get(ss, "search_big")
    if big:
        row(f"9. `runs/search` as 4 on {get(ss, 'seed_big', 'runs'):,} runs: p50 (spotsweep only)", None,
            p50(big), "ms", False, "≤ 2× spotsweep's p50 on 10k runs",
            lambda s, q: None if s_s is None else s <= 2 * p50(s_s))
    hb = get(ss, "history_big")
    if hb:
        row(f"10. full history, {hb['points']:,} points over HTTP (spotsweep only)", None,
            hb["raw_median_s"], "s", False, "< 1 s", lambda s, q: s < 1)
        row("10. … RSS after it (spotsweep only)", None, mb(get(ss, "memory_history_big")), "MB", False,
            "< 200 MB", lambda s, q: s < 200)
    row("11. RSS at the end, after all of the above", mb(get(ref, "memory_end")),
        mb(get(ss, "memory_end")), "MB", False, "spotsweep < 100 MB", lambda s, q: s < 100, word="less")

    # informational
    row("(info) seeding 10k runs over HTTP (20k requests, 8 threads)", get(ref, "seed", "seconds"),
        get(ss, "seed", "seconds"), "s", False, "—", None)
    row("(info) 5 through `MlflowClient.get_metric_history` (its decoding included)",
        get(r_h, "client_median_s"), get(s_h, "client_median_s"), "s", False, "—", None)
    row("(info) 2: p50 latency", p50(r_m), p50(s_m), "ms", False, "—", None)
    row("(info) 3: p99 latency", p99(r_b), p99(s_b), "ms", False, "—", None)
    row("(info) 3: requests/s", get(r_b, "req_per_s"), get(s_b, "req_per_s"), "req/s", True, "—", None)
    row("(info) RSS idle, right after launch", mb(get(ref, "memory_idle")),
        mb(get(ss, "memory_idle")), "MB", False, "—", None, word="less")
    pss = lambda d: None if d is None else d["pss_bytes"] / 1e6
    row("(info) PSS after search (shared pages counted once)", pss(r_mem), pss(s_mem), "MB", False,
        "—", None, word="less")

    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append("# spotsweep vs the reference MLflow server: benchmark\n")
    out.append(f"Run on {now} with `{a.command}`"
               + (f" ({a.elapsed / 60:.1f} min end to end, setup included)." if a.elapsed else "."))
    out.append("")
    out += machine(a.build)
    out.append("\nThe two servers ran one after the other, never at the same time; the load generator "
               "(wrk, Lua) shared the 2 cores with the server under test.\n")
    out.append("| measurement | reference mlflow | spotsweep | ratio | goal | met? |")
    out.append("|---|---|---|---|---|---|")
    for r in rows:
        out.append("| " + " | ".join(r) + " |")

    # details
    out.append("\n## Details\n")
    any_side = ss or ref
    st = any_side["settings"]
    body = get(any_side, "search", "body")
    out.append(f"- **2** `wrk -t2 -c16 -d{st['duration_s']:.0f}s` after a {st['warmup_s']:.0f} s warm-up "
               "(`bench/log_metric.lua`): each request one point `{run_id, key, value, timestamp, "
               "step}` with a random value, its own timestamp and step, one of 8 keys, spread "
               "over 16 runs.")
    out.append(f"- **3** `wrk -t2 -c4 -d{st['duration_s']:.0f}s` after a {st['warmup_s']:.0f} s warm-up "
               "(`bench/log_batch.lua`): 1000 metrics a request (10 keys × 100 steps), bodies built "
               "in Lua `init()` (64 metric lists a thread, sent in turn to 128 runs, so no body "
               "repeats); metrics/s = requests/s × 1000.")
    if body:
        out.append(f"- **4** {st['runs']:,} runs in one experiment, each with 10 params "
                   "(`p0`..`p9` = `v0`..`v9`, uniform), 5 tags and 5 metrics (`m0`..`m4`, uniform in "
                   "[0, 1)), the same data (seeded PRNG) on both servers. Request: filter "
                   f"`{body['filter']}`, order_by `{body['order_by']}`, max_results "
                   f"{body['max_results']}, run_view_type {body['run_view_type']}; sequential "
                   f"requests (`wrk -t1 -c1`, the same body every time) after a 2 s warm-up, for "
                   f"long enough to make at least {st['search_n']} of them and at least "
                   f"{st['search_min_s']:.0f} s.")
    for name, d in (("reference", ref), ("spotsweep", ss)):
        if not d:
            continue
        s = d["search"]
        out.append(f"  - {name}: {s['requests']} searches, p50 {s['lat_p50_us'] / 1000:.2f} ms, p99 "
                   f"{s['lat_p99_us'] / 1000:.2f} ms, {s['result_runs']} runs in the answer"
                   + (", more pages" if s["has_next_page"] else ""))
    if ref and ss:
        same = ref["search"]["result_names"] == ss["search"]["result_names"]
        out.append("  - both servers returned the same runs in the same order" if same
                   else "  - the two servers returned DIFFERENT answers (run names or order)")
    out.append(f"- **5** one run, metric `loss` with {st['history']:,} points (logged with "
               "100 `log-batch` requests of 1000). The goal row times the server: the 4 pages "
               "of 25,000 points that `MlflowClient().get_metric_history` asks for, fetched "
               "with `requests` (bodies read, not parsed), median of 3. The info row times the "
               "client call itself (median of 3 in one process after a warm-up call): beyond "
               "the HTTP time it is the client's own JSON-to-protobuf decoding, about 1.6 s "
               "against either server, so no server can make the client call 30x faster.")
    out.append("- **6** RSS summed over the server's whole process tree (psutil), after the 10k "
               "runs were loaded and the search benchmark ran; MB = 10^6 bytes.")
    out.append("")
    out.append("| per server | reference mlflow | spotsweep |")
    out.append("|---|---|---|")

    def both(label, fn):
        vals = []
        for d in (ref, ss):
            try:
                vals.append(fn(d) if d else "—")
            except (KeyError, TypeError):
                vals.append("—")
        out.append(f"| {label} | {vals[0]} | {vals[1]} |")

    def lat(r):
        return " / ".join(f"{r[k] / 1000:,.1f}" for k in ("lat_p50_us", "lat_p90_us", "lat_p99_us",
                                                            "lat_max_us"))

    def cpu(key):
        def f(d):
            c = d[key]["cpu"]
            return (f"server {c['server_cpu_pct']:.0f}%, wrk {c['wrk_cpu_pct']:.0f}%, other "
                    f"{c['other_cpu_pct']:.0f}% (machine {c['machine_busy_pct']:.0f}% of "
                    f"{c['cores'] * 100}%)")
        return f

    both("launches (s)", lambda d: ", ".join(f"{t:.3f}" for t in d["launch_s"]))
    both("2: requests in the measured window", lambda d: f"{d['log_metric']['requests']:,}")
    both("2: errors (socket + non-2xx)", lambda d: str(d["log_metric"]["errors"]))
    both("2: latency p50 / p90 / p99 / max (ms)", lambda d: lat(d["log_metric"]))
    both("2: CPU during the load", cpu("log_metric"))
    both("3: requests in the measured window", lambda d: f"{d['log_batch']['requests']:,}")
    both("3: errors (socket + non-2xx)", lambda d: str(d["log_batch"]["errors"]))
    both("3: latency p50 / p90 / p99 / max (ms)", lambda d: lat(d["log_batch"]))
    both("3: CPU during the load", cpu("log_batch"))
    both("4: searches timed, window", lambda d: f"{d['search']['requests']}, "
         f"{d['search']['duration_us'] / 1e6:.0f} s")
    both("4: errors", lambda d: str(d["search"]["errors"]))
    both("4: CPU during the searches", cpu("search"))
    both("5: client times (s)", lambda d: ", ".join(f"{t:.3f}" for t in d["history"]["client_s"]))
    both("5: raw HTTP times (s)", lambda d: ", ".join(f"{t:.3f}" for t in d["history"]["raw_s"]))
    both("5: logging the 100k points (s)", lambda d: f"{d['history']['seed_s']:.1f}")
    both("6: RSS by process", lambda d: "; ".join(
        f"{k} ×{v['processes']}: {v['rss_bytes'] / 1e6:,.0f} MB"
        for k, v in d["memory_after_search"]["roles"].items()))
    both("database file at the end", lambda d: f"{d['db_bytes'] / 1e6:.0f} MB")
    both("time for this server's part (s)", lambda d: f"{d['elapsed_s']:.0f}")
    both("of which waiting for a quiet machine (s)", lambda d: f"{d.get('quiet_wait_s', 0):.0f}")
    out.append("\nCPU: seconds of CPU used during the measured window divided by its length "
               "(100% = one core busy); \"other\" is the rest of the machine (should be near 0).")
    warn = []
    for name, d in (("reference", ref), ("spotsweep", ss)):
        if not d:
            continue
        for key in ("search", "log_metric", "log_batch"):
            c = get(d, key, "cpu")
            if c and c["other_cpu_pct"] > 20:
                warn.append(f"{name}/{key}: other processes used {c['other_cpu_pct']:.0f}% CPU")
    if warn:
        out.append("\n**Warning: the machine was not quiet** (" + "; ".join(warn)
                   + "): those figures are skewed.")
    text = "\n".join(out) + "\n"
    print(text)
    if a.save:
        a.save.write_text(text)


if __name__ == "__main__":
    main()
