//! One SecAgg+ round attempt on the virtual clock: the production [`ServerRound`] and one
//! [`ClientRound`] per cohort member, with every message timed by the sender's link and every
//! deadline an event.
//!
//! A member receives its round config, then downloads the global model and trains (its update
//! was computed beforehand, in parallel; here only the simulated time passes) while the key
//! phases run, and hands its encoded update to its `ClientRound` when training ends. A member
//! fated to drop at a phase dies when it would send that phase's message: it either closes its
//! connection (the server gets [`ServerEvent::Disconnected`] one latency later) or crashes
//! silently (the server notices when the phase deadline passes).

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::secagg::{
    ClientRound, ClientStep, PhaseDeadlines, ServerAction, ServerEvent, ServerRound,
};
use cohort_protocol::{
    ClientIndex, ClientMessage, ContentHash, RoundId, SecAggParams, ServerMessage,
};

use crate::attempt::{
    AttemptOutcome, Links, Member, client_message_bytes, model_bytes, server_message_bytes,
};
use crate::clock::{EventQueue, Micros, micros};
use crate::cohort::DropPhase;

/// Rate at which the simulated server expands mask streams when unmasking, in ring elements
/// per second (a ChaCha20 keystream at about 2 GB/s on one core).
pub const UNMASK_ELEMENTS_PER_S: f64 = 5.0e8;

enum Event {
    ToServer(ClientIndex, ClientMessage),
    Disconnected(ClientIndex),
    ToClient(ClientIndex, ServerMessage),
    Deadline(cohort_aggregation::secagg::Phase),
    TrainingDone(ClientIndex),
}

struct ClientState {
    round: Option<ClientRound>,
    dead: bool,
}

/// Everything a SecAgg+ attempt needs besides the members.
pub struct SecureAttempt<'a> {
    /// The round id (unique per attempt).
    pub round_id: RoundId,
    /// The round's parameters (n = the cohort's size).
    pub params: SecAggParams,
    /// Phase deadlines.
    pub deadlines: PhaseDeadlines,
    /// The global model's hash (sent in the round config).
    pub model: ContentHash,
    /// Model parameters (for the download size).
    pub num_params: usize,
    /// The server's seed.
    pub server_seed: [u8; 32],
    /// Each member's seed, by cohort position.
    pub client_seeds: Vec<[u8; 32]>,
    /// Decodes the unmasked sum.
    pub quantizer: &'a Quantizer,
    /// Threads for unmasking.
    pub threads: usize,
}

fn phase_of(m: &ClientMessage) -> Option<DropPhase> {
    match m {
        ClientMessage::AdvertiseKeys(_) => Some(DropPhase::AdvertiseKeys),
        ClientMessage::ShareKeys(_) => Some(DropPhase::ShareKeys),
        ClientMessage::MaskedInput(_) => Some(DropPhase::MaskedInput),
        ClientMessage::Unmask(_) => Some(DropPhase::Unmask),
        _ => None,
    }
}

struct Loop<'m> {
    members: &'m [Member],
    clients: Vec<ClientState>,
    queue: EventQueue<Event>,
    links: Links,
    outcome: AttemptOutcome,
    model_bytes: u64,
}

impl Loop<'_> {
    fn pos(i: ClientIndex) -> usize {
        i.0 as usize - 1
    }

    /// The client sends `m` now, or dies if this is the phase its fate names.
    fn client_send(&mut self, i: ClientIndex, m: ClientMessage) {
        let p = Self::pos(i);
        let member = &self.members[p];
        if let Some(phase) = phase_of(&m)
            && member.fate.dies_at(phase)
        {
            self.die(i, phase);
            return;
        }
        let bytes = client_message_bytes(&m);
        let now = self.queue.now();
        let at = self.links.upload(p, member.profile, now, bytes);
        self.queue.at(at, Event::ToServer(i, m));
    }

    fn die(&mut self, i: ClientIndex, phase: DropPhase) {
        let p = Self::pos(i);
        let state = &mut self.clients[p];
        if state.dead {
            return;
        }
        state.dead = true;
        state.round = None;
        self.outcome.count_drop(phase);
        let member = &self.members[p];
        if member.fate.disconnect {
            self.queue
                .after(micros(member.profile.latency_s), Event::Disconnected(i));
        }
    }

    fn client_step(&mut self, i: ClientIndex, step: ClientStep) {
        match step {
            ClientStep::Send(m) => self.client_send(i, m),
            ClientStep::NeedInput | ClientStep::Finished(_) => {}
        }
    }

    fn on_client_message(&mut self, i: ClientIndex, m: ServerMessage, seed: [u8; 32]) {
        let p = Self::pos(i);
        if self.clients[p].dead {
            return;
        }
        if let ServerMessage::RoundConfig(config) = m {
            match ClientRound::start(config, seed) {
                Ok((round, first)) => {
                    self.clients[p].round = Some(round);
                    let member = &self.members[p];
                    // Members that get as far as training (including those fated to die
                    // just before uploading) fetch the model and train while the key phases run.
                    if member.fate.uploads() || member.fate.dies_at(DropPhase::MaskedInput) {
                        // Fetch the model, then train, while the key phases run.
                        let now = self.queue.now();
                        let fetched = self
                            .links
                            .download(p, member.profile, now, self.model_bytes);
                        let done = fetched + micros(member.training_s);
                        self.queue.at(done, Event::TrainingDone(i));
                    }
                    self.client_send(i, first);
                }
                Err(e) => {
                    tracing::warn!(client = %i, error = %e, "client refused the round config");
                    self.die(i, DropPhase::AdvertiseKeys);
                }
            }
            return;
        }
        let Some(round) = self.clients[p].round.as_mut() else {
            return;
        };
        match round.handle(m) {
            Ok(step) => self.client_step(i, step),
            Err(e) => {
                tracing::debug!(client = %i, error = %e, "client aborted its round");
            }
        }
    }

    fn on_training_done(&mut self, i: ClientIndex) {
        let p = Self::pos(i);
        if self.clients[p].dead {
            return;
        }
        let Some(round) = self.clients[p].round.as_mut() else {
            return;
        };
        let input = match &self.members[p].update {
            Some(update) => update.encoded.clone(),
            // Fated to die when it would upload: its input is never sent, so zeros will do.
            None => vec![0; round.params().vector_len as usize],
        };
        match round.provide_input(input) {
            Ok(Some(m)) => self.client_send(i, m),
            Ok(None) => {}
            Err(e) => tracing::debug!(client = %i, error = %e, "client could not use its input"),
        }
    }
}

