//! `GET /api/v1/events`: server-sent events for the console. Each event is JSON with a `type`:
//! `round_completed`, `round_aborted`, `task_finished` (the scheduler's events), `task_changed`
//! (an owner's start, pause, resume or stop) and, every two seconds, `live` (what each running
//! task's loop is doing and how many clients wait in its pool). Clients refetch what an event
//! names; a client that lags misses events, not data.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiState, Reader};
use crate::scheduler::TaskEvent;
use crate::states::TaskState;

/// A change made through the API.
#[derive(Clone, Debug)]
pub enum ApiEvent {
    /// A task was created or changed state.
    TaskChanged {
        /// The task.
        task: String,
        /// Its new state.
        state: TaskState,
    },
}

/// The JSON of a scheduler event.
pub fn task_event_json(e: &TaskEvent) -> Value {
    match e {
        TaskEvent::RoundCompleted {
            task,
            round,
            selected,
            contributors,
            dropped,
            removed,
            model,
            evaluation,
            federated_evaluation,
            took,
            ..
        } => json!({
            "type": "round_completed",
            "task": task,
            "round": round,
            "selected": selected,
            "contributors": contributors,
            "dropped": dropped,
            "removed": removed,
            "model": model.to_hex(),
            "loss": evaluation.map(|e| e.0),
            "accuracy": evaluation.map(|e| e.1),
            "federated_accuracy": federated_evaluation.map(|f| f.accuracy),
            "took_ms": took.as_millis() as u64,
        }),
        TaskEvent::RoundAborted {
            task,
            round,
            reason,
        } => json!({ "type": "round_aborted", "task": task, "round": round, "reason": reason }),
        TaskEvent::TaskFinished {
            task,
            model,
            privacy_budget_exhausted,
        } => json!({
            "type": "task_finished",
            "task": task,
            "model": model.to_hex(),
            "privacy_budget_exhausted": privacy_budget_exhausted,
        }),
    }
}

struct Streams {
    state: ApiState,
    tasks: broadcast::Receiver<TaskEvent>,
    changes: broadcast::Receiver<ApiEvent>,
    tick: tokio::time::Interval,
}

impl Streams {
    async fn next(&mut self) -> Value {
        loop {
            tokio::select! {
                e = self.tasks.recv() => match e {
                    Ok(e) => return task_event_json(&e),
                    Err(RecvError::Lagged(n)) => return json!({ "type": "lagged", "missed": n }),
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                e = self.changes.recv() => match e {
                    Ok(ApiEvent::TaskChanged { task, state }) => {
                        return json!({ "type": "task_changed", "task": task, "state": state.as_str() });
                    }
                    Err(RecvError::Lagged(n)) => return json!({ "type": "lagged", "missed": n }),
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                _ = self.tick.tick() => {
                    let scheduler = self.state.scheduler();
                    let ids = match self.state.read(|s| Ok(s.tasks()?)).await {
                        Ok(rows) => rows,
                        Err(_) => continue,
                    };
                    let live: serde_json::Map<String, Value> = ids
                        .into_iter()
                        .filter_map(|t| {
                            scheduler.live(&t.id).map(|(status, waiting)| {
                                (t.id, json!({ "status": status, "checked_in": waiting }))
                            })
                        })
                        .collect();
                    return json!({
                        "type": "live",
                        "connections": self.state.metrics().connections(),
                        "tasks": live,
                    });
                }
            }
        }
    }
}

/// `GET /api/v1/events`.
pub async fn stream(
    State(state): State<ApiState>,
    _: Reader,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let streams = Streams {
        tasks: state.scheduler().subscribe(),
        changes: state.inner.changes.subscribe(),
        state,
        tick,
    };
    let events = futures_util::stream::unfold(streams, |mut s| async move {
        let v = s.next().await;
        Some((Ok(Event::default().data(v.to_string())), s))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
