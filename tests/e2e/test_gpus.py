"""Several trials per GPU: an agent detects its GPUs with `nvidia-smi` (a fake one on PATH here,
reporting one 40 GB GPU), sweeps declare what a trial needs, and the daemon packs trials onto
the GPUs by memory. A trial that runs out of memory on a shared GPU is retried with more.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_sweeps import (  # noqa: F401 (agents is a fixture)
    PY,
    agents,
    create_sweep,
    get_trials,
    spec_of,
    unique_name,
    wait_for,
    wait_sweep,
)

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

# argv: STATE_DIR GO_FILE. Records its environment, then waits for GO_FILE and logs loss = 1.
# Trial 0's first attempt and every attempt of trial 2 run out of GPU memory.
GPU_TRIAL = r'''
import json, os, sys, time, urllib.request
state_dir, go = sys.argv[1], sys.argv[2]
number, attempt = os.environ["SPOTSWEEP_TRIAL_NUMBER"], os.environ["SPOTSWEEP_ATTEMPT"]
path = os.path.join(state_dir, "sweep%s-trial%s-attempt%s.json" % (os.environ["SPOTSWEEP_SWEEP_ID"], number, attempt))
with open(path + ".tmp", "w") as f:
    json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "started": time.time()}, f)
os.replace(path + ".tmp", path)
if os.environ.get("OOM") and (number == "2" or (number == "0" and attempt == "1")):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB", file=sys.stderr)
    sys.exit(1)
while not os.path.exists(go):
    time.sleep(0.05)
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}
body = {"run_id": os.environ["MLFLOW_RUN_ID"], "key": "loss", "value": 1.0, "timestamp": int(time.time() * 1000), "step": 0}
urllib.request.urlopen(urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-metric",
    json.dumps(body).encode(), headers, method="POST"), timeout=30).read()
'''

FAKE_NVIDIA_SMI = """#!/bin/sh
# A fake nvidia-smi: one A100 40 GB, nothing on it.
case "$*" in
  *--query-gpu=index,memory.total,memory.used*) echo "0, 40960, 0" ;;
  *) echo "fake nvidia-smi: unexpected arguments: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def gpu_box(tmp_path):
    """(env for an agent with the fake nvidia-smi first on PATH, trial script, state dir, go file)"""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    script = tmp_path / "gpu_trial.py"
    script.write_text(GPU_TRIAL)
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, script, state, tmp_path / "go"


def started(state: Path) -> list[dict]:
    out = []
    for p in sorted(state.glob("sweep*-trial*-attempt*.json")):
        d = json.loads(p.read_text())
        d["name"] = p.stem
        out.append(d)
    return out


def test_four_trials_of_8_gb_share_a_40_gb_gpu_and_a_fifth_waits(server_factory, agents, gpu_box):
    srv = server_factory()
    env, script, state, go = gpu_box
    a = agents("gpu", srv, "--slots", "5", env=env)
    spec = spec_of(unique_name("pack"), f'"{PY}" "{script}" "{state}" "{go}"',
                   max_trials=5, parallelism=5, resources={"gpu_memory_gb": 8})
    sid = create_sweep(srv, spec)["id"]
    wait_for(lambda: len(started(state)) >= 4, 30, "four trials to start")
    # 4 x (8 GB + a 0.5 GB CUDA context) = 34 GB fit in 40; a fifth would need 42.5.
    time.sleep(2.5)
    running = started(state)
    assert len(running) == 4, running
    assert {r["cuda"] for r in running} == {"0"}
    assert sorted(t["state"] for t in get_trials(srv, sid)) == ["running"] * 4
    assert "GPUs" in a.log_path.read_text() and "0 (40.0 GB)" in a.log_path.read_text()
    go.touch()
    s = wait_sweep(srv, sid, timeout=60)
    assert s["state"] == "completed" and s["counts"]["completed"] == 5, s
    fifth = [r for r in started(state) if r not in running]
    assert len(fifth) == 1 and fifth[0]["cuda"] == "0"
    assert fifth[0]["started"] >= max(r["started"] for r in running)


def test_out_of_memory_on_a_shared_gpu_retries_with_more_memory(server_factory, agents, gpu_box):
    srv = server_factory()
    env, script, state, go = gpu_box
    go.touch()
    agents("gpu", srv, "--slots", "3", env=env)
    spec = spec_of(unique_name("oom"), f'"{PY}" "{script}" "{state}" "{go}"',
                   max_trials=3, parallelism=3, max_retries=0,
                   resources={"gpu_memory_gb": 12}, env={"OOM": "1"})
    sid = create_sweep(srv, spec)["id"]
    s = wait_sweep(srv, sid, timeout=60)
    assert s["state"] == "completed", s
    t = {t["number"]: t for t in get_trials(srv, sid)}
    # Trial 0 ran out of memory once while sharing, then ran with twice the memory.
    assert t[0]["state"] == "completed" and t[0]["attempts"] == 2 and t[0]["failures"] == 0, t[0]
    assert t[1]["state"] == "completed" and t[1]["attempts"] == 1, t[1]
    # Trial 2 always runs out: 12.5 GB, then 25 GB (both shared, not failures), then the whole
    # GPU, where running out is a failure like any other (max_retries 0: failed).
    assert t[2]["state"] == "failed" and t[2]["attempts"] == 3 and t[2]["failures"] == 1, t[2]
    assert "CUDA out of memory" in t[2]["reason"], t[2]


def test_bad_resources_are_refused_naming_the_field(server_factory):
    from test_sweeps import v1

    srv = server_factory()
    for resources, field in (
        ({"gpus": 1.5}, "resources.gpus"),
        ({"gpus": -1}, "resources.gpus"),
        ({"gpu_memory_gb": 0}, "resources.gpu_memory_gb"),
        ({"gpus": 0.25, "gpu_memory_gb": 8}, "resources.gpu_memory_gb"),
        ({"gpu": 1}, "resources"),
    ):
        r = v1(srv, "POST", "sweeps", spec_of(unique_name("bad"), "true", resources=resources))
        assert r.status_code == 400, (resources, r.text)
        assert field in r.text, (resources, r.text)


def test_a_trial_that_says_nothing_keeps_the_gpus_to_itself(server_factory, agents, gpu_box):
    """A sweep without `resources` on a GPU agent: its trial sees every GPU (no
    CUDA_VISIBLE_DEVICES with detected GPUs) and nothing is packed next to it."""
    srv = server_factory()
    env, script, state, go = gpu_box
    agents("gpu", srv, "--slots", "3", env=env)
    legacy = create_sweep(srv, spec_of(unique_name("plain"), f'"{PY}" "{script}" "{state}" "{go}"'))["id"]
    wait_for(lambda: len(started(state)) == 1, 30, "the plain trial to start")
    assert started(state)[0]["cuda"] is None
    packed = create_sweep(srv, spec_of(unique_name("packed"), f'"{PY}" "{script}" "{state}" "{go}"',
                                       resources={"gpus": 0.25}))["id"]
    time.sleep(2.5)
    assert len(started(state)) == 1 and get_trials(srv, packed) == []
    go.touch()
    for sid in (legacy, packed):
        s = wait_sweep(srv, sid, timeout=60)
        assert s["state"] == "completed", s
    assert sorted(r["cuda"] or "" for r in started(state)) == ["", "0"]
