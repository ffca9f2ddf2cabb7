"""The P0 client flow: experiments, runs, params, metrics, tags, nesting, log_batch."""

import math
import time

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

DBL_MAX = 1.7976931348623157e308


def test_health_and_version(server):
    r = server.get("/health", headers={})
    assert r.status_code == 200
    assert r.text.strip() == "OK"
    v = server.get("/version", headers={})
    assert v.status_code == 200
    assert v.text.strip()


def test_basic_fluent_flow(client, unique):
    name = unique("basic")
    exp = mlflow.set_experiment(name)
    assert exp.name == name
    assert exp.lifecycle_stage == "active"
    assert client.get_experiment_by_name(name).experiment_id == exp.experiment_id

    before = int(time.time() * 1000)
    with mlflow.start_run(run_name="first") as run:
        run_id = run.info.run_id
        assert len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"opt": "adam", "layers": 3})
        mlflow.log_metric("loss", 1.0, step=0)
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_metric("loss", 0.25, step=2)
        mlflow.log_metrics({"acc": 0.7, "f1": 0.6}, step=1)
        mlflow.log_metrics({"acc": 0.9}, step=2)
        mlflow.set_tag("team", "ml")
        mlflow.set_tags({"phase": "train", "k": "v"})
        assert mlflow.active_run().info.status == "RUNNING"

    r = client.get_run(run_id)
    assert r.info.run_id == run_id
    assert r.info.experiment_id == exp.experiment_id
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "first"
    assert r.info.lifecycle_stage == "active"
    assert r.info.start_time >= before - 5000
    assert r.info.end_time is not None and r.info.end_time >= r.info.start_time
    assert r.info.artifact_uri == f"mlflow-artifacts:/{exp.experiment_id}/{run_id}/artifacts"
    assert r.data.params == {"lr": "0.01", "opt": "adam", "layers": "3"}
    assert r.data.metrics == {"loss": 0.25, "acc": 0.9, "f1": 0.6}
    assert r.data.tags["team"] == "ml"
    assert r.data.tags["phase"] == "train"
    assert r.data.tags["k"] == "v"
    assert r.data.tags["mlflow.runName"] == "first"
    assert "mlflow.user" in r.data.tags
    assert "mlflow.source.name" in r.data.tags

    hist = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert all(m.key == "loss" for m in hist)
    assert all(m.timestamp > 0 for m in hist)


