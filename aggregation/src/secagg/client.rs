//! An edge client's side of one SecAgg+ round, as a state machine.
//!
//! [`ClientRound::start`] takes the server's [`RoundConfig`] and returns the R0
//! [`AdvertiseKeys`]; [`ClientRound::handle`] takes each later server message and returns what to
//! send. The client performs every check PROTOCOL.md §3 lists and aborts on any failure: a
//! client that aborts is a dropout for the protocol, which is always safe. Above all it never
//! reveals both shares of one neighbour, even when the server asks again.

use std::collections::{BTreeMap, BTreeSet};

use cohort_protocol::{
    AdvertiseKeys, CipherSuite, ClientIndex, ClientMessage, ConsistencyCheckRequest,
    ConsistencyCheckResponse, EncryptedShares, MaskedInput, MaskedInputRequest, PackedVector,
    RevealedShare, RoundConfig, RoundId, RoundResult, SecAggParams, ServerMessage,
    ShareKeysRequest, ShareKeysResponse, UnmaskRequest, UnmaskResponse,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use super::cipher::{self, CipherError};
use super::config::{ConfigError, adversary_class, min_relayed_shares, validate};
use super::graph::NeighbourGraph;
use super::identity::{
    IdentityDirectory, SignatureError, SigningKey, advertise_message, consistency_message,
    round_context, sign,
};
use super::kdf;
use super::keys::{KeyError, KeyPair, parse_public_key};
use super::params::{ParamsError, minimum_threshold};
use super::prg::{MaskPrg, MaskSign, apply_masks, local_suites};
use super::seed_rng::{SeedRng, round_secrets};
use super::shamir::{self, ShamirError, Share};

/// Why the client aborted its round (or, for [`ClientRoundError::WrongRound`], ignored a message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientRoundError {
    /// The round parameters are unusable.
    #[error("unusable round parameters: {0}")]
    Config(#[from] ConfigError),
    /// The masked input could not be packed at the round's ring bits.
    #[error("the masked input cannot be packed: {0}")]
    Packing(cohort_protocol::PackedError),
    /// The round's primitive suite is not one this client advertised.
    #[error(
        "the round uses suite {suite:?}, which this client did not advertise (it offered \
         {advertised:?}); refusing the round: the coordinator must choose a suite every member \
         advertised"
    )]
    UnadvertisedSuite {
        /// The round's suite.
        suite: CipherSuite,
        /// What the client advertised.
        advertised: Vec<CipherSuite>,
    },
    /// A message of another round; it was ignored and the round goes on.
    #[error("ignored a message for {got} during {expected}")]
    WrongRound {
        /// This round.
        expected: RoundId,
        /// The message's round.
        got: RoundId,
    },
    /// A message that does not fit the client's state.
    #[error("unexpected {message} while {state}")]
    Unexpected {
        /// The message kind.
        message: &'static str,
        /// What the client was waiting for.
        state: &'static str,
    },
    /// The round was already over for this client.
    #[error("the round is over for this client")]
    Over,
    /// Too few neighbours for the threshold.
    #[error("{got} share holders (self included), the threshold is {needed}")]
    TooFewPeers {
        /// Holders.
        got: usize,
        /// t.
        needed: usize,
    },
    /// The server's list lacks, duplicates or alters the client's own keys.
    #[error("the server's key list does not hold this client's own keys exactly once")]
    OwnKeysNotEchoed,
    /// Two entries share an index or a key.
    #[error("duplicate entry or key for {0} in the server's key list")]
    DuplicatePeer(ClientIndex),
    /// The server listed a client that is not in the round.
    #[error("{0} is not a client of this round")]
    UnknownPeer(ClientIndex),
    /// A peer's key is malformed or of low order.
    #[error("bad key of {peer}: {source}")]
    BadKey {
        /// The peer.
        peer: ClientIndex,
        /// The cause.
        source: KeyError,
    },
    /// The session id is not 32 bytes.
    #[error("the session id is {0} bytes, expected 32")]
    BadSessionId(usize),
    /// A share ciphertext failed to open.
    #[error("shares from {peer} failed to open: {source}")]
    Cipher {
        /// The sender.
        peer: ClientIndex,
        /// The cause.
        source: CipherError,
    },
    /// Shares from a client that is not a neighbour, or twice from one.
    #[error("unexpected or repeated shares from {0}")]
    UnexpectedShares(ClientIndex),
    /// The local input has the wrong length.
    #[error("input of {got} elements, the round expects {expected}")]
    InputLength {
        /// vector_len.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// R3 asked about a client this client holds no shares of, or about itself as dropped.
    #[error("R3 asked about {0}, which is not a neighbour that shared keys")]
    NotANeighbour(ClientIndex),
    /// R3 asked for both shares of one client.
    #[error("R3 asked for both shares of {0}; refusing, that would unmask its input")]
    BothSharesRequested(ClientIndex),
    /// A later R3 request contradicts the one already answered.
    #[error("a second R3 request contradicts the first; refusing")]
    ConflictingUnmaskRequest,
    /// Shamir sharing failed.
    #[error("secret sharing failed: {0}")]
    Shamir(#[from] ShamirError),
    /// The round's threshold is below what this client accepts for its size and graph.
    #[error(
        "the round asks for threshold t = {t} with k = {k} neighbours among n = {n} clients, \
         but this client's assumed adversarial fraction requires t >= {min_t}; refusing a round \
         weaker than it would choose itself"
    )]
    WeakParameters {
        /// n.
        n: u32,
        /// k.
        k: u32,
        /// t.
        t: u32,
        /// The client's floor.
        min_t: u32,
    },
    /// The round's graph is not secure for this client's assumptions at any threshold.
    #[error("refusing the round's parameters: {0}")]
    Floor(ParamsError),
    /// The round needs signed keys but the client has no identity key or directory.
    #[error(
        "the round runs the consistency check (signed keys), but this client was given no \
         identity key or no identity directory; enroll an identity key first"
    )]
    IdentityRequired,
    /// A signature failed.
    #[error("{0}")]
    BadSignature(SignatureError),
    /// The R1 roster of U1 is malformed.
    #[error("the server's U1 roster is unusable: {0}")]
    BadRoster(&'static str),
    /// A neighbour's keys do not match its roster commitment.
    #[error("the keys relayed for {0} do not match its commitment in the roster; refusing")]
    KeySubstitution(ClientIndex),
    /// A neighbour the recomputed graph names is missing from the key list.
    #[error("the server's key list lacks neighbour {0} of the recomputed graph")]
    MissingNeighbour(ClientIndex),
    /// More key entries than k + 1.
    #[error("the server sent {got} key entries, a client has at most k + 1 = {max}")]
    TooManyPeers {
        /// Entries.
        got: usize,
        /// k + 1.
        max: usize,
    },
    /// The R2.5 survivor set is malformed.
    #[error("the R2.5 survivor set is unusable: {0}")]
    BadSurvivorSet(&'static str),
    /// R3 came with fewer than t valid signatures on the survivor set this client signed.
    #[error(
        "R3 came with {valid} valid signatures on the survivor set this client signed, the \
         threshold is {needed}; revealing nothing"
    )]
    TooFewSignatures {
        /// Valid, distinct signatures.
        valid: usize,
        /// t.
        needed: usize,
    },
    /// The R3 lists differ from what the signed survivor set implies.
    #[error(
        "the R3 request's survivor and dropout lists differ from the survivor set this client \
         signed; refusing"
    )]
    InconsistentUnmaskRequest,
}

