"""MLflow 3 traces through the unmodified client: `@mlflow.trace` and `mlflow.start_span`
(the trace record, its spans as an artifact), `mlflow.search_traces` (filter, order, pages),
`mlflow.get_trace`, trace tags, deletion, and the trace routes the web UI probes.
"""

import time

import mlflow
import pytest
from mlflow.exceptions import MlflowException


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _error_code(fn, *args, **kwargs):
    with pytest.raises(MlflowException) as ei:
        fn(*args, **kwargs)
    return ei.value.error_code


def _ui_locations(exp_id):
    # What the web UI sends (`{type: "MLFLOW_EXPERIMENT", mlflow_experiment: {experiment_id}}`)
    return [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp_id}}]


# --------------------------------------------------------------------------------------
# traces
# --------------------------------------------------------------------------------------


@mlflow.trace(name="add_numbers", span_type="TOOL")
def _add(a, b):
    return a + b


def _make_traces():
    """Three OK traces (add_numbers x2, outer/inner) and one ERROR trace, in this order."""
    _add(1, 2)
    time.sleep(0.02)
    _add(10, 20)
    time.sleep(0.02)
    with mlflow.start_span(name="outer") as outer:
        outer.set_inputs({"question": "hi"})
        with mlflow.start_span(name="inner", span_type="LLM") as inner:
            inner.set_inputs({"x": 1})
            inner.set_outputs({"y": 2})
        outer.set_outputs({"answer": "ok"})
    time.sleep(0.02)
    with pytest.raises(ValueError), mlflow.start_span(name="failing"):
        raise ValueError("boom")
    mlflow.flush_trace_async_logging()


def test_traces_search_get_tags_delete(client, unique):
    exp = mlflow.set_experiment(unique("traces"))
    eid = exp.experiment_id
    _make_traces()

    traces = mlflow.search_traces(
        locations=[eid], order_by=["timestamp_ms ASC"], return_type="list"
    )
    assert [t.info.tags.get("mlflow.traceName") for t in traces] == [
        "add_numbers",
        "add_numbers",
        "outer",
        "failing",
    ]
    assert [t.info.state.value for t in traces] == ["OK", "OK", "OK", "ERROR"]
    assert all(t.info.trace_id.startswith("tr-") for t in traces)
    assert all(t.info.experiment_id == eid for t in traces)
    first, second, nested, failing = traces
    assert [s.name for s in first.data.spans] == ["add_numbers"]
    assert first.data.spans[0].inputs == {"a": 1, "b": 2}
    assert first.data.spans[0].outputs == 3
    assert second.data.spans[0].inputs == {"a": 10, "b": 20}
    assert second.data.spans[0].outputs == 30
    assert first.data.spans[0].span_type == "TOOL"
    assert len(failing.data.spans) == 1 and failing.data.spans[0].status.status_code == "ERROR"

    newest = mlflow.search_traces(
        locations=[eid], order_by=["timestamp_ms DESC"], max_results=1, return_type="list"
    )
    assert [t.info.trace_id for t in newest] == [failing.info.trace_id]
    named = mlflow.search_traces(
        locations=[eid],
        filter_string="trace.name = 'add_numbers'",
        order_by=["timestamp_ms DESC"],
        return_type="list",
    )
    assert [t.info.trace_id for t in named] == [second.info.trace_id, first.info.trace_id]
    errors = mlflow.search_traces(
        locations=[eid], filter_string="trace.status = 'ERROR'", return_type="list"
    )
    assert [t.info.trace_id for t in errors] == [failing.info.trace_id]

    tid = nested.info.trace_id
    got = mlflow.get_trace(tid)
    assert got is not None and got.info.trace_id == tid
    assert got.info.state.value == "OK"
    spans = {s.name: s for s in got.data.spans}
    assert set(spans) == {"outer", "inner"}
    assert spans["outer"].parent_id is None
    assert spans["inner"].parent_id == spans["outer"].span_id
    assert spans["outer"].inputs == {"question": "hi"}
    assert spans["outer"].outputs == {"answer": "ok"}
    assert spans["inner"].inputs == {"x": 1}
    assert spans["inner"].outputs == {"y": 2}
    assert spans["inner"].span_type == "LLM"
    assert got.info.request_time > 0

    mlflow.set_trace_tag(tid, "reviewed", "yes")
    assert mlflow.get_trace(tid).info.tags["reviewed"] == "yes"
    tagged = mlflow.search_traces(
        locations=[eid], filter_string="tags.reviewed = 'yes'", return_type="list"
    )
    assert [t.info.trace_id for t in tagged] == [tid]
    mlflow.delete_trace_tag(tid, "reviewed")
    assert "reviewed" not in mlflow.get_trace(tid).info.tags

    assert client.delete_traces(eid, trace_ids=[tid]) == 1
    assert mlflow.get_trace(tid, silent=True) is None
    assert _error_code(client.get_trace, tid) == "RESOURCE_DOES_NOT_EXIST"
    left = mlflow.search_traces(locations=[eid], return_type="list")
    assert sorted(t.info.trace_id for t in left) == sorted(
        [first.info.trace_id, second.info.trace_id, failing.info.trace_id]
    )

    deleted = client.delete_traces(eid, max_timestamp_millis=int(time.time() * 1000) + 60_000)
    assert deleted == 3
    assert mlflow.search_traces(locations=[eid], return_type="list") == []


def test_ui_trace_search_probes(client, server, unique):
    """The experiment page's probes: v3 traces/search (traces tab) and v2 GET traces (kind)."""
    empty_id = client.create_experiment(unique("ui-empty"))
    r = server.post(
        "/ajax-api/3.0/mlflow/traces/search",
        json={"locations": _ui_locations(empty_id), "max_results": 1},
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json().get("traces", []) == []

    exp = mlflow.set_experiment(unique("ui-traces"))
    _add(2, 3)
    mlflow.flush_trace_async_logging()
    r = server.post(
        "/ajax-api/3.0/mlflow/traces/search",
        json={
            "locations": _ui_locations(exp.experiment_id),
            "max_results": 1,
            "order_by": ["timestamp_ms DESC"],
        },
    )
    assert r.status_code == 200, r.text
    (info,) = r.json()["traces"]
    assert info["trace_id"].startswith("tr-")
    assert info["trace_location"] == _ui_locations(exp.experiment_id)[0]
    assert info["state"] == "OK"
    assert info["tags"]["mlflow.traceName"] == "add_numbers"
    assert isinstance(info["request_time"], str)  # proto Timestamp JSON (RFC 3339)

    # The experiment-kind probe of the UI bundle: GET v2 traces with max_results=1.
    for eid, expected in ((empty_id, 0), (exp.experiment_id, 1)):
        r = server.get(
            "/ajax-api/2.0/mlflow/traces",
            params={
                "experiment_ids": eid,
                "order_by": "timestamp_ms DESC",
                "max_results": 1,
                "filter": "",
            },
        )
        assert r.status_code == 200, r.text
        assert len(r.json().get("traces", [])) == expected
    assert r.json()["traces"][0]["request_id"] == info["trace_id"]
