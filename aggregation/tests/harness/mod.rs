//! An in-memory driver for one SecAgg+ round: a `ServerRound`, n `ClientRound`s, a message queue,
//! scripted dropouts and tampering hooks. No sockets, no sleeps (quinn-proto's test style).
//!
//! Time is virtual: it advances by [`STEP`] with every message the server handles, and jumps to
//! the server's [`ServerRound::poll_timeout`] when nothing is left to deliver; the round is
//! driven only by messages, disconnects and `handle_timeout`. Every run checks the time model
//! as it goes: each phase's deadline is its start plus its `PhaseDeadlines` entry, and
//! `handle_timeout` before the deadline changes nothing.

#![allow(dead_code)]

pub mod knowledge;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use cohort_aggregation::secagg::client::ClientOptions;
use cohort_aggregation::secagg::graph::NeighbourGraph;
use cohort_aggregation::secagg::{
    AbortReason, ClientRound, ClientStep, IdentityDirectory, Phase, PhaseDeadlines, RoundError,
    ServerAction, ServerEvent, ServerRound, SigningKey, UnmaskedSum, recommended_params,
};
use cohort_aggregation::time::Time;
use cohort_protocol::{
    ClientIndex, ClientMessage, ContentHash, EncodingParams, RoundId, SecAggParams, ServerMessage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// When the round starts on the harness's clock (any epoch will do: only differences matter).
pub const START: Time = Time::new(Duration::from_secs(1_000));

/// How far the clock moves with each message the server handles.
pub const STEP: Duration = Duration::from_millis(1);

/// When a client stops answering.
#[allow(clippy::enum_variant_names)] // "before X" is the point of each variant
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropPoint {
    /// Never answers the round config (not in U1).
    BeforeAdvertise,
    /// Advertises keys, then dies on the R1 request (in U1, not U2).
    BeforeShareKeys,
    /// Sends shares, then dies on the R2 request (in U2, not U3).
    BeforeMaskedInput,
    /// Sends its masked input, then dies on the R2.5 request (in U3, signs nothing).
    BeforeConsistency,
    /// Sends its masked input, then dies on the R3 request (in U3, no R3 answer).
    BeforeUnmask,
}

/// Hook to rewrite a client's message before the server sees it: return nothing to drop it, or
/// several messages to duplicate or inject.
pub type ClientTamper = Box<dyn FnMut(ClientIndex, ClientMessage) -> Vec<ClientMessage>>;
/// Hook to rewrite a server message before the client sees it.
pub type ServerTamper = Box<dyn FnMut(ClientIndex, ServerMessage) -> ServerMessage>;
/// Returns a message to deliver right after the given one, to the same client.
pub type Inject = Box<dyn FnMut(ClientIndex, &ServerMessage) -> Option<ServerMessage>>;
/// Called once, when the neighbour graph is known (the first R1 message), to script dropouts
/// that depend on it.
pub type GraphHook = Box<dyn FnMut(&NeighbourGraph, &mut BTreeMap<ClientIndex, DropPoint>)>;

pub struct Outcome {
    pub result: Result<UnmaskedSum, AbortReason>,
    pub refused: Vec<(ClientIndex, RoundError)>,
    pub removed: Vec<(ClientIndex, RoundError)>,
    pub client_errors: BTreeMap<ClientIndex, String>,
    /// Every masked input the server received, as received.
    pub masked_inputs: Vec<(ClientIndex, Vec<u32>)>,
    /// Each client's plain (encoded) input.
    pub inputs: Vec<Vec<u32>>,
    /// Clients that sent a masked input which the server accepted into the sum.
    pub sent_masked: Vec<ClientIndex>,
    /// The server after the round, to feed it late messages.
    pub server: ServerRound,
    /// Each client's `ClientRound::start` seed, by index − 1 (a colluder hands it over).
    pub seeds: Vec<[u8; 32]>,
    /// Every message the clients received, after tampering, in order.
    pub to_clients: Vec<(ClientIndex, ServerMessage)>,
    /// Every message the server received, after tampering, in order.
    pub to_server: Vec<(ClientIndex, ClientMessage)>,
    /// What each client's round ended with, if it got a `RoundResult`.
    pub results: BTreeMap<ClientIndex, cohort_protocol::RoundResult>,
    /// Each phase that ended because its deadline passed, with the time `handle_timeout` was
    /// called (the deadline itself).
    pub timeouts: Vec<(Phase, Time)>,
    /// Each phase the server entered (after R0), with the time it started.
    pub phase_starts: Vec<(Phase, Time)>,
    /// The harness's clock when the round ended.
    pub now: Time,
}

/// What [`Harness::run`] collects before it hands back the server.
struct Partial {
    result: Result<UnmaskedSum, AbortReason>,
    refused: Vec<(ClientIndex, RoundError)>,
    removed: Vec<(ClientIndex, RoundError)>,
    client_errors: BTreeMap<ClientIndex, String>,
    masked_inputs: Vec<(ClientIndex, Vec<u32>)>,
    inputs: Vec<Vec<u32>>,
    sent_masked: Vec<ClientIndex>,
    seeds: Vec<[u8; 32]>,
    to_clients: Vec<(ClientIndex, ServerMessage)>,
    to_server: Vec<(ClientIndex, ClientMessage)>,
    results: BTreeMap<ClientIndex, cohort_protocol::RoundResult>,
}

pub struct Harness {
    pub server: ServerRound,
    pub clients: Vec<Option<ClientRound>>,
    pub inputs: Vec<Vec<u32>>,
    pub drops: BTreeMap<ClientIndex, DropPoint>,
    pub client_tamper: Option<ClientTamper>,
    pub server_tamper: Option<ServerTamper>,
    pub on_graph: Option<GraphHook>,
    /// Called after each server message is delivered: a message to deliver to the same client
    /// right after it (a retransmission, or a contradicting second request).
    pub inject: Option<Inject>,
    /// Each client's options, by index − 1.
    pub options: Vec<ClientOptions>,
    /// Clients in `drops` that crash silently (the server is not told; their phase waits for
    /// its deadline). The others close their connection, which the server hears at once.
    pub silent: BTreeSet<ClientIndex>,
    queue: VecDeque<ServerAction>,
    round_id: RoundId,
    deadlines: PhaseDeadlines,
    now: Time,
    phase: Phase,
    timeouts: Vec<(Phase, Time)>,
    phase_starts: Vec<(Phase, Time)>,
}

pub fn encoding() -> EncodingParams {
    EncodingParams {
        clip: 1.0,
        value_bits: 16,
        max_weight: 1,
        ring_bits: 32,
    }
}

/// Identity keys for clients 1..=n, from `seed`.
pub fn identities(n: u32, seed: u64) -> Vec<SigningKey> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x1d);
    (0..n)
        .map(|_| SigningKey::from_bytes(&rng.random()))
        .collect()
}

