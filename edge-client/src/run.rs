//! The contributor's loop: connect, log in, check in, and take part in rounds, reconnecting with
//! exponential backoff and jitter when the connection fails.
//!
//! On `RoundConfig` the client fetches the global weights by hash (from its cache in the state
//! dir, or on a separate stream from the coordinator, verified against the hash), starts local
//! training on a blocking thread while the key phases R0 and R1 run, and when the server asks
//! for the masked input it encodes the update with the round's `Quantizer` (weight = number of
//! examples, capped by the round) and hands it to its `ClientRound`. Only the masked vector
//! leaves the device.
//!
//! When the round config asks for federated evaluation (`evaluate`), the training thread first
//! evaluates the *received* global weights on the local data, and the client inserts the
//! clipped metrics (examples, correct answers, loss; `cohort_task::evaluation`) into the vector
//! it masks, so the coordinator learns only their sums over the round. Nothing about them is
//! sent in the clear, and the check-in carries no example count. A failed evaluation is logged
//! and contributes zeros (the device is not counted); it never costs the round.
//!
//! Before fetching the weights, the client checks them against the round log sent with the
//! plan ([`crate::log_check`]): the chain must be intact, continue the head this device verified
//! before, and its last entry must name the round's weights. A mismatch stops the client with
//! [`RunError::Log`].
//!
//! When the connection fails mid-round (the coordinator restarted, the network dropped), the
//! local training thread is joined so the trainer survives into the next round.
//!
//! Two layers: `attempt`-level functions (crate-internal) make one check-in on a logged-in
//! `Session` and run the round when selected; [`run`] (and [`crate::client::EdgeClient`])
//! loop over them, waiting while the device may not train or is not selected. Every wait and
//! every await of the coordinator also listens for a stop request, and the training thread's
//! cancel flag is the stop flag, so a stop lands within one training step. When local training
//! fails (the device's examples do not fit the task, the host's source threw), the round is
//! abandoned at once: the connection closes, nothing is uploaded, and the coordinator counts a
//! dropout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::secagg::client::ClientOptions;
use cohort_aggregation::secagg::{ClientRound, ClientStep, SigningKey};
use cohort_net::quinn::{Connection, SendStream};
use cohort_net::{
    ClientTransport, FramedStream, NetError, read_message, receive_weights, write_message,
};
use cohort_protocol::{
    CheckIn, CheckInResponse, ClientMessage, ContentHash, DEFAULT_MAX_FRAME_LEN, ErrorCode,
    FetchWeights, FloatVector, RoundConfig, RoundId, RoundLogEntry, RoundResult, ServerMessage,
    TaskId, TaskPlan,
};
use cohort_task::Attempt;
use cohort_task::evaluation::{EvaluationLayout, LocalEvaluation};
use rand::RngCore;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::eligibility::{EligibilityPolicy, Ineligible};
use crate::enroll::{self, EnrollError};
use crate::host::{
    DeviceReading, DeviceState, FileSecretStore, HostError, LinuxDevice, SecretStore,
};
use crate::identity_check::IdentityCheckError;
use crate::log_check::LogCheckError;
use crate::progress::{Phase, ProgressSink, StopSignal};
use crate::testing_hooks::{Fault, Hooks, ProvidedInput};
use crate::trainer::{LocalMetrics, LocalUpdate, TrainControl, TrainError, Trainer};

/// The largest model a client accepts, in elements.
pub const MAX_MODEL_LEN: usize = 1 << 28;

/// The longest wait a coordinator's `retry_after_ms` can ask for (ten minutes); longer
/// requests are cut to it, so a coordinator cannot park a device for days.
pub const MAX_RETRY_AFTER_MS: u64 = 600_000;

/// Reconnection backoff: `initial · 2^attempt`, capped at `max`, times a jitter in [0.5, 1.5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before reconnection attempt `attempt` (0-based), with `jitter` in [0, 1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
    }
}

/// How the client runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The coordinator's address.
    pub server: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// The state dir (cached weights, verified round-log heads; the credentials too unless the
    /// host keeps them in its own [`SecretStore`]).
    pub state_dir: PathBuf,
    /// The account password.
    pub password: String,
    /// A task to work on, or any.
    pub task: Option<TaskId>,
    /// When the device may train.
    pub eligibility: EligibilityPolicy,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Stop after this many completed rounds (`None`: until stopped, or until the connection
    /// fails `max_failures` times in a row).
    pub max_rounds: Option<u32>,
    /// Give up after this many failed connection attempts in a row.
    pub max_failures: u32,
    /// Differential privacy: take part only in tasks with DP whose ε budget is at most this
    /// (`--max-epsilon`); `None`: any task ([`crate::privacy_check`]).
    pub max_epsilon: Option<f64>,
    /// How long to wait before reading the device state again when it may not train.
    pub eligibility_recheck: Duration,
    /// Return once the task this device worked on has finished (the coordinator says no task
    /// is running) instead of waiting for a new one.
    pub until_task_ends: bool,
    /// Take part in rounds without the consistency check, where the device checks no identity
    /// keys and a coordinator that deviates from the protocol can learn its update (see the
    /// README's threat model). Off by default: such rounds are refused.
    pub dangerous_allow_rounds_without_consistency_check: bool,
}

