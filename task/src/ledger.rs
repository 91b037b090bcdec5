//! The contributor ledger: each finished round credits the devices whose masked inputs are in
//! its released sum with a share of the round's measured improvement.
//!
//! - **Improvement.** With a server-side evaluator, the drop in held-out loss from the model the
//!   round started from to the model it produced (`basis = "held_out_loss"`; a round that made
//!   the loss worse credits 0, and its drop is recorded as it is). Without one, a fixed reward
//!   of [`FIXED_REWARD`] per round (`basis = "fixed_reward"`).
//! - **Split.** Equally among the members ([`credit_round`]; each [`Credit::weight`] is 1).
//!   What the coordinator *knows* under SecAgg+ is membership (which devices' inputs are in
//!   the sum), the sum's total weight and the round's improvement; it never sees a device's
//!   own weight or example count, and devices report none (a count reported in the clear beside
//!   the masked input would be exactly the per-device metadata SecAgg+ hides, and unverifiable
//!   besides). So no member can buy a larger share by claiming more data; a free-rider that
//!   uploads zeros is still credited like any member of its rounds: the ledger cannot tell
//!   them apart.
//! - **Proof of membership.** The round's members form a Merkle tree ([`members_root`]: RFC
//!   6962 / RFC 9162 §2.1 hashing, leaves `SHA-256(0x00 ‖ weight as u64 BE ‖ account)` sorted by
//!   account, nodes `SHA-256(0x01 ‖ left ‖ right)`) whose root is in the round-log entry's
//!   params ([`MEMBERS_ROOT_KEY`]), so the signed chain binds the coordinator to who was counted
//!   and with which weight (1 for every member since the split is equal). A device gets an inclusion proof for its own leaf
//!   ([`MemberTree::proof`]) and checks it against the entry ([`verify_membership`]) without
//!   learning the other members. The tree's size must equal the entry's `participants`.
//!   Known answers: `task/kat/members_root.py` (Python's hashlib) computes the roots that
//!   `tests::known_answer_roots` checks.
//!
//! One rule, two users: the coordinator credits live rounds with it (and stores the rows), and
//! the simulator's contribution study (`cohort-sim contribution`) applies it beside each
//! client's true leave-one-out contribution, which only a simulator can see.

use cohort_protocol::{ContentHash, MembershipProof, RoundLogEntry};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The reward of a round when no held-out set measures its improvement.
pub const FIXED_REWARD: f64 = 1.0;

/// Params key of the member tree's root (hex) in a round-log entry.
pub const MEMBERS_ROOT_KEY: &str = "members_root";

/// Params key of the flat member-set hash that entries logged before member trees carry
/// (SHA-256 over the sorted account names); it proves nothing to a single device and is only
/// recognised, to say so.
pub const LEGACY_MEMBERS_KEY: &str = "members";

/// One member of a round's sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Credit {
    /// The device's account.
    pub account: String,
    /// Its share of the split: 1 for every member (an equal split; kept as a field so that
    /// stored rows and the API keep their shape).
    pub weight: u64,
    /// Its share of the round's credit.
    pub credit: f64,
}

/// How a round's credit was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The drop in held-out loss.
    HeldOutLoss,
    /// [`FIXED_REWARD`].
    FixedReward,
}

impl Basis {
    /// The name stored and served (`held_out_loss`, `fixed_reward`).
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::HeldOutLoss => "held_out_loss",
            Basis::FixedReward => "fixed_reward",
        }
    }
}

/// The hash of one leaf: `SHA-256(0x00 ‖ weight (u64 BE) ‖ account)`.
pub fn leaf_hash(account: &str, weight: u64) -> ContentHash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(weight.to_be_bytes());
    h.update(account.as_bytes());
    ContentHash(h.finalize().into())
}

/// The hash of an inner node: `SHA-256(0x01 ‖ left ‖ right)`.
fn node_hash(left: &ContentHash, right: &ContentHash) -> ContentHash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    ContentHash(h.finalize().into())
}

