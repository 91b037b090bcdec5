//! The contributor ledger's storage: each finished round's credits (the rule is
//! [`cohort_task::ledger`], shared with the simulator's contribution study) as rows of the
//! `ledger` table, and the queries the API and the CLI serve.
//!
//! The rows are written after the round's log entry; a crash in between leaves that round
//! without ledger rows (its log entry still names the member tree's root).
//!
//! A logged-in device asks for its own rows ([`page_for`], served by the session on
//! `ClientMessage::Ledger`): a bounded run of the task's round log ending at an entry the
//! device verified, and its rows in those rounds, each with the inclusion proof of its leaf
//! in the round's member tree (rebuilt from the round's rows, which hold exactly the members
//! whose root the entry names).

use cohort_protocol::ledger::{LedgerPage, LedgerRow, MAX_LEDGER_ENTRIES};
use cohort_protocol::{ContentHash, TaskId};
pub use cohort_task::ledger::{
    Basis, Credit, FIXED_REWARD, MEMBERS_ROOT_KEY, MemberTree, credit_round, equal_members,
    members_root, split,
};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use thiserror::Error;

use crate::round_log::LogEntry;
use crate::store::{Store, StoreError};

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
    /// [`members_root`] of the members (account, weight), as the round-log entry names it
    /// (params key [`MEMBERS_ROOT_KEY`]).
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
        let members: Vec<(String, u64)> = r
            .members
            .iter()
            .map(|c| (c.account.clone(), c.weight))
            .collect();
        r.members_hash = members_root(&members).to_hex();
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

