"""search_runs / search_experiments: filter DSL, ordering, paging, view types."""

import math

import mlflow
import pytest
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException


@pytest.fixture
def populated(client, unique):
    """An experiment with 6 runs of known metrics/params/tags/statuses.

    start_time is explicit so ordering is deterministic.
    """
    exp_id = client.create_experiment(unique("search"))
    spec = [
        # name,  start, acc,  loss, opt,     tags
        ("r0", 1000, 0.9, 0.1, "adam", {"group": "A", "color": "Red"}),
        ("r1", 2000, 0.4, 0.5, "adam", {"group": "A"}),
        ("r2", 3000, 0.7, None, "sgd", {"group": "B", "color": "red"}),
        ("r3", 4000, None, 0.3, "AdamW", {"group": "B"}),
        ("r4", 5000, 0.6, 0.2, None, {}),
        ("r5", 6000, float("nan"), 0.9, "adam", {"color": "blue"}),
    ]
    ids = {}
    for name, start, acc, loss, opt, tags in spec:
        run = client.create_run(exp_id, start_time=start, run_name=name, tags=tags)
        rid = run.info.run_id
        ids[name] = rid
        if acc is not None:
            client.log_metric(rid, "acc", acc, timestamp=start, step=0)
        if loss is not None:
            client.log_metric(rid, "loss", loss, timestamp=start, step=0)
        if opt is not None:
            client.log_param(rid, "opt", opt)
    client.set_terminated(ids["r0"], "FINISHED")
    client.set_terminated(ids["r1"], "FAILED")
    client.set_terminated(ids["r2"], "FINISHED")
    return exp_id, ids


def names(runs):
    return [r.info.run_name for r in runs]


def search(client, exp_id, flt="", order_by=None, **kw):
    return client.search_runs([exp_id], filter_string=flt, order_by=order_by, **kw)


def test_default_order_is_start_time_desc(client, populated):
    exp_id, _ = populated
    assert names(search(client, exp_id)) == ["r5", "r4", "r3", "r2", "r1", "r0"]


@pytest.mark.parametrize(
    "flt, expected",
    [
        ("metrics.acc > 0.5", {"r0", "r2", "r4"}),
        ("metrics.acc > 0.5 AND params.opt = 'adam'", {"r0"}),
        ("metrics.acc > 0.5 and params.opt = 'adam'", {"r0"}),
        ("metrics.acc >= 0.4", {"r0", "r1", "r2", "r4"}),
        ("metrics.acc <= 0.4", {"r1"}),
        ("metrics.acc < 0.6", {"r1"}),
        ("metrics.acc = 0.7", {"r2"}),
        ("metrics.acc != 0.7", {"r0", "r1", "r4", "r5"}),
        ("metric.loss < 0.25", {"r0", "r4"}),
        ("params.opt = 'adam'", {"r0", "r1", "r5"}),
        ('params.opt = "adam"', {"r0", "r1", "r5"}),
        ("params.opt != 'adam'", {"r2", "r3"}),
        ("param.opt LIKE 'adam%'", {"r0", "r1", "r5"}),
        ("params.opt LIKE 'Adam%'", {"r3"}),
        ("params.opt ILIKE 'adam%'", {"r0", "r1", "r3", "r5"}),
        ("params.opt LIKE '_gd'", {"r2"}),
        ("params.opt IS NULL", {"r4"}),
        ("params.opt IS NOT NULL", {"r0", "r1", "r2", "r3", "r5"}),
        ("tags.group = 'B'", {"r2", "r3"}),
        ("tags.color LIKE 'red'", {"r2"}),
        ("tags.color ILIKE 'red'", {"r0", "r2"}),
        ("tags.color IS NULL", {"r1", "r3", "r4"}),
        ("tags.`group` = 'A'", {"r0", "r1"}),
        ("tags.\"group\" = 'A'", {"r0", "r1"}),
        ("tags.mlflow.runName = 'r3'", {"r3"}),
        ("attributes.status = 'FINISHED'", {"r0", "r2"}),
        ("status = 'RUNNING'", {"r3", "r4", "r5"}),
        ("attributes.status != 'RUNNING'", {"r0", "r1", "r2"}),
        ("attributes.run_name = 'r4'", {"r4"}),
        ("run_name LIKE 'r%'", {"r0", "r1", "r2", "r3", "r4", "r5"}),
        ("attributes.start_time >= 4000", {"r3", "r4", "r5"}),
        ("attributes.start_time < 2000", {"r0"}),
        ("created > 5000", {"r5"}),
        ("metrics.acc > 0.5 AND tags.group = 'B' AND attributes.status = 'FINISHED'", {"r2"}),
        ("metrics.nonexistent > 0", set()),
        ("params.opt = 'nope'", set()),
    ],
)
def test_filters(client, populated, flt, expected):
    exp_id, _ = populated
    assert set(names(search(client, exp_id, flt))) == expected