pub fn directory_of(keys: &[SigningKey]) -> IdentityDirectory {
    keys.iter()
        .enumerate()
        .map(|(i, k)| (ClientIndex(i as u32 + 1), k.verifying_key()))
        .collect()
}

/// Active-model parameters (semi-malicious class, consistency check on).
pub fn active_params(n: u32, len: u32) -> SecAggParams {
    cohort_aggregation::secagg::recommended_params_with(n, len, encoding(), 0.05, 0.10, true)
        .expect("valid params")
}

pub fn params_for(n: u32, len: u32) -> SecAggParams {
    recommended_params(n, len, encoding(), 0.05, 0.10).expect("valid params")
}

/// Complete-graph parameters with t = q_min = max(⌊n/2⌋ + 1, ⌈0.9·n⌉), whatever the finder
/// would choose for n.
pub fn complete_params(n: u32, len: u32) -> SecAggParams {
    let mut p = params_for(n, len);
    let q = (n / 2 + 1).max((n * 9).div_ceil(10));
    p.neighbours = n - 1;
    p.threshold = q;
    p.min_survivors = q;
    p
}

impl Harness {
    /// A round of `params.num_clients` clients with random inputs of `params.vector_len`.
    pub fn new(params: SecAggParams, seed: u64) -> Self {
        Self::new_with_directory(params, seed, None)
    }

