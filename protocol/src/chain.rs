//! Verifying the round log's hash chain and its signatures: one implementation for the
//! coordinator (which checks its stored log) and the edge client (which checks what it is sent).
//!
//! A chain is checked one entry at a time against the head before it ([`check_next`]): the
//! entry belongs to the task, hashes to its stored hash ([`RoundLogEntry::compute_hash`]), names
//! the previous entry's hash (the first names [`ROUND_LOG_GENESIS`]), has a larger round number,
//! starts from the model the previous entry produced, and, when a key is given, carries a valid
//! signature by that key ([`verify_signature`]). [`verify_extension`] does this for a run of
//! entries that continues a head (or starts the chain).
//!
//! ## Signatures
//!
//! The coordinator signs each entry with the model owner's Ed25519 key, which devices pin at
//! enrollment beside the TLS fingerprint. The signed bytes ([`signed_bytes`]) are the domain tag
//! [`SIGNATURE_DOMAIN`] followed by the entry's hash, which covers every field and the previous
//! hash; the signature itself is not covered by the hash, so signing does not change the chain.
//!
//! ## Incremental delivery
//!
//! A device names the head it holds ([`RoundLogHead`]) at check-in and is sent only the entries
//! after it, at most [`MAX_ENTRIES_PER_MESSAGE`] at a time.

use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::ids::{ContentHash, RoundId, TaskId};
use crate::round_log::{ROUND_LOG_GENESIS, RoundLogEntry};

/// Domain tag of an entry's signature (the entry hash has its own tag).
pub const SIGNATURE_DOMAIN: &[u8] = b"cohort-round-log-signature-v1\0";

/// The most log entries one message carries; a device further behind asks again.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 256;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A head of a task's chain as a device names it at check-in: the round of the last entry it
/// verified and that entry's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundLogHead {
    /// The entry's round.
    pub round: RoundId,
    /// The entry's hash.
    pub hash: ContentHash,
}

/// What a verifier keeps of the last entry it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// The entry's round.
    pub round: RoundId,
    /// The entry's hash.
    pub hash: ContentHash,
    /// The model the entry's round produced.
    pub output: ContentHash,
}

impl ChainHead {
    /// The head of `entry` (whose hash the caller has checked).
    pub fn of(entry: &RoundLogEntry) -> Self {
        Self {
            round: entry.round,
            hash: entry.hash,
            output: entry.output_weights,
        }
    }

    /// The head as named at check-in.
    pub fn wire(&self) -> RoundLogHead {
        RoundLogHead {
            round: self.round,
            hash: self.hash,
        }
    }
}

/// Why an entry does not continue a chain.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChainError {
    /// The entry belongs to another task.
    #[error("an entry of task {found} in the log of task {task}")]
    OtherTask {
        /// The task being checked.
        task: TaskId,
        /// The task the entry names.
        found: TaskId,
    },
    /// The entry's fields do not hash to its stored hash.
    #[error("the entry of {round} does not hash to its stored hash")]
    Altered {
        /// The entry's round.
        round: RoundId,
    },
    /// The entry does not name the hash of the entry before it.
    #[error("the entry of {round} does not name the entry before it")]
    NotLinked {
        /// The entry's round.
        round: RoundId,
    },
    /// The entry's round is not after the previous entry's.
    #[error("the entry of {round} is not after {previous}")]
    RoundNotAfter {
        /// The entry's round.
        round: RoundId,
        /// The previous entry's round.
        previous: RoundId,
    },
    /// The entry's input model is not the model the previous entry produced.
    #[error("the round {round} did not start from the model the round before it produced")]
    InputNotPreviousOutput {
        /// The entry's round.
        round: RoundId,
    },
    /// The entry carries no signature, but the verifier pinned a key.
    #[error("the entry of {round} is not signed")]
    Unsigned {
        /// The entry's round.
        round: RoundId,
    },
    /// The entry's signature is not a valid signature by the pinned key.
    #[error("the entry of {round} is not signed by the model owner's pinned key")]
    BadSignature {
        /// The entry's round.
        round: RoundId,
    },
}

impl ChainError {
    /// The round of the offending entry.
    pub fn round(&self) -> Option<RoundId> {
        match self {
            ChainError::OtherTask { .. } => None,
            ChainError::Altered { round }
            | ChainError::NotLinked { round }
            | ChainError::RoundNotAfter { round, .. }
            | ChainError::InputNotPreviousOutput { round }
            | ChainError::Unsigned { round }
            | ChainError::BadSignature { round } => Some(*round),
        }
    }
}

/// The bytes an entry's signature covers: [`SIGNATURE_DOMAIN`] ‖ the entry's computed hash.
pub fn signed_bytes(entry: &RoundLogEntry) -> Vec<u8> {
    let hash = entry.compute_hash();
    let mut out = Vec::with_capacity(SIGNATURE_DOMAIN.len() + hash.0.len());
    out.extend_from_slice(SIGNATURE_DOMAIN);
    out.extend_from_slice(&hash.0);
    out
}

