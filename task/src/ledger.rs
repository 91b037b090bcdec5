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
//! - **Proof of membership.** The round's member set (account names, sorted) is hashed
//!   ([`members_hash`]) into the round-log entry's params (`members`), so the chain binds the
//!   coordinator to who was counted; a device that reads the round's member list (API) can
//!   recompute the hash and find itself.
//!
//! One rule, two users: the coordinator credits live rounds with it (and stores the rows), and
//! the simulator's contribution study (`cohort-sim contribution`) applies it beside each
//! client's true leave-one-out contribution, which only a simulator can see.

use cohort_protocol::ContentHash;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The reward of a round when no held-out set measures its improvement.
pub const FIXED_REWARD: f64 = 1.0;

/// Params key of the member-set hash in a round-log entry.
pub const MEMBERS_KEY: &str = "members";

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

/// SHA-256 of the sorted account names, one per line, after a domain label.
pub fn members_hash(accounts: &[String]) -> ContentHash {
    let mut sorted: Vec<&str> = accounts.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"cohort-ledger-members-v1\n");
    for a in sorted {
        h.update(a.as_bytes());
        h.update(b"\n");
    }
    ContentHash(h.finalize().into())
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

/// The credit of a round: its basis, its measured improvement and the members' equal shares.
pub fn credit_round(
    loss_before: Option<f32>,
    loss_after: Option<f32>,
    accounts: &[String],
) -> (Basis, f64, Vec<Credit>) {
    let members: Vec<(String, u64)> = accounts.iter().map(|a| (a.clone(), 1)).collect();
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

    #[test]
    fn the_member_hash_does_not_depend_on_order_but_on_every_member() {
        let ab = members_hash(&["a".into(), "b".into()]);
        assert_eq!(ab, members_hash(&["b".into(), "a".into()]));
        assert_ne!(ab, members_hash(&["a".into()]));
        assert_ne!(ab, members_hash(&["a".into(), "c".into()]));
        // The line separator keeps ["ab"] and ["a", "b"] apart (account names hold no newline).
        assert_ne!(ab, members_hash(&["ab".into()]));
    }
}