impl RunConfig {
    /// A configuration with the defaults: any task, the default eligibility policy and backoff,
    /// no round limit, 20 failed connections in a row at most, the device state read again
    /// every minute, and the certificate checked against the name `localhost`.
    pub fn new(server: SocketAddr, state_dir: PathBuf, password: String) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            state_dir,
            password,
            task: None,
            eligibility: EligibilityPolicy::default(),
            backoff: Backoff::default(),
            max_rounds: None,
            max_failures: 20,
            max_epsilon: None,
            eligibility_recheck: Duration::from_secs(60),
            until_task_ends: false,
            dangerous_allow_rounds_without_consistency_check: false,
        }
    }
}

/// What the client did in one round, printed for the contributor.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    /// The task.
    pub task: TaskId,
    /// The round.
    pub round_id: RoundId,
    /// Examples trained on.
    pub num_examples: u64,
    /// Training loss of the last epoch.
    pub loss: f32,
    /// Wall time of local training, reading the examples included (zero when training did not
    /// finish). The work a host's `ExampleSource` adds shows here.
    pub training: Duration,
    /// How the round ended.
    pub result: RoundResult,
}

/// The outcome of one check-in.
#[derive(Clone, Debug, PartialEq)]
pub enum Participation {
    /// The device may not train now; it did not check in.
    NotEligible {
        /// What the device reported.
        device: DeviceReading,
        /// The first reason.
        reason: Ineligible,
    },
    /// The coordinator did not select the device this time.
    NotSelected {
        /// When to check in again.
        retry_after: Duration,
        /// Why, for humans.
        reason: String,
    },
    /// No task is running. When `finished` names a task, it is the task this device worked
    /// on, which has ended since: "task finished; waiting for a new task".
    NoTask {
        /// When to check in again.
        retry_after: Duration,
        /// The task that finished, the first time the device hears of it.
        finished: Option<TaskId>,
    },
    /// The device took part in a round.
    Contributed(Contribution),
    /// The device was selected but left the round before it began (the round ended first).
    Left,
}

