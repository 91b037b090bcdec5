//! A device's own rows of the contributor ledger, and the evidence that backs each of them.
//!
//! A logged-in device asks for its credit in a task ([`LedgerRequest`]); the coordinator
//! answers with one [`LedgerPage`]: a contiguous run of the task's round-log entries that ends
//! at the entry the device named (a head it verified, or the entry before the previous page),
//! and the asking account's ledger rows for rounds of those entries, each with a
//! [`MembershipProof`]: an RFC 6962 inclusion proof that the account (and its weight) is a leaf
//! of the member tree whose root the round's entry names (params key `members_root`). The tree
//! and the proof check are `cohort_task::ledger`'s; the device's verification of a page is the
//! edge client's `credit` module.
//!
//! A device whose head is behind the rounds it is credited in is sent the entries after its
//! head ([`LedgerPage::newer_entries`]); it checks them as it checks a check-in's catch-up and
//! asks again from its new head.
//!
//! Only the asking account's rows are sent: a proof carries sibling hashes, never other
//! members' names or weights.

use serde::{Deserialize, Serialize};

use crate::ids::{ContentHash, TaskId};
use crate::round_log::RoundLogEntry;

/// The most ledger rows one page carries.
pub const MAX_LEDGER_ROWS: usize = 256;

/// The most round-log entries one page carries (as many as a check-in catch-up).
pub const MAX_LEDGER_ENTRIES: usize = crate::chain::MAX_ENTRIES_PER_MESSAGE;

/// The most sibling hashes of one inclusion proof: a tree of at most
/// [`crate::limits::MAX_COHORT`] (2^16) leaves is 16 levels deep; room to spare.
pub const MAX_PROOF_PATH: usize = 32;

/// Client: send me my ledger rows of `task` for the rounds of the entries up to and including
/// the entry whose hash is `ending_at`, newest last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRequest {
    /// The task.
    pub task: TaskId,
    /// The hash of the last entry the page should hold: the head this device verified for the
    /// task, then the `prev` of the first entry of the page before.
    pub ending_at: ContentHash,
}

/// The answer to [`LedgerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerPage {
    /// The task.
    pub task: TaskId,
    /// Consecutive entries of the task's round log, oldest first, the last one the entry named
    /// by `ending_at`; at most [`MAX_LEDGER_ENTRIES`]. The page starts at the oldest round the
    /// asking account is credited in (or earlier when that is more than a page away).
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { MAX_LEDGER_ENTRIES }>")]
    pub entries: Vec<RoundLogEntry>,
    /// The asking account's rows for rounds of `entries`, by round.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { MAX_LEDGER_ROWS }>")]
    pub rows: Vec<LedgerRow>,
    /// Whether the account has rows for rounds before the first entry: ask again with that
    /// entry's `prev` as `ending_at`.
    pub more: bool,
    /// Rows of the account for rounds after `ending_at`'s entry: credit this device cannot
    /// check against the entries it holds.
    pub newer_rows: u32,
    /// When `newer_rows` is not 0: the entries after `ending_at`, oldest first, at most
    /// [`MAX_LEDGER_ENTRIES`]. The device verifies them as the continuation of its head (as a
    /// check-in's catch-up), keeps the new head and asks again ending there.
    #[serde(
        default,
        deserialize_with = "crate::limits::de::vec::<_, _, { MAX_LEDGER_ENTRIES }>"
    )]
    pub newer_entries: Vec<RoundLogEntry>,
}

/// One round's credit to the asking account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The round (the entry's round number).
    pub round: u64,
    /// The account's weight in the round: its reported example count, clipped at the task's
    /// `secagg.max_weight`. A leaf of the member tree, so the proof covers it.
    pub weight: u64,
    /// Its share of the round's credit (reported by the coordinator).
    pub credit: f64,
    /// How the round's credit was measured: `held_out_loss` or `fixed_reward`.
    #[serde(
        deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
    )]
    pub basis: String,
    /// The round's measured improvement, split among the members by weight.
    pub improvement: f64,
    /// The account's inclusion in the round's member tree; `None` for a round whose entry
    /// predates member trees.
    #[serde(default)]
    pub proof: Option<MembershipProof>,
}

/// An RFC 6962 (§2.1.1) inclusion proof: the leaf's index in the tree, the tree's size, and
/// the audit path (sibling subtree hashes, from the leaf up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipProof {
    /// The leaf's 0-based index (members sorted by account).
    pub index: u32,
    /// Leaves in the tree: the round's members.
    pub size: u32,
    /// The audit path.
    #[serde(deserialize_with = "crate::limits::de::vec::<_, _, { MAX_PROOF_PATH }>")]
    pub path: Vec<ContentHash>,
}