/// The largest power of two smaller than `n` (`n` ≥ 2).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// RFC 6962's MTH over leaf hashes; `SHA-256("")` for none.
fn subtree_root(leaves: &[ContentHash]) -> ContentHash {
    match leaves.len() {
        0 => ContentHash(Sha256::digest(b"").into()),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

/// RFC 6962's PATH(m, D[n]), from the leaf up.
fn audit_path(m: usize, leaves: &[ContentHash], out: &mut Vec<ContentHash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        audit_path(m, &leaves[..k], out);
        out.push(subtree_root(&leaves[k..]));
    } else {
        audit_path(m - k, &leaves[k..], out);
        out.push(subtree_root(&leaves[..k]));
    }
}

/// A round's member tree: the members (account, weight) sorted by account, as leaves.
#[derive(Clone, Debug)]
pub struct MemberTree {
    members: Vec<(String, u64)>,
    leaves: Vec<ContentHash>,
}

impl MemberTree {
    /// The tree of `members` (any order).
    pub fn new(members: &[(String, u64)]) -> Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        let leaves = members.iter().map(|(a, w)| leaf_hash(a, *w)).collect();
        Self { members, leaves }
    }

    /// The root, as the round-log entry names it.
    pub fn root(&self) -> ContentHash {
        subtree_root(&self.leaves)
    }

    /// Leaves in the tree.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The inclusion proof of `account`'s leaf, `None` when it is not a member.
    pub fn proof(&self, account: &str) -> Option<MembershipProof> {
        let index = self
            .members
            .binary_search_by(|(a, _)| a.as_str().cmp(account))
            .ok()?;
        let mut path = Vec::new();
        audit_path(index, &self.leaves, &mut path);
        Some(MembershipProof {
            index: u32::try_from(index).ok()?,
            size: u32::try_from(self.leaves.len()).ok()?,
            path,
        })
    }
}

/// The member tree's root of a round's members (account, weight), in any order.
pub fn members_root(members: &[(String, u64)]) -> ContentHash {
    MemberTree::new(members).root()
}

/// The root an inclusion proof leads to from `leaf` (RFC 9162 §2.1.3.2), `None` when the
/// proof is malformed (index not below size, a path of the wrong length).
pub fn root_from_proof(leaf: ContentHash, proof: &MembershipProof) -> Option<ContentHash> {
    if proof.index >= proof.size {
        return None;
    }
    let (mut f_n, mut s_n) = (proof.index, proof.size - 1);
    let mut r = leaf;
    for p in &proof.path {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

/// Why a ledger row's membership does not follow from its round-log entry.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// The entry's params name no member tree (an entry logged before member trees, or one
    /// whose params are not JSON).
    #[error("the round-log entry of round {round} names no member tree{legacy}")]
    NoMemberRoot {
        /// The entry's round.
        round: u64,
        /// " (it predates member trees)" when the entry carries the old flat hash.
        legacy: &'static str,
    },
    /// The coordinator sent no proof for a round whose entry names a member tree.
    #[error("no membership proof for round {round}")]
    NoProof {
        /// The round.
        round: u64,
    },
    /// The proof's tree size is not the number of participants the entry names.
    #[error(
        "the membership proof for round {round} is for a tree of {size} members, but the \
         round-log entry names {participants} participants"
    )]
    WrongSize {
        /// The round.
        round: u64,
        /// The proof's size.
        size: u32,
        /// The entry's participants.
        participants: u32,
    },
    /// The proof does not lead from the account's leaf to the entry's root: the account (with
    /// this weight) is not among the round's members, or the proof was forged.
    #[error(
        "the membership proof for round {round} does not lead from account {account} (weight \
         {weight}) to the member root of the round-log entry: this device was not counted in \
         that round with that weight, or the proof was forged"
    )]
    NotAMember {
        /// The round.
        round: u64,
        /// The account.
        account: String,
        /// The weight claimed.
        weight: u64,
    },
}

/// The member root an entry's params name, or why there is none.
pub fn entry_members_root(entry: &RoundLogEntry) -> Result<ContentHash, MembershipError> {
    let params: Option<serde_json::Value> = serde_json::from_slice(&entry.params).ok();
    let get = |k: &str| params.as_ref().and_then(|p| p.get(k));
    match get(MEMBERS_ROOT_KEY).and_then(|v| v.as_str()) {
        Some(hex) => ContentHash::from_hex(hex).ok_or(MembershipError::NoMemberRoot {
            round: entry.round.0,
            legacy: "",
        }),
        None => Err(MembershipError::NoMemberRoot {
            round: entry.round.0,
            legacy: if get(LEGACY_MEMBERS_KEY).is_some() {
                " (it predates member trees)"
            } else {
                ""
            },
        }),
    }
}

/// Checks that `account` with `weight` is a member of the round of `entry` (whose hash and
/// place in the chain the caller has verified): the proof leads from the account's leaf to
/// the entry's member root, in a tree of the entry's `participants` leaves.
pub fn verify_membership(
    entry: &RoundLogEntry,
    account: &str,
    weight: u64,
    proof: Option<&MembershipProof>,
) -> Result<(), MembershipError> {
    let round = entry.round.0;
    let root = entry_members_root(entry)?;
    let proof = proof.ok_or(MembershipError::NoProof { round })?;
    if proof.size != entry.participants {
        return Err(MembershipError::WrongSize {
            round,
            size: proof.size,
            participants: entry.participants,
        });
    }
    if root_from_proof(leaf_hash(account, weight), proof) != Some(root) {
        return Err(MembershipError::NotAMember {
            round,
            account: account.to_string(),
            weight,
        });
    }
    Ok(())
}

