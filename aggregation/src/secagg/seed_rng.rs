//! The client's seeded randomness: a ChaCha20 keystream (RFC 8439, nonce 0) keyed by a 32-byte
//! seed, as an `RngCore`. Unlike `rand_chacha`'s generator, its state (key included) is zeroized
//! on drop (`chacha20`'s `zeroize` feature), so a `ClientRound` can draw its key pairs and seeds
//! at start and keep nothing from which they could be drawn again.
//!
//! [`ClientRound::start`](super::ClientRound::start) draws, in this order: the share-channel key
//! pair c (32 bytes), the mask key pair s (32 bytes), the self-mask seed b (32 bytes), the seed of
//! its Shamir polynomials (32 bytes). A test that plays a colluding client rebuilds them with
//! [`round_secrets`].

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::keys::KeyPair;

/// A ChaCha20 keystream generator that wipes its state on drop.
pub struct SeedRng(ChaCha20);

impl SeedRng {
    /// The keystream of `seed` (nonce 0, block counter from 0).
    pub fn new(seed: &[u8; 32]) -> Self {
        Self(ChaCha20::new(&(*seed).into(), &[0u8; 12].into()))
    }
}

impl RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill(0);
        // A client draws a few hundred bytes per round, far below the 256 GiB keystream limit.
        self.0.apply_keystream(dst);
    }
}

impl CryptoRng for SeedRng {}

/// A client's round secrets as [`ClientRound::start`](super::ClientRound::start) draws them
/// from its seed.
pub struct RoundSecrets {
    /// The share-channel key pair.
    pub c_keys: KeyPair,
    /// The mask key pair.
    pub s_keys: KeyPair,
    /// The self-mask seed b_u.
    pub self_mask_seed: Zeroizing<[u8; 32]>,
    /// The seed of the Shamir polynomials' coefficients.
    pub sharing_seed: Zeroizing<[u8; 32]>,
}

/// Draws a client's round secrets from `seed` (the order is part of the interface: tests that
/// play a colluding client rely on it).
pub fn round_secrets(seed: &[u8; 32]) -> RoundSecrets {
    let mut rng = SeedRng::new(seed);
    let c_keys = KeyPair::generate(&mut rng);
    let s_keys = KeyPair::generate(&mut rng);
    let mut self_mask_seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(self_mask_seed.as_mut());
    let mut sharing_seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(sharing_seed.as_mut());
    RoundSecrets {
        c_keys,
        s_keys,
        self_mask_seed,
        sharing_seed,
    }
}
