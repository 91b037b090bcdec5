//! The round scheduler: for each running task, a loop that waits for a cohort, runs its SecAgg+
//! attempt, and turns the released sum into the next global model.
//!
//! The round's lifecycle is `cohort-task`'s; this module only drives it. Connections check in
//! through [`Scheduler::check_in`], and the task's [`Selector`] accepts the first
//! ⌈clients_per_round × (1 + over_selection)⌉ clients and steers the rest to come back later.
//! When the cohort is full (or the selection window passes with at least the task's minimum
//! cohort), the task loop numbers the members 1..=n, gives each connection a [`Seat`] (its index
//! and the attempt's input channel), plans the attempt ([`RoundPlan`]: quantizer, k and t,
//! quorum, the over-selection cut-off) and hands it to [`drive_round`]. On success it decodes
//! the sum and takes the strategy step ([`cohort_task::outcome`]), publishes the round
//! ([`crate::publish`]: checkpoint, strategy state, round-log entry, in that order), records it,
//! and tells the cohort the new model's hash. An attempt that aborts (below quorum, too few live
//! share holders, a sum that does not decode) releases nothing and the round is retried with a
//! new cohort under the next attempt's round id ([`Attempt`]: "round 3, attempt 2" is id
//! 3000002).
//!
//! Time comes from the [`Clock`] in [`SchedulerOptions`]: the selection window and pace steering
//! read its monotonic time, the records its Unix time.
//!
//! The log's first entry (round 0) names the task's initial model, so that every model a client
//! is ever served is named by the log. Selected clients get the task's chain with their plan
//! ([`CheckInResponse::Accepted`]'s `log`), whose last entry names the model of the round they
//! will join: selection reopens only after a finished round's entry is in that chain.
//!
//! Evaluation, every `evaluate_every` rounds (rounds whose number is a multiple of it), is of
//! two kinds. Server-side: the task's [`Evaluator`], if any, measures the new model on data the
//! coordinator holds ([`TaskEvent::RoundCompleted`]'s `evaluation`). Federated: the round's
//! `RoundConfig` carries `evaluate = true` and the round's vector is longer
//! ([`RoundPlan::with_federated_evaluation`]): each client measures the global model it received
//! on its own local data before training and inserts the clipped scalars (reported, examples,
//! correct, loss) into the vector it masks, so the coordinator learns only their sums over the
//! round's contributors; it removes them from the unmasked sum before decoding the update and
//! turns them into the example-weighted mean ([`cohort_task::evaluation`]), the event's
//! `federated_evaluation` (absent when the sums are out of range). Both are logged in the
//! "round finished" line, stored in the round's metrics (`eval_*` and `fed_eval_*` rows, and the
//! round row's JSON), and the federated one is exported on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_aggregation::secagg::{IdentityDirectory, VerifyingKey};
use cohort_aggregation::secagg::{UnmaskedSum, negotiate_suite};
use cohort_aggregation::strategy::Strategy;
use cohort_protocol::chain::{self, RoundLogHead};
use cohort_protocol::limits::RoundFrameLimits;
use cohort_protocol::{
    CheckInResponse, CipherSuite, ClientIndex, ContentHash, IdentityLogHead, RoundId,
    RoundLogEntry, RoundResult, ServerMessage, TaskId,
};
use cohort_task::cutoff::CutoffRound;
use cohort_task::evaluation::{EvaluationLayout, FederatedEvaluation};
use cohort_task::outcome::{self, OutcomeError};
use cohort_task::privacy::{PrivacyCodec, TaskPrivacy, rotation_seed};
use cohort_task::selection::{CheckInDecision, SelectionPolicy, Selector};
use cohort_task::{Attempt, MIN_COHORT, RoundPlan};
use rand::RngCore;
use thiserror::Error;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::checkpoints::{CheckpointError, Checkpoints};
use crate::clock::{Clock, SystemClock};
use crate::identity_log;
use crate::metrics::Metrics;
use crate::publish::{self, Finished, FinishedRecord};
use crate::round_driver::{RoundInput, RoundReport, RoundRoster, drive_round};
use crate::round_log::NewLogEntry;
use crate::states::TaskState;
use crate::store::{AsyncStore, StoreError};
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
    /// The frame limits of the round's large messages, sized from its parameters: what the
    /// connection's reader allows for a masked input or shares while it holds this seat.
    pub frame_limits: RoundFrameLimits,
}

/// What the scheduler keeps of a checked-in connection.
#[derive(Clone, Debug)]
pub struct Member {
    /// Messages to write to the connection.
    pub outbox: mpsc::Sender<ServerMessage>,
    /// The connection's seat, set when its round starts.
    pub seat: Arc<Mutex<Option<Seat>>>,
    /// The account it logged in as: the same as `check_in`'s `account` (the contributor
    /// ledger credits it).
    pub account: String,
    /// The identity-log head the device named at check-in: its round config carries the
    /// entries after it.
    pub known_identity_head: Option<IdentityLogHead>,
    /// Whether the account has a device identity key (rounds with the consistency check need
    /// one).
    pub has_device_key: bool,
    /// The SecAgg+ suites the device advertised in its `Hello` (empty: ChaCha20 only).
    pub secagg_suites: Vec<CipherSuite>,
}

/// Why server-side evaluation failed: the evaluator's own error.
#[derive(Debug, Error)]
#[error("server-side evaluation failed: {0}")]
pub struct EvaluationError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Evaluates a global model on data the coordinator holds (server-side evaluation).
pub trait Evaluator: Send + Sync {
    /// Returns (loss, accuracy) of `weights`.
    fn evaluate(&self, weights: &[f32]) -> Result<(f32, f32), EvaluationError>;
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
        /// Clients that dropped after sharing keys (including the members cut off by
        /// over-selection once the round had its inputs).
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
    /// Every round of the task is done, or the next did not fit its privacy budget.
    TaskFinished {
        /// The task.
        task: String,
        /// The final model.
        model: ContentHash,
        /// Differential privacy: the task ended because the next round did not fit its budget
        /// (state "privacy budget exhausted"), with the ε spent.
        privacy_budget_exhausted: Option<f64>,
    },
}

/// Why a task could not be started, or its loop stopped.
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
    /// A file the task resumes from is missing or damaged: the task cannot resume without it.
    #[error(
        "task {task} cannot resume: {} {}; restore it from a backup of the state directory \
         (the coordinator does not start afresh beside a damaged state)",
        path.display(),
        reason
    )]
    Damaged {
        /// The task.
        task: String,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a device whose account has no identity key is told when a task's rounds need one.
pub const NO_DEVICE_KEY: &str = "this task's rounds check device identity keys, and this account \
     has none (it was enrolled by an older client); enroll the device again under a new account";

/// When such a device may ask again.
const NO_DEVICE_KEY_RETRY: Duration = Duration::from_secs(3600);

/// Why an attempt released no model. The round is retried with a new cohort.
#[derive(Debug, Error)]
enum AttemptFailure {
    /// No round could be planned for the cohort.
    #[error("no round for this cohort: {0}")]
    Plan(#[from] cohort_task::plan::PlanError),
    /// The SecAgg+ state machine refused the plan's parameters.
    #[error("the SecAgg+ round could not start: {0}")]
    Start(#[from] cohort_task::cutoff::StartError),
    /// The round aborted and released nothing.
    #[error("{0}")]
    Aborted(#[from] cohort_aggregation::secagg::AbortReason),
    /// A member's device identity key could not be loaded for a round with the consistency
    /// check.
    #[error("identity keys for the round: {0}")]
    Identities(String),
    /// The released sum did not become a model.
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
    /// The DP release (central noise, distributed decoding) refused the sum.
    #[error(transparent)]
    Privacy(#[from] cohort_task::privacy::PrivacyRoundError),
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Threads of the unmasking job.
    pub unmask_threads: usize,
    /// The first estimate of a round's length, which steers the reconnects of clients turned
    /// away while a round runs (refined from measured rounds).
    pub initial_round_estimate: Duration,
    /// Largest model a checkpoint may hold, in bytes.
    pub max_checkpoint_bytes: u64,
    /// The clock: selection windows, round lengths and records read it.
    pub clock: Arc<dyn Clock>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            unmask_threads: 2,
            initial_round_estimate: Duration::from_secs(30),
            max_checkpoint_bytes: 1 << 32,
            clock: Arc::new(SystemClock),
        }
    }
}

/// One running task.
struct RunningTask {
    def: TaskDefinition,
    /// Selection is by account, so one account holds at most one seat in a round however
    /// many connections it opens (otherwise k connections of one account would fill k seats,
    /// and n − 1 seats of one party isolate the one honest input of a SecAgg+ sum).
    selector: Mutex<Selector<String>>,
    /// The connection that holds each selected account's seat: its latest check-in.
    pool: Mutex<HashMap<String, (ConnId, Member)>>,
    wake: Notify,
    /// The newest entries of the task's round log as sent to clients; `None` until the loop
    /// has loaded it.
    log: Mutex<Option<LogTail>>,
    /// Set by [`Scheduler::halt_task`]: the loop ends at its next safe point.
    halt: watch::Sender<bool>,
    /// Set when the loop has ended.
    ended: watch::Sender<bool>,
    /// What the loop is doing now (for the owners' API).
    live: Mutex<LiveStatus>,
    /// Where the loop is, for [`Scheduler::drain`]'s report.
    progress: Mutex<TaskProgress>,
}

/// Where a task loop is: the last published round and the attempt in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TaskProgress {
    published: u64,
    in_flight: Option<Attempt>,
}

/// Round-log entries a running task keeps in memory: the newest, between this many and twice
/// as many. A device further behind (or one with no head, once the log is longer) is served
/// from the database. This bounds a task's memory however many rounds it runs.
pub const LOG_TAIL_ENTRIES: usize = chain::MAX_ENTRIES_PER_MESSAGE;

/// The newest entries of a task's round log, in chain order.
#[derive(Debug)]
struct LogTail {
    entries: Vec<RoundLogEntry>,
    /// Older entries were dropped: `entries` does not start at the chain's first entry.
    truncated: bool,
    /// The most entries kept after a trim ([`LOG_TAIL_ENTRIES`]; smaller in tests).
    keep: usize,
}

impl LogTail {
    fn new(entries: Vec<RoundLogEntry>, keep: usize) -> Self {
        let mut tail = Self {
            entries,
            truncated: false,
            keep: keep.max(1),
        };
        tail.trim(tail.keep);
        tail
    }

    /// Keeps the newest `keep` entries once more than `above` are held (trimming in batches
    /// keeps appends amortised O(1)).
    fn trim(&mut self, above: usize) {
        if self.entries.len() > above {
            let drop = self.entries.len() - self.keep;
            self.entries.drain(..drop);
            self.entries.shrink_to(2 * self.keep);
            self.truncated = true;
        }
    }

    fn push(&mut self, entry: RoundLogEntry) {
        self.entries.push(entry);
        self.trim(2 * self.keep);
    }

    fn last_round(&self) -> RoundId {
        self.entries.last().map_or(RoundId(0), |e| e.round)
    }

    /// At most `limit` entries after `known`: `Some(Ok)` from memory, `Some(Err(()))` when
    /// `known` is not on the chain, `None` when only the database can say (the tail was
    /// truncated and does not hold `known`).
    fn after(
        &self,
        known: Option<&RoundLogHead>,
        limit: usize,
    ) -> Option<Result<Vec<RoundLogEntry>, ()>> {
        match log_after(&self.entries, known) {
            Ok(tail) if known.is_some() || !self.truncated => {
                Some(Ok(tail[..tail.len().min(limit)].to_vec()))
            }
            Err(()) if !self.truncated => Some(Err(())),
            // No head, or a head before the entries held, of a truncated tail.
            _ => None,
        }
    }
}

/// What [`Scheduler::drain`] did to one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// The loop stopped between rounds: nothing was in flight, or the round in flight finished
    /// (and was published) before the loop stopped.
    Stopped {
        /// The task.
        task: String,
        /// The last published round (0: none yet).
        published: u64,
    },
    /// The grace period ended with an attempt still running. It is recorded as abandoned when
    /// the coordinator next starts, and the round is retried then.
    Abandoned {
        /// The task.
        task: String,
        /// The last published round.
        published: u64,
        /// The attempt that was running.
        attempt: Attempt,
    },
}

impl std::fmt::Display for DrainOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped { task, published: 0 } => {
                write!(f, "task {task}: stopped before its first round")
            }
            Self::Stopped { task, published } => write!(
                f,
                "task {task}: stopped after round {published} (published); round {} starts at \
                 the next start",
                published + 1
            ),
            Self::Abandoned {
                task,
                published,
                attempt,
            } => write!(
                f,
                "task {task}: {attempt} abandoned (it did not finish within the grace period); \
                 last published round {published}; the round is retried at the next start"
            ),
        }
    }
}

