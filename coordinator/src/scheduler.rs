//! The round scheduler: for each running task, a loop that waits for a cohort, runs its SecAgg+
//! round, and turns the released sum into the next global model.
//!
//! Connections check in through [`Scheduler::check_in`]. The task's [`Selector`] accepts the
//! first `ceil(cohort_size × over_selection)` clients and steers the rest to come back later.
//! When the cohort is full (or the selection window passes with enough clients), the task loop
//! numbers the members 1..=n, gives each connection a [`Seat`] (its index and the round's input
//! channel), chooses the SecAgg+ parameters ([`recommended_params`] and
//! [`Quantizer::for_cohort`]) and hands the round to [`drive_round`]. On success it decodes the
//! weighted mean update, applies the task's strategy, writes the checkpoint, appends the round
//! log, records the round and its metrics, and tells the cohort the new model's hash. A round
//! that aborts (below quorum, too few live share holders) releases nothing and is retried with a
//! new cohort under a new round id.
//!
//! Durability order: checkpoint file and strategy-state file (each written to a temporary file,
//! synced, renamed, directory synced), then the round log entry that names both (one SQLite
//! transaction), then the round and attempt rows. A coordinator killed before the log entry is
//! written has not finished the round: on restart the attempt is marked abandoned, nothing of it
//! is applied, and the task resumes from the log's head (its weights and the strategy's state)
//! under a round id no earlier attempt used.
//!
//! The log's first entry (round 0) names the task's initial model, so that every model a client
//! is ever served is named by the log. Selected clients get the task's chain with their plan
//! ([`CheckInResponse::Accepted`]'s `log`), whose last entry names the model of the round they
//! will join: selection reopens only after a finished round's entry is in that chain.
//!
//! Evaluation, every `evaluate_every` rounds (rounds whose number is a multiple of it), is of
//! two kinds. Server-side: the task's [`Evaluator`], if any, measures the new model on data the
//! coordinator holds ([`TaskEvent::RoundCompleted`]'s `evaluation`). Federated: the round's
//! `RoundConfig` carries `evaluate = true`, each client measures the global model it received on
//! its own local data before training and reports (examples, loss, accuracy) in the clear, and
//! the round's example-weighted mean over its members' reports ([`crate::federated_evaluation`])
//! is the event's `federated_evaluation`. Both are logged in the "round finished" line, stored
//! in the round's metrics (`eval_*` and `fed_eval_*` rows, and the round row's JSON), and the
//! federated one is exported on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cohort_aggregation::encoding::{Quantizer, vector_len};
use cohort_aggregation::secagg::{PhaseDeadlines, ServerRound, recommended_params};
use cohort_aggregation::strategy::{Strategy, StrategyConfig};
use cohort_protocol::{
    CheckInResponse, ClientIndex, ContentHash, RoundId, RoundLogEntry, RoundResult, ServerMessage,
    TaskId,
};
use rand::RngCore;
use thiserror::Error;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::checkpoints::{CheckpointError, Checkpoints};
use crate::federated_evaluation::FederatedEvaluation;
use crate::metrics::Metrics;
use crate::round_driver::{RoundInput, RoundReport, drive_round};
use crate::round_log::NewLogEntry;
use crate::selection::{CheckInDecision, SelectionConfig, Selector};
use crate::store::{AsyncStore, AttemptRow, RoundRow, StoreError};
use crate::task::TaskDefinition;

/// A connection's id, unique within a coordinator process.
pub type ConnId = u64;

/// Where a connection sits in the running round: its logical index and where its round
/// messages go.
#[derive(Clone, Debug)]
pub struct Seat {
    /// The round.
    pub round_id: RoundId,
    /// The connection's index in it.
    pub index: ClientIndex,
    /// The round driver's input channel.
    pub inputs: mpsc::Sender<RoundInput>,
}

/// What the scheduler keeps of a checked-in connection.
#[derive(Clone, Debug)]
pub struct Member {
    /// Messages to write to the connection.
    pub outbox: mpsc::Sender<ServerMessage>,
    /// The connection's seat, set when its round starts.
    pub seat: Arc<Mutex<Option<Seat>>>,
}

