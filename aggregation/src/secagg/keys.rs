//! X25519 key pairs (RFC 7748) for SecAgg+'s two key agreements: `c` (share channel) and `s`
//! (pairwise masks). A client makes two fresh pairs every round.
//!
//! Agreement refuses non-contributory results: if a peer advertises a low-order point, X25519
//! outputs all zeroes whatever our secret is, and the "shared" key would be known to everyone
//! (PROTOCOL.md §3, R1 checks). Secrets are zeroized when a [`KeyPair`] is dropped, and every
//! secret that leaves this module is wrapped in [`Zeroizing`].
//!
//! `x25519-dalek` 2 is built on `rand_core` 0.6 while this crate uses `rand` 0.9, so
//! [`KeyPair::generate`] draws 32 bytes from our RNG and clamps them through
//! `StaticSecret::from`, rather than handing our RNG to dalek.

use rand::{CryptoRng, RngCore};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Length of an X25519 public key, secret key and shared secret.
pub const KEY_LEN: usize = 32;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// A public key did not have 32 bytes.
    #[error(
        "an X25519 public key must be 32 bytes, got {len}; the peer sent a malformed key and its \
         advertisement must be refused"
    )]
    BadLength {
        /// The length received.
        len: usize,
    },
    /// The peer's public key is a low-order point, so the shared secret would be all zeroes.
    #[error(
        "X25519 agreement with this public key is non-contributory (a low-order point); the \
         peer's key is malicious or corrupt and must be refused"
    )]
    NonContributory,
}

/// An X25519 key pair. The secret is zeroized on drop (`x25519-dalek`'s `zeroize` feature).
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh key pair from 32 bytes of `rng` output (clamped by X25519).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut_slice());
        Self::from_secret_bytes(*bytes)
    }

    /// The key pair whose secret scalar is `bytes` (clamped by X25519), e.g. a secret rebuilt
    /// from Shamir shares. The caller should zeroize its copy of `bytes`.
    pub fn from_secret_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The public key, to advertise.
    pub fn public_bytes(&self) -> [u8; KEY_LEN] {
        self.public.to_bytes()
    }

    /// The secret key bytes (as given; X25519 clamps them when used), for Shamir sharing.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519(our secret, `peer_public`).
    ///
    /// # Errors
    ///
    /// [`KeyError::NonContributory`] if the result does not depend on our secret (the peer's
    /// key is a low-order point).
    pub fn agree(&self, peer_public: &[u8; KEY_LEN]) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer_public));
        if !shared.was_contributory() {
            return Err(KeyError::NonContributory);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl std::fmt::Debug for KeyPair {
    /// Shows the public key only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Checks that `bytes` is a 32-byte X25519 public key and copies it out. Every 32-byte string is
/// a valid Montgomery u-coordinate; low-order points are caught by [`KeyPair::agree`].
///
/// # Errors
///
/// [`KeyError::BadLength`] if `bytes` is not 32 bytes long.
pub fn parse_public_key(bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    bytes
        .try_into()
        .map_err(|_| KeyError::BadLength { len: bytes.len() })
}
