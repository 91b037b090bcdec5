//! The contributor ledger: each finished round credits the devices whose masked inputs are in
//! its released sum with a share of the round's measured improvement.
//!
//! - **Improvement.** With a server-side evaluator, the drop in held-out loss from the model the
//!   round started from to the model it produced (`basis = "held_out_loss"`; a round that made
//!   the loss worse credits 0, and its drop is recorded as it is). Without one, a fixed reward
//!   of [`FIXED_REWARD`] per round (`basis = "fixed_reward"`).
//! - **Split.** By each member's weight: the example count the device reported in the clear
//!   when it checked in, clipped at the task's `secagg.max_weight` (the weight the device puts
//!   into its masked input). Under SecAgg+ the coordinator never sees a device's own weight —
//!   only the sum's total — so the split uses what the device *reported*, which it could
//!   inflate; what the coordinator *knows* is membership (which devices' inputs are in the sum)
//!   and the round's improvement. A free-rider that uploads zeros with a large reported count
//!   is credited like an honest device of that count: the ledger cannot tell them apart.
//! - **Proof of membership.** The round's member set (account names, sorted) is hashed
//!   ([`members_hash`]) into the round-log entry's params (`members`), so the chain binds the
//!   coordinator to who was counted; a device that reads the round's member list (API) can
//!   recompute the hash and find itself.
//!
//! The rows are written after the round's log entry; a crash in between leaves that round
//! without ledger rows (its log entry still names the member set).

use cohort_protocol::ContentHash;
use rusqlite::params;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// The reward of a round when no held-out set measures its improvement.
pub const FIXED_REWARD: f64 = 1.0;

/// Params key of the member-set hash in a round-log entry.
pub const MEMBERS_KEY: &str = "members";

/// One member of a round's sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Credit {
    /// The device's account.
    pub account: String,
    /// Its weight: the reported example count, clipped at `secagg.max_weight`.
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
    fn as_str(self) -> &'static str {
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

/// The credit of a round: its basis, its measured improvement and the members' shares.
pub fn credit_round(
    loss_before: Option<f32>,
    loss_after: Option<f32>,
    members: &[(String, u64)],
) -> (Basis, f64, Vec<Credit>) {
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

/// Creates the ledger's table if it does not exist (it belongs to this module).
pub fn ensure_table(store: &Store) -> Result<(), StoreError> {
    store.with_conn(|c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS ledger (
                 task        TEXT NOT NULL,
                 round       INTEGER NOT NULL,
                 account     TEXT NOT NULL,
                 weight      INTEGER NOT NULL,
                 credit      REAL NOT NULL,
                 basis       TEXT NOT NULL,
                 improvement REAL NOT NULL,
                 PRIMARY KEY (task, round, account)
             );",
        )?;
        Ok(())
    })
}

/// Records a round's credits.
pub fn record(
    store: &Store,
    task: &str,
    round: u64,
    basis: Basis,
    improvement: f64,
    credits: &[Credit],
) -> Result<(), StoreError> {
    ensure_table(store)?;
    store.with_conn(|c| {
        let tx = c.transaction()?;
        for cr in credits {
            tx.execute(
                "INSERT OR REPLACE INTO ledger (task, round, account, weight, credit, basis, improvement)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    task,
                    round as i64,
                    cr.account,
                    cr.weight as i64,
                    cr.credit,
                    basis.as_str(),
                    improvement
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    })
}

/// One round of the ledger as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerRound {
    /// The round.
    pub round: u64,
    /// `held_out_loss` or `fixed_reward`.
    pub basis: String,
    /// The measured improvement (the drop in loss, or the fixed reward).
    pub improvement: f64,
    /// [`members_hash`] of the members, as the round-log entry names it.
    pub members_hash: String,
    /// The members and their credit.
    pub members: Vec<Credit>,
}

/// A task's ledger, by round.
pub fn rounds(store: &Store, task: &str) -> Result<Vec<LedgerRound>, StoreError> {
    ensure_table(store)?;
    let rows: Vec<(u64, String, f64, Credit)> = store.with_conn(|c| {
        let mut stmt = c.prepare(
            "SELECT round, basis, improvement, account, weight, credit FROM ledger
             WHERE task = ?1 ORDER BY round, account",
        )?;
        let rows = stmt.query_map([task], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                Credit {
                    account: r.get(3)?,
                    weight: r.get::<_, i64>(4)? as u64,
                    credit: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    })?;
    let mut out: Vec<LedgerRound> = Vec::new();
    for (round, basis, improvement, credit) in rows {
        match out.last_mut() {
            Some(last) if last.round == round => last.members.push(credit),
            _ => out.push(LedgerRound {
                round,
                basis,
                improvement,
                members_hash: String::new(),
                members: vec![credit],
            }),
        }
    }
    for r in &mut out {
        let accounts: Vec<String> = r.members.iter().map(|c| c.account.clone()).collect();
        r.members_hash = members_hash(&accounts).to_hex();
    }
    Ok(out)
}

/// One account's credit in a task: the rounds that back it and the total.
pub fn account_credit(
    store: &Store,
    task: &str,
    account: &str,
) -> Result<(f64, Vec<(u64, f64)>), StoreError> {
    let rounds = rounds(store, task)?;
    let entries: Vec<(u64, f64)> = rounds
        .iter()
        .filter_map(|r| {
            r.members
                .iter()
                .find(|c| c.account == account)
                .map(|c| (r.round, c.credit))
        })
        .collect();
    Ok((entries.iter().map(|(_, c)| c).sum(), entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ws: &[(&str, u64)]) -> Vec<(String, u64)> {
        ws.iter().map(|(a, w)| (a.to_string(), *w)).collect()
    }

    #[test]
    fn credit_splits_the_drop_in_loss_by_weight() {
        let m = members(&[("a", 10), ("b", 30)]);
        let (basis, drop, credits) = credit_round(Some(2.0), Some(1.5), &m);
        assert_eq!(basis, Basis::HeldOutLoss);
        assert!((drop - 0.5).abs() < 1e-9);
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
