//! Task routes: list, create from TOML, show, the lifecycle (start, pause, resume, stop), and
//! each task's rounds, metrics, round log (with its verification) and checkpoints.
//!
//! Lifecycle: `created` → start → `running` ⇄ pause/resume ⇄ `paused`; stop from `created`,
//! `running` or `paused` → `stopped` (for good); a task whose rounds are all done is
//! `finished`. Any other transition is a 409 that changes nothing. Pausing or stopping ends the
//! task's loop ([`crate::scheduler::Scheduler::halt_task`]): a running attempt is aborted and
//! recorded, nothing of it applied; resuming continues from the round log's head.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cohort_protocol::{ContentHash, TaskId};
use serde_json::{Value, json};

use super::events::ApiEvent;
use super::{ApiError, ApiState, Owner, Reader, unix_now};
use crate::budget::{Budget, BudgetError, no_privacy_report};
use crate::round_log::{LogEntry, RoundLogError};
use crate::states::{AttemptState, TaskState};
use crate::store::{Store, TaskRow};
use crate::task::TaskDefinition;

type JsonResult = Result<Json<Value>, ApiError>;

fn task_row(store: &Store, id: &str) -> Result<TaskRow, ApiError> {
    store.task(id)?.ok_or_else(|| ApiError::unknown_task(id))
}

fn summary(state: &ApiState, store: &Store, row: &TaskRow) -> Result<Value, ApiError> {
    let def = TaskDefinition::from_stored(&row.definition).ok();
    let rounds = store.rounds(&row.id)?;
    let done = rounds
        .iter()
        .filter(|r| r.state == AttemptState::Finished)
        .count();
    let live = state.scheduler().live(&row.id);
    Ok(json!({
        "id": row.id,
        "state": row.state.as_str(),
        "rounds": def.as_ref().map(|d| d.rounds),
        "rounds_done": done,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "live": live.map(|(status, waiting)| json!({ "status": status, "checked_in": waiting })),
    }))
}

/// `GET /api/v1/tasks`.
pub async fn list(State(state): State<ApiState>, _: Reader) -> JsonResult {
    let s = state.clone();
    let tasks = state
        .read(move |store| {
            store
                .tasks()?
                .iter()
                .map(|row| summary(&s, store, row))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(json!({ "tasks": tasks })))
}

/// `POST /api/v1/tasks`: the body is a task definition in TOML (`docs/configuration.md`).
pub async fn create(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = create_task(&state, &body).await;
    let target = result
        .as_ref()
        .map(|(_, v)| v["id"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    state
        .audited(&caller, "task.create", &target, result)
        .await
        .map(|(s, v)| (s, Json(v)))
}

async fn create_task(state: &ApiState, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::bad_request(
            "bad_toml",
            "the body is not UTF-8 text; send the task definition as TOML",
        )
    })?;
    let def = TaskDefinition::from_toml(text).map_err(|e| {
        let mut err = ApiError::bad_request(
            "bad_toml",
            format!("the task definition was refused: {e}; docs/configuration.md lists the keys"),
        );
        err.key = e.key().map(str::to_string);
        err
    })?;
    let stored = def.to_toml().map_err(ApiError::internal)?;
    let id = def.id.clone();
    let _guard = state.inner.lifecycle.lock().await;
    let store = state.store().clone();
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        if store.task(&id2)?.is_some() {
            return Err(ApiError::conflict(
                "task_exists",
                format!("a task {id2:?} exists already; choose another id"),
            ));
        }
        store.put_task(&id2, &stored, TaskState::Created, unix_now())?;
        Ok(())
    })
    .await
    .map_err(ApiError::internal)??;
    state.notify(ApiEvent::TaskChanged {
        task: id.clone(),
        state: TaskState::Created,
    });
    Ok((
        StatusCode::CREATED,
        json!({ "id": id, "state": TaskState::Created.as_str() }),
    ))
}

