//! `/api/v1/pools`, `/api/v1/cost` and `/api/v1/agent/binary`: where trials run (the local
//! pool and Spot VM pools, their agents and VMs), what the fleet has cost, and the agent binary
//! that VMs download.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use spotsweep_api::{CostReport, PoolCost, PoolInfo, PoolList, SweepCost, TrialCost, VmInfo};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiError, ApiQuery};
use crate::pools::Pool;

/// The routes of pools.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pools))
        .routes(routes!(agent_binary))
        .routes(routes!(cost))
}

/// The agent binary, for the startup script of a VM: this daemon's own executable (or the
/// config's `agent_binary`), so that agents always speak the daemon's version of the protocol.
#[utoipa::path(
    get,
    path = "/api/v1/agent/binary",
    tag = "pools",
    responses(
        (status = 200, description = "The executable", content_type = "application/octet-stream"),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn agent_binary(State(s): State<AppState>) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(&*s.agent_binary).await.map_err(|e| {
        tracing::error!(path = %s.agent_binary.display(), error = %e, "cannot open the agent binary");
        ApiError::not_found(format!("the agent binary is not readable on the daemon: {e}"))
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}

/// `GET /api/v1/cost` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct CostQuery {
    /// One sweep's trials too.
    pub sweep_id: Option<i64>,
}

/// What the fleet has cost: each pool's billed VM time (idle and boot included), each sweep's
/// share (its trials' time on VMs at the VM's price per slot, attempts lost to preemption
/// counted apart), and with `sweep_id` each trial's.
#[utoipa::path(
    get,
    path = "/api/v1/cost",
    tag = "pools",
    params(CostQuery),
    responses((status = 200, description = "Costs in USD", body = CostReport), (status = 401, description = "No valid bearer token")),
    security(("bearer" = []))
)]
pub async fn cost(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let now = spotsweep_store::now_ms();
    let mut pools: std::collections::BTreeMap<String, PoolCost> = Default::default();
    for (name, pool) in s.pools.iter() {
        if let Pool::Gce(g) = pool {
            pools.insert(
                name.clone(),
                PoolCost {
                    pool: name.clone(),
                    spent_usd: 0.0,
                    budget_usd: g.budget_usd,
                    vm_seconds: 0.0,
                },
            );
        }
    }
    for vm in s.fleet.list_vms(None, true).await? {
        let p = pools.entry(vm.pool.clone()).or_insert_with(|| PoolCost {
            pool: vm.pool.clone(),
            spent_usd: 0.0,
            budget_usd: None,
            vm_seconds: 0.0,
        });
        p.spent_usd += vm.cost(now);
        p.vm_seconds += vm.billed_seconds(now);
    }
    let mut sweeps: std::collections::BTreeMap<i64, SweepCost> = Default::default();
    let mut trials: std::collections::BTreeMap<i64, TrialCost> = Default::default();
    for l in s.fleet.lease_costs(None, None).await? {
        let lost = if l.outcome.as_deref() == Some("preempted") {
            l.usd
        } else {
            0.0
        };
        let sc = sweeps.entry(l.sweep_id).or_insert(SweepCost {
            sweep_id: l.sweep_id,
            cost_usd: 0.0,
            lost_to_preemption_usd: 0.0,
            slot_seconds: 0.0,
        });
        sc.cost_usd += l.usd;
        sc.lost_to_preemption_usd += lost;
        sc.slot_seconds += l.seconds;
        if q.sweep_id == Some(l.sweep_id) {
            let t = trials.entry(l.trial_number).or_insert(TrialCost {
                number: l.trial_number,
                cost_usd: 0.0,
                lost_to_preemption_usd: 0.0,
                attempts: 0,
            });
            t.cost_usd += l.usd;
            t.lost_to_preemption_usd += lost;
            t.attempts += 1;
        }
    }
    Ok(Json(CostReport {
        pools: pools.into_values().collect(),
        sweeps: sweeps.into_values().collect(),
        trials: trials.into_values().collect(),
    }))
}

