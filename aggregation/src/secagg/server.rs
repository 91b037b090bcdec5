//! The coordinator's side of one SecAgg+ round, as a state machine.
//!
//! [`ServerRound`] takes [`ServerEvent`]s (a message from a client, a client that
//! disconnected) and returns [`ServerAction`]s (messages to send, refusals, and at the end either
//! an [`UnmaskJob`] or an abort). It never holds an individual input in the clear: masked inputs
//! are added into one [`Accumulator`] as they arrive and then dropped, and only the sum can be
//! unmasked.
//!
//! Time is an input, as in `quinn-proto`: every event comes with the current [`Time`] of the
//! shell's clock. Each phase's deadline is the time the phase started plus its
//! [`PhaseDeadlines`] entry; [`ServerRound::poll_timeout`] returns the deadline of the phase in
//! progress, and [`ServerRound::handle_timeout`] closes that phase once it has passed. A shell
//! keeps one timer per round, re-armed from `poll_timeout` after every event.
//!
//! Sets, as in PROTOCOL.md: U1 advertised keys in R0, U2 sent shares in R1, U3 sent a masked input
//! in R2. A client that breaks a rule is removed at that point, which for the protocol is the same
//! as a dropout at that phase, so everyone else goes on where the protocol allows.

use std::collections::{BTreeMap, HashMap};

use cohort_protocol::{
    AdvertiseKeys, ClientIndex, ClientMessage, ConsistencyCheckRequest, ConsistencyCheckResponse,
    ContentHash, EncryptedShares, KeyCommitment, MaskedInput, MaskedInputRequest, PeerKeys,
    RoundConfig, RoundId, RoundResult, SecAggParams, ServerMessage, ShareKeysRequest,
    ShareKeysResponse, SurvivorSignature, UnmaskRequest, UnmaskResponse, codec,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use super::accumulator::{Accumulator, PackedMismatch};
use super::cipher::CIPHERTEXT_LEN;
use super::config::{ConfigError, PhaseDeadlines, min_relayed_shares, validate};
use super::graph::NeighbourGraph;
use super::identity::{
    IdentityDirectory, SIGNATURE_LEN, SignatureError, advertise_message, consistency_message,
    round_context,
};
use super::kdf;
use super::keys::{KeyError, KeyPair, parse_public_key};
use super::prg::MaskSign;
use super::shamir::{self, ShamirError, Share};
use super::unmask::{DroppedClient, MaskSeed, UnmaskJob};
use crate::time::Time;

/// A phase of the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// R0: waiting for key advertisements.
    AdvertiseKeys,
    /// R1: waiting for encrypted shares.
    ShareKeys,
    /// R2: waiting for masked inputs.
    MaskedInput,
    /// R2.5 (rounds with `consistency_check`): waiting for signatures on U3.
    ConsistencyCheck,
    /// R3: waiting for revealed shares.
    Unmask,
    /// The sum was handed out as an [`UnmaskJob`].
    Finished,
    /// The round aborted and released nothing.
    Aborted,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::AdvertiseKeys => "R0 (advertise keys)",
            Phase::ShareKeys => "R1 (share keys)",
            Phase::MaskedInput => "R2 (masked input)",
            Phase::ConsistencyCheck => "R2.5 (consistency check)",
            Phase::Unmask => "R3 (unmask)",
            Phase::Finished => "finished",
            Phase::Aborted => "aborted",
        })
    }
}

/// Something that happened, fed to [`ServerRound::handle`] with the time it happened. (A
/// deadline passing is not an event: see [`ServerRound::handle_timeout`].)
#[derive(Debug)]
pub enum ServerEvent {
    /// A message arrived from a client of this round.
    Message {
        /// The sender's index in this round (the shell maps connections to indices).
        from: ClientIndex,
        /// The message.
        message: ClientMessage,
    },
    /// The client's connection closed; it will not answer again this round.
    Disconnected(ClientIndex),
}

/// What the shell must do, returned by [`ServerRound::handle`].
#[derive(Debug)]
pub enum ServerAction {
    /// Send `message` to client `to`.
    Send {
        /// Recipient.
        to: ClientIndex,
        /// The message.
        message: ServerMessage,
    },
    /// A message was refused and ignored; the client is still in the round.
    Refused {
        /// The sender.
        client: ClientIndex,
        /// Why.
        error: RoundError,
    },
    /// The client broke a rule and is out of the round (a dropout, for the protocol).
    Removed {
        /// The client.
        client: ClientIndex,
        /// Why.
        error: RoundError,
    },
    /// R3 completed: run the job (on worker threads if you like) to obtain the sum.
    Unmask(UnmaskJob),
    /// The round aborted. Nothing was released and all round state was dropped.
    Aborted(AbortReason),
}

