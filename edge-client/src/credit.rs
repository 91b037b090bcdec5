//! The device's own credit in the contributor ledger, checked against the round log it
//! verified.
//!
//! The coordinator credits each round's members (`cohort_task::ledger`); a device asks for its
//! rows of a task ([`cohort_protocol::LedgerRequest`]) and checks each page it gets
//! ([`verify_page`]) before believing any of it:
//!
//! 1. **The entries are the chain it verified.** The page's entries are consecutive, each
//!    hashes to its hash and names the one before it, are of the task and (with a pinned key)
//!    signed by the model owner, and the last one is the entry the device asked for: its
//!    verified head ([`crate::log_check`]) on the first page, the `prev` of the first entry of
//!    the page before on the next. Walking back from a head the device verified by hash links
//!    means every entry of every page is on that chain.
//! 2. **The device was counted.** For each row, the inclusion proof leads from the leaf
//!    (account, weight) to the member-tree root that the round's entry names, in a tree of the
//!    entry's `participants` leaves (`cohort_task::ledger::verify_membership`).
//!
//! A device whose head is behind its credited rounds first verifies the entries after its head
//! that come with the first page, exactly as a check-in's catch-up
//! ([`crate::log_check::record_catch_up`]: they must continue the saved head), and keeps the
//! new head.
//!
//! What is proven is membership and the weight the coordinator committed to in the signed
//! log. The credit, its basis and the round's improvement are *reported* by the coordinator:
//! the improvement is measured on the coordinator's held-out set, and the split uses every
//! member's reported example count, which a device cannot check. A row whose entry predates
//! member trees is kept and marked unproven. Anything else that fails refuses the whole
//! answer ([`CreditError`]): the coordinator is misbehaving.

use cohort_protocol::chain::{self, VerifyingKey};
use cohort_protocol::ledger::LedgerPage;
use cohort_protocol::{ContentHash, ROUND_LOG_GENESIS, RoundId, RoundLogEntry, TaskId};
use cohort_task::Attempt;
use cohort_task::ledger::{MembershipError, verify_membership};
use thiserror::Error;

/// The most pages one [`crate::EdgeClient::credit`] call fetches (256 rounds each).
pub const MAX_PAGES: usize = 4096;

/// One round's credit to this device.
#[derive(Clone, Debug, PartialEq)]
pub struct CreditRow {
    /// The round and the attempt that finished it, as people count them (from the entry's
    /// `round_id`; attempt 1 when the entry does not say).
    pub attempt: Attempt,
    /// The device's weight in the round (its reported example count, clipped at the task's
    /// `secagg.max_weight`), as committed in the member tree.
    pub weight: u64,
    /// Its share of the round's credit (reported by the coordinator).
    pub credit: f64,
    /// `held_out_loss` or `fixed_reward` (reported).
    pub basis: String,
    /// The round's measured improvement (reported).
    pub improvement: f64,
    /// The hash of the round-log entry that backs the row.
    pub entry: ContentHash,
    /// Whether the entry's member tree proves this device's membership (false only for an
    /// entry that predates member trees).
    pub proven: bool,
}

/// A device's credit in one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskCredit {
    /// The task.
    pub task: TaskId,
    /// The account the rows are for.
    pub account: String,
    /// The round of the verified head the rows were checked against.
    pub verified_up_to: u64,
    /// The rows, oldest round first.
    pub rows: Vec<CreditRow>,
    /// Rows the coordinator holds for rounds after the verified head, not checked. The device
    /// first catches its head up with the entries the coordinator sends with the first page
    /// ([`cohort_protocol::LedgerPage::newer_entries`]), so this is 0 unless the coordinator
    /// sent none.
    pub newer_unverified: u32,
}

impl TaskCredit {
    /// The sum of the rows' credit.
    pub fn total(&self) -> f64 {
        self.rows.iter().map(|r| r.credit).sum()
    }

    /// The sum of the credit of the rows whose membership is proven.
    pub fn proven_total(&self) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.proven)
            .map(|r| r.credit)
            .sum()
    }
}