/// What a client brings to a round besides its seed: its identity (for rounds with the
/// consistency check) and the fractions its parameter floor assumes.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// This client's Ed25519 identity key.
    pub identity: Option<SigningKey>,
    /// The identity keys of the round's clients, from a source the coordinator cannot forge.
    pub directory: Option<IdentityDirectory>,
    /// The adversarial fraction the client assumes (its floor on t).
    pub adversarial: f64,
    /// The dropout fraction the client assumes.
    pub dropout: f64,
    /// Whether the client refuses parameters below its floor. Always on in a deployment; off
    /// only to reproduce, in tests, what clients without the floor accepted.
    pub parameter_floor: bool,
    /// The SecAgg+ suites this client advertised in its `Hello`; it refuses a round with any
    /// other. Defaults to [`local_suites`], what a device on this machine advertises.
    pub suites: Vec<CipherSuite>,
}

impl Default for ClientOptions {
    /// No identity; the PROTOCOL.md fractions 0.05 and 0.10; the suites of [`local_suites`].
    fn default() -> Self {
        Self {
            identity: None,
            directory: None,
            adversarial: 0.05,
            dropout: 0.10,
            parameter_floor: true,
            suites: local_suites(),
        }
    }
}

/// What to do after [`ClientRound::handle`].
#[derive(Debug)]
pub enum ClientStep {
    /// Send this message to the server.
    Send(ClientMessage),
    /// The server is ready for the masked input: call [`ClientRound::provide_input`].
    NeedInput,
    /// The round ended with this result; the client's round state is gone.
    Finished(RoundResult),
}