/// Why one client's message was refused or the client removed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundError {
    /// The index is not a client of this round.
    #[error("{0} is not a client of this round")]
    UnknownClient(ClientIndex),
    /// The message belongs to another round (replayed or misrouted).
    #[error("message for {got} arrived in {expected}; replayed or stale messages are refused")]
    WrongRound {
        /// This round.
        expected: RoundId,
        /// The message's round.
        got: RoundId,
    },
    /// The message type is not part of a SecAgg+ round.
    #[error("{message} is not a round message")]
    NotARoundMessage {
        /// The message kind.
        message: &'static str,
    },
    /// The message belongs to a phase that is over.
    #[error("late {message}: {phase} is over; it was discarded")]
    Late {
        /// The message kind.
        message: &'static str,
        /// The current phase.
        phase: Phase,
    },
    /// The message belongs to a phase that has not started, or the sender is not in the set that
    /// the phase expects answers from.
    #[error("unexpected {message} in {phase}")]
    Unexpected {
        /// The message kind.
        message: &'static str,
        /// The current phase.
        phase: Phase,
    },
    /// The client already answered this phase.
    #[error("duplicate {message}: the client already answered this phase")]
    Duplicate {
        /// The message kind.
        message: &'static str,
    },
    /// The client was removed earlier in the round.
    #[error("the client was removed from this round earlier")]
    AlreadyRemoved,
    /// A public key is malformed or of low order.
    #[error("bad {which} public key: {source}")]
    BadKey {
        /// "c_pk" or "s_pk".
        which: &'static str,
        /// The cause.
        source: KeyError,
    },
    /// The client advertised a key that another client (or its other key) already uses.
    #[error("advertised a public key already used by {other}")]
    DuplicateKey {
        /// Who used it first (possibly the client itself, for c_pk = s_pk).
        other: ClientIndex,
    },
    /// Shares addressed to a client that is not a live neighbour.
    #[error("shares addressed to {0}, which is not a neighbour that advertised keys")]
    SharesForUnknownClient(ClientIndex),
    /// Two ciphertexts for the same neighbour.
    #[error("two share ciphertexts for {0}")]
    DuplicateShares(ClientIndex),
    /// Ciphertexts missing for some neighbours.
    #[error("no share ciphertexts for {} neighbour(s), first {first}", count)]
    MissingShares {
        /// How many neighbours got nothing.
        count: usize,
        /// The first of them.
        first: ClientIndex,
    },
    /// A share ciphertext of the wrong size.
    #[error("share ciphertext for {peer} is {len} bytes, expected {CIPHERTEXT_LEN}")]
    BadCiphertextLength {
        /// Its recipient.
        peer: ClientIndex,
        /// Its length.
        len: usize,
    },
    /// A masked input of the wrong length.
    #[error("masked input has {got} elements, the round expects {expected}")]
    WrongVectorLength {
        /// The round's vector length.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A masked input packed at other bits than the round's ring.
    #[error("masked input is packed at {got} bits, the round's ring has {expected}")]
    WrongRingBits {
        /// The round's ring bits.
        expected: u8,
        /// What arrived.
        got: u8,
    },
    /// An R3 response did not reveal exactly the requested shares.
    #[error("unmask response does not match the request: {0}")]
    BadUnmaskResponse(String),
    /// Both the self-mask share and the key share of one client were sent.
    #[error("revealed both shares of {0}; that would unmask its input")]
    BothSharesRevealed(ClientIndex),
    /// A signature is missing, malformed, or does not verify under the client's identity key.
    #[error("bad signature: {0}")]
    BadSignature(SignatureError),
    /// A revealed share is malformed.
    #[error("bad share of {owner}: {source}")]
    BadShare {
        /// The share's owner.
        owner: ClientIndex,
        /// The cause.
        source: ShamirError,
    },
}

/// Why a round aborted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbortReason {
    /// Fewer clients than q_min survived a phase.
    #[error("only {survivors} clients survived {phase}, the round needs at least {needed}")]
    TooFewSurvivors {
        /// The phase that ended.
        phase: Phase,
        /// Survivors.
        survivors: usize,
        /// q_min.
        needed: usize,
    },
    /// A client's secret has fewer than t live holders, so it could not be reconstructed.
    #[error(
        "{client} has only {holders} live share holders after {phase}, the threshold is {needed}"
    )]
    TooFewShareHolders {
        /// The client.
        client: ClientIndex,
        /// The phase that ended.
        phase: Phase,
        /// Live holders.
        holders: usize,
        /// t.
        needed: usize,
    },
    /// R2.5 ended with fewer than t signatures on U3, so no client would reveal anything.
    #[error("only {signed} survivors signed U3 in R2.5, the threshold is {needed}")]
    TooFewSignatures {
        /// Valid signatures.
        signed: usize,
        /// t.
        needed: usize,
    },
    /// R3 ended without t shares for every secret.
    #[error("R3 ended with {missing} secret(s) short of {needed} shares")]
    NotEnoughShares {
        /// Secrets lacking shares.
        missing: usize,
        /// t.
        needed: usize,
    },
    /// Reconstruction produced an inconsistent secret.
    #[error("reconstructing the secret of {client} failed: {reason}")]
    ReconstructionFailed {
        /// The client.
        client: ClientIndex,
        /// Why.
        reason: String,
    },
}

/// Where one client stands in the round.
#[derive(Debug, Default)]
struct Slot {
    /// 0: selected; 1: in U1; 2: in U2; 3: in U3.
    level: u8,
    removed: bool,
    disconnected: bool,
    unmask_answered: bool,
    /// Asked to reveal shares in R3 (U3, or with the consistency check, the U3 members that
    /// signed it).
    unmask_asked: bool,
    c_pk: [u8; 32],
    s_pk: [u8; 32],
    /// The R0 signature over the keys (rounds with `consistency_check`).
    advertise_signature: Option<[u8; SIGNATURE_LEN]>,
    /// The R2.5 signature over U3.
    survivor_signature: Option<[u8; SIGNATURE_LEN]>,
}