/// Why a device's ledger page cannot be served.
#[derive(Debug, Error)]
pub enum LedgerPageError {
    /// No entry of the task has the hash the device named.
    #[error("no round-log entry of task {task} has hash {hash}")]
    UnknownEntry {
        /// The task.
        task: String,
        /// The hash named.
        hash: ContentHash,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One stored row of an account, with the round's members.
struct AccountRound {
    round: u64,
    weight: u64,
    credit: f64,
    basis: String,
    improvement: f64,
    members: Vec<(String, u64)>,
}

/// `account`'s ledger page of `task` ending at the entry whose hash is `ending_at` (see
/// [`cohort_protocol::ledger::LedgerRequest`]): at most [`MAX_LEDGER_ENTRIES`] consecutive
/// entries ending there, starting at the account's oldest credited round when that is within
/// reach; the account's rows in those rounds with their proofs; whether older rows exist; how
/// many rows are newer than `ending_at`, and then the entries after it (at most
/// [`MAX_LEDGER_ENTRIES`]), for the device to catch up with. Only `account`'s rows leave: the proofs carry hashes,
/// not other members.
pub fn page_for(
    store: &Store,
    task: &TaskId,
    account: &str,
    ending_at: &ContentHash,
) -> Result<LedgerPage, LedgerPageError> {
    ensure_table(store)?;
    let (mut entries, rounds, newer_rows) = store.with_conn(|c| {
        let anchor: Option<i64> = c
            .query_row(
                "SELECT seq FROM round_log WHERE task = ?1 AND entry_hash = ?2",
                params![task.0, &ending_at.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        let Some(anchor) = anchor else {
            return Ok((Vec::new(), Vec::new(), None));
        };
        let mut entries: Vec<LogEntry> =
            crate::round_log::entries_ending_at(c, &task.0, anchor, MAX_LEDGER_ENTRIES)?;
        entries.reverse();
        let anchor_round = entries.last().map_or(0, |e| e.entry.round.0);
        let first_round = entries.first().map_or(0, |e| e.entry.round.0);
        let mut stmt = c.prepare(
            "SELECT round, weight, credit, basis, improvement FROM ledger
             WHERE task = ?1 AND account = ?2 AND round >= ?3 AND round <= ?4 ORDER BY round",
        )?;
        let mine = stmt
            .query_map(
                params![task.0, account, first_round as i64, anchor_round as i64],
                |r| {
                    Ok(AccountRound {
                        round: r.get::<_, i64>(0)? as u64,
                        weight: r.get::<_, i64>(1)? as u64,
                        credit: r.get(2)?,
                        basis: r.get(3)?,
                        improvement: r.get(4)?,
                        members: Vec::new(),
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut members =
            c.prepare("SELECT account, weight FROM ledger WHERE task = ?1 AND round = ?2")?;
        let mut rounds = Vec::with_capacity(mine.len());
        for mut row in mine {
            row.members = members
                .query_map(params![task.0, row.round as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rounds.push(row);
        }
        let count = |sql: &str, round: u64| -> Result<u32, StoreError> {
            Ok(
                c.query_row(sql, params![task.0, account, round as i64], |r| {
                    r.get::<_, i64>(0)
                })? as u32,
            )
        };
        let older = count(
            "SELECT COUNT(*) FROM ledger WHERE task = ?1 AND account = ?2 AND round < ?3",
            first_round,
        )?;
        let newer = count(
            "SELECT COUNT(*) FROM ledger WHERE task = ?1 AND account = ?2 AND round > ?3",
            anchor_round,
        )?;
        let newer_entries = if newer > 0 {
            crate::round_log::entries_after_seq(c, &task.0, anchor, MAX_LEDGER_ENTRIES)?
        } else {
            Vec::new()
        };
        Ok((entries, rounds, Some((older, newer, newer_entries))))
    })?;
    let Some((older, newer_rows, newer_entries)) = newer_rows else {
        return Err(LedgerPageError::UnknownEntry {
            task: task.0.clone(),
            hash: *ending_at,
        });
    };
    let more = older > 0;
    // With nothing older to fetch, the page starts at the account's oldest row in it.
    if !more {
        let start = rounds.first().map_or(u64::MAX, |r| r.round);
        entries.retain(|e| e.entry.round.0 >= start);
    }
    let rows = rounds
        .into_iter()
        .map(|r| LedgerRow {
            round: r.round,
            weight: r.weight,
            credit: r.credit,
            basis: r.basis,
            improvement: r.improvement,
            proof: MemberTree::new(&r.members).proof(account),
        })
        .collect();
    Ok(LedgerPage {
        task: task.clone(),
        entries: entries.iter().map(LogEntry::to_wire).collect(),
        rows,
        more,
        newer_rows,
        newer_entries: newer_entries.iter().map(LogEntry::to_wire).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round_log::NewLogEntry;
    use cohort_protocol::RoundId;
    use cohort_task::ledger::verify_membership;

    /// A task of `rounds` rounds whose round r has members a (in odd rounds), b and c.
    fn ledger(rounds: u64) -> (Store, Vec<ContentHash>) {
        let store = Store::open_in_memory().unwrap();
        let mut hashes = Vec::new();
        for r in 0..=rounds {
            let mut accounts = vec!["b".to_string(), "c".to_string()];
            if r % 2 == 1 {
                accounts.push("a".to_string());
            }
            let members = equal_members(&accounts);
            let params = if r == 0 {
                "{}".to_string()
            } else {
                format!(
                    "{{\"{MEMBERS_ROOT_KEY}\":\"{}\"}}",
                    members_root(&members).to_hex()
                )
            };
            let e = store
                .round_log()
                .append(NewLogEntry {
                    task: TaskId("t".into()),
                    round: RoundId(r),
                    participants: if r == 0 { 0 } else { members.len() as u32 },
                    input_weights: ContentHash([r as u8; 32]),
                    output_weights: ContentHash([r as u8 + 1; 32]),
                    params: params.into_bytes(),
                    created_at: 0,
                })
                .unwrap();
            hashes.push(e.hash);
            if r > 0 {
                let (basis, improvement, credits) = credit_round(None, None, &accounts);
                record(&store, "t", r, basis, improvement, &credits).unwrap();
            }
        }
        (store, hashes)
    }

    /// A page holds only the asking account's rows, each proven by its round's entry; a page
    /// ending before the account's newer rounds counts them and carries the entries after it;
    /// an unknown entry is refused.
    #[test]
    fn a_page_serves_only_the_asking_account_with_proofs() {
        let (store, hashes) = ledger(6);
        let task = TaskId("t".into());
        let page = page_for(&store, &task, "a", &hashes[6]).unwrap();
        let rounds: Vec<u64> = page.rows.iter().map(|r| r.round).collect();
        assert_eq!(rounds, [1, 3, 5]);
        assert_eq!(page.entries.first().map(|e| e.round.0), Some(1));
        assert_eq!(page.entries.last().map(|e| e.hash), Some(hashes[6]));
        assert!(!page.more && page.newer_rows == 0 && page.newer_entries.is_empty());
        for row in &page.rows {
            let entry = page
                .entries
                .iter()
                .find(|e| e.round.0 == row.round)
                .unwrap();
            verify_membership(entry, "a", row.weight, row.proof.as_ref()).unwrap();
            // The proof does not serve another account.
            assert!(verify_membership(entry, "b", row.weight, row.proof.as_ref()).is_err());
        }
        let early = page_for(&store, &task, "a", &hashes[2]).unwrap();
        assert_eq!(early.rows.len(), 1);
        assert_eq!(early.newer_rows, 2);
        let newer: Vec<u64> = early.newer_entries.iter().map(|e| e.round.0).collect();
        assert_eq!(newer, [3, 4, 5, 6]);
        let stranger = page_for(&store, &task, "nobody", &hashes[6]).unwrap();
        assert!(stranger.rows.is_empty() && stranger.entries.is_empty());
        assert!(matches!(
            page_for(&store, &task, "a", &ContentHash([9; 32])),
            Err(LedgerPageError::UnknownEntry { .. })
        ));
    }
}