enum State {
    AwaitShareKeys,
    AwaitMaskedInputRequest,
    AwaitInput,
    AwaitConsistency,
    AwaitUnmask,
    Over,
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            State::AwaitShareKeys => "waiting for R1 keys",
            State::AwaitMaskedInputRequest => "waiting for the R2 request",
            State::AwaitInput => "waiting for the local input",
            State::AwaitConsistency => "waiting for the R2.5 survivor set",
            State::AwaitUnmask => "waiting for the R3 request",
            State::Over => "finished",
        }
    }
}

struct Peer {
    /// The pairwise mask key K_uv, derived at R1 (where the DH is also checked for low order)
    /// and used at R2 if the peer is still in the round.
    mask_key: Zeroizing<[u8; 32]>,
    share_key: Zeroizing<[u8; 32]>,
}

/// Shares this client holds of one neighbour's secrets.
struct Held {
    key_share: Share,
    self_mask_share: Share,
}

/// A client's state machine for one SecAgg+ round.
pub struct ClientRound {
    round_id: RoundId,
    index: ClientIndex,
    params: SecAggParams,
    state: State,
    c_keys: KeyPair,
    s_keys: KeyPair,
    self_mask_seed: Zeroizing<[u8; 32]>,
    /// Seeds the Shamir polynomials at R1; the seeded generator itself is not kept.
    sharing_seed: Zeroizing<[u8; 32]>,
    session_id: [u8; 32],
    /// N(u) ∩ U1, from R1.
    peers: BTreeMap<ClientIndex, Peer>,
    own_self_mask_share: Option<Share>,
    /// Shares received in R2, from N(u) ∩ U2.
    held: BTreeMap<ClientIndex, Held>,
    input: Option<Zeroizing<Vec<u32>>>,
    answered_unmask: Option<(UnmaskRequest, UnmaskResponse)>,
    options: ClientOptions,
    /// SHA-256 of the round id and parameters.
    context: [u8; 32],
    /// This client's view of the round's identity keys ([`IdentityDirectory::digest`]; zeros
    /// without a directory), bound into every signature it makes or checks.
    directory_digest: [u8; 32],
    /// U1 and the digest of its roster, from R1.
    u1: BTreeSet<ClientIndex>,
    roster_digest: [u8; 32],
    /// The U3 this client signed in R2.5.
    signed_survivors: Option<Vec<ClientIndex>>,
}

impl std::fmt::Debug for ClientRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRound")
            .field("round_id", &self.round_id)
            .field("index", &self.index)
            .field("state", &self.state.describe())
            .finish_non_exhaustive()
    }
}

impl ClientRound {
    /// Joins a round: validates the parameters, draws fresh key pairs, the self-mask seed and the
    /// seed of its Shamir polynomials from `seed` ([`super::seed_rng::round_secrets`]; the
    /// generator is wiped at once), and returns the R0 message to send. Use a fresh seed from
    /// the operating system for every round, and derive nothing else (no training seed) from it.
    pub fn start(
        config: RoundConfig,
        seed: [u8; 32],
    ) -> Result<(Self, ClientMessage), ClientRoundError> {
        Self::start_with(config, seed, ClientOptions::default())
    }