/// Why a device's credit was refused.
#[derive(Debug, Error)]
pub enum CreditError {
    /// The device has verified no round-log entry of the task, so it has nothing to check
    /// the ledger against.
    #[error(
        "this device has verified no round log of task {task} yet (it does when it takes part); \
         nothing to check its credit against"
    )]
    NothingVerified {
        /// The task.
        task: String,
    },
    /// The page's entries are not the chain the device verified.
    #[error(
        "the coordinator's ledger answer for task {task} does not follow the round log this \
         device verified: {what}. The coordinator is misbehaving; tell the model owner"
    )]
    NotOnChain {
        /// The task.
        task: String,
        /// What is wrong.
        what: String,
    },
    /// A row's membership does not follow from its round's entry.
    #[error(
        "the coordinator credits this device in task {task}, {attempt}, but {source}. The \
         coordinator is misbehaving; tell the model owner"
    )]
    NotCounted {
        /// The task.
        task: String,
        /// The round.
        attempt: Attempt,
        /// Why.
        #[source]
        source: MembershipError,
    },
    /// A row is malformed (an unknown round, rounds out of order, a credit that is not a
    /// finite number).
    #[error(
        "the coordinator's ledger answer for task {task} is malformed: {what}. The coordinator \
         is misbehaving; tell the model owner"
    )]
    Malformed {
        /// The task.
        task: String,
        /// What is wrong.
        what: String,
    },
    /// More pages than [`MAX_PAGES`].
    #[error("the coordinator's ledger for task {task} runs over {MAX_PAGES} pages; gave up")]
    TooManyPages {
        /// The task.
        task: String,
    },
}

/// The rows of one page that checked out, and where the next page ends, if there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedPage {
    /// The page's rows, oldest first.
    pub rows: Vec<CreditRow>,
    /// The `ending_at` of the next request, when the coordinator has older rows.
    pub next: Option<ContentHash>,
}

/// The attempt of an entry, from its params' `round_id`.
fn attempt_of(entry: &RoundLogEntry) -> Attempt {
    serde_json::from_slice::<serde_json::Value>(&entry.params)
        .ok()
        .and_then(|p| p.get("round_id")?.as_u64())
        .map(|id| Attempt::from_round_id(RoundId(id)))
        .filter(|a| a.round == entry.round.0)
        .unwrap_or(Attempt::first(entry.round.0))
}

