//! The coordinator's shell around one [`ServerRound`](cohort_aggregation::secagg::ServerRound) (with the over-selection cut-off applied,
//! [`CutoffRound`]): it feeds the state machine the messages
//! that connection tasks forward, each with the time on the coordinator's [`Clock`], keeps one
//! timer per round at the state machine's `poll_timeout` (the deadline of the phase in
//! progress) and calls `handle_timeout` when it fires, delivers its messages to per-client
//! outboxes, and runs the unmasking job on the blocking thread pool, off the runtime.
//!
//! When the round is evaluated it sets `evaluate` in every client's `RoundConfig`; the members'
//! federated-evaluation scalars then travel inside their masked inputs (the round's plan made
//! the vector longer, [`cohort_task::plan::RoundPlan::with_federated_evaluation`]), so the
//! driver sees nothing of them: the scheduler decodes their sums from the unmasked sum.
//!
//! The driver owns no protocol logic: every decision (who is in which set, when a phase ends,
//! whether the round aborts) is the sans-IO core's. That is what lets the simulator and the
//! coordinator share the round code.

use std::collections::HashMap;
use std::time::Duration;

use cohort_aggregation::secagg::{
    AbortReason, Phase, RoundError, ServerAction, ServerEvent, UnmaskedSum,
};
use cohort_aggregation::time::Time;
use cohort_protocol::{
    ClientIndex, ClientMessage, ErrorCode, IdentityLogEntry, ServerMessage, WireError,
};
use cohort_task::cutoff::CutoffRound;
use tokio::sync::mpsc;

use crate::clock::{Clock, Sleep};

/// What a connection task tells the round driver.
#[derive(Debug)]
pub enum RoundInput {
    /// A round message from the client with this index.
    Message {
        /// The sender.
        from: ClientIndex,
        /// The message.
        message: ClientMessage,
    },
    /// The client's connection closed.
    Disconnected(ClientIndex),
}

/// How a round went, for the scheduler, the metrics and the store.
#[derive(Debug)]
pub struct RoundReport {
    /// The unmasked sum, or why the round aborted (nothing was released).
    pub outcome: Result<UnmaskedSum, AbortReason>,
    /// Clients removed for breaking a rule, with the reason.
    pub removed: Vec<(ClientIndex, RoundError)>,
    /// Messages refused (late, duplicate, replayed) without removing the sender.
    pub refused: usize,
    /// Time spent in each phase on the coordinator's clock, in phase order.
    pub phase_durations: Vec<(Phase, Duration)>,
    /// Bytes of masked input received (4 per element per contributor).
    pub masked_bytes: u64,
}

/// What a round with the consistency check adds to each client's `RoundConfig`.
#[derive(Debug, Default)]
pub struct RoundRoster {
    /// The identity-log position of each index's device key (`roster[i]` is index `i + 1`).
    pub roster: Vec<u64>,
    /// Each client's part of the identity log: the entries after the head it named at
    /// check-in.
    pub logs: HashMap<ClientIndex, Vec<IdentityLogEntry>>,
}