/// Why the client stopped.
#[derive(Debug, Error)]
pub enum RunError {
    /// Enrollment or login failed.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// The transport failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The coordinator broke the protocol or refused us.
    #[error("the coordinator: {0}")]
    Protocol(String),
    /// Local training failed (the round was abandoned; nothing was uploaded).
    #[error("{0}; the round was abandoned and nothing was uploaded")]
    Training(#[from] TrainError),
    /// The host's device-state callback failed.
    #[error("reading the device state failed: {0}; the device did not check in")]
    DeviceState(HostError),
    /// The weights cache failed.
    #[error("weights cache in {path}: {source}; check the state directory's permissions")]
    Cache {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator served weights its round log does not name, or rewrote its log.
    #[error(transparent)]
    Log(#[from] LogCheckError),
    /// The coordinator's ledger answer was refused (see [`crate::credit`]).
    #[error(transparent)]
    Credit(#[from] crate::credit::CreditError),
    /// The round's identity keys were refused (see [`crate::identity_check`]).
    #[error(transparent)]
    Identity(#[from] IdentityCheckError),
    /// The coordinator asked for a round without the consistency check, which this device
    /// refuses ([`RunConfig::dangerous_allow_rounds_without_consistency_check`]).
    #[error(
        "the coordinator asked for a round without the consistency check, in which a coordinator \
         that deviates from the protocol could learn this device's update; refusing it. Ask the \
         model owner to set secagg.consistency_check = true"
    )]
    ConsistencyCheckRequired,
    /// The task's differential privacy is refused (above the owner's limit, none, or a round
    /// with less noise than declared).
    #[error("differential privacy: {0}")]
    Privacy(#[from] crate::privacy_check::PrivacyRefusal),
    /// A fault was injected (tests).
    #[error("fault injected: {0:?}")]
    Fault(Fault),
    /// A stop was requested.
    #[error("stopped on request")]
    Stopped,
    /// Too many failed connection attempts.
    #[error("gave up after {0} failed connection attempts; check the coordinator's address")]
    GaveUp(u32),
}

impl RunError {
    /// Whether a new connection may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        matches!(self, RunError::Net(_) | RunError::Protocol(_))
            || matches!(self, RunError::Enroll(EnrollError::Net(_)))
            || matches!(self, RunError::Identity(e) if e.retryable())
            || self.rate_limited().is_some()
    }

    /// The coordinator's retry time when it refused a login as rate limited (busy login slots
    /// or recent failures): the client waits and tries again rather than giving up.
    fn rate_limited(&self) -> Option<Duration> {
        match self {
            RunError::Enroll(EnrollError::Refused(w)) if w.code == ErrorCode::RateLimited => {
                Some(w.retry_after().unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }
}

/// What the embedding program plugs into the loop: the host's device state and secret store,
/// the stop signal, the progress sink, and (tests only) faults.
#[derive(Clone)]
pub(crate) struct Context {
    pub device: Arc<dyn DeviceState>,
    pub secrets: Arc<dyn SecretStore>,
    /// Names the secret store in errors.
    pub secrets_place: String,
    pub stop: StopSignal,
    pub progress: ProgressSink,
    pub hooks: Hooks,
}

impl Context {
    /// The desktop context of [`run`]: Linux readings, credentials in the state directory.
    pub(crate) fn desktop(config: &RunConfig) -> Self {
        Self {
            device: Arc::new(LinuxDevice {
                idle_load_fraction: config.eligibility.idle_load_fraction,
            }),
            secrets: Arc::new(FileSecretStore::new(&config.state_dir)),
            secrets_place: config.state_dir.display().to_string(),
            stop: StopSignal::default(),
            progress: ProgressSink::default(),
            hooks: Hooks::default(),
        }
    }

    /// Waits `d`, or fails with [`RunError::Stopped`] when a stop is requested first.
    pub(crate) async fn pause(&self, d: Duration) -> Result<(), RunError> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.stop.wait() => Err(RunError::Stopped),
        }
    }

    /// Runs `f` unless a stop is requested first.
    pub(crate) async fn unless_stopped<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RunError>>,
    ) -> Result<T, RunError> {
        tokio::select! {
            r = f => r,
            () = self.stop.wait() => Err(RunError::Stopped),
        }
    }
}

/// A logged-in connection: the session stream's sending half and a reader task that queues
/// the coordinator's messages (so waiting for one can be abandoned without losing a frame).
pub(crate) struct Session {
    pub conn: Connection,
    /// The account this session logged in as.
    account: String,
    /// The device's identity key, derived from the device secret the login unsealed.
    identity: SigningKey,
    /// The model owner's round-log key pinned in the credentials, if any.
    log_key: Option<cohort_protocol::chain::VerifyingKey>,
    send: SendStream,
    inbox: mpsc::Receiver<Result<ServerMessage, NetError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Session {
    /// Connects, says hello and logs in with the stored credentials.
    pub(crate) async fn open(
        transport: &ClientTransport,
        config: &RunConfig,
        ctx: &Context,
    ) -> Result<Session, RunError> {
        ctx.progress.phase(Phase::Connecting, None);
        ctx.unless_stopped(async {
            let conn = transport
                .connect(config.server, &config.server_name)
                .await?;
            ctx.progress.set_connection(Some(conn.clone()));
            let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
            enroll::hello(&mut stream).await?;
            let login = enroll::login_stored(
                &conn,
                &mut stream,
                ctx.secrets.as_ref(),
                &ctx.secrets_place,
                &config.password,
            )
            .await?;
            let identity = crate::identity_check::identity_key(&login.device_secret);
            let FramedStream { send, mut recv, .. } = stream;
            let (tx, inbox) = mpsc::channel(16);
            let reader = tokio::spawn(async move {
                loop {
                    let m = read_message::<ServerMessage>(&mut recv, DEFAULT_MAX_FRAME_LEN).await;
                    let end = !matches!(m, Ok(Some(_)));
                    let m = m.and_then(|m| {
                        m.ok_or_else(|| {
                            NetError::Unexpected("the coordinator closed the session stream".into())
                        })
                    });
                    if tx.send(m).await.is_err() || end {
                        return;
                    }
                }
            });
            Ok(Session {
                conn,
                account: login.username,
                identity,
                log_key: login.log_key,
                send,
                inbox,
                reader,
            })
        })
        .await
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<(), NetError> {
        write_message(&mut self.send, msg, DEFAULT_MAX_FRAME_LEN).await
    }

    /// The coordinator's next message (cancel-safe).
    async fn next(&mut self) -> Result<ServerMessage, NetError> {
        match self.inbox.recv().await {
            Some(m) => m,
            None => Err(NetError::Unexpected(
                "the coordinator closed the session stream".into(),
            )),
        }
    }

    /// Closes the connection, telling the coordinator why (it sees a dropout).
    pub(crate) fn close(&mut self, reason: &str) {
        let _ = self.send.finish();
        self.conn.close(0u32.into(), reason.as_bytes());
    }
}

/// This account's credit in `task`, fetched page by page on `session` and checked against the
/// round-log head this device verified for the task ([`crate::credit`]).
pub(crate) async fn fetch_credit(
    session: &mut Session,
    ctx: &Context,
    task: &TaskId,
) -> Result<crate::credit::TaskCredit, RunError> {
    use crate::credit::{CreditError, MAX_PAGES, TaskCredit, verify_page};
    let heads = crate::log_check::load_heads_from(ctx.secrets.as_ref())?;
    let head = heads
        .get(&task.0)
        .and_then(|h| Some((h.round, ContentHash::from_hex(&h.entry)?)))
        .ok_or_else(|| CreditError::NothingVerified {
            task: task.0.clone(),
        })?;
    let mut credit = TaskCredit {
        task: task.clone(),
        account: session.account.clone(),
        verified_up_to: head.0,
        rows: Vec::new(),
        newer_unverified: 0,
    };
    let mut ending_at = Some(head.1);
    let mut pages = 0;
    let mut first = true;
    while let Some(at) = ending_at {
        if pages == MAX_PAGES {
            return Err(CreditError::TooManyPages {
                task: task.0.clone(),
            }
            .into());
        }
        pages += 1;
        session
            .send(&ClientMessage::Ledger(cohort_protocol::LedgerRequest {
                task: task.clone(),
                ending_at: at,
            }))
            .await?;
        let page = loop {
            match ctx
                .unless_stopped(async { Ok(session.next().await?) })
                .await?
            {
                ServerMessage::Ledger(page) => break page,
                // A late result of a round this client left.
                ServerMessage::RoundResult(_) => continue,
                ServerMessage::Error(e) => {
                    return Err(RunError::Protocol(format!(
                        "the ledger of task {task} was refused: {}",
                        e.message
                    )));
                }
                other => {
                    return Err(RunError::Protocol(format!(
                        "expected a ledger page, got {}",
                        other.kind()
                    )));
                }
            }
        };
        if first && !page.newer_entries.is_empty() {
            // Rounds after this device's head: verify their entries as a check-in's catch-up
            // (they must continue the saved head), keep the new head, and ask again from it.
            let head = crate::log_check::record_catch_up(
                ctx.secrets.as_ref(),
                task,
                &page.newer_entries,
                session.log_key.as_ref(),
            )?;
            if head.hash == at {
                return Err(RunError::Protocol(
                    "the coordinator's ledger sent newer entries that do not advance the log"
                        .into(),
                ));
            }
            credit.verified_up_to = head.round.0;
            ending_at = Some(head.hash);
            continue;
        }
        let verified = verify_page(task, &session.account, &at, session.log_key.as_ref(), &page)?;
        if first {
            credit.newer_unverified = page.newer_rows;
            first = false;
        }
        let mut rows = verified.rows;
        rows.append(&mut credit.rows);
        credit.rows = rows;
        ending_at = verified.next;
    }
    Ok(credit)
}

/// Runs until `max_rounds` rounds completed, reconnecting with backoff. Every finished round is
/// reported on `contributions` (when given) and logged.
pub async fn run(
    transport: &ClientTransport,
    config: &RunConfig,
    trainer: Box<dyn Trainer>,
    contributions: Option<mpsc::UnboundedSender<Contribution>>,
) -> Result<u32, RunError> {
    let mut trainer = Some(trainer);
    let ctx = Context::desktop(config);
    drive(
        transport,
        config,
        &ctx,
        &mut trainer,
        &mut None,
        contributions.as_ref(),
    )
    .await
}

/// The loop of [`run`] and [`crate::client::EdgeClient::run_until_stopped`]: check in, wait as
/// told, reconnect with backoff; returns the rounds completed when `max_rounds` is reached,
/// the task ended (`until_task_ends`) or a stop was requested.
pub(crate) async fn drive(
    transport: &ClientTransport,
    config: &RunConfig,
    ctx: &Context,
    trainer: &mut Option<Box<dyn Trainer>>,
    session: &mut Option<Session>,
    contributions: Option<&mpsc::UnboundedSender<Contribution>>,
) -> Result<u32, RunError> {
    let mut completed = 0u32;
    let mut failures = 0u32;
    let mut task: Option<TaskId> = None;
    let mut announced_finish = false;
    let result = loop {
        if config.max_rounds.is_some_and(|m| completed >= m) {
            break Ok(completed);
        }
        let step = async {
            if session.is_none() {
                *session = Some(Session::open(transport, config, ctx).await?);
            }
            let s = session.as_mut().ok_or(RunError::Stopped)?;
            attempt(s, config, ctx, trainer, &mut task).await
        }
        .await;
        let wait = match step {
            Ok(p) => {
                failures = 0;
                ctx.progress.participation(&p);
                match p {
                    Participation::NotEligible { device, reason } => {
                        tracing::info!(?device, %reason, "not eligible to train now; checking again in {:?}", config.eligibility_recheck);
                        config.eligibility_recheck
                    }
                    Participation::NotSelected { retry_after, .. } => retry_after,
                    Participation::NoTask {
                        retry_after,
                        finished,
                    } => {
                        if let Some(t) = finished {
                            tracing::info!(task = %t, "task finished; waiting for a new task");
                            announced_finish = true;
                        }
                        if config.until_task_ends && announced_finish {
                            break Ok(completed);
                        }
                        retry_after
                    }
                    Participation::Left => Duration::ZERO,
                    Participation::Contributed(c) => {
                        if matches!(c.result, RoundResult::Completed { .. }) {
                            completed += 1;
                        }
                        announced_finish = false;
                        tracing::info!(round = %Attempt::from_round_id(c.round_id), examples = c.num_examples, loss = c.loss, result = ?c.result, "round over");
                        let first =
                            completed == 1 && matches!(c.result, RoundResult::Completed { .. });
                        if let Some(tx) = contributions {
                            let _ = tx.send(c);
                        }
                        if first && ctx.hooks.fault == Some(Fault::ReconnectAfterFirstRound) {
                            if let Some(mut s) = session.take() {
                                s.close("simulated disconnect");
                            }
                            failures += 1;
                            config.backoff.delay(0, jitter())
                        } else {
                            Duration::ZERO
                        }
                    }
                }
            }
            Err(RunError::Stopped) => break Ok(completed),
            Err(e) if e.retryable() && trainer.is_some() => {
                if let Some(mut s) = session.take() {
                    s.close("connection error");
                }
                failures += 1;
                if failures > config.max_failures {
                    break Err(RunError::GaveUp(failures));
                }
                let jitter = jitter();
                let mut wait = config.backoff.delay(failures - 1, jitter);
                if let Some(after) = e.rate_limited() {
                    // Never before the coordinator's retry time, spread so that the devices it
                    // turned away do not come back at the same instant.
                    wait = wait.max(after.mul_f64(1.0 + jitter / 2.0));
                }
                tracing::info!(error = %e, ?wait, "connection lost; reconnecting");
                wait
            }
            Err(e) => break Err(e),
        };
        if !wait.is_zero() {
            ctx.progress.phase(Phase::Waiting, None);
            if ctx.pause(wait).await.is_err() {
                break Ok(completed);
            }
        }
    };
    if (result.is_err() || config.max_rounds.is_some_and(|m| completed >= m) || ctx.stop.is_set())
        && let Some(mut s) = session.take()
    {
        s.close("done");
    }
    ctx.progress.phase(
        if ctx.stop.is_set() {
            Phase::Stopping
        } else {
            Phase::Idle
        },
        None,
    );
    result
}

fn jitter() -> f64 {
    f64::from(rand::rngs::OsRng.next_u32()) / f64::from(u32::MAX)
}

/// One check-in on a logged-in session: reads the device state, checks in, and runs the round
/// when selected. On an error the caller drops the session (the round, if any, is abandoned).
pub(crate) async fn attempt(
    session: &mut Session,
    config: &RunConfig,
    ctx: &Context,
    trainer: &mut Option<Box<dyn Trainer>>,
    task: &mut Option<TaskId>,
) -> Result<Participation, RunError> {
    if ctx.stop.is_set() {
        return Err(RunError::Stopped);
    }
    ctx.progress.phase(Phase::CheckingIn, None);
    let device = ctx.device.read().map_err(RunError::DeviceState)?;
    if let Err(reason) = config.eligibility.allows(&device) {
        return Ok(Participation::NotEligible { device, reason });
    }
    // The task checked in for, and the round-log head named: a device far behind the log is
    // sent it in batches (`LogCatchUp`) and checks in again at once, naming the new head.
    let mut check_in_task = config.task.clone();
    let mut known_head = crate::log_check::saved_head(ctx.secrets.as_ref(), config.task.as_ref());
    let (plan, log) = 'check_in: loop {
        session
            .send(&ClientMessage::CheckIn(CheckIn {
                task: check_in_task.clone(),
                device: device.wire(),
                known_head,
                known_identity_head: crate::identity_check::saved_head(&config.state_dir),
            }))
            .await?;
        loop {
            match ctx
                .unless_stopped(async { Ok(session.next().await?) })
                .await?
            {
                ServerMessage::CheckIn(CheckInResponse::Accepted { plan, log }) => {
                    break 'check_in (plan, log);
                }
                ServerMessage::CheckIn(CheckInResponse::LogCatchUp {
                    task: log_task,
                    entries,
                }) => {
                    if entries.is_empty() {
                        return Err(RunError::Protocol(
                            "the coordinator sent an empty round-log catch-up".into(),
                        ));
                    }
                    let head = crate::log_check::record_catch_up(
                        ctx.secrets.as_ref(),
                        &log_task,
                        &entries,
                        session.log_key.as_ref(),
                    )?;
                    tracing::debug!(task = %log_task.0, round = head.round.0, "round log caught up to");
                    check_in_task = Some(log_task);
                    known_head = Some(head);
                    continue 'check_in;
                }
                ServerMessage::CheckIn(CheckInResponse::UnknownLogHead {
                    task: log_task,
                    head,
                    chain_round,
                }) => {
                    tracing::warn!(task = %log_task.0, named = head.round.0, chain = chain_round.0, "the coordinator's round log does not contain the head this device verified");
                    return Err(crate::log_check::unknown_head(&log_task, &head).into());
                }
                ServerMessage::CheckIn(CheckInResponse::NoTask { retry_after_ms }) => {
                    return Ok(Participation::NoTask {
                        retry_after: Duration::from_millis(retry_after_ms.min(MAX_RETRY_AFTER_MS)),
                        finished: task.take(),
                    });
                }
                ServerMessage::CheckIn(CheckInResponse::ComeBackLater {
                    retry_after_ms,
                    reason,
                }) => {
                    return Ok(Participation::NotSelected {
                        retry_after: Duration::from_millis(retry_after_ms.min(MAX_RETRY_AFTER_MS)),
                        reason,
                    });
                }
                // A late result of a round this client left.
                ServerMessage::RoundResult(_) | ServerMessage::Error(_) => continue,
                other => {
                    return Err(RunError::Protocol(format!(
                        "expected a check-in answer, got {}",
                        other.kind()
                    )));
                }
            }
        }
    };
    *task = Some(plan.task.clone());
    crate::log_check::verify_saved_chain(
        ctx.secrets.as_ref(),
        &plan.task,
        &log,
        session.log_key.as_ref(),
    )?;
    let result = match crate::privacy_check::check_task(&plan, &log, config.max_epsilon) {
        Ok(dp) => round(session, config, ctx, trainer, &plan, &log, dp.as_ref()).await,
        Err(e) => Err(e.into()),
    };
    ctx.progress.phase(Phase::Idle, None);
    match result {
        Ok(Some(c)) => Ok(Participation::Contributed(c)),
        Ok(None) => Ok(Participation::Left),
        Err(e) => {
            let why = match &e {
                RunError::Stopped => "stopped",
                RunError::Training(_) => "local training failed",
                _ => "round failed",
            };
            session.close(why);
            Err(e)
        }
    }
}

fn vanish(session: &mut Session, fault: Fault) -> RunError {
    session.close("fault injected");
    RunError::Fault(fault)
}

/// Takes part in one round after being accepted. `None` when the client left it (removed, or
/// the round ended before it started).
#[allow(clippy::too_many_arguments)]
async fn round(
    session: &mut Session,
    config: &RunConfig,
    ctx: &Context,
    trainer: &mut Option<Box<dyn Trainer>>,
    plan: &TaskPlan,
    log: &[RoundLogEntry],
    dp: Option<&crate::privacy_check::DevicePrivacy>,
) -> Result<Option<Contribution>, RunError> {
    // Download the weights the round will most likely start from while the cohort forms, so
    // that the round's first phase is not a download (dropped, hence aborted, on any way out).
    let prefetch = crate::log_check::expected_weights(ctx.secrets.as_ref(), &plan.task, log)
        .map(|hash| Prefetch::start(&session.conn, &config.state_dir, hash));
    let round_config: RoundConfig = loop {
        match ctx
            .unless_stopped(async { Ok(session.next().await?) })
            .await?
        {
            ServerMessage::RoundConfig(c) => break c,
            ServerMessage::RoundResult(_) => continue,
            ServerMessage::Error(e) => return Err(RunError::Protocol(e.message)),
            other => {
                return Err(RunError::Protocol(format!(
                    "expected RoundConfig, got {}",
                    other.kind()
                )));
            }
        }
    };
    if ctx.hooks.fault == Some(Fault::VanishAtR0) {
        return Err(vanish(session, Fault::VanishAtR0));
    }
    let round_id = round_config.round_id;
    let round_no = Some(round_id.0);
    let head = crate::log_check::verify_and_record(
        ctx.secrets.as_ref(),
        &plan.task,
        log,
        session.log_key.as_ref(),
        &round_config.model,
    )?;
    tracing::debug!(task = %plan.task.0, round = head.round, entry = %head.entry, "weights named by the verified round log");
    let quantizer = Quantizer::new(round_config.params.encoding)
        .map_err(|e| RunError::Protocol(format!("unusable encoding: {e}")))?;
    let codec = dp
        .map(|dp| crate::privacy_check::check_round(dp, plan, &round_config))
        .transpose()?;
    ctx.progress.phase(Phase::DownloadingWeights, round_no);
    let global = match prefetch {
        Some(p) if p.hash == round_config.model => ctx.unless_stopped(p.finish()).await?,
        _ => {
            ctx.unless_stopped(fetch_weights(
                &session.conn,
                &config.state_dir,
                round_config.model,
            ))
            .await?
        }
    };
    let evaluate = round_config.evaluate;
    // Where the evaluation goes in the vector: derived from the round's parameters, as the
    // coordinator's plan derived it.
    let layout = evaluate
        .then(|| EvaluationLayout::for_round(&round_config.params))
        .transpose()
        .map_err(|e| RunError::Protocol(format!("unusable evaluation layout: {e}")))?;
    let options = if round_config.params.consistency_check {
        let directory = crate::identity_check::round_directory(
            &config.state_dir,
            &round_config,
            &session.account,
            &session.identity,
        )?;
        ClientOptions {
            identity: Some(session.identity.clone()),
            directory: Some(directory),
            ..ClientOptions::default()
        }
    } else if config.dangerous_allow_rounds_without_consistency_check {
        ClientOptions::default()
    } else {
        return Err(RunError::ConsistencyCheckRequired);
    };
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let (mut client, advertise) = ClientRound::start_with(round_config, *seed, options)
        .map_err(|e| RunError::Protocol(format!("refusing the round: {e}")))?;
    // Train while the key phases run.
    let Some(mut t) = trainer.take() else {
        return Err(RunError::Training(TrainError::Panicked(
            "the trainer was lost in an earlier round".into(),
        )));
    };
    let plan_c = plan.clone();
    // Drawn on its own: nothing of the protocol seed may leave the SecAgg+ state machine.
    let train_seed = rand::rngs::OsRng.next_u64();
    let (eval_tx, eval_rx) = oneshot::channel();
    let (result_tx, mut result_rx) = oneshot::channel::<Result<LocalUpdate, TrainError>>();
    // Microseconds; written by the training thread when it is done.
    let training_us = Arc::new(AtomicU64::new(0));
    let training_us_c = Arc::clone(&training_us);
    let mut evaluation = evaluate.then_some(eval_rx);
    let sink = ctx.progress.clone();
    ctx.progress.report(|p| {
        p.phase = Phase::Training;
        p.round = round_no;
    });
    let control = TrainControl {
        cancel: ctx.stop.flag(),
        progress: Some(Arc::new(move |tp: &cohort_learning::Progress| {
            sink.report(|p| {
                p.phase = Phase::Training;
                p.round = round_no;
                p.epoch = tp.epoch;
                p.epochs = tp.epochs;
                p.step = tp.step;
                p.total_steps = tp.total_steps;
            });
        })),
    };
    let training = tokio::task::spawn_blocking(move || {
        if evaluate {
            // The received model, before local training changes anything.
            let _ = eval_tx.send(t.evaluate(&plan_c, &global));
        }
        let started = Instant::now();
        let r = t.train(&plan_c, &global, train_seed, &control);
        if r.is_ok() {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            training_us_c.store(us, Ordering::Relaxed);
        }
        let _ = result_tx.send(r);
        t
    });
    let mut training = Some(training);
    let mut trained: Option<Result<LocalUpdate, TrainError>> = None;
    // Set once the training result was taken from `result_rx` (a oneshot must not be polled
    // again after it completed).
    let mut received = false;
    let mut outcome: Option<LocalUpdate> = None;
    // Whatever happens below, the training thread is joined afterwards, so that a connection
    // lost mid-round does not lose the trainer.
    let result: Result<RoundResult, RunError> = async {
        session.send(&advertise).await?;
        loop {
            let msg = tokio::select! {
                () = ctx.stop.wait() => return Err(RunError::Stopped),
                r = &mut result_rx, if !received => {
                    received = true;
                    let r = r.unwrap_or_else(|_| Err(TrainError::Panicked("the training thread ended without a result".into())));
                    match r {
                        // The training loop saw the stop flag before this select saw the
                        // stop's notification: the same stop.
                        Err(TrainError::Cancelled) => return Err(RunError::Stopped),
                        // Abandon the round at once: nothing is uploaded.
                        Err(e) => return Err(RunError::Training(e)),
                        Ok(u) => {
                            ctx.progress.phase(Phase::Aggregating, round_no);
                            trained = Some(Ok(u));
                        }
                    }
                    continue;
                }
                m = session.next() => m?,
            };
            let fault = match &msg {
                ServerMessage::ShareKeys(_) => Some(Fault::VanishAtR1),
                ServerMessage::MaskedInputRequest(_) => Some(Fault::VanishAtR2),
                ServerMessage::ConsistencyCheck(_) => Some(Fault::VanishAtConsistencyCheck),
                ServerMessage::Unmask(_) => Some(Fault::VanishAtR3),
                _ => None,
            };
            if fault.is_some() && ctx.hooks.fault == fault {
                // Let the training thread finish so the trainer is not lost.
                if let Some(h) = training.take()
                    && let Ok(t) = h.await
                {
                    *trainer = Some(t);
                }
                return Err(vanish(session, ctx.hooks.fault.unwrap_or(Fault::VanishAtR0)));
            }
            if let ServerMessage::Error(e) = &msg {
                if e.code == ErrorCode::RemovedFromRound {
                    tracing::warn!(round = %Attempt::from_round_id(round_id), reason = %e.message, "removed from the round");
                }
                continue;
            }
            let step = client
                .handle(msg)
                .map_err(|e| RunError::Protocol(format!("{}: {e}", Attempt::from_round_id(round_id))))?;
            match step {
                ClientStep::Send(m) => session.send(&m).await?,
                ClientStep::NeedInput => {
                    let r = match trained.take() {
                        Some(r) => r,
                        None if received => {
                            return Err(RunError::Training(TrainError::Panicked(
                                "the training result was already used".into(),
                            )));
                        }
                        None => ctx
                            .unless_stopped(async {
                                received = true;
                                Ok((&mut result_rx).await.unwrap_or_else(|_| {
                                    Err(TrainError::Panicked(
                                        "the training thread ended without a result".into(),
                                    ))
                                }))
                            })
                            .await?,
                    };
                    if let Some(h) = training.take()
                        && let Ok(t) = h.await
                    {
                        *trainer = Some(t);
                    }
                    let update = r?;
                    // Training is done, so the evaluation that preceded it is ready.
                    let evaluated = take_evaluation(&mut evaluation, round_id);
                    ctx.progress.phase(Phase::Aggregating, round_no);
                    let weight = u32::try_from(update.num_examples)
                        .unwrap_or(u32::MAX)
                        .max(1);
                    let mut rng = ChaCha20Rng::from_seed(seed_bytes());
                    let (weight, encoded) = match &codec {
                        // DP: clipped (and noised, distributed) here, weight 1.
                        Some(codec) => (
                            1,
                            codec.encode(&update.update, &mut rng).map_err(|e| e.to_string()),
                        ),
                        None => (
                            weight,
                            quantizer
                                .encode(&update.update, weight, &mut rng)
                                .map_err(|e| e.to_string()),
                        ),
                    };
                    let mut encoded = encoded
                        .map_err(|e| RunError::Protocol(format!("cannot encode the update: {e}")))?;
                    if let Some(layout) = &layout {
                        layout.insert(&mut encoded, evaluated.as_ref());
                    }
                    if let Some(hook) = &ctx.hooks.input_hook {
                        let _ = hook.send(ProvidedInput {
                            round_id,
                            index: client.index(),
                            weight: weight.min(quantizer.params().max_weight),
                            update: update.update.clone(),
                        });
                    }
                    if ctx.hooks.fault == Some(Fault::WrongLength) {
                        encoded.push(0);
                    }
                    outcome = Some(update);
                    if let Some(m) = client
                        .provide_input(encoded)
                        .map_err(|e| RunError::Protocol(format!("{}: {e}", Attempt::from_round_id(round_id))))?
                    {
                        session.send(&m).await?;
                    }
                }
                ClientStep::Finished(result) => break Ok(result),
            }
        }
    }
    .await;
    if let Some(h) = training.take()
        && let Ok(t) = h.await
    {
        *trainer = Some(t);
    }
    let result = result?;
    Ok(Some(Contribution {
        task: plan.task.clone(),
        round_id,
        num_examples: outcome.as_ref().map_or(0, |u| u.num_examples),
        loss: outcome.as_ref().map_or(f32::NAN, |u| u.loss),
        training: Duration::from_micros(training_us.load(Ordering::Relaxed)),
        result,
    }))
}

/// The round's local evaluation, once the training thread has produced it (it evaluates before
/// it trains, so it has when training is done): `None` while pending, when it failed (a
/// warning) or when it measured no examples. What is returned goes only into the masked vector.
fn take_evaluation(
    pending: &mut Option<oneshot::Receiver<Result<LocalMetrics, TrainError>>>,
    round_id: RoundId,
) -> Option<LocalEvaluation> {
    let metrics = pending.take()?.try_recv().ok()?;
    match metrics {
        Ok(m) if m.examples > 0 => {
            tracing::debug!(
                round = %Attempt::from_round_id(round_id),
                examples = m.examples,
                loss = m.loss,
                accuracy = m.accuracy,
                "local evaluation (carried inside the masked input)"
            );
            Some(LocalEvaluation {
                examples: m.examples,
                loss: m.loss,
                accuracy: m.accuracy,
            })
        }
        Ok(_) => {
            tracing::warn!(
                round = %Attempt::from_round_id(round_id),
                "local evaluation measured no examples; not counted"
            );
            None
        }
        Err(e) => {
            tracing::warn!(round = %Attempt::from_round_id(round_id), error = %e, "local evaluation failed; the round goes on without it");
            None
        }
    }
}

fn seed_bytes() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// The weights cache dir inside a state dir.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("weights")
}

/// Reads cached weights with this hash, checking the content against the hash.
pub fn cached_weights(state_dir: &Path, hash: &ContentHash) -> Option<Vec<f32>> {
    let bytes = std::fs::read(cache_dir(state_dir).join(hash.to_hex())).ok()?;
    if ContentHash::of(&bytes) != *hash {
        return None;
    }
    FloatVector::from_le_bytes(&bytes).map(|v| v.0)
}

/// A download of the global weights started before the round asked for them: a task of its
/// own on the session's connection (a stream of its own), aborted when dropped.
struct Prefetch {
    hash: ContentHash,
    task: tokio::task::JoinHandle<Result<Vec<f32>, RunError>>,
}

impl Prefetch {
    fn start(conn: &Connection, state_dir: &Path, hash: ContentHash) -> Self {
        let (conn, state_dir) = (conn.clone(), state_dir.to_path_buf());
        let task = tokio::spawn(async move { fetch_weights(&conn, &state_dir, hash).await });
        Self { hash, task }
    }

    /// Waits for the download.
    async fn finish(mut self) -> Result<Vec<f32>, RunError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(RunError::Protocol(format!(
                "the weights download stopped: {e}"
            ))),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The global weights with `hash`: from the cache, or fetched on a new stream and cached.
pub async fn fetch_weights(
    conn: &Connection,
    state_dir: &Path,
    hash: ContentHash,
) -> Result<Vec<f32>, RunError> {
    if let Some(w) = cached_weights(state_dir, &hash) {
        return Ok(w);
    }
    let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
    write_message(
        &mut send,
        &ClientMessage::FetchWeights(FetchWeights { hash }),
        DEFAULT_MAX_FRAME_LEN,
    )
    .await?;
    let _ = send.finish();
    let values = receive_weights::<ServerMessage>(
        &mut recv,
        DEFAULT_MAX_FRAME_LEN,
        Some(hash),
        MAX_MODEL_LEN,
        |m| match m {
            ServerMessage::Weights(c) => Some(c),
            _ => None,
        },
    )
    .await?;
    let dir = cache_dir(state_dir);
    let path = dir.join(hash.to_hex());
    let io = |source| RunError::Cache {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    write_le(&path, &values).map_err(io)?;
    Ok(values)
}

/// Writes `values` as little-endian bytes (what [`cached_weights`] reads and hashes), a block
/// at a time: no second copy of the vector. A torn write is harmless: the reader checks the
/// content against its hash and fetches again.
fn write_le(path: &Path, values: &[f32]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(path)?);
    let mut block = Vec::with_capacity(4096 * 4);
    for chunk in values.chunks(4096) {
        block.clear();
        for v in chunk {
            block.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert!(b.delay(1, 0.99) > Duration::from_millis(290));
    }

    #[test]
    fn cache_refuses_content_that_does_not_match_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let v = vec![1.0f32, 2.0, 3.0];
        let bytes = FloatVector(v.clone()).to_le_bytes();
        let hash = ContentHash::of(&bytes);
        std::fs::create_dir_all(cache_dir(dir.path())).unwrap();
        std::fs::write(cache_dir(dir.path()).join(hash.to_hex()), &bytes).unwrap();
        assert_eq!(cached_weights(dir.path(), &hash), Some(v));
        std::fs::write(cache_dir(dir.path()).join(hash.to_hex()), [0u8; 12]).unwrap();
        assert_eq!(cached_weights(dir.path(), &hash), None);
    }

    #[test]
    fn the_cache_writes_what_it_reads_back_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        // Not a multiple of the 4,096-element block, with values whose bytes all differ.
        let v: Vec<f32> = (0..10_001).map(|i| i as f32 * -0.37 + 1e-3).collect();
        let hash = ContentHash::of(&FloatVector(v.clone()).to_le_bytes());
        std::fs::create_dir_all(cache_dir(dir.path())).unwrap();
        write_le(&cache_dir(dir.path()).join(hash.to_hex()), &v).unwrap();
        assert_eq!(cached_weights(dir.path(), &hash), Some(v));
    }
}