/// The coordinator's state machine for one SecAgg+ round.
pub struct ServerRound {
    round_id: RoundId,
    params: SecAggParams,
    deadlines: PhaseDeadlines,
    phase: Phase,
    /// The time of the event being handled (the latest the shell passed in: never goes back).
    now: Time,
    /// When the phase in progress ends if it has not ended before.
    deadline: Time,
    graph: NeighbourGraph,
    slots: Vec<Slot>,
    /// A throw-away key pair to test advertised keys for low order at R0.
    probe: KeyPair,
    /// Identity keys to check signatures with (optional: the clients check them in any case).
    directory: Option<IdentityDirectory>,
    /// The directory's digest (zeros without one): the server checks signatures against its own
    /// view of the keys, as each client does.
    directory_digest: [u8; 32],
    /// SHA-256 of the round id and parameters: what R0 signatures bind.
    context: [u8; 32],
    /// The digest of the U1 roster: seeds the graph, bound by R2.5 signatures.
    roster_digest: [u8; 32],
    /// U3, sorted, once R2 ended (rounds with `consistency_check`).
    survivors: Vec<ClientIndex>,
    seen_keys: HashMap<[u8; 32], ClientIndex>,
    session_id: [u8; 32],
    /// Ciphertexts relayed in R2, by recipient (0-based).
    inbox: Vec<Vec<EncryptedShares>>,
    accumulator: Option<Accumulator>,
    /// R3 requests, by recipient, to check responses against.
    requested: BTreeMap<ClientIndex, UnmaskRequest>,
    /// Collected shares: self-mask shares of U3 and key shares of U2 ∖ U3.
    self_mask_shares: BTreeMap<ClientIndex, Collected>,
    key_shares: BTreeMap<ClientIndex, Collected>,
    /// Secrets that still have fewer than t shares.
    lacking: usize,
    /// Secrets that still have fewer shares than their target (t + 1 where that many live
    /// holders exist, for the cross-check); R3 finishes early when this reaches 0.
    unchecked: usize,
}

/// The shares of one secret collected in R3.
#[derive(Debug)]
struct Collected {
    shares: Vec<Share>,
    /// min(t + 1, live holders): one share beyond t, when available, checks the other t.
    target: usize,
}

impl std::fmt::Debug for ServerRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRound")
            .field("round_id", &self.round_id)
            .field("phase", &self.phase)
            .field("n", &self.params.num_clients)
            .finish_non_exhaustive()
    }
}

fn idx(i: ClientIndex) -> usize {
    i.0 as usize - 1
}

impl ServerRound {
    /// Starts a round at `now` with clients `1..=params.num_clients`: returns the state machine
    /// and the first actions (a [`RoundConfig`] to every client); R0's deadline is
    /// `now + deadlines.advertise_keys` ([`ServerRound::poll_timeout`]). `seed` drives every
    /// random choice the server makes (the neighbour graph), so a run is reproducible.
    pub fn start(
        now: Time,
        round_id: RoundId,
        params: SecAggParams,
        model: ContentHash,
        deadlines: PhaseDeadlines,
        seed: [u8; 32],
    ) -> Result<(Self, Vec<ServerAction>), ConfigError> {
        Self::start_with_identities(now, round_id, params, model, deadlines, seed, None)
    }