    /// [`ClientRound::start`] with an identity and the fractions of the parameter floor. The
    /// client refuses parameters weaker than it would choose itself for the announced n
    /// ([`minimum_threshold`]), and a round with the consistency check unless it has an
    /// identity key and directory; with them it signs its R0 keys.
    pub fn start_with(
        config: RoundConfig,
        seed: [u8; 32],
        options: ClientOptions,
    ) -> Result<(Self, ClientMessage), ClientRoundError> {
        let seed = Zeroizing::new(seed);
        let p = &config.params;
        validate(p)?;
        if !options.suites.contains(&p.suite) {
            return Err(ClientRoundError::UnadvertisedSuite {
                suite: p.suite,
                advertised: options.suites.clone(),
            });
        }
        if config.your_index.0 == 0 || config.your_index.0 > p.num_clients {
            return Err(ClientRoundError::UnknownPeer(config.your_index));
        }
        if options.parameter_floor {
            let min_t = minimum_threshold(
                p.num_clients,
                p.neighbours,
                options.adversarial,
                options.dropout,
                adversary_class(p.consistency_check),
            )
            .map_err(ClientRoundError::Floor)?;
            if p.threshold < min_t {
                return Err(ClientRoundError::WeakParameters {
                    n: p.num_clients,
                    k: p.neighbours,
                    t: p.threshold,
                    min_t,
                });
            }
        }
        if p.consistency_check && (options.identity.is_none() || options.directory.is_none()) {
            return Err(ClientRoundError::IdentityRequired);
        }
        let context = round_context(config.round_id, p);
        let directory_digest = options
            .directory
            .as_ref()
            .map_or([0; 32], IdentityDirectory::digest);
        let secrets = round_secrets(&seed);
        let (c_keys, s_keys) = (secrets.c_keys, secrets.s_keys);
        let signature = match (&options.identity, p.consistency_check) {
            (Some(key), true) => {
                let m = advertise_message(
                    &context,
                    &directory_digest,
                    config.your_index,
                    &c_keys.public_bytes(),
                    &s_keys.public_bytes(),
                );
                Some(ByteBuf::from(sign(key, &m).to_vec()))
            }
            _ => None,
        };
        let message = ClientMessage::AdvertiseKeys(AdvertiseKeys {
            round_id: config.round_id,
            c_pk: ByteBuf::from(c_keys.public_bytes().to_vec()),
            s_pk: ByteBuf::from(s_keys.public_bytes().to_vec()),
            signature,
        });
        let round = Self {
            round_id: config.round_id,
            index: config.your_index,
            params: config.params,
            state: State::AwaitShareKeys,
            c_keys,
            s_keys,
            self_mask_seed: secrets.self_mask_seed,
            sharing_seed: secrets.sharing_seed,
            session_id: [0; 32],
            peers: BTreeMap::new(),
            own_self_mask_share: None,
            held: BTreeMap::new(),
            input: None,
            answered_unmask: None,
            options,
            context,
            directory_digest,
            u1: BTreeSet::new(),
            roster_digest: [0; 32],
            signed_survivors: None,
        };
        Ok((round, message))
    }

    /// This client's index in the round.
    pub fn index(&self) -> ClientIndex {
        self.index
    }

    /// The round.
    pub fn round_id(&self) -> RoundId {
        self.round_id
    }

    /// The round's parameters.
    pub fn params(&self) -> &SecAggParams {
        &self.params
    }

