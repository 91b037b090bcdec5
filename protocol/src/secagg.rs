//! The SecAgg+ messages of one round, phases R0 to R3 (PROTOCOL.md §2 and §3).
//!
//! Every message carries its [`RoundId`]; the state machines in `cohort-aggregation` refuse a
//! message of another round as a replay. Cryptographic payloads (public keys, shares,
//! ciphertexts) travel as bytes and are parsed and checked by the state machines, so that a
//! malformed one becomes a typed round error for that client, never a decode failure for the
//! whole connection.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ids::{ClientIndex, ContentHash, RoundId};
use crate::vectors::PackedVector;

/// The primitive suite of a round. Pinned per round and hashed into the session id, so that two
/// parties can never silently combine masks from different primitives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CipherSuite {
    /// X25519 key agreement, HKDF-SHA256, ChaCha20 keystream as the mask PRG (read as
    /// little-endian u32), ChaCha20-Poly1305 for share transport, Shamir over GF(2^61 - 1).
    X25519HkdfSha256ChaCha20V1,
    /// As [`CipherSuite::X25519HkdfSha256ChaCha20V1`], with AES-128-CTR as the mask PRG (key
    /// `HKDF-SHA256(seed, info "cohort-secagg-mask-aes128ctr-v1")[..16]`, counter block from 0,
    /// keystream read as little-endian u32). Chosen by the coordinator when every member of the
    /// round advertised it (devices do where AES runs on hardware instructions).
    X25519HkdfSha256Aes128CtrV1,
}

/// Fixed-point encoding of a client's update (shared by all clients of a round).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodingParams {
    /// Each coordinate is clipped to `[-clip, clip]` before quantisation.
    pub clip: f32,
    /// Bits of a quantised coordinate, sign included. The weighted sum over the whole cohort
    /// cannot leave the signed range of the ring (`ring_bits`).
    pub value_bits: u8,
    /// Largest weight (number of examples) a client may claim. The weight travels as the last
    /// element of the masked vector, so the weighted mean needs no plaintext side channel.
    pub max_weight: u32,
    /// r: the round's ring is Z_{2^r}. Masked inputs travel packed at r bits per coordinate
    /// ([`PackedVector`]) and every mask and sum is taken mod 2^r. Sized by the round plan for
    /// the bits the cohort's weighted sum needs (value bits + ⌈log2 of the largest total
    /// weight⌉; with distributed DP, the DP encoding's own bits), at most 32. Part of the
    /// session id, so both sides agree on it. Absent: 32.
    #[serde(default = "full_ring")]
    pub ring_bits: u8,
}

fn full_ring() -> u8 {
    32
}

/// Parameters of one SecAgg+ instance (PROTOCOL.md §1). Fixed for the round, sent in R0, and
/// hashed into the session id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecAggParams {
    /// n: clients that received the round config.
    pub num_clients: u32,
    /// k: neighbours per client. `num_clients - 1` means the complete graph.
    pub neighbours: u32,
    /// t: the Shamir threshold.
    pub threshold: u32,
    /// q_min: the fewest survivors whose sum may be released.
    pub min_survivors: u32,
    /// m: the length of the masked vector (model parameters plus the weight element).
    pub vector_len: u32,
    /// The primitive suite.
    pub suite: CipherSuite,
    /// How updates are encoded into the ring.
    pub encoding: EncodingParams,
    /// Whether the active-adversary extras run: signed keys and the R2.5 consistency check.
    pub consistency_check: bool,
}

/// R0, server to client: you are in this round, with these parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundConfig {
    /// The round.
    pub round_id: RoundId,
    /// The recipient's logical index in the round (1-based).
    pub your_index: ClientIndex,
    /// The round's parameters.
    pub params: SecAggParams,
    /// The global weights this round trains from; the client fetches them by hash.
    pub model: ContentHash,
    /// Federated evaluation: the client evaluates the received global weights on its own local
    /// data before training and inserts the clipped scalars (reported, examples, correct, loss)
    /// into the vector it masks, just before the weight element, as limbs of the round's ring
    /// (`cohort_task::evaluation`); the coordinator learns only their sums. Nothing is sent in
    /// the clear. Not itself in the session id, but the longer vector is (`vector_len`): a
    /// client told otherwise than its cohort cannot produce an input the round accepts.
    #[serde(default)]
    pub evaluate: bool,
    /// Rounds with the consistency check: the identity-log position of each client's device key,
    /// by index (`roster[i]` is index `i + 1`). Each client maps it to keys through the identity
    /// log it verified ([`crate::IdentityLogView::roster_keys`]) and checks every signature
    /// against those keys. Empty in rounds without the check.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>"
    )]
    pub roster: Vec<u64>,
    /// Rounds with the consistency check: the identity log's entries after the head the client
    /// named at check-in (`CheckIn::known_identity_head`; the whole log when it named none or
    /// one not in the chain). Sent with the round, not the check-in, so that it holds the keys
    /// of every member, including those that enrolled after this client checked in.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_LOG_ENTRIES }>"
    )]
    pub identity_log: Vec<crate::IdentityLogEntry>,
}

/// R0, client to server: two fresh X25519 public keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// The round.
    pub round_id: RoundId,
    /// Public key of the share-encryption channel, c_pk (32 bytes).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub c_pk: ByteBuf,
    /// Public key of the pairwise masks, s_pk (32 bytes).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub s_pk: ByteBuf,
    /// Active model only: the client's identity signature over (round_id ‖ c_pk ‖ s_pk).
    #[serde(
        default,
        deserialize_with = "crate::limits::de::opt_bytes::<_, { crate::limits::MAX_KEY_LEN }>"
    )]
    pub signature: Option<ByteBuf>,
}