def test_run_id_in(client, populated):
    exp_id, ids = populated
    flt = f"attributes.run_id IN ('{ids['r1']}', '{ids['r4']}')"
    assert set(names(search(client, exp_id, flt))) == {"r1", "r4"}
    flt = f"attributes.run_id NOT IN ('{ids['r1']}', '{ids['r4']}')"
    assert set(names(search(client, exp_id, flt))) == {"r0", "r2", "r3", "r5"}
    flt = f"attributes.run_id = '{ids['r2']}'"
    assert names(search(client, exp_id, flt)) == ["r2"]


def test_order_by_metric_missing_last(client, populated):
    exp_id, _ = populated
    asc = names(search(client, exp_id, order_by=["metrics.acc ASC"]))
    # NaN sorts after numbers, missing after everything, in both directions
    assert asc == ["r1", "r4", "r2", "r0", "r5", "r3"]
    desc = names(search(client, exp_id, order_by=["metrics.acc DESC"]))
    assert desc == ["r0", "r2", "r4", "r1", "r5", "r3"]


def test_order_by_metric_desc_exact(client, populated):
    exp_id, _ = populated
    desc = names(search(client, exp_id, order_by=["metrics.loss DESC"]))
    assert desc == ["r5", "r1", "r3", "r4", "r0", "r2"]
    asc = names(search(client, exp_id, order_by=["metrics.loss"]))
    assert asc == ["r0", "r4", "r3", "r1", "r5", "r2"]


def test_order_by_param_and_tag(client, populated):
    exp_id, _ = populated
    # byte-wise: 'AdamW' < 'adam' < 'sgd'; ties by start_time DESC; missing last
    asc = names(search(client, exp_id, order_by=["params.opt ASC"]))
    assert asc == ["r3", "r5", "r1", "r0", "r2", "r4"]
    desc = names(search(client, exp_id, order_by=["params.opt DESC"]))
    assert desc == ["r2", "r5", "r1", "r0", "r3", "r4"]
    by_tag = names(search(client, exp_id, order_by=["tags.group ASC", "start_time ASC"]))
    assert by_tag == ["r0", "r1", "r2", "r3", "r4", "r5"]


def test_order_by_attributes(client, populated):
    exp_id, _ = populated
    assert names(search(client, exp_id, order_by=["start_time ASC"])) == [
        "r0", "r1", "r2", "r3", "r4", "r5"
    ]
    assert names(search(client, exp_id, order_by=["attributes.start_time DESC"])) == [
        "r5", "r4", "r3", "r2", "r1", "r0"
    ]
    assert names(search(client, exp_id, order_by=["attributes.run_name DESC"])) == [
        "r5", "r4", "r3", "r2", "r1", "r0"
    ]
    by_status = names(search(client, exp_id, order_by=["attributes.status ASC"]))
    # FAILED < FINISHED < RUNNING, ties by start_time DESC
    assert by_status == ["r1", "r2", "r0", "r5", "r4", "r3"]


def test_paging_collects_all_without_duplicates(client, unique):
    exp_id = client.create_experiment(unique("paging"))
    expected = set()
    for i in range(23):
        rid = client.create_run(exp_id, start_time=10_000 + (i % 5)).info.run_id
        client.log_metric(rid, "i", float(i), timestamp=1, step=0)
        expected.add(rid)
    for order_by in (None, ["metrics.i DESC"], ["start_time ASC"]):
        seen = []
        token = None
        pages = 0
        while True:
            page = client.search_runs(
                [exp_id], max_results=5, order_by=order_by, page_token=token
            )
            assert len(page) <= 5
            seen += [r.info.run_id for r in page]
            pages += 1
            token = page.token
            if not token:
                break
            assert pages < 20
        assert pages == 5
        assert len(seen) == len(set(seen)) == 23
        assert set(seen) == expected
        # pages concatenate to the unpaged result
        assert seen == [r.info.run_id for r in client.search_runs([exp_id], order_by=order_by)]


def test_last_page_has_no_token(client, populated):
    exp_id, _ = populated
    page = client.search_runs([exp_id], max_results=6)
    assert len(page) == 6
    assert not page.token
    page = client.search_runs([exp_id], max_results=100)
    assert len(page) == 6 and not page.token