impl SecureAttempt<'_> {
    /// Runs the attempt to its end (an unmasked sum or an abort).
    pub fn run(self, members: &[Member]) -> AttemptOutcome {
        let n = members.len();
        let mut lp = Loop {
            members,
            clients: (0..n)
                .map(|_| ClientState {
                    round: None,
                    dead: false,
                })
                .collect(),
            queue: EventQueue::new(0),
            links: Links::new(n),
            outcome: AttemptOutcome::default(),
            model_bytes: model_bytes(self.num_params),
        };
        let (mut server, first) = match ServerRound::start(
            self.round_id,
            self.params.clone(),
            self.model,
            self.deadlines,
            self.server_seed,
        ) {
            Ok(x) => x,
            Err(e) => {
                lp.outcome.abort_reason = Some(format!("unusable SecAgg+ parameters: {e}"));
                return lp.outcome;
            }
        };
        let mut pending = first;
        let mut finished_at: Option<Micros> = None;
        loop {
            for action in pending.drain(..) {
                match action {
                    ServerAction::Send { to, message } => {
                        let p = Loop::pos(to);
                        let bytes = server_message_bytes(&message);
                        let now = lp.queue.now();
                        let at = lp.links.download(p, members[p].profile, now, bytes);
                        lp.queue.at(at, Event::ToClient(to, message));
                    }
                    ServerAction::SetDeadline { phase, after } => {
                        lp.queue
                            .after(micros(after.as_secs_f64()), Event::Deadline(phase));
                    }
                    ServerAction::Refused { client, error } => {
                        tracing::debug!(%client, %error, "server refused a message");
                    }
                    ServerAction::Removed { client, error } => {
                        tracing::warn!(%client, %error, "server removed a client");
                        lp.outcome.removed += 1;
                    }
                    ServerAction::Unmask(job) => {
                        let cost = job.num_streams() as f64 * f64::from(self.params.vector_len)
                            / UNMASK_ELEMENTS_PER_S;
                        finished_at = Some(lp.queue.now() + micros(cost));
                        match job.run(self.threads) {
                            Ok(sum) => match self.quantizer.decode_sum(&sum.sum) {
                                Ok(decoded) => {
                                    lp.outcome.participants = sum.contributors.len();
                                    let mut loss = 0.0f64;
                                    let mut weight = 0.0f64;
                                    for c in &sum.contributors {
                                        if let Some(u) = &members[Loop::pos(*c)].update {
                                            loss += f64::from(u.loss) * u.examples as f64;
                                            weight += u.examples as f64;
                                        }
                                    }
                                    if weight > 0.0 {
                                        lp.outcome.train_loss = Some((loss / weight) as f32);
                                    }
                                    lp.outcome.mean = Some(decoded.mean);
                                }
                                Err(e) => {
                                    lp.outcome.abort_reason = Some(format!("decoding failed: {e}"))
                                }
                            },
                            Err(e) => {
                                lp.outcome.abort_reason = Some(format!("unmasking failed: {e}"))
                            }
                        }
                    }
                    ServerAction::Aborted(reason) => {
                        finished_at = Some(lp.queue.now());
                        lp.outcome.abort_reason = Some(reason.to_string());
                    }
                }
            }
            if finished_at.is_some() {
                break;
            }
            let Some(event) = lp.queue.pop() else {
                lp.outcome.abort_reason =
                    Some("the event queue ran dry before the round ended".into());
                finished_at = Some(lp.queue.now());
                break;
            };
            match event {
                Event::ToServer(from, message) => {
                    pending = server.handle(ServerEvent::Message { from, message });
                }
                Event::Disconnected(i) => pending = server.handle(ServerEvent::Disconnected(i)),
                Event::Deadline(phase) => {
                    pending = server.handle(ServerEvent::DeadlinePassed(phase))
                }
                Event::ToClient(to, message) => {
                    let seed = self.client_seeds[Loop::pos(to)];
                    lp.on_client_message(to, message, seed);
                }
                Event::TrainingDone(i) => lp.on_training_done(i),
            }
        }
        let mut outcome = lp.outcome;
        outcome.duration = finished_at.unwrap_or(0);
        outcome.bytes_up = lp.links.bytes_up;
        outcome.bytes_down = lp.links.bytes_down;
        outcome
    }
}
