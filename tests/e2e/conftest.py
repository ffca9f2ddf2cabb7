"""Fixtures for the spotsweep end-to-end suite.

The suite talks to a real server process through the unmodified MLflow Python client.

Environment variables:
  SPOTSWEEP_BIN          path of the spotsweep binary (default <repo>/target/debug/spotsweep)
  SPOTSWEEP_E2E_TARGET   "spotsweep" (default) or "reference": run against `mlflow server`
                         (tests marked spotsweep_only are then skipped)
  SPOTSWEEP_E2E_URL      optional: use an already running server at this URL instead of
                         starting one (SPOTSWEEP_E2E_TOKEN gives its token); tests that need
                         to control the process are skipped
  SPOTSWEEP_E2E_POSTGRES optional: a PostgreSQL server where the suite may create databases
                         (postgres://USER@HOST:PORT/postgres): every daemon then runs on a
                         fresh database there (one per data dir, kept across restarts) instead
                         of its SQLite file; tests marked sqlite_only are skipped
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("SPOTSWEEP_E2E_TARGET", "spotsweep").strip().lower()
IS_REFERENCE = TARGET == "reference"
EXTERNAL_URL = os.environ.get("SPOTSWEEP_E2E_URL", "").strip().rstrip("/")
POSTGRES = os.environ.get("SPOTSWEEP_E2E_POSTGRES", "").strip()

SPOTSWEEP_START_TIMEOUT_S = 10.0
REFERENCE_START_TIMEOUT_S = 120.0
DEFAULT_TEST_TIMEOUT_S = 180

_LISTEN_RE = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


_databases: dict[Path, str] = {}


def database_url_for(data_dir: Path) -> str:
    """The PostgreSQL database of a data dir: made at the first start, the same ever after."""
    data_dir = Path(data_dir).resolve()
    if data_dir not in _databases:
        name = f"e2e_{uuid.uuid4().hex[:16]}"
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", POSTGRES, "-c", f"CREATE DATABASE {name}"],
            check=True,
            capture_output=True,
        )
        server, _, _ = POSTGRES.rpartition("/")
        _databases[data_dir] = f"{server}/{name}"
    return _databases[data_dir]


def spotsweep_bin() -> Path:
    env = os.environ.get("SPOTSWEEP_BIN")
    return Path(env) if env else REPO_ROOT / "target" / "debug" / "spotsweep"


def workdir_spec(name: str, max_trials: int, parallelism: int = 1, env: str | None = None) -> str:
    """A spec that ships its directory (`workdir: .`) and runs its train.py with {x} in [-1, 1],
    minimizing `loss`, without retries; `env` is the YAML of its env map."""
    text = (
        f"name: {name}\n"
        "workdir: .\n"
        f"command: '\"{sys.executable}\" train.py {{x}}'\n"
        "parameters:\n  x: {type: float, low: -1.0, high: 1.0}\n"
        "objective: {metric: loss, goal: minimize}\n"
        f"max_trials: {max_trials}\nparallelism: {parallelism}\nmax_retries: 0\n"
    )
    return text + (f"env: {env}\n" if env else "")


def git_commit_all(root: Path, branch: str = "main", remote: str | None = None) -> str:
    """Makes `root` a git repository on `branch` (with `origin` at `remote`), commits every file
    and returns the commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", f"init.defaultBranch={branch}"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    if remote:
        subprocess.run([*git, "remote", "add", "origin", remote], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=root, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


# --------------------------------------------------------------------------------------
# pytest hooks
# --------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "spotsweep_only: behaviour only spotsweep has (auth, tokens, crash safety, stricter "
        "errors); skipped when SPOTSWEEP_E2E_TARGET=reference",
    )
    config.addinivalue_line(
        "markers", "needs_process: the test starts/stops its own server process"
    )
    config.addinivalue_line(
        "markers",
        "sqlite_only(why): about the SQLite file itself; skipped when SPOTSWEEP_E2E_POSTGRES is set",
    )


def pytest_collection_modifyitems(config, items):
    skip_ref = pytest.mark.skip(reason="spotsweep-only behaviour (SPOTSWEEP_E2E_TARGET=reference)")
    skip_ext = pytest.mark.skip(reason="needs to control the server process (SPOTSWEEP_E2E_URL set)")
    for item in items:
        if IS_REFERENCE and item.get_closest_marker("spotsweep_only"):
            item.add_marker(skip_ref)
        if EXTERNAL_URL and item.get_closest_marker("needs_process"):
            item.add_marker(skip_ext)
        sqlite_only = item.get_closest_marker("sqlite_only")
        if POSTGRES and sqlite_only:
            why = sqlite_only.args[0] if sqlite_only.args else "about the SQLite file"
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {why}"))
        # A hung server must not hang the suite (pytest-timeout reads this marker).
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT_S))


