//! The coordinator's shell around one [`ServerRound`](cohort_aggregation::secagg::ServerRound) (with the over-selection cut-off applied,
//! [`CutoffRound`]): it feeds the state machine the messages
//! that connection tasks forward, arms its deadlines on tokio's clock, delivers its messages to
//! per-client outboxes, and runs the unmasking job on the blocking thread pool, off the runtime.
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
use std::time::{Duration, Instant};

use cohort_aggregation::secagg::{
    AbortReason, Phase, RoundError, ServerAction, ServerEvent, UnmaskedSum,
};
use cohort_protocol::{
    ClientIndex, ClientMessage, ErrorCode, IdentityLogEntry, ServerMessage, WireError,
};
use cohort_task::cutoff::CutoffRound;
use tokio::sync::mpsc;

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
    /// Wall time spent in each phase, in phase order.
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
/// `actions` are the ones [`CutoffRound::start`] returned. `outboxes` maps each selected client
/// to the sender half of its connection's outgoing queue; a closed or full outbox counts as a
/// disconnect. `inputs` carries what the connection tasks receive. `unmask_threads` bounds the
/// threads of the unmasking job. `evaluate` asks the clients for a federated evaluation of the
/// round's global model inside their masked inputs (see [`cohort_task::evaluation`]; the
/// round's parameters must have been planned for it). `roster` is given for rounds with
/// the consistency check: each client's config carries the roster and its part of the identity
/// log.
pub async fn drive_round(
    mut round: CutoffRound,
    actions: Vec<ServerAction>,
    outboxes: HashMap<ClientIndex, mpsc::Sender<ServerMessage>>,
    mut inputs: mpsc::Receiver<RoundInput>,
    unmask_threads: usize,
    evaluate: bool,
    mut roster: Option<RoundRoster>,
) -> RoundReport {
    // One timer per round: the deadline of the phase in progress. Each phase's `SetDeadline`
    // replaces the previous one (the state machine ignores a past phase's deadline anyway), and
    // nothing outlives the round.
    let mut deadline: Option<(Phase, tokio::time::Instant)> = None;
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
    let mut phase_started = Instant::now();
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
                        queue.extend(round.handle(ServerEvent::Disconnected(to)));
                    }
                }
                ServerAction::SetDeadline { phase, after } => {
                    deadline = Some((phase, tokio::time::Instant::now() + after));
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
                        round_id,
                        &mut report,
                        &mut phase,
                        &mut phase_started,
                        Phase::Finished,
                    );
                    let started = Instant::now();
                    let streams = job.num_streams();
                    let result = tokio::task::spawn_blocking(move || job.run(unmask_threads)).await;
                    tracing::info!(
                        round = round_id,
                        streams,
                        ms = started.elapsed().as_millis() as u64,
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
            round_id,
            &mut report,
            &mut phase,
            &mut phase_started,
            round.phase(),
        );
        tokio::select! {
            input = inputs.recv() => match input {
                Some(RoundInput::Message { from, message }) => {
                    queue.extend(round.handle(ServerEvent::Message { from, message }));
                }
                Some(RoundInput::Disconnected(from)) => {
                    queue.extend(round.handle(ServerEvent::Disconnected(from)));
                }
                None => {
                    // Every connection task is gone: nobody can answer any more.
                    for i in 1..=round.params().num_clients {
                        queue.extend(round.handle(ServerEvent::Disconnected(ClientIndex(i))));
                    }
                }
            },
            () = async {
                match deadline {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((p, _)) = deadline.take() {
                    queue.extend(round.handle(ServerEvent::DeadlinePassed(p)));
                }
            }
        }
    }
}

fn record_phase(
    round_id: u64,
    report: &mut RoundReport,
    phase: &mut Phase,
    started: &mut Instant,
    now: Phase,
) {
    if now != *phase {
        // Operators (and the restart test) follow a round's progress through this line.
        tracing::info!(round = round_id, from = ?*phase, to = ?now, ms = started.elapsed().as_millis() as u64, "round phase");
        report.phase_durations.push((*phase, started.elapsed()));
        *phase = now;
        *started = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_aggregation::secagg::{ClientRound, ClientStep, ServerRound, recommended_params};
    use cohort_protocol::{ContentHash, EncodingParams, RoundId};

    /// A round over channels with in-process clients, one of which vanishes after R1: the driver
    /// delivers, times out R2 on tokio's (paused) clock, unmasks, and reports the exact sum. The
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
        let (round, actions) = ServerRound::start(
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
        let report = drive_round(round.into(), actions, outboxes, input_rx, 2, true, None).await;
        let sum = report.outcome.expect("round completes");
        let expected: u32 = (1..8).sum();
        assert_eq!(sum.sum, vec![expected, 10 * expected, 100 * expected, 7]);
        assert_eq!(sum.contributors.len(), 7);
        assert_eq!(sum.dropped, vec![ClientIndex(8)]);
        assert!(report.phase_durations.len() >= 4);
    }
}