    /// [`ServerRound::start`] with the clients' identity keys (index → key), so that the server
    /// removes a client whose R0 or R2.5 signature does not verify instead of relaying it (the
    /// clients check every signature themselves in any case).
    pub fn start_with_identities(
        now: Time,
        round_id: RoundId,
        params: SecAggParams,
        model: ContentHash,
        deadlines: PhaseDeadlines,
        seed: [u8; 32],
        directory: Option<IdentityDirectory>,
    ) -> Result<(Self, Vec<ServerAction>), ConfigError> {
        validate(&params)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let n = params.num_clients;
        // Placeholder until R0 ends: the graph's permutation is drawn from the U1 roster.
        let graph = NeighbourGraph::complete(n);
        let probe = KeyPair::generate(&mut rng);
        let mut actions = Vec::with_capacity(n as usize + 1);
        for i in 1..=n {
            actions.push(ServerAction::Send {
                to: ClientIndex(i),
                message: ServerMessage::RoundConfig(RoundConfig {
                    round_id,
                    your_index: ClientIndex(i),
                    params: params.clone(),
                    model,
                    // The coordinator's driver sets it when the round is evaluated.
                    evaluate: false,
                    // The driver fills both in for rounds with the consistency check.
                    roster: Vec::new(),
                    identity_log: Vec::new(),
                }),
            });
        }
        let round = Self {
            round_id,
            now,
            deadline: now + deadlines.advertise_keys,
            deadlines,
            phase: Phase::AdvertiseKeys,
            graph,
            slots: (0..n).map(|_| Slot::default()).collect(),
            probe,
            directory_digest: directory
                .as_ref()
                .map_or([0; 32], IdentityDirectory::digest),
            directory,
            context: round_context(round_id, &params),
            roster_digest: [0; 32],
            survivors: Vec::new(),
            seen_keys: HashMap::new(),
            session_id: [0; 32],
            inbox: Vec::new(),
            accumulator: None,
            requested: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
            lacking: 0,
            unchecked: 0,
            params,
        };
        // Consume one more value so the seed's stream is not reused by anyone holding it.
        let _ = rng.next_u32();
        Ok((round, actions))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The round.
    pub fn round_id(&self) -> RoundId {
        self.round_id
    }

    /// The round's parameters.
    pub fn params(&self) -> &SecAggParams {
        &self.params
    }

    /// The neighbour graph (public: every client recomputes it from the R1 roster). Drawn when
    /// R0 ends; before that it is a placeholder complete graph.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    /// Clients in U1, U2 or U3 (`level` 1, 2 or 3), sorted.
    pub fn members(&self, level: u8) -> Vec<ClientIndex> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.level >= level)
            .map(|(i, _)| ClientIndex(i as u32 + 1))
            .collect()
    }

    /// Feeds one event that happened at `now` and returns what to do. A phase that starts
    /// because of it ends at the latest at `now` plus its deadline.
    ///
    /// The state machine does not look at the time otherwise: a message handled after the
    /// phase's deadline but before [`ServerRound::handle_timeout`] still counts, so a shell calls
    /// `handle_timeout` when [`ServerRound::poll_timeout`] passes.
    pub fn handle(&mut self, now: Time, event: ServerEvent) -> Vec<ServerAction> {
        self.advance(now);
        let mut out = Vec::new();
        match event {
            ServerEvent::Message { from, message } => self.on_message(from, message, &mut out),
            ServerEvent::Disconnected(from) => {
                if let Some(slot) = self.slot_mut(from) {
                    slot.disconnected = true;
                    self.maybe_end_phase(&mut out);
                }
            }
        }
        out
    }

    /// When the phase in progress ends unless every client it waits for answers first: the
    /// time it started plus its deadline. `None` once the round finished or aborted. A shell
    /// arms one timer at this time and calls [`ServerRound::handle_timeout`] when it fires; the
    /// value changes only when a phase ends, so re-reading it after every event is enough.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.phase {
            Phase::Finished | Phase::Aborted => None,
            _ => Some(self.deadline),
        }
    }

    /// Tells the state machine the time is `now`. Before [`ServerRound::poll_timeout`] this
    /// does nothing; at or after it, the phase in progress ends with the clients that answered
    /// it (the others are dropouts for the protocol), and the next phase starts at `now`, or the
    /// round finishes or aborts. Returns what to do.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<ServerAction> {
        self.advance(now);
        let mut out = Vec::new();
        if self
            .poll_timeout()
            .is_some_and(|deadline| self.now >= deadline)
        {
            self.end_phase(&mut out);
        }
        out
    }

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// The phase that just started ends at the latest `after` from now.
    fn arm(&mut self, after: std::time::Duration) {
        self.deadline = self.now + after;
    }

    fn slot_mut(&mut self, i: ClientIndex) -> Option<&mut Slot> {
        if i.0 == 0 {
            return None;
        }
        self.slots.get_mut(idx(i))
    }

    fn on_message(
        &mut self,
        from: ClientIndex,
        message: ClientMessage,
        out: &mut Vec<ServerAction>,
    ) {
        let kind = message.kind();
        let refuse = |error| ServerAction::Refused {
            client: from,
            error,
        };
        let Some(slot) = self.slot_mut(from) else {
            out.push(refuse(RoundError::UnknownClient(from)));
            return;
        };
        if slot.removed {
            out.push(refuse(RoundError::AlreadyRemoved));
            return;
        }
        let (round_id, msg_phase) = match &message {
            ClientMessage::AdvertiseKeys(m) => (m.round_id, Phase::AdvertiseKeys),
            ClientMessage::ShareKeys(m) => (m.round_id, Phase::ShareKeys),
            ClientMessage::MaskedInput(m) => (m.round_id, Phase::MaskedInput),
            ClientMessage::ConsistencyCheck(m) => (m.round_id, Phase::ConsistencyCheck),
            ClientMessage::Unmask(m) => (m.round_id, Phase::Unmask),
            _ => {
                out.push(refuse(RoundError::NotARoundMessage { message: kind }));
                return;
            }
        };
        if round_id != self.round_id {
            out.push(refuse(RoundError::WrongRound {
                expected: self.round_id,
                got: round_id,
            }));
            return;
        }
        if msg_phase < self.phase {
            // Includes answers after the round finished or aborted.
            let answered = answered(&self.slots[idx(from)], msg_phase);
            out.push(refuse(if answered {
                RoundError::Duplicate { message: kind }
            } else {
                RoundError::Late {
                    message: kind,
                    phase: self.phase,
                }
            }));
            return;
        }
        if msg_phase > self.phase {
            out.push(refuse(RoundError::Unexpected {
                message: kind,
                phase: self.phase,
            }));
            return;
        }
        let slot = &self.slots[idx(from)];
        if answered(slot, self.phase) {
            out.push(refuse(RoundError::Duplicate { message: kind }));
            return;
        }
        let not_asked = self.phase == Phase::Unmask && !slot.unmask_asked;
        if slot.level < phase_level(self.phase) || not_asked {
            // Not in the set this phase waits on (e.g. a client outside U2 sending a masked input).
            out.push(refuse(RoundError::Unexpected {
                message: kind,
                phase: self.phase,
            }));
            return;
        }
        let result = match message {
            ClientMessage::AdvertiseKeys(m) => self.on_advertise(from, m),
            ClientMessage::ShareKeys(m) => self.on_share_keys(from, m),
            ClientMessage::MaskedInput(m) => self.on_masked_input(from, m),
            ClientMessage::ConsistencyCheck(m) => self.on_consistency(from, m),
            ClientMessage::Unmask(m) => self.on_unmask(from, m),
            _ => unreachable!("filtered above"),
        };
        if let Err(error) = result {
            self.slots[idx(from)].removed = true;
            tracing::debug!(round = self.round_id.0, %from, %error, "client removed from round");
            out.push(ServerAction::Removed {
                client: from,
                error,
            });
        }
        if self.phase == Phase::Unmask && self.unchecked == 0 {
            self.finish(out);
        } else {
            self.maybe_end_phase(out);
        }
    }

    fn on_advertise(&mut self, from: ClientIndex, m: AdvertiseKeys) -> Result<(), RoundError> {
        let c_pk = parse_public_key(&m.c_pk).map_err(|source| RoundError::BadKey {
            which: "c_pk",
            source,
        })?;
        let s_pk = parse_public_key(&m.s_pk).map_err(|source| RoundError::BadKey {
            which: "s_pk",
            source,
        })?;
        for (which, pk) in [("c_pk", &c_pk), ("s_pk", &s_pk)] {
            self.probe
                .agree(pk)
                .map_err(|source| RoundError::BadKey { which, source })?;
        }
        if c_pk == s_pk {
            return Err(RoundError::DuplicateKey { other: from });
        }
        let signature = if self.params.consistency_check {
            let bytes: &[u8] = m
                .signature
                .as_deref()
                .map(|b| b.as_slice())
                .ok_or(RoundError::BadSignature(SignatureError::Missing(from)))?;
            let sig: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| {
                RoundError::BadSignature(SignatureError::BadLength {
                    signer: from,
                    len: bytes.len(),
                })
            })?;
            if let Some(directory) = &self.directory {
                directory
                    .verify(
                        from,
                        &advertise_message(
                            &self.context,
                            &self.directory_digest,
                            from,
                            &c_pk,
                            &s_pk,
                        ),
                        &sig,
                    )
                    .map_err(RoundError::BadSignature)?;
            }
            Some(sig)
        } else {
            None
        };
        for pk in [&c_pk, &s_pk] {
            if let Some(other) = self.seen_keys.get(pk) {
                return Err(RoundError::DuplicateKey { other: *other });
            }
        }
        self.seen_keys.insert(c_pk, from);
        self.seen_keys.insert(s_pk, from);
        let slot = &mut self.slots[idx(from)];
        slot.c_pk = c_pk;
        slot.s_pk = s_pk;
        slot.advertise_signature = signature;
        slot.level = 1;
        Ok(())
    }

    fn on_consistency(
        &mut self,
        from: ClientIndex,
        m: ConsistencyCheckResponse,
    ) -> Result<(), RoundError> {
        let sig: [u8; SIGNATURE_LEN] = m.signature.as_slice().try_into().map_err(|_| {
            RoundError::BadSignature(SignatureError::BadLength {
                signer: from,
                len: m.signature.len(),
            })
        })?;
        if let Some(directory) = &self.directory {
            directory
                .verify(
                    from,
                    &consistency_message(
                        &self.roster_digest,
                        &self.directory_digest,
                        &self.survivors,
                    ),
                    &sig,
                )
                .map_err(RoundError::BadSignature)?;
        }
        self.slots[idx(from)].survivor_signature = Some(sig);
        Ok(())
    }

    fn on_share_keys(&mut self, from: ClientIndex, m: ShareKeysResponse) -> Result<(), RoundError> {
        let expected: Vec<ClientIndex> = self
            .graph
            .neighbours(from)
            .into_iter()
            .filter(|v| self.slots[idx(*v)].level >= 1)
            .collect();
        let mut got: BTreeMap<ClientIndex, &EncryptedShares> = BTreeMap::new();
        for share in &m.shares {
            if expected.binary_search(&share.peer).is_err() {
                return Err(RoundError::SharesForUnknownClient(share.peer));
            }
            if share.ciphertext.len() != CIPHERTEXT_LEN {
                return Err(RoundError::BadCiphertextLength {
                    peer: share.peer,
                    len: share.ciphertext.len(),
                });
            }
            if got.insert(share.peer, share).is_some() {
                return Err(RoundError::DuplicateShares(share.peer));
            }
        }
        if got.len() != expected.len() {
            let missing: Vec<_> = expected.iter().filter(|v| !got.contains_key(v)).collect();
            return Err(RoundError::MissingShares {
                count: missing.len(),
                first: *missing[0],
            });
        }
        for share in m.shares {
            self.inbox[idx(share.peer)].push(EncryptedShares {
                peer: from,
                ciphertext: share.ciphertext,
            });
        }
        self.slots[idx(from)].level = 2;
        Ok(())
    }

    fn on_masked_input(&mut self, from: ClientIndex, m: MaskedInput) -> Result<(), RoundError> {
        let acc = self
            .accumulator
            .as_mut()
            .expect("the accumulator exists during R2");
        acc.add_packed(&m.vector).map_err(|e| match e {
            PackedMismatch::Length(e) => RoundError::WrongVectorLength {
                expected: e.expected,
                got: e.got,
            },
            PackedMismatch::Bits { expected, got } => RoundError::WrongRingBits { expected, got },
        })?;
        self.slots[idx(from)].level = 3;
        Ok(())
    }

    fn on_unmask(&mut self, from: ClientIndex, m: UnmaskResponse) -> Result<(), RoundError> {
        let request = &self.requested[&from];
        let bad = |what: String| RoundError::BadUnmaskResponse(what);
        let mut b_owners: Vec<ClientIndex> = m.self_mask_shares.iter().map(|s| s.owner).collect();
        let mut s_owners: Vec<ClientIndex> = m.key_shares.iter().map(|s| s.owner).collect();
        b_owners.sort_unstable();
        s_owners.sort_unstable();
        if let Some(both) = b_owners.iter().find(|o| s_owners.binary_search(o).is_ok()) {
            return Err(RoundError::BothSharesRevealed(*both));
        }
        if b_owners != request.survivors {
            return Err(bad(format!(
                "{} self-mask shares for {} requested survivors",
                b_owners.len(),
                request.survivors.len()
            )));
        }
        if s_owners != request.dropped {
            return Err(bad(format!(
                "{} key shares for {} requested dropped clients",
                s_owners.len(),
                request.dropped.len()
            )));
        }
        let parse = |owner: ClientIndex, bytes: &[u8]| {
            Share::from_bytes(from.0, bytes)
                .map_err(|source| RoundError::BadShare { owner, source })
        };
        let b: Vec<(ClientIndex, Share)> = m
            .self_mask_shares
            .iter()
            .map(|s| Ok((s.owner, parse(s.owner, &s.share)?)))
            .collect::<Result<_, RoundError>>()?;
        let s: Vec<(ClientIndex, Share)> = m
            .key_shares
            .iter()
            .map(|s| Ok((s.owner, parse(s.owner, &s.share)?)))
            .collect::<Result<_, RoundError>>()?;
        let t = self.params.threshold as usize;
        for (store, shares) in [(&mut self.self_mask_shares, b), (&mut self.key_shares, s)] {
            for (owner, share) in shares {
                let list = store
                    .get_mut(&owner)
                    .expect("requested owners have a share list");
                if list.shares.len() < list.target {
                    list.shares.push(share);
                    if list.shares.len() == t {
                        self.lacking -= 1;
                    }
                    if list.shares.len() == list.target {
                        self.unchecked -= 1;
                    }
                }
            }
        }
        self.slots[idx(from)].unmask_answered = true;
        Ok(())
    }

    /// Ends the phase early when everyone it waits for has answered or is gone.
    fn maybe_end_phase(&mut self, out: &mut Vec<ServerAction>) {
        let waiting = match self.phase {
            Phase::AdvertiseKeys | Phase::ShareKeys | Phase::MaskedInput => {
                let level = self.phase as u8;
                self.slots
                    .iter()
                    .any(|s| s.level == level && !s.removed && !s.disconnected)
            }
            Phase::ConsistencyCheck => self.slots.iter().any(|s| {
                s.level == 3 && s.survivor_signature.is_none() && !s.removed && !s.disconnected
            }),
            Phase::Unmask => self
                .slots
                .iter()
                .any(|s| s.unmask_asked && !s.unmask_answered && !s.removed && !s.disconnected),
            Phase::Finished | Phase::Aborted => return,
        };
        if !waiting {
            self.end_phase(out);
        }
    }

    fn end_phase(&mut self, out: &mut Vec<ServerAction>) {
        match self.phase {
            Phase::AdvertiseKeys => self.start_share_keys(out),
            Phase::ShareKeys => self.start_masked_input(out),
            Phase::MaskedInput => {
                if self.params.consistency_check {
                    self.start_consistency(out);
                } else {
                    self.start_unmask(out);
                }
            }
            Phase::ConsistencyCheck => self.end_consistency(out),
            Phase::Unmask => {
                if self.lacking == 0 {
                    self.finish(out);
                } else {
                    let missing = self.lacking;
                    self.abort(
                        AbortReason::NotEnoughShares {
                            missing,
                            needed: self.params.threshold as usize,
                        },
                        out,
                    );
                }
            }
            Phase::Finished | Phase::Aborted => {}
        }
    }

    fn check_survivors(&mut self, level: u8, out: &mut Vec<ServerAction>) -> bool {
        let survivors = self.slots.iter().filter(|s| s.level >= level).count();
        let needed = self.params.min_survivors as usize;
        if survivors < needed {
            let phase = self.phase;
            self.abort(
                AbortReason::TooFewSurvivors {
                    phase,
                    survivors,
                    needed,
                },
                out,
            );
            return false;
        }
        true
    }

    /// Holders of `u`'s shares asked to reveal in R3: N⁺(u) ∩ (U3, or its signers).
    fn asked_holders(&self, u: ClientIndex) -> usize {
        let own = usize::from(self.slots[idx(u)].unmask_asked);
        own + self
            .graph
            .neighbours(u)
            .iter()
            .filter(|v| self.slots[idx(**v)].unmask_asked)
            .count()
    }

    /// Live holders of `u`'s shares among clients at `level` or above: N⁺(u) ∩ U_level.
    fn holders(&self, u: ClientIndex, level: u8) -> usize {
        let own = usize::from(self.slots[idx(u)].level >= level);
        own + self
            .graph
            .neighbours(u)
            .iter()
            .filter(|v| self.slots[idx(**v)].level >= level)
            .count()
    }

    fn start_share_keys(&mut self, out: &mut Vec<ServerAction>) {
        self.phase = Phase::ShareKeys;
        if !self.check_survivors(1, out) {
            return;
        }
        let u1 = self.members(1);
        let keys: Vec<(ClientIndex, [u8; 32], [u8; 32])> = u1
            .iter()
            .map(|u| (*u, self.slots[idx(*u)].c_pk, self.slots[idx(*u)].s_pk))
            .collect();
        let config_bytes = codec::to_cbor(&self.params).expect("parameters always encode");
        self.session_id = kdf::session_id(self.round_id.0, &config_bytes, &keys);
        let roster: Vec<(ClientIndex, [u8; 32])> = keys
            .iter()
            .map(|(u, c, s)| (*u, kdf::key_commitment(c, s)))
            .collect();
        self.roster_digest = kdf::roster_digest(&self.context, &roster);
        let n = self.params.num_clients;
        if self.params.neighbours + 1 != n {
            let mut rng = ChaCha20Rng::from_seed(kdf::graph_seed(&self.roster_digest));
            self.graph = NeighbourGraph::harary(n, self.params.neighbours, &mut rng)
                .expect("validated parameters give a Harary graph");
        }
        let roster: Vec<KeyCommitment> = roster
            .into_iter()
            .map(|(index, digest)| KeyCommitment {
                index,
                digest: ByteBuf::from(digest.to_vec()),
            })
            .collect();
        self.inbox = vec![Vec::new(); self.slots.len()];
        for u in &u1 {
            let mut peers: Vec<PeerKeys> = self
                .graph
                .neighbours(*u)
                .into_iter()
                .chain(std::iter::once(*u))
                .filter(|v| self.slots[idx(*v)].level >= 1)
                .map(|v| PeerKeys {
                    index: v,
                    c_pk: ByteBuf::from(self.slots[idx(v)].c_pk.to_vec()),
                    s_pk: ByteBuf::from(self.slots[idx(v)].s_pk.to_vec()),
                    signature: self.slots[idx(v)]
                        .advertise_signature
                        .map(|s| ByteBuf::from(s.to_vec())),
                })
                .collect();
            peers.sort_by_key(|p| p.index);
            out.push(ServerAction::Send {
                to: *u,
                message: ServerMessage::ShareKeys(ShareKeysRequest {
                    round_id: self.round_id,
                    session_id: ByteBuf::from(self.session_id.to_vec()),
                    peers,
                    roster: roster.clone(),
                }),
            });
        }
        self.arm(self.deadlines.share_keys);
        self.maybe_end_phase(out);
    }

    fn start_masked_input(&mut self, out: &mut Vec<ServerAction>) {
        self.phase = Phase::MaskedInput;
        if !self.check_survivors(2, out) {
            return;
        }
        // Every client must get at least `min_relayed_shares` ciphertexts, or it refuses (and
        // each one's secrets need t live holders, its own share included).
        let needed = min_relayed_shares(&self.params);
        let u2 = self.members(2);
        for u in &u2 {
            let holders = self.holders(*u, 2);
            if holders < needed + 1 {
                self.abort(
                    AbortReason::TooFewShareHolders {
                        client: *u,
                        phase: Phase::ShareKeys,
                        holders,
                        needed: needed + 1,
                    },
                    out,
                );
                return;
            }
        }
        let inbox = std::mem::take(&mut self.inbox);
        for (i, mut shares) in inbox.into_iter().enumerate() {
            let u = ClientIndex(i as u32 + 1);
            if self.slots[i].level < 2 {
                continue;
            }
            shares.retain(|s| self.slots[idx(s.peer)].level >= 2);
            shares.sort_by_key(|s| s.peer);
            out.push(ServerAction::Send {
                to: u,
                message: ServerMessage::MaskedInputRequest(MaskedInputRequest {
                    round_id: self.round_id,
                    shares,
                }),
            });
        }
        self.accumulator = Some(Accumulator::for_ring(
            self.params.vector_len as usize,
            self.params.encoding.ring_bits,
        ));
        self.arm(self.deadlines.masked_input);
        self.maybe_end_phase(out);
    }

    /// R2.5: every survivor signs U3.
    fn start_consistency(&mut self, out: &mut Vec<ServerAction>) {
        self.phase = Phase::ConsistencyCheck;
        if !self.check_survivors(3, out) {
            return;
        }
        self.survivors = self.members(3);
        for u in &self.survivors {
            out.push(ServerAction::Send {
                to: *u,
                message: ServerMessage::ConsistencyCheck(ConsistencyCheckRequest {
                    round_id: self.round_id,
                    survivors: self.survivors.clone(),
                }),
            });
        }
        // R2.5 has no deadline of its own: a signature is as quick as R3's reveal.
        self.arm(self.deadlines.unmask);
        self.maybe_end_phase(out);
    }

    fn end_consistency(&mut self, out: &mut Vec<ServerAction>) {
        let signed = self
            .slots
            .iter()
            .filter(|s| s.level == 3 && s.survivor_signature.is_some() && !s.removed)
            .count();
        let t = self.params.threshold as usize;
        if signed < t {
            self.phase = Phase::Unmask;
            self.abort(AbortReason::TooFewSignatures { signed, needed: t }, out);
            return;
        }
        self.start_unmask(out);
    }

    fn start_unmask(&mut self, out: &mut Vec<ServerAction>) {
        self.phase = Phase::Unmask;
        if !self.check_survivors(3, out) {
            return;
        }
        let t = self.params.threshold as usize;
        let u3 = self.members(3);
        let check = self.params.consistency_check;
        for slot in &mut self.slots {
            slot.unmask_asked =
                slot.level == 3 && (!check || (slot.survivor_signature.is_some() && !slot.removed));
        }
        // With the check, R3 goes to the signers only; every client gets the same t signatures.
        let signatures: Vec<SurvivorSignature> = if check {
            let mut all: Vec<SurvivorSignature> = u3
                .iter()
                .filter_map(|v| {
                    let slot = &self.slots[idx(*v)];
                    slot.survivor_signature
                        .filter(|_| slot.unmask_asked)
                        .map(|s| SurvivorSignature {
                            signer: *v,
                            signature: ByteBuf::from(s.to_vec()),
                        })
                })
                .collect();
            if self.directory.is_some() {
                // Verified on arrival: t of them convince a client.
                all.truncate(t);
            }
            all
        } else {
            Vec::new()
        };
        // Every survivor's self mask needs t holders asked in R3 (itself included)...
        for v in &u3 {
            let holders = self.asked_holders(*v);
            if holders < t {
                self.abort(
                    AbortReason::TooFewShareHolders {
                        client: *v,
                        phase: Phase::MaskedInput,
                        holders,
                        needed: t,
                    },
                    out,
                );
                return;
            }
            self.self_mask_shares.insert(
                *v,
                Collected {
                    shares: Vec::with_capacity(t + 1),
                    target: (t + 1).min(holders),
                },
            );
        }
        // ...and every dropped client with a survivor neighbour needs t holders asked in R3.
        for d in self.members(2) {
            if self.slots[idx(d)].level != 2 {
                continue;
            }
            let holders = self.asked_holders(d);
            if holders == 0 {
                continue;
            }
            if holders < t {
                self.abort(
                    AbortReason::TooFewShareHolders {
                        client: d,
                        phase: Phase::MaskedInput,
                        holders,
                        needed: t,
                    },
                    out,
                );
                return;
            }
            self.key_shares.insert(
                d,
                Collected {
                    shares: Vec::with_capacity(t + 1),
                    target: (t + 1).min(holders),
                },
            );
        }
        self.lacking = self.self_mask_shares.len() + self.key_shares.len();
        self.unchecked = self.lacking;
        for u in &u3 {
            if !self.slots[idx(*u)].unmask_asked {
                continue;
            }
            let mut survivors = Vec::new();
            let mut dropped = Vec::new();
            for v in self
                .graph
                .neighbours(*u)
                .into_iter()
                .chain(std::iter::once(*u))
            {
                match self.slots[idx(v)].level {
                    3 => survivors.push(v),
                    2 => dropped.push(v),
                    _ => {}
                }
            }
            survivors.sort_unstable();
            dropped.sort_unstable();
            let request = UnmaskRequest {
                round_id: self.round_id,
                dropped,
                survivors,
                signatures: signatures.clone(),
            };
            self.requested.insert(*u, request.clone());
            out.push(ServerAction::Send {
                to: *u,
                message: ServerMessage::Unmask(request),
            });
        }
        self.arm(self.deadlines.unmask);
        self.maybe_end_phase(out);
    }

    fn finish(&mut self, out: &mut Vec<ServerAction>) {
        let t = self.params.threshold as usize;
        let mut self_masks = Vec::with_capacity(self.self_mask_shares.len());
        for (v, collected) in std::mem::take(&mut self.self_mask_shares) {
            match rebuild_checked(&collected.shares, t) {
                Ok(seed) => self_masks.push(MaskSeed {
                    seed,
                    sign: MaskSign::Subtract,
                }),
                Err(e) => {
                    self.abort(
                        AbortReason::ReconstructionFailed {
                            client: v,
                            reason: e.to_string(),
                        },
                        out,
                    );
                    return;
                }
            }
        }
        let mut dropped = Vec::with_capacity(self.key_shares.len());
        for (d, collected) in std::mem::take(&mut self.key_shares) {
            let secret = match rebuild_checked(&collected.shares, t) {
                Ok(s) => s,
                Err(e) => {
                    self.abort(
                        AbortReason::ReconstructionFailed {
                            client: d,
                            reason: e.to_string(),
                        },
                        out,
                    );
                    return;
                }
            };
            // The reconstructed key must match the advertised one: this catches bad shares.
            if KeyPair::from_secret_bytes(*secret).public_bytes() != self.slots[idx(d)].s_pk {
                self.abort(
                    AbortReason::ReconstructionFailed {
                        client: d,
                        reason: "the reconstructed mask key does not match the advertised s_pk"
                            .into(),
                    },
                    out,
                );
                return;
            }
            let live_neighbours = self
                .graph
                .neighbours(d)
                .into_iter()
                .filter(|w| self.slots[idx(*w)].level >= 3)
                .map(|w| (w, self.slots[idx(w)].s_pk))
                .collect();
            dropped.push(DroppedClient {
                index: d,
                mask_secret: Zeroizing::new(*secret),
                live_neighbours,
            });
        }
        let masked_sum = self
            .accumulator
            .take()
            .expect("the accumulator exists until the round ends")
            .into_inner();
        self.phase = Phase::Finished;
        out.push(ServerAction::Unmask(UnmaskJob {
            round_id: self.round_id,
            session_id: self.session_id,
            suite: self.params.suite,
            masked_sum,
            self_masks,
            dropped,
            contributors: self.members(3),
            ring_bits: self.params.encoding.ring_bits,
        }));
    }

    fn abort(&mut self, reason: AbortReason, out: &mut Vec<ServerAction>) {
        self.unchecked = 0;
        tracing::info!(round = self.round_id.0, %reason, "SecAgg+ round aborted");
        self.phase = Phase::Aborted;
        self.accumulator = None;
        self.self_mask_shares.clear();
        self.key_shares.clear();
        self.inbox.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.removed && !slot.disconnected {
                out.push(ServerAction::Send {
                    to: ClientIndex(i as u32 + 1),
                    message: ServerMessage::RoundResult(RoundResult::Aborted {
                        round_id: self.round_id,
                        reason: reason.to_string(),
                    }),
                });
            }
        }
        out.push(ServerAction::Aborted(reason));
    }
}

