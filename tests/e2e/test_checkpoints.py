"""Preemption-proof trials: a trial's SPOTSWEEP_CHECKPOINT_DIR is mirrored to its run's
`checkpoints/` artifacts and restored, on another agent, when the trial runs again. The trial is
the example in examples/checkpointing (a training loop that saves every step), copied into the
test's tmp_path so that its processes can be found by path.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_sweeps import (  # noqa: F401 (agents is a fixture)
    PY,
    agents,
    create_sweep,
    get_trials,
    pids_with_cmdline,
    spec_of,
    unique_name,
    wait_for,
    wait_sweep,
)

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

STEPS = 60
STEP_SECONDS = 0.1
INTERVAL_MS = 1000


def history(srv, run_id, key="loss") -> list[dict]:
    r = srv.get("metrics/get-history", params={"run_id": run_id, "metric_key": key, "max_results": 25000})
    assert r.status_code == 200, r.text
    return r.json().get("metrics", [])


def artifacts(srv, run_id, path="checkpoints") -> list[dict]:
    r = srv.get("artifacts/list", params={"run_id": run_id, "path": path})
    assert r.status_code == 200, r.text
    return r.json().get("files", [])


def start_training(srv, tmp_path):
    """A one-trial sweep of the example's loop (60 steps of 0.1 s, a checkpoint each), running on
    an agent: (the copied train.py, the sweep's id, the trial's run id)."""
    example = tmp_path / "example"
    shutil.copytree(REPO_ROOT / "examples" / "checkpointing", example)
    train = example / "train.py"
    spec = spec_of(
        unique_name("ckpt"),
        f'"{PY}" "{train}" --lr {{lr}} --steps {STEPS} --step-seconds {STEP_SECONDS}',
        parameters={"lr": {"type": "float", "low": 0.02, "high": 0.1}},
    )
    sid = create_sweep(srv, spec)["id"]
    [t] = wait_for(lambda: [t for t in get_trials(srv, sid) if t["state"] == "running"], 30, "the trial to start")
    return train, sid, t["run_id"]


def test_a_killed_trial_resumes_from_its_checkpoint_on_another_agent(server_factory, agents, tmp_path):
    srv = server_factory()
    flags = ["--lease-ttl-ms", "5000", "--grace-seconds", "1", "--checkpoint-interval-ms", str(INTERVAL_MS)]
    a0 = agents("a0", srv, *flags)
    train, sid, run_id = start_training(srv, tmp_path)

    # Let it run about half way, with a checkpoint synced, then lose the machine: the agent
    # and the trial (its own process group) die at once, with no chance to sync.
    wait_for(lambda: len(history(srv, run_id)) >= 25, 60, "25 steps")
    assert [f["path"] for f in artifacts(srv, run_id)] == ["checkpoints/state.pt"]
    # `sh -c` and python, in one process group of their own.
    [pgid] = {os.getpgid(p) for p in pids_with_cmdline(str(train))}
    assert pgid != os.getpgid(a0.pid)
    a0.kill()
    a0.wait(5)
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: not pids_with_cmdline(str(train)), 10, "the trial to die")
    reached = max(m["step"] for m in history(srv, run_id))
    assert reached < STEPS - 10, reached

    agents("a1", srv, *flags)
    s = wait_sweep(srv, sid, timeout=90)
    assert s["state"] == "completed", s
    [t] = get_trials(srv, sid)
    assert t["state"] == "completed" and t["attempts"] == 2, t
    assert t["agent_id"].startswith("a1-"), t

    # The same run goes on: every step once, no gap, no duplicate.
    steps = [m["step"] for m in history(srv, run_id)]
    assert sorted(steps) == list(range(STEPS)), steps

    # It resumed from the last synced checkpoint: at most one sync interval of work was lost
    # (plus a step of slack for the moment the sync looks).
    run = srv.get("runs/get", params={"run_id": run_id}).json()["run"]
    tags = {x["key"]: x["value"] for x in run["data"]["tags"]}
    resumed_from = int(tags["spotsweep.resumed_from_step"])
    lost_seconds = (reached - resumed_from) * STEP_SECONDS
    print(f"killed at step {reached}, resumed from step {resumed_from}: {lost_seconds:.1f} s of work lost")
    assert 0 <= reached - resumed_from
    assert lost_seconds <= INTERVAL_MS / 1000 + 2 * STEP_SECONDS, (reached, resumed_from)

    stdout = srv.request("GET", f"{srv.url}/get-artifact", params={"run_id": run_id, "path": "logs/stdout.txt"})
    assert stdout.status_code == 200, stdout.text
    assert f"resumed from step {resumed_from} (attempt 2, restored by the agent: True)" in stdout.text, stdout.text

    # Model, optimizer and data order came back: the result is the uninterrupted one's.
    alone = tmp_path / "alone"
    alone.mkdir()
    out = subprocess.run(
        [PY, str(train), "--lr", repr(t["params"]["lr"]), "--steps", str(STEPS), "--step-seconds", "0"],
        cwd=alone, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SPOTSWEEP_", "MLFLOW_"))},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"loss {t['value']:.6f}", (out.stdout, t["value"])

    # The checkpoint stays with the run; temporaries never went up.
    assert [f["path"] for f in artifacts(srv, run_id)] == ["checkpoints/state.pt"]


def test_the_notebook_example_goes_on_from_its_checkpoint(tmp_path):
    """The notebook pattern: a second attempt, with the first one's checkpoint directory, starts
    after the saved step and ends where an uninterrupted run ends."""
    shutil.copytree(REPO_ROOT / "examples" / "checkpointing", tmp_path / "examples" / "checkpointing")
    nb = tmp_path / "examples" / "checkpointing" / "train.ipynb"
    papermill = str(Path(PY).parent / "papermill")

    def execute(out, ckpt_dir, attempt, steps):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSWEEP_", "MLFLOW_"))}
        env.update(SPOTSWEEP_CHECKPOINT_DIR=str(ckpt_dir), SPOTSWEEP_ATTEMPT=str(attempt))
        r = subprocess.run(
            [papermill, str(nb), str(out), "-p", "steps", str(steps), "-p", "lr", "0.05"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        cells = json.loads(out.read_text())["cells"]
        text = []
        for c in cells:
            for o in c.get("outputs", []):
                text.append("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")))
        return "\n".join(text)

    # The first attempt is "lost" after 10 of 20 steps: its checkpoint directory is all that is left.
    first = execute(tmp_path / "a1.ipynb", tmp_path / "ckpt", 1, 10)
    assert "starting at step 0 attempt 1" in first
    second = execute(tmp_path / "a2.ipynb", tmp_path / "ckpt", 2, 20)
    assert "starting at step 10 attempt 2" in second
    alone = execute(tmp_path / "alone.ipynb", tmp_path / "fresh", 1, 20)
    assert "starting at step 0 attempt 1" in alone
    assert second.strip().splitlines()[-1] == alone.strip().splitlines()[-1]



def test_a_preempted_agent_syncs_the_last_checkpoint_before_it_goes(server_factory, agents, tmp_path):
    """SIGTERM to the agent (what a preemption notice becomes): it stops the trial, syncs its
    checkpoint one last time and reports the trial preempted; the next attempt loses nothing
    although the interval (60 s) never came round."""
    srv = server_factory()
    flags = ["--grace-seconds", "2", "--checkpoint-interval-ms", "60000"]
    a0 = agents("a0", srv, *flags)
    _, sid, run_id = start_training(srv, tmp_path)
    wait_for(lambda: len(history(srv, run_id)) >= 20, 60, "20 steps")
    a0.send_signal(signal.SIGTERM)
    assert a0.wait(30) == 0
    [t] = get_trials(srv, sid)
    assert t["state"] == "preempted" and t["failures"] == 0, t
    reached = max(m["step"] for m in history(srv, run_id))

    agents("a1", srv, *flags)
    s = wait_sweep(srv, sid, timeout=90)
    assert s["state"] == "completed", s
    run = srv.get("runs/get", params={"run_id": run_id}).json()["run"]
    tags = {x["key"]: x["value"] for x in run["data"]["tags"]}
    # The checkpoint of the last step logged (or of the one before, when the signal came between
    # a step's metric and its save): without the last sync there would be none at all.
    assert reached - 1 <= int(tags["spotsweep.resumed_from_step"]) <= reached, (tags, reached)
    assert sorted(m["step"] for m in history(srv, run_id)) == list(range(STEPS))

# argv: MARK_DIR. A trial that writes a big file once and touches it a second later without
# changing it, rewrites a small state file every 0.1 s for 2 s, and removes an old checkpoint.
WRITER = r'''
import os, sys, time
d, marks = os.environ["SPOTSWEEP_CHECKPOINT_DIR"], sys.argv[1]
with open(os.path.join(d, "weights.bin"), "wb") as f:
    f.write(os.urandom(1 << 20))
with open(os.path.join(d, "old.pt"), "w") as f:
    f.write("old")
start = time.time()
i = 0
while time.time() - start < 2.0:
    with open(os.path.join(d, "state.tmp"), "w") as f:
        f.write(str(i))
    os.replace(os.path.join(d, "state.tmp"), os.path.join(d, "state"))
    if i == 10:  # after the first syncs (every 0.4 s at most)
        open(os.path.join(marks, "touched"), "w").write(repr(time.time()))
        os.utime(os.path.join(d, "weights.bin"))  # touched, not changed
        os.remove(os.path.join(d, "old.pt"))
    i += 1
    time.sleep(0.1)
open(os.path.join(marks, "done"), "w").write(str(i - 1))
'''


def test_only_changed_files_go_up_and_removed_ones_go_away(server_factory, agents, tmp_path):
    srv = server_factory()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    agents("w", srv, "--checkpoint-interval-ms", "400")
    sid = create_sweep(srv, spec_of(unique_name("sync"), f'"{PY}" "{script}" "{tmp_path}"'))["id"]
    s = wait_sweep(srv, sid, timeout=60)
    [t] = get_trials(srv, sid)
    assert t["state"] == "failed" and "loss" in t["reason"], t  # it logs no metric: no matter
    run_id = t["run_id"]
    assert sorted(f["path"] for f in artifacts(srv, run_id)) == ["checkpoints/state", "checkpoints/weights.bin"]
    stored = list(srv.artifact_root.rglob(f"{run_id}/artifacts/checkpoints"))
    assert len(stored) == 1, stored
    state, weights = stored[0] / "state", stored[0] / "weights.bin"
    # The state went up until its last value; the big file once: touching it did not send it
    # again, so the daemon's copy is older than the touch.
    assert state.read_text() == (tmp_path / "done").read_text()
    assert weights.stat().st_size == 1 << 20
    touched = float((tmp_path / "touched").read_text())
    assert weights.stat().st_mtime < touched < state.stat().st_mtime, (weights.stat().st_mtime, touched)