/// Splits `amount` (negative counts as 0) among `members` (account, weight) by weight; equally
/// when every weight is 0.
pub fn split(amount: f64, members: &[(String, u64)]) -> Vec<Credit> {
    let amount = if amount.is_finite() {
        amount.max(0.0)
    } else {
        0.0
    };
    let total: u64 = members.iter().map(|(_, w)| *w).sum();
    members
        .iter()
        .map(|(account, weight)| Credit {
            account: account.clone(),
            weight: *weight,
            credit: if total == 0 {
                amount / members.len() as f64
            } else {
                amount * (*weight as f64) / total as f64
            },
        })
        .collect()
}

/// The round's members as the ledger weighs them: each account once, weight 1 (the split is
/// equal; devices report no example count). The member tree's leaves and the credits use it.
pub fn equal_members(accounts: &[String]) -> Vec<(String, u64)> {
    accounts.iter().map(|a| (a.clone(), 1)).collect()
}

/// The credit of a round: its basis, its measured improvement and the members' equal shares.
pub fn credit_round(
    loss_before: Option<f32>,
    loss_after: Option<f32>,
    accounts: &[String],
) -> (Basis, f64, Vec<Credit>) {
    let members = equal_members(accounts);
    let members = members.as_slice();
    match (loss_before, loss_after) {
        (Some(b), Some(a)) => {
            let drop = f64::from(b) - f64::from(a);
            (Basis::HeldOutLoss, drop, split(drop, members))
        }
        _ => (
            Basis::FixedReward,
            FIXED_REWARD,
            split(FIXED_REWARD, members),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ws: &[(&str, u64)]) -> Vec<(String, u64)> {
        ws.iter().map(|(a, w)| (a.to_string(), *w)).collect()
    }

    #[test]
    fn credit_splits_the_drop_in_loss_equally() {
        let m = vec!["a".to_string(), "b".to_string()];
        let (basis, drop, credits) = credit_round(Some(2.0), Some(1.5), &m);
        assert_eq!(basis, Basis::HeldOutLoss);
        assert!((drop - 0.5).abs() < 1e-9);
        assert!((credits[0].credit - 0.25).abs() < 1e-9);
        assert!((credits[1].credit - 0.25).abs() < 1e-9);
        assert!(credits.iter().all(|c| c.weight == 1));
        // `split` by weight remains for other callers.
        let credits = split(0.5, &members(&[("a", 10), ("b", 30)]));
        assert!((credits[0].credit - 0.125).abs() < 1e-9);
        assert!((credits[1].credit - 0.375).abs() < 1e-9);
        // A round that made the loss worse credits nobody, and records the rise.
        let (_, drop, credits) = credit_round(Some(1.0), Some(1.2), &m);
        assert!(drop < 0.0);
        assert!(credits.iter().all(|c| c.credit == 0.0));
        // Without a held-out set: the fixed reward.
        let (basis, amount, credits) = credit_round(None, None, &m);
        assert_eq!((basis, amount), (Basis::FixedReward, FIXED_REWARD));
        let total: f64 = credits.iter().map(|c| c.credit).sum();
        assert!((total - FIXED_REWARD).abs() < 1e-9);
        // Zero weights: an equal split.
        let credits = split(1.0, &members(&[("a", 0), ("b", 0)]));
        assert_eq!(credits[0].credit, 0.5);
    }

    fn names(n: usize) -> Vec<(String, u64)> {
        (0..n)
            .map(|i| (format!("device-{i:03}"), i as u64 % 7))
            .collect()
    }

    /// Roots computed independently by `task/kat/members_root.py` (Python's hashlib, RFC 6962
    /// written out from the RFC's recursive definition).
    #[test]
    fn known_answer_roots() {
        let cases: [(usize, &str); 6] = [
            (
                0,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                1,
                "ed5ba3fdb04d3501993d3292fec929140144aafe071f1e836fbf6deb39c0758b",
            ),
            (
                2,
                "3028f73cafb775b3eb5f68cf0412dc46ecf5a9a2c752bdbe387d3ac3b3717840",
            ),
            (
                3,
                "b6120600970a67f669218dbf8c7155732f9f8d544ec35371a86f132ef3577fb7",
            ),
            (
                7,
                "7e710be11aee22db2ef772daa620e7f34d6f2cc2319931c37aed098fd3fe4523",
            ),
            (
                100,
                "c8f5f7f24e51a1d5c52f2a162c87bd8e6c8fabe1e68fc0f31f7949911110f8dd",
            ),
        ];
        for (n, hex) in cases {
            assert_eq!(members_root(&names(n)).to_hex(), hex, "{n} members");
        }
        assert_eq!(
            leaf_hash("alice", 3).to_hex(),
            "f7c68ad8843050c0c36a0ae75f261405dc3afa7499c30bcc35aefc3feb342122"
        );
    }

    #[test]
    fn the_root_does_not_depend_on_order_but_on_every_member_and_weight() {
        let ab = members_root(&members(&[("a", 1), ("b", 2)]));
        assert_eq!(ab, members_root(&members(&[("b", 2), ("a", 1)])));
        assert_ne!(ab, members_root(&members(&[("a", 1)])));
        assert_ne!(ab, members_root(&members(&[("a", 1), ("c", 2)])));
        assert_ne!(ab, members_root(&members(&[("a", 1), ("b", 3)])));
        assert_ne!(ab, members_root(&members(&[("ab", 1)])));
    }

    fn entry(root: Option<ContentHash>, participants: u32) -> RoundLogEntry {
        let params = match root {
            Some(r) => format!("{{\"{MEMBERS_ROOT_KEY}\":\"{}\"}}", r.to_hex()),
            None => format!("{{\"{LEGACY_MEMBERS_KEY}\":\"00\"}}"),
        };
        RoundLogEntry {
            task: cohort_protocol::TaskId("t".into()),
            round: cohort_protocol::RoundId(4),
            participants,
            input_weights: ContentHash([1; 32]),
            output_weights: ContentHash([2; 32]),
            params: serde_bytes::ByteBuf::from(params.into_bytes()),
            created_at: 0,
            prev: ContentHash([0; 32]),
            hash: ContentHash([0; 32]),
            signature: serde_bytes::ByteBuf::new(),
        }
    }

    #[test]
    fn proofs_against_an_entry() {
        let m = names(5);
        let tree = MemberTree::new(&m);
        let e = entry(Some(tree.root()), 5);
        let p = tree.proof("device-003").unwrap();
        assert_eq!(verify_membership(&e, "device-003", 3, Some(&p)), Ok(()));
        // Another weight, another account, a missing proof, a wrong size, no root.
        assert!(matches!(
            verify_membership(&e, "device-003", 4, Some(&p)),
            Err(MembershipError::NotAMember { .. })
        ));
        assert!(matches!(
            verify_membership(&e, "device-002", 3, Some(&p)),
            Err(MembershipError::NotAMember { .. })
        ));
        assert_eq!(
            verify_membership(&e, "device-003", 3, None),
            Err(MembershipError::NoProof { round: 4 })
        );
        assert!(matches!(
            verify_membership(&entry(Some(tree.root()), 6), "device-003", 3, Some(&p)),
            Err(MembershipError::WrongSize { .. })
        ));
        let legacy = verify_membership(&entry(None, 5), "device-003", 3, Some(&p)).unwrap_err();
        assert!(legacy.to_string().contains("predates"), "{legacy}");
        assert!(tree.proof("stranger").is_none());
    }

    proptest::proptest! {
        /// Every member's proof verifies; a non-member, another weight, or any tampered proof
        /// (a flipped bit, a changed index or size, a path cut short or lengthened) does not.
        #[test]
        fn every_member_proves_and_nothing_else_does(
            n in 1usize..70,
            pick in 0usize..1000,
            bit in 0usize..256,
        ) {
            let m = names(n);
            let tree = MemberTree::new(&m);
            let root = tree.root();
            for (a, w) in &m {
                let p = tree.proof(a).unwrap();
                proptest::prop_assert_eq!(root_from_proof(leaf_hash(a, *w), &p), Some(root));
            }
            let (a, w) = &m[pick % n];
            let p = tree.proof(a).unwrap();
            let leaf = leaf_hash(a, *w);
            proptest::prop_assert_ne!(root_from_proof(leaf_hash("stranger", *w), &p), Some(root));
            proptest::prop_assert_ne!(root_from_proof(leaf_hash(a, w + 1), &p), Some(root));
            if !p.path.is_empty() {
                let mut t = p.clone();
                let i = bit / 8 % t.path.len();
                t.path[i].0[bit % 32] ^= 1 << (bit % 8);
                proptest::prop_assert_ne!(root_from_proof(leaf, &t), Some(root));
                let mut t = p.clone();
                t.path.pop();
                proptest::prop_assert_ne!(root_from_proof(leaf, &t), Some(root));
            }
            let mut t = p.clone();
            t.path.push(ContentHash([7; 32]));
            proptest::prop_assert_ne!(root_from_proof(leaf, &t), Some(root));
            if n > 1 {
                let mut t = p.clone();
                t.index = (t.index + 1) % t.size;
                proptest::prop_assert_ne!(root_from_proof(leaf, &t), Some(root));
            }
            // (A proof's size is not bound by its path alone: RFC 6962 paths of trees of 3 and 4
            // leaves can agree. `verify_membership` checks it against the entry's participants.)
            let mut t = p;
            t.index = t.size;
            proptest::prop_assert_eq!(root_from_proof(leaf, &t), None);
        }
    }
}
