"""Bearer-token auth (spotsweep only): admin token, token API, --no-auth rules."""

import os
import stat
import subprocess
import time

import pytest
import requests
from mlflow.exceptions import MlflowException

from conftest import spotsweep_bin

pytestmark = pytest.mark.spotsweep_only

PROTECTED = [
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=10"),
    ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=10"),
    ("GET", "/api/2.0/mlflow/runs/get?run_id=00000000000000000000000000000000"),
    ("POST", "/api/2.0/mlflow/experiments/create"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts?path=0"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/f.txt"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/f.txt"),
    ("GET", "/api/3.0/mlflow/server-info"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
]


def assert_401(resp):
    assert resp.status_code == 401, (resp.request.method, resp.url, resp.status_code, resp.text)
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["error_code"] == "UNAUTHENTICATED"
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_no_token_is_401(server, method, path):
    kw = {"json": {"name": "x"}} if method == "POST" else {}
    if method == "PUT":
        kw = {"data": b"x"}
    assert_401(requests.request(method, server.url + path, timeout=10, **kw))


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer",
    ],
)
def test_wrong_token_is_401(server, header):
    r = requests.get(
        server.url + "/api/2.0/mlflow/experiments/search",
        params={"max_results": 10},
        headers={"Authorization": header},
        timeout=10,
    )
    assert_401(r)


def test_token_with_suffix_is_401(server):
    r = requests.get(
        server.url + "/api/2.0/mlflow/experiments/search",
        params={"max_results": 10},
        headers={"Authorization": f"Bearer {server.token}x"},
        timeout=10,
    )
    assert_401(r)
    r = requests.get(
        server.url + "/api/2.0/mlflow/experiments/search",
        params={"max_results": 10},
        headers={"Authorization": f"Bearer {server.token[:-1]}"},
        timeout=10,
    )
    assert_401(r)


def test_health_and_version_open(server):
    r = requests.get(server.url + "/health", timeout=10)
    assert r.status_code == 200 and r.text.strip() == "OK"
    r = requests.get(server.url + "/version", timeout=10)
    assert r.status_code == 200 and r.text.strip()


def test_admin_token_works(server):
    r = server.get("experiments/search", params={"max_results": 10})
    assert r.status_code == 200


def test_client_without_token_gets_unauthenticated(client, monkeypatch, fast_errors):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(MlflowException) as ei:
        client.search_experiments()
    assert ei.value.error_code == "UNAUTHENTICATED"


def test_admin_token_file_mode(server):
    if server.external:
        pytest.skip("needs the data dir")
    p = server.data_dir / "admin.token"
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode == 0o600, oct(mode)
    assert p.read_text().strip() == server.token
    assert len(server.token) >= 20


def test_token_lifecycle(server, client, monkeypatch, unique, fast_errors):
    r = server.post("/api/v1/tokens", json={"name": "ci"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "ci"
    assert isinstance(created["id"], str) and created["id"]
    secret = created["token"]
    assert isinstance(secret, str) and len(secret) >= 20 and secret != server.token
    assert isinstance(created["created_at"], int)
    assert abs(created["created_at"] - time.time() * 1000) < 120_000

    r = server.get("/api/v1/tokens")
    assert r.status_code == 200
    listed = r.json()["tokens"]
    mine = [t for t in listed if t["id"] == created["id"]]
    assert len(mine) == 1
    assert mine[0]["name"] == "ci"
    assert mine[0]["created_at"] == created["created_at"]
    assert secret not in r.text  # never the secret
    assert server.token not in r.text

    # the new token works with the unmodified MLflow client
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    exp_id = client.create_experiment(unique("tok"))
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "m", 1.0)
    assert client.get_run(run_id).data.metrics["m"] == 1.0

    # revoke it (with the admin token)
    r = server.request("DELETE", f"/api/v1/tokens/{created['id']}")
    assert r.status_code == 204, r.text
    r = server.get("/api/v1/tokens")
    assert created["id"] not in {t["id"] for t in r.json()["tokens"]}

    with pytest.raises(MlflowException) as ei:
        client.get_run(run_id)
    assert ei.value.error_code == "UNAUTHENTICATED"
    assert_401(
        requests.get(
            server.api("runs/get"),
            params={"run_id": run_id},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
    )
    # the admin token still works
    assert server.get("runs/get", params={"run_id": run_id}).status_code == 200


def test_token_artifacts_with_created_token(server, client, monkeypatch, exp_id, workdir):
    r = server.post("/api/v1/tokens", json={"name": "artifacts"})
    assert r.status_code == 201
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", r.json()["token"])
    run_id = client.create_run(exp_id).info.run_id
    f = workdir / "a.txt"
    f.write_text("tok")
    client.log_artifact(run_id, str(f))
    assert [a.path for a in client.list_artifacts(run_id)] == ["a.txt"]
    server.request("DELETE", f"/api/v1/tokens/{r.json()['id']}")


def test_delete_unknown_token(server):
    r = server.request("DELETE", "/api/v1/tokens/does-not-exist")
    assert r.status_code == 404, r.text
    assert r.json().get("message")


@pytest.mark.needs_process
def test_no_auth_on_loopback(server_factory):
    srv = server_factory(auth=False)
    assert srv.token is None
    r = requests.get(srv.api("experiments/search"), params={"max_results": 5}, timeout=10)
    assert r.status_code == 200, r.text
    srv.stop()


@pytest.mark.needs_process
def test_no_auth_refused_on_non_loopback(tmp_path):
    listen = "0.0.0.0:0"
    binary = spotsweep_bin()
    if not binary.exists():
        pytest.fail(f"spotsweep binary not found at {binary}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", listen, "--data-dir", str(tmp_path / "d"), "--no-auth"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("spotsweep --no-auth on a non-loopback address kept running:\n" + out.decode())
    assert proc.returncode != 0
    assert "loopback" in out.decode("utf-8", "replace").lower()