/// Evaluates a global model on data the coordinator holds (server-side evaluation).
pub trait Evaluator: Send + Sync {
    /// Returns (loss, accuracy) of `weights`.
    fn evaluate(&self, weights: &[f32]) -> Result<(f32, f32), String>;
}

/// A task loop's progress, broadcast to observers (the demo, tests).
#[derive(Clone, Debug, PartialEq)]
pub enum TaskEvent {
    /// A round finished and its model was published.
    RoundCompleted {
        /// The task.
        task: String,
        /// The round number (1-based).
        round: u64,
        /// The SecAgg+ round id of the attempt that completed.
        round_id: RoundId,
        /// Clients selected for it.
        selected: u32,
        /// The indices of the clients whose inputs are in the sum.
        members: Vec<ClientIndex>,
        /// The model the round started from.
        previous_model: ContentHash,
        /// Inputs in the sum.
        contributors: u32,
        /// Clients that dropped after sharing keys.
        dropped: u32,
        /// Clients removed for breaking a rule.
        removed: u32,
        /// The new model.
        model: ContentHash,
        /// Server-side evaluation (loss, accuracy) of the new model, when this round was
        /// evaluated and the coordinator has an [`Evaluator`].
        evaluation: Option<(f32, f32)>,
        /// Federated evaluation of the model the round started from: the example-weighted mean
        /// of the metrics its members measured on their own data (reported in the clear), when
        /// this round was evaluated and at least one member reported.
        federated_evaluation: Option<FederatedEvaluation>,
        /// Wall time of the round.
        took: Duration,
    },
    /// An attempt aborted and will be retried.
    RoundAborted {
        /// The task.
        task: String,
        /// The round number.
        round: u64,
        /// Why.
        reason: String,
    },
    /// Every round of the task is done.
    TaskFinished {
        /// The task.
        task: String,
        /// The final model.
        model: ContentHash,
    },
}

/// Why a task could not be started or stopped.
#[derive(Debug, Error)]
pub enum SchedulerError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The task definition is unusable.
    #[error("task {task}: {reason}")]
    Task {
        /// The task.
        task: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Threads of the unmasking job.
    pub unmask_threads: usize,
    /// How long the selector waits for a full cohort before starting with at least the quorum.
    pub selection_window: Duration,
    /// The first estimate of a round's length, which steers the reconnects of clients turned
    /// away while a round runs (refined from measured rounds).
    pub initial_round_estimate: Duration,
    /// Largest model a checkpoint may hold, in bytes.
    pub max_checkpoint_bytes: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            unmask_threads: 2,
            selection_window: Duration::from_secs(30),
            initial_round_estimate: Duration::from_secs(30),
            max_checkpoint_bytes: 1 << 32,
        }
    }
}

/// One running task.
struct TaskState {
    def: TaskDefinition,
    selector: Mutex<Selector<ConnId>>,
    pool: Mutex<HashMap<ConnId, Member>>,
    wake: Notify,
    /// The task's round log as sent to clients; `None` until the loop has loaded it.
    log: Mutex<Option<Vec<RoundLogEntry>>>,
}

/// Where a task resumes: the model the next round starts from, the last logged round, the
/// strategy's saved state and the chain so far.
struct ResumePoint {
    weights: Vec<f32>,
    done: u64,
    strategy_state: Option<ContentHash>,
    log: Vec<RoundLogEntry>,
}

/// Params key of a log entry naming the strategy state after the round.
const STRATEGY_STATE_KEY: &str = "strategy_state";

