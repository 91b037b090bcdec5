//! One SecAgg+ round attempt on the virtual clock: the production [`ServerRound`] and one
//! [`ClientRound`] per cohort member, with every message timed by the sender's link. The
//! server's deadline is the queue's one timer: after every server event it is set to the state
//! machine's `poll_timeout` (moved, not added to, when a phase ends), and when it fires the
//! server gets `handle_timeout` at that virtual time.
//!
//! Every member has an Ed25519 identity key (the engine draws it from the client's own seed
//! stream, the same in every round, as a device keeps its enrolled key), and the server and
//! every member hold the directory of the attempt's members' keys (in a deployment, the
//! identity log). Members start with [`ClientRound::start_with`] and the experiment's
//! adversarial and dropout fractions (their parameter floor); with
//! `secagg.consistency_check` they sign their R0 keys and the R2.5 survivor set, and the
//! server ([`CutoffRound::start_with_identities`]) removes a member whose signature does not
//! verify.
//!
//! A member receives its round config, then downloads the global model and trains (its update
//! was computed beforehand, in parallel; here only the simulated time passes) while the key
//! phases run, and hands its encoded update to its `ClientRound` when training ends. A member
//! fated to drop at a phase (R2.5 included) dies when it would send that phase's message: it
//! either closes its
//! connection (the server gets [`ServerEvent::Disconnected`] one latency later) or crashes
//! silently (the server notices when the phase deadline passes).
//!
//! ## Parallel client events
//! Clients share no state, and the key agreements and mask expansions they run dominate a
//! large round. So the loop pops, together, a run of consecutive client-side events (a server
//! message arriving, training ending, a stop) that fall within the *lookahead* of the first:
//! the smallest one-way latency of any member. Nothing a client does at time t can reach
//! anyone before t + lookahead, so no event produced by the run could come before the run's
//! last event. The run's events are handled on worker threads, one client's events in order
//! on one thread, and what they produce (sends, training starts, deaths) is then applied in
//! the order in which the events were popped. The queue, the links and the counters therefore
//! see exactly what a one-event-at-a-time loop would, whatever the thread count.
//!
//! ## Over-selection
//! The server runs `cohort-task`'s [`CutoffRound`], as the coordinator does: with more members
//! than the plan's cut-off, the first `cutoff` masked inputs are summed and every other member
//! is dropped from the round (a dropout for the protocol, whose masks R3 removes) and sent the
//! stop notice, which reaches each live one a link later; anything they still send is
//! discarded. Live members stopped this way are counted in [`AttemptOutcome::stopped`], not as
//! dropouts.

use cohort_aggregation::secagg::client::ClientOptions;
use cohort_aggregation::secagg::{
    ClientRound, ClientStep, IdentityDirectory, Phase, ServerAction, ServerEvent, ServerRound,
    SigningKey,
};
use cohort_protocol::{ClientIndex, ClientMessage, ContentHash, RoundId, ServerMessage};
use cohort_task::RoundPlan;
use cohort_task::cutoff::{CutoffRound, is_stop};

use crate::attempt::{
    AttemptOutcome, Links, Member, client_message_bytes, model_bytes, server_message_bytes,
};
use crate::clock::{EventQueue, Micros, from_time, micros, to_time};
use crate::cohort::DropPhase;
use crate::parallel::{map_ordered, map_owned};

/// Below this many pending server actions, their wire sizes are computed on this thread.
const PARALLEL_SIZES_MIN: usize = 64;

/// Rate at which the simulated server expands mask streams when unmasking, in ring elements
/// per second (a ChaCha20 keystream at about 2 GB/s on one core).
pub const UNMASK_ELEMENTS_PER_S: f64 = 5.0e8;

