//! The wire form of the coordinator's hash-chained round log, and the one canonical encoding its
//! entry hash is computed over.
//!
//! The coordinator appends one entry per finished round (and one for the task's initial model,
//! round 0). It sends a task's chain to each selected client with the plan, so the client can
//! check that the weights it is about to train on are the ones the log names and that the chain
//! continues the head it saw before. Both sides must hash an entry the same way, so the encoding
//! lives here, next to the type: [`RoundLogEntry::compute_hash`].

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::ids::{ContentHash, RoundId, TaskId};

/// The previous hash of a task's first entry.
pub const ROUND_LOG_GENESIS: ContentHash = ContentHash([0u8; 32]);

/// Domain tag of the entry hash; bumped if the encoding ever changes.
const DOMAIN: &[u8] = b"cohort-round-log-v1\0";

/// One entry of a task's round log, as stored and as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundLogEntry {
    /// The task.
    pub task: TaskId,
    /// The round number (0 for the task's initial model).
    pub round: RoundId,
    /// Clients whose inputs are in the round's sum (0 for round 0).
    pub participants: u32,
    /// Hash of the global weights the round started from.
    pub input_weights: ContentHash,
    /// Hash of the global weights the round produced (the weights the next round trains on).
    pub output_weights: ContentHash,
    /// The round's parameters, encoded by the coordinator (JSON bytes).
    pub params: ByteBuf,
    /// Unix seconds.
    pub created_at: i64,
    /// The previous entry's hash ([`ROUND_LOG_GENESIS`] for the first).
    pub prev: ContentHash,
    /// This entry's hash, [`RoundLogEntry::compute_hash`].
    pub hash: ContentHash,
    /// The model owner's Ed25519 signature of the entry ([`crate::chain::signed_bytes`]), 64
    /// bytes; empty when unsigned (entries from coordinators that predate signing). Not
    /// covered by the hash.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>"
    )]
    pub signature: ByteBuf,
}

impl RoundLogEntry {
    /// SHA-256 over the canonical encoding of every field but `hash`: a domain tag, then the
    /// fields in declaration order, integers big-endian, variable-length fields (task id,
    /// params) prefixed with their length as a `u64`, and `prev` last.
    pub fn compute_hash(&self) -> ContentHash {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        let task = self.task.0.as_bytes();
        h.update((task.len() as u64).to_be_bytes());
        h.update(task);
        h.update(self.round.0.to_be_bytes());
        h.update(self.participants.to_be_bytes());
        h.update(self.input_weights.0);
        h.update(self.output_weights.0);
        h.update((self.params.len() as u64).to_be_bytes());
        h.update(self.params.as_slice());
        h.update(self.created_at.to_be_bytes());
        h.update(self.prev.0);
        ContentHash(h.finalize().into())
    }

    /// Whether the stored hash is the hash of the fields.
    pub fn hash_is_valid(&self) -> bool {
        self.compute_hash() == self.hash
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fixed entry whose hash these tests pin (`chain`'s signature KAT signs it too).
    pub(crate) fn entry() -> RoundLogEntry {
        RoundLogEntry {
            task: TaskId("digits".into()),
            round: RoundId(3),
            participants: 13,
            input_weights: ContentHash([3; 32]),
            output_weights: ContentHash([4; 32]),
            params: ByteBuf::from(b"{\"round\":3}".to_vec()),
            created_at: 1_700_000_003,
            prev: ROUND_LOG_GENESIS,
            hash: ContentHash([0; 32]),
            signature: ByteBuf::new(),
        }
    }

    #[test]
    fn entry_hash_known_answer() {
        // The same value the coordinator's round log pins (computed independently with Python's
        // hashlib over the documented encoding): the two sides agree on the encoding.
        assert_eq!(
            entry().compute_hash().to_hex(),
            "17477f9d4235df1b6a49f784b32ed0e5021d729a38f235415bce6817451c908b"
        );
    }

    #[test]
    fn stored_hash_is_checked_and_ignored_by_the_encoding() {
        let mut e = entry();
        assert!(!e.hash_is_valid());
        e.hash = e.compute_hash();
        assert!(e.hash_is_valid());
        let before = e.hash;
        e.hash = ContentHash([9; 32]);
        assert_eq!(e.compute_hash(), before);
        e.signature = ByteBuf::from(vec![1; 64]);
        assert_eq!(e.compute_hash(), before, "the signature is not hashed");
        e.participants += 1;
        assert_ne!(e.compute_hash(), before);
    }
}
