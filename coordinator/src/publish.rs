//! Publishing a finished round, and the records of every attempt.
//!
//! [`publish`] is the one place where a round becomes durable, in this order:
//!
//! 1. the new model's checkpoint (`checkpoints/<sha256>.f32le`) and
//! 2. the strategy's state (`checkpoints/<sha256>.state`), each written to a temporary file,
//!    synced, renamed and its directory synced;
//! 3. the round-log entry that names both (the state's hash is in the entry's params, so the
//!    chain covers it), in one SQLite transaction (`synchronous = FULL`).
//!
//! A round is finished exactly when its log entry exists: a coordinator killed before step 3
//! has published nothing (its files are unnamed content, overwritten or ignored), and on restart
//! the attempt is abandoned and the task resumes from the log's head. The round, attempt and
//! metric rows ([`record_finished`]) come after, and are bookkeeping only.

use cohort_aggregation::strategy::StrategyState;
use cohort_protocol::{ContentHash, RoundId, RoundLogEntry, TaskId};
use cohort_task::Attempt;
use cohort_task::evaluation::FederatedEvaluation;

use crate::checkpoints::Checkpoints;
use crate::round_log::NewLogEntry;
use crate::scheduler::SchedulerError;
use crate::states::{AttemptState, RoundState};
use crate::store::{AsyncStore, AttemptRow, RoundRow, StoreError};

/// Params key of a log entry naming the strategy state after the round.
pub const STRATEGY_STATE_KEY: &str = "strategy_state";

/// Params key of a log entry holding the ε spent after the round (tasks with DP), and its
/// reader (shared with the devices' check).
pub use cohort_task::device_privacy::{EPSILON_SPENT_KEY, epsilon_spent_of};
/// Params keys of a log entry holding adaptive clipping's clips (the round's and the next
/// round's), their format and reader (shared with the devices' check).
pub use cohort_task::device_privacy::{NEXT_CLIP_KEY, ROUND_CLIP_KEY, clip_param, logged_clip};

/// A finished round, ready to publish.
pub struct Finished<'a> {
    /// The task.
    pub task: TaskId,
    /// The attempt whose sum was released.
    pub attempt: Attempt,
    /// Clients selected for it.
    pub selected: usize,
    /// Clients whose inputs are in the sum.
    pub contributors: u32,
    /// The model the round started from.
    pub previous: ContentHash,
    /// The model it produced.
    pub weights: &'a [f32],
    /// The strategy's name.
    pub strategy: &'static str,
    /// The strategy's state after its step.
    pub strategy_state: StrategyState,
    /// Differential privacy: ε spent after this round (in the entry's params, so covered by
    /// the hash chain); `None` without DP.
    pub epsilon_spent: Option<f64>,
    /// Adaptive clipping: the L2 clip of this round and the clip of the next (the adaptive
    /// clip's state, which a restart resumes from), in the entry's params under
    /// [`ROUND_CLIP_KEY`] and [`NEXT_CLIP_KEY`]; `None` without adaptive clipping.
    pub adaptive_clip: Option<(f64, f64)>,
    /// The root of the round's member tree ([`crate::ledger::members_root`]), logged in the
    /// entry's params under [`crate::ledger::MEMBERS_ROOT_KEY`].
    pub members: Option<ContentHash>,
    /// Unix seconds.
    pub now: i64,
}

