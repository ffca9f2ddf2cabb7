"""Checkpoint and resume a spotsweep trial.

The agent gives every trial a directory, SPOTSWEEP_CHECKPOINT_DIR, and keeps a copy of it among
the trial's run artifacts (checkpoints/). When a preempted trial runs again, on any machine, the
agent first puts the copy back and sets SPOTSWEEP_RESUME=1. What is left to the trial:

  * write the checkpoint in one piece: to a temporary name, then rename it (the agent never
    syncs names ending in .tmp), so that a sync never sees half a file;
  * start from the checkpoint when there is one;
  * log each step once: after a resume, the steps between the checkpoint and the moment the
    machine was lost are in the run already, so they are not logged again (the run's history
    has no gap and no duplicate step).

    ckpt = Checkpoint()
    state = ckpt.load()                  # None on a fresh start
    for step in range(ckpt.next_step, steps):
        ...
        ckpt.log_metrics({"loss": loss}, step)
        ckpt.save(state, step)

Outside spotsweep (no SPOTSWEEP_CHECKPOINT_DIR) it checkpoints into ./checkpoints and logs to
the active MLflow run, if any. Saves with torch.save when PyTorch is installed (tensors on a GPU
come back where torch.load puts them), with pickle otherwise.
"""

import os
import pickle

try:
    import torch
except ImportError:
    torch = None


class Checkpoint:
    def __init__(self, filename="state.pt"):
        self.dir = os.environ.get("SPOTSWEEP_CHECKPOINT_DIR") or os.path.abspath("checkpoints")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, filename)
        self.resumed = os.environ.get("SPOTSWEEP_RESUME") == "1"
        self.attempt = int(os.environ.get("SPOTSWEEP_ATTEMPT", "1"))
        # mlflow.start_run() unsets MLFLOW_RUN_ID: read it before the trial's code does.
        self.run_id = os.environ.get("MLFLOW_RUN_ID")
        # The step the checkpoint holds; the loop goes on from next_step.
        self.step = -1
        self._logged = {}

    @property
    def next_step(self):
        return self.step + 1

    def load(self):
        """The state last saved, or None when there is nothing to resume."""
        if not os.path.exists(self.path):
            return None
        if torch is not None:
            saved = torch.load(self.path, weights_only=False)
        else:
            with open(self.path, "rb") as f:
                saved = pickle.load(f)
        self.step = saved["step"]
        client = self._client()
        if client is not None:
            client.set_tag(self.run_id, "spotsweep.resumed_from_step", str(self.step))
        return saved["state"]

    def save(self, state, step):
        """Saves `state` as of `step` (a temporary file, then a rename)."""
        tmp = self.path + ".tmp"
        saved = {"step": step, "state": state}
        if torch is not None:
            torch.save(saved, tmp)
        else:
            with open(tmp, "wb") as f:
                pickle.dump(saved, f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.step = step

    def log_metrics(self, metrics, step):
        """Logs metrics at `step`, skipping a step the run already has (after a resume)."""
        import mlflow

        client = self._client()
        if client is None:
            if mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=step)
            return
        for key, value in metrics.items():
            if key not in self._logged:
                history = client.get_metric_history(self.run_id, key) if self.attempt > 1 else []
                self._logged[key] = max((m.step for m in history), default=-1)
            if step > self._logged[key]:
                client.log_metric(self.run_id, key, value, step=step)
                self._logged[key] = step

    def _client(self):
        if self.run_id is None:
            return None
        from mlflow.tracking import MlflowClient

        return MlflowClient()