/// What a task loop is doing now, for the owners' API and console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum LiveStatus {
    /// Loading the round log and the model.
    Starting,
    /// Waiting for a cohort.
    Selecting {
        /// The round it selects for.
        round: u64,
    },
    /// A SecAgg+ attempt runs.
    InRound {
        /// The round.
        round: u64,
        /// The attempt (1-based).
        attempt: u64,
        /// Clients selected.
        selected: u32,
        /// Unix seconds when it started.
        started_at: i64,
    },
}

/// Resolves once `halt` is set (never when its sender is gone).
async fn halted(halt: &mut watch::Receiver<bool>) {
    while !*halt.borrow_and_update() {
        if halt.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The reason recorded for an attempt cut short by [`Scheduler::halt_task`].
pub const HALTED_REASON: &str = "the task was paused or stopped by its owner";

/// Where a task resumes: the model the next round starts from, the last logged round, the
/// strategy's saved state and the chain so far.
struct ResumePoint {
    weights: Vec<f32>,
    done: u64,
    strategy_state: Option<ContentHash>,
    log: Vec<RoundLogEntry>,
}

/// The scheduler of every running task.
pub struct Scheduler {
    store: AsyncStore,
    checkpoints: Arc<Checkpoints>,
    options: SchedulerOptions,
    evaluator: Option<Arc<dyn Evaluator>>,
    tasks: Mutex<HashMap<String, Arc<RunningTask>>>,
    events: broadcast::Sender<TaskEvent>,
    metrics: Arc<Metrics>,
    /// Set by [`Scheduler::drain`]: no task loop starts another round.
    draining: tokio::sync::watch::Sender<bool>,
    /// Notified whenever a task loop exits.
    loop_exited: Notify,
    /// The identity log, read incrementally for the rounds with the consistency check.
    identity_log: Arc<identity_log::IdentityLogCache>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The initial global model of a task: drawn from a seed derived from the task id, so a
/// restarted coordinator recreates the same vector (and hash) without storing extra state.
pub fn initial_weights(def: &TaskDefinition) -> Result<Vec<f32>, SchedulerError> {
    let seed = u64::from_le_bytes(
        ContentHash::of(def.id.as_bytes()).0[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    def.model()
        .initial_weights(seed)
        .map_err(|e| SchedulerError::Task {
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
            draining: tokio::sync::watch::channel(false).0,
            loop_exited: Notify::new(),
            identity_log: Arc::default(),
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

    fn clock(&self) -> &dyn Clock {
        self.options.clock.as_ref()
    }

    /// Whether the loop of task `id` runs (and has not been told to halt).
    pub fn is_running(&self, id: &str) -> bool {
        self.lock_tasks().get(id).is_some_and(|t| !*t.halt.borrow())
    }

    /// What the loop of task `id` is doing, and how many clients wait in its pool; `None`
    /// when it does not run.
    pub fn live(&self, id: &str) -> Option<(LiveStatus, usize)> {
        let state = self.lock_tasks().get(id).cloned()?;
        let status = *lock(&state.live);
        let waiting = lock(&state.pool).len();
        Some((status, waiting))
    }

    /// Tells the loop of task `id` to end: at once while it waits for a cohort, and by
    /// aborting the running attempt (recorded as aborted with [`HALTED_REASON`], nothing of it
    /// applied) otherwise; a round being published is finished first. The clients waiting in
    /// its pool are told the task is not running. Returns a future that resolves when the loop
    /// has ended, or `None` when it does not run. Starting the task again resumes it from its
    /// log's head.
    pub fn halt_task(&self, id: &str) -> Option<impl std::future::Future<Output = ()> + use<>> {
        let state = self.lock_tasks().get(id).cloned()?;
        let _ = state.halt.send(true);
        let mut ended = state.ended.subscribe();
        Some(async move {
            while !*ended.borrow_and_update() {
                if ended.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Starts the loop of task `def` (already stored), resuming after its last logged round.
    /// Does nothing when its loop runs already.
    pub fn start_task(self: &Arc<Self>, def: TaskDefinition) -> Result<(), SchedulerError> {
        // A definition is checked when it is made; this guards definitions built in code.
        if !def.secagg.enabled {
            return Err(SchedulerError::Task {
                task: def.id.clone(),
                reason: "secagg.enabled = false is refused: this coordinator only \
                         aggregates with SecAgg+ and never sees an update in the clear; set \
                         secagg.enabled = true"
                    .into(),
            });
        }
        let state = Arc::new(RunningTask {
            selector: Mutex::new(Selector::new(
                SelectionPolicy::for_task(&def),
                self.options.initial_round_estimate,
            )),
            pool: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            log: Mutex::new(None),
            halt: watch::channel(false).0,
            ended: watch::channel(false).0,
            live: Mutex::new(LiveStatus::Starting),
            progress: Mutex::new(TaskProgress::default()),
            def,
        });
        {
            let mut tasks = self.lock_tasks();
            if tasks.contains_key(&state.def.id) {
                return Ok(());
            }
            tasks.insert(state.def.id.clone(), state.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let id = state.def.id.clone();
            if let Err(e) = this.run_task(state.clone()).await {
                tracing::error!(task = %id, error = %e, "task loop stopped");
            }
            {
                let mut tasks = this.lock_tasks();
                if tasks.get(&id).is_some_and(|t| Arc::ptr_eq(t, &state)) {
                    tasks.remove(&id);
                }
            }
            // Clients waiting for a round of this task learn that none comes.
            let waiting: Vec<Member> = lock(&state.pool).drain().map(|(_, (_, m))| m).collect();
            let message = if this.is_draining() {
                format!(
                    "task {id} is not running: the coordinator is shutting down; check in again \
                     after it restarts"
                )
            } else {
                format!(
                    "task {id} is not running now (paused, stopped or finished); check in again \
                     later"
                )
            };
            for member in waiting {
                let _ = member
                    .outbox
                    .try_send(ServerMessage::Error(cohort_protocol::WireError {
                        code: cohort_protocol::ErrorCode::NotFound,
                        message: message.clone(),
                    }));
            }
            let _ = state.ended.send(true);
            this.loop_exited.notify_waiters();
        });
        Ok(())
    }

    /// Stops every task loop gracefully: no new round starts; a round in flight may finish
    /// (and be published) within `grace`, after which it is left to be recorded as abandoned at
    /// the next start. Returns what happened to each task that was running. Call
    /// [`crate::server::Coordinator::shutdown`] afterwards to close the connections.
    pub async fn drain(&self, grace: Duration) -> Vec<DrainOutcome> {
        self.draining.send_replace(true);
        let mut running: Vec<Arc<RunningTask>> = self.lock_tasks().values().cloned().collect();
        running.sort_by(|a, b| a.def.id.cmp(&b.def.id));
        for task in &running {
            task.wake.notify_one();
        }
        let deadline = self.clock().monotonic() + grace;
        loop {
            // Registered before checking, so an exit in between is not missed.
            let exited = self.loop_exited.notified();
            if self.lock_tasks().is_empty() {
                break;
            }
            tokio::select! {
                _ = exited => {}
                _ = self.clock().sleep_until(deadline) => break,
            }
        }
        running
            .iter()
            .map(|task| {
                let progress = *lock(&task.progress);
                let task = task.def.id.clone();
                match progress.in_flight {
                    Some(attempt) => DrainOutcome::Abandoned {
                        task,
                        published: progress.published,
                        attempt,
                    },
                    None => DrainOutcome::Stopped {
                        task,
                        published: progress.published,
                    },
                }
            })
            .collect()
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RunningTask>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a check-in from connection `conn` of `account`: the plan when it is selected,
    /// otherwise when to come back. An account is selected once per round: a check-in from
    /// another of its connections while it waits for the round takes its seat over (the latest
    /// connection is the live one).
    ///
    /// The accepted client gets the task's round log after `known_head` (the last entry it
    /// verified; the whole log without one). A client more than
    /// [`chain::MAX_ENTRIES_PER_MESSAGE`] entries behind is not selected yet: it is sent the
    /// next entries ([`CheckInResponse::LogCatchUp`]) and checks in again. A head that is not
    /// on the chain is answered with [`CheckInResponse::UnknownLogHead`].
    pub fn check_in(
        &self,
        conn: ConnId,
        account: &str,
        task: Option<&TaskId>,
        known_head: Option<RoundLogHead>,
        member: Member,
    ) -> CheckInResponse {
        let state = {
            let tasks = self.lock_tasks();
            match task {
                Some(t) => tasks.get(&t.0).cloned(),
                None => tasks.values().next().cloned(),
            }
        };
        let Some(state) = state else {
            return CheckInResponse::NoTask {
                retry_after_ms: self.options.initial_round_estimate.as_millis() as u64,
            };
        };
        // The entries after the device's head, one more than a message holds (to tell a device
        // that must catch up first).
        let limit = chain::MAX_ENTRIES_PER_MESSAGE + 1;
        let (from_memory, chain_round) = match lock(&state.log).as_ref() {
            None => {
                return CheckInResponse::ComeBackLater {
                    retry_after_ms: 1_000,
                    reason: "the task is starting".into(),
                };
            }
            Some(tail) => (tail.after(known_head.as_ref(), limit), tail.last_round()),
        };
        let after = match from_memory {
            Some(after) => after,
            // Behind the entries held in memory: a rare, bounded read (at most `limit` rows).
            None => match self.store.0.round_log().entries_after(
                &state.def.task_id(),
                known_head.as_ref(),
                limit,
            ) {
                Ok(Some(entries)) => Ok(entries.iter().map(|e| e.to_wire()).collect()),
                Ok(None) => Err(()),
                Err(e) => {
                    tracing::warn!(task = %state.def.id, error = %e, "cannot read the round log");
                    return CheckInResponse::ComeBackLater {
                        retry_after_ms: 5_000,
                        reason: "the round log cannot be read now".into(),
                    };
                }
            },
        };
        let mut log = match after {
            Ok(entries) => entries,
            Err(()) => {
                tracing::debug!(conn, task = %state.def.id, "check-in with an unknown log head");
                return CheckInResponse::UnknownLogHead {
                    task: state.def.task_id(),
                    head: known_head.unwrap_or(RoundLogHead {
                        round: RoundId(0),
                        hash: ContentHash([0; 32]),
                    }),
                    chain_round,
                };
            }
        };
        if log.len() > chain::MAX_ENTRIES_PER_MESSAGE {
            tracing::debug!(conn, task = %state.def.id, "check-in behind the round log");
            log.truncate(chain::MAX_ENTRIES_PER_MESSAGE);
            return CheckInResponse::LogCatchUp {
                task: state.def.task_id(),
                entries: log,
            };
        }
        if state.def.secagg.consistency_check && !member.has_device_key {
            return CheckInResponse::ComeBackLater {
                retry_after_ms: NO_DEVICE_KEY_RETRY.as_millis() as u64,
                reason: NO_DEVICE_KEY.into(),
            };
        }
        let now = self.clock().monotonic();
        let jitter = f64::from(rand::rngs::OsRng.next_u32()) / f64::from(u32::MAX);
        let seat = (conn, member);
        let Some(decision) = select_if_current(&state, account, chain_round, now, jitter, seat)
        else {
            tracing::debug!(conn, task = %state.def.id, "a round was published during the check-in");
            return CheckInResponse::ComeBackLater {
                retry_after_ms: PUBLISHED_DURING_CHECK_IN_RETRY.as_millis() as u64,
                reason: "a round was published while the check-in was answered".into(),
            };
        };
        tracing::debug!(conn, ?decision, task = %state.def.id, "check-in");
        match decision {
            CheckInDecision::Selected => {
                state.wake.notify_one();
                // Only the selected get the log, and only what they do not hold yet.
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

    /// Connection `conn` of `account` closed: the account leaves every pool in which this
    /// connection held its seat (not those where a newer connection took it over).
    pub fn leave(&self, conn: ConnId, account: &str) {
        for state in self.lock_tasks().values() {
            let mut pool = lock(&state.pool);
            if pool.get(account).is_some_and(|(c, _)| *c == conn) {
                pool.remove(account);
                lock(&state.selector).leave(&account.to_string());
            }
        }
    }

    /// Checks, before the task's loop starts, that it can resume: its round log verifies, and
    /// the checkpoint and strategy state its head names are present and hash to their names.
    /// A task with no log yet (it never started) is resumable. The coordinator calls this at
    /// start-up for every running task, so that a damaged state stops it with an error naming
    /// the file instead of a task loop that dies in the background (or a silent restart).
    pub async fn check_resumable(&self, def: &TaskDefinition) -> Result<(), SchedulerError> {
        let task = def.task_id();
        let db = self.store.0.path().map(std::path::Path::to_path_buf);
        let entries = self
            .store
            .call(move |s| Ok(s.round_log().verify(&task)))
            .await?;
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                return Err(SchedulerError::Damaged {
                    task: def.id.clone(),
                    path: db.unwrap_or_default(),
                    reason: format!("holds a round log that does not verify ({e})"),
                });
            }
        };
        let Some(head) = entries.last() else {
            return Ok(());
        };
        let damaged = |path: std::path::PathBuf, what: &str, e: CheckpointError| {
            let why = match e {
                CheckpointError::NotFound(_) => "the file is missing".to_string(),
                CheckpointError::Corrupt { actual, .. } => format!(
                    "its contents hash to {actual}, not to its name: it was truncated or \
                     overwritten"
                ),
                other => other.to_string(),
            };
            SchedulerError::Damaged {
                task: def.id.clone(),
                path,
                reason: format!(
                    "({what} of round {}, the head of the round log) is unusable: {why}",
                    head.entry.round.0
                ),
            }
        };
        let model = head.entry.output_weights;
        self.checkpoints
            .get(&model, self.options.max_checkpoint_bytes)
            .map_err(|e| damaged(self.checkpoints.path_of(&model), "the model", e))?;
        let state = publish::strategy_state_of(&head.entry.params).map_err(|reason| {
            SchedulerError::Task {
                task: def.id.clone(),
                reason: format!("round {} of the log: {reason}", head.entry.round.0),
            }
        })?;
        if let Some(hash) = state {
            self.checkpoints
                .get_strategy_state(&hash, self.options.max_checkpoint_bytes)
                .map_err(|e| {
                    damaged(
                        self.checkpoints.state_path_of(&hash),
                        "the strategy state",
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Where the task resumes: the head of its round log (the model and the strategy state it
    /// names), or, for a new task, the initial weights, logged as round 0.
    async fn resume_point(&self, def: &TaskDefinition) -> Result<ResumePoint, SchedulerError> {
        let task = def.task_id();
        let mut entries = self
            .store
            .call(move |s| {
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
                created_at: self.clock().now(),
            };
            let logged = self
                .store
                .call(move |s| {
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
        let strategy_state = publish::strategy_state_of(&last.entry.params).map_err(|reason| {
            SchedulerError::Task {
                task: def.id.clone(),
                reason: format!("round {} of the log: {reason}", last.entry.round.0),
            }
        })?;
        Ok(ResumePoint {
            weights,
            done: last.entry.round.0,
            strategy_state,
            log,
        })
    }

    async fn run_task(self: &Arc<Self>, state: Arc<RunningTask>) -> Result<(), SchedulerError> {
        let def = state.def.clone();
        let id = def.id.clone();
        let task_error = |reason: String| SchedulerError::Task {
            task: id.clone(),
            reason,
        };
        let mut strategy: Box<dyn Strategy> = def
            .strategy
            .build()
            .map_err(|e| task_error(format!("[strategy]: {e}")))?;
        // The task's encoding: the same for every round (RoundPlan::quantizer is this one).
        let quantizer =
            cohort_task::plan::quantizer(&def).map_err(|e| task_error(e.to_string()))?;
        let resume = self.resume_point(&def).await?;
        if let Some(hash) = resume.strategy_state {
            let saved = self
                .checkpoints
                .get_strategy_state(&hash, self.options.max_checkpoint_bytes)?;
            strategy.import_state(saved).map_err(|e| {
                task_error(format!(
                    "the saved strategy state {hash} does not fit the task's [strategy] ({e}); \
                     restore the task definition the log was written with"
                ))
            })?;
        }
        let mut global = resume.weights;
        // Differential privacy: the plan for this model (the budget and the round limit), the
        // encoder, the adaptive clip (resumed from the clip the log's head sets for the next
        // round, so a restart continues where the task was).
        let mut privacy = match def
            .privacy_plan(global.len(), None)
            .map_err(|e| task_error(e.to_string()))?
        {
            Some(plan) => {
                tracing::info!(task = %id, "differential privacy: {plan}");
                let mut p =
                    TaskPrivacy::new(plan, global.len()).map_err(|e| task_error(e.to_string()))?;
                if let Some(last) = resume.log.last()
                    && let Some(clip) = publish::logged_clip(&last.params, publish::NEXT_CLIP_KEY)
                    && p.resume_adaptive_clip(clip)
                        .map_err(|e| task_error(e.to_string()))?
                {
                    tracing::info!(task = %id, round = last.round.0, clip, "adaptive clip resumed from the round log");
                }
                Some(p)
            }
            None => None,
        };
        let mut exhausted = None;
        let mut global_hash =
            ContentHash::of(&cohort_protocol::FloatVector(global.clone()).to_le_bytes());
        *lock(&state.log) = Some(LogTail::new(resume.log, LOG_TAIL_ENTRIES));
        tracing::info!(task = %id, resumed_after = resume.done, model = %global_hash, steps = strategy.export_state().steps, "task loop started");
        let task_for_ids = id.clone();
        let last_id = self
            .store
            .call(move |s| s.last_round_id(&task_for_ids))
            .await?
            .map(RoundId);
        let mut round = resume.done + 1;
        lock(&state.progress).published = resume.done;
        let mut attempt = Attempt::resume(round, last_id);
        let mut halt = state.halt.subscribe();
        // The held-out loss of the model the next round starts from (the ledger's baseline).
        let mut loss_before: Option<f32> = None;
        while round <= u64::from(def.rounds) {
            let Some(this) = attempt else {
                return Err(task_error(format!(
                    "round {round} used every attempt id it has; the task stops"
                )));
            };
            // Before each round: does it fit the privacy budget? (Each published round spent
            // one round of it.)
            if let Some(p) = &privacy
                && !p.plan().round_fits(round - 1)
            {
                let spent = p.plan().epsilon_after(round - 1);
                tracing::warn!(task = %id, round, epsilon = spent, budget = p.plan().epsilon_budget, "privacy budget exhausted: the task ends");
                exhausted = Some(spent);
                break;
            }
            // Adaptive clipping: this round's clip, logged with the next one.
            let round_clip = privacy.as_ref().and_then(TaskPrivacy::adaptive_clip);
            let codec = match &privacy {
                Some(p) => Some(
                    p.codec_with(
                        p.round_quantizer(&def)
                            .map_err(|e| task_error(e.to_string()))?,
                        rotation_seed(&def.id, this.round_id().0),
                    ),
                ),
                None => None,
            };
            *lock(&state.live) = LiveStatus::Selecting { round };
            let mut draining = self.draining.subscribe();
            let cohort = tokio::select! {
                biased;
                _ = halted(&mut halt) => return Ok(()),
                _ = draining.wait_for(|d| *d) => {
                    tracing::info!(task = %id, published = round - 1, "task loop stopped: the coordinator is shutting down");
                    return Ok(());
                }
                cohort = self.wait_for_cohort(&state) => cohort,
            };
            if self.is_draining() {
                // Selected just as the drain began: release the cohort rather than start.
                tracing::info!(task = %id, published = round - 1, "task loop stopped: the coordinator is shutting down");
                return Ok(());
            }
            lock(&state.progress).in_flight = Some(this);
            let started = self.clock().monotonic();
            let started_at = self.clock().now();
            *lock(&state.live) = LiveStatus::InRound {
                round,
                attempt: this.attempt,
                selected: cohort.len() as u32,
                started_at,
            };
            let evaluate = def.evaluates(round);
            let result = tokio::select! {
                biased;
                _ = halted(&mut halt) => {
                    self.abort(&state, this, &cohort, HALTED_REASON.into(), started, started_at)
                        .await?;
                    lock(&state.progress).in_flight = None;
                    return Ok(());
                }
                result = self.run_attempt(&def, this, &cohort, global_hash, global.len(), evaluate, codec.as_ref()) => result,
            };
            let mut next_privacy = privacy.clone();
            let mut federated_evaluation = None;
            let applied = result.and_then(|(mut report, layout)| {
                let mut sum = std::mem::replace(
                    &mut report.outcome,
                    Err(cohort_aggregation::secagg::AbortReason::NotEnoughShares {
                        missing: 0,
                        needed: 0,
                    }),
                )?;
                // Federated evaluation: its sums come out of the vector before the update is
                // decoded. Sums no honest cohort could produce cost the metrics, not the round.
                if let Some(layout) = &layout {
                    federated_evaluation = match layout.take_from(&mut sum) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(task = %id, attempt = %this, error = %e, "federated evaluation discarded");
                            None
                        }
                    };
                }
                let next = match (&codec, next_privacy.as_mut()) {
                    (Some(codec), Some(p)) => {
                        // Central: the noise, drawn here from the OS; distributed: decoding.
                        let mut seed = [0u8; 32];
                        rand::rngs::OsRng.fill_bytes(&mut seed);
                        let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(seed);
                        let contributors = u32::try_from(sum.contributors.len()).unwrap_or(0);
                        let release = p.release(codec, &sum.sum, contributors, &mut rng)?;
                        outcome::step(strategy.as_mut(), &global, &release.mean)?
                    }
                    _ => outcome::apply_sum(&quantizer, strategy.as_mut(), &global, &sum)?.weights,
                };
                Ok((report, sum, next))
            });
            let (report, sum, next) = match applied {
                Ok(v) => v,
                Err(failure) => {
                    self.abort(
                        &state,
                        this,
                        &cohort,
                        failure.to_string(),
                        started,
                        started_at,
                    )
                    .await?;
                    lock(&state.progress).in_flight = None;
                    attempt = this.next();
                    continue;
                }
            };
            let contributors = sum.contributors.len() as u32;
            privacy = next_privacy;
            let epsilon_spent = privacy.as_ref().map(|p| p.plan().epsilon_after(round));
            let adaptive_clip =
                round_clip.zip(privacy.as_ref().and_then(TaskPrivacy::adaptive_clip));
            // The contributor ledger's members: the devices whose inputs are in the sum.
            let accounts: Vec<String> = sum
                .contributors
                .iter()
                .filter_map(|i| cohort.get((i.0 as usize).checked_sub(1)?))
                .map(|(_, m)| m.account.clone())
                .collect();
            let (new_hash, logged) = publish::publish(
                &self.store,
                &self.checkpoints,
                Finished {
                    task: def.task_id(),
                    attempt: this,
                    selected: cohort.len(),
                    contributors,
                    previous: global_hash,
                    weights: &next,
                    strategy: strategy.name(),
                    strategy_state: strategy.export_state(),
                    epsilon_spent,
                    adaptive_clip,
                    members: Some(crate::ledger::members_root(&crate::ledger::equal_members(
                        &accounts,
                    ))),
                    now: self.clock().now(),
                },
            )
            .await?;
            if let Some(log) = lock(&state.log).as_mut() {
                log.push(logged);
            }
            let took = self.clock().monotonic().saturating_sub(started);
            // Selection reopens only now, so a client accepted from here on gets a chain whose
            // last entry names the model of its round.
            lock(&state.selector).round_finished(took);
            global = next;
            let previous_hash = std::mem::replace(&mut global_hash, new_hash);
            let evaluation = self
                .finish_round(
                    &def,
                    this,
                    &cohort,
                    report,
                    sum,
                    previous_hash,
                    new_hash,
                    &global,
                    evaluate,
                    federated_evaluation,
                    started_at,
                    took,
                )
                .await?;
            self.credit(
                &def,
                this.round,
                &accounts,
                &mut loss_before,
                previous_hash,
                evaluation,
                &global,
            )
            .await;
            *lock(&state.progress) = TaskProgress {
                published: round,
                in_flight: None,
            };
            round += 1;
            attempt = Some(Attempt::first(round));
        }
        let task = id.clone();
        let now = self.clock().now();
        let end = match exhausted {
            Some(_) => TaskState::BudgetExhausted,
            None => TaskState::Finished,
        };
        self.store
            .call(move |s| s.set_task_state(&task, end, now).map(|_| ()))
            .await?;
        let _ = self.events.send(TaskEvent::TaskFinished {
            task: id,
            model: global_hash,
            privacy_budget_exhausted: exhausted,
        });
        Ok(())
    }

    /// After a round is published: evaluation, records, metrics, the cohort's result and the
    /// observers' event.
    #[allow(clippy::too_many_arguments)]
    async fn finish_round(
        &self,
        def: &TaskDefinition,
        attempt: Attempt,
        cohort: &[(ConnId, Member)],
        report: RoundReport,
        sum: UnmaskedSum,
        previous_hash: ContentHash,
        new_hash: ContentHash,
        global: &[f32],
        evaluate: bool,
        federated_evaluation: Option<FederatedEvaluation>,
        started_at: i64,
        took: Duration,
    ) -> Result<Option<(f32, f32)>, SchedulerError> {
        let id = &def.id;
        let contributors = sum.contributors.len() as u32;
        let dropped = sum.dropped.len() as u32;
        let removed = report.removed.len() as u32;
        let evaluation = match (&self.evaluator, evaluate) {
            (Some(ev), true) => {
                let ev = ev.clone();
                let w = global.to_vec();
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
            _ => None,
        };
        let metrics_json = serde_json::json!({
            "round_id": attempt.round_id().0,
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
        publish::record_finished(
            &self.store,
            id,
            attempt,
            FinishedRecord {
                contributors,
                dropouts: dropped + removed,
                started_at,
                metrics_json,
                evaluation,
                federated: federated_evaluation,
            },
            self.clock().now(),
        )
        .await?;
        self.metrics
            .round_completed(id, &report, contributors, dropped + removed, took);
        if let Some(f) = &federated_evaluation {
            self.metrics.federated_evaluation(id, f);
        }
        self.broadcast(
            cohort,
            ServerMessage::RoundResult(RoundResult::Completed {
                round_id: attempt.round_id(),
                new_model: new_hash,
                contributors,
            }),
        );
        tracing::info!(
            task = %id, round = attempt.round, %attempt, contributors, dropped, removed,
            ms = took.as_millis() as u64, model = %new_hash,
            accuracy = evaluation.map(|e| e.1),
            fed_clients = federated_evaluation.map(|f| f.clients),
            fed_examples = federated_evaluation.map(|f| f.examples),
            fed_loss = federated_evaluation.map(|f| f.loss),
            fed_accuracy = federated_evaluation.map(|f| f.accuracy),
            sessions = self.metrics.connections(),
            quic_connections = self.metrics.quic_connections(),
            "round finished"
        );
        let _ = self.events.send(TaskEvent::RoundCompleted {
            task: id.clone(),
            round: attempt.round,
            round_id: attempt.round_id(),
            selected: cohort.len() as u32,
            members: sum.contributors,
            previous_model: previous_hash,
            contributors,
            dropped,
            removed,
            model: new_hash,
            evaluation,
            federated_evaluation,
            took,
        });
        Ok(evaluation)
    }

    /// Records a finished round's credits in the contributor ledger ([`crate::ledger`]). With
    /// an evaluator, the held-out loss of the round's starting and new models (evaluated here
    /// when the round itself did not evaluate); without one, the fixed reward. A failure is
    /// logged, never fatal: the ledger does not hold up training.
    #[allow(clippy::too_many_arguments)]
    async fn credit(
        &self,
        def: &TaskDefinition,
        round: u64,
        members: &[String],
        loss_before: &mut Option<f32>,
        previous_hash: ContentHash,
        evaluation: Option<(f32, f32)>,
        global: &[f32],
    ) {
        let evaluate = |weights: Vec<f32>| {
            let ev = self.evaluator.clone();
            async move {
                let ev = ev?;
                match tokio::task::spawn_blocking(move || ev.evaluate(&weights)).await {
                    Ok(Ok((loss, _))) => Some(loss),
                    _ => None,
                }
            }
        };
        let after = match evaluation {
            Some((loss, _)) => Some(loss),
            None => evaluate(global.to_vec()).await,
        };
        let before = match *loss_before {
            Some(l) => Some(l),
            None if self.evaluator.is_some() => {
                match self
                    .checkpoints
                    .get(&previous_hash, self.options.max_checkpoint_bytes)
                {
                    Ok(w) => evaluate(w).await,
                    Err(_) => None,
                }
            }
            None => None,
        };
        *loss_before = after;
        let (basis, improvement, credits) = crate::ledger::credit_round(before, after, members);
        let task = def.id.clone();
        let recorded = self
            .store
            .call(move |s| crate::ledger::record(s, &task, round, basis, improvement, &credits))
            .await;
        if let Err(e) = recorded {
            tracing::warn!(task = %def.id, round, error = %e, "could not record the round in the contributor ledger");
        }
    }

    async fn abort(
        &self,
        state: &RunningTask,
        attempt: Attempt,
        cohort: &[(ConnId, Member)],
        reason: String,
        started: Duration,
        started_at: i64,
    ) -> Result<(), SchedulerError> {
        let task = state.def.id.as_str();
        let took = self.clock().monotonic().saturating_sub(started);
        lock(&state.selector).round_finished(took);
        tracing::warn!(task, %attempt, round_id = %attempt.round_id(), %reason, "round attempt aborted; retrying with a new cohort");
        self.metrics.round_aborted(task);
        self.broadcast(
            cohort,
            ServerMessage::RoundResult(RoundResult::Aborted {
                round_id: attempt.round_id(),
                reason: reason.clone(),
            }),
        );
        let now = self.clock().now();
        publish::record_aborted(&self.store, task, attempt, &reason, started_at, now).await?;
        let _ = self.events.send(TaskEvent::RoundAborted {
            task: task.to_string(),
            round: attempt.round,
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

    /// Waits until the selector hands over a cohort: woken by each check-in, and by the clock
    /// at the end of the selection window when enough clients wait for it.
    async fn wait_for_cohort(&self, state: &RunningTask) -> Vec<(ConnId, Member)> {
        loop {
            // Registered before polling, so that a check-in in between is not missed.
            let checked_in = state.wake.notified();
            let now = self.clock().monotonic();
            let (taken, timeout) = {
                let mut selector = lock(&state.selector);
                let taken = selector.poll(now);
                (taken, selector.poll_timeout())
            };
            if let Some(ids) = taken {
                let mut pool = lock(&state.pool);
                // The selector's ids are accounts, each once: the cohort has one member per
                // account.
                let cohort: Vec<_> = ids
                    .into_iter()
                    .filter_map(|account| pool.remove(&account))
                    .filter(|(_, m)| !m.outbox.is_closed())
                    .collect();
                if cohort.len() as u32 >= MIN_COHORT {
                    return cohort;
                }
                drop(pool);
                lock(&state.selector).round_finished(Duration::ZERO);
                continue;
            }
            match timeout {
                Some(at) => {
                    tokio::select! {
                        _ = checked_in => {}
                        _ = self.clock().sleep_until(at) => {}
                    }
                }
                None => checked_in.await,
            }
        }
    }

    /// Runs one SecAgg+ attempt to its end.
    #[allow(clippy::too_many_arguments)]
    async fn run_attempt(
        &self,
        def: &TaskDefinition,
        attempt: Attempt,
        cohort: &[(ConnId, Member)],
        model: ContentHash,
        model_len: usize,
        evaluate: bool,
        codec: Option<&PrivacyCodec>,
    ) -> Result<(RoundReport, Option<EvaluationLayout>), AttemptFailure> {
        let n = cohort.len() as u32;
        // The mask PRG: one every member advertised (AES-128-CTR where all have it in hardware).
        let suite = negotiate_suite(cohort.iter().map(|(_, m)| m.secagg_suites.as_slice()));
        let mut plan = RoundPlan::new(def, n, model_len)?.with_suite(suite);
        match codec {
            // The round's L2 clip is the quantizer's range (sent in the round config).
            Some(PrivacyCodec::Central { quantizer, .. }) => {
                plan = plan.with_clip(quantizer.params().clip)?;
            }
            // Distributed DP wraps into its own Z_{2^b}: the round's ring is sized from it.
            Some(PrivacyCodec::Distributed { encoder, .. }) => {
                plan = plan.with_distributed_bits(encoder.params().bits)?;
            }
            None => {}
        }
        // Federated evaluation rides in the masked vector: laid out last, for the final ring.
        if evaluate {
            plan = plan.with_federated_evaluation()?;
        }
        let layout = plan.evaluation.clone();
        let round_id = attempt.round_id();
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let identities = match &plan.secagg {
            Some(p) if p.consistency_check => Some(self.round_identities(cohort).await?),
            _ => None,
        };
        // The round's deadlines are times on the scheduler's clock, which drives them too.
        let (round, actions) = CutoffRound::start_with_identities(
            self.clock().time(),
            &plan,
            round_id,
            model,
            seed,
            identities.as_ref().map(|(d, _)| d.clone()),
        )?;
        let roster = identities.map(|(_, r)| r);
        let (input_tx, input_rx) = mpsc::channel(4 * cohort.len() + 16);
        let frame_limits = RoundFrameLimits::for_params(round.params());
        let mut outboxes = HashMap::new();
        for (i, (_, member)) in cohort.iter().enumerate() {
            let index = ClientIndex(i as u32 + 1);
            *member.seat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seat {
                round_id,
                index,
                inputs: input_tx.clone(),
                frame_limits,
            });
            outboxes.insert(index, member.outbox.clone());
        }
        drop(input_tx);
        if let Err(e) =
            publish::record_started(&self.store, &def.id, attempt, n, self.clock().now()).await
        {
            tracing::warn!(error = %e, "could not record the running round");
        }
        tracing::info!(task = %def.id, %attempt, %round_id, n, cutoff = plan.cutoff, k = round.params().neighbours, t = round.params().threshold, "round started");
        let report = drive_round(
            self.clock(),
            round,
            actions,
            outboxes,
            input_rx,
            self.options.unmask_threads,
            evaluate,
            roster,
        )
        .await;
        Ok((report, layout))
    }

    /// The identity keys of a round with the consistency check: the directory the server
    /// checks signatures with, the roster (each index's identity-log position) and each
    /// member's part of the identity log (the entries after the head it named at check-in).
    async fn round_identities(
        &self,
        cohort: &[(ConnId, Member)],
    ) -> Result<(IdentityDirectory, RoundRoster), AttemptFailure> {
        let accounts: Vec<String> = cohort.iter().map(|(_, m)| m.account.clone()).collect();
        let cache = self.identity_log.clone();
        let keys = self
            .store
            .call(move |s| {
                cache.refresh(s)?;
                identity_log::current_keys(s, &accounts)
            })
            .await
            .map_err(|e| AttemptFailure::Identities(e.to_string()))?;
        let mut directory = IdentityDirectory::new();
        let mut roster = RoundRoster {
            roster: Vec::with_capacity(cohort.len()),
            logs: HashMap::with_capacity(cohort.len()),
        };
        for (i, ((_, member), key)) in cohort.iter().zip(keys).enumerate() {
            let index = ClientIndex(i as u32 + 1);
            let key = key.ok_or_else(|| {
                AttemptFailure::Identities(format!(
                    "account {:?} has no device identity key",
                    member.account
                ))
            })?;
            let verifying = VerifyingKey::from_bytes(&key.key).map_err(|_| {
                AttemptFailure::Identities(format!(
                    "the stored identity key of {:?} is not an Ed25519 key",
                    member.account
                ))
            })?;
            directory.insert(index, verifying);
            roster.roster.push(key.seq);
            let after = self
                .identity_log
                .with(|log| identity_log::entries_after(log, member.known_identity_head).to_vec());
            roster.logs.insert(index, after);
        }
        Ok((directory, roster))
    }
}

/// How soon a device asked to come back because a round was published while its check-in was
/// answered should check in again (with the new entry, it is then selected as usual).
const PUBLISHED_DURING_CHECK_IN_RETRY: Duration = Duration::from_millis(200);

/// Asks the selector for `account`'s seat, unless a round was published since the device's
/// entries were read, when the log's last round was `chain_round`. The round being assembled
/// then starts from the model of an entry the device was not sent, and the device would refuse
/// its weights as not named by its log ("the coordinator served weights its log does not name",
/// seen in the soak as a device leaving by itself). `None` then. The log stays locked while the
/// selector decides, and a finished round's entry is pushed before selection reopens
/// ([`Scheduler::run_task`]), so a device selected here holds the entry of its round's model.
///
/// A selected device's `seat` (its connection and member) goes into the pool before the
/// selector's lock is released, so the round's loop, which takes the cohort from the selector
/// and then the members from the pool, never finds a selected account missing from the pool
/// (it would drop it from the cohort after the device was told it was accepted). Locks are taken
/// in the order log, pool, selector, as everywhere else.
fn select_if_current(
    state: &RunningTask,
    account: &str,
    chain_round: RoundId,
    now: Duration,
    jitter: f64,
    seat: (ConnId, Member),
) -> Option<CheckInDecision> {
    let log = lock(&state.log);
    if log.as_ref().map(LogTail::last_round) != Some(chain_round) {
        return None;
    }
    let mut pool = lock(&state.pool);
    let decision = lock(&state.selector).check_in(account.to_string(), now, jitter);
    if decision == CheckInDecision::Selected {
        pool.insert(account.to_string(), seat);
    }
    Some(decision)
}

/// The entries of `log` after the head `known` ([`chain::entries_after`]): all of them when
/// `known` is `None`, `Err(())` when `known` is not on the chain.
#[allow(clippy::result_unit_err)]
pub fn log_after<'a>(
    log: &'a [RoundLogEntry],
    known: Option<&RoundLogHead>,
) -> Result<&'a [RoundLogEntry], ()> {
    chain::entries_after(log, known)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    use cohort_aggregation::encoding::Quantizer;
    use cohort_aggregation::secagg::client::ClientOptions;
    use cohort_aggregation::secagg::{ClientRound, ClientStep};
    use cohort_task::cutoff::is_stop;
    use rand_chacha::rand_core::SeedableRng;

    use crate::clock::ManualClock;
    use crate::store::Store;

    const TASK: &str = r#"
        id = "t"
        rounds = 1
        [model]
        input_shape = [3]
        num_classes = 2
        layers = [{ type = "linear", out = 2 }]
        [training]
        epochs = 1
        batch_size = 4
        learning_rate = 0.1
        [selection]
        clients_per_round = 4
        over_selection = 0.5
        window_secs = 30
        [secagg]
        dropout_fraction = 0.25
        # These fake devices have no identity keys; the check is covered by the live tests.
        consistency_check = false
    "#;

    struct Harness {
        scheduler: Arc<Scheduler>,
        clock: Arc<ManualClock>,
        events: broadcast::Receiver<TaskEvent>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Harness {
        start_with(TASK).await
    }

    /// A scheduler on a manual clock running the task `toml`.
    async fn start_with(toml: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let scheduler = Scheduler::new(
            AsyncStore(Arc::new(Store::open_in_memory().unwrap())),
            Arc::new(Checkpoints::open(dir.path()).unwrap()),
            SchedulerOptions {
                clock: clock.clone(),
                ..SchedulerOptions::default()
            },
            None,
            Arc::new(Metrics::default()),
        );
        let events = scheduler.subscribe();
        let def = TaskDefinition::from_toml(toml).unwrap();
        scheduler
            .store
            .call({
                let (id, text) = (def.id.clone(), def.to_toml().unwrap());
                move |s| s.put_task(&id, &text, TaskState::Running, 1_000)
            })
            .await
            .unwrap();
        scheduler.start_task(def).unwrap();
        Harness {
            scheduler,
            clock,
            events,
            _dir: dir,
        }
    }

    /// What a fake device saw of its round.
    #[derive(Debug, Default)]
    struct Seen {
        configs: usize,
        /// The primitive suite of each round config received.
        suites: Vec<CipherSuite>,
        stopped: bool,
        result: Option<RoundResult>,
    }

    /// Checks in connection `conn` (retrying while the task loads its log) and runs a device
    /// that answers every round message at once, with an all-zero update of weight 1.
    async fn device(h: &Harness, conn: ConnId) -> tokio::task::JoinHandle<Seen> {
        device_of(h, conn, &format!("account{conn}")).await
    }

    /// [`device`] for connection `conn` of `account`.
    async fn device_of(h: &Harness, conn: ConnId, account: &str) -> tokio::task::JoinHandle<Seen> {
        device_advertising(h, conn, account, Vec::new()).await
    }

    /// [`device_of`] for a device that advertised `suites` in its hello (empty: a device that
    /// predates negotiation, ChaCha20 only); its round state machine accepts only those.
    async fn device_advertising(
        h: &Harness,
        conn: ConnId,
        account: &str,
        suites: Vec<CipherSuite>,
    ) -> tokio::task::JoinHandle<Seen> {
        let (outbox, mut rx) = mpsc::channel(64);
        let seat: Arc<Mutex<Option<Seat>>> = Arc::default();
        let member = Member {
            outbox,
            seat: seat.clone(),
            account: account.to_string(),
            known_identity_head: None,
            has_device_key: false,
            secagg_suites: suites.clone(),
        };
        let options = ClientOptions {
            suites: if suites.is_empty() {
                vec![CipherSuite::X25519HkdfSha256ChaCha20V1]
            } else {
                suites
            },
            ..ClientOptions::default()
        };
        loop {
            match h
                .scheduler
                .check_in(conn, account, None, None, member.clone())
            {
                CheckInResponse::Accepted { .. } => break,
                CheckInResponse::ComeBackLater { reason, .. } => {
                    assert_eq!(reason, "the task is starting");
                    tokio::task::yield_now().await;
                }
                other => panic!("unexpected check-in answer {other:?}"),
            }
        }
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut round: Option<(ClientRound, Quantizer)> = None;
            while let Some(message) = rx.recv().await {
                let Some(s) = seat.lock().unwrap().clone() else {
                    if let ServerMessage::RoundResult(r) = message {
                        seen.result = Some(r);
                        break;
                    }
                    continue;
                };
                let reply = match (message, round.as_mut()) {
                    (ServerMessage::RoundConfig(c), None) => {
                        seen.configs += 1;
                        seen.suites.push(c.params.suite);
                        let q = Quantizer::new(c.params.encoding).unwrap();
                        let (client, first) =
                            ClientRound::start_with(c, [conn as u8; 32], options.clone()).unwrap();
                        round = Some((client, q));
                        Some(first)
                    }
                    (m, _) if is_stop(&m) => {
                        seen.stopped = true;
                        None
                    }
                    (m, Some((client, q))) => match client.handle(m) {
                        Ok(ClientStep::Send(m)) => Some(m),
                        Ok(ClientStep::NeedInput) => {
                            let len = client.params().vector_len as usize - 1;
                            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(conn);
                            let input = q.encode(&vec![0.0; len], 1, &mut rng).unwrap();
                            client.provide_input(input).unwrap()
                        }
                        Ok(ClientStep::Finished(_)) | Err(_) => None,
                    },
                    _ => None,
                };
                if let Some(message) = reply
                    && !seen.stopped
                {
                    let _ = s
                        .inputs
                        .send(RoundInput::Message {
                            from: s.index,
                            message,
                        })
                        .await;
                }
            }
            seen
        })
    }

    async fn completed(h: &mut Harness) -> (u32, u32) {
        match h.events.recv().await.unwrap() {
            TaskEvent::RoundCompleted {
                selected,
                contributors,
                ..
            } => (selected, contributors),
            TaskEvent::RoundAborted { reason, .. } => panic!("aborted: {reason}"),
            TaskEvent::TaskFinished { .. } => panic!("finished without a round"),
        }
    }

    /// Draining while a task waits for its cohort stops the loop at once: on the manual clock
    /// the grace period never ends, so returning at all shows that the loop itself stopped.
    #[tokio::test]
    async fn drain_stops_a_task_waiting_for_its_cohort() {
        let h = start().await;
        let outcomes = h.scheduler.drain(Duration::from_secs(60)).await;
        assert_eq!(
            outcomes,
            vec![DrainOutcome::Stopped {
                task: "t".into(),
                published: 0
            }]
        );
        assert!(h.scheduler.lock_tasks().is_empty());
        assert_eq!(
            outcomes[0].to_string(),
            "task t: stopped before its first round"
        );
    }

    /// After a published round the drain reports it, and the loop starts no other round.
    #[tokio::test]
    async fn drain_after_a_round_reports_the_published_round() {
        let mut h = start_with(&TASK.replace("rounds = 1", "rounds = 3")).await;
        let mut devices = Vec::new();
        for conn in 1..=6 {
            devices.push(device(&h, conn).await);
        }
        assert_eq!(completed(&mut h).await, (6, 4));
        let outcomes = h.scheduler.drain(Duration::from_secs(60)).await;
        assert_eq!(
            outcomes,
            vec![DrainOutcome::Stopped {
                task: "t".into(),
                published: 1
            }]
        );
        assert!(
            outcomes[0].to_string().contains("stopped after round 1"),
            "{}",
            outcomes[0]
        );
        assert!(
            h.events.try_recv().is_err(),
            "no other round may start once the coordinator drains"
        );
    }

    /// Four of six seats filled: no round until the selection window has passed on the
    /// scheduler's clock, then a round of four (at least the minimum cohort, ⌈0.75 · 4⌉ = 3).
    #[tokio::test]
    async fn the_window_starts_a_smaller_round_on_the_clock() {
        let mut h = start().await;
        let mut devices = Vec::new();
        for conn in 1..=4 {
            devices.push(device(&h, conn).await);
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        h.clock.advance(29);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            h.events.try_recv().is_err(),
            "no round may start before the window ends"
        );
        assert!(devices.iter().all(|d| !d.is_finished()));
        h.clock.advance(1);
        assert_eq!(completed(&mut h).await, (4, 4));
        for d in devices {
            let seen = d.await.unwrap();
            assert_eq!(seen.configs, 1);
            assert!(!seen.stopped);
            assert!(matches!(seen.result, Some(RoundResult::Completed { .. })));
        }
    }

    /// The round's mask PRG is one every member advertised: AES-128-CTR when all four list it,
    /// ChaCha20 as soon as one member does not (here one that advertised nothing, as devices
    /// before negotiation did). Every member accepts the suite and the round completes.
    #[tokio::test]
    async fn the_round_uses_a_suite_every_member_advertised() {
        let both = vec![
            CipherSuite::X25519HkdfSha256Aes128CtrV1,
            CipherSuite::X25519HkdfSha256ChaCha20V1,
        ];
        for (odd_one, expected) in [
            (both.clone(), CipherSuite::X25519HkdfSha256Aes128CtrV1),
            (Vec::new(), CipherSuite::X25519HkdfSha256ChaCha20V1),
        ] {
            let mut h = start().await;
            let mut devices = Vec::new();
            for conn in 1..=3 {
                let account = format!("account{conn}");
                devices.push(device_advertising(&h, conn, &account, both.clone()).await);
            }
            devices.push(device_advertising(&h, 4, "account4", odd_one).await);
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            h.clock.advance(30);
            assert_eq!(completed(&mut h).await, (4, 4));
            for d in devices {
                let seen = d.await.unwrap();
                assert_eq!(seen.suites, vec![expected]);
                assert!(matches!(seen.result, Some(RoundResult::Completed { .. })));
            }
        }
    }

    /// Six of six seats filled: the round starts at once, sums the first four masked inputs
    /// and tells the other two members to stop.
    #[tokio::test]
    async fn over_selection_cuts_off_at_the_target() {
        let mut h = start().await;
        let mut devices = Vec::new();
        for conn in 1..=6 {
            devices.push(device(&h, conn).await);
        }
        assert_eq!(completed(&mut h).await, (6, 4));
        let mut stopped = 0;
        for d in devices {
            let seen = d.await.unwrap();
            stopped += usize::from(seen.stopped);
            assert!(seen.result.is_some());
        }
        assert_eq!(stopped, 2);
    }

    /// Checks in connection `conn` as a device that never answers (its connection stays open):
    /// the receiver fires when its round config arrives, i.e. once its round has started.
    async fn silent_device(h: &Harness, conn: ConnId) -> tokio::sync::oneshot::Receiver<()> {
        let (outbox, mut rx) = mpsc::channel(64);
        let member = Member {
            outbox,
            seat: Arc::default(),
            account: format!("account{conn}"),
            known_identity_head: None,
            has_device_key: false,
            secagg_suites: Vec::new(),
        };
        while let CheckInResponse::ComeBackLater { .. } =
            h.scheduler
                .check_in(conn, &member.account.clone(), None, None, member.clone())
        {
            tokio::task::yield_now().await;
        }
        let (started, on_start) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut started = Some(started);
            while let Some(message) = rx.recv().await {
                if let ServerMessage::RoundConfig(_) = message
                    && let Some(s) = started.take()
                {
                    let _ = s.send(());
                }
            }
        });
        on_start
    }

    /// The round's deadlines run on the scheduler's clock: a member that never answers holds
    /// R0 up for as long as the manual clock stands still, and once it is advanced to R0's
    /// deadline (15 s) the round goes on with the five others and sums the first four.
    #[tokio::test]
    async fn a_silent_member_holds_r0_until_its_deadline_on_the_scheduler_clock() {
        let mut h = start().await;
        let mut devices = Vec::new();
        for conn in 1..=5 {
            devices.push(device(&h, conn).await);
        }
        let started = silent_device(&h, 6).await;
        started.await.expect("the round starts with all six");
        // Every other task answers at once on this one-thread runtime.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            h.events.try_recv().is_err(),
            "R0 waits for the silent member while the clock stands still"
        );
        h.clock.advance(14);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(h.events.try_recv().is_err(), "R0's deadline is 15 s");
        h.clock.advance(1);
        assert_eq!(completed(&mut h).await, (6, 4));
        for d in devices {
            assert!(d.await.unwrap().result.is_some());
        }
    }

    /// A task with central DP whose budget fits two rounds (of its five): two rounds run, each
    /// round-log entry records the ε spent so far (growing, in the hash-chained params), and
    /// the task then ends in state "privacy budget exhausted" without starting a third.
    #[tokio::test]
    async fn the_privacy_budget_stops_the_task() {
        let task = TASK.replace("rounds = 1", "rounds = 5")
            + "\n[privacy]\nmode = \"central\"\nnoise_multiplier = 2.0\nrounds = 2\n\
               delta = 1e-3\n[privacy.clip]\nnorm = 1.0\n";
        let mut h = start_with(&task).await;
        for round in 0..2u8 {
            let mut devices = Vec::new();
            for conn in 1..=6 {
                devices.push(device(&h, u64::from(round) * 10 + conn).await);
            }
            assert_eq!(completed(&mut h).await, (6, 4));
            for d in devices {
                d.await.unwrap();
            }
        }
        let exhausted = match h.events.recv().await.unwrap() {
            TaskEvent::TaskFinished {
                privacy_budget_exhausted,
                ..
            } => privacy_budget_exhausted,
            other => panic!("expected the end of the task, got {other:?}"),
        };
        let plan = TaskDefinition::from_toml(&task)
            .unwrap()
            .privacy_plan(8, None)
            .unwrap()
            .unwrap();
        let spent = exhausted.expect("ended by the privacy budget");
        assert!((spent - plan.epsilon_after(2)).abs() < 1e-12, "{spent}");
        let store = h.scheduler.store.clone();
        let (state, entries) = store
            .call(|s| {
                let state = s.task("t")?.map(|t| t.state);
                let entries = s
                    .round_log()
                    .verify(&TaskId("t".into()))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok::<_, StoreError>((state, entries))
            })
            .await
            .unwrap();
        assert_eq!(state, Some(TaskState::BudgetExhausted));
        assert_eq!(state.unwrap().as_str(), "privacy budget exhausted");
        // The genesis entry and two rounds; ε after each round is in its entry.
        let eps: Vec<Option<f64>> = entries
            .iter()
            .map(|e| publish::epsilon_spent_of(&e.entry.params))
            .collect();
        assert_eq!(
            eps,
            vec![
                None,
                Some(plan.epsilon_after(1)),
                Some(plan.epsilon_after(2))
            ]
        );
        assert!(plan.epsilon_after(1) < plan.epsilon_after(2));
        // The loop is gone: a device checking in now is not selected for any round.
        for _ in 0..10_000 {
            if h.scheduler.lock_tasks().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (outbox, _rx) = mpsc::channel(4);
        let member = Member {
            outbox,
            seat: Arc::default(),
            account: "late".into(),
            known_identity_head: None,
            has_device_key: false,
            secagg_suites: Vec::new(),
        };
        assert!(!matches!(
            h.scheduler.check_in(99, "late", None, None, member),
            CheckInResponse::Accepted { .. }
        ));
    }

    /// One account checking in from many connections holds one seat: six connections of one
    /// account and three other accounts make a cohort of four, not nine, and the account's seat
    /// is its latest connection's.
    #[tokio::test]
    async fn one_account_holds_one_seat_however_many_connections() {
        let mut h = start().await;
        let mut sybil = Vec::new();
        for conn in 1..=6 {
            sybil.push(device_of(&h, conn, "mallory").await);
        }
        let mut honest = Vec::new();
        for conn in 10..=12 {
            honest.push(device(&h, conn).await);
        }
        assert_eq!(lock(&h.scheduler.lock_tasks()["t"].pool).len(), 4);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        h.clock.advance(30);
        assert_eq!(completed(&mut h).await, (4, 4));
        for d in honest {
            assert_eq!(d.await.unwrap().configs, 1);
        }
        let mut configs = 0;
        for (i, d) in sybil.into_iter().enumerate() {
            if i < 5 {
                // Replaced before the round: never seated; its outbox stays open, so stop it.
                d.abort();
                continue;
            }
            configs += d.await.unwrap().configs;
        }
        assert_eq!(
            configs, 1,
            "the account's latest connection holds its one seat"
        );
    }

    /// A member of `account` on a fresh connection, with the receiver of its outbox.
    fn test_member(account: &str) -> (Member, mpsc::Receiver<ServerMessage>) {
        let (outbox, rx) = mpsc::channel(64);
        let member = Member {
            outbox,
            seat: Arc::default(),
            account: account.into(),
            known_identity_head: None,
            has_device_key: false,
            secagg_suites: Vec::new(),
        };
        (member, rx)
    }

    /// Task "t"'s round-log entry of `round` (unsigned; each round's input is the previous
    /// round's output).
    fn test_entry(round: u64) -> RoundLogEntry {
        RoundLogEntry {
            task: TaskId("t".into()),
            round: RoundId(round),
            participants: 0,
            input_weights: ContentHash([round as u8; 32]),
            output_weights: ContentHash([round as u8 + 1; 32]),
            params: Default::default(),
            created_at: 0,
            prev: ContentHash([0; 32]),
            hash: ContentHash::of(&round.to_be_bytes()),
            signature: Default::default(),
        }
    }

    #[test]
    fn the_log_after_a_known_head() {
        let entry = test_entry;
        let log: Vec<_> = (0..5).map(entry).collect();
        let head = |i: usize| RoundLogHead {
            round: log[i].round,
            hash: log[i].hash,
        };
        assert_eq!(log_after(&log, None), Ok(&log[..]));
        assert_eq!(log_after(&log, Some(&head(2))), Ok(&log[3..]));
        assert!(log_after(&log, Some(&head(4))).unwrap().is_empty());
        assert_eq!(
            log_after(
                &log,
                Some(&RoundLogHead {
                    round: RoundId(2),
                    hash: ContentHash([7; 32])
                })
            ),
            Err(()),
            "a head not on the chain is unknown"
        );
    }

    /// A device more than 256 entries behind is sent the log 256 entries at a time and selected
    /// only once caught up; a head not on the chain is answered as unknown.
    #[tokio::test]
    async fn a_device_far_behind_catches_up_before_it_is_selected() {
        let h = start().await;
        let state = h.scheduler.lock_tasks()["t"].clone();
        while lock(&state.log).is_none() {
            tokio::task::yield_now().await;
        }
        let long: Vec<RoundLogEntry> = (0..600u64)
            .map(|r| RoundLogEntry {
                task: TaskId("t".into()),
                round: RoundId(r),
                participants: 0,
                input_weights: ContentHash([0; 32]),
                output_weights: ContentHash([0; 32]),
                params: Default::default(),
                created_at: 0,
                prev: ContentHash([0; 32]),
                hash: ContentHash::of(&r.to_be_bytes()),
                signature: Default::default(),
            })
            .collect();
        // All 600 in memory (the tail's bound is above them here).
        *lock(&state.log) = Some(LogTail::new(long.clone(), 1_000));
        let (member, _rx) = test_member("ada");
        let head = |e: &RoundLogEntry| RoundLogHead {
            round: e.round,
            hash: e.hash,
        };
        let mut known = None;
        let mut batches = Vec::new();
        let accepted = loop {
            match h.scheduler.check_in(1, "ada", None, known, member.clone()) {
                CheckInResponse::LogCatchUp { task, entries } => {
                    assert_eq!(task.0, "t");
                    known = Some(head(entries.last().unwrap()));
                    batches.push(entries);
                }
                CheckInResponse::Accepted { log, .. } => break log,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![256, 256]
        );
        assert_eq!(batches[0][..], long[..256]);
        assert_eq!(batches[1][..], long[256..512]);
        assert_eq!(accepted[..], long[512..], "the rest with the plan");
        assert_eq!(lock(&state.pool).len(), 1, "selected only once caught up");
        match h.scheduler.check_in(
            2,
            "bob",
            None,
            Some(RoundLogHead {
                round: RoundId(3),
                hash: ContentHash([9; 32]),
            }),
            member.clone(),
        ) {
            CheckInResponse::UnknownLogHead {
                head, chain_round, ..
            } => {
                assert_eq!(head.round, RoundId(3));
                assert_eq!(chain_round, RoundId(599));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            lock(&state.pool).len(),
            1,
            "an unknown head is not selected"
        );
    }

    /// Issue 14 (soak): a check-in whose entries were read before a round was published is not
    /// selected for the next round (which starts from the model of an entry it was not sent);
    /// the same check-in with the new entry is.
    #[tokio::test]
    async fn a_check_in_that_read_the_log_before_a_round_was_published_is_not_selected() {
        let h = start().await;
        let state = h.scheduler.lock_tasks()["t"].clone();
        while lock(&state.log).is_none() {
            tokio::task::yield_now().await;
        }
        let entry = test_entry;
        *lock(&state.log) = Some(LogTail::new((1..=3).map(entry).collect(), 1_000));
        // The check-in reads the entries up to round 3 ...
        let read = lock(&state.log).as_ref().unwrap().last_round();
        assert_eq!(read, RoundId(3));
        // ... and round 4 is published before it asks for a seat: its entry, then selection
        // reopens (the order of `run_task`).
        lock(&state.log).as_mut().unwrap().push(entry(4));
        lock(&state.selector).round_finished(Duration::ZERO);
        let now = h.scheduler.clock().monotonic();
        let (member, _rx) = test_member("ada");
        let seat = (1, member);
        assert_eq!(
            select_if_current(&state, "ada", read, now, 0.5, seat.clone()),
            None
        );
        assert_eq!(lock(&state.selector).pooled(), 0, "no seat taken");
        assert!(lock(&state.pool).is_empty(), "nothing pooled");
        assert_eq!(
            select_if_current(&state, "ada", RoundId(4), now, 0.5, seat),
            Some(CheckInDecision::Selected),
            "with the new entry it is selected"
        );
        // Selected and pooled under the same locks: the round's loop finds it in both.
        assert!(
            lock(&state.pool).contains_key("ada"),
            "the seat is in the pool"
        );
    }

    /// Issue 14 (soak): a task keeps only the newest round-log entries in memory (between
    /// `keep` and twice as many, whatever the number of rounds); a device behind them, or new,
    /// is served the same entries from the database, and a head on no chain is still unknown.
    #[tokio::test]
    async fn the_log_in_memory_is_bounded_and_older_entries_come_from_the_database() {
        let h = start().await;
        let state = h.scheduler.lock_tasks()["t"].clone();
        while lock(&state.log).is_none() {
            tokio::task::yield_now().await;
        }
        let task = TaskId("t".into());
        let store = h.scheduler.store.0.clone();
        // Rounds 1..=600 appended to the stored chain after round 0 (the initial model).
        for round in 1..=600u64 {
            let previous = store.round_log().entries(&task).unwrap().pop().unwrap();
            store
                .round_log()
                .append(NewLogEntry {
                    task: task.clone(),
                    round: RoundId(round),
                    participants: 3,
                    input_weights: previous.entry.output_weights,
                    output_weights: ContentHash::of(&round.to_be_bytes()),
                    params: b"{}".to_vec(),
                    created_at: round as i64,
                })
                .unwrap();
        }
        let chain: Vec<RoundLogEntry> = store
            .round_log()
            .verify(&task)
            .unwrap()
            .iter()
            .map(|e| e.to_wire())
            .collect();
        assert_eq!(chain.len(), 601);
        let keep = 8;
        let mut tail = LogTail::new(Vec::new(), keep);
        for e in &chain {
            tail.push(e.clone());
            assert!(tail.entries.len() <= 2 * keep, "{}", tail.entries.len());
        }
        assert!(tail.truncated);
        assert_eq!(tail.entries.last(), chain.last());
        *lock(&state.log) = Some(tail);

        let (member, _rx) = test_member("ada");
        let head = |e: &RoundLogEntry| RoundLogHead {
            round: e.round,
            hash: e.hash,
        };
        // A new device: the whole chain, 256 at a time, from the database.
        let mut known = None;
        let mut received = Vec::new();
        loop {
            match h.scheduler.check_in(1, "ada", None, known, member.clone()) {
                CheckInResponse::LogCatchUp { entries, .. } => {
                    assert_eq!(entries.len(), 256);
                    known = Some(head(entries.last().unwrap()));
                    received.extend(entries);
                }
                CheckInResponse::Accepted { log, .. } => {
                    received.extend(log);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(received, chain, "the same entries as a log held whole");
        // A device two rounds behind is served from memory.
        match h
            .scheduler
            .check_in(2, "bob", None, Some(head(&chain[598])), member.clone())
        {
            CheckInResponse::Accepted { log, .. } => assert_eq!(log[..], chain[599..]),
            other => panic!("{other:?}"),
        }
        // A head on no chain is unknown, in memory or not.
        let stranger = RoundLogHead {
            round: RoundId(3),
            hash: ContentHash([9; 32]),
        };
        match h
            .scheduler
            .check_in(3, "cy", None, Some(stranger), member.clone())
        {
            CheckInResponse::UnknownLogHead { chain_round, .. } => {
                assert_eq!(chain_round, RoundId(600))
            }
            other => panic!("{other:?}"),
        }
    }

    /// A connection that closes leaves its account's seat only if it still holds it.
    #[tokio::test]
    async fn an_old_connection_leaving_keeps_the_newer_seat() {
        let h = start().await;
        let _a = device_of(&h, 1, "ada").await;
        let _b = device_of(&h, 2, "ada").await;
        h.scheduler.leave(1, "ada");
        assert_eq!(lock(&h.scheduler.lock_tasks()["t"].pool).len(), 1);
        h.scheduler.leave(2, "ada");
        assert_eq!(lock(&h.scheduler.lock_tasks()["t"].pool).len(), 0);
    }

    /// A task with the consistency check turns away an account without a device identity key
    /// (enrolled by an older client) with a reason that says what to do, and admits one with a
    /// key.
    #[tokio::test]
    async fn accounts_without_a_device_key_are_turned_away_from_checked_rounds() {
        let h = start_with(
            &TASK
                .replace("consistency_check = false", "consistency_check = true")
                // The check needs cohorts of at least 4 at this dropout, without over-selection.
                .replace("dropout_fraction = 0.25", "dropout_fraction = 0.1")
                .replace("over_selection = 0.5", "over_selection = 0.0"),
        )
        .await;
        let member = |has_device_key| {
            let (outbox, _rx) = mpsc::channel(4);
            Member {
                outbox,
                seat: Arc::default(),
                account: "old".into(),
                known_identity_head: None,
                has_device_key,
                secagg_suites: Vec::new(),
            }
        };
        let answer = loop {
            match h.scheduler.check_in(1, "old", None, None, member(false)) {
                CheckInResponse::ComeBackLater { reason, .. }
                    if reason == "the task is starting" =>
                {
                    tokio::task::yield_now().await;
                }
                other => break other,
            }
        };
        match answer {
            CheckInResponse::ComeBackLater { reason, .. } => assert_eq!(reason, NO_DEVICE_KEY),
            other => panic!("expected to be turned away, got {other:?}"),
        }
        assert!(matches!(
            h.scheduler.check_in(2, "new", None, None, member(true)),
            CheckInResponse::Accepted { .. }
        ));
    }
}