/// Makes a finished round durable, in the order of the module docs; returns the new model's
/// hash and the log entry as clients receive it.
pub async fn publish(
    store: &AsyncStore,
    checkpoints: &Checkpoints,
    round: Finished<'_>,
) -> Result<(ContentHash, RoundLogEntry), SchedulerError> {
    let model = checkpoints.put(round.weights)?;
    let state = &round.strategy_state;
    let state_hash = checkpoints.put_strategy_state(state)?;
    let mut params = serde_json::json!({
        "round_id": round.attempt.round_id().0,
        "cohort": round.selected,
        "strategy": round.strategy,
        "strategy_steps": state.steps,
        STRATEGY_STATE_KEY: state_hash.to_hex(),
    });
    if let Some(eps) = round.epsilon_spent {
        params[EPSILON_SPENT_KEY] = serde_json::json!(eps);
    }
    if let Some((clip, next)) = round.adaptive_clip {
        params[ROUND_CLIP_KEY] = clip_param(clip);
        params[NEXT_CLIP_KEY] = clip_param(next);
    }
    if let Some(members) = round.members {
        params[crate::ledger::MEMBERS_ROOT_KEY] = serde_json::json!(members.to_hex());
    }
    let params = params.to_string().into_bytes();
    let entry = NewLogEntry {
        task: round.task,
        round: RoundId(round.attempt.round),
        participants: round.contributors,
        input_weights: round.previous,
        output_weights: model,
        params,
        created_at: round.now,
    };
    let logged = store
        .call(move |s| {
            s.round_log()
                .append(entry)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await?;
    Ok((model, logged.to_wire()))
}

/// Why a log entry's params do not name a strategy state.
#[derive(Debug, thiserror::Error)]
pub enum StateRefError {
    /// The params are not JSON.
    #[error("the entry's params are not JSON ({0})")]
    NotJson(#[from] serde_json::Error),
    /// The key holds something else than a SHA-256 hex string.
    #[error("{STRATEGY_STATE_KEY} = {0} is not a SHA-256 hex hash")]
    NotAHash(String),
}

/// The strategy-state hash a log entry's params name, if any.
pub fn strategy_state_of(params: &[u8]) -> Result<Option<ContentHash>, StateRefError> {
    let value: serde_json::Value = serde_json::from_slice(params)?;
    match value.get(STRATEGY_STATE_KEY) {
        None => Ok(None),
        Some(serde_json::Value::String(hex)) => ContentHash::from_hex(hex)
            .map(Some)
            .ok_or_else(|| StateRefError::NotAHash(format!("{hex:?}"))),
        Some(other) => Err(StateRefError::NotAHash(other.to_string())),
    }
}

/// Records that an attempt started (its round row and attempt row, both running).
pub async fn record_started(
    store: &AsyncStore,
    task: &str,
    attempt: Attempt,
    selected: u32,
    now: i64,
) -> Result<(), StoreError> {
    let row = RoundRow {
        task: task.to_string(),
        round: attempt.round,
        state: RoundState::Running,
        participants: selected,
        dropouts: 0,
        started_at: now,
        finished_at: None,
        metrics: None,
    };
    let attempt_row = AttemptRow {
        task: task.to_string(),
        round: attempt.round,
        round_id: attempt.round_id().0,
        state: AttemptState::Running,
        selected,
        started_at: now,
        finished_at: None,
        reason: None,
    };
    store
        .call(move |s| {
            s.put_round(&row)?;
            s.start_attempt(&attempt_row)
        })
        .await
}

/// What the records of a finished round hold besides the log entry.
pub struct FinishedRecord {
    /// Inputs in the sum.
    pub contributors: u32,
    /// Members that dropped out or were removed.
    pub dropouts: u32,
    /// Unix seconds when the attempt started.
    pub started_at: i64,
    /// The round's metrics, as JSON.
    pub metrics_json: String,
    /// Server-side evaluation (loss, accuracy), if the round was evaluated.
    pub evaluation: Option<(f32, f32)>,
    /// Federated evaluation, if the round was evaluated and members reported.
    pub federated: Option<FederatedEvaluation>,
}

/// Records a published round: its row, its attempt as finished, and its metrics.
pub async fn record_finished(
    store: &AsyncStore,
    task: &str,
    attempt: Attempt,
    record: FinishedRecord,
    now: i64,
) -> Result<(), StoreError> {
    let task = task.to_string();
    store
        .call(move |s| {
            let row = RoundRow {
                task: task.clone(),
                round: attempt.round,
                state: RoundState::Finished,
                participants: record.contributors,
                dropouts: record.dropouts,
                started_at: record.started_at,
                finished_at: Some(now),
                metrics: Some(record.metrics_json),
            };
            s.put_round(&row)?;
            s.end_attempt(
                &task,
                attempt.round_id().0,
                AttemptState::Finished,
                None,
                now,
            )?;
            let round = attempt.round;
            s.put_metric(
                &task,
                round,
                "contributors",
                f64::from(record.contributors),
                now,
            )?;
            if let Some((loss, acc)) = record.evaluation {
                s.put_metric(&task, round, "eval_loss", f64::from(loss), now)?;
                s.put_metric(&task, round, "eval_accuracy", f64::from(acc), now)?;
            }
            if let Some(f) = record.federated {
                for (name, value) in [
                    ("fed_eval_loss", f64::from(f.loss)),
                    ("fed_eval_accuracy", f64::from(f.accuracy)),
                    ("fed_eval_clients", f64::from(f.clients)),
                    ("fed_eval_examples", f.examples as f64),
                ] {
                    s.put_metric(&task, round, name, value, now)?;
                }
            }
            Ok(())
        })
        .await
}

/// Records an aborted attempt: nothing of it was applied.
pub async fn record_aborted(
    store: &AsyncStore,
    task: &str,
    attempt: Attempt,
    reason: &str,
    started_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    let row = RoundRow {
        task: task.to_string(),
        round: attempt.round,
        state: RoundState::Aborted,
        participants: 0,
        dropouts: 0,
        started_at,
        finished_at: Some(now),
        metrics: Some(
            serde_json::json!({ "round_id": attempt.round_id().0, "reason": reason }).to_string(),
        ),
    };
    let reason = reason.to_string();
    store
        .call(move |s| {
            s.put_round(&row)?;
            s.end_attempt(
                &row.task,
                attempt.round_id().0,
                AttemptState::Aborted,
                Some(&reason),
                now,
            )
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use cohort_aggregation::strategy::StrategyConfig;

    use crate::store::Store;

    /// The log entry names the checkpoint and the strategy state that were written before it,
    /// both readable back by their hashes; the state's hash is covered by the chain.
    #[tokio::test]
    async fn a_published_round_names_its_durable_files() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        let store = AsyncStore(Arc::new(Store::open_in_memory().unwrap()));
        let mut strategy = StrategyConfig::FedAvgM {
            server_lr: 1.0,
            momentum: 0.9,
        }
        .build()
        .unwrap();
        let mut weights = vec![0.5f32, -0.25];
        strategy.apply(&mut weights, &[0.1, 0.1]).unwrap();
        let (model, entry) = publish(
            &store,
            &checkpoints,
            Finished {
                task: TaskId("t".into()),
                attempt: Attempt {
                    round: 1,
                    attempt: 2,
                },
                selected: 5,
                contributors: 4,
                previous: ContentHash::of(b"before"),
                weights: &weights,
                strategy: strategy.name(),
                strategy_state: strategy.export_state(),
                epsilon_spent: Some(1.25),
                adaptive_clip: Some((0.5, 0.1 + 0.2)),
                members: None,
                now: 10,
            },
        )
        .await
        .unwrap();
        assert_eq!(entry.output_weights, model);
        assert_eq!(entry.round, RoundId(1));
        assert_eq!(checkpoints.get(&model, 1 << 20).unwrap(), weights);
        let state = strategy_state_of(&entry.params).unwrap().expect("named");
        assert_eq!(
            checkpoints.get_strategy_state(&state, 1 << 20).unwrap(),
            strategy.export_state()
        );
        assert_eq!(epsilon_spent_of(&entry.params), Some(1.25));
        assert_eq!(logged_clip(&entry.params, ROUND_CLIP_KEY), Some(0.5));
        // Exactly the state's f64 (0.1 + 0.2 is not 0.3).
        assert_eq!(logged_clip(&entry.params, NEXT_CLIP_KEY), Some(0.1 + 0.2));
        let params: serde_json::Value = serde_json::from_slice(&entry.params).unwrap();
        assert_eq!(params["round_id"], 1_000_002);
        assert!(strategy_state_of(b"{\"strategy_state\": 3}").is_err());
        assert_eq!(strategy_state_of(b"{}").unwrap(), None);
    }
}