/// Reconstructs a secret from its first t shares and, when a (t+1)-th share is there, checks it:
/// the last t shares must give the same secret, so one wrong share cannot silently change it.
fn rebuild_checked(shares: &[Share], t: usize) -> Result<Zeroizing<[u8; 32]>, ShamirError> {
    let first = shamir::reconstruct(&shares[..t.min(shares.len())], t)?;
    if shares.len() > t {
        let last = shamir::reconstruct(&shares[shares.len() - t..], t)?;
        if *first != *last {
            return Err(ShamirError::Inconsistent);
        }
    }
    Ok(first)
}

/// The level (0: selected, 1: U1, 2: U2, 3: U3) of the clients a phase waits on.
fn phase_level(phase: Phase) -> u8 {
    match phase {
        Phase::AdvertiseKeys => 0,
        Phase::ShareKeys => 1,
        Phase::MaskedInput => 2,
        _ => 3,
    }
}

/// Whether `slot` already answered `phase`.
fn answered(slot: &Slot, phase: Phase) -> bool {
    match phase {
        Phase::AdvertiseKeys | Phase::ShareKeys | Phase::MaskedInput => {
            slot.level > phase_level(phase)
        }
        Phase::ConsistencyCheck => slot.survivor_signature.is_some(),
        Phase::Unmask => slot.unmask_answered,
        Phase::Finished | Phase::Aborted => false,
    }
}
