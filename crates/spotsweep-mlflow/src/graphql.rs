//! `/graphql`: the two queries MLflow's web UI sends there (`MlflowGetExperimentQuery` for an
//! experiment's header, `GetRun` for a run's page), answered from the same store as the REST
//! routes.
//!
//! Not a GraphQL engine: each known operation is answered with every field its query can
//! select (a client reads the fields it asked for and ignores the rest), longs as strings as
//! MLflow's `LongString` scalar writes them, and errors as a GraphQL `errors` list. An unknown
//! operation gets an error naming it rather than a guess.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use spotsweep_store::{Experiment, KeyValue, Run};

use crate::MlflowState;
use crate::error::MlflowError;
use crate::validation::parse_experiment_id;

/// A GraphQL request.
#[derive(Deserialize)]
pub struct GraphqlRequest {
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    variables: Value,
}

fn tags(list: &[KeyValue], typename: &str) -> Value {
    Value::Array(
        list.iter()
            .map(|t| json!({"key": t.key, "value": t.value, "__typename": typename}))
            .collect(),
    )
}

fn experiment_json(e: &Experiment) -> Value {
    json!({
        "experimentId": e.experiment_id.to_string(),
        "name": e.name,
        "artifactLocation": e.artifact_location,
        "lifecycleStage": e.lifecycle_stage.as_str(),
        "creationTime": e.creation_time.to_string(),
        "lastUpdateTime": e.last_update_time.to_string(),
        "effectiveTraceArchivalRetention": null,
        "tags": tags(&e.tags, "MlflowExperimentTag"),
        "__typename": "MlflowExperiment",
    })
}

/// An MLflow error as the `apiError` field of a response.
fn api_error(e: MlflowError) -> Value {
    json!({
        "code": e.error_code,
        "message": e.message,
        "helpUrl": null,
        "__typename": "ApiError",
    })
}

async fn get_experiment(s: &MlflowState, input: &Value) -> Value {
    let id = input
        .get("experimentId")
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let found = async {
        let id = parse_experiment_id(&id)?;
        Ok::<_, MlflowError>(s.store.get_experiment(id).await?)
    }
    .await;
    let (experiment, error) = match found {
        Ok(e) => (experiment_json(&e), Value::Null),
        Err(e) => (Value::Null, api_error(e)),
    };
    json!({
        "mlflowGetExperiment": {
            "apiError": error,
            "experiment": experiment,
            "__typename": "MlflowGetExperimentResponse",
        }
    })
}

fn run_json(run: &Run, experiment: Option<&Experiment>, models: spotsweep_store::RunModels) -> Value {
    let i = &run.info;
    let metrics: Vec<Value> = run
        .metrics
        .iter()
        .map(|m| {
            json!({
                "key": m.key,
                "value": if m.value.is_finite() { json!(m.value) } else { Value::Null },
                "step": m.step.to_string(),
                "timestamp": m.timestamp.to_string(),
                "__typename": "MlflowMetric",
            })
        })
        .collect();
    let params: Vec<Value> = run
        .params
        .iter()
        .map(|p| json!({"key": p.key, "value": p.value, "__typename": "MlflowParam"}))
        .collect();
    let datasets: Vec<Value> = run
        .inputs
        .iter()
        .map(|d| {
            json!({
                "dataset": {
                    "name": d.name,
                    "digest": d.digest,
                    "sourceType": d.source_type,
                    "source": d.source,
                    "schema": d.schema,
                    "profile": d.profile,
                    "__typename": "MlflowDataset",
                },
                "tags": tags(&d.tags, "MlflowInputTag"),
                "__typename": "MlflowDatasetInput",
            })
        })
        .collect();
    json!({
        "info": {
            "runId": i.run_id,
            "runUuid": i.run_id,
            "runName": i.run_name,
            "experimentId": i.experiment_id.to_string(),
            "userId": i.user_id,
            "status": i.status.as_str(),
            "startTime": i.start_time.to_string(),
            "endTime": i.end_time.map(|t| t.to_string()),
            "artifactUri": i.artifact_uri,
            "lifecycleStage": i.lifecycle_stage.as_str(),
            "__typename": "MlflowRunInfo",
        },
        "experiment": experiment.map(experiment_json),
        "modelVersions": [],
        "data": {
            "metrics": metrics,
            "params": params,
            "tags": tags(&run.tags, "MlflowRunTag"),
            "__typename": "MlflowRunData",
        },
        "inputs": {
            "datasetInputs": datasets,
            "modelInputs": models.inputs.iter()
                .map(|id| json!({"modelId": id, "__typename": "MlflowModelInput"}))
                .collect::<Vec<_>>(),
            "__typename": "MlflowRunInputs",
        },
        "outputs": {
            "modelOutputs": models.outputs.iter()
                .map(|(id, step)| json!({"modelId": id, "step": step.to_string(), "__typename": "MlflowModelOutput"}))
                .collect::<Vec<_>>(),
            "__typename": "MlflowRunOutputs",
        },
        "__typename": "MlflowRun",
    })
}

async fn get_run(s: &MlflowState, input: &Value) -> Value {
    let id = input
        .get("runId")
        .or_else(|| input.get("runUuid"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let found = async {
        if id.is_empty() {
            return Err(MlflowError::missing("run_id"));
        }
        let run = s.store.get_run(&id).await?;
        let experiment = s.store.get_experiment(run.info.experiment_id).await.ok();
        let models = s.models.run_models(&id).await?;
        Ok::<_, MlflowError>(run_json(&run, experiment.as_ref(), models))
    }
    .await;
    let (run, error) = match found {
        Ok(run) => (run, Value::Null),
        Err(e) => (Value::Null, api_error(e)),
    };
    json!({
        "mlflowGetRun": {
            "apiError": error,
            "run": run,
            "__typename": "MlflowGetRunResponse",
        }
    })
}

/// Answers the UI's GraphQL queries.
pub async fn graphql(State(s): State<MlflowState>, Json(req): Json<GraphqlRequest>) -> Json<Value> {
    let query = req.query.as_deref().unwrap_or("");
    let operation = req.operation_name.as_deref().unwrap_or("");
    let vars = &req.variables;
    let data = if operation == "MlflowGetExperimentQuery" || query.contains("mlflowGetExperiment(") {
        get_experiment(&s, vars.get("input").unwrap_or(&Value::Null)).await
    } else if operation == "GetRun" || query.contains("mlflowGetRun(") {
        let input = vars
            .get("data")
            .or_else(|| vars.get("input"))
            .unwrap_or(&Value::Null);
        get_run(&s, input).await
    } else {
        return Json(json!({
            "data": null,
            "errors": [{"message": format!(
                "spotsweep answers the GraphQL operations MLflow's web UI sends for experiments and runs; \
                 '{operation}' is not one of them (the REST API has the same data)"
            )}],
        }));
    };
    Json(json!({ "data": data }))
}
