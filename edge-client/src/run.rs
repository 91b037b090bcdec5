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
//! evaluates the *received* global weights on the local data and the client sends the metrics
//! (examples, loss, accuracy; plaintext scalars, as in Flower's federated evaluation) in a
//! `LocalEvaluation` as soon as they are ready, and at the latest before its masked input. A
//! failed evaluation is logged and skipped; it never costs the round.
//!
//! Before fetching the weights, the client checks them against the round log sent with the
//! plan ([`crate::log_check`]): the chain must be intact, continue the head this device verified
//! before, and its last entry must name the round's weights. A mismatch stops the client with
//! [`RunError::Log`].
//!
//! When the connection fails mid-round (the coordinator restarted, the network dropped), the
//! local training thread is joined so the trainer survives into the next round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::secagg::{ClientRound, ClientStep};
use cohort_net::quinn::Connection;
use cohort_net::{ClientTransport, FramedStream, NetError, receive_weights, write_message};
use cohort_protocol::{
    CheckIn, CheckInResponse, ClientMessage, ContentHash, DEFAULT_MAX_FRAME_LEN, ErrorCode,
    FetchWeights, FloatVector, LocalEvaluation, RoundConfig, RoundId, RoundLogEntry, RoundResult,
    ServerMessage, TaskId, TaskPlan, TrainingReport,
};
use cohort_task::Attempt;
use rand::RngCore;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::eligibility::EligibilityPolicy;
use crate::enroll::{self, EnrollError};
use crate::log_check::LogCheckError;
use crate::trainer::{LocalMetrics, LocalUpdate, Trainer};

/// The largest model a client accepts, in elements.
pub const MAX_MODEL_LEN: usize = 1 << 28;

/// Where a test makes the client misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection on receiving `RoundConfig` (before R0).
    VanishAtR0,
    /// Close the connection on receiving the R1 request.
    VanishAtR1,
    /// Close the connection on receiving the R2 request.
    VanishAtR2,
    /// Close the connection on receiving the R3 request.
    VanishAtR3,
    /// Send a masked input one element too long.
    WrongLength,
    /// Close the connection once after the first completed round, then reconnect.
    ReconnectAfterFirstRound,
}

/// A test hook's record of the input a client gave its `ClientRound`: with the coordinator's
/// list of contributors it lets a test check that the released sum is exact.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvidedInput {
    /// The round.
    pub round_id: RoundId,
    /// The client's index in it.
    pub index: cohort_protocol::ClientIndex,
    /// The weight encoded (capped by the round).
    pub weight: u32,
    /// The update before encoding.
    pub update: Vec<f32>,
}

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
    /// The state dir (credentials, cached weights).
    pub state_dir: PathBuf,
    /// The account password.
    pub password: String,
    /// A task to work on, or any.
    pub task: Option<TaskId>,
    /// When the device may train.
    pub eligibility: EligibilityPolicy,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Stop after this many completed rounds (`None`: run until the coordinator has no more
    /// work and the connection fails too often).
    pub max_rounds: Option<u32>,
    /// Give up after this many failed connection attempts in a row.
    pub max_failures: u32,
    /// Test-only misbehaviour.
    pub fault: Option<Fault>,
    /// Test-only: where to record each input given to the round.
    pub input_hook: Option<mpsc::UnboundedSender<ProvidedInput>>,
}

/// What the client did in one round, printed for the contributor.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    /// The round.
    pub round_id: RoundId,
    /// Examples trained on.
    pub num_examples: u64,
    /// Training loss of the last epoch.
    pub loss: f32,
    /// How the round ended.
    pub result: RoundResult,
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
    /// Local training failed.
    #[error("{0}")]
    Training(String),
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
    /// A fault was injected (tests).
    #[error("fault injected: {0:?}")]
    Fault(Fault),
    /// Too many failed connection attempts.
    #[error("gave up after {0} failed connection attempts; check the coordinator's address")]
    GaveUp(u32),
}