/// Signs `entry` with `key` (Ed25519 is deterministic: the same entry and key give the same
/// signature).
pub fn sign(key: &SigningKey, entry: &RoundLogEntry) -> [u8; SIGNATURE_LEN] {
    key.sign(&signed_bytes(entry)).to_bytes()
}

/// Checks `entry`'s signature against `key`.
pub fn verify_signature(key: &VerifyingKey, entry: &RoundLogEntry) -> Result<(), ChainError> {
    if entry.signature.is_empty() {
        return Err(ChainError::Unsigned { round: entry.round });
    }
    let bytes: [u8; SIGNATURE_LEN] = entry
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| ChainError::BadSignature { round: entry.round })?;
    key.verify(&signed_bytes(entry), &Signature::from_bytes(&bytes))
        .map_err(|_| ChainError::BadSignature { round: entry.round })
}

/// Checks that `entry` continues the chain whose head is `prev` (`None`: the entry must be the
/// chain's first), and returns the new head. With `key`, the entry must be signed by it.
pub fn check_next(
    task: &TaskId,
    prev: Option<&ChainHead>,
    entry: &RoundLogEntry,
    key: Option<&VerifyingKey>,
) -> Result<ChainHead, ChainError> {
    let round = entry.round;
    if entry.task != *task {
        return Err(ChainError::OtherTask {
            task: task.clone(),
            found: entry.task.clone(),
        });
    }
    if !entry.hash_is_valid() {
        return Err(ChainError::Altered { round });
    }
    let expected_prev = prev.map_or(ROUND_LOG_GENESIS, |p| p.hash);
    if entry.prev != expected_prev {
        return Err(ChainError::NotLinked { round });
    }
    if let Some(p) = prev {
        if entry.round <= p.round {
            return Err(ChainError::RoundNotAfter {
                round,
                previous: p.round,
            });
        }
        if entry.input_weights != p.output {
            return Err(ChainError::InputNotPreviousOutput { round });
        }
    }
    if let Some(key) = key {
        verify_signature(key, entry)?;
    }
    Ok(ChainHead::of(entry))
}

/// Checks that `entries` continue the chain from `from` (`None`: from the genesis) and returns
/// the head they end at (`from` itself when there are none; `None` only for an empty chain).
pub fn verify_extension(
    task: &TaskId,
    from: Option<ChainHead>,
    entries: &[RoundLogEntry],
    key: Option<&VerifyingKey>,
) -> Result<Option<ChainHead>, ChainError> {
    let mut head = from;
    for e in entries {
        head = Some(check_next(task, head.as_ref(), e, key)?);
    }
    Ok(head)
}

