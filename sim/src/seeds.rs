//! Seed derivation: every random choice of a run comes from the master seed through a named,
//! indexed stream, so that adding a draw in one place never shifts the draws anywhere else, and
//! the order in which threads finish cannot change a result.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// What a derived stream is for. Each purpose is a separate stream family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Partitioning the dataset.
    Partition = 1,
    /// Assigning device profiles.
    Profiles = 2,
    /// Initial model weights.
    ModelInit = 3,
    /// Who is online and selected in a round attempt.
    Selection = 4,
    /// Which selected clients drop out, where and how.
    Dropouts = 5,
    /// A client's local training (shuffling).
    Training = 6,
    /// A client's fixed-point encoding (stochastic rounding).
    Encoding = 7,
    /// A client's SecAgg+ keys and shares.
    ClientRound = 8,
    /// The server's SecAgg+ randomness (the neighbour graph).
    ServerRound = 9,
    /// The test subset evaluated when `data.test_examples` is set.
    TestSubset = 10,
    /// A client's Ed25519 identity key (one per client for the whole run, as a device keeps
    /// the key it enrolled with).
    Identity = 11,
    /// The contribution study's cohorts and its noisy clients' uploads.
    Contribution = 12,
}

/// SplitMix64's finaliser: a bijective mixer with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit seed for stream `(purpose, a, b)` under `master`.
pub fn derive(master: u64, purpose: Purpose, a: u64, b: u64) -> u64 {
    mix(mix(mix(master ^ mix(purpose as u64)) ^ a) ^ mix(b.wrapping_add(0x5151)))
}

/// A seeded RNG for stream `(purpose, a, b)`.
pub fn rng(master: u64, purpose: Purpose, a: u64, b: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(derive(master, purpose, a, b))
}

/// A 32-byte seed for stream `(purpose, a, b)` (for the SecAgg+ state machines).
pub fn seed32(master: u64, purpose: Purpose, a: u64, b: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    rng(master, purpose, a, b).fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_every_coordinate() {
        let base = derive(1, Purpose::Training, 2, 3);
        assert_eq!(base, derive(1, Purpose::Training, 2, 3));
        assert_ne!(base, derive(2, Purpose::Training, 2, 3));
        assert_ne!(base, derive(1, Purpose::Encoding, 2, 3));
        assert_ne!(base, derive(1, Purpose::Training, 3, 2));
        assert_ne!(base, derive(1, Purpose::Training, 2, 4));
    }
}