impl RunError {
    fn retryable(&self) -> bool {
        matches!(self, RunError::Net(_) | RunError::Protocol(_))
            || matches!(self, RunError::Enroll(EnrollError::Net(_)))
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

/// Runs until `max_rounds` rounds completed, reconnecting with backoff. Every finished round is
/// reported on `contributions` (when given) and logged.
pub async fn run(
    transport: &ClientTransport,
    config: &RunConfig,
    trainer: Box<dyn Trainer>,
    contributions: Option<mpsc::UnboundedSender<Contribution>>,
) -> Result<u32, RunError> {
    let mut trainer = Some(trainer);
    let mut completed = 0u32;
    let mut failures = 0u32;
    loop {
        let res = session(
            transport,
            config,
            &mut trainer,
            &mut completed,
            &mut failures,
            contributions.as_ref(),
        )
        .await;
        match res {
            Ok(()) => return Ok(completed),
            Err(e) if e.retryable() && trainer.is_some() => {
                failures += 1;
                if failures > config.max_failures {
                    return Err(RunError::GaveUp(failures));
                }
                let jitter = f64::from(rand::rngs::OsRng.next_u32()) / f64::from(u32::MAX);
                let mut wait = config.backoff.delay(failures - 1, jitter);
                if let Some(after) = e.rate_limited() {
                    // Never before the coordinator's retry time, spread so that the devices it
                    // turned away do not come back at the same instant.
                    wait = wait.max(after.mul_f64(1.0 + jitter / 2.0));
                }
                tracing::info!(error = %e, ?wait, "connection lost; reconnecting");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn session(
    transport: &ClientTransport,
    config: &RunConfig,
    trainer: &mut Option<Box<dyn Trainer>>,
    completed: &mut u32,
    failures: &mut u32,
    contributions: Option<&mpsc::UnboundedSender<Contribution>>,
) -> Result<(), RunError> {
    let conn = transport
        .connect(config.server, &config.server_name)
        .await?;
    let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
    enroll::hello(&mut stream).await?;
    enroll::login_saved(&conn, &mut stream, &config.state_dir, &config.password).await?;
    *failures = 0;
    loop {
        if config.max_rounds.is_some_and(|m| *completed >= m) {
            let _ = stream.send.finish();
            conn.close(0u32.into(), b"done");
            return Ok(());
        }
        let (device, eligible) = config.eligibility.check();
        if !eligible {
            tracing::info!(
                ?device,
                "not eligible to train now; checking again in a minute"
            );
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        let num_examples = trainer.as_ref().map_or(0, |t| t.num_examples());
        stream
            .send(&ClientMessage::CheckIn(CheckIn {
                task: config.task.clone(),
                device,
                num_examples,
                known_head: crate::log_check::saved_head(&config.state_dir, config.task.as_ref()),
            }))
            .await?;
        let plan = loop {
            match stream.expect::<ServerMessage>().await? {
                ServerMessage::CheckIn(CheckInResponse::Accepted { plan, log }) => {
                    break Some((plan, log));
                }
                ServerMessage::CheckIn(CheckInResponse::ComeBackLater {
                    retry_after_ms, ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.min(600_000))).await;
                    break None;
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
        };
        let Some((plan, log)) = plan else { continue };
        crate::log_check::verify_saved_chain(&config.state_dir, &plan.task, &log)?;
        if let Some(c) = round(&conn, &mut stream, config, trainer, &plan, &log).await? {
            if matches!(c.result, RoundResult::Completed { .. }) {
                *completed += 1;
            }
            tracing::info!(round = %Attempt::from_round_id(c.round_id), examples = c.num_examples, loss = c.loss, result = ?c.result, "round over");
            let first = *completed == 1 && matches!(c.result, RoundResult::Completed { .. });
            if let Some(tx) = contributions {
                let _ = tx.send(c);
            }
            if first && config.fault == Some(Fault::ReconnectAfterFirstRound) {
                conn.close(0u32.into(), b"simulated disconnect");
                return Err(RunError::Protocol(
                    "simulated disconnect (test fault)".into(),
                ));
            }
        }
    }
}

fn vanish(conn: &Connection, fault: Fault) -> RunError {
    conn.close(0u32.into(), b"fault injected");
    RunError::Fault(fault)
}

/// Takes part in one round after being accepted. `None` when the client left it (removed, or
/// the round ended before it started).
async fn round(
    conn: &Connection,
    stream: &mut FramedStream,
    config: &RunConfig,
    trainer: &mut Option<Box<dyn Trainer>>,
    plan: &TaskPlan,
    log: &[RoundLogEntry],
) -> Result<Option<Contribution>, RunError> {
    let round_config: RoundConfig = loop {
        match stream.expect::<ServerMessage>().await? {
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
    if config.fault == Some(Fault::VanishAtR0) {
        return Err(vanish(conn, Fault::VanishAtR0));
    }
    let round_id = round_config.round_id;
    let head = crate::log_check::verify_and_record(
        &config.state_dir,
        &plan.task,
        log,
        &round_config.model,
    )?;
    tracing::debug!(task = %plan.task.0, round = head.round, entry = %head.entry, "weights named by the verified round log");
    let quantizer = Quantizer::new(round_config.params.encoding)
        .map_err(|e| RunError::Protocol(format!("unusable encoding: {e}")))?;
    let global = fetch_weights(conn, &config.state_dir, round_config.model).await?;
    let evaluate = round_config.evaluate;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let (mut client, advertise) = ClientRound::start(round_config, *seed)
        .map_err(|e| RunError::Protocol(format!("refusing the round: {e}")))?;
    // Train while the key phases run.
    let mut t = trainer
        .take()
        .ok_or_else(|| RunError::Training("the trainer was lost in an earlier round".into()))?;
    let plan_c = plan.clone();
    // Drawn on its own: nothing of the protocol seed may leave the SecAgg+ state machine.
    let train_seed = rand::rngs::OsRng.next_u64();
    let (eval_tx, eval_rx) = tokio::sync::oneshot::channel();
    let mut evaluation = evaluate.then_some(eval_rx);
    let training = tokio::task::spawn_blocking(move || {
        if evaluate {
            // The received model, before local training changes anything.
            let _ = eval_tx.send(t.evaluate(&plan_c, &global));
        }
        let r = t.train(&plan_c, &global, train_seed);
        (t, r)
    });
    let mut training = Some(training);
    let mut outcome: Option<LocalUpdate> = None;
    let started = std::time::Instant::now();
    // Whatever happens below, the training thread is joined afterwards, so that a connection
    // lost mid-round does not lose the trainer.
    let result: Result<RoundResult, RunError> = async {
        stream.send(&advertise).await?;
        loop {
            let msg = stream.expect::<ServerMessage>().await?;
            send_evaluation(stream, &mut evaluation, round_id).await?;
            let fault = match &msg {
                ServerMessage::ShareKeys(_) => Some(Fault::VanishAtR1),
                ServerMessage::MaskedInputRequest(_) => Some(Fault::VanishAtR2),
                ServerMessage::Unmask(_) => Some(Fault::VanishAtR3),
                _ => None,
            };
            if fault.is_some() && config.fault == fault {
                // Let the training thread finish so the trainer is not lost.
                if let Some(h) = training.take()
                    && let Ok((t, _)) = h.await
                {
                    *trainer = Some(t);
                }
                return Err(vanish(conn, config.fault.unwrap_or(Fault::VanishAtR0)));
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
                ClientStep::Send(m) => stream.send(&m).await?,
                ClientStep::NeedInput => {
                    let (t, r) = match training.take() {
                        Some(h) => h
                            .await
                            .map_err(|e| RunError::Training(format!("training thread failed: {e}")))?,
                        None => return Err(RunError::Training("training was not started".into())),
                    };
                    *trainer = Some(t);
                    // Training is done, so the evaluation that preceded it is ready.
                    send_evaluation(stream, &mut evaluation, round_id).await?;
                    let update = r.map_err(RunError::Training)?;
                    let weight = u32::try_from(update.num_examples)
                        .unwrap_or(u32::MAX)
                        .max(1);
                    let mut rng = ChaCha20Rng::from_seed(seed_bytes());
                    let mut encoded = quantizer
                        .encode(&update.update, weight, &mut rng)
                        .map_err(|e| RunError::Training(format!("cannot encode the update: {e}")))?;
                    if let Some(hook) = &config.input_hook {
                        let _ = hook.send(ProvidedInput {
                            round_id,
                            index: client.index(),
                            weight: weight.min(quantizer.params().max_weight),
                            update: update.update.clone(),
                        });
                    }
                    if config.fault == Some(Fault::WrongLength) {
                        encoded.push(0);
                    }
                    let report = ClientMessage::TrainingReport(TrainingReport {
                        round_id,
                        num_examples: update.num_examples,
                        loss: update.loss,
                        accuracy: update.accuracy,
                        train_ms: started.elapsed().as_millis() as u64,
                    });
                    outcome = Some(update);
                    if let Some(m) = client
                        .provide_input(encoded)
                        .map_err(|e| RunError::Protocol(format!("{}: {e}", Attempt::from_round_id(round_id))))?
                    {
                        stream.send(&m).await?;
                    }
                    stream.send(&report).await?;
                }
                ClientStep::Finished(result) => break Ok(result),
            }
        }
    }
    .await;
    if let Some(h) = training.take()
        && let Ok((t, _)) = h.await
    {
        *trainer = Some(t);
    }
    let result = result?;
    Ok(Some(Contribution {
        round_id,
        num_examples: outcome.as_ref().map_or(0, |u| u.num_examples),
        loss: outcome.as_ref().map_or(f32::NAN, |u| u.loss),
        result,
    }))
}

/// Sends the round's local evaluation once the training thread has produced it: nothing while it
/// is pending, a warning (and nothing sent) when it failed or measured no examples.
async fn send_evaluation(
    stream: &mut FramedStream,
    pending: &mut Option<tokio::sync::oneshot::Receiver<Result<LocalMetrics, String>>>,
    round_id: RoundId,
) -> Result<(), RunError> {
    use tokio::sync::oneshot::error::TryRecvError;
    let Some(rx) = pending.as_mut() else {
        return Ok(());
    };
    let metrics = match rx.try_recv() {
        Err(TryRecvError::Empty) => return Ok(()),
        Err(TryRecvError::Closed) => {
            *pending = None;
            return Ok(());
        }
        Ok(m) => {
            *pending = None;
            m
        }
    };
    match metrics {
        Ok(m) if m.examples > 0 => {
            tracing::debug!(
                round = %Attempt::from_round_id(round_id),
                examples = m.examples,
                loss = m.loss,
                accuracy = m.accuracy,
                "local evaluation"
            );
            stream
                .send(&ClientMessage::LocalEvaluation(LocalEvaluation {
                    round_id,
                    examples: m.examples,
                    loss: m.loss,
                    accuracy: m.accuracy,
                }))
                .await?;
        }
        Ok(_) => {
            tracing::warn!(
                round = %Attempt::from_round_id(round_id),
                "local evaluation measured no examples; not reported"
            )
        }
        Err(e) => {
            tracing::warn!(round = %Attempt::from_round_id(round_id), error = %e, "local evaluation failed; the round goes on without it")
        }
    }
    Ok(())
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
    std::fs::write(&path, FloatVector(values.clone()).to_le_bytes()).map_err(io)?;
    Ok(values)
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
}
