"""MLflow 3 logged models through the unmodified client.

Covers `mlflow.<flavor>.log_model` (logged-models create/finalize/params/search, runs/outputs,
the artifact proxy), loading it back by `models:/m-...` and `runs:/<run>/<name>`, metrics linked to
a model, logged-model search (filter, order, pages), tags and deletion.
"""


import json
import sys
import time
import uuid

import mlflow
import numpy as np
import pytest
import requests
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LinearRegression

# No requirement inference (slow: it imports and inspects packages) and no environment capture.
PIP_REQS = ["scikit-learn", "numpy"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _data():
    x = np.random.default_rng(7).normal(size=(16, 2))
    y = x @ np.array([1.5, -2.0]) + 3.0
    return x, y


def _fitted_model():
    x, y = _data()
    return LinearRegression().fit(x, y)


def _probe_input():
    return np.array([[0.5, 1.0], [10.0, -3.0], [7.0, 7.0]])


def _expected_predictions():
    # The in-memory model's predictions, which are also the exact linear function.
    expected = _fitted_model().predict(_probe_input())
    np.testing.assert_allclose(expected, _probe_input() @ [1.5, -2.0] + 3.0, atol=1e-9)
    return expected


def _log_sklearn_model(name="model"):
    """Inside an active run: log a fitted LinearRegression; returns the ModelInfo."""
    return mlflow.sklearn.log_model(_fitted_model(), name=name, pip_requirements=PIP_REQS)


def _error_code(fn, *args, **kwargs):
    with pytest.raises(MlflowException) as ei:
        fn(*args, **kwargs)
    return ei.value.error_code


def _is_model_id(s):
    return s.startswith("m-") and len(s) == 34 and all(c in "0123456789abcdef" for c in s[2:])


# --------------------------------------------------------------------------------------
# logged models
# --------------------------------------------------------------------------------------


def test_sklearn_log_model_and_load_round_trip(client, server, unique):
    exp = mlflow.set_experiment(unique("lm-roundtrip"))
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.log_param("alpha", "0.5")
        mlflow.log_metric("pre", 2.5, step=0)
        info = _log_sklearn_model("model")

    model_id = info.model_id
    assert _is_model_id(model_id)
    assert info.model_uri == f"models:/{model_id}"

    lm = mlflow.get_logged_model(model_id)
    assert lm.model_id == model_id
    assert lm.name == "model"
    assert lm.experiment_id == exp.experiment_id
    assert lm.source_run_id == run_id
    assert lm.status == LoggedModelStatus.READY
    assert lm.params == {"alpha": "0.5"}  # the run's params are copied onto the model
    assert lm.artifact_location.endswith(f"/models/{model_id}/artifacts")
    # The run's step-0 metric is re-logged with the model id when the model is logged.
    assert [(m.key, m.value, m.step, m.model_id, m.run_id) for m in lm.metrics] == [
        ("pre", 2.5, 0, model_id, run_id)
    ]

    run = client.get_run(run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    assert run.outputs.model_outputs[0].step == 0
    assert run.data.metrics == {"pre": 2.5}
    assert run.data.params == {"alpha": "0.5"}

    files = {f.path for f in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "requirements.txt", "python_env.yaml"} <= files, files
    assert files & {"model.skops", "model.pkl"}, files

    expected = _expected_predictions()
    sk = mlflow.sklearn.load_model(info.model_uri)
    assert isinstance(sk, LinearRegression)
    np.testing.assert_allclose(sk.predict(_probe_input()), expected, rtol=1e-12)

    py = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert py.metadata.model_id == model_id
    np.testing.assert_allclose(py.predict(_probe_input()), expected, rtol=1e-12)

    # The UI's listing of a logged model's artifacts and its file route.
    r = server.get(f"logged-models/{model_id}/artifacts/directories")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["root_uri"] == lm.artifact_location
    listed = {f["path"]: f for f in body["files"]}
    assert listed["MLmodel"]["is_dir"] is False and listed["MLmodel"]["file_size"] > 0
    r = server.get(
        f"/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files",
        params={"artifact_file_path": "MLmodel"},
    )
    assert r.status_code == 200, r.text
    assert f"model_id: {model_id}" in r.text
    assert "sklearn" in r.text
    assert len(r.content) == listed["MLmodel"]["file_size"]

    assert _error_code(mlflow.get_logged_model, "m-" + "0" * 32) == "RESOURCE_DOES_NOT_EXIST"


def test_metrics_logged_with_model_id(client, unique):
    exp = mlflow.set_experiment(unique("lm-metrics"))
    lm = mlflow.initialize_logged_model(name="scored", model_type="regressor")
    assert lm.status == LoggedModelStatus.PENDING
    assert lm.model_type == "regressor"
    assert lm.experiment_id == exp.experiment_id
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.log_metric("rmse", 0.5, step=0, model_id=lm.model_id)
        mlflow.log_metric("rmse", 0.25, step=1, model_id=lm.model_id)
        mlflow.log_metric("unlinked", 7.0, step=0)
    client.log_metric(
        run_id,
        "acc",
        0.9,
        step=1,
        model_id=lm.model_id,
        dataset_name="eval-set",
        dataset_digest="abc123",
    )

    got = mlflow.get_logged_model(lm.model_id)
    rows = sorted(
        (m.key, m.step, m.value, m.model_id, m.run_id, m.dataset_name, m.dataset_digest)
        for m in got.metrics
    )
    assert rows == [
        ("acc", 1, 0.9, lm.model_id, run_id, "eval-set", "abc123"),
        ("rmse", 0, 0.5, lm.model_id, run_id, None, None),
        ("rmse", 1, 0.25, lm.model_id, run_id, None, None),
    ]
    assert all(m.timestamp > 0 for m in got.metrics)

    # The run still sees them as ordinary metrics (latest value per key); the fluent
    # log_metric recorded the model as an input of the run (runs/log-inputs with `models`).
    r = client.get_run(run_id)
    assert r.data.metrics == {"rmse": 0.25, "unlinked": 7.0, "acc": 0.9}
    assert [i.model_id for i in r.inputs.model_inputs] == [lm.model_id]
    assert r.outputs is None or r.outputs.model_outputs == []
    hist = client.get_metric_history(run_id, "rmse")
    assert [(m.step, m.value) for m in hist] == [(0, 0.5), (1, 0.25)]


def test_search_logged_models_filter_order_paging(client, exp_id, unique):
    run_id = client.create_run(exp_id).info.run_id
    rmse = {"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.4}
    ids = {}
    for name, value in rmse.items():
        lm = client.create_logged_model(
            exp_id,
            name=f"cand-{name}",
            params={"family": "linear" if name in "abc" else "tree"},
            tags={"letter": name},
            source_run_id=run_id,
        )
        ids[name] = lm.model_id
        client.log_metric(run_id, "rmse", value, step=0, model_id=lm.model_id)
    other = client.create_logged_model(exp_id, name="no-metrics")

    def names(models):
        return [m.name for m in models]

    res = mlflow.search_logged_models(
        experiment_ids=[exp_id],
        filter_string="metrics.rmse < 0.35",
        order_by=[{"field_name": "metrics.rmse", "ascending": True}],
        output_format="list",
    )
    assert names(res) == ["cand-b", "cand-c", "cand-a"]

    res = mlflow.search_logged_models(
        experiment_ids=[exp_id],
        filter_string="params.family = 'linear' AND metrics.rmse >= 0.2",
        order_by=[{"field_name": "metrics.rmse", "ascending": False}],
        output_format="list",
    )
    assert names(res) == ["cand-a", "cand-c"]

    res = mlflow.search_logged_models(
        experiment_ids=[exp_id], filter_string="tags.letter = 'd'", output_format="list"
    )
    assert [m.model_id for m in res] == [ids["d"]]
    assert res[0].tags["letter"] == "d"
    assert res[0].params == {"family": "tree"}

    res = mlflow.search_logged_models(
        experiment_ids=[exp_id],
        filter_string="name LIKE 'cand-%'",
        order_by=[{"field_name": "name", "ascending": False}],
        output_format="list",
    )
    assert names(res) == ["cand-d", "cand-c", "cand-b", "cand-a"]

    # All five, models without the metric sort last; walk them one page at a time.
    order = [{"field_name": "metrics.rmse", "ascending": True}]
    seen, token, pages = [], None, 0
    while True:
        page = client.search_logged_models(
            experiment_ids=[exp_id], order_by=order, max_results=2, page_token=token
        )
        pages += 1
        assert len(page) <= 2
        seen += [m.model_id for m in page]
        token = page.token
        if not token:
            break
        assert pages < 10
    assert seen == [ids["b"], ids["c"], ids["a"], ids["d"], other.model_id]
    assert pages == 3

    # Other experiments' models are not returned.
    assert (
        mlflow.search_logged_models(
            experiment_ids=[client.create_experiment(unique("lm-empty"))],
            output_format="list",
        )
        == []
    )
    bad = "name = 'x' OR name = 'y'"
    assert (
        _error_code(mlflow.search_logged_models, experiment_ids=[exp_id], filter_string=bad)
        == "INVALID_PARAMETER_VALUE"
    )


def test_logged_model_tags_params_finalize_delete(client, server, exp_id):
    lm = client.create_logged_model(exp_id, name="taggy", tags={"keep": "1"})
    assert lm.status == LoggedModelStatus.PENDING
    assert not lm.source_run_id

    client.set_logged_model_tags(lm.model_id, {"stage": "dev", "owner": "me"})
    client.set_logged_model_tags(lm.model_id, {"stage": "prod"})  # overwrite
    client.delete_logged_model_tag(lm.model_id, "owner")
    client.log_model_params(lm.model_id, {"lr": "0.1", "depth": "3"})
    got = client.get_logged_model(lm.model_id)
    assert {k: v for k, v in got.tags.items() if not k.startswith("mlflow.")} == {
        "keep": "1",
        "stage": "prod",
    }
    assert got.params == {"lr": "0.1", "depth": "3"}
    assert got.status == LoggedModelStatus.PENDING

    assert (
        _error_code(client.delete_logged_model_tag, lm.model_id, "no-such-tag")
        == "RESOURCE_DOES_NOT_EXIST"
    )

    fin = client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    assert fin.status == LoggedModelStatus.READY
    assert fin.last_updated_timestamp >= fin.creation_timestamp
    assert client.get_logged_model(lm.model_id).status == LoggedModelStatus.READY

    failed = client.create_logged_model(exp_id, name="broken")
    client.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)
    assert client.get_logged_model(failed.model_id).status == LoggedModelStatus.FAILED

    client.delete_logged_model(failed.model_id)
    assert _error_code(client.get_logged_model, failed.model_id) == "RESOURCE_DOES_NOT_EXIST"
    left = client.search_logged_models(experiment_ids=[exp_id])
    assert [m.model_id for m in left] == [lm.model_id]
    # (MlflowClient.set_logged_model_tags checks with a GET first and rewraps the error.)
    r = server.request(
        "PATCH", f"logged-models/m-{'f' * 32}/tags", json={"tags": [{"key": "a", "value": "b"}]}
    )
    assert r.status_code == 404, r.text
    assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"




# --------------------------------------------------------------------------------------
# a sweep's trial ends with log_model, with its own token
# --------------------------------------------------------------------------------------

TRIAL_WITH_MODEL = r'''
import json, os, sys
import mlflow, numpy as np, requests
from sklearn.linear_model import LinearRegression

other_model = sys.argv[1]
x = np.random.default_rng(7).normal(size=(16, 2))
y = x @ np.array([1.5, -2.0]) + 3.0
with mlflow.start_run():
    mlflow.log_metric("loss", 0.25)
    info = mlflow.sklearn.log_model(LinearRegression().fit(x, y), name="model",
                                    pip_requirements=["scikit-learn", "numpy"],
                                    registered_model_name=sys.argv[2])
@mlflow.trace(name="predict")
def predict(v):
    return v * 2

predict(21)
mlflow.flush_trace_async_logging()
headers = {"Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}
uri = os.environ["MLFLOW_TRACKING_URI"]
other = requests.get(uri + "/api/2.0/mlflow/logged-models/" + other_model, headers=headers, timeout=30)
steal = requests.post(uri + "/api/2.0/mlflow/model-versions/create", headers=headers, timeout=30,
                      json={"name": sys.argv[2], "source": "models:/" + other_model, "model_id": other_model})
print("RESULT " + json.dumps({"model_id": info.model_id, "other_status": other.status_code,
                              "steal_status": steal.status_code}), flush=True)
'''


@pytest.mark.spotsweep_only
@pytest.mark.needs_process
def test_a_trial_logs_registers_and_traces_with_its_own_token(server_factory, tmp_path, monkeypatch):
    srv = server_factory(extra_args=["--local-agents", "1"])
    headers = srv.headers()
    exp = srv.post("experiments/create", json={"name": f"elsewhere-{uuid.uuid4().hex[:6]}"}).json()["experiment_id"]
    foreign = srv.post("logged-models", json={"experiment_id": exp, "name": "foreign"}).json()["model"]["info"]
    script = tmp_path / "train.py"
    script.write_text(TRIAL_WITH_MODEL)
    registered = f"trained-{uuid.uuid4().hex[:6]}"
    spec = {
        "name": f"with-model-{uuid.uuid4().hex[:6]}",
        "command": f'"{sys.executable}" "{script}" {foreign["model_id"]} {registered} # {{x}}',
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss"},
        "max_trials": 1,
    }
    r = requests.post(f"{srv.url}/api/v1/sweeps", json=spec, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        sweep = requests.get(f"{srv.url}/api/v1/sweeps/{sid}", headers=headers, timeout=30).json()
        if sweep["state"] == "completed":
            break
        assert time.monotonic() < deadline, srv.logs(100)
        time.sleep(0.3)
    trial = requests.get(f"{srv.url}/api/v1/sweeps/{sid}/trials", headers=headers, timeout=30).json()["trials"][0]
    assert trial["state"] == "completed", trial
    stdout = srv.get(f"/api/2.0/mlflow-artifacts/artifacts/{trial['experiment_id']}/{trial['run_id']}/artifacts/logs/stdout.txt").text
    result = json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])
    # Its token could neither read another run's model nor register it; its own is READY and loads.
    assert result["other_status"] == 403 and result["steal_status"] == 403
    model = srv.get(f"logged-models/{result['model_id']}").json()["model"]["info"]
    assert model["status"] == "LOGGED_MODEL_READY" and model["source_run_id"] == trial["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", srv.token)
    mlflow.set_tracking_uri(srv.url)
    loaded = mlflow.sklearn.load_model(f"models:/{result['model_id']}")
    np.testing.assert_allclose(loaded.predict(_probe_input()), _expected_predictions(), atol=1e-9)
    # It registered its model: version 1 of the name it gave, from its own run, loads.
    version = srv.get("model-versions/get", params={"name": registered, "version": "1"}).json()["model_version"]
    assert version["run_id"] == trial["run_id"] and version["status"] == "READY"
    by_name = mlflow.sklearn.load_model(f"models:/{registered}/1")
    np.testing.assert_allclose(by_name.predict(_probe_input()), _expected_predictions(), atol=1e-9)
    # Its trace, with its spans, went into the sweep's experiment.
    (trace,) = mlflow.search_traces(locations=[trial["experiment_id"]], return_type="list")
    assert [s.name for s in trace.data.spans] == ["predict"] and trace.data.spans[0].outputs == 42