# --------------------------------------------------------------------------------------
# Server process handling
# --------------------------------------------------------------------------------------


class ServerStartError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LogPump(threading.Thread):
    """Drains a child's output pipe so it never fills; keeps every line."""

    def __init__(self, stream, on_line=None):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.on_line = on_line

    def run(self):
        try:
            for raw in iter(self.stream.readline, b""):
                line = _ANSI_RE.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.lines.append(line)
                if self.on_line:
                    self.on_line(line)
        except (ValueError, OSError):
            pass

    def text(self, last: int = 200) -> str:
        return "\n".join(self.lines[-last:])


class ServerHandle:
    """A server under test: `.url`, `.token`, `.data_dir`, `.proc`, `.artifact_root`.

    For spotsweep, `data_dir` is what `--data-dir` gets; for the reference server it is the
    temporary folder holding mlflow.db and artifacts/. `env` adds variables to the daemon's
    environment (a value of None removes the variable); only the spotsweep daemon gets them.
    """

    def __init__(self, data_dir: Path, extra_args=(), listen="127.0.0.1:0", auth=True, env=None):
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.listen = listen
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.token: str | None = None
        self.external = False
        self._pump: _LogPump | None = None
        self._all_logs: list[str] = []
        self.is_reference = IS_REFERENCE
        self.artifact_root = self.data_dir / "artifacts"

    # ---------------------------------------------------------------- start / stop
    def start(self):
        if self.is_reference:
            self._start_reference()
        else:
            self._start_spotsweep()
        return self

    def _start_spotsweep(self):
        binary = spotsweep_bin()
        if not binary.exists():
            raise ServerStartError(
                f"spotsweep binary not found at {binary} (build it with `cargo build` or set "
                "SPOTSWEEP_BIN; set SPOTSWEEP_E2E_TARGET=reference to test the reference server)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(binary), "serve", "--listen", self.listen, "--data-dir", str(self.data_dir)]
        if POSTGRES and "--database-url" not in self.extra_args:
            cmd += ["--database-url", database_url_for(self.data_dir)]
        if not self.auth:
            cmd.append("--no-auth")
        cmd += self.extra_args
        found = threading.Event()
        result = {}

        def on_line(line):
            m = _LISTEN_RE.search(line)
            if m and not found.is_set():
                result["url"] = m.group(1)
                found.set()

        # The daemon reads SPOTSWEEP_* variables (config, listen, no-auth, log format): keep
        # the caller's shell from changing what the contract says the flags do.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_")}
        if "SPOTSWEEP_LOG" in os.environ:
            env["SPOTSWEEP_LOG"] = os.environ["SPOTSWEEP_LOG"]
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._pump = _LogPump(self.proc.stdout, on_line)
        self._pump.start()
        deadline = time.monotonic() + SPOTSWEEP_START_TIMEOUT_S
        while not found.wait(0.05):
            if self.proc.poll() is not None:
                self._pump.join(2)
                raise ServerStartError(
                    f"spotsweep exited with code {self.proc.returncode} before listening:\n"
                    + self.logs()
                )
            if time.monotonic() > deadline:
                self._hard_stop()
                raise ServerStartError(
                    f"spotsweep did not log 'listening on http://127.0.0.1:PORT' within "
                    f"{SPOTSWEEP_START_TIMEOUT_S}s:\n" + self.logs()
                )
        self.url = result["url"]
        self.token = None
        if self.auth:
            token_file = self.data_dir / "admin.token"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if token_file.exists() and token_file.read_text().strip():
                    break
                time.sleep(0.05)
            else:
                raise ServerStartError(f"{token_file} missing or empty:\n" + self.logs())
            self.token = token_file.read_text().strip()

    def _start_reference(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        mlflow_exe = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow_exe) if mlflow_exe.exists() else "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir}/mlflow.db",
            "--artifacts-destination",
            str(self.artifact_root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.data_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the uvicorn workers can be stopped with it
        )
        self._pump = _LogPump(self.proc.stdout)
        self._pump.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + REFERENCE_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"mlflow server exited with {self.proc.returncode}:\n" + self.logs()
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self._hard_stop()
                raise ServerStartError("mlflow server did not become healthy:\n" + self.logs())
            time.sleep(0.5)
        self.url = url
        self.token = None

    def _signal(self, sig):
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.is_reference:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def _collect_logs(self):
        if self._pump is not None:
            self._pump.join(2)
            self._all_logs.extend(self._pump.lines)
            self._all_logs.append("----- (process ended) -----")
            self._pump = None

    def _hard_stop(self):
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._collect_logs()

    def kill(self) -> int:
        """kill -9 (crash simulation). Returns the exit status."""
        self._hard_stop()
        return self.proc.returncode

    def terminate(self, timeout=15.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it did not exit in time)."""
        if self.proc is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._hard_stop()
            return None
        self._collect_logs()
        return rc

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            if self.terminate() is None:
                self._hard_stop()
        else:
            self._collect_logs()

    def restart(self, crash=False):
        """Stop (SIGTERM, or kill -9 if crash) and start again on the same data dir.

        The port changes (it listens on port 0 again): re-read `.url` afterwards.
        """
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start()

    # ---------------------------------------------------------------- helpers
    def logs(self, last: int = 200) -> str:
        lines = list(self._all_logs)
        if self._pump is not None:
            lines += self._pump.lines
        return "\n".join(lines[-last:])

    def headers(self, token: str | None = "__default__") -> dict:
        tok = self.token if token == "__default__" else token
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    def api(self, path: str) -> str:
        """URL of a tracking route, e.g. api('runs/get')."""
        return f"{self.url}/api/2.0/mlflow/{path.lstrip('/')}"

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        headers = {**self.headers(), **kw.pop("headers", {})}
        return requests.get(self._abs(path), headers=headers, **kw)

    def post(self, path, json=None, **kw):
        kw.setdefault("timeout", 30)
        headers = {**self.headers(), **kw.pop("headers", {})}
        return requests.post(self._abs(path), json=json, headers=headers, **kw)

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 30)
        headers = {**self.headers(), **kw.pop("headers", {})}
        return requests.request(method, self._abs(path), headers=headers, **kw)

    def _abs(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        if path.startswith("/"):
            return self.url + path
        return self.api(path)


class ExternalServer(ServerHandle):
    def __init__(self, url, token):
        super().__init__(Path(tempfile.gettempdir()))
        self.url = url
        self.token = token or None
        self.external = True

    def start(self):
        return self

    def stop(self):
        pass


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, request):
    """Starts extra servers on fresh (or given) data dirs; all are stopped at the end.

    factory(data_dir=None, auth=True, extra_args=(), listen="127.0.0.1:0", env=None)
        -> ServerHandle   (env: extra variables for the daemon, None values remove one)
    """
    started: list[ServerHandle] = []

    def make(data_dir=None, auth=True, extra_args=(), listen="127.0.0.1:0", start=True, env=None):
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("srv") / "data"
        h = ServerHandle(
            Path(data_dir), extra_args=extra_args, listen=listen, auth=auth, env=env
        )
        started.append(h)
        return h.start() if start else h

    yield make
    for h in started:
        with contextlib.suppress(Exception):
            h.stop()


@pytest.fixture(scope="session")
def server(server_factory):
    """The shared server for the whole session (tests use unique experiment names)."""
    if EXTERNAL_URL:
        yield ExternalServer(EXTERNAL_URL, os.environ.get("SPOTSWEEP_E2E_TOKEN"))
        return
    try:
        h = server_factory()
    except ServerStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield h


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("srv", "server"):
            h = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(h, ServerHandle) and not h.external:
                rep.sections.append((f"{name} log (last 60 lines)", h.logs(60)))
                break


def _point_mlflow_at(monkeypatch, srv: ServerHandle, max_retries=1, timeout=60):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.url)
    if srv.token:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", srv.token)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
    mlflow.set_tracking_uri(srv.url)
    return mlflow.MlflowClient(tracking_uri=srv.url)


def _reset_fluent_state():
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    with contextlib.suppress(Exception):
        import mlflow.tracking.fluent as fluent

        fluent._active_experiment_id = None


@pytest.fixture
def client(server, monkeypatch):
    """An MlflowClient (and the fluent API) pointed at the shared server."""
    c = _point_mlflow_at(monkeypatch, server)
    yield c
    _reset_fluent_state()


@pytest.fixture
def fast_errors(monkeypatch):
    """No retries and a short timeout: a wrong 5xx must fail fast instead of retrying."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture
def connect(monkeypatch):
    """connect(handle) -> MlflowClient pointed at another server (e.g. a restarted one)."""

    def _connect(srv, **kw):
        return _point_mlflow_at(monkeypatch, srv, **kw)

    yield _connect
    _reset_fluent_state()


@pytest.fixture
def unique():
    """unique('prefix') -> a name no other test uses."""

    def make(prefix="e2e"):
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def exp_id(client, unique):
    """A fresh experiment id on the shared server."""
    return client.create_experiment(unique("exp"))


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