    /// Whether the round is over for this client (finished or aborted).
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Over)
    }

    /// Handles one server message. Any error except [`ClientRoundError::WrongRound`] aborts the
    /// client's round and erases its secrets.
    pub fn handle(&mut self, message: ServerMessage) -> Result<ClientStep, ClientRoundError> {
        let result = self.dispatch(message);
        match &result {
            Err(ClientRoundError::WrongRound { .. }) | Ok(_) => {}
            Err(_) => self.erase(),
        }
        if let Ok(ClientStep::Finished(_)) = &result {
            self.erase();
        }
        result
    }

    /// Supplies the encoded input (from `Quantizer::encode`). Returns the masked input to send
    /// when the server already asked for it, or `None` to send on the R2 request.
    pub fn provide_input(
        &mut self,
        input: Vec<u32>,
    ) -> Result<Option<ClientMessage>, ClientRoundError> {
        let expected = self.params.vector_len as usize;
        if input.len() != expected {
            return Err(ClientRoundError::InputLength {
                expected,
                got: input.len(),
            });
        }
        match self.state {
            State::Over => Err(ClientRoundError::Over),
            State::AwaitInput => {
                self.input = Some(Zeroizing::new(input));
                Ok(Some(self.masked_input()?))
            }
            State::AwaitConsistency | State::AwaitUnmask => Err(ClientRoundError::Unexpected {
                message: "input",
                state: self.state.describe(),
            }),
            _ => {
                self.input = Some(Zeroizing::new(input));
                Ok(None)
            }
        }
    }

    fn dispatch(&mut self, message: ServerMessage) -> Result<ClientStep, ClientRoundError> {
        let kind = message.kind();
        let round_id = match &message {
            ServerMessage::ShareKeys(m) => m.round_id,
            ServerMessage::MaskedInputRequest(m) => m.round_id,
            ServerMessage::ConsistencyCheck(m) => m.round_id,
            ServerMessage::Unmask(m) => m.round_id,
            ServerMessage::RoundResult(RoundResult::Completed { round_id, .. })
            | ServerMessage::RoundResult(RoundResult::Aborted { round_id, .. }) => *round_id,
            ServerMessage::RoundConfig(m) => m.round_id,
            _ => self.round_id,
        };
        if round_id != self.round_id {
            return Err(ClientRoundError::WrongRound {
                expected: self.round_id,
                got: round_id,
            });
        }
        match (&self.state, message) {
            (State::Over, _) => Err(ClientRoundError::Over),
            (_, ServerMessage::RoundResult(r)) => Ok(ClientStep::Finished(r)),
            (State::AwaitShareKeys, ServerMessage::ShareKeys(m)) => self.on_share_keys(m),
            (State::AwaitMaskedInputRequest, ServerMessage::MaskedInputRequest(m)) => {
                self.on_masked_input_request(m)
            }
            (State::AwaitConsistency, ServerMessage::ConsistencyCheck(m)) => self.on_consistency(m),
            (State::AwaitUnmask, ServerMessage::Unmask(m)) => self.on_unmask(m),
            (state, _) => Err(ClientRoundError::Unexpected {
                message: kind,
                state: state.describe(),
            }),
        }
    }

    fn on_share_keys(&mut self, m: ShareKeysRequest) -> Result<ClientStep, ClientRoundError> {
        let session_id: [u8; 32] = m
            .session_id
            .as_slice()
            .try_into()
            .map_err(|_| ClientRoundError::BadSessionId(m.session_id.len()))?;
        let t = self.params.threshold as usize;
        if m.peers.len() < t {
            return Err(ClientRoundError::TooFewPeers {
                got: m.peers.len(),
                needed: t,
            });
        }
        let max_peers = self.params.neighbours as usize + 1;
        if m.peers.len() > max_peers {
            return Err(ClientRoundError::TooManyPeers {
                got: m.peers.len(),
                max: max_peers,
            });
        }
        let own_c = self.c_keys.public_bytes();
        let own_s = self.s_keys.public_bytes();
        // The roster of U1: recompute the graph from it, and check every key against it.
        let mut roster: BTreeMap<ClientIndex, [u8; 32]> = BTreeMap::new();
        let mut previous = ClientIndex(0);
        for entry in &m.roster {
            if entry.index <= previous || entry.index.0 > self.params.num_clients {
                return Err(ClientRoundError::BadRoster(
                    "indices out of range, repeated or not increasing",
                ));
            }
            previous = entry.index;
            let digest: [u8; 32] = entry
                .digest
                .as_slice()
                .try_into()
                .map_err(|_| ClientRoundError::BadRoster("a commitment is not 32 bytes"))?;
            roster.insert(entry.index, digest);
        }
        if roster.len() < self.params.min_survivors as usize {
            return Err(ClientRoundError::BadRoster("U1 is smaller than the quorum"));
        }
        if roster.get(&self.index) != Some(&kdf::key_commitment(&own_c, &own_s)) {
            return Err(ClientRoundError::OwnKeysNotEchoed);
        }
        let roster_list: Vec<(ClientIndex, [u8; 32])> =
            roster.iter().map(|(i, d)| (*i, *d)).collect();
        let roster_digest = kdf::roster_digest(&self.context, &roster_list);
        let n = self.params.num_clients;
        let graph = if self.params.neighbours + 1 == n {
            NeighbourGraph::complete(n)
        } else {
            let mut rng = ChaCha20Rng::from_seed(kdf::graph_seed(&roster_digest));
            NeighbourGraph::harary(n, self.params.neighbours, &mut rng)
                .expect("validated parameters give a Harary graph")
        };
        let expected: BTreeSet<ClientIndex> = graph
            .neighbours(self.index)
            .into_iter()
            .filter(|v| roster.contains_key(v))
            .chain(std::iter::once(self.index))
            .collect();
        let mut seen_keys = std::collections::HashSet::new();
        let mut own_entries = 0;
        let mut parsed: BTreeMap<ClientIndex, ([u8; 32], [u8; 32])> = BTreeMap::new();
        for p in &m.peers {
            if p.index.0 == 0 || p.index.0 > self.params.num_clients {
                return Err(ClientRoundError::UnknownPeer(p.index));
            }
            if !expected.contains(&p.index) {
                return Err(ClientRoundError::NotANeighbour(p.index));
            }
            let bad = |source| ClientRoundError::BadKey {
                peer: p.index,
                source,
            };
            let c_pk = parse_public_key(&p.c_pk).map_err(bad)?;
            let s_pk = parse_public_key(&p.s_pk).map_err(bad)?;
            if roster.get(&p.index) != Some(&kdf::key_commitment(&c_pk, &s_pk)) {
                return Err(if p.index == self.index {
                    ClientRoundError::OwnKeysNotEchoed
                } else {
                    ClientRoundError::KeySubstitution(p.index)
                });
            }
            if self.params.consistency_check && p.index != self.index {
                let directory = self
                    .options
                    .directory
                    .as_ref()
                    .ok_or(ClientRoundError::IdentityRequired)?;
                let signature = p.signature.as_ref().ok_or(ClientRoundError::BadSignature(
                    SignatureError::Missing(p.index),
                ))?;
                directory
                    .verify(
                        p.index,
                        &advertise_message(
                            &self.context,
                            &self.directory_digest,
                            p.index,
                            &c_pk,
                            &s_pk,
                        ),
                        signature,
                    )
                    .map_err(ClientRoundError::BadSignature)?;
            }
            if p.index == self.index {
                if c_pk != own_c || s_pk != own_s {
                    return Err(ClientRoundError::OwnKeysNotEchoed);
                }
                own_entries += 1;
            }
            if !seen_keys.insert(c_pk) || !seen_keys.insert(s_pk) {
                return Err(if p.index == self.index {
                    ClientRoundError::OwnKeysNotEchoed
                } else {
                    ClientRoundError::DuplicatePeer(p.index)
                });
            }
            if parsed.insert(p.index, (c_pk, s_pk)).is_some() {
                return Err(ClientRoundError::DuplicatePeer(p.index));
            }
        }
        if own_entries != 1 {
            return Err(ClientRoundError::OwnKeysNotEchoed);
        }
        if let Some(missing) = expected.iter().find(|v| !parsed.contains_key(v)) {
            return Err(ClientRoundError::MissingNeighbour(*missing));
        }
        // Key agreement with every neighbour, refusing low-order keys, before sharing anything.
        let mut peers = BTreeMap::new();
        for (v, (c_pk, s_pk)) in &parsed {
            if *v == self.index {
                continue;
            }
            let bad = |source| ClientRoundError::BadKey { peer: *v, source };
            let dh = self.c_keys.agree(c_pk).map_err(bad)?;
            // Agree on the mask key now too, so a bad s_pk aborts before any share leaves.
            let mask_dh = self.s_keys.agree(s_pk).map_err(bad)?;
            peers.insert(
                *v,
                Peer {
                    mask_key: kdf::mask_key(&mask_dh, &session_id, self.index, *v),
                    share_key: kdf::share_key(&dh, &session_id, self.index, *v),
                },
            );
        }
        let xs: Vec<u32> = parsed.keys().map(|v| v.0).collect();
        let mut rng = SeedRng::new(&self.sharing_seed);
        let key_shares = shamir::split(&self.s_keys.secret_bytes(), t, &xs, &mut rng)?;
        let self_mask_shares = shamir::split(&self.self_mask_seed, t, &xs, &mut rng)?;
        drop(rng);
        *self.sharing_seed = [0; 32];
        let mut shares = Vec::with_capacity(peers.len());
        for ((x, key_share), self_mask_share) in xs.iter().zip(&key_shares).zip(&self_mask_shares) {
            let v = ClientIndex(*x);
            if v == self.index {
                self.own_self_mask_share = Some(self_mask_share.clone());
                continue;
            }
            let ciphertext = cipher::seal_shares(
                &peers[&v].share_key,
                &session_id,
                self.index,
                v,
                key_share,
                self_mask_share,
            );
            shares.push(EncryptedShares {
                peer: v,
                ciphertext: ByteBuf::from(ciphertext),
            });
        }
        self.session_id = session_id;
        self.peers = peers;
        self.u1 = roster.into_keys().collect();
        self.roster_digest = roster_digest;
        self.state = State::AwaitMaskedInputRequest;
        Ok(ClientStep::Send(ClientMessage::ShareKeys(
            ShareKeysResponse {
                round_id: self.round_id,
                shares,
            },
        )))
    }

    fn on_masked_input_request(
        &mut self,
        m: MaskedInputRequest,
    ) -> Result<ClientStep, ClientRoundError> {
        // Mask starvation: with fewer ciphertexts, all it masks with could be colluders.
        let needed = min_relayed_shares(&self.params);
        if m.shares.len() < needed {
            return Err(ClientRoundError::TooFewPeers {
                got: m.shares.len(),
                needed,
            });
        }
        let mut held = BTreeMap::new();
        for s in &m.shares {
            let Some(peer) = self.peers.get(&s.peer) else {
                return Err(ClientRoundError::UnexpectedShares(s.peer));
            };
            let (key_share, self_mask_share) = cipher::open_shares(
                &peer.share_key,
                &self.session_id,
                s.peer,
                self.index,
                &s.ciphertext,
            )
            .map_err(|source| ClientRoundError::Cipher {
                peer: s.peer,
                source,
            })?;
            let entry = Held {
                key_share,
                self_mask_share,
            };
            if held.insert(s.peer, entry).is_some() {
                return Err(ClientRoundError::UnexpectedShares(s.peer));
            }
        }
        self.held = held;
        if self.input.is_some() {
            Ok(ClientStep::Send(self.masked_input()?))
        } else {
            self.state = State::AwaitInput;
            Ok(ClientStep::NeedInput)
        }
    }

    /// y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} σ_uv·PRG(K_uv), σ_uv = +1 when u > v.
    fn masked_input(&mut self) -> Result<ClientMessage, ClientRoundError> {
        // Masked in place: once the masks are on, the buffer holds nothing secret.
        let mut y = std::mem::take(&mut *self.input.take().expect("input is present when masking"));
        let keys: Vec<(&[u8; 32], MaskSign)> = self
            .held
            .keys()
            .map(|v| {
                let sign = if self.index > *v {
                    MaskSign::Add
                } else {
                    MaskSign::Subtract
                };
                (&*self.peers[v].mask_key, sign)
            })
            .collect();
        let mut masks: Vec<(&[u8; 32], MaskSign)> = Vec::with_capacity(keys.len() + 1);
        masks.push((&self.self_mask_seed, MaskSign::Add));
        masks.extend(keys);
        apply_masks(MaskPrg::of(self.params.suite), &mut y, &masks);
        self.state = if self.params.consistency_check {
            State::AwaitConsistency
        } else {
            State::AwaitUnmask
        };
        Ok(ClientMessage::MaskedInput(MaskedInput {
            round_id: self.round_id,
            // The low r bits of each word: the input plus masks mod 2^r. The ring's bits were
            // validated when the round started, so packing cannot fail.
            vector: PackedVector::pack(&y, self.params.encoding.ring_bits)
                .map_err(ClientRoundError::Packing)?,
        }))
    }

    /// R2.5: sign U3 once; R3 will be answered only for this set.
    fn on_consistency(
        &mut self,
        m: ConsistencyCheckRequest,
    ) -> Result<ClientStep, ClientRoundError> {
        if !m.survivors.windows(2).all(|w| w[0] < w[1]) {
            return Err(ClientRoundError::BadSurvivorSet("not sorted or repeated"));
        }
        if !m.survivors.iter().all(|v| self.u1.contains(v)) {
            return Err(ClientRoundError::BadSurvivorSet(
                "names a client outside U1",
            ));
        }
        if m.survivors.binary_search(&self.index).is_err() {
            return Err(ClientRoundError::BadSurvivorSet("leaves out this client"));
        }
        if m.survivors.len() < self.params.min_survivors as usize {
            return Err(ClientRoundError::BadSurvivorSet("smaller than the quorum"));
        }
        let key = self
            .options
            .identity
            .as_ref()
            .ok_or(ClientRoundError::IdentityRequired)?;
        let signature = sign(
            key,
            &consistency_message(&self.roster_digest, &self.directory_digest, &m.survivors),
        );
        self.signed_survivors = Some(m.survivors);
        self.state = State::AwaitUnmask;
        Ok(ClientStep::Send(ClientMessage::ConsistencyCheck(
            ConsistencyCheckResponse {
                round_id: self.round_id,
                signature: ByteBuf::from(signature.to_vec()),
            },
        )))
    }

    /// With the consistency check: at least t valid signatures on the set this client signed,
    /// and R3 lists that are exactly what that set implies.
    fn check_signed_request(&self, m: &UnmaskRequest) -> Result<(), ClientRoundError> {
        let (Some(signed), Some(directory)) = (&self.signed_survivors, &self.options.directory)
        else {
            return Err(ClientRoundError::IdentityRequired);
        };
        let t = self.params.threshold as usize;
        let message = consistency_message(&self.roster_digest, &self.directory_digest, signed);
        let mut signers = BTreeSet::new();
        for s in &m.signatures {
            if signed.binary_search(&s.signer).is_ok()
                && !signers.contains(&s.signer)
                && directory.verify(s.signer, &message, &s.signature).is_ok()
            {
                signers.insert(s.signer);
            }
        }
        if signers.len() < t {
            return Err(ClientRoundError::TooFewSignatures {
                valid: signers.len(),
                needed: t,
            });
        }
        let mut survivors: Vec<ClientIndex> = self
            .held
            .keys()
            .copied()
            .chain(std::iter::once(self.index))
            .filter(|v| signed.binary_search(v).is_ok())
            .collect();
        survivors.sort_unstable();
        let dropped: Vec<ClientIndex> = self
            .held
            .keys()
            .copied()
            .filter(|v| signed.binary_search(v).is_err())
            .collect();
        if m.survivors != survivors || m.dropped != dropped {
            return Err(ClientRoundError::InconsistentUnmaskRequest);
        }
        Ok(())
    }

    fn on_unmask(&mut self, m: UnmaskRequest) -> Result<ClientStep, ClientRoundError> {
        if let Some((request, response)) = &self.answered_unmask {
            // A retransmission gets the same answer; anything else is refused.
            return if *request == m {
                Ok(ClientStep::Send(ClientMessage::Unmask(response.clone())))
            } else {
                Err(ClientRoundError::ConflictingUnmaskRequest)
            };
        }
        if self.params.consistency_check {
            self.check_signed_request(&m)?;
        }
        let t = self.params.threshold as usize;
        for d in &m.dropped {
            if m.survivors.contains(d) {
                return Err(ClientRoundError::BothSharesRequested(*d));
            }
            if !self.held.contains_key(d) {
                return Err(ClientRoundError::NotANeighbour(*d));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in m.dropped.iter().chain(&m.survivors) {
            if !seen.insert(*v) {
                return Err(ClientRoundError::BothSharesRequested(*v));
            }
            if *v != self.index && !self.held.contains_key(v) {
                return Err(ClientRoundError::NotANeighbour(*v));
            }
        }
        if m.survivors.len() < t {
            return Err(ClientRoundError::TooFewPeers {
                got: m.survivors.len(),
                needed: t,
            });
        }
        let reveal = |owner: ClientIndex, share: &Share| RevealedShare {
            owner,
            share: ByteBuf::from(share.to_bytes().to_vec()),
        };
        let self_mask_shares = m
            .survivors
            .iter()
            .map(|v| {
                if *v == self.index {
                    let own = self
                        .own_self_mask_share
                        .as_ref()
                        .expect("own share is kept from R1");
                    reveal(*v, own)
                } else {
                    reveal(*v, &self.held[v].self_mask_share)
                }
            })
            .collect();
        let key_shares = m
            .dropped
            .iter()
            .map(|d| reveal(*d, &self.held[d].key_share))
            .collect();
        let response = UnmaskResponse {
            round_id: self.round_id,
            self_mask_shares,
            key_shares,
        };
        self.answered_unmask = Some((m, response.clone()));
        Ok(ClientStep::Send(ClientMessage::Unmask(response)))
    }

    /// Forgets every secret of the round.
    fn erase(&mut self) {
        self.state = State::Over;
        self.peers.clear();
        self.held.clear();
        self.own_self_mask_share = None;
        self.input = None;
        self.answered_unmask = None;
        self.signed_survivors = None;
        *self.self_mask_seed = [0; 32];
        *self.sharing_seed = [0; 32];
        // Fresh throw-away keys replace the round's keys (the old ones zeroize on drop).
        self.c_keys = KeyPair::from_secret_bytes([0x55; 32]);
        self.s_keys = KeyPair::from_secret_bytes([0x55; 32]);
    }
}