/// Everything a SecAgg+ attempt needs besides the members.
pub struct SecureAttempt<'a> {
    /// The round id (unique per attempt).
    pub round_id: RoundId,
    /// The attempt's plan: SecAgg+ parameters (n = the cohort's size), deadlines, cut-off.
    pub plan: &'a RoundPlan,
    /// The global model's hash (sent in the round config).
    pub model: ContentHash,
    /// Model parameters (for the download size).
    pub num_params: usize,
    /// The server's seed.
    pub server_seed: [u8; 32],
    /// Each member's seed, by cohort position.
    pub client_seeds: Vec<[u8; 32]>,
    /// Each member's identity key, by cohort position (member i + 1 of the directory).
    pub identities: Vec<SigningKey>,
    /// The adversarial fraction the members assume (`secagg.adversarial_fraction`): their
    /// parameter floor.
    pub adversarial: f64,
    /// The dropout fraction the members assume (`secagg.dropout_fraction`).
    pub dropout: f64,
    /// Worker threads for client events and unmasking.
    pub threads: usize,
}

enum Event {
    ToServer(ClientIndex, ClientMessage),
    Disconnected(ClientIndex),
    ToClient(ClientIndex, ServerMessage),
    /// The server's timer (the queue's one timer): the deadline of the phase in progress.
    Timeout,
    TrainingDone(ClientIndex),
    /// The server's "stop" reaches an over-selected client.
    Stop(ClientIndex),
}

impl Event {
    /// The client whose own state is all this event touches, for client-side events.
    fn client(&self) -> Option<ClientIndex> {
        match self {
            Event::ToClient(i, _) | Event::TrainingDone(i) | Event::Stop(i) => Some(*i),
            Event::ToServer(..) | Event::Disconnected(_) | Event::Timeout => None,
        }
    }
}

#[derive(Default)]
struct ClientState {
    round: Option<ClientRound>,
    dead: bool,
}

/// What handling a client-side event asks of the loop, in order.
enum Effect {
    /// Fetch the model, then train: schedules `TrainingDone`.
    StartTraining,
    /// Send this message of this many bytes on the wire.
    Send(ClientMessage, u64),
    /// The client died at this phase.
    Died(DropPhase),
}

fn phase_of(m: &ClientMessage) -> Option<DropPhase> {
    match m {
        ClientMessage::AdvertiseKeys(_) => Some(DropPhase::AdvertiseKeys),
        ClientMessage::ShareKeys(_) => Some(DropPhase::ShareKeys),
        ClientMessage::MaskedInput(_) => Some(DropPhase::MaskedInput),
        ClientMessage::ConsistencyCheck(_) => Some(DropPhase::ConsistencyCheck),
        ClientMessage::Unmask(_) => Some(DropPhase::Unmask),
        _ => None,
    }
}

/// One client's side of the attempt: everything here reads and writes only that client's
/// member record and state, so clients can be handled on different threads.
struct ClientCtx<'a> {
    member: &'a Member,
    seed: [u8; 32],
    identity: &'a SigningKey,
    directory: &'a IdentityDirectory,
    fractions: (f64, f64),
    state: ClientState,
    effects: Vec<Effect>,
}

