//! The contributor ledger's storage: each finished round's credits (the rule is
//! [`cohort_task::ledger`], shared with the simulator's contribution study) as rows of the
//! `ledger` table, and the queries the API and the CLI serve.
//!
//! The rows are written after the round's log entry; a crash in between leaves that round
//! without ledger rows (its log entry still names the member set).

pub use cohort_task::ledger::{
    Basis, Credit, FIXED_REWARD, MEMBERS_KEY, credit_round, members_hash, split,
};
use rusqlite::params;
use serde::Serialize;

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