/// One neighbour's advertised keys, as relayed by the server in R1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerKeys {
    /// The neighbour (or the recipient itself).
    pub index: ClientIndex,
    /// Its share-channel public key.
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub c_pk: ByteBuf,
    /// Its mask public key.
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub s_pk: ByteBuf,
    /// Active model only: its signature over its keys.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::opt_bytes::<_, { crate::limits::MAX_KEY_LEN }>"
    )]
    pub signature: Option<ByteBuf>,
}

/// R1, server to client: the keys of the recipient's neighbours that advertised, its own entry
/// included, and the session id that binds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareKeysRequest {
    /// The round.
    pub round_id: RoundId,
    /// SHA-256 over the round id, the parameters and every advertised key (PROTOCOL.md §1).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub session_id: ByteBuf,
    /// Neighbours' keys, the recipient's own entry included.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub peers: Vec<PeerKeys>,
    /// U1: every client that advertised keys, with a commitment to its keys
    /// (SHA-256 of both), sorted by index. The recipient recomputes from it the neighbour graph
    /// (whose permutation is a hash of the round and these commitments, so the coordinator
    /// cannot place neighbours adaptively) and checks its neighbours' keys against it. Absent
    /// (empty) from coordinators that predate it; such rounds are refused.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>"
    )]
    pub roster: Vec<KeyCommitment>,
}

/// One U1 member's commitment to its advertised keys, SHA-256("cohort-secagg-keys-v1" ‖ c_pk ‖
/// s_pk).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyCommitment {
    /// The member.
    pub index: ClientIndex,
    /// The commitment (32 bytes).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub digest: ByteBuf,
}

/// A ciphertext of key shares between two clients, relayed by the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// The other end: the recipient in a [`ShareKeysResponse`], the sender in a
    /// [`MaskedInputRequest`].
    pub peer: ClientIndex,
    /// AEAD ciphertext of (sender ‖ recipient ‖ share of s_sk ‖ share of b).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_SHARE_LEN }>")]
    pub ciphertext: ByteBuf,
}

/// R1, client to server: one ciphertext for each neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareKeysResponse {
    /// The round.
    pub round_id: RoundId,
    /// One entry per neighbour; `peer` is the recipient.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub shares: Vec<EncryptedShares>,
}

/// R2, server to client: the ciphertexts addressed to the recipient by its neighbours that
/// survived R1. The recipient masks its input with exactly these neighbours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskedInputRequest {
    /// The round.
    pub round_id: RoundId,
    /// One entry per surviving neighbour; `peer` is the sender.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub shares: Vec<EncryptedShares>,
}

/// R2, client to server: the masked, quantised update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The round.
    pub round_id: RoundId,
    /// y_u = Q(x_u) + PRG(b_u) + Σ ±PRG(K_uv) mod 2^r, packed at r = the round's
    /// [`EncodingParams::ring_bits`] bits per coordinate.
    pub vector: PackedVector,
}

/// R2.5 (active model only), server to client: the set of clients whose inputs are in the sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyCheckRequest {
    /// The round.
    pub round_id: RoundId,
    /// U3, sorted.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub survivors: Vec<ClientIndex>,
}

/// R2.5 (active model only), client to server: a signature over the round and U3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyCheckResponse {
    /// The round.
    pub round_id: RoundId,
    /// The client's identity signature.
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub signature: ByteBuf,
}

/// R3, server to client: which of the recipient's neighbours dropped after R1. The recipient
/// reveals the key share of each of those, and the self-mask share of every other neighbour that
/// survived R1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// The round.
    pub round_id: RoundId,
    /// N(u) ∩ (U2 \ U3), sorted.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub dropped: Vec<ClientIndex>,
    /// N(u) ∩ U3, sorted. Sent explicitly so that the client checks the server's view instead
    /// of inferring it.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub survivors: Vec<ClientIndex>,
    /// Active model only: R2.5 signatures over the survivor set U3 the recipient signed (at
    /// least t, from distinct members of U3).
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub signatures: Vec<SurvivorSignature>,
}

/// A U3 member's R2.5 signature over the round and U3, relayed in R3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurvivorSignature {
    /// The signer.
    pub signer: ClientIndex,
    /// Its Ed25519 signature (64 bytes).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub signature: ByteBuf,
}

/// A Shamir share revealed in R3, for one neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// The neighbour the share belongs to.
    pub owner: ClientIndex,
    /// The share's bytes (40 bytes: five little-endian 64-bit field elements).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_SHARE_LEN }>")]
    pub share: ByteBuf,
}

/// R3, client to server: the requested shares. Never both kinds for the same neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// The round.
    pub round_id: RoundId,
    /// Shares of the self-mask seed b_v of surviving neighbours.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub self_mask_shares: Vec<RevealedShare>,
    /// Shares of the mask key s_sk of dropped neighbours.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_COHORT }>")]
    pub key_shares: Vec<RevealedShare>,
}

/// Server to client, at the end of a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RoundResult {
    /// The sum was released and the new global weights are published under this hash.
    Completed {
        /// The round.
        round_id: RoundId,
        /// Hash of the new global weights.
        new_model: ContentHash,
        /// How many inputs the sum holds.
        contributors: u32,
    },
    /// The round aborted and released nothing.
    Aborted {
        /// The round.
        round_id: RoundId,
        /// Why, for humans.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_TEXT_LEN }>"
        )]
        reason: String,
    },
}
