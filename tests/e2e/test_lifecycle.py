"""Delete / restore of runs and experiments, tag deletion, rename."""

import mlflow
import pytest
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException


def run_ids(runs):
    return {r.info.run_id for r in runs}


def test_delete_restore_run(client, exp_id):
    a = client.create_run(exp_id).info.run_id
    b = client.create_run(exp_id).info.run_id
    client.delete_run(a)
    assert run_ids(client.search_runs([exp_id])) == {b}
    assert run_ids(client.search_runs([exp_id], run_view_type=ViewType.DELETED_ONLY)) == {a}
    assert client.get_run(a).info.lifecycle_stage == "deleted"
    client.restore_run(a)
    assert run_ids(client.search_runs([exp_id])) == {a, b}
    assert client.get_run(a).info.lifecycle_stage == "active"


def test_delete_experiment_then_create_run_fails(client, unique, fast_errors):
    name = unique("delexp")
    exp_id = client.create_experiment(name)
    r1 = client.create_run(exp_id).info.run_id
    r2 = client.create_run(exp_id).info.run_id
    client.delete_run(r2)
    client.delete_experiment(exp_id)

    exp = client.get_experiment(exp_id)
    assert exp.lifecycle_stage == "deleted"
    assert client.get_run(r1).info.lifecycle_stage == "deleted"

    with pytest.raises(MlflowException) as ei:
        client.create_run(exp_id)
    assert ei.value.error_code == "INVALID_PARAMETER_VALUE"

    # the name stays reserved
    with pytest.raises(MlflowException) as ei:
        client.create_experiment(name)
    assert ei.value.error_code == "RESOURCE_ALREADY_EXISTS"

    # it is still found by name (as deleted)
    e = client.get_experiment_by_name(name)
    assert e is not None and e.lifecycle_stage == "deleted"

    # fluent set_experiment on a deleted experiment refuses
    with pytest.raises(MlflowException):
        mlflow.set_experiment(name)

    client.restore_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "active"
    assert client.get_run(r1).info.lifecycle_stage == "active"
    assert r1 in run_ids(client.search_runs([exp_id]))
    client.create_run(exp_id)  # works again


def test_delete_tag(client, exp_id, fast_errors):
    rid = client.create_run(exp_id).info.run_id
    client.set_tag(rid, "t", "v")
    client.delete_tag(rid, "t")
    assert "t" not in client.get_run(rid).data.tags
    with pytest.raises(MlflowException) as ei:
        client.delete_tag(rid, "t")
    assert ei.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as ei:
        client.delete_tag(rid, "never-set")
    assert ei.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_experiment_tags(client, exp_id, fast_errors):
    client.set_experiment_tag(exp_id, "owner", "me")
    client.set_experiment_tag(exp_id, "owner", "you")
    assert client.get_experiment(exp_id).tags["owner"] == "you"
    client.delete_experiment_tag(exp_id, "owner")
    assert "owner" not in client.get_experiment(exp_id).tags
    with pytest.raises(MlflowException) as ei:
        client.delete_experiment_tag(exp_id, "owner")
    assert ei.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_get_experiment_by_name_missing(client, unique):
    assert client.get_experiment_by_name(unique("missing")) is None
    assert mlflow.get_experiment_by_name(unique("missing")) is None


def test_rename_experiment(client, unique, fast_errors):
    old, new = unique("old"), unique("new")
    exp_id = client.create_experiment(old)
    client.rename_experiment(exp_id, new)
    assert client.get_experiment(exp_id).name == new
    assert client.get_experiment_by_name(old) is None
    assert client.get_experiment_by_name(new).experiment_id == exp_id
    other = client.create_experiment(unique("other"))
    with pytest.raises(MlflowException) as ei:
        client.rename_experiment(other, new)
    # the reference answers 400 BAD_REQUEST (a leaked IntegrityError); 400
    # RESOURCE_ALREADY_EXISTS is the better answer and equally fine for the client
    assert ei.value.error_code in ("BAD_REQUEST", "RESOURCE_ALREADY_EXISTS")
    assert ei.value.get_http_status_code() == 400
    assert client.get_experiment(other).name != new


def test_create_experiment_with_tags(client, unique):
    name = unique("tagged")
    exp_id = client.create_experiment(name, tags={"a": "1", "b": "2"})
    assert isinstance(exp_id, str) and exp_id.isdigit()
    e = client.get_experiment(exp_id)
    assert e.name == name
    assert e.tags == {"a": "1", "b": "2"}
    assert e.lifecycle_stage == "active"
    assert e.creation_time > 0 and e.last_update_time >= e.creation_time


def test_default_experiment_exists(client):
    e = client.get_experiment("0")
    assert e.name == "Default"
    assert e.artifact_location == "mlflow-artifacts:/0"