def test_latest_metric_is_max_step_not_last_written(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    # written out of order: latest must be the max step, then max timestamp, then max value
    client.log_metric(run_id, "m", 5.0, timestamp=1000, step=10)
    client.log_metric(run_id, "m", 7.0, timestamp=3000, step=2)
    client.log_metric(run_id, "m", 1.0, timestamp=2000, step=3)
    assert client.get_run(run_id).data.metrics["m"] == 5.0

    # same step, later timestamp wins
    client.log_metric(run_id, "m", 4.0, timestamp=1500, step=10)
    assert client.get_run(run_id).data.metrics["m"] == 4.0

    # same step and timestamp: max value wins
    client.log_metric(run_id, "m", 3.0, timestamp=1500, step=10)
    client.log_metric(run_id, "m", 9.0, timestamp=1500, step=10)
    assert client.get_run(run_id).data.metrics["m"] == 9.0

    # history is ordered by (timestamp, step, value)
    hist = client.get_metric_history(run_id, "m")
    got = [(m.timestamp, m.step, m.value) for m in hist]
    assert got == sorted(got)
    assert len(got) == 6

    # identical rows are de-duplicated (retries are harmless)
    client.log_metric(run_id, "m", 9.0, timestamp=1500, step=10)
    assert len(client.get_metric_history(run_id, "m")) == 6


def test_metric_step_edge_values(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "s", 1.0, timestamp=10, step=-5)
    client.log_metric(run_id, "s", 2.0, timestamp=11, step=2**40)
    hist = client.get_metric_history(run_id, "s")
    assert sorted(m.step for m in hist) == [-5, 2**40]
    assert client.get_run(run_id).data.metrics["s"] == 2.0


def test_nan_and_infinity(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "nan", float("nan"), timestamp=1, step=0)
    client.log_metric(run_id, "pinf", float("inf"), timestamp=1, step=0)
    client.log_metric(run_id, "ninf", float("-inf"), timestamp=1, step=0)
    data = client.get_run(run_id).data.metrics
    assert math.isnan(data["nan"])
    assert data["pinf"] == DBL_MAX
    assert data["ninf"] == -DBL_MAX
    h = client.get_metric_history(run_id, "nan")
    assert len(h) == 1 and math.isnan(h[0].value)
    assert client.get_metric_history(run_id, "pinf")[0].value == DBL_MAX
    assert client.get_metric_history(run_id, "ninf")[0].value == -DBL_MAX


def test_nan_on_the_wire(client, server, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "x", float("nan"), timestamp=5, step=1)
    r = server.get("runs/get", params={"run_id": run_id})
    assert r.status_code == 200
    metrics = r.json()["run"]["data"]["metrics"]
    assert metrics == [{"key": "x", "value": "NaN", "timestamp": 5, "step": 1}]
    h = server.get("metrics/get-history", params={"run_id": run_id, "metric_key": "x"})
    assert h.json()["metrics"][0]["value"] == "NaN"


def test_nested_runs(client, unique):
    mlflow.set_experiment(unique("nested"))
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("x", 1.0)
        assert mlflow.active_run().info.run_id == parent.info.run_id
    c = client.get_run(child.info.run_id)
    assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert c.info.status == "FINISHED"
    p = client.get_run(parent.info.run_id)
    assert "mlflow.parentRunId" not in p.data.tags
    found = client.search_runs(
        [p.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert [r.info.run_id for r in found] == [child.info.run_id]


def test_failed_and_killed_status(client, unique):
    mlflow.set_experiment(unique("status"))
    with pytest.raises(ZeroDivisionError):
        with mlflow.start_run() as run:
            1 / 0  # noqa: B018
    assert client.get_run(run.info.run_id).info.status == "FAILED"

    run2 = mlflow.start_run()
    mlflow.end_run("KILLED")
    info = client.get_run(run2.info.run_id).info
    assert info.status == "KILLED"
    # a terminated run still accepts logging
    client.log_metric(run2.info.run_id, "late", 1.0)
    assert client.get_run(run2.info.run_id).data.metrics["late"] == 1.0
    # resuming re-opens it
    with mlflow.start_run(run_id=run2.info.run_id):
        assert client.get_run(run2.info.run_id).info.status == "RUNNING"
    assert client.get_run(run2.info.run_id).info.status == "FINISHED"


def test_set_terminated_and_update_run(client, exp_id):
    run = client.create_run(exp_id, run_name="before", tags={"a": "1"})
    rid = run.info.run_id
    assert run.info.status == "RUNNING"
    assert run.data.tags["a"] == "1"
    assert run.data.tags["mlflow.runName"] == "before"
    client.update_run(rid, name="after")
    r = client.get_run(rid)
    assert r.info.run_name == "after"
    assert r.data.tags["mlflow.runName"] == "after"
    client.set_terminated(rid, status="FAILED", end_time=1234567)
    r = client.get_run(rid)
    assert r.info.status == "FAILED"
    assert r.info.end_time == 1234567


def test_generated_run_name(client, exp_id):
    run = client.create_run(exp_id)
    assert run.info.run_name
    assert client.get_run(run.info.run_id).data.tags["mlflow.runName"] == run.info.run_name


def test_log_batch_large(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    ts = int(time.time() * 1000)
    metrics = [Metric(f"m{i % 5}", float(i), ts + i, i) for i in range(2500)]
    params = [Param(f"p{i}", str(i)) for i in range(150)]
    tags = [RunTag(f"t{i}", f"v{i}") for i in range(120)]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    r = client.get_run(run_id)
    assert len(r.data.params) == 150
    assert r.data.params["p149"] == "149"
    assert all(r.data.tags[f"t{i}"] == f"v{i}" for i in range(120))
    for k in range(5):
        # latest = max step for key m{k} = the largest i with i % 5 == k
        assert r.data.metrics[f"m{k}"] == float(2495 + k)
        hist = client.get_metric_history(run_id, f"m{k}")
        assert len(hist) == 500
        assert [m.step for m in hist] == list(range(k, 2500, 5))


def test_log_batch_empty_is_noop(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.log_batch(run_id, metrics=[], params=[], tags=[])
    assert client.get_run(run_id).data.metrics == {}


def test_param_immutability(client, exp_id, fast_errors):
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "p", "1")
    client.log_param(run_id, "p", "1")  # same value: fine
    with pytest.raises(MlflowException) as ei:
        client.log_param(run_id, "p", "2")
    assert ei.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.get_run(run_id).data.params["p"] == "1"

    # log_batch rejects the whole batch: nothing in it is written
    with pytest.raises(MlflowException) as ei:
        client.log_batch(
            run_id,
            metrics=[Metric("bm", 1.0, 1, 0)],
            params=[Param("q", "x"), Param("p", "3")],
            tags=[RunTag("bt", "v")],
        )
    assert ei.value.error_code == "INVALID_PARAMETER_VALUE"
    r = client.get_run(run_id)
    assert r.data.params == {"p": "1"}
    assert "bm" not in r.data.metrics
    assert "bt" not in r.data.tags


def test_tags_are_mutable(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.set_tag(run_id, "t", "1")
    client.set_tag(run_id, "t", "2")
    assert client.get_run(run_id).data.tags["t"] == "2"


def test_long_values_truncated(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "long", "x" * 7000)
    client.set_tag(run_id, "longtag", "y" * 9000)
    r = client.get_run(run_id)
    assert r.data.params["long"] == "x" * 6000
    assert r.data.tags["longtag"] == "y" * 8000


@pytest.mark.parametrize("key", ["a//b", "../x", "x*", "/abs", "a/", "a/../b", "k" * 251])
def test_invalid_keys_rejected(client, exp_id, fast_errors, key):
    run_id = client.create_run(exp_id).info.run_id
    for call in (
        lambda: client.log_param(run_id, key, "v"),
        lambda: client.log_metric(run_id, key, 1.0),
        lambda: client.set_tag(run_id, key, "v"),
    ):
        with pytest.raises(MlflowException) as ei:
            call()
        assert ei.value.error_code == "INVALID_PARAMETER_VALUE"
    r = client.get_run(run_id)
    assert key not in r.data.params and key not in r.data.metrics and key not in r.data.tags


def test_valid_unusual_keys(client, exp_id):
    run_id = client.create_run(exp_id).info.run_id
    keys = ["a/b", "a.b-c_d e:f", "ünï", "実験", "k" * 250]
    for k in keys:
        client.log_param(run_id, k, "v")
        client.log_metric(run_id, k, 1.0)
    r = client.get_run(run_id)
    assert set(r.data.params) == set(keys)
    assert set(r.data.metrics) == set(keys)


def test_log_to_deleted_run_fails(client, exp_id, fast_errors):
    run_id = client.create_run(exp_id).info.run_id
    client.delete_run(run_id)
    with pytest.raises(MlflowException) as ei:
        client.log_metric(run_id, "m", 1.0)
    assert ei.value.error_code == "INVALID_PARAMETER_VALUE"
