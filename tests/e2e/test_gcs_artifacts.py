"""Artifacts in a GCS bucket (`--artifacts-destination gs://BUCKET/PREFIX`), against a fake GCS.

The daemon's object_store GCS client is pointed at `fake_gcs.FakeGcsServer` (loopback) through
the variables `GoogleCloudStorageBuilder::from_env()` reads:
  GOOGLE_BASE_URL      the fake's http://127.0.0.1:PORT (the default is https://storage.googleapis.com)
  GOOGLE_BEARER_TOKEN  a static OAuth token: no metadata server / service account lookups; the fake
                       requires it as `Authorization: Bearer <token>`
  GOOGLE_ALLOW_HTTP    plain http (already the GCS builder's default; set for clarity)
Every other GOOGLE_* variable of the caller's shell is removed so it cannot change the setup.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests

from fake_gcs import FakeGcsServer

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

PROXY = "/api/2.0/mlflow-artifacts/artifacts"
BUCKET = "test-bucket"
PREFIX = "some/prefix"
MiB = 1 << 20


@pytest.fixture(scope="module")
def gcs():
    with FakeGcsServer(buckets=[BUCKET], token=f"tok-{uuid.uuid4().hex}") as fake:
        yield fake


@pytest.fixture(scope="module")
def srv(server_factory, gcs):
    env = {k: None for k in os.environ if k.startswith("GOOGLE_") or k == "SERVICE_ACCOUNT"}
    env.update(
        {
            "GOOGLE_BASE_URL": gcs.url,
            "GOOGLE_BEARER_TOKEN": gcs.token,
            "GOOGLE_ALLOW_HTTP": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    h = server_factory(
        extra_args=["--artifacts-destination", f"gs://{BUCKET}/{PREFIX}"], env=env
    )
    yield h
    h.stop()


@pytest.fixture
def gclient(srv, connect):
    return connect(srv)


@pytest.fixture
def run(gclient, unique):
    exp_id = gclient.create_experiment(unique("gcs"))
    run_id = gclient.create_run(exp_id).info.run_id
    return exp_id, run_id


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def raw_request(srv, method, path, body=None):
    """The path is sent exactly as given (requests would normalize `..`)."""
    u = urllib.parse.urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        h = dict(srv.headers())
        if body is not None or method in ("PUT", "POST"):
            h["Content-Length"] = str(len(body or b""))
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def assert_all_inside_prefix(gcs):
    for key in gcs.objects(BUCKET):
        assert key.startswith(PREFIX + "/"), f"object outside the prefix: {key!r}"
        segs = key.split("/")
        assert all(s not in ("", ".", "..") for s in segs), f"odd object name {key!r}"


def log_on_fail(gcs, since=0):
    return "fake GCS requests:\n" + gcs.request_log(since, last=80)


def test_gcs_roundtrip(gclient, srv, gcs, run, workdir):
    exp_id, run_id = run
    base = f"{PREFIX}/{exp_id}/{run_id}/artifacts"
    start = len(gcs.requests)

    # one file
    f = workdir / "hello.txt"
    f.write_text("hello gcs\n")
    gclient.log_artifact(run_id, str(f))

    # a folder with subfolders (and an empty file: GCS refuses an empty multipart upload, so
    # object_store aborts it and does a plain PUT instead)
    tree = workdir / "tree"
    (tree / "sub" / "subsub").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)
    (tree / "sub" / "subsub" / "c.json").write_text('{"c": 1}')
    (tree / "sub" / "empty.txt").write_bytes(b"")
    gclient.log_artifacts(run_id, str(tree), artifact_path="dir")

    # ~20 MB: four full 5 MiB parts and a short last one
    big = workdir / "big.bin"
    big_data = os.urandom(20 * MiB + 12345)
    big.write_bytes(big_data)
    gclient.log_artifact(run_id, str(big), artifact_path="blobs")

    expected = {
        f"{base}/hello.txt": b"hello gcs\n",
        f"{base}/dir/a.txt": b"A",
        f"{base}/dir/sub/b.bin": bytes(range(256)) * 4,
        f"{base}/dir/sub/subsub/c.json": b'{"c": 1}',
        f"{base}/dir/sub/empty.txt": b"",
        f"{base}/blobs/big.bin": big_data,
    }
    objs = gcs.objects(BUCKET)
    mine = {k: v for k, v in objs.items() if k.startswith(base + "/")}
    assert sorted(mine) == sorted(expected), log_on_fail(gcs, start)
    for k, v in expected.items():
        assert sha256_bytes(mine[k]) == sha256_bytes(v), k
    assert_all_inside_prefix(gcs)
    assert gcs.pending_uploads() == [], "a multipart upload was left unfinished"
    # nothing is written to the local artifact folder
    local = srv.data_dir / "artifacts"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))

    # the big file went up as an XML multipart upload: initiate, parts 1..5, complete
    key = f"{base}/blobs/big.bin"
    reqs = [r for r in gcs.requests[start:] if r.object == key]
    kinds = [(r.method, tuple(sorted(r.query))) for r in reqs]
    assert kinds[0] == ("POST", ("uploads",)), log_on_fail(gcs, start)
    assert kinds[-1] == ("POST", ("uploadId",)), log_on_fail(gcs, start)
    parts = sorted(int(r.query["partNumber"]) for r in reqs if r.method == "PUT")
    assert parts == [1, 2, 3, 4, 5], log_on_fail(gcs, start)
    sizes = {int(r.query["partNumber"]): r.body_len for r in reqs if r.method == "PUT"}
    assert sizes == {1: 5 * MiB, 2: 5 * MiB, 3: 5 * MiB, 4: 5 * MiB, 5: 12345}
    assert all(r.status == 200 for r in reqs)
    meta = gcs.object_meta(BUCKET, key)
    assert meta.components == 5 and meta.etag.endswith('-5"')

    # listing at the root and in subdirectories
    root = gclient.list_artifacts(run_id)
    assert [(a.path, a.is_dir, a.file_size) for a in root] == [
        ("blobs", True, None),
        ("dir", True, None),
        ("hello.txt", False, len(b"hello gcs\n")),
    ]
    assert sorted((a.path, a.is_dir, a.file_size) for a in gclient.list_artifacts(run_id, "dir")) == [
        ("dir/a.txt", False, 1),
        ("dir/sub", True, None),
    ]
    assert sorted(
        (a.path, a.is_dir, a.file_size) for a in gclient.list_artifacts(run_id, "dir/sub")
    ) == [
        ("dir/sub/b.bin", False, 1024),
        ("dir/sub/empty.txt", False, 0),
        ("dir/sub/subsub", True, None),
    ]
    (info,) = gclient.list_artifacts(run_id, "blobs")
    assert (info.path, info.file_size) == ("blobs/big.bin", len(big_data))
    assert gclient.list_artifacts(run_id, "does/not/exist") == []
    # the tracking API's listing reads the same bucket
    r = srv.get("artifacts/list", params={"run_id": run_id, "path": "dir/sub/subsub"})
    assert r.status_code == 200
    assert r.json()["files"] == [{"path": "dir/sub/subsub/c.json", "is_dir": False, "file_size": 8}]

    # downloads: one file, the big one, and everything
    d1 = workdir / "dl1"
    d1.mkdir()
    assert Path(gclient.download_artifacts(run_id, "hello.txt", str(d1))).read_bytes() == b"hello gcs\n"
    d2 = workdir / "dl2"
    d2.mkdir()
    p = Path(gclient.download_artifacts(run_id, "blobs/big.bin", str(d2)))
    assert p.stat().st_size == len(big_data)
    assert sha256_bytes(p.read_bytes()) == sha256_bytes(big_data)
    d3 = workdir / "dl3"
    d3.mkdir()
    got = Path(gclient.download_artifacts(run_id, "", str(d3)))
    for k, v in expected.items():
        rel = k[len(base) + 1 :]
        assert (got / rel).read_bytes() == v, rel

    # a missing file: 404 from the bucket, 404 from the proxy
    r = srv.get(f"{PROXY}/{exp_id}/{run_id}/artifacts/nope.txt")
    assert r.status_code == 404, r.text
    assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

    # every request to the fake was authenticated and understood
    bad = [r.short() for r in gcs.requests[start:] if r.status >= 400 and r.status != 404]
    assert bad == [], "\n".join(bad)


def test_gcs_delete(gclient, srv, gcs, run, workdir):
    exp_id, run_id = run
    base = f"{PREFIX}/{exp_id}/{run_id}/artifacts"
    src = workdir / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dirx").mkdir()
    (src / "keep.txt").write_text("keep")
    (src / "gone.txt").write_text("gone")
    (src / "dir" / "x.txt").write_text("x")
    (src / "dir" / "sub" / "y.txt").write_text("y")
    (src / "dirx" / "z.txt").write_text("z")  # shares the "dir" prefix without the slash
    (src / "dir-sibling.txt").write_text("s")
    gclient.log_artifacts(run_id, str(src))
    before = set(gcs.objects(BUCKET))

    start = len(gcs.requests)
    status, body = raw_request(srv, "DELETE", f"{PROXY}/{exp_id}/{run_id}/artifacts/gone.txt")
    assert status == 200, body
    assert f"{base}/gone.txt" not in gcs.objects(BUCKET), log_on_fail(gcs, start)
    assert f"{base}/keep.txt" in gcs.objects(BUCKET)

    status, body = raw_request(srv, "DELETE", f"{PROXY}/{exp_id}/{run_id}/artifacts/dir")
    assert status == 200, body
    after = set(gcs.objects(BUCKET))
    assert before - after == {f"{base}/gone.txt", f"{base}/dir/x.txt", f"{base}/dir/sub/y.txt"}, (
        log_on_fail(gcs, start)
    )
    assert {f"{base}/dirx/z.txt", f"{base}/dir-sibling.txt", f"{base}/keep.txt"} <= after
    assert sorted(a.path for a in gclient.list_artifacts(run_id)) == [
        "dir-sibling.txt",
        "dirx",
        "keep.txt",
    ]
    # deleting something that does not exist is not an error
    status, body = raw_request(srv, "DELETE", f"{PROXY}/{exp_id}/{run_id}/artifacts/never")
    assert status == 200, body
    assert set(gcs.objects(BUCKET)) == after
    assert_all_inside_prefix(gcs)


def test_gcs_listing_follows_continuation_tokens(gclient, gcs, run, workdir):
    exp_id, run_id = run
    src = workdir / "many"
    (src / "d1").mkdir(parents=True)
    (src / "d2").mkdir()
    names = [f"f{i:02d}.txt" for i in range(7)]
    for n in names:
        (src / n).write_text(n)
    (src / "d1" / "x").write_text("x")
    (src / "d2" / "y").write_text("y")
    gclient.log_artifacts(run_id, str(src), artifact_path="many")
    start = len(gcs.requests)
    gcs.set_page_size(2)
    try:
        listed = gclient.list_artifacts(run_id, "many")
    finally:
        gcs.set_page_size(1000)
    assert sorted((a.path, a.is_dir) for a in listed) == sorted(
        [(f"many/{n}", False) for n in names] + [("many/d1", True), ("many/d2", True)]
    )
    lists = [r for r in gcs.requests[start:] if r.method == "GET" and r.object is None]
    assert len(lists) == 5, log_on_fail(gcs, start)  # 9 entries, 2 per page
    assert "continuation-token" not in lists[0].query
    assert all("continuation-token" in r.query for r in lists[1:])


UP_VARIANTS = ["../", "%2e%2e/", "..%2f", "%2e%2e%2f", ".%2e/", "%2E%2E%2F", "..%5c"]


def test_gcs_path_traversal_touches_no_object_outside_prefix(gclient, srv, gcs, run):
    exp_id, run_id = run
    canary = f"canary-{uuid.uuid4().hex}"
    attempts = []
    for prefix in ("", f"{exp_id}/{run_id}/artifacts/"):
        for up in UP_VARIANTS:
            for depth in range(1, 6):
                attempts.append(prefix + up * depth + canary)
    attempts += [f"%2F{canary}", f"%2fetc%2f{canary}", f"{exp_id}/{run_id}/artifacts/..", ".."]

    start = len(gcs.requests)
    for path in attempts:
        for method, body in (("PUT", b"evil"), ("GET", None), ("DELETE", None)):
            status, resp = raw_request(srv, method, f"{PROXY}/{path}", body=body)
            assert 400 <= status < 500, (method, path, status, resp[:200])
    for path in ["..", "../", "%2e%2e", f"{exp_id}/../..", "/etc", "%2Fetc"]:
        q = urllib.parse.quote(path, safe="%")
        status, resp = raw_request(srv, "GET", f"{PROXY}?path={q}")
        assert 400 <= status < 500, (path, status, resp[:200])
    # refused before the store is touched: the bucket saw none of it
    assert gcs.requests[start:] == [], log_on_fail(gcs, start)

    # a double-encoded `..` is a literal name: it may be stored, but inside the prefix
    status, resp = raw_request(
        srv, "PUT", f"{PROXY}/{exp_id}/{run_id}/artifacts/%252e%252e/{canary}", body=b"ok"
    )
    assert status == 200 or 400 <= status < 500, (status, resp[:200])
    hits = [k for k in gcs.objects(BUCKET) if canary in k]
    if status == 200:
        assert len(hits) == 1, hits
        assert hits[0].startswith(f"{PREFIX}/{exp_id}/{run_id}/artifacts/"), hits
    else:
        assert hits == []
    assert_all_inside_prefix(gcs)


# ----------------------------------------------------------------------------- failed uploads


def _wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _no_trace_of(gcs, key):
    return key not in gcs.objects(BUCKET) and all(u.name != key for u in gcs.pending_uploads())


def _put_expecting_failure(srv, path, size):
    """PUT through the proxy; the daemon may answer 5xx before it has read the whole body."""
    try:
        r = srv.request("PUT", path, data=os.urandom(size), timeout=60)
    except requests.ConnectionError:
        return None
    return r.status_code


@pytest.fixture
def faults(gcs):
    yield gcs
    gcs.state.faults.clear()


def test_gcs_interrupted_client_upload_leaves_nothing(srv, faults, run):
    gcs = faults
    exp_id, run_id = run
    rel = f"{exp_id}/{run_id}/artifacts/cut.bin"
    key = f"{PREFIX}/{rel}"
    u = urllib.parse.urlsplit(srv.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = f"PUT {PROXY}/{rel} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {12 * MiB}\r\n"
    for k, v in srv.headers().items():
        head += f"{k}: {v}\r\n"
    sock.sendall((head + "\r\n").encode())
    sock.sendall(os.urandom(7 * MiB))  # more than one part, less than announced
    start = len(gcs.requests)
    assert _wait_until(lambda: any(r.query.get("partNumber") == "1" for r in gcs.requests))
    sock.close()
    assert _wait_until(lambda: _no_trace_of(gcs, key)), log_on_fail(gcs, start)


def test_gcs_failed_complete_is_aborted(srv, faults, run):
    gcs = faults
    exp_id, run_id = run
    rel = f"{exp_id}/{run_id}/artifacts/f.bin"
    gcs.inject_fault("POST", "uploadId", 400, "InvalidPart")
    start = len(gcs.requests)
    status = _put_expecting_failure(srv, f"{PROXY}/{rel}", 12 * MiB)
    assert status is None or status >= 500
    assert _wait_until(lambda: _no_trace_of(gcs, f"{PREFIX}/{rel}")), log_on_fail(gcs, start)
    assert any(r.method == "DELETE" and "uploadId" in r.query for r in gcs.requests[start:])


def test_gcs_failed_part_mid_stream_is_aborted(srv, faults, run):
    gcs = faults
    exp_id, run_id = run
    rel = f"{exp_id}/{run_id}/artifacts/f.bin"
    gcs.inject_fault("PUT", "partNumber", 403, "AccessDenied")
    start = len(gcs.requests)
    status = _put_expecting_failure(srv, f"{PROXY}/{rel}", 60 * MiB)
    assert status is None or status >= 500
    assert _wait_until(lambda: _no_trace_of(gcs, f"{PREFIX}/{rel}"), timeout=5), log_on_fail(
        gcs, start
    )
