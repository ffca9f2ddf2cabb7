"""A training loop that survives preemption, in the shape of a PyTorch one.

The model, the optimizer and the data order are plain Python here so that the example runs
anywhere; with PyTorch they are model.state_dict(), optimizer.state_dict() and the sampler's
generator state, saved and loaded the same way. Run it as a sweep:

    spotsweep run examples/checkpointing/sweep.yaml
"""

import argparse
import random
import time

from spotsweep_checkpoint import Checkpoint

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--momentum", type=float, default=0.9)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--step-seconds", type=float, default=0.1, help="extra time per step (a stand-in for a GPU)")
args = p.parse_args()

# The data: y = 3x + 1 with noise.
data_rng = random.Random(0)
data = [(x, 3 * x + 1 + data_rng.gauss(0, 0.1)) for x in (data_rng.uniform(-1, 1) for _ in range(256))]

ckpt = Checkpoint()
state = ckpt.load()
if state is None:
    state = {
        "model": {"w": 0.0, "b": 0.0},  # model.state_dict()
        "optimizer": {"vw": 0.0, "vb": 0.0},  # optimizer.state_dict()
        "rng": random.Random(1).getstate(),  # the data loader's shuffling
    }
else:
    print(f"resumed from step {ckpt.step} (attempt {ckpt.attempt}, restored by the agent: {ckpt.resumed})", flush=True)
model, opt = state["model"], state["optimizer"]
rng = random.Random()
rng.setstate(state["rng"])

for step in range(ckpt.next_step, args.steps):
    batch = rng.sample(data, 32)
    gw = sum(2 * (model["w"] * x + model["b"] - y) * x for x, y in batch) / len(batch)
    gb = sum(2 * (model["w"] * x + model["b"] - y) for x, y in batch) / len(batch)
    opt["vw"] = args.momentum * opt["vw"] + gw
    opt["vb"] = args.momentum * opt["vb"] + gb
    model["w"] -= args.lr * opt["vw"]
    model["b"] -= args.lr * opt["vb"]
    loss = sum((model["w"] * x + model["b"] - y) ** 2 for x, y in data) / len(data)
    time.sleep(args.step_seconds)
    ckpt.log_metrics({"loss": loss}, step)
    ckpt.save({"model": model, "optimizer": opt, "rng": rng.getstate()}, step)

print(f"loss {loss:.6f}", flush=True)