/// `GET /api/v1/tasks/{id}`.
pub async fn show(State(state): State<ApiState>, _: Reader, Path(id): Path<String>) -> JsonResult {
    let s = state.clone();
    let v = state
        .read(move |store| {
            let row = task_row(store, &id)?;
            let mut v = summary(&s, store, &row)?;
            v["definition"] = json!(row.definition);
            if let Ok(def) = TaskDefinition::from_stored(&row.definition) {
                let layout = def.model().parameter_layout().ok();
                v["model"] = json!({
                    "parameters": layout.as_ref().map(|l| l.iter().map(|p| p.len()).sum::<usize>()),
                    "clients_per_round": def.selection.clients_per_round,
                    "selection_size": def.selection.selection_size(),
                    "evaluate_every": def.evaluate_every,
                });
            }
            Ok(v)
        })
        .await?;
    Ok(Json(v))
}

#[derive(Clone, Copy, Debug)]
enum Transition {
    Start,
    Pause,
    Resume,
    Stop,
}

impl Transition {
    fn name(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Stop => "stop",
        }
    }

    /// The state after the transition from `from`, or why it makes no sense.
    fn target(self, id: &str, from: TaskState) -> Result<TaskState, ApiError> {
        use TaskState::*;
        let to = match (self, from) {
            (Transition::Start, Created) => Running,
            (Transition::Pause, Running) => Paused,
            (Transition::Resume, Paused) => Running,
            (Transition::Stop, Created | Running | Paused) => Stopped,
            _ => {
                let hint = match (self, from) {
                    (Transition::Start, Paused) => "; resume it instead",
                    (Transition::Resume, Created) => "; start it instead",
                    (_, Finished) => "; every round is done, export its model or create a new task",
                    (_, Stopped) => "; a stopped task stays stopped, create a new task",
                    (_, BudgetExhausted) => {
                        "; its privacy budget is spent, export its model or create a new task"
                    }
                    _ => "",
                };
                return Err(ApiError::conflict(
                    "bad_transition",
                    format!(
                        "task {id:?} is {from}; {} does not apply to a {from} task{hint}; nothing \
                         changed",
                        self.name()
                    ),
                ));
            }
        };
        Ok(to)
    }
}

async fn transition(
    state: &ApiState,
    caller: &crate::http::Caller,
    id: String,
    t: Transition,
) -> JsonResult {
    let result = apply(state, &id, t).await;
    state
        .audited(caller, &format!("task.{}", t.name()), &id, result)
        .await
        .map(Json)
}

async fn apply(state: &ApiState, id: &str, t: Transition) -> Result<Value, ApiError> {
    let _guard = state.inner.lifecycle.lock().await;
    let store = state.store().clone();
    let id_owned = id.to_string();
    let row = tokio::task::spawn_blocking(move || task_row(&store, &id_owned))
        .await
        .map_err(ApiError::internal)??;
    let to = t.target(id, row.state)?;
    // Check the definition before anything changes.
    let def = match to {
        TaskState::Running => Some(TaskDefinition::from_stored(&row.definition).map_err(|e| {
            ApiError::conflict(
                "bad_definition",
                format!(
                    "the stored definition of {id:?} no longer loads: {e}; create the task again"
                ),
            )
        })?),
        _ => None,
    };
    let store = state.store().clone();
    let id_owned = id.to_string();
    tokio::task::spawn_blocking(move || store.set_task_state(&id_owned, to, unix_now()))
        .await
        .map_err(ApiError::internal)??;
    if matches!(to, TaskState::Paused | TaskState::Stopped)
        && let Some(ended) = state.scheduler().halt_task(id)
    {
        ended.await;
    }
    if let Some(def) = def
        && let Err(e) = state.scheduler().start_task(def)
    {
        // Undo: the task is not running.
        let store = state.store().clone();
        let id_owned = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            store.set_task_state(&id_owned, row.state, unix_now())
        })
        .await;
        return Err(ApiError::conflict(
            "cannot_start",
            format!("task {id:?} cannot start: {e}"),
        ));
    }
    state.notify(ApiEvent::TaskChanged {
        task: id.to_string(),
        state: to,
    });
    Ok(json!({ "id": id, "state": to.as_str(), "previous": row.state.as_str() }))
}

/// `POST /api/v1/tasks/{id}/start`.
pub async fn start(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    Path(id): Path<String>,
) -> JsonResult {
    transition(&state, &caller, id, Transition::Start).await
}

/// `POST /api/v1/tasks/{id}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    Path(id): Path<String>,
) -> JsonResult {
    transition(&state, &caller, id, Transition::Pause).await
}