    /// [`Harness::new`] with the server given an identity directory.
    pub fn new_with_directory(
        params: SecAggParams,
        seed: u64,
        directory: Option<IdentityDirectory>,
    ) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let round_id = RoundId(7);
        let n = params.num_clients as usize;
        let len = params.vector_len as usize;
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..len).map(|_| rng.random()).collect())
            .collect();
        let deadlines = PhaseDeadlines::default();
        let (server, actions) = ServerRound::start_with_identities(
            START,
            round_id,
            params,
            ContentHash::of(b"model"),
            deadlines,
            rng.random(),
            directory,
        )
        .expect("round starts");
        assert_eq!(
            server.poll_timeout(),
            Some(START + deadlines.advertise_keys),
            "R0 ends at the start plus its deadline"
        );
        Self {
            server,
            clients: (0..n).map(|_| None).collect(),
            inputs,
            drops: BTreeMap::new(),
            client_tamper: None,
            server_tamper: None,
            on_graph: None,
            inject: None,
            options: vec![ClientOptions::default(); n],
            silent: BTreeSet::new(),
            queue: actions.into(),
            round_id,
            deadlines,
            now: START,
            phase: Phase::AdvertiseKeys,
            timeouts: Vec::new(),
            phase_starts: Vec::new(),
        }
    }

    /// The deadline of `phase` as the task set it (R2.5 shares R3's).
    fn phase_deadline(&self, phase: Phase) -> Duration {
        match phase {
            Phase::AdvertiseKeys => self.deadlines.advertise_keys,
            Phase::ShareKeys => self.deadlines.share_keys,
            Phase::MaskedInput => self.deadlines.masked_input,
            _ => self.deadlines.unmask,
        }
    }

    /// Feeds the server one event at the current time, then moves the clock one step.
    fn feed(&mut self, event: ServerEvent) {
        let actions = self.server.handle(self.now, event);
        self.took(actions);
        self.now = self.now + STEP;
    }

    /// Queues what the server asked for and checks the deadline of a phase it just entered.
    fn took(&mut self, actions: Vec<ServerAction>) {
        self.queue.extend(actions);
        let phase = self.server.phase();
        if phase != self.phase {
            self.phase = phase;
            self.phase_starts.push((phase, self.now));
            let expected = (phase < Phase::Finished).then(|| self.now + self.phase_deadline(phase));
            assert_eq!(
                self.server.poll_timeout(),
                expected,
                "{phase} started at {:?}: its deadline is the start plus the task's",
                self.now
            );
        }
    }

    /// Nothing is left to deliver: the clock jumps to the deadline of the phase in progress,
    /// after checking that an earlier `handle_timeout` changes nothing.
    fn time_out(&mut self) {
        let phase = self.server.phase();
        assert!(
            phase < Phase::Finished,
            "queue empty after the round ended without an outcome"
        );
        let deadline = self
            .server
            .poll_timeout()
            .expect("a round in progress has a deadline");
        if self.now < deadline {
            for early in [
                self.now,
                Time::new(deadline.since_epoch() - Duration::from_nanos(1)),
            ] {
                let actions = self.server.handle_timeout(early);
                assert!(
                    actions.is_empty(),
                    "handle_timeout before the deadline acted: {actions:?}"
                );
                assert_eq!(self.server.phase(), phase);
                assert_eq!(self.server.poll_timeout(), Some(deadline));
            }
            self.now = deadline;
        }
        self.timeouts.push((phase, self.now));
        let actions = self.server.handle_timeout(self.now);
        assert_ne!(
            self.server.phase(),
            phase,
            "{phase} did not end at its deadline"
        );
        self.took(actions);
    }

    /// A round with the consistency check: `params` must have `consistency_check`; every client
    /// gets an identity key and the directory of all of them, and so does the server.
    pub fn new_active(params: SecAggParams, seed: u64) -> Self {
        assert!(params.consistency_check);
        let n = params.num_clients;
        let keys = identities(n, seed);
        let directory = directory_of(&keys);
        let mut h = Self::new_with_directory(params, seed, Some(directory.clone()));
        for (i, key) in keys.into_iter().enumerate() {
            h.options[i].identity = Some(key);
            h.options[i].directory = Some(directory.clone());
        }
        h
    }

    fn drop_point(&self, u: ClientIndex) -> Option<DropPoint> {
        self.drops.get(&u).copied()
    }

    /// Runs the round to its end. The phase in progress times out whenever the queue runs dry.
    pub fn run(mut self) -> Outcome {
        let mut out = Partial {
            result: Err(AbortReason::NotEnoughShares {
                missing: 0,
                needed: 0,
            }),
            refused: Vec::new(),
            removed: Vec::new(),
            client_errors: BTreeMap::new(),
            masked_inputs: Vec::new(),
            inputs: self.inputs.clone(),
            sent_masked: Vec::new(),
            seeds: vec![[0; 32]; self.clients.len()],
            to_clients: Vec::new(),
            to_server: Vec::new(),
            results: BTreeMap::new(),
        };
        let mut seeds = ChaCha20Rng::seed_from_u64(99);
        let mut finished = false;
        let mut guard = 0;
        while !finished {
            guard += 1;
            assert!(guard < 10_000_000, "round does not terminate");
            let Some(action) = self.queue.pop_front() else {
                self.time_out();
                continue;
            };
            match action {
                ServerAction::Send { to, message } => {
                    if matches!(message, ServerMessage::ShareKeys(_))
                        && let Some(mut hook) = self.on_graph.take()
                    {
                        hook(self.server.graph(), &mut self.drops);
                    }
                    let message = match self.server_tamper.as_mut() {
                        Some(t) => t(to, message),
                        None => message,
                    };
                    out.to_clients.push((to, message.clone()));
                    let extra = self.inject.as_mut().and_then(|f| f(to, &message));
                    let mut replies = self.deliver(to, message, &mut seeds, &mut out);
                    if let Some(extra) = extra {
                        out.to_clients.push((to, extra.clone()));
                        replies.extend(self.deliver(to, extra, &mut seeds, &mut out));
                    }
                    let replies: Vec<ClientMessage> = match self.client_tamper.as_mut() {
                        Some(t) => replies.into_iter().flat_map(|r| t(to, r)).collect(),
                        None => replies,
                    };
                    for reply in replies {
                        if let ClientMessage::MaskedInput(m) = &reply {
                            out.masked_inputs.push((to, m.vector.unpack()));
                        }
                        out.to_server.push((to, reply.clone()));
                        self.feed(ServerEvent::Message {
                            from: to,
                            message: reply,
                        });
                    }
                }
                ServerAction::Refused { client, error } => out.refused.push((client, error)),
                ServerAction::Removed { client, error } => out.removed.push((client, error)),
                ServerAction::Unmask(job) => {
                    out.result = Ok(job.run(2).expect("unmasking succeeds"));
                    finished = true;
                }
                ServerAction::Aborted(reason) => {
                    out.result = Err(reason);
                    finished = true;
                }
            }
        }
        Outcome {
            result: out.result,
            refused: out.refused,
            removed: out.removed,
            client_errors: out.client_errors,
            masked_inputs: out.masked_inputs,
            inputs: out.inputs,
            sent_masked: self.server.members(3),
            server: self.server,
            seeds: out.seeds,
            to_clients: out.to_clients,
            to_server: out.to_server,
            results: out.results,
            timeouts: self.timeouts,
            phase_starts: self.phase_starts,
            now: self.now,
        }
    }

    /// A scripted dropout: the client is gone; the server hears of it unless it is `silent`.
    fn kill(&mut self, to: ClientIndex) {
        self.clients[to.0 as usize - 1] = None;
        if !self.silent.contains(&to) {
            self.feed(ServerEvent::Disconnected(to));
        }
    }

    /// Delivers a server message to a client and returns the client's replies.
    fn deliver(
        &mut self,
        to: ClientIndex,
        message: ServerMessage,
        seeds: &mut ChaCha20Rng,
        out: &mut Partial,
    ) -> Vec<ClientMessage> {
        let i = to.0 as usize - 1;
        let drop = self.drop_point(to);
        match &message {
            ServerMessage::RoundConfig(config) => {
                if drop == Some(DropPoint::BeforeAdvertise) {
                    self.kill(to);
                    return vec![];
                }
                let seed: [u8; 32] = seeds.random();
                out.seeds[i] = seed;
                match ClientRound::start_with(config.clone(), seed, self.options[i].clone()) {
                    Ok((client, advertise)) => {
                        self.clients[i] = Some(client);
                        return vec![advertise];
                    }
                    Err(e) => {
                        out.client_errors.insert(to, e.to_string());
                        return vec![];
                    }
                }
            }
            ServerMessage::ShareKeys(_) if drop == Some(DropPoint::BeforeShareKeys) => {
                self.kill(to);
                return vec![];
            }
            ServerMessage::MaskedInputRequest(_) if drop == Some(DropPoint::BeforeMaskedInput) => {
                self.kill(to);
                return vec![];
            }
            ServerMessage::ConsistencyCheck(_) if drop == Some(DropPoint::BeforeConsistency) => {
                self.kill(to);
                return vec![];
            }
            ServerMessage::Unmask(_) if drop == Some(DropPoint::BeforeUnmask) => {
                self.kill(to);
                return vec![];
            }
            _ => {}
        }
        let Some(client) = self.clients[i].as_mut() else {
            return vec![];
        };
        match client.handle(message) {
            Ok(ClientStep::Send(m)) => vec![m],
            Ok(ClientStep::NeedInput) => {
                let input = self.inputs[i].clone();
                match client.provide_input(input) {
                    Ok(Some(m)) => vec![m],
                    Ok(None) => vec![],
                    Err(e) => {
                        out.client_errors.insert(to, e.to_string());
                        vec![]
                    }
                }
            }
            Ok(ClientStep::Finished(r)) => {
                out.results.insert(to, r);
                vec![]
            }
            Err(e) => {
                out.client_errors.insert(to, e.to_string());
                self.clients[i] = None;
                self.feed(ServerEvent::Disconnected(to));
                vec![]
            }
        }
    }

    pub fn round_id(&self) -> RoundId {
        self.round_id
    }
}

/// Σ inputs of `who`, modulo 2^32.
pub fn expected_sum(inputs: &[Vec<u32>], who: &[ClientIndex]) -> Vec<u32> {
    let mut sum = vec![0u32; inputs[0].len()];
    for u in who {
        for (s, x) in sum.iter_mut().zip(&inputs[u.0 as usize - 1]) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}
