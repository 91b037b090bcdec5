//! Round parameters: how a coordinator chooses them, how both sides validate them, and the
//! per-phase deadlines of the server.

use std::time::Duration;

use cohort_protocol::{CipherSuite, EncodingParams, SecAggParams};

use super::params::{AdversaryClass, ParamsError, choose_graph_params_for, min_survivors};

/// The largest vector a round accepts (2^28 elements, 1 GiB of masked input). Bigger models
/// need chunked rounds.
pub const MAX_VECTOR_LEN: u32 = 1 << 28;

/// The fewest bits a round's ring may have (the fewest value bits an encoding may have).
pub const MIN_RING_BITS: u8 = 8;

/// Why a set of round parameters is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Too few clients for secure aggregation.
    #[error("a SecAgg+ round needs at least 3 clients, got {0}; select a larger cohort")]
    TooFewClients(u32),
    /// The neighbour count is not usable.
    #[error(
        "neighbour count k = {k} is invalid for n = {n}: it must be even and below n - 1, or \
         exactly n - 1 for the complete graph"
    )]
    BadNeighbours {
        /// k.
        k: u32,
        /// n.
        n: u32,
    },
    /// The threshold is outside `2..=k+1`.
    #[error("threshold t = {t} must be between 2 and k + 1 = {max}")]
    BadThreshold {
        /// t.
        t: u32,
        /// k + 1.
        max: u32,
    },
    /// q_min is outside `t..=n`.
    #[error("minimum survivors q_min = {q_min} must be between t = {t} and n = {n}")]
    BadMinSurvivors {
        /// q_min.
        q_min: u32,
        /// t.
        t: u32,
        /// n.
        n: u32,
    },
    /// The vector length is zero or too large.
    #[error("vector length {0} must be between 1 and {MAX_VECTOR_LEN}")]
    BadVectorLength(u32),
    /// The ring's bits are outside `MIN_RING_BITS..=32`.
    #[error("ring_bits = {0} must be between {MIN_RING_BITS} and 32")]
    BadRingBits(u8),
    /// The graph parameter finder refused the inputs.
    #[error(transparent)]
    Params(#[from] ParamsError),
}

/// Chooses SecAgg+ parameters for a cohort of `num_clients`: k and t from the fcp-style finder
/// for the assumed adversarial and dropout fractions (complete graph for small cohorts), and
/// q_min = max(t, ⌈(1 − dropout)·n⌉).
pub fn recommended_params(
    num_clients: u32,
    vector_len: u32,
    encoding: EncodingParams,
    adversarial: f64,
    dropout: f64,
) -> Result<SecAggParams, ConfigError> {
    recommended_params_with(
        num_clients,
        vector_len,
        encoding,
        adversarial,
        dropout,
        false,
    )
}

/// [`recommended_params`], optionally for the active-adversary model: with `consistency_check`
/// the round signs keys and runs R2.5, and k and t come from the finder's semi-malicious class
/// (t large enough that a server lying about dropouts cannot collect t shares of both kinds).
pub fn recommended_params_with(
    num_clients: u32,
    vector_len: u32,
    encoding: EncodingParams,
    adversarial: f64,
    dropout: f64,
    consistency_check: bool,
) -> Result<SecAggParams, ConfigError> {
    let graph = choose_graph_params_for(
        num_clients,
        adversarial,
        dropout,
        adversary_class(consistency_check),
    )?;
    let params = SecAggParams {
        num_clients,
        neighbours: graph.neighbours,
        threshold: graph.threshold,
        min_survivors: min_survivors(num_clients, graph.threshold, dropout),
        vector_len,
        suite: CipherSuite::X25519HkdfSha256ChaCha20V1,
        encoding,
        consistency_check,
    };
    validate(&params)?;
    Ok(params)
}

/// The suite of a round whose members advertised `advertised` (one list per member, from its
/// `Hello`): AES-128-CTR when every member listed it, else ChaCha20, which every implementation
/// supports (a member that listed nothing predates negotiation and counts as ChaCha20 only).
/// The chosen suite is part of the round's parameters, hence of its session id; a client that
/// is sent a suite it did not advertise refuses the round
/// ([`super::client::ClientRoundError::UnadvertisedSuite`]).
pub fn negotiate_suite<'a, I>(advertised: I) -> CipherSuite
where
    I: IntoIterator<Item = &'a [CipherSuite]>,
{
    let mut any = false;
    let aes = advertised.into_iter().all(|suites| {
        any = true;
        suites.contains(&CipherSuite::X25519HkdfSha256Aes128CtrV1)
    });
    if aes && any {
        CipherSuite::X25519HkdfSha256Aes128CtrV1
    } else {
        CipherSuite::X25519HkdfSha256ChaCha20V1
    }
}

/// The finder's adversary class for a round with or without the consistency check.
pub fn adversary_class(consistency_check: bool) -> AdversaryClass {
    if consistency_check {
        AdversaryClass::SemiMalicious
    } else {
        AdversaryClass::SemiHonest
    }
}

/// The fewest share ciphertexts a client accepts in R2 (and the server relays): t, so that the
/// t − 1 colluders the parameters allow among a client's neighbours can never be all it masks
/// with; t − 1 on the complete graph, whose t is the round quorum (the client's own share
/// completes t).
pub fn min_relayed_shares(p: &SecAggParams) -> usize {
    let t = p.threshold as usize;
    if p.neighbours + 1 == p.num_clients {
        t - 1
    } else {
        t
    }
}

/// Checks that the parameters describe a round this implementation can run safely.
pub fn validate(p: &SecAggParams) -> Result<(), ConfigError> {
    let n = p.num_clients;
    if n < 3 {
        return Err(ConfigError::TooFewClients(n));
    }
    let k = p.neighbours;
    let complete = k == n - 1;
    if !complete && (!k.is_multiple_of(2) || k < 2 || k >= n - 1) {
        return Err(ConfigError::BadNeighbours { k, n });
    }
    if p.threshold < 2 || p.threshold > k + 1 {
        return Err(ConfigError::BadThreshold {
            t: p.threshold,
            max: k + 1,
        });
    }
    if p.min_survivors < p.threshold || p.min_survivors > n {
        return Err(ConfigError::BadMinSurvivors {
            q_min: p.min_survivors,
            t: p.threshold,
            n,
        });
    }
    if p.vector_len == 0 || p.vector_len > MAX_VECTOR_LEN {
        return Err(ConfigError::BadVectorLength(p.vector_len));
    }
    if !(MIN_RING_BITS..=32).contains(&p.encoding.ring_bits) {
        return Err(ConfigError::BadRingBits(p.encoding.ring_bits));
    }
    Ok(())
}

/// How long the server waits in each phase before it moves on with whoever answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseDeadlines {
    /// R0: key advertisement (key material only: short).
    pub advertise_keys: Duration,
    /// R1: share exchange (key material only: short).
    pub share_keys: Duration,
    /// R2: local training plus the upload of the masked input (long).
    pub masked_input: Duration,
    /// R3: share reveal (short); R2.5, the consistency check, has the same deadline.
    pub unmask: Duration,
}

impl Default for PhaseDeadlines {
    /// PROTOCOL.md §4 defaults: 15 s for the key phases, 120 s for training and upload.
    fn default() -> Self {
        Self {
            advertise_keys: Duration::from_secs(15),
            share_keys: Duration::from_secs(15),
            masked_input: Duration::from_secs(120),
            unmask: Duration::from_secs(15),
        }
    }
}
