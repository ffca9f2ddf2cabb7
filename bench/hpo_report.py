"""Markdown tables from the JSON files that bench/hpo.sh leaves in its work dir."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

GOALS = {"1000": 1.0, "5000": 5.0}


def load(work: Path, name: str):
    path = work / name
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def verdict(ours: float, theirs: float) -> str:
    if ours <= theirs * 0.8:
        return "better"
    if ours <= theirs * 1.2:
        return "similar"
    return "worse"


def regret_table(data, seeds: int) -> list[str]:
    """Per function and checkpoint: medians over the first `seeds` seeds, and a verdict per
    function (worse if any checkpoint is worse, better if at least two are better)."""
    out = [
        "| function | trials | Optuna | spotsweep | ratio | wins | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for name, f in data["functions"].items():
        verdicts = []
        for n in ("25", "50", "100"):
            o = statistics.median(r[n] for r in f["regret"]["optuna"][:seeds])
            s = statistics.median(r[n] for r in f["regret"]["spotsweep"][:seeds])
            wins = sum(a[n] < b[n] for a, b in zip(f["regret"]["spotsweep"][:seeds], f["regret"]["optuna"][:seeds]))
            ratio = s / o if o > 0 else float("inf") if s > 0 else 1.0
            verdicts.append(verdict(s, o))
            out.append(f"| {name} | {n} | {fmt(o)} | {fmt(s)} | {ratio:.2f} | {wins}/{seeds} | {verdicts[-1]} |")
        overall = ("worse" if "worse" in verdicts else
                   "better" if verdicts.count("better") >= 2 else "no worse")
        summary.append(f"{name.split(' (')[0]}: {overall}")
    return out + ["", "Per function (worse if any checkpoint is worse, better if two are better): "
                  + "; ".join(summary) + "."]


def regret_section(data) -> list[str]:
    seeds = data["seeds"]
    main = min(10, seeds)
    out = [
        "## Regret: spotsweep TPE (through the daemon) beside Optuna's TPESampler",
        "",
        f"Median over seeds 0 to {main - 1} of the regret (true value of the best-looking trial so far minus the"
        f" known minimum) after 25, 50 and {data['trials']} trials; each seed runs Optuna with `TPESampler(seed=s)`"
        " (its defaults: multivariate, constant liar, 10 random startup trials, 24 candidates) and spotsweep with"
        " `sampler: {type: tpe, seed: s}` (10 QMC startup trials, 24 candidates) through `POST /api/v1/leases` and"
        " `…/complete`. Verdict: better when spotsweep's median is at most 0.8x Optuna's, similar up to 1.2x."
        " Wins: seeds where spotsweep's regret is lower.",
        "",
    ] + regret_table(data, main)
    if seeds > main:
        out += ["", f"### The same over {seeds} seeds (0 to {seeds - 1})", "",
                "Ten seeds are few for a regret that is often bimodal (a run finds the best basin or branch, or"
                " not): this table is the steadier one.", ""] + regret_table(data, seeds)
    secs = {who: sum(f["seconds"][who] for f in data["functions"].values()) for who in ("optuna", "spotsweep")}
    out += ["", f"Wall time of all runs ({seeds} seeds): Optuna {secs['optuna']:.0f} s (in process), spotsweep"
                f" {secs['spotsweep']:.0f} s (over HTTP, SQLite)."]
    return out


def latency_section(ours, optuna) -> list[str]:
    out = [
        "## Suggestion latency, 6-parameter space (2 floats, a log float, 2 ints, a categorical)",
        "",
        "spotsweep: `cargo run --release -p spotsweep-store --example suggest_latency` — a SQLite store in a temp"
        " dir, a TPE sweep filled with finished trials, then the median of 15 leases of new trials (each reads the"
        " sweep's history through the store and runs TPE, then writes the trial, its run and its lease), beside the"
        " same lease on a random-sampler sweep; the suggestion's cost is the difference. Optuna: median `ask()` of"
        " `TPESampler(seed=1)` on a study with the same number of finished trials, in memory and on SQLite.",
        "",
        "| finished trials | spotsweep lease, TPE | spotsweep lease, random | TPE suggestion (difference) |"
        " TPE sampler alone (in memory) | Optuna ask(), memory | Optuna ask(), SQLite | goal (suggestion) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tpe, rnd in zip(ours["tpe"], ours["random"]):
        n = str(tpe["finished"])
        diff = tpe["median_ms"] - rnd["median_ms"]
        goal = f"≤ {GOALS[n]:g} ms" if n in GOALS else "—"
        mem = optuna["memory"].get(n) if optuna else None
        sql = optuna["sqlite"].get(n) if optuna else None
        out.append(
            f"| {int(n):,} | {tpe['median_ms']:.2f} ms | {rnd['median_ms']:.2f} ms | {diff:.2f} ms |"
            f" {tpe['sampler_only_median_ms']:.2f} ms | {fmt(mem) + ' ms' if mem else '—'} |"
            f" {fmt(sql) + ' ms' if sql else '—'} | {goal} |")
    return out


def pruning_section(data) -> list[str]:
    out = [
        "## Pruning on a learning-curve benchmark, through the daemon",
        "",
        f"{data['trials']} trials of a random sweep (the same configurations for every pruner, per seed) over"
        " a learning rate and a width; each trial logs its loss at steps 0 to"
        f" {data['steps'] - 1} to its MLflow run and heartbeats after each step; one step is one unit of GPU time."
        f" Medians over {data['seeds']} seeds. Regret: best final loss among the trials that ran to the end,"
        " minus the same without a pruner.",
        "",
        "| pruner | GPU time (steps) | saved | trials pruned | best final loss | regret vs no pruner |",
        "|---|---|---|---|---|---|",
    ]
    base = statistics.median(r["steps"] for r in data["pruners"]["none"])
    for label, runs in data["pruners"].items():
        steps = statistics.median(r["steps"] for r in runs)
        out.append(
            f"| {label} | {steps:,.0f} | {100 * (1 - steps / base):.0f}% |"
            f" {statistics.median(r['pruned'] for r in runs):.0f} |"
            f" {fmt(statistics.median(r['best'] for r in runs))} |"
            f" {fmt(statistics.median(r['regret_vs_none'] for r in runs))} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--rev", required=True)
    ap.add_argument("--seconds", required=True)
    a = ap.parse_args()
    work = Path(a.work)
    lines = [
        "# Optimizer benchmark",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{a.command.strip() or 'bench/hpo.sh'}` ({a.seconds} s in all), HEAD {a.rev}",
        f"- machine: {platform.machine()}, {platform.system()} {platform.release()}; Python {platform.python_version()}",
        "- anchor: Optuna 5.0.0 in `.venv-queue` (bench/queue-requirements.txt)",
        "",
    ]
    regret = load(work, "regret.json")
    if regret:
        lines += regret_section(regret) + [""]
    ours = load(work, "latency-spotsweep.json")
    if ours:
        lines += latency_section(ours, load(work, "latency-optuna.json")) + [""]
    pruning = load(work, "pruning.json")
    if pruning:
        lines += pruning_section(pruning) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
