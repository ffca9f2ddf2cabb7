"""A lab's control plane: three daemons on one PostgreSQL database behind a load balancer, a
sweep on a gce pool of the fake Compute API, and the daemon that leads the pool's fleet killed
with SIGKILL in the middle of the sweep. Another daemon takes the fleet over: no VM is orphaned
or created twice, the sweep completes, and every trial is completed exactly once. Daemons that
start while another is live, with artifacts in their own data dir, warn about it.

Runs when SPOTSWEEP_E2E_POSTGRES names a PostgreSQL server (scripts/test sets it).
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
import uuid

import pytest

from conftest import POSTGRES, database_url_for
from test_dashboard import FAST_TTL, PY, VM_TRIAL, GceFake, create_sweep, v1, wait_state, wait_until

pytestmark = [
    pytest.mark.spotsweep_only,
    pytest.mark.needs_process,
    pytest.mark.skipif(not POSTGRES, reason="needs a PostgreSQL server (SPOTSWEEP_E2E_POSTGRES)"),
]


class Balancer:
    """A TCP load balancer on loopback, as a lab's internal passthrough balancer: each connection
    goes to the next backend that accepts it (a dead daemon is skipped)."""

    def __init__(self):
        self.backends: list[tuple[str, int]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.turn = itertools.count()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        backends = list(self.backends)
        start = next(self.turn)
        for i in range(len(backends)):
            try:
                upstream = socket.create_connection(backends[(start + i) % len(backends)], timeout=2)
                break
            except OSError:
                continue
        else:
            client.close()
            return
        upstream.settimeout(None)

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client)

    def close(self):
        self.sock.close()


def leader_of(url: str, role: str) -> str | None:
    """Who holds `role` now, read from the database (`ADDRESS/ID`)."""
    out = subprocess.run(
        ["psql", "-qtA", url, "-c",
         f"SELECT holder FROM leaders WHERE role = '{role}' "
         "AND expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return out or None


def test_the_fleet_survives_the_death_of_its_leader(server_factory, tmp_path):
    fake = GceFake(tmp_path / "gce")
    balancer = Balancer()
    try:
        config = tmp_path / "spotsweep.toml"
        config.write_text(f"""
public_url = "{balancer.url}"

[pools.gpu]
provider = "gce"
project = "fake-project"
zones = ["us-central1-a", "us-central1-b"]
machine_type = "a2-highgpu-1g"
image_family = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu"
slots_per_vm = 1
max_vms = 2
spot_price_per_hour = 1.8
budget_usd = 10.0
idle_timeout = "60s"
credentials = "{fake.credentials}"
compute_endpoint = "{fake.base_url}"

[fleet]
tick = "200ms"
reconcile = "2s"
""")
        first_dir = tmp_path / "d0"
        db = database_url_for(first_dir)
        args = ["--config", str(config), "--database-url", db]
        daemons = [server_factory(data_dir=first_dir, extra_args=args, env=FAST_TTL)]
        for i in (1, 2):
            data_dir = tmp_path / f"d{i}"
            data_dir.mkdir()
            # As an operator copies it from the first daemon.
            (data_dir / "admin.token").write_text(daemons[0].token + "\n")
            daemons.append(server_factory(data_dir=data_dir, extra_args=args, env=FAST_TTL))
        # Their artifacts go to each one's own data dir: the later ones say so at start.
        warning = "artifacts go to this daemon's own data dir"
        assert warning not in daemons[0].logs(), daemons[0].logs()
        assert all(warning in d.logs() for d in daemons[1:]), daemons[1].logs()
        balancer.backends = [("127.0.0.1", int(d.url.rsplit(":", 1)[1])) for d in daemons]
        by_port = {d.url.rsplit(":", 1)[1]: d for d in daemons}

        script = tmp_path / "vm_trial.py"
        script.write_text(VM_TRIAL)
        sweep = create_sweep(daemons[1], {
            "name": f"lab-{uuid.uuid4().hex[:6]}", "pool": "gpu",
            "command": f'"{PY}" "{script}" {{x}}',
            "parameters": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "goal": "minimize"},
            "max_trials": 6, "parallelism": 2, "sampler": {"type": "random", "seed": 3},
        })
        sid = sweep["id"]

        def running_on_vms():
            trials = v1(daemons[2], "GET", f"sweeps/{sid}/trials").json()["trials"]
            return sum(t["state"] == "running" for t in trials) >= 1

        try:
            wait_until(running_on_vms, 120, "a trial running on a VM")
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(d.logs(40) for d in daemons)
                                 + f"\nguests:\n{fake.consoles()}") from None

        holder = leader_of(db, "fleet:gpu")
        assert holder, "somebody leads the pool's fleet"
        leader = by_port[holder.split("/")[0].rsplit(":", 1)[1]]
        leader.kill()
        survivors = [d for d in daemons if d is not leader]

        # Another daemon takes the fleet over within a lease (10 s) and a renewal (3 s).
        wait_until(lambda: (h := leader_of(db, "fleet:gpu")) is not None and h != holder, 20,
                   "another daemon leading the fleet")
        try:
            done = wait_state(survivors[0], sid, ("completed",), timeout=240)
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(d.logs(60) for d in survivors)
                                 + f"\nguests:\n{fake.consoles()}") from None
        assert done["counts"]["completed"] == 6, done

        # Every trial exactly once: one lease each that succeeded (a trial whose VM was lost
        # would show a preempted attempt and a retry, never two successes).
        attempts = v1(survivors[1], "GET", f"sweeps/{sid}/attempts").json()["attempts"]
        succeeded = [a["n"] for a in attempts if a["outcome"] == "succeeded"]
        assert sorted(succeeded) == list(range(6)), attempts

        # No VM created twice: one executed insert per VM record (ended ones included).
        pools = {p["name"]: p for p in v1(survivors[0], "GET", "pools").json()["pools"]}
        records = pools["gpu"]["vms"]
        all_records = {vm["name"] for vm in records}
        inserts = fake.command("inserts")
        assert inserts == len(all_records), (inserts, records)
        # None orphaned: every instance the fake still runs belongs to a live VM record.
        live = {vm["name"] for vm in records if vm["state"] not in ("deleted", "preempted", "failed")}
        running = {i["name"] for i in fake.command("instances") if i["status"] not in ("TERMINATED",)}
        assert running <= live, (running, records)
        print(json.dumps({"leader": holder, "inserts": inserts, "vms": sorted(all_records)}))
    finally:
        balancer.close()
        fake.close()