impl ClientCtx<'_> {
    fn handle(&mut self, event: Event) {
        match event {
            Event::ToClient(i, m) => self.on_message(i, m),
            Event::TrainingDone(i) => self.on_training_done(i),
            Event::Stop(_) => {
                self.state.dead = true;
                self.state.round = None;
            }
            Event::ToServer(..) | Event::Disconnected(_) | Event::Timeout => {}
        }
    }

    /// The client sends `m` now, or dies if this is the phase its fate names.
    fn send(&mut self, m: ClientMessage) {
        if let Some(phase) = phase_of(&m)
            && self.member.fate.dies_at(phase)
        {
            self.die(phase);
            return;
        }
        let bytes = client_message_bytes(&m);
        self.effects.push(Effect::Send(m, bytes));
    }

    fn die(&mut self, phase: DropPhase) {
        if self.state.dead {
            return;
        }
        self.state.dead = true;
        self.state.round = None;
        self.effects.push(Effect::Died(phase));
    }

    fn on_message(&mut self, i: ClientIndex, m: ServerMessage) {
        if self.state.dead {
            return;
        }
        if let ServerMessage::RoundConfig(config) = m {
            let options = ClientOptions {
                identity: Some(self.identity.clone()),
                directory: Some(self.directory.clone()),
                adversarial: self.fractions.0,
                dropout: self.fractions.1,
                parameter_floor: true,
                ..ClientOptions::default()
            };
            match ClientRound::start_with(config, self.seed, options) {
                Ok((round, first)) => {
                    self.state.round = Some(round);
                    let fate = self.member.fate;
                    // Members that get as far as training (including those fated to die
                    // just before uploading) fetch the model and train while the key phases run.
                    if fate.uploads() || fate.dies_at(DropPhase::MaskedInput) {
                        self.effects.push(Effect::StartTraining);
                    }
                    self.send(first);
                }
                Err(e) => {
                    tracing::warn!(client = %i, error = %e, "client refused the round config");
                    self.die(DropPhase::AdvertiseKeys);
                }
            }
            return;
        }
        let Some(round) = self.state.round.as_mut() else {
            return;
        };
        match round.handle(m) {
            Ok(ClientStep::Send(m)) => self.send(m),
            Ok(ClientStep::NeedInput | ClientStep::Finished(_)) => {}
            Err(e) => {
                tracing::debug!(client = %i, error = %e, "client aborted its round");
            }
        }
    }

    fn on_training_done(&mut self, i: ClientIndex) {
        if self.state.dead {
            return;
        }
        let Some(round) = self.state.round.as_mut() else {
            return;
        };
        let input = match &self.member.update {
            Some(update) => update.encoded.clone(),
            // Fated to die when it would upload: its input is never sent, so zeros will do.
            None => vec![0; round.params().vector_len as usize],
        };
        match round.provide_input(input) {
            Ok(Some(m)) => self.send(m),
            Ok(None) => {}
            Err(e) => tracing::debug!(client = %i, error = %e, "client could not use its input"),
        }
    }
}

struct Loop<'m> {
    members: &'m [Member],
    seeds: &'m [[u8; 32]],
    identities: &'m [SigningKey],
    directory: &'m IdentityDirectory,
    fractions: (f64, f64),
    clients: Vec<ClientState>,
    queue: EventQueue<Event>,
    links: Links,
    outcome: AttemptOutcome,
    model_bytes: u64,
    threads: usize,
    /// No client event at t makes anything happen before t + lookahead.
    lookahead: Micros,
    /// Per member: told to stop (over-selection); what it sends is discarded.
    stopped: Vec<bool>,
    /// The phase and time the queue's timer was set for (see [`Loop::arm_timer`]).
    armed: Option<(Phase, Micros)>,
}