/// Runs a round to its end.
///
/// `clock` is the coordinator's clock, the one the round was started on (`round`'s deadlines
/// are times on it). `actions` are the ones [`CutoffRound::start`] returned. `outboxes` maps each selected client
/// to the sender half of its connection's outgoing queue; a closed or full outbox counts as a
/// disconnect. `inputs` carries what the connection tasks receive. `unmask_threads` bounds the
/// threads of the unmasking job. `evaluate` asks the clients for a federated evaluation of the
/// round's global model inside their masked inputs (see [`cohort_task::evaluation`]; the
/// round's parameters must have been planned for it). `roster` is given for rounds with
/// the consistency check: each client's config carries the roster and its part of the identity
/// log.
#[allow(clippy::too_many_arguments)]
pub async fn drive_round(
    clock: &dyn Clock,
    mut round: CutoffRound,
    actions: Vec<ServerAction>,
    outboxes: HashMap<ClientIndex, mpsc::Sender<ServerMessage>>,
    mut inputs: mpsc::Receiver<RoundInput>,
    unmask_threads: usize,
    evaluate: bool,
    mut roster: Option<RoundRoster>,
) -> RoundReport {
    // One timer per round: the deadline of the phase in progress, re-read from the state
    // machine after every event and re-armed only when it moved. It is a future this loop
    // owns, so nothing outlives the round.
    let mut timer: Option<(Time, Sleep)> = None;
    let mut report = RoundReport {
        outcome: Err(AbortReason::NotEnoughShares {
            missing: 0,
            needed: 0,
        }),
        removed: Vec::new(),
        refused: 0,
        phase_durations: Vec::new(),
        masked_bytes: 0,
    };
    let round_id = round.round_id().0;
    let mut phase = round.phase();
    let mut phase_started = clock.monotonic();
    let mut queue: std::collections::VecDeque<ServerAction> = actions.into();
    loop {
        while let Some(action) = queue.pop_front() {
            match action {
                ServerAction::Send { to, mut message } => {
                    if let ServerMessage::RoundConfig(config) = &mut message {
                        config.evaluate = evaluate;
                        if let Some(r) = roster.as_mut() {
                            config.roster = r.roster.clone();
                            config.identity_log = r.logs.remove(&to).unwrap_or_default();
                        }
                    }
                    // Never awaited: a round sends a client a handful of messages, so an outbox
                    // that is full (its connection's writer stuck) or closed is a dropout, and
                    // one stalled connection cannot hold up the round's deadlines.
                    let delivered = match outboxes.get(&to) {
                        Some(outbox) => outbox.try_send(message).is_ok(),
                        None => false,
                    };
                    if !delivered {
                        queue.extend(round.handle(clock.time(), ServerEvent::Disconnected(to)));
                    }
                }
                ServerAction::Refused { client, error } => {
                    tracing::debug!(round = round_id, %client, %error, "message refused");
                    report.refused += 1;
                }
                ServerAction::Removed { client, error } => {
                    tracing::warn!(round = round_id, %client, %error, "client removed from round");
                    if let Some(outbox) = outboxes.get(&client) {
                        let _ = outbox.try_send(ServerMessage::Error(WireError {
                            code: ErrorCode::RemovedFromRound,
                            message: format!("removed from round {round_id}: {error}"),
                        }));
                    }
                    report.removed.push((client, error));
                }
                ServerAction::Unmask(job) => {
                    report.masked_bytes =
                        4 * round.params().vector_len as u64 * round.members(3).len() as u64;
                    record_phase(
                        clock,
                        round_id,
                        &mut report,
                        &mut phase,
                        &mut phase_started,
                        Phase::Finished,
                    );
                    let started = clock.monotonic();
                    let streams = job.num_streams();
                    let result = tokio::task::spawn_blocking(move || job.run(unmask_threads)).await;
                    tracing::info!(
                        round = round_id,
                        streams,
                        ms = clock.monotonic().saturating_sub(started).as_millis() as u64,
                        "unmasked the sum"
                    );
                    report.outcome = match result {
                        Ok(Ok(sum)) => Ok(sum),
                        Ok(Err(e)) => Err(AbortReason::ReconstructionFailed {
                            client: ClientIndex(0),
                            reason: e.to_string(),
                        }),
                        Err(join) => Err(AbortReason::ReconstructionFailed {
                            client: ClientIndex(0),
                            reason: format!("unmasking task failed: {join}"),
                        }),
                    };
                    return report;
                }
                ServerAction::Aborted(reason) => {
                    record_phase(
                        clock,
                        round_id,
                        &mut report,
                        &mut phase,
                        &mut phase_started,
                        Phase::Aborted,
                    );
                    report.outcome = Err(reason);
                    return report;
                }
            }
        }
        record_phase(
            clock,
            round_id,
            &mut report,
            &mut phase,
            &mut phase_started,
            round.phase(),
        );
        let deadline = round.poll_timeout();
        if timer.as_ref().map(|(at, _)| *at) != deadline {
            timer = deadline.map(|at| (at, clock.sleep_until(at.since_epoch())));
        }
        tokio::select! {
            input = inputs.recv() => match input {
                Some(RoundInput::Message { from, message }) => {
                    queue.extend(round.handle(clock.time(), ServerEvent::Message { from, message }));
                }
                Some(RoundInput::Disconnected(from)) => {
                    queue.extend(round.handle(clock.time(), ServerEvent::Disconnected(from)));
                }
                None => {
                    // Every connection task is gone: nobody can answer any more.
                    for i in 1..=round.params().num_clients {
                        queue.extend(
                            round.handle(clock.time(), ServerEvent::Disconnected(ClientIndex(i))),
                        );
                    }
                }
            },
            () = async {
                match timer.as_mut() {
                    Some((_, sleep)) => sleep.await,
                    None => std::future::pending().await,
                }
            } => {
                // A fired timer is spent: the next turn arms a new one if a phase is still in
                // progress (the same deadline again only if the clock read short of it).
                timer = None;
                queue.extend(round.handle_timeout(clock.time()));
            }
        }
    }
}