/// `POST /api/v1/tasks/{id}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    Path(id): Path<String>,
) -> JsonResult {
    transition(&state, &caller, id, Transition::Resume).await
}

/// `POST /api/v1/tasks/{id}/stop`.
pub async fn stop(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    Path(id): Path<String>,
) -> JsonResult {
    transition(&state, &caller, id, Transition::Stop).await
}

/// `GET /api/v1/tasks/{id}/rounds`: every round with its latest attempt's record, the number
/// of attempts, and the finished attempt's metrics (the scheduler's JSON).
pub async fn rounds(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
) -> JsonResult {
    let v = state
        .read(move |store| {
            task_row(store, &id)?;
            let attempts = store.attempts(&id)?;
            let mut by_round: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
            for a in &attempts {
                let e = by_round.entry(a.round).or_default();
                e.0 += 1;
                if a.state == AttemptState::Finished {
                    e.1 = a.selected;
                }
            }
            let rounds: Vec<Value> = store
                .rounds(&id)?
                .into_iter()
                .map(|r| {
                    let (attempts, selected) = by_round.get(&r.round).copied().unwrap_or_default();
                    let metrics: Value = r
                        .metrics
                        .as_deref()
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or(Value::Null);
                    json!({
                        "round": r.round,
                        "state": r.state.as_str(),
                        "attempts": attempts,
                        "selected": selected,
                        "participants": r.participants,
                        "dropouts": r.dropouts,
                        "started_at": r.started_at,
                        "finished_at": r.finished_at,
                        "metrics": metrics,
                    })
                })
                .collect();
            let attempts: Vec<Value> = attempts
                .iter()
                .map(|a| {
                    json!({
                        "round": a.round,
                        "attempt": cohort_task::Attempt::from_round_id(cohort_protocol::RoundId(a.round_id)).attempt,
                        "state": a.state.as_str(),
                        "selected": a.selected,
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "reason": a.reason,
                    })
                })
                .collect();
            Ok(json!({ "task": id, "rounds": rounds, "attempts": attempts }))
        })
        .await?;
    Ok(Json(v))
}

/// `GET /api/v1/tasks/{id}/metrics`: each metric as a series of (round, value), with each
/// round's finish time for plots against time.
pub async fn metrics(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
) -> JsonResult {
    let v = state
        .read(move |store| {
            task_row(store, &id)?;
            let finished: HashMap<u64, Option<i64>> = store
                .rounds(&id)?
                .into_iter()
                .map(|r| (r.round, r.finished_at))
                .collect();
            let mut series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (round, name, value) in store.metrics(&id)? {
                series.entry(name).or_default().push(json!({
                    "round": round,
                    "value": value,
                    "at": finished.get(&round).copied().flatten(),
                }));
            }
            Ok(json!({ "task": id, "series": series }))
        })
        .await?;
    Ok(Json(v))
}

fn entry_json(e: &LogEntry) -> Value {
    let params: Value = std::str::from_utf8(&e.entry.params)
        .ok()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!(hex::encode(&e.entry.params)));
    json!({
        "round": e.entry.round.0,
        "participants": e.entry.participants,
        "input_weights": e.entry.input_weights.to_hex(),
        "output_weights": e.entry.output_weights.to_hex(),
        "params": params,
        "created_at": e.entry.created_at,
        "prev": e.prev.to_hex(),
        "hash": e.hash.to_hex(),
    })
}

/// `GET /api/v1/tasks/{id}/log`: the round log and its verification (where the chain breaks,
/// when it does).
pub async fn log(State(state): State<ApiState>, _: Reader, Path(id): Path<String>) -> JsonResult {
    let v = state
        .read(move |store| {
            task_row(store, &id)?;
            let task = TaskId(id.clone());
            let log = store.round_log();
            let (entries, verification) = match log.verify(&task) {
                Ok(entries) => (entries, json!({ "intact": true })),
                Err(RoundLogError::Broken(b)) => (
                    log.entries(&task)?,
                    json!({
                        "intact": false,
                        "round": b.round.0,
                        "reason": format!("{:?}", b.reason),
                        "message": b.to_string(),
                    }),
                ),
                Err(e) => return Err(ApiError::internal(e)),
            };
            Ok(json!({
                "task": id,
                "verification": verification,
                "head": entries.last().map(|e| e.hash.to_hex()),
                "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
            }))
        })
        .await?;
    Ok(Json(v))
}