def test_run_view_type(client, populated):
    exp_id, ids = populated
    client.delete_run(ids["r1"])
    client.delete_run(ids["r3"])
    active = set(names(client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY)))
    deleted = set(names(client.search_runs([exp_id], run_view_type=ViewType.DELETED_ONLY)))
    both = set(names(client.search_runs([exp_id], run_view_type=ViewType.ALL)))
    assert active == {"r0", "r2", "r4", "r5"}
    assert deleted == {"r1", "r3"}
    assert both == {"r0", "r1", "r2", "r3", "r4", "r5"}
    # deleted runs stay readable
    assert client.get_run(ids["r1"]).info.lifecycle_stage == "deleted"
    client.restore_run(ids["r1"])
    assert "r1" in set(names(client.search_runs([exp_id])))
    assert client.get_run(ids["r1"]).info.lifecycle_stage == "active"


def test_search_multiple_and_unknown_experiments(client, populated, unique):
    exp_id, _ = populated
    other = client.create_experiment(unique("other"))
    client.create_run(other, run_name="o1")
    got = set(names(client.search_runs([exp_id, other])))
    assert got == {"r0", "r1", "r2", "r3", "r4", "r5", "o1"}
    assert list(client.search_runs(["987654321"])) == []


def test_search_runs_returns_full_data(client, populated):
    exp_id, ids = populated
    (run,) = search(client, exp_id, "attributes.run_name = 'r0'")
    assert run.info.run_id == ids["r0"]
    assert run.data.metrics == {"acc": 0.9, "loss": 0.1}
    assert run.data.params == {"opt": "adam"}
    assert run.data.tags["group"] == "A"
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(
    "flt",
    [
        "metrics.acc = 'x'",
        "metrics.acc > 0.5 OR params.opt = 'adam'",
        "params.opt = 3",
        "attributes.status IN ('FINISHED')",
        "attributes.foo = 'x'",
        "foo.bar = 'x'",
        "PARAMS.opt = 'adam'",
        "metrics.acc >",
        "(metrics.acc > 0.5)",
    ],
)
def test_bad_filter_is_400(client, server, populated, fast_errors, flt):
    exp_id, _ = populated
    with pytest.raises(MlflowException) as ei:
        client.search_runs([exp_id], filter_string=flt)
    assert ei.value.error_code == "INVALID_PARAMETER_VALUE"
    r = server.post("runs/search", json={"experiment_ids": [exp_id], "filter": flt})
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert r.headers["Content-Type"].startswith("application/json")


