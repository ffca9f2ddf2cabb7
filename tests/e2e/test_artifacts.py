"""Artifacts through the mlflow-artifacts proxy (`/api/2.0/mlflow-artifacts/artifacts/...`)."""

import hashlib
import http.client
import os
import urllib.parse
import uuid
from pathlib import Path

import mlflow
import pytest

PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def raw_request(server, method, path, body=None, headers=None):
    """Send a request with the path exactly as given (requests/urllib3 would normalize `..`)."""
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        h = dict(server.headers())
        h.update(headers or {})
        if body is not None or method in ("PUT", "POST"):
            h["Content-Length"] = str(len(body or b""))
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def run_id(client, exp_id):
    return client.create_run(exp_id).info.run_id


def test_log_and_download_artifacts(client, run_id, workdir):
    f = workdir / "hello.txt"
    f.write_text("hello world\n")
    client.log_artifact(run_id, str(f))
    client.log_artifact(run_id, str(f), artifact_path="nested/deeper")

    tree = workdir / "tree"
    (tree / "sub" / "subsub").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)
    (tree / "sub" / "subsub" / "c.json").write_text('{"c": 1}')
    client.log_artifacts(run_id, str(tree), artifact_path="dir")

    root = client.list_artifacts(run_id)
    assert [(a.path, a.is_dir) for a in root] == [
        ("dir", True),
        ("hello.txt", False),
        ("nested", True),
    ]
    hello = [a for a in root if a.path == "hello.txt"][0]
    assert hello.file_size == len("hello world\n")

    sub = client.list_artifacts(run_id, "dir")
    assert sorted((a.path, a.is_dir) for a in sub) == [("dir/a.txt", False), ("dir/sub", True)]
    subsub = client.list_artifacts(run_id, "dir/sub")
    assert sorted((a.path, a.is_dir, a.file_size) for a in subsub) == [
        ("dir/sub/b.bin", False, 1024),
        ("dir/sub/subsub", True, None),
    ]
    assert client.list_artifacts(run_id, "does/not/exist") == []

    dst = workdir / "dl1"
    dst.mkdir()
    p = client.download_artifacts(run_id, "hello.txt", str(dst))
    assert Path(p).read_text() == "hello world\n"

    dst2 = workdir / "dl2"
    dst2.mkdir()
    p = client.download_artifacts(run_id, "dir", str(dst2))
    got = Path(p)
    assert (got / "a.txt").read_text() == "A"
    assert (got / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 4
    assert (got / "sub" / "subsub" / "c.json").read_text() == '{"c": 1}'

    dst3 = workdir / "dl3"
    dst3.mkdir()
    p = client.download_artifacts(run_id, "", str(dst3))
    assert (Path(p) / "nested" / "deeper" / "hello.txt").read_text() == "hello world\n"
    assert (Path(p) / "dir" / "sub" / "subsub" / "c.json").exists()


def test_log_text_and_dict_fluent(client, unique, workdir):
    mlflow.set_experiment(unique("art"))
    with mlflow.start_run() as run:
        mlflow.log_text("some text ü", "notes/readme.txt")
        mlflow.log_dict({"a": [1, 2, 3], "b": {"c": "d"}}, "config.json")
        mlflow.log_dict({"y": 1}, "config.yaml")
    rid = run.info.run_id
    assert mlflow.artifacts.load_text(f"runs:/{rid}/notes/readme.txt") == "some text ü"
    assert mlflow.artifacts.load_dict(f"runs:/{rid}/config.json") == {
        "a": [1, 2, 3],
        "b": {"c": "d"},
    }
    assert mlflow.artifacts.load_text(f"runs:/{rid}/config.yaml").strip() == "y: 1"
    paths = {a.path for a in client.list_artifacts(rid)}
    assert paths == {"notes", "config.json", "config.yaml"}
    p = mlflow.artifacts.download_artifacts(
        run_id=rid, artifact_path="notes", dst_path=str(workdir)
    )
    assert (Path(p) / "readme.txt").read_text(encoding="utf-8") == "some text ü"


def test_overwrite_artifact(client, run_id, workdir):
    f = workdir / "v.txt"
    f.write_text("one")
    client.log_artifact(run_id, str(f))
    f.write_text("two!")
    client.log_artifact(run_id, str(f))
    d = workdir / "dl"
    d.mkdir()
    assert Path(client.download_artifacts(run_id, "v.txt", str(d))).read_text() == "two!"


@pytest.mark.timeout(150)
def test_large_artifact_roundtrip(client, run_id, workdir):
    f = workdir / "big.bin"
    block = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for i in range(50):
            out.write(block[i:] + block[:i])
    client.log_artifact(run_id, str(f), artifact_path="blobs")
    (info,) = client.list_artifacts(run_id, "blobs")
    assert info.path == "blobs/big.bin"
    assert info.file_size == 50 * (1 << 20)
    d = workdir / "dl"
    d.mkdir()
    p = client.download_artifacts(run_id, "blobs/big.bin", str(d))
    assert os.path.getsize(p) == 50 * (1 << 20)
    assert sha256(p) == sha256(f)


def test_proxy_raw_routes(client, server, exp_id, run_id):
    base = f"{exp_id}/{run_id}/artifacts"
    r = server.request("PUT", f"{PROXY}/{base}/raw/x.txt", data=b"payload")
    assert r.status_code == 200
    r = server.get(f"{PROXY}/{base}/raw/x.txt")
    assert r.status_code == 200
    assert r.content == b"payload"

    # listing: paths are bare names relative to the listed directory
    r = server.get(PROXY, params={"path": f"{base}/raw"})
    assert r.status_code == 200
    assert r.json() == {"files": [{"path": "x.txt", "is_dir": False, "file_size": 7}]}
    r = server.get(PROXY, params={"path": base})
    assert r.json() == {"files": [{"path": "raw", "is_dir": True}]}
    r = server.get(PROXY, params={"path": f"{base}/missing"})
    assert r.status_code == 200
    assert r.json() == {}

    # missing file: 404 JSON
    r = server.get(f"{PROXY}/{base}/raw/nope.txt")
    assert r.status_code == 404
    assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

    # the /ajax-api twin serves the same bytes
    r = server.get(f"/ajax-api/2.0/mlflow-artifacts/artifacts/{base}/raw/x.txt")
    assert r.status_code == 200 and r.content == b"payload"

    # DELETE
    r = server.request("DELETE", f"{PROXY}/{base}/raw/x.txt")
    assert r.status_code == 200
    r = server.get(f"{PROXY}/{base}/raw/x.txt")
    assert r.status_code == 404
    assert client.list_artifacts(run_id, "raw") == []


def test_tracking_artifacts_list(client, server, exp_id, run_id, workdir):
    f = workdir / "f.txt"
    f.write_text("abc")
    client.log_artifact(run_id, str(f), artifact_path="d")
    r = server.get("artifacts/list", params={"run_id": run_id, "path": "d"})
    assert r.status_code == 200
    body = r.json()
    assert body["root_uri"] == f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts"
    assert body["files"] == [{"path": "d/f.txt", "is_dir": False, "file_size": 3}]
    r = server.get("artifacts/list", params={"run_id": run_id})
    assert r.json()["files"] == [{"path": "d", "is_dir": True}]


# ----------------------------------------------------------------------------- traversal

UP_VARIANTS = ["../", "%2e%2e/", "..%2f", "%2e%2e%2f", ".%2e/", "%2E%2E%2F"]
BACKSLASH_VARIANTS = ["..%5c", "%2e%2e%5c", "..%5C"]


def _attempts(exp_id, run_id, name, variants, depths=range(1, 7)):
    out = []
    for prefix in ("", f"{exp_id}/{run_id}/artifacts/"):
        for up in variants:
            for d in depths:
                out.append(prefix + up * d + name)
    return out


def _files_outside(root: Path, base: Path, needle: str):
    hits = []
    for dirpath, _dirs, files in os.walk(base):
        for fn in files:
            p = Path(dirpath) / fn
            if needle in fn and root not in p.parents:
                hits.append(p)
    return hits


def _refused(path, status):
    # 4xx; a redirect is tolerated only for a doubled slash (`artifacts//abs/path`), which
    # some HTTP stacks normalize with a 308 to a path inside the artifact root
    doubled = urllib.parse.unquote(path).startswith("/")
    return 400 <= status < 500 or (doubled and status in (301, 308))


def test_path_traversal_is_refused(client, server, exp_id, run_id):
    local = not server.external
    root = server.artifact_root.resolve()
    base = root.parent.parent  # a folder above the data dir, private to this session
    secret_name = f"secret-{uuid.uuid4().hex}.txt"
    secret_value = f"TOPSECRET-{uuid.uuid4().hex}".encode()
    secrets = []
    if local:
        for d in (root.parent, base):
            p = d / secret_name
            p.write_bytes(secret_value)
            secrets.append(p)

    gets = _attempts(exp_id, run_id, secret_name, UP_VARIANTS)
    if local:
        for p in secrets:
            gets.append("/" + str(p).lstrip("/"))  # -> .../artifacts//abs/path
            gets.append("%2f" + str(p).lstrip("/").replace("/", "%2f"))
    gets += ["..", "%2e%2e", f"{exp_id}/{run_id}/artifacts/..", "/etc/passwd", "%2fetc%2fpasswd"]
    for path in gets:
        status, body = raw_request(server, "GET", f"{PROXY}/{path}")
        assert _refused(path, status), (path, status, body[:200])
        assert secret_value not in body
        assert b"root:" not in body
    for path in ["..", "../", "%2e%2e", f"{exp_id}/../..", "/etc", "%2Fetc"]:
        q = urllib.parse.quote(path, safe="%")
        status, body = raw_request(server, "GET", f"{PROXY}?path={q}")
        assert 400 <= status < 500, (path, status, body[:200])

    canary = f"canary-{uuid.uuid4().hex}"
    puts = _attempts(exp_id, run_id, canary, UP_VARIANTS)
    abs_target = base / f"{canary}-abs"
    puts += ["/" + str(abs_target).lstrip("/"), "%2f" + str(abs_target).lstrip("/").replace("/", "%2f")]
    for path in puts:
        status, body = raw_request(server, "PUT", f"{PROXY}/{path}", body=b"evil")
        assert _refused(path, status), (path, status, body[:200])

    deletes = _attempts(exp_id, run_id, secret_name, ["../", "%2e%2e/", "..%2f"], range(1, 6))
    for path in deletes:
        status, body = raw_request(server, "DELETE", f"{PROXY}/{path}")
        assert 400 <= status < 500, (path, status, body[:200])

    if local:
        for p in secrets:
            assert p.read_bytes() == secret_value, f"{p} was modified or deleted"
        assert not abs_target.exists()
        assert _files_outside(root, base, canary) == []


def test_backslash_paths_stay_inside(client, server, exp_id, run_id):
    """Encoded backslashes: the reference treats them as ordinary characters (the file lands
    inside the artifact root, named with a backslash); spotsweep must answer 4xx."""
    local = not server.external
    root = server.artifact_root.resolve()
    base = root.parent.parent
    canary = f"canary-{uuid.uuid4().hex}"
    secret_name = f"secret-{uuid.uuid4().hex}.txt"
    secret_value = f"TOPSECRET-{uuid.uuid4().hex}".encode()
    if local:
        (root.parent / secret_name).write_bytes(secret_value)
    for path in _attempts(exp_id, run_id, secret_name, BACKSLASH_VARIANTS):
        status, body = raw_request(server, "GET", f"{PROXY}/{path}")
        assert 400 <= status < 500, (path, status, body[:200])
        assert secret_value not in body
    for path in _attempts(exp_id, run_id, canary, BACKSLASH_VARIANTS):
        status, body = raw_request(server, "PUT", f"{PROXY}/{path}", body=b"evil")
        if server.is_reference:
            assert status < 500
        else:
            assert 400 <= status < 500, (path, status, body[:200])
    if local:
        assert _files_outside(root, base, canary) == []


@pytest.mark.spotsweep_only
def test_artifacts_land_in_data_dir(client, server, exp_id, run_id, workdir):
    if server.external:
        pytest.skip("needs the server's data dir")
    f = workdir / "where.txt"
    f.write_text("here")
    client.log_artifact(run_id, str(f), artifact_path="x")
    p = server.data_dir / "artifacts" / exp_id / run_id / "artifacts" / "x" / "where.txt"
    assert p.read_text() == "here"


def test_artifact_uri_shape(client, exp_id, run_id):
    run = client.get_run(run_id)
    assert run.info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts"
    exp = client.get_experiment(exp_id)
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"


def test_server_info_and_logged_models_search(server, exp_id):
    r = server.get("/api/3.0/mlflow/server-info")
    assert r.status_code == 200
    assert r.json().get("multipart_uploads_enabled", False) is False
    r = server.post(
        "/api/2.0/mlflow/logged-models/search", json={"experiment_ids": [exp_id]}
    )
    assert r.status_code == 200
    assert r.json().get("models", []) == []


def test_artifact_names_need_percent_decoding(client, run_id, workdir):
    src = workdir / "names"
    src.mkdir()
    names = ["my file.txt", "ü-実験.txt", "pl+us.txt", "semi;colon.txt"]
    for n in names:
        (src / n).write_text(n)
    client.log_artifacts(run_id, str(src), artifact_path="odd dir")
    listed = client.list_artifacts(run_id, "odd dir")
    assert sorted(a.path for a in listed) == sorted(f"odd dir/{n}" for n in names)
    d = workdir / "dl"
    d.mkdir()
    p = Path(client.download_artifacts(run_id, "odd dir", str(d)))
    for n in names:
        assert (p / n).read_text() == n


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.spotsweep_only
@pytest.mark.needs_process
@pytest.mark.timeout(170)
def test_uploads_and_downloads_stream_in_bounded_memory(server_factory):
    """A file several times the daemon's memory passes through it both ways: peak RSS stays small."""
    srv = server_factory()
    size_mib = 384
    block = os.urandom(1 << 20)

    def body():
        for i in range(size_mib):
            yield block[i % 997 :] + block[: i % 997]

    expected = hashlib.sha256()
    for chunk in body():
        expected.update(chunk)
    path = f"{PROXY}/0/{uuid.uuid4().hex}/artifacts/big.bin"
    r = srv.request("PUT", path, data=body())
    assert r.status_code == 200, r.text
    got = hashlib.sha256()
    n = 0
    with srv.request("GET", path, stream=True) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            got.update(chunk)
            n += len(chunk)
    assert n == size_mib << 20
    assert got.hexdigest() == expected.hexdigest()
    peak = _peak_rss_mib(srv.proc.pid)
    assert peak < 120, f"peak RSS {peak:.0f} MiB while streaming {size_mib} MiB"