/// Checks one page for `account`, asked with `ending_at` (an entry hash the device trusts),
/// against the owner's pinned `key` if any. See the [module docs](self).
pub fn verify_page(
    task: &TaskId,
    account: &str,
    ending_at: &ContentHash,
    key: Option<&VerifyingKey>,
    page: &LedgerPage,
) -> Result<VerifiedPage, CreditError> {
    let not_on_chain = |what: String| CreditError::NotOnChain {
        task: task.0.clone(),
        what,
    };
    let malformed = |what: String| CreditError::Malformed {
        task: task.0.clone(),
        what,
    };
    if page.task != *task {
        return Err(not_on_chain(format!("it is for task {}", page.task)));
    }
    // 1. Backwards from the trusted hash: the last entry is the one asked for, and each entry
    // is the one its successor names.
    let mut expected = *ending_at;
    for (i, e) in page.entries.iter().enumerate().rev() {
        if e.task != *task {
            return Err(not_on_chain(format!(
                "it holds an entry of task {}",
                e.task
            )));
        }
        if !e.hash_is_valid() {
            return Err(not_on_chain(format!(
                "the entry of round {} does not hash to its stored hash",
                e.round.0
            )));
        }
        if e.hash != expected {
            return Err(not_on_chain(if i + 1 == page.entries.len() {
                "its last entry is not the one this device asked for".to_string()
            } else {
                format!(
                    "the entry of round {} is not the one the entry after it names",
                    e.round.0
                )
            }));
        }
        if let Some(next) = page.entries.get(i + 1)
            && next.round <= e.round
        {
            return Err(not_on_chain("round numbers do not increase".into()));
        }
        if let Some(key) = key {
            chain::verify_signature(key, e).map_err(|err| not_on_chain(err.to_string()))?;
        }
        expected = e.prev;
    }
    if page.entries.is_empty() && (page.more || !page.rows.is_empty()) {
        return Err(malformed("rows or more pages without entries".into()));
    }
    // 2. Each row: a round of the page, in order, a finite credit, and a proof.
    let mut rows = Vec::with_capacity(page.rows.len());
    let mut last_round = None;
    for row in &page.rows {
        if last_round.is_some_and(|r| row.round <= r) {
            return Err(malformed("rows are not in increasing round order".into()));
        }
        last_round = Some(row.round);
        let Ok(i) = page.entries.binary_search_by_key(&row.round, |e| e.round.0) else {
            return Err(malformed(format!(
                "a row for round {} whose entry is not on the page",
                row.round
            )));
        };
        let entry = &page.entries[i];
        if !row.credit.is_finite() || row.credit < 0.0 || !row.improvement.is_finite() {
            return Err(malformed(format!(
                "the credit of round {} is not a finite, non-negative number",
                row.round
            )));
        }
        let attempt = attempt_of(entry);
        let proven = match verify_membership(entry, account, row.weight, row.proof.as_ref()) {
            Ok(()) => true,
            Err(MembershipError::NoMemberRoot { legacy, .. }) if !legacy.is_empty() => false,
            Err(source) => {
                return Err(CreditError::NotCounted {
                    task: task.0.clone(),
                    attempt,
                    source,
                });
            }
        };
        rows.push(CreditRow {
            attempt,
            weight: row.weight,
            credit: row.credit,
            basis: row.basis.clone(),
            improvement: row.improvement,
            entry: entry.hash,
            proven,
        });
    }
    let next = match (page.more, page.entries.first()) {
        (false, _) => None,
        (true, Some(first)) if first.prev != ROUND_LOG_GENESIS => Some(first.prev),
        (true, _) => {
            return Err(malformed(
                "it says older rows exist before the task's first entry".into(),
            ));
        }
    };
    Ok(VerifiedPage { rows, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_protocol::ledger::{LedgerRow, MembershipProof};
    use cohort_task::ledger::{LEGACY_MEMBERS_KEY, MEMBERS_ROOT_KEY, MemberTree};
    use serde_bytes::ByteBuf;

    /// A signed chain whose round r (from 1) has the members `members(r)`, and the rows a
    /// truthful coordinator would send `me`.
    struct World {
        key: chain::SigningKey,
        log: Vec<RoundLogEntry>,
        trees: Vec<MemberTree>,
    }

    fn members(r: u64) -> Vec<(String, u64)> {
        // "me" is in every even round, with weight r.
        let mut m: Vec<(String, u64)> = (0..4).map(|i| (format!("d{i}"), i + r)).collect();
        if r.is_multiple_of(2) {
            m.push(("me".into(), r));
        }
        m
    }

    fn world(rounds: u64, legacy_until: u64) -> World {
        let key = chain::SigningKey::from_bytes(&[3; 32]);
        let mut log: Vec<RoundLogEntry> = Vec::new();
        let mut trees = vec![MemberTree::new(&[])];
        for r in 0..=rounds {
            let tree = MemberTree::new(&members(r));
            let params = if r == 0 {
                "{}".to_string()
            } else if r <= legacy_until {
                format!(
                    "{{\"round_id\":{},\"{LEGACY_MEMBERS_KEY}\":\"ab\"}}",
                    r * 1_000_000 + 1
                )
            } else {
                format!(
                    "{{\"round_id\":{},\"{MEMBERS_ROOT_KEY}\":\"{}\"}}",
                    r * 1_000_000 + 2,
                    tree.root().to_hex()
                )
            };
            let mut e = RoundLogEntry {
                task: TaskId("t".into()),
                round: RoundId(r),
                participants: if r == 0 { 0 } else { tree.len() as u32 },
                input_weights: log.last().map_or(ROUND_LOG_GENESIS, |e| e.output_weights),
                output_weights: ContentHash([r as u8 + 1; 32]),
                params: ByteBuf::from(params.into_bytes()),
                created_at: r as i64,
                prev: log.last().map_or(ROUND_LOG_GENESIS, |e| e.hash),
                hash: ROUND_LOG_GENESIS,
                signature: ByteBuf::new(),
            };
            e.hash = e.compute_hash();
            e.signature = ByteBuf::from(chain::sign(&key, &e).to_vec());
            log.push(e);
            if r > 0 {
                trees.push(tree);
            }
        }
        World { key, log, trees }
    }

    impl World {
        /// The truthful page of entries `from..=to`.
        fn page(&self, from: usize, to: usize, more: bool) -> LedgerPage {
            let rows = (from..=to)
                .filter(|r| *r > 0 && r.is_multiple_of(2))
                .map(|r| LedgerRow {
                    round: r as u64,
                    weight: r as u64,
                    credit: 0.25,
                    basis: "fixed_reward".into(),
                    improvement: 1.0,
                    proof: self.trees[r].proof("me"),
                })
                .collect();
            LedgerPage {
                task: TaskId("t".into()),
                entries: self.log[from..=to].to_vec(),
                rows,
                more,
                newer_rows: 0,
                newer_entries: Vec::new(),
            }
        }

        fn check(&self, page: &LedgerPage, ending_at: usize) -> Result<VerifiedPage, CreditError> {
            let pinned = self.key.verifying_key();
            verify_page(
                &TaskId("t".into()),
                "me",
                &self.log[ending_at].hash,
                Some(&pinned),
                page,
            )
        }
    }

    #[test]
    fn a_truthful_page_verifies_and_names_the_next() {
        let w = world(8, 0);
        let v = w.check(&w.page(4, 8, true), 8).unwrap();
        assert_eq!(v.rows.len(), 3);
        assert!(v.rows.iter().all(|r| r.proven));
        assert_eq!(
            v.rows[0].attempt,
            Attempt {
                round: 4,
                attempt: 2
            }
        );
        assert_eq!(v.next, Some(w.log[3].hash));
        let v = w.check(&w.page(1, 3, false), 3).unwrap();
        assert_eq!((v.rows.len(), v.next), (1, None));
    }

    #[test]
    fn entries_before_member_trees_are_kept_unproven() {
        let w = world(6, 2);
        let v = w.check(&w.page(1, 6, false), 6).unwrap();
        let proven: Vec<bool> = v.rows.iter().map(|r| r.proven).collect();
        assert_eq!(proven, [false, true, true]);
    }

    /// A row for a round whose member set does not hold the device, a forged proof, a proof
    /// of another weight, and a missing proof are refused, naming the round.
    #[test]
    fn rows_the_log_does_not_back_are_refused() {
        let w = world(8, 0);
        // Round 3's members do not include "me": the coordinator hands it another's proof.
        let mut p = w.page(1, 8, false);
        p.rows.insert(
            1,
            LedgerRow {
                round: 3,
                weight: 3,
                credit: 0.25,
                basis: "fixed_reward".into(),
                improvement: 1.0,
                proof: w.trees[3].proof("d0"),
            },
        );
        let e = w.check(&p, 8).unwrap_err();
        assert!(
            matches!(&e, CreditError::NotCounted { attempt, source: MembershipError::NotAMember { .. }, .. } if attempt.round == 3),
            "{e}"
        );
        assert!(e.to_string().contains("round 3, attempt 2"), "{e}");
        // A forged path.
        let mut p = w.page(1, 8, false);
        p.rows[1].proof.as_mut().unwrap().path[0].0[0] ^= 1;
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotCounted {
                source: MembershipError::NotAMember { .. },
                ..
            })
        ));
        // A larger weight than the one committed.
        let mut p = w.page(1, 8, false);
        p.rows[0].weight += 10;
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotCounted { .. })
        ));
        // No proof; a proof claiming a tree of another size.
        let mut p = w.page(1, 8, false);
        p.rows[0].proof = None;
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotCounted {
                source: MembershipError::NoProof { .. },
                ..
            })
        ));
        let mut p = w.page(1, 8, false);
        let proof: &mut MembershipProof = p.rows[0].proof.as_mut().unwrap();
        proof.size += 1;
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotCounted {
                source: MembershipError::WrongSize { .. },
                ..
            })
        ));
    }

    /// Entries that are not the chain the device verified are refused.
    #[test]
    fn pages_off_the_verified_chain_are_refused() {
        let w = world(8, 0);
        // Not ending at the entry asked for.
        assert!(matches!(
            w.check(&w.page(1, 7, false), 8),
            Err(CreditError::NotOnChain { .. })
        ));
        // A gap.
        let mut p = w.page(1, 8, false);
        p.entries.remove(3);
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotOnChain { .. })
        ));
        // An entry edited and re-hashed (its signature then fails, and the link too).
        let mut p = w.page(1, 8, false);
        p.entries[7].participants += 1;
        p.entries[7].hash = p.entries[7].compute_hash();
        assert!(matches!(
            w.check(&p, 8),
            Err(CreditError::NotOnChain { .. })
        ));
        // A whole chain under another key.
        let other = World {
            key: chain::SigningKey::from_bytes(&[9; 32]),
            ..world(8, 0)
        };
        let pinned = other.key.verifying_key();
        assert!(matches!(
            verify_page(
                &TaskId("t".into()),
                "me",
                &w.log[8].hash,
                Some(&pinned),
                &w.page(1, 8, false)
            ),
            Err(CreditError::NotOnChain { .. })
        ));
        // A row whose round is not on the page; more pages before the genesis.
        let mut p = w.page(4, 8, false);
        p.rows[0].round = 3;
        assert!(matches!(w.check(&p, 8), Err(CreditError::Malformed { .. })));
        assert!(matches!(
            w.check(&w.page(0, 8, true), 8),
            Err(CreditError::Malformed { .. })
        ));
        let mut p = w.page(1, 8, false);
        p.rows[0].credit = f64::NAN;
        assert!(matches!(w.check(&p, 8), Err(CreditError::Malformed { .. })));
    }
}