/// `GET /api/v1/tasks/{id}/checkpoints`: the model of each logged round, whether its file is
/// present, and its size.
pub async fn checkpoints(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
) -> JsonResult {
    let cp = state.scheduler().checkpoints().clone();
    let v = state
        .read(move |store| {
            task_row(store, &id)?;
            let entries = store.round_log().entries(&TaskId(id.clone()))?;
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let hash: ContentHash = e.entry.output_weights;
                    let bytes = std::fs::metadata(cp.path_of(&hash)).ok().map(|m| m.len());
                    json!({
                        "round": e.entry.round.0,
                        "model": hash.to_hex(),
                        "present": bytes.is_some(),
                        "bytes": bytes,
                        "created_at": e.entry.created_at,
                    })
                })
                .collect();
            Ok(json!({ "task": id, "checkpoints": list }))
        })
        .await?;
    Ok(Json(v))
}

/// Parses `?round=N`.
pub(crate) fn round_query(query: &Query<HashMap<String, String>>) -> Result<Option<u64>, ApiError> {
    super::query_u64(query, "round")
}

/// `GET /api/v1/tasks/{id}/model?round=N`: the model of a logged round (the latest without
/// `round`) as a safetensors file ([`crate::export`]).
pub async fn model(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
    query: Query<HashMap<String, String>>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    use crate::export::{ExportError, model_of_round, to_safetensors};
    let round = round_query(&query)?;
    let cp = state.scheduler().checkpoints().clone();
    let (name, bytes) = state
        .read(move |store| {
            let model = model_of_round(store, &cp, &id, round, 1 << 34).map_err(|e| match e {
                ExportError::UnknownTask(_) => ApiError::unknown_task(&id),
                ExportError::NoRound { .. } | ExportError::NoModel(_) => {
                    ApiError::new(StatusCode::NOT_FOUND, "no_checkpoint", e.to_string())
                }
                other => ApiError::internal(other),
            })?;
            let bytes = to_safetensors(&model).map_err(ApiError::internal)?;
            Ok((
                format!("{id}-round{}.safetensors", model.entry.entry.round.0),
                bytes,
            ))
        })
        .await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    ))
}

/// `GET /api/v1/tasks/{id}/privacy`: the differential-privacy plan, the ε each published
/// round spent (from the verified round log) and the ε the accountant plans per round.
pub async fn privacy(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
) -> JsonResult {
    let report = state
        .read(move |store| match Budget::of(store, &id) {
            Ok(Some(budget)) => Ok(budget.report(&id)),
            Ok(None) => Ok(no_privacy_report(&id)),
            Err(BudgetError::UnknownTask(_)) => Err(ApiError::unknown_task(&id)),
            Err(BudgetError::Store(e)) => Err(e.into()),
            Err(e) => Err(ApiError::conflict("privacy_unreadable", e.to_string())),
        })
        .await?;
    Ok(Json(json!(report)))
}

/// `GET /api/v1/tasks/{id}/ledger`: the contributor ledger ([`crate::ledger`]): each round's
/// basis, improvement, member-set hash and members' credit, and each account's total.
pub async fn ledger(
    State(state): State<ApiState>,
    _: Reader,
    Path(id): Path<String>,
) -> JsonResult {
    let v = state
        .read(move |store| {
            task_row(store, &id)?;
            let rounds = crate::ledger::rounds(store, &id)?;
            let mut totals: BTreeMap<String, (f64, u64)> = BTreeMap::new();
            for r in &rounds {
                for m in &r.members {
                    let t = totals.entry(m.account.clone()).or_default();
                    t.0 += m.credit;
                    t.1 += 1;
                }
            }
            let mut totals: Vec<Value> = totals
                .into_iter()
                .map(|(account, (credit, n))| json!({ "account": account, "credit": credit, "rounds": n }))
                .collect();
            totals.sort_by(|a, b| b["credit"].as_f64().partial_cmp(&a["credit"].as_f64()).unwrap_or(std::cmp::Ordering::Equal));
            Ok(json!({ "task": id, "rounds": rounds, "totals": totals }))
        })
        .await?;
    Ok(Json(v))
}