/// The scheduler of every running task.
pub struct Scheduler {
    store: AsyncStore,
    checkpoints: Arc<Checkpoints>,
    options: SchedulerOptions,
    evaluator: Option<Arc<dyn Evaluator>>,
    tasks: Mutex<HashMap<String, Arc<TaskState>>>,
    events: broadcast::Sender<TaskEvent>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The initial global model of a task: drawn from a seed derived from the task id, so a
/// restarted coordinator recreates the same vector (and hash) without storing extra state.
pub fn initial_weights(def: &TaskDefinition) -> Result<Vec<f32>, SchedulerError> {
    let seed = u64::from_le_bytes(
        ContentHash::of(def.id.as_bytes()).0[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    def.model.initial_weights(seed).map_err(|e| SchedulerError::Task {
        task: def.id.clone(),
        reason: format!("cannot initialise the model: {e}"),
    })
}

impl Scheduler {
    /// A scheduler with no running task.
    pub fn new(
        store: AsyncStore,
        checkpoints: Arc<Checkpoints>,
        options: SchedulerOptions,
        evaluator: Option<Arc<dyn Evaluator>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            store,
            checkpoints,
            options,
            evaluator,
            tasks: Mutex::new(HashMap::new()),
            events,
            metrics,
            started: Instant::now(),
        })
    }

    /// Progress of every task loop.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// The coordinator's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The checkpoints this scheduler publishes.
    pub fn checkpoints(&self) -> &Arc<Checkpoints> {
        &self.checkpoints
    }

    /// Starts the loop of task `def` (already stored), resuming after its last logged round.
    pub fn start_task(self: &Arc<Self>, def: TaskDefinition) -> Result<(), SchedulerError> {
        StrategyConfig::deserialize_from(&def)?;
        if !def.secagg.enabled {
            return Err(SchedulerError::Task {
                task: def.id.clone(),
                reason: "secagg.enabled = false is refused: this coordinator only \
                         aggregates with SecAgg+ and never sees an update in the clear; set \
                         secagg.enabled = true"
                    .into(),
            });
        }
        let selection = SelectionConfig {
            target: def.cohort_size,
            over_selection: def.over_selection,
            min_clients: def.cohort_size.max(3),
            window: self.options.selection_window,
        };
        let state = Arc::new(TaskState {
            selector: Mutex::new(Selector::new(
                selection,
                self.options.initial_round_estimate,
            )),
            pool: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            log: Mutex::new(None),
            def,
        });
        self.lock_tasks()
            .insert(state.def.id.clone(), state.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let id = state.def.id.clone();
            if let Err(e) = this.run_task(state).await {
                tracing::error!(task = %id, error = %e, "task loop stopped");
            }
            this.lock_tasks().remove(&id);
        });
        Ok(())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TaskState>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a check-in from connection `conn`: the plan when it is selected, otherwise when
    /// to come back.
    pub fn check_in(&self, conn: ConnId, task: Option<&TaskId>, member: Member) -> CheckInResponse {
        let state = {
            let tasks = self.lock_tasks();
            match task {
                Some(t) => tasks.get(&t.0).cloned(),
                None => tasks.values().next().cloned(),
            }
        };
        let Some(state) = state else {
            return CheckInResponse::ComeBackLater {
                retry_after_ms: self.options.selection_window.as_millis() as u64,
                reason: "no task is running".into(),
            };
        };
        let Some(log) = lock(&state.log).clone() else {
            return CheckInResponse::ComeBackLater {
                retry_after_ms: 1_000,
                reason: "the task is starting".into(),
            };
        };
        let now = self.started.elapsed();
        let jitter = f64::from(rand::rngs::OsRng.next_u32()) / f64::from(u32::MAX);
        let decision = lock(&state.selector).check_in(conn, now, jitter);
        tracing::debug!(conn, ?decision, task = %state.def.id, "check-in");
        match decision {
            CheckInDecision::Selected => {
                lock(&state.pool).insert(conn, member);
                state.wake.notify_one();
                CheckInResponse::Accepted {
                    plan: state.def.plan(),
                    log,
                }
            }
            CheckInDecision::ComeBackLater(after) => CheckInResponse::ComeBackLater {
                retry_after_ms: after.as_millis() as u64,
                reason: "the cohort of the current round is full".into(),
            },
        }
    }

    /// Connection `conn` closed: it leaves every pool it was waiting in.
    pub fn leave(&self, conn: ConnId) {
        for state in self.lock_tasks().values() {
            lock(&state.selector).leave(&conn);
            lock(&state.pool).remove(&conn);
        }
    }

    async fn store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.store.call(f).await
    }

