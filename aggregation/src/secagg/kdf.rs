//! Key derivation: HKDF-SHA256 (RFC 5869) from X25519 outputs to the per-pair share-transport
//! and mask keys, and the SHA-256 `session_id` that binds a round's parameters and keys.
//!
//! Both derived keys use the raw X25519 output as input keying material and the round's
//! `session_id` as salt, so keys from one round are useless in another even if a client reused a
//! key pair (it must not). The `info` string separates the two uses ("enc" for the AEAD key of
//! [`super::cipher`], "mask" for the PRG seed of [`super::prg`]) and names the unordered pair
//! {a, b} as `min ‖ max` (u32 big-endian each), so both ends of a pair derive the same key and
//! no two pairs share one.

use cohort_protocol::ClientIndex;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Domain-separation prefix of [`session_id`]; bump it when the primitive suite changes.
pub const SESSION_ID_DOMAIN: &[u8] = b"secagg-v1";

/// The AEAD key for share transport between clients `a` and `b` (in either order):
/// HKDF-SHA256(ikm = `dh`, salt = `session_id`, info = "enc" ‖ min(a,b) ‖ max(a,b)).
pub fn share_key(
    dh: &[u8; 32],
    session_id: &[u8; 32],
    a: ClientIndex,
    b: ClientIndex,
) -> Zeroizing<[u8; 32]> {
    pair_key(dh, session_id, b"enc", a, b)
}

/// The pairwise mask seed of clients `a` and `b` (in either order):
/// HKDF-SHA256(ikm = `dh`, salt = `session_id`, info = "mask" ‖ min(a,b) ‖ max(a,b)).
pub fn mask_key(
    dh: &[u8; 32],
    session_id: &[u8; 32],
    a: ClientIndex,
    b: ClientIndex,
) -> Zeroizing<[u8; 32]> {
    pair_key(dh, session_id, b"mask", a, b)
}

/// HKDF-SHA256 extract-and-expand with `label ‖ min(a,b) ‖ max(a,b)` as info.
fn pair_key(
    dh: &[u8; 32],
    session_id: &[u8; 32],
    label: &[u8],
    a: ClientIndex,
    b: ClientIndex,
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a.0 <= b.0 { (a.0, b.0) } else { (b.0, a.0) };
    let mut info = Vec::with_capacity(label.len() + 8);
    info.extend_from_slice(label);
    info.extend_from_slice(&lo.to_be_bytes());
    info.extend_from_slice(&hi.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf_sha256(dh, session_id, &info, out.as_mut_slice());
    out
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, then expand `info` into `out`.
///
/// # Panics
///
/// If `out` is longer than 255 × 32 bytes (the HKDF limit); every caller in this crate asks for
/// 32 bytes.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    // Only fails for out.len() > 255 * 32, which the doc comment excludes.
    hk.expand(info, out)
        .expect("HKDF-SHA256 output longer than 8160 bytes requested");
}

/// The round's session identifier:
/// SHA-256("secagg-v1" ‖ round_id (u64 BE) ‖ len(config_bytes) (u64 BE) ‖ config_bytes ‖
/// for each `(index, c_pk, s_pk)` in increasing index order: index (u32 BE) ‖ 32 (u32 BE) ‖ c_pk ‖
/// 32 (u32 BE) ‖ s_pk).
///
/// `config_bytes` is the canonical encoding of the `RoundConfig`; `keys` are the advertised keys
/// of U1 and may be given in any order (they are sorted here, so server and clients agree).
pub fn session_id(
    round_id: u64,
    config_bytes: &[u8],
    keys: &[(ClientIndex, [u8; 32], [u8; 32])],
) -> [u8; 32] {
    let mut sorted: Vec<&(ClientIndex, [u8; 32], [u8; 32])> = keys.iter().collect();
    sorted.sort_by_key(|(index, _, _)| *index);

    let mut h = Sha256::new();
    h.update(SESSION_ID_DOMAIN);
    h.update(round_id.to_be_bytes());
    h.update((config_bytes.len() as u64).to_be_bytes());
    h.update(config_bytes);
    for (index, c_pk, s_pk) in sorted {
        h.update(index.0.to_be_bytes());
        h.update(32u32.to_be_bytes());
        h.update(c_pk);
        h.update(32u32.to_be_bytes());
        h.update(s_pk);
    }
    h.finalize().into()
}

/// A U1 member's commitment to its advertised keys: SHA-256("cohort-secagg-keys-v1" ‖ c_pk ‖
/// s_pk).
pub fn key_commitment(c_pk: &[u8; 32], s_pk: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort-secagg-keys-v1");
    h.update(c_pk);
    h.update(s_pk);
    h.finalize().into()
}

/// The digest of a round's U1 roster: SHA-256("cohort-secagg-roster-v1" ‖ round context ‖
/// |U1| (u32 BE) ‖ for each member in increasing index order: index (u32 BE) ‖ commitment).
/// Every client can recompute it from the R1 roster; it seeds the neighbour graph
/// ([`graph_seed`]) and is what R2.5 signatures bind.
pub fn roster_digest(context: &[u8; 32], roster: &[(ClientIndex, [u8; 32])]) -> [u8; 32] {
    let mut sorted: Vec<&(ClientIndex, [u8; 32])> = roster.iter().collect();
    sorted.sort_by_key(|(index, _)| *index);
    let mut h = Sha256::new();
    h.update(b"cohort-secagg-roster-v1");
    h.update(context);
    h.update((sorted.len() as u32).to_be_bytes());
    for (index, digest) in sorted {
        h.update(index.0.to_be_bytes());
        h.update(digest);
    }
    h.finalize().into()
}

/// The seed of the neighbour graph's permutation: SHA-256("cohort-secagg-graph-v1" ‖ roster
/// digest). The coordinator fixes the roster's indices before it sees any key, and the keys are
/// fresh and random, so it cannot choose where anyone lands (it can only drop R0 answers, each
/// choice re-drawing the whole graph).
pub fn graph_seed(roster_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort-secagg-graph-v1");
    h.update(roster_digest);
    h.finalize().into()
}
