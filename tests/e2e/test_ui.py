"""MLflow's own web UI served by the daemon, in a real browser (Debian's chromium driven by
Playwright), on a sweep's results: the experiments list, the runs table, a run's metric chart,
its artifacts with a logged image, the compare-runs view, a registered model and the traces tab. Every page must make
no request that fails and log no console error; each saves a screenshot under
target/ui-screenshots/. Also: signing in from a browser, and what `/` says without the UI.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests

from conftest import REPO_ROOT

pytestmark = [pytest.mark.spotsweep_only, pytest.mark.needs_process]

SCREENSHOTS = REPO_ROOT / "target" / "ui-screenshots"
UI_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build"

# The browser reports a resize loop on chart pages now and then (the reference too): a layout
# notice, not an error of the page or the server.
BENIGN_CONSOLE = [re.compile(r"ResizeObserver loop")]

# A trial with nothing but the standard library: a loss curve over 20 steps, with its own token.
TRIAL = r'''
import json, os, sys, time, urllib.request
x, lr = float(sys.argv[1]), float(sys.argv[2])
body = {"run_id": os.environ["MLFLOW_RUN_ID"], "metrics": [
    {"key": "loss", "value": (x - 0.3) ** 2 + lr + 1.0 / (s + 1), "timestamp": int(time.time() * 1000) + s, "step": s}
    for s in range(20)] + [
    {"key": "accuracy", "value": 1.0 - 1.0 / (s + 2), "timestamp": int(time.time() * 1000) + s, "step": s}
    for s in range(20)]}
req = urllib.request.Request(os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-batch",
    json.dumps(body).encode(), {"Content-Type": "application/json",
    "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}, method="POST")
urllib.request.urlopen(req, timeout=30).read()
'''


def v1(srv, method, path, body=None):
    return requests.request(method, f"{srv.url}/api/v1/{path}", json=body, headers=srv.headers(), timeout=30)


@pytest.fixture(scope="module")
def sweep_ui(tmp_path_factory, request):
    """A daemon serving the UI, with a finished sweep of three trials, an image artifact and a trace."""
    from conftest import ServerHandle

    data = tmp_path_factory.mktemp("ui") / "data"
    srv = ServerHandle(data, extra_args=["--local-agents", "2", "--mlflow-ui", str(UI_BUILD)]).start()
    request.addfinalizer(srv.stop)
    script = data.parent / "trial.py"
    script.write_text(TRIAL)
    spec = {
        "name": f"ui-sweep-{uuid.uuid4().hex[:6]}",
        "command": f'"{sys.executable}" "{script}" {{x}} {{lr}}',
        "parameters": {
            "x": {"type": "float", "low": -1, "high": 1},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        },
        "objective": {"metric": "loss"},
        "sampler": {"type": "random", "seed": 3},
        "max_trials": 3,
        "parallelism": 2,
    }
    r = v1(srv, "POST", "sweeps", spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    deadline = time.monotonic() + 120
    while v1(srv, "GET", f"sweeps/{sid}").json()["state"] != "completed":
        assert time.monotonic() < deadline, srv.logs(100)
        time.sleep(0.3)
    trials = v1(srv, "GET", f"sweeps/{sid}/trials").json()["trials"]
    exp_id = trials[0]["experiment_id"]
    runs = [t["run_id"] for t in trials]

    mlflow.set_tracking_uri(srv.url)
    import os

    os.environ["MLFLOW_TRACKING_TOKEN"] = srv.token
    request.addfinalizer(lambda: os.environ.pop("MLFLOW_TRACKING_TOKEN", None))
    client = mlflow.MlflowClient(srv.url)
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    client.log_image(runs[0], np.stack([gradient, gradient.T, 255 - gradient], axis=-1), "plots/gradient.png")
    mlflow.set_experiment(experiment_id=exp_id)

    @mlflow.trace(name="evaluate")
    def evaluate(x):
        return x * 2

    evaluate(21)
    mlflow.flush_trace_async_logging()
    # The best trial's model, registered.
    model = f"branin-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(model, description="the sweep's best trial")
    client.create_model_version(model, source=f"runs:/{runs[0]}/model", run_id=runs[0])
    client.set_registered_model_alias(model, "champion", "1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return {"srv": srv, "exp_id": exp_id, "runs": runs, "sweep": spec["name"], "model": model}


@pytest.fixture(scope="module")
def browser():
    from browser import CHROMIUM, launch_browser

    assert Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM}: scripts/test installs it (apt-get install chromium)"
    with launch_browser() as b:
        yield b


@pytest.fixture
def page(browser, sweep_ui, request):
    from browser import Page

    p = Page(browser, sweep_ui["srv"].url, bearer=sweep_ui["srv"].token, viewport=(3200, 1000))
    yield p
    p.screenshot(SCREENSHOTS / f"{request.node.name}.png")
    p.close()


def assert_clean(visit):
    failed = [(r.method, r.path_query, r.status, r.failure) for r in visit.failed]
    errors = [e for e in visit.console_errors if not any(p.search(e) for p in BENIGN_CONSOLE)]
    assert not failed, f"requests that failed on {visit.url}: {failed}"
    assert not errors, f"console errors on {visit.url}: {errors}"
    assert not visit.page_errors, f"uncaught errors on {visit.url}: {visit.page_errors}"


def called(visit, path):
    return [r for r in visit.requests if r.path == path]


def test_experiments_list(page, sweep_ui):
    visit = page.goto("/#/experiments")
    assert_clean(visit)
    page.page.get_by_text(sweep_ui["sweep"]).first.wait_for(timeout=30000)


def test_runs_table_shows_params_and_metrics(page, sweep_ui):
    visit = page.goto(f"/#/experiments/{sweep_ui['exp_id']}/runs")
    assert_clean(visit)
    assert called(visit, "/ajax-api/2.0/mlflow/runs/search")
    # The column picker lists the sweep's params and metrics; shown, they are columns (the grid
    # draws only the columns in view: the page is wide enough for all of them). The sweep's own
    # run adds its best value and four params of its spec to the trials' two and two.
    for group in (r"^Metrics \(3\)$", r"^Parameters \(6\)$"):
        page.page.get_by_text("Columns", exact=True).first.click()
        page.page.get_by_text(re.compile(group)).first.click()
        page.page.keyboard.press("Escape")
    page.wait_all_answered()
    assert not page.visit.failed and not page.visit.page_errors
    headers = page.page.locator("[role=columnheader]")
    headers.filter(has_text="loss").first.wait_for(timeout=30000)
    names = " ".join(headers.all_inner_texts())
    for column in ("x", "lr", "loss", "accuracy"):
        assert re.search(rf"\b{column}\b", names), (column, names)
    # The values are in the cells (a loss below 10, formatted by the UI): the trials' runs are
    # folded under the sweep's own run (the one button of the grid expands it), then each shows its loss.
    numbers = page.page.locator("[role=gridcell]").filter(has_text=re.compile(r"^\d\.\d+"))
    assert numbers.count() >= 1
    page.page.locator("[role=gridcell] button").first.click()
    numbers.nth(3).wait_for(timeout=10000)
    assert numbers.count() >= 4


def test_run_page_charts_its_metric(page, sweep_ui):
    run = sweep_ui["runs"][0]
    visit = page.goto(f"/#/experiments/{sweep_ui['exp_id']}/runs/{run}/model-metrics")
    assert_clean(visit)
    assert called(visit, "/graphql")
    history = called(visit, "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval")
    assert history and all(r.status == 200 for r in history)
    page.page.get_by_text("loss", exact=True).first.wait_for(timeout=30000)
    # A chart was drawn (plotly draws SVG paths for the line).
    page.page.locator(".js-plotly-plot, svg.main-svg").first.wait_for(timeout=30000)


def test_artifacts_tab_shows_the_logged_image(page, sweep_ui):
    run = sweep_ui["runs"][0]
    visit = page.goto(f"/#/experiments/{sweep_ui['exp_id']}/runs/{run}/artifacts/plots/gradient.png")
    assert_clean(visit)
    got = [r for r in visit.requests if r.path == "/get-artifact"]
    assert got and got[-1].status == 200
    image = page.page.locator("img[src^='blob:']").first
    image.wait_for(timeout=30000)
    assert image.evaluate("img => img.naturalWidth") == 64


def test_compare_runs_view(page, sweep_ui):
    runs = sweep_ui["runs"]
    query = f"runs={json.dumps(runs[:2])}&experiments={json.dumps([sweep_ui['exp_id']])}"
    visit = page.goto(f"/#/compare-runs?{query}")
    assert_clean(visit)
    page.page.get_by_text("loss").first.wait_for(timeout=30000)


def test_traces_tab(page, sweep_ui):
    visit = page.goto(f"/#/experiments/{sweep_ui['exp_id']}/traces")
    assert_clean(visit)
    assert called(visit, "/ajax-api/3.0/mlflow/traces/search")
    # The trace's row: its input and output.
    page.page.get_by_text('{"x": 21}').first.wait_for(timeout=30000)
    page.page.get_by_text("42", exact=True).first.wait_for(timeout=30000)


def test_registered_model_page(page, sweep_ui):
    visit = page.goto(f"/#/models/{sweep_ui['model']}")
    assert_clean(visit)
    assert called(visit, "/ajax-api/2.0/mlflow/registered-models/get")
    page.page.get_by_text("the sweep's best trial").first.wait_for(timeout=30000)
    page.page.get_by_text("Version 1").first.wait_for(timeout=30000)
    page.page.get_by_text("champion").first.wait_for(timeout=30000)


# --------------------------------------------------------------------------------------
# signing in from a browser
# --------------------------------------------------------------------------------------


def test_sign_in_flow(browser, sweep_ui):
    from browser import Page

    srv = sweep_ui["srv"]
    # No cookie, no token: the sign-in page, not a 401 JSON.
    r = requests.get(srv.url + "/", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert requests.get(srv.api("experiments/search"), timeout=10).status_code == 401

    p = Page(browser, srv.url)
    try:
        p.page.goto(srv.url + "/")
        p.page.wait_for_url("**/signin")
        p.page.fill("#token", "ss_not-a-token")
        p.page.click("button[type=submit]")
        p.page.get_by_text("not valid").wait_for(timeout=10000)
        p.page.fill("#token", srv.token)
        p.page.click("button[type=submit]")
        p.page.wait_for_url(srv.url + "/**")
        visit = p.goto("/#/experiments")
        assert_clean(visit)
        p.page.get_by_text(sweep_ui["sweep"]).first.wait_for(timeout=30000)
        p.screenshot(SCREENSHOTS / "test_sign_in_flow.png")
        cookies = {c["name"]: c for c in p.context.cookies()}
        session = cookies["spotsweep_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
    finally:
        p.close()

    # The cookie works for the UI and the ajax-api, without a bearer token.
    jar = {"spotsweep_session": session["value"]}
    assert requests.get(srv.url + "/", cookies=jar, timeout=10).status_code == 200
    r = requests.get(srv.url + "/ajax-api/2.0/mlflow/experiments/search", params={"max_results": 5}, cookies=jar, timeout=10)
    assert r.status_code == 200, r.text
    same = {"Origin": srv.url}
    r = requests.post(
        srv.url + "/ajax-api/2.0/mlflow/experiments/create",
        json={"name": f"from-ui-{uuid.uuid4().hex[:6]}"}, cookies=jar, headers=same, timeout=10,
    )
    assert r.status_code == 200, r.text
    # A cross-site POST with the cookie is refused, and so is one with no origin at all.
    for headers in ({"Origin": "http://evil.example"}, {}):
        r = requests.post(
            srv.url + "/ajax-api/2.0/mlflow/experiments/create",
            json={"name": f"csrf-{uuid.uuid4().hex[:6]}"}, cookies=jar, headers=headers, timeout=10,
        )
        assert r.status_code == 403, (headers, r.text)
    # A forged or tampered cookie is no session.
    forged = session["value"][:-4] + ("0000" if not session["value"].endswith("0000") else "1111")
    assert requests.get(srv.api("experiments/search"), cookies={"spotsweep_session": forged}, timeout=10).status_code == 401
    # Signing out clears it.
    r = requests.post(srv.url + "/signout", cookies=jar, headers=same, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]


def test_without_the_ui_slash_says_how_to_get_it(server_factory):
    srv = server_factory(extra_args=["--mlflow-ui", "off"])
    r = requests.get(srv.url + "/", timeout=10)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "pip install mlflow" in r.text
    assert "the web UI is turned off" in srv.logs(50) or "not served" in srv.logs(50)


def test_the_daemon_finds_the_installed_mlflow_ui(server_factory):
    # With the test's own python3 (which has mlflow) first on PATH, as after `pip install mlflow`.
    import os

    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    srv = server_factory(env=env)
    assert f"serving MLflow's web UI at / path={UI_BUILD}" in srv.logs(50)
    index = requests.get(srv.url + "/", headers=srv.headers(), timeout=10)
    assert index.status_code == 200 and "<div id=\"root\"" in index.text.replace("'", '"')
    script = re.search(r'src="(?:\./)?(static-files/[^"]+\.js)"', index.text).group(1)
    r = requests.get(f"{srv.url}/{script}", timeout=10)
    assert r.status_code == 200 and "max-age=2419200" in r.headers["cache-control"]
    escape = requests.get(srv.url + "/static-files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", timeout=10)
    assert escape.status_code == 404 and "root:" not in escape.text