/// Every pool of the config (and `local`), with its VMs and what it has spent.
#[utoipa::path(
    get,
    path = "/api/v1/pools",
    tag = "pools",
    responses((status = 200, description = "The pools", body = PoolList), (status = 401, description = "No valid bearer token")),
    security(("bearer" = []))
)]
pub async fn list_pools(State(s): State<AppState>) -> Result<Json<PoolList>, ApiError> {
    let now = spotsweep_store::now_ms();
    let mut by_pool: std::collections::BTreeMap<String, Vec<spotsweep_store::Vm>> = Default::default();
    for vm in s.fleet.list_vms(None, true).await? {
        by_pool.entry(vm.pool.clone()).or_default().push(vm);
    }
    let mut agents: std::collections::BTreeMap<String, Vec<spotsweep_store::AgentSummary>> =
        Default::default();
    for a in s.sweeps.agent_summaries(None).await? {
        agents.entry(a.pool.clone()).or_default().push(a);
    }
    let stats: std::collections::HashMap<String, (i64, i64)> = agents
        .values()
        .flatten()
        .map(|a| (a.name.clone(), (a.attempts, a.preemptions)))
        .collect();
    let mut backoffs = s.zone_backoffs.lock().map(|b| b.clone()).unwrap_or_default();
    let gpus = s.signals.agent_gpus.lock().map(|g| g.clone()).unwrap_or_default();
    let mut pools = (*s.pools).clone();
    pools
        .entry("local".to_string())
        .or_insert(Pool::Local { setup: None });
    let out = pools
        .into_iter()
        .map(|(name, pool)| {
            let vms = by_pool.remove(&name).unwrap_or_default();
            let spent_usd = vms.iter().map(|v| v.cost(now)).sum();
            let backoffs = backoffs
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, until)| *until > now)
                .map(|(zone, until)| spotsweep_api::ZoneBackoff { zone, until })
                .collect();
            let agents = agents
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|a| spotsweep_api::AgentInfo {
                    gpus: gpus.get(&a.name).cloned().unwrap_or_default(),
                    name: a.name,
                    slots: a.slots,
                    last_seen_at: a.last_seen_at,
                    running: a.running,
                    attempts: a.attempts,
                    preemptions: a.preemptions,
                })
                .collect();
            let vms = vms
                .into_iter()
                .map(|v| VmInfo {
                    trials_run: stats.get(&v.name).map_or(0, |s| s.0),
                    preemptions: stats.get(&v.name).map_or(0, |s| s.1),
                    billed_seconds: v.billed_seconds(now),
                    cost_usd: v.cost(now),
                    name: v.name,
                    zone: v.zone,
                    state: crate::wire::vm_state(v.state),
                    created_at: v.created_at,
                    running_at: v.running_at,
                    ended_at: v.ended_at,
                    reason: v.reason,
                })
                .collect();
            match pool {
                Pool::Local { .. } => PoolInfo {
                    name,
                    provider: "local".into(),
                    project: None,
                    zones: Vec::new(),
                    machine_type: None,
                    slots_per_vm: None,
                    max_vms: None,
                    spot_price_per_hour: None,
                    budget_usd: None,
                    spent_usd,
                    vms,
                    backoffs,
                    agents,
                },
                Pool::Gce(g) => PoolInfo {
                    name,
                    provider: "gce".into(),
                    project: Some(g.project),
                    zones: g.zones,
                    machine_type: Some(g.machine_type),
                    slots_per_vm: Some(g.slots_per_vm),
                    max_vms: Some(g.max_vms),
                    spot_price_per_hour: Some(g.spot_price_per_hour),
                    budget_usd: g.budget_usd,
                    spent_usd,
                    vms,
                    backoffs,
                    agents,
                },
            }
        })
        .collect();
    Ok(Json(PoolList { pools: out }))
}