fn record_phase(
    clock: &dyn Clock,
    round_id: u64,
    report: &mut RoundReport,
    phase: &mut Phase,
    started: &mut Duration,
    now: Phase,
) {
    if now != *phase {
        let took = clock.monotonic().saturating_sub(*started);
        // Operators (and the restart test) follow a round's progress through this line.
        tracing::info!(round = round_id, from = ?*phase, to = ?now, ms = took.as_millis() as u64, "round phase");
        report.phase_durations.push((*phase, took));
        *phase = now;
        *started = clock.monotonic();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_aggregation::secagg::{ClientRound, ClientStep, ServerRound, recommended_params};
    use cohort_protocol::{ContentHash, EncodingParams, RoundId};

    /// tokio's clock as the coordinator's [`Clock`], so that a test on tokio's paused time
    /// (which jumps to the next timer when every task waits) drives the round's deadlines.
    #[derive(Debug)]
    struct TokioClock(tokio::time::Instant);

    impl Clock for TokioClock {
        fn now(&self) -> i64 {
            self.0.elapsed().as_secs() as i64
        }

        fn monotonic(&self) -> Duration {
            self.0.elapsed()
        }

        fn sleep_until(&self, deadline: Duration) -> Sleep {
            Box::pin(tokio::time::sleep_until(self.0 + deadline))
        }
    }

    /// A round over channels with in-process clients, one of which vanishes after R1: the driver
    /// delivers, times out R2 on tokio's (paused) clock exactly
    /// at its deadline, unmasks, and reports the exact sum. The
    /// round is evaluated: every config asks for it (what the members measure travels inside
    /// their inputs; `cohort_task::evaluation` and the scheduler decode it).
    #[tokio::test(start_paused = true)]
    async fn drives_a_round_with_a_dropout_to_the_exact_sum() {
        let n = 8u32;
        let params = recommended_params(
            n,
            4,
            EncodingParams {
                clip: 1.0,
                value_bits: 16,
                max_weight: 1,
                ring_bits: 32,
            },
            0.05,
            // q_min = ceil(0.8 · 8) = 7: one dropout leaves a quorum.
            0.20,
        )
        .expect("params");
        let clock = TokioClock(tokio::time::Instant::now());
        let (round, actions) = ServerRound::start(
            clock.time(),
            RoundId(1),
            params,
            ContentHash::of(b"w"),
            Default::default(),
            [3; 32],
        )
        .expect("starts");
        let (input_tx, input_rx) = mpsc::channel(64);
        let mut outboxes = HashMap::new();
        for i in 1..=n {
            let (tx, mut rx) = mpsc::channel::<ServerMessage>(8);
            outboxes.insert(ClientIndex(i), tx);
            let input_tx = input_tx.clone();
            tokio::spawn(async move {
                let mut client = None;
                while let Some(msg) = rx.recv().await {
                    let reply = match (msg, client.as_mut()) {
                        (ServerMessage::RoundConfig(c), None) => {
                            assert!(c.evaluate, "the evaluated round's config asks for it");
                            let (c, adv) = ClientRound::start(c, [i as u8; 32]).expect("joins");
                            client = Some(c);
                            Some(adv)
                        }
                        // Client 8 vanishes after sending its shares.
                        (ServerMessage::MaskedInputRequest(_), Some(_)) if i == 8 => return,
                        (m, Some(c)) => match c.handle(m).expect("round proceeds") {
                            ClientStep::Send(m) => Some(m),
                            ClientStep::NeedInput => c
                                .provide_input(vec![i, 10 * i, 100 * i, 1])
                                .expect("input fits"),
                            ClientStep::Finished(_) => None,
                        },
                        (_, None) => None,
                    };
                    if let Some(message) = reply {
                        let _ = input_tx
                            .send(RoundInput::Message {
                                from: ClientIndex(i),
                                message,
                            })
                            .await;
                    }
                }
            });
        }
        drop(input_tx);
        let report = drive_round(
            &clock,
            round.into(),
            actions,
            outboxes,
            input_rx,
            2,
            true,
            None,
        )
        .await;
        let sum = report.outcome.expect("round completes");
        let expected: u32 = (1..8).sum();
        assert_eq!(sum.sum, vec![expected, 10 * expected, 100 * expected, 7]);
        assert_eq!(sum.contributors.len(), 7);
        assert_eq!(sum.dropped, vec![ClientIndex(8)]);
        assert!(report.phase_durations.len() >= 4);
        // R2 waited for the vanished client until its deadline, 120 s on the paused clock
        // (tokio's timer rounds up to its millisecond tick).
        let r2 = report
            .phase_durations
            .iter()
            .find(|(p, _)| *p == Phase::MaskedInput)
            .expect("R2 ran")
            .1;
        assert!(
            r2 >= Duration::from_secs(120) && r2 < Duration::from_secs(121),
            "{r2:?}"
        );
    }
}