    /// Where the task resumes: the head of its round log (the model and the strategy state it
    /// names), or, for a new task, the initial weights, logged as round 0.
    async fn resume_point(&self, def: &TaskDefinition) -> Result<ResumePoint, SchedulerError> {
        let task = def.task_id();
        let mut entries = self
            .store(move |s| {
                s.round_log()
                    .verify(&task)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .await?;
        if entries.is_empty() {
            let weights = initial_weights(def)?;
            let hash = self.checkpoints.put(&weights)?;
            let entry = NewLogEntry {
                task: def.task_id(),
                round: RoundId(0),
                participants: 0,
                input_weights: crate::round_log::GENESIS,
                output_weights: hash,
                params: serde_json::json!({ "initial_model": true })
                    .to_string()
                    .into_bytes(),
                created_at: unix_now(),
            };
            let logged = self
                .store(move |s| {
                    s.round_log()
                        .append(entry)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .await?;
            entries.push(logged);
        }
        let log: Vec<RoundLogEntry> = entries.iter().map(|e| e.to_wire()).collect();
        let Some(last) = entries.last() else {
            return Err(SchedulerError::Task {
                task: def.id.clone(),
                reason: "the round log is empty after logging the initial model".into(),
            });
        };
        let weights = self.checkpoints.get(
            &last.entry.output_weights,
            self.options.max_checkpoint_bytes,
        )?;
        let strategy_state =
            strategy_state_of(&last.entry.params).map_err(|reason| SchedulerError::Task {
                task: def.id.clone(),
                reason: format!("round {} of the log: {reason}", last.entry.round.0),
            })?;
        Ok(ResumePoint {
            weights,
            done: last.entry.round.0,
            strategy_state,
            log,
        })
    }

    async fn run_task(self: &Arc<Self>, state: Arc<TaskState>) -> Result<(), SchedulerError> {
        let def = state.def.clone();
        let id = def.id.clone();
        let mut strategy: Box<dyn Strategy> = StrategyConfig::deserialize_from(&def)?
            .build()
            .map_err(|e| SchedulerError::Task {
                task: id.clone(),
                reason: e.to_string(),
            })?;
        let resume = self.resume_point(&def).await?;
        if let Some(hash) = resume.strategy_state {
            let saved = self
                .checkpoints
                .get_strategy_state(&hash, self.options.max_checkpoint_bytes)?;
            strategy
                .import_state(saved)
                .map_err(|e| SchedulerError::Task {
                    task: id.clone(),
                    reason: format!(
                        "the saved strategy state {hash} does not fit the task's [strategy] \
                         ({e}); restore the task definition the log was written with"
                    ),
                })?;
        }
        let done = resume.done;
        let mut global = resume.weights;
        let mut global_hash =
            ContentHash::of(&cohort_protocol::FloatVector(global.clone()).to_le_bytes());
        *lock(&state.log) = Some(resume.log);
        tracing::info!(task = %id, resumed_after = done, model = %global_hash, steps = strategy.export_state().steps, "task loop started");
        let task_for_ids = id.clone();
        let mut attempt: u64 = self
            .store(move |s| s.last_round_id(&task_for_ids))
            .await?
            .map_or(0, |r| r % 1_000_000);
        let mut round_no = done + 1;
        while round_no <= u64::from(def.rounds) {
            let cohort = self.wait_for_cohort(&state).await;
            attempt += 1;
            let round_id = RoundId(round_no * 1_000_000 + attempt % 1_000_000);
            let started = Instant::now();
            let started_at = unix_now();
            let evaluate = def.evaluate_every > 0 && round_no % u64::from(def.evaluate_every) == 0;
            let outcome = self
                .run_round(&def, round_id, &cohort, global_hash, global.len(), evaluate)
                .await;
            let (mut report, quantizer) = match outcome {
                Ok(v) => v,
                Err(reason) => {
                    self.abort(&state, round_no, &cohort, round_id, reason, started_at)
                        .await?;
                    continue;
                }
            };
            let removed = report.removed.len() as u32;
            // The released sum, decoded and applied by the strategy; any failure aborts the
            // attempt (nothing is stored) and the round is retried.
            let applied = std::mem::replace(
                &mut report.outcome,
                Err(cohort_aggregation::secagg::AbortReason::NotEnoughShares {
                    missing: 0,
                    needed: 0,
                }),
            )
            .map_err(|reason| reason.to_string())
            .and_then(|sum| {
                let decoded = quantizer.decode_sum(&sum.sum).map_err(|e| e.to_string())?;
                let mut next = global.clone();
                strategy
                    .apply(&mut next, &decoded.mean)
                    .map_err(|e| e.to_string())?;
                Ok((sum, next))
            });
            let (sum, next) = match applied {
                Ok(v) => v,
                Err(reason) => {
                    self.abort(&state, round_no, &cohort, round_id, reason, started_at)
                        .await?;
                    continue;
                }
            };
            let new_hash = self.checkpoints.put(&next)?;
            let strategy_state = strategy.export_state();
            let steps = strategy_state.steps;
            let state_hash = self.checkpoints.put_strategy_state(&strategy_state)?;
            let contributors = sum.contributors.len() as u32;
            let dropped = sum.dropped.len() as u32;
            let params = serde_json::json!({
                "round_id": round_id.0,
                "cohort": cohort.len(),
                "strategy": strategy.name(),
                "strategy_steps": steps,
                STRATEGY_STATE_KEY: state_hash.to_hex(),
            })
            .to_string()
            .into_bytes();
            let entry = NewLogEntry {
                task: def.task_id(),
                round: RoundId(round_no),
                participants: contributors,
                input_weights: global_hash,
                output_weights: new_hash,
                params,
                created_at: unix_now(),
            };
            let logged = self
                .store(move |s| {
                    s.round_log()
                        .append(entry)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .await?;
            if let Some(log) = lock(&state.log).as_mut() {
                log.push(logged.to_wire());
            }
            // Selection reopens only now, so a client accepted from here on gets a chain whose
            // last entry names the model of its round.
            lock(&state.selector).round_finished(started.elapsed());
            global = next;
            let previous_hash = global_hash;
            global_hash = new_hash;
            let took = started.elapsed();
            let federated_evaluation = report.evaluations.aggregate();
            let evaluation = if evaluate {
                match &self.evaluator {
                    Some(ev) => {
                        let ev = ev.clone();
                        let w = global.clone();
                        match tokio::task::spawn_blocking(move || ev.evaluate(&w)).await {
                            Ok(Ok(m)) => Some(m),
                            Ok(Err(e)) => {
                                tracing::warn!(task = %id, error = %e, "evaluation failed");
                                None
                            }
                            Err(e) => {
                                tracing::warn!(task = %id, error = %e, "evaluation panicked");
                                None
                            }
                        }
                    }
                    None => None,
                }
            } else {
                None
            };
            let metrics_json = serde_json::json!({
                "round_id": round_id.0,
                "contributors": contributors,
                "dropped": dropped,
                "removed": removed,
                "masked_bytes": report.masked_bytes,
                "took_ms": took.as_millis() as u64,
                "phases_ms": report.phase_durations.iter().map(|(p, d)| (format!("{p:?}"), d.as_millis() as u64)).collect::<Vec<_>>(),
                "loss": evaluation.map(|e| e.0),
                "accuracy": evaluation.map(|e| e.1),
                "federated_evaluation": federated_evaluation.map(|f| serde_json::json!({
                    "clients": f.clients,
                    "examples": f.examples,
                    "loss": f.loss,
                    "accuracy": f.accuracy,
                })),
            })
            .to_string();
            let row = RoundRow {
                task: id.clone(),
                round: round_no,
                state: "finished".into(),
                participants: contributors,
                dropouts: dropped + removed,
                started_at,
                finished_at: Some(unix_now()),
                metrics: Some(metrics_json),
            };
            let task_for_metrics = id.clone();
            self.store(move |s| {
                s.put_round(&row)?;
                s.end_attempt(&row.task, round_id.0, "finished", None, unix_now())?;
                let now = unix_now();
                s.put_metric(
                    &task_for_metrics,
                    round_no,
                    "contributors",
                    f64::from(contributors),
                    now,
                )?;
                if let Some((loss, acc)) = evaluation {
                    s.put_metric(
                        &task_for_metrics,
                        round_no,
                        "eval_loss",
                        f64::from(loss),
                        now,
                    )?;
                    s.put_metric(
                        &task_for_metrics,
                        round_no,
                        "eval_accuracy",
                        f64::from(acc),
                        now,
                    )?;
                }
                if let Some(f) = federated_evaluation {
                    for (name, value) in [
                        ("fed_eval_loss", f64::from(f.loss)),
                        ("fed_eval_accuracy", f64::from(f.accuracy)),
                        ("fed_eval_clients", f64::from(f.clients)),
                        ("fed_eval_examples", f.examples as f64),
                    ] {
                        s.put_metric(&task_for_metrics, round_no, name, value, now)?;
                    }
                }
                Ok(())
            })
            .await?;
            self.metrics
                .round_completed(&report, contributors, dropped + removed, took);
            if let Some(f) = &federated_evaluation {
                self.metrics.federated_evaluation(f);
            }
            self.broadcast(
                &cohort,
                ServerMessage::RoundResult(RoundResult::Completed {
                    round_id,
                    new_model: new_hash,
                    contributors,
                }),
            );
            tracing::info!(
                task = %id, round = round_no, contributors, dropped, removed,
                ms = took.as_millis() as u64, model = %new_hash,
                accuracy = evaluation.map(|e| e.1),
                fed_clients = federated_evaluation.map(|f| f.clients),
                fed_examples = federated_evaluation.map(|f| f.examples),
                fed_loss = federated_evaluation.map(|f| f.loss),
                fed_accuracy = federated_evaluation.map(|f| f.accuracy),
                "round finished"
            );
            let _ = self.events.send(TaskEvent::RoundCompleted {
                task: id.clone(),
                round: round_no,
                round_id,
                selected: cohort.len() as u32,
                members: sum.contributors.clone(),
                previous_model: previous_hash,
                contributors,
                dropped,
                removed,
                model: new_hash,
                evaluation,
                federated_evaluation,
                took,
            });
            round_no += 1;
        }
        let task = id.clone();
        self.store(move |s| s.set_task_state(&task, "finished", unix_now()).map(|_| ()))
            .await?;
        let _ = self.events.send(TaskEvent::TaskFinished {
            task: id,
            model: global_hash,
        });
        Ok(())
    }

    async fn abort(
        &self,
        state: &TaskState,
        round_no: u64,
        cohort: &[(ConnId, Member)],
        round_id: RoundId,
        reason: String,
        started_at: i64,
    ) -> Result<(), SchedulerError> {
        let task = state.def.id.as_str();
        let took = Duration::from_secs(u64::try_from(unix_now() - started_at).unwrap_or(0));
        lock(&state.selector).round_finished(took);
        tracing::warn!(task, round = round_no, %round_id, %reason, "round aborted; retrying with a new cohort");
        self.metrics.round_aborted();
        self.broadcast(
            cohort,
            ServerMessage::RoundResult(RoundResult::Aborted {
                round_id,
                reason: reason.clone(),
            }),
        );
        let row = RoundRow {
            task: task.to_string(),
            round: round_no,
            state: "aborted".into(),
            participants: 0,
            dropouts: 0,
            started_at,
            finished_at: Some(unix_now()),
            metrics: Some(
                serde_json::json!({ "round_id": round_id.0, "reason": reason }).to_string(),
            ),
        };
        let why = reason.clone();
        self.store(move |s| {
            s.put_round(&row)?;
            s.end_attempt(&row.task, round_id.0, "aborted", Some(&why), unix_now())
        })
        .await?;
        let _ = self.events.send(TaskEvent::RoundAborted {
            task: task.to_string(),
            round: round_no,
            reason,
        });
        Ok(())
    }

    fn broadcast(&self, cohort: &[(ConnId, Member)], message: ServerMessage) {
        for (_, member) in cohort {
            *member.seat.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let _ = member.outbox.try_send(message.clone());
        }
    }

    async fn wait_for_cohort(&self, state: &TaskState) -> Vec<(ConnId, Member)> {
        loop {
            let taken = lock(&state.selector).poll(self.started.elapsed());
            if let Some(ids) = taken {
                let mut pool = lock(&state.pool);
                let cohort: Vec<_> = ids
                    .into_iter()
                    .filter_map(|id| pool.remove(&id).map(|m| (id, m)))
                    .filter(|(_, m)| !m.outbox.is_closed())
                    .collect();
                if cohort.len() >= 3 {
                    return cohort;
                }
                drop(pool);
                lock(&state.selector).round_finished(Duration::ZERO);
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), state.wake.notified()).await;
        }
    }

    /// Runs one SecAgg+ attempt; `Err` is a reason to abort before the round could start.
    async fn run_round(
        &self,
        def: &TaskDefinition,
        round_id: RoundId,
        cohort: &[(ConnId, Member)],
        model: ContentHash,
        model_len: usize,
        evaluate: bool,
    ) -> Result<(RoundReport, Quantizer), String> {
        let n = cohort.len() as u32;
        let quantizer = Quantizer::for_cohort(n, def.secagg.clip, def.secagg.max_weight)
            .map_err(|e| e.to_string())?;
        let len =
            u32::try_from(vector_len(model_len)).map_err(|_| "model too large".to_string())?;
        let params = recommended_params(
            n,
            len,
            quantizer.params(),
            def.secagg.adversarial_fraction,
            def.secagg.dropout_fraction,
        )
        .map_err(|e| e.to_string())?;
        let d = &def.deadlines;
        let deadlines = PhaseDeadlines {
            advertise_keys: Duration::from_secs(d.r0_secs.into()),
            share_keys: Duration::from_secs(d.r1_secs.into()),
            masked_input: Duration::from_secs(d.r2_secs.into()),
            unmask: Duration::from_secs(d.r3_secs.into()),
        };
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let (round, actions) = ServerRound::start(round_id, params, model, deadlines, seed)
            .map_err(|e| e.to_string())?;
        let (input_tx, input_rx) = mpsc::channel(4 * cohort.len() + 16);
        let mut outboxes = HashMap::new();
        for (i, (_, member)) in cohort.iter().enumerate() {
            let index = ClientIndex(i as u32 + 1);
            *member.seat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seat {
                round_id,
                index,
                inputs: input_tx.clone(),
            });
            outboxes.insert(index, member.outbox.clone());
        }
        drop(input_tx);
        let row = RoundRow {
            task: def.id.clone(),
            round: round_id.0 / 1_000_000,
            state: "running".into(),
            participants: n,
            dropouts: 0,
            started_at: unix_now(),
            finished_at: None,
            metrics: None,
        };
        let attempt = AttemptRow {
            task: def.id.clone(),
            round: row.round,
            round_id: round_id.0,
            state: "running".into(),
            selected: n,
            started_at: row.started_at,
            finished_at: None,
            reason: None,
        };
        if let Err(e) = self
            .store(move |s| {
                s.put_round(&row)?;
                s.start_attempt(&attempt)
            })
            .await
        {
            tracing::warn!(error = %e, "could not record the running round");
        }
        tracing::info!(task = %def.id, %round_id, n, k = round.params().neighbours, t = round.params().threshold, "round started");
        let report = drive_round(
            round,
            actions,
            outboxes,
            input_rx,
            self.options.unmask_threads,
            evaluate,
        )
        .await;
        Ok((report, quantizer))
    }
}

/// The strategy-state hash a log entry's params name, if any.
fn strategy_state_of(params: &[u8]) -> Result<Option<ContentHash>, String> {
    let value: serde_json::Value = serde_json::from_slice(params)
        .map_err(|e| format!("the entry's params are not JSON ({e})"))?;
    match value.get(STRATEGY_STATE_KEY) {
        None => Ok(None),
        Some(serde_json::Value::String(hex)) => ContentHash::from_hex(hex)
            .map(Some)
            .ok_or_else(|| format!("{STRATEGY_STATE_KEY} = {hex:?} is not a SHA-256 hex hash")),
        Some(other) => Err(format!("{STRATEGY_STATE_KEY} = {other} is not a string")),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

trait StrategyFromDef {
    fn deserialize_from(def: &TaskDefinition) -> Result<StrategyConfig, SchedulerError>;
}

impl StrategyFromDef for StrategyConfig {
    fn deserialize_from(def: &TaskDefinition) -> Result<StrategyConfig, SchedulerError> {
        def.strategy
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| SchedulerError::Task {
                task: def.id.clone(),
                reason: format!("[strategy] is not valid: {e}"),
            })
    }
}