/// The entries of `log` (a whole chain, oldest first) after `known`: `Ok` with all of them when
/// `known` is `None`, with those after it when `known` is on the chain (same hash, same round),
/// and `Err(())` when it is not (the device holds a head of another chain, or the chain was
/// rewritten).
#[allow(clippy::result_unit_err)]
pub fn entries_after<'a>(
    log: &'a [RoundLogEntry],
    known: Option<&RoundLogHead>,
) -> Result<&'a [RoundLogEntry], ()> {
    let Some(known) = known else {
        return Ok(log);
    };
    match log.iter().rposition(|e| e.hash == known.hash) {
        Some(i) if log[i].round == known.round => Ok(&log[i + 1..]),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// A signed chain of `n` entries (rounds 0..n).
    fn chain(n: u64, key: &SigningKey) -> Vec<RoundLogEntry> {
        let mut out: Vec<RoundLogEntry> = Vec::new();
        for r in 0..n {
            let mut e = RoundLogEntry {
                task: TaskId("t".into()),
                round: RoundId(r),
                participants: r as u32,
                input_weights: out.last().map_or(ROUND_LOG_GENESIS, |e| e.output_weights),
                output_weights: ContentHash([r as u8 + 1; 32]),
                params: ByteBuf::from(b"{}".to_vec()),
                created_at: r as i64,
                prev: out.last().map_or(ROUND_LOG_GENESIS, |e| e.hash),
                hash: ROUND_LOG_GENESIS,
                signature: ByteBuf::new(),
            };
            e.hash = e.compute_hash();
            e.signature = ByteBuf::from(sign(key, &e).to_vec());
            out.push(e);
        }
        out
    }

    fn t() -> TaskId {
        TaskId("t".into())
    }

    /// Pins the signed bytes and the signature of a fixed entry under a fixed key: both sides
    /// must sign and verify exactly these bytes.
    #[test]
    fn signed_bytes_known_answer() {
        let entry = crate::round_log::tests::entry();
        let bytes = signed_bytes(&entry);
        // "cohort-round-log-signature-v1\0" ‖ the entry hash pinned in round_log's tests.
        assert_eq!(
            hex::encode(&bytes),
            format!(
                "{}{}",
                hex::encode(b"cohort-round-log-signature-v1\0"),
                "17477f9d4235df1b6a49f784b32ed0e5021d729a38f235415bce6817451c908b"
            )
        );
        assert_eq!(
            hex::encode(sign(&key(), &entry)),
            SIGNATURE_KAT,
            "Ed25519 (RFC 8032) over the signed bytes with the seed [7; 32]"
        );
    }

    /// Computed independently with Python's `cryptography` (Ed25519PrivateKey.from_private_bytes).
    const SIGNATURE_KAT: &str = "e412ade433d6aecbf0f282bf3228fb3c5f2bf0206467ab6f7ed92aafda911326061aced0554bf9b48c104a2551319f10d0d8049ed29854d9326e0244565f8701";

    #[test]
    fn a_signed_chain_verifies_from_genesis_and_from_a_head() {
        let log = chain(6, &key());
        let vk = key().verifying_key();
        let head = verify_extension(&t(), None, &log, Some(&vk))
            .unwrap()
            .unwrap();
        assert_eq!(head, ChainHead::of(&log[5]));
        let mid = verify_extension(&t(), None, &log[..3], Some(&vk))
            .unwrap()
            .unwrap();
        assert_eq!(
            verify_extension(&t(), Some(mid), &log[3..], Some(&vk)).unwrap(),
            Some(head)
        );
        assert_eq!(
            verify_extension(&t(), Some(head), &[], Some(&vk)).unwrap(),
            Some(head)
        );
    }

    /// An entry signed by another key, or re-signed after an edit by another key, or unsigned,
    /// is refused; the hash chain alone would have accepted each.
    #[test]
    fn forged_and_unsigned_entries_are_refused() {
        let vk = key().verifying_key();
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let mut log = chain(4, &key());
        log[2].signature = ByteBuf::from(sign(&other, &log[2]).to_vec());
        assert_eq!(
            verify_extension(&t(), None, &log, Some(&vk)),
            Err(ChainError::BadSignature { round: RoundId(2) })
        );
        assert!(verify_extension(&t(), None, &log, None).is_ok());
        // A whole chain forged under another key.
        let forged = chain(4, &other);
        assert_eq!(
            verify_extension(&t(), None, &forged, Some(&vk)),
            Err(ChainError::BadSignature { round: RoundId(0) })
        );
        let mut log = chain(4, &key());
        log[1].signature = ByteBuf::new();
        assert_eq!(
            verify_extension(&t(), None, &log, Some(&vk)),
            Err(ChainError::Unsigned { round: RoundId(1) })
        );
        let mut log = chain(4, &key());
        log[3].signature = ByteBuf::from(vec![1u8; 12]);
        assert_eq!(
            verify_extension(&t(), None, &log, Some(&vk)),
            Err(ChainError::BadSignature { round: RoundId(3) })
        );
        // A signature is bound to its entry: moved to an edited, re-hashed entry it fails.
        let mut log = chain(4, &key());
        log[3].participants += 1;
        log[3].hash = log[3].compute_hash();
        assert_eq!(
            verify_extension(&t(), None, &log, Some(&vk)),
            Err(ChainError::BadSignature { round: RoundId(3) })
        );
    }

    #[test]
    fn each_round_must_start_from_the_previous_output() {
        let k = key();
        let mut log = chain(4, &k);
        log[2].input_weights = ContentHash([42; 32]);
        log[2].hash = log[2].compute_hash();
        log[2].signature = ByteBuf::from(sign(&k, &log[2]).to_vec());
        log[3].prev = log[2].hash;
        log[3].hash = log[3].compute_hash();
        assert_eq!(
            verify_extension(&t(), None, &log, Some(&k.verifying_key())),
            Err(ChainError::InputNotPreviousOutput { round: RoundId(2) })
        );
    }

    #[test]
    fn links_rounds_and_tasks_are_checked() {
        let k = key();
        let log = chain(4, &k);
        assert_eq!(
            verify_extension(&t(), None, &log[1..], None),
            Err(ChainError::NotLinked { round: RoundId(1) })
        );
        let mut edited = log.clone();
        edited[1].created_at += 1;
        assert_eq!(
            verify_extension(&t(), None, &edited, None),
            Err(ChainError::Altered { round: RoundId(1) })
        );
        assert!(matches!(
            verify_extension(&TaskId("u".into()), None, &log, None),
            Err(ChainError::OtherTask { .. })
        ));
        let mut back = log.clone();
        back[2].round = RoundId(1);
        back[2].hash = back[2].compute_hash();
        assert!(matches!(
            verify_extension(&t(), None, &back[..3], None),
            Err(ChainError::RoundNotAfter { .. })
        ));
    }

    #[test]
    fn entries_after_a_known_head() {
        let log = chain(5, &key());
        let head = |i: usize| RoundLogHead {
            round: log[i].round,
            hash: log[i].hash,
        };
        assert_eq!(entries_after(&log, None), Ok(&log[..]));
        assert_eq!(entries_after(&log, Some(&head(2))), Ok(&log[3..]));
        assert_eq!(entries_after(&log, Some(&head(4))), Ok(&log[5..]));
        assert_eq!(
            entries_after(
                &log,
                Some(&RoundLogHead {
                    round: RoundId(2),
                    hash: ContentHash([9; 32])
                })
            ),
            Err(())
        );
        // The right hash under another round number is not the head the device verified.
        assert_eq!(
            entries_after(
                &log,
                Some(&RoundLogHead {
                    round: RoundId(3),
                    hash: log[2].hash
                })
            ),
            Err(())
        );
    }
}