impl Loop<'_> {
    fn pos(i: ClientIndex) -> usize {
        i.0 as usize - 1
    }

    /// Moves the queue's timer to the server's deadline (or clears it once the round is over)
    /// when a phase started. Untouched while a phase goes on, so that it keeps the turn among
    /// events of its time that it got when the phase started.
    fn arm_timer(&mut self, server: &ServerRound) {
        let wanted = server
            .poll_timeout()
            .map(|at| (server.phase(), from_time(at)));
        if wanted == self.armed {
            return;
        }
        match wanted {
            Some((_, at)) => self.queue.set_timer(at, Event::Timeout),
            None => self.queue.clear_timer(),
        }
        self.armed = wanted;
    }

    /// Handles a run of client-side events (in pop order, with their times): each client's
    /// events in order on a worker thread, then their effects in pop order.
    fn client_batch(&mut self, batch: Vec<(Micros, Event)>) {
        let mut group_of: std::collections::HashMap<usize, usize> = Default::default();
        let mut groups: Vec<(usize, Vec<(usize, Event)>)> = Vec::new();
        let times: Vec<(Micros, ClientIndex)> = batch
            .iter()
            .map(|(t, e)| (*t, e.client().unwrap_or(ClientIndex(0))))
            .collect();
        for (k, (_, event)) in batch.into_iter().enumerate() {
            let Some(i) = event.client() else { continue };
            let p = Self::pos(i);
            let g = *group_of.entry(p).or_insert_with(|| {
                groups.push((p, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((k, event));
        }
        let work: Vec<(ClientCtx<'_>, Vec<(usize, Event)>)> = groups
            .into_iter()
            .map(|(p, events)| {
                let ctx = ClientCtx {
                    member: &self.members[p],
                    seed: self.seeds[p],
                    identity: &self.identities[p],
                    directory: self.directory,
                    fractions: self.fractions,
                    state: std::mem::take(&mut self.clients[p]),
                    effects: Vec::new(),
                };
                (ctx, events)
            })
            .collect();
        let threads = if times.len() > 1 { self.threads } else { 1 };
        let done = map_owned(work, threads, |(mut ctx, events)| {
            let mut per_event = Vec::with_capacity(events.len());
            for (k, event) in events {
                ctx.handle(event);
                per_event.push((k, std::mem::take(&mut ctx.effects)));
            }
            (ctx.state, per_event)
        });
        let mut effects: Vec<Vec<Effect>> = times.iter().map(|_| Vec::new()).collect();
        for (state, per_event) in done {
            let p = per_event.first().map(|(k, _)| Self::pos(times[*k].1));
            for (k, e) in per_event {
                effects[k] = e;
            }
            if let Some(p) = p {
                self.clients[p] = state;
            }
        }
        for ((t, i), effects) in times.into_iter().zip(effects) {
            self.apply(t, i, effects);
        }
    }

    /// Carries out what client `i`'s event at `t` produced.
    fn apply(&mut self, t: Micros, i: ClientIndex, effects: Vec<Effect>) {
        let p = Self::pos(i);
        let member = &self.members[p];
        for effect in effects {
            match effect {
                Effect::StartTraining => {
                    let fetched = self.links.download(p, member.profile, t, self.model_bytes);
                    let done = fetched + micros(member.training_s);
                    self.queue.at(done, Event::TrainingDone(i));
                }
                Effect::Send(m, bytes) => {
                    let at = self.links.upload(p, member.profile, t, bytes);
                    self.queue.at(at, Event::ToServer(i, m));
                }
                Effect::Died(phase) => {
                    self.outcome.count_drop(phase);
                    if member.fate.disconnect {
                        self.queue
                            .at(t + micros(member.profile.latency_s), Event::Disconnected(i));
                    }
                }
            }
        }
    }
}

impl SecureAttempt<'_> {
    /// Runs the attempt to its end (an unmasked sum or an abort).
    pub fn run(self, members: &[Member]) -> AttemptOutcome {
        let n = members.len();
        let lookahead = members
            .iter()
            .map(|m| micros(m.profile.latency_s))
            .min()
            .unwrap_or(0);
        let directory: IdentityDirectory = {
            let mut d = IdentityDirectory::new();
            for (p, key) in self.identities.iter().enumerate() {
                d.insert(ClientIndex(p as u32 + 1), key.verifying_key());
            }
            d
        };
        let mut lp = Loop {
            members,
            seeds: &self.client_seeds,
            identities: &self.identities,
            directory: &directory,
            fractions: (self.adversarial, self.dropout),
            clients: (0..n).map(|_| ClientState::default()).collect(),
            queue: EventQueue::new(0),
            links: Links::new(n),
            outcome: AttemptOutcome::default(),
            model_bytes: model_bytes(self.num_params),
            threads: self.threads.max(1),
            lookahead,
            stopped: vec![false; n],
            armed: None,
        };
        if self.client_seeds.len() != n || self.identities.len() != n {
            lp.outcome.abort_reason = Some(format!(
                "{} client seeds and {} identity keys for {n} members (a simulator bug)",
                self.client_seeds.len(),
                self.identities.len()
            ));
            return lp.outcome;
        }
        let vector_len = self.plan.secagg.as_ref().map_or(0, |p| p.vector_len);
        let (mut server, first) = match CutoffRound::start_with_identities(
            to_time(lp.queue.now()),
            self.plan,
            self.round_id,
            self.model,
            self.server_seed,
            Some(directory.clone()),
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
            // Wire sizes of a broadcast (up to n messages, CBOR-encoded to be measured) are
            // computed in parallel; the sends are then scheduled in order.
            let sizes: Vec<u64> = {
                let size = |a: &ServerAction| match a {
                    ServerAction::Send { message, .. } => server_message_bytes(message),
                    _ => 0,
                };
                if pending.len() >= PARALLEL_SIZES_MIN {
                    map_ordered(&pending, lp.threads, size)
                } else {
                    pending.iter().map(size).collect()
                }
            };
            for (action, bytes) in pending.drain(..).zip(sizes) {
                match action {
                    ServerAction::Send { to, message } if is_stop(&message) => {
                        // The cut-off: the member is out of the round; a live one hears so a
                        // link later and stops.
                        let p = Loop::pos(to);
                        lp.stopped[p] = true;
                        if !lp.clients[p].dead {
                            lp.outcome.stopped += 1;
                            let now = lp.queue.now();
                            let at = lp.links.download(p, members[p].profile, now, bytes);
                            lp.queue.at(at, Event::Stop(to));
                        }
                    }
                    ServerAction::Send { to, message } => {
                        let p = Loop::pos(to);
                        let now = lp.queue.now();
                        let at = lp.links.download(p, members[p].profile, now, bytes);
                        lp.queue.at(at, Event::ToClient(to, message));
                    }
                    ServerAction::Refused { client, error } => {
                        tracing::debug!(%client, %error, "server refused a message");
                    }
                    ServerAction::Removed { client, error } => {
                        tracing::warn!(%client, %error, "server removed a client");
                        lp.outcome.removed += 1;
                    }
                    ServerAction::Unmask(job) => {
                        let cost = job.num_streams() as f64 * f64::from(vector_len)
                            / UNMASK_ELEMENTS_PER_S;
                        finished_at = Some(lp.queue.now() + micros(cost));
                        match job.run(self.threads) {
                            Ok(sum) => {
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
                                // Decoded, with the strategy step, by the engine
                                // (`cohort_task::outcome`).
                                lp.outcome.sum = Some(sum);
                            }
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
            lp.arm_timer(&server);
            let Some((t, event)) = lp.queue.pop_timed() else {
                lp.outcome.abort_reason =
                    Some("the event queue ran dry before the round ended".into());
                finished_at = Some(lp.queue.now());
                break;
            };
            if event.client().is_some() {
                // A run of client events within the lookahead of this one (see the module docs).
                let horizon = t.saturating_add(lp.lookahead);
                let mut batch = vec![(t, event)];
                while let Some((at, next)) = lp.queue.peek() {
                    if next.client().is_none() || !(at == t || at < horizon) {
                        break;
                    }
                    match lp.queue.pop_timed() {
                        Some(e) => batch.push(e),
                        None => break,
                    }
                }
                lp.client_batch(batch);
                continue;
            }
            match event {
                Event::ToServer(from, message) => {
                    let p = Loop::pos(from);
                    if lp.stopped[p] {
                        // Told to stop: the server no longer listens to it.
                        continue;
                    }
                    pending = server.handle(to_time(t), ServerEvent::Message { from, message });
                }
                Event::Disconnected(i) => {
                    if !lp.stopped[Loop::pos(i)] {
                        pending = server.handle(to_time(t), ServerEvent::Disconnected(i));
                    }
                }
                Event::Timeout => {
                    // The timer fired and is unset: the next turn sets it for the next phase.
                    lp.armed = None;
                    pending = server.handle_timeout(to_time(t));
                }
                Event::ToClient(..) | Event::TrainingDone(_) | Event::Stop(_) => {}
            }
        }
        let mut outcome = lp.outcome;
        outcome.duration = finished_at.unwrap_or(0);
        outcome.bytes_up = lp.links.bytes_up;
        outcome.bytes_down = lp.links.bytes_down;
        outcome
    }
}