def test_bad_order_by_and_paging_are_400(server, populated):
    exp_id, _ = populated
    for body in (
        {"experiment_ids": [exp_id], "order_by": ["metrics.acc SIDEWAYS"]},
        {"experiment_ids": [exp_id], "order_by": ["foo.bar"]},
        {"experiment_ids": [exp_id], "max_results": 50001},
        {"experiment_ids": [exp_id], "page_token": "not-a-token!!"},
    ):
        r = server.post("runs/search", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_search_runs_empty_experiment_ids(server):
    r = server.post("runs/search", json={"experiment_ids": []})
    assert r.status_code == 200
    assert r.json() == {}


def test_search_runs_pandas(client, populated):
    exp_id, ids = populated
    df = mlflow.search_runs(
        experiment_ids=[exp_id], filter_string="params.opt = 'adam'", order_by=["start_time ASC"]
    )
    assert list(df["run_id"]) == [ids["r0"], ids["r1"], ids["r5"]]
    assert list(df["params.opt"]) == ["adam", "adam", "adam"]
    assert df["metrics.acc"].iloc[0] == 0.9
    assert math.isnan(df["metrics.acc"].iloc[2])
    assert list(df["tags.group"].iloc[:2]) == ["A", "A"]
    assert list(df["status"]) == ["FINISHED", "FAILED", "RUNNING"]
    runs = mlflow.search_runs(experiment_ids=[exp_id], output_format="list")
    assert len(runs) == 6


# ----------------------------------------------------------------------------- experiments


@pytest.fixture
def exp_family(client, unique):
    prefix = unique("fam")
    ids = []
    for i in range(7):
        ids.append(
            client.create_experiment(
                f"{prefix}-{i}", tags={"kind": "even" if i % 2 == 0 else "odd", "i": str(i)}
            )
        )
    return prefix, ids


def test_search_experiments_filter(client, exp_family):
    prefix, ids = exp_family
    got = client.search_experiments(filter_string=f"name LIKE '{prefix}-%'")
    assert {e.experiment_id for e in got} == set(ids)
    got = client.search_experiments(
        filter_string=f"name LIKE '{prefix}-%' AND tags.kind = 'odd'"
    )
    assert sorted(e.name for e in got) == [f"{prefix}-1", f"{prefix}-3", f"{prefix}-5"]
    got = client.search_experiments(filter_string=f"name = '{prefix}-4'")
    assert [e.experiment_id for e in got] == [ids[4]]
    assert got[0].tags["i"] == "4"
    got = client.search_experiments(filter_string=f"name ILIKE '{prefix.upper()}-%'")
    assert len(got) == 7


def test_search_experiments_order_and_paging(client, exp_family):
    prefix, ids = exp_family
    flt = f"name LIKE '{prefix}-%'"
    by_name_desc = client.search_experiments(filter_string=flt, order_by=["name DESC"])
    assert [e.name for e in by_name_desc] == [f"{prefix}-{i}" for i in reversed(range(7))]
    by_id = client.search_experiments(filter_string=flt, order_by=["experiment_id ASC"])
    assert [e.experiment_id for e in by_id] == sorted(ids, key=int)
    # default order: creation_time DESC, experiment_id ASC
    default = client.search_experiments(filter_string=flt)
    assert [e.experiment_id for e in default] == [
        e.experiment_id
        for e in sorted(default, key=lambda e: (-e.creation_time, int(e.experiment_id)))
    ]
    assert {e.experiment_id for e in default} == set(ids)
    seen, token, pages = [], None, 0
    while True:
        page = client.search_experiments(
            filter_string=flt, max_results=3, order_by=["name ASC"], page_token=token
        )
        seen += [e.name for e in page]
        pages += 1
        token = page.token
        if not token:
            break
    assert pages == 3
    assert seen == [f"{prefix}-{i}" for i in range(7)]


def test_search_experiments_view_type(client, exp_family):
    prefix, ids = exp_family
    client.delete_experiment(ids[2])
    flt = f"name LIKE '{prefix}-%'"
    active = {e.experiment_id for e in client.search_experiments(filter_string=flt)}
    assert ids[2] not in active and len(active) == 6
    deleted = client.search_experiments(filter_string=flt, view_type=ViewType.DELETED_ONLY)
    assert [e.experiment_id for e in deleted] == [ids[2]]
    assert deleted[0].lifecycle_stage == "deleted"
    everything = client.search_experiments(filter_string=flt, view_type=ViewType.ALL)
    assert len(everything) == 7


def test_search_experiments_bad_filter(client, fast_errors):
    for flt in ("name = 'a' OR name = 'b'", "foo = 'x'"):
        with pytest.raises(MlflowException) as ei:
            client.search_experiments(filter_string=flt)
        assert ei.value.error_code == "INVALID_PARAMETER_VALUE"


def test_search_experiments_requires_max_results(server):
    r = server.get("experiments/search")
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = server.get("experiments/search", params={"max_results": 5})
    assert r.status_code == 200
    assert len(r.json()["experiments"]) <= 5


def test_nan_and_inf_in_filters_and_order(client, unique):
    exp_id = client.create_experiment(unique("nanfilter"))
    for name, v in [("nan", float("nan")), ("pinf", float("inf")), ("zero", 0.0), ("one", 1.0)]:
        rid = client.create_run(exp_id, run_name=name).info.run_id
        client.log_metric(rid, "m", v, timestamp=1)

    def f(flt):
        return set(names(client.search_runs([exp_id], filter_string=flt)))

    # NaN compares like IEEE: never equal/less/greater, always "!="
    assert f("metrics.m = 0") == {"zero"}
    assert f("metrics.m != 0") == {"nan", "pinf", "one"}
    assert f("metrics.m < 100") == {"zero", "one"}
    assert f("metrics.m > -1") == {"zero", "one", "pinf"}
    # +inf is stored as DBL_MAX
    assert f("metrics.m > 1") == {"pinf"}
    assert f("metrics.m = 1.7976931348623157e308") == {"pinf"}
    # NaN sorts after all numbers in both directions
    assert names(client.search_runs([exp_id], order_by=["metrics.m DESC"])) == [
        "pinf", "one", "zero", "nan"
    ]
    assert names(client.search_runs([exp_id], order_by=["metrics.m ASC"])) == [
        "zero", "one", "pinf", "nan"
    ]
