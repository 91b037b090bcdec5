//! Client identity keys for the active-adversary model: Ed25519 signatures on the R0 advertised
//! keys and on the R2.5 survivor set, checked by every client against an identity directory the
//! coordinator cannot forge (in the live system, keys registered at enrollment and published in
//! the identity log).
//!
//! Signed messages are domain-separated byte strings:
//! - advertise: "cohort-secagg-advertise-v2" ‖ round context (32) ‖ directory digest (32) ‖ index
//!   (u32 BE) ‖ c_pk ‖ s_pk, where the round context is SHA-256 over the round id and the
//!   canonical parameters ([`round_context`]), so a signature is good for one round, one index
//!   and one parameter set;
//! - consistency: "cohort-secagg-consistency-v2" ‖ roster digest (32) ‖ directory digest (32) ‖
//!   |U3| (u32 BE) ‖ each index of U3 (u32 BE, increasing); the roster digest binds the round,
//!   the parameters and every U1 key commitment ([`super::kdf::roster_digest`]).
//!
//! The directory digest ([`IdentityDirectory::digest`]) is the signer's view of who holds which
//! key in this round. A coordinator that shows one client a forked identity log (another key for
//! some of its neighbours, so as to stand in for them) changes that client's digest, so the
//! genuine signatures of every neighbour it did not replace fail at that client in R1, before
//! the client sends a share: to deceive a client the coordinator must replace *every* key in its
//! view, that is, isolate it completely. Against that, only comparing identity-log heads outside
//! the coordinator helps (see the README's threat model).

use std::collections::BTreeMap;

use cohort_protocol::{ClientIndex, RoundId, SecAggParams, codec};
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// Length of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No identity key is known for this client.
    #[error("no identity key is registered for {0}; it cannot take part in a checked round")]
    UnknownIdentity(ClientIndex),
    /// The signature is missing.
    #[error("{0} sent no signature, but the round requires signed keys")]
    Missing(ClientIndex),
    /// The signature is not 64 bytes.
    #[error("the signature of {signer} is {len} bytes, expected {SIGNATURE_LEN}")]
    BadLength {
        /// The claimed signer.
        signer: ClientIndex,
        /// Its length.
        len: usize,
    },
    /// The signature does not verify under the signer's identity key.
    #[error("the signature of {0} does not verify under its registered identity key")]
    Invalid(ClientIndex),
}

/// The identity keys of a round's clients, by index. The coordinator assigns indices; a client
/// gets the directory from a source the coordinator cannot rewrite (the identity log, checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityDirectory {
    keys: BTreeMap<ClientIndex, VerifyingKey>,
}

impl IdentityDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `key` for `index` (replacing any earlier key).
    pub fn insert(&mut self, index: ClientIndex, key: VerifyingKey) {
        self.keys.insert(index, key);
    }

    /// The key of `index`.
    pub fn get(&self, index: ClientIndex) -> Option<&VerifyingKey> {
        self.keys.get(&index)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// SHA-256("cohort-secagg-directory-v1" ‖ |keys| (u32 BE) ‖ for each index in increasing
    /// order: index (u32 BE) ‖ key (32)): this view of the round's keys, bound into every
    /// signature (see the module docs).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"cohort-secagg-directory-v1");
        h.update((self.keys.len() as u32).to_be_bytes());
        for (index, key) in &self.keys {
            h.update(index.0.to_be_bytes());
            h.update(key.as_bytes());
        }
        h.finalize().into()
    }

    /// Verifies `signature` by `signer` over `message`.
    ///
    /// # Errors
    ///
    /// [`SignatureError::UnknownIdentity`], [`SignatureError::BadLength`],
    /// [`SignatureError::Invalid`].
    pub fn verify(
        &self,
        signer: ClientIndex,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self
            .get(signer)
            .ok_or(SignatureError::UnknownIdentity(signer))?;
        let bytes: [u8; SIGNATURE_LEN] =
            signature
                .try_into()
                .map_err(|_| SignatureError::BadLength {
                    signer,
                    len: signature.len(),
                })?;
        key.verify_strict(message, &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::Invalid(signer))
    }
}

impl FromIterator<(ClientIndex, VerifyingKey)> for IdentityDirectory {
    fn from_iter<I: IntoIterator<Item = (ClientIndex, VerifyingKey)>>(iter: I) -> Self {
        Self {
            keys: iter.into_iter().collect(),
        }
    }
}

/// SHA-256("cohort-secagg-round-v1" ‖ round id (u64 BE) ‖ len (u64 BE) ‖ canonical parameters).
pub fn round_context(round_id: RoundId, params: &SecAggParams) -> [u8; 32] {
    let config = codec::to_cbor(params).expect("parameters always encode");
    let mut h = Sha256::new();
    h.update(b"cohort-secagg-round-v1");
    h.update(round_id.0.to_be_bytes());
    h.update((config.len() as u64).to_be_bytes());
    h.update(&config);
    h.finalize().into()
}

/// The bytes an R0 advertisement signature covers; `directory` is the signer's (or verifier's)
/// [`IdentityDirectory::digest`].
pub fn advertise_message(
    context: &[u8; 32],
    directory: &[u8; 32],
    index: ClientIndex,
    c_pk: &[u8; 32],
    s_pk: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(26 + 64 + 4 + 64);
    m.extend_from_slice(b"cohort-secagg-advertise-v2");
    m.extend_from_slice(context);
    m.extend_from_slice(directory);
    m.extend_from_slice(&index.0.to_be_bytes());
    m.extend_from_slice(c_pk);
    m.extend_from_slice(s_pk);
    m
}

/// The bytes an R2.5 consistency signature covers. `survivors` must be sorted; `directory` is
/// the signer's (or verifier's) [`IdentityDirectory::digest`].
pub fn consistency_message(
    roster_digest: &[u8; 32],
    directory: &[u8; 32],
    survivors: &[ClientIndex],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(28 + 64 + 4 + 4 * survivors.len());
    m.extend_from_slice(b"cohort-secagg-consistency-v2");
    m.extend_from_slice(roster_digest);
    m.extend_from_slice(directory);
    m.extend_from_slice(&(survivors.len() as u32).to_be_bytes());
    for v in survivors {
        m.extend_from_slice(&v.0.to_be_bytes());
    }
    m
}

/// Signs `message` with `key`.
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(message).to_bytes()
}

/// Binds a device identity key to an account at enrollment: HMAC-SHA256 keyed by the OPAQUE
/// export key over ("cohort-identity-binding-v1" ‖ len ‖ account ‖ public key). The coordinator
/// stores it beside the OPAQUE record; it cannot compute it (it never learns the export key),
/// so a device that logs in later can tell whether the key registered for its account is the
/// one it bound ([`check_enrollment_binding`]).
pub fn enrollment_binding(export_key: &[u8], account: &str, key: &VerifyingKey) -> [u8; 32] {
    use hkdf::hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(export_key).expect("HMAC takes keys of any length");
    mac.update(b"cohort-identity-binding-v1");
    mac.update(&(account.len() as u64).to_be_bytes());
    mac.update(account.as_bytes());
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Checks a stored binding in constant time.
pub fn check_enrollment_binding(
    export_key: &[u8],
    account: &str,
    key: &VerifyingKey,
    binding: &[u8],
) -> bool {
    use hkdf::hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(export_key).expect("HMAC takes keys of any length");
    mac.update(b"cohort-identity-binding-v1");
    mac.update(&(account.len() as u64).to_be_bytes());
    mac.update(account.as_bytes());
    mac.update(key.as_bytes());
    mac.verify_slice(binding).is_ok()
}
