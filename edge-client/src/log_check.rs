//! Checking the weights a coordinator serves against its hash-chained round log.
//!
//! With the plan of a round, the coordinator sends the task's round log ([`RoundLogEntry`]s,
//! oldest first; round 0 names the initial model). Before training, the client:
//!
//! 1. checks the chain with the protocol crate's [`cohort_protocol::chain`] (the check the
//!    coordinator runs on its own log): every entry is of this task, hashes to its stored hash,
//!    names the hash of the entry before it (the first names [`ROUND_LOG_GENESIS`]), has a larger
//!    round number, starts from the model the entry before it produced, and is signed by the
//!    model owner's key this device pinned at enrollment (when it pinned one);
//! 2. checks continuity: the chain contains the head this device verified before for the task
//!    (kept with the credentials in the host's secret store under [`LOG_HEADS_FILE`]: the file
//!    of that name in the state directory for the desktop client), with the same round number,
//!    so a coordinator cannot drop or rewrite rounds the device has seen;
//! 3. checks that the chain's last entry names, as its output, the weights of the round
//!    (`RoundConfig::model`, the hash the downloaded weights are verified against);
//!
//! and then saves the new head. A failure is an error the contributor has to look at, not one
//! to retry: the coordinator served weights its own log does not name, or rewrote its log.
//!
//! The device names its head at check-in ([`saved_head`]) and is sent only the entries after
//! it. A device far behind is sent them 256 at a time before it is selected
//! ([`record_catch_up`]). When the coordinator answers that the head is not on its chain
//! (`UnknownLogHead`), the device refuses to contribute ([`unknown_head`]): the safe reading is
//! that the log was rewritten; only the contributor can decide that the coordinator was reset
//! on purpose (by deleting [`LOG_HEADS_FILE`], after which the device verifies the chain from
//! round 0 again, against the pinned key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cohort_protocol::chain::{self, ChainError, ChainHead, RoundLogHead, VerifyingKey};
use cohort_protocol::{ContentHash, ROUND_LOG_GENESIS, RoundId, RoundLogEntry, TaskId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::host::{FileSecretStore, SecretStore};

/// File in the state directory that holds the verified log head of each task.
pub const LOG_HEADS_FILE: &str = "round-log-heads.json";

/// The last log entry this device verified for a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedHead {
    /// The entry's round number.
    pub round: u64,
    /// The entry's hash (hex).
    pub entry: String,
    /// The weights it names (hex).
    pub model: String,
}

/// The verified heads of every task this device worked on, by task id.
pub type VerifiedHeads = BTreeMap<String, VerifiedHead>;

/// Why the round log or the served weights were refused.
#[derive(Debug, Error)]
pub enum LogCheckError {
    /// The coordinator sent no log with the plan.
    #[error(
        "the coordinator sent no round log for task {task}, so the weights it serves cannot be \
         checked; ask its operator to upgrade the coordinator"
    )]
    Missing {
        /// The task.
        task: String,
    },
    /// An entry belongs to another task.
    #[error(
        "the round log sent for task {task} holds an entry of task {found}; the coordinator \
         is misbehaving: stop contributing and tell the model owner"
    )]
    OtherTask {
        /// The task of the plan.
        task: String,
        /// The task the entry names.
        found: String,
    },
    /// An entry's fields do not hash to its hash, or it does not link to the entry before it.
    #[error(
        "the round log of task {task} is broken at round {round}: {what}; the coordinator's log \
         was tampered with: stop contributing and tell the model owner"
    )]
    Broken {
        /// The task.
        task: String,
        /// The round of the first bad entry.
        round: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// An entry is not signed by the model owner's key this device pinned at enrollment.
    #[error(
        "the round log of task {task} holds an entry (round {round}) {what}: the coordinator's \
         log was forged or re-signed with another key. Stop contributing and tell the model \
         owner"
    )]
    NotSigned {
        /// The task.
        task: String,
        /// The round of the entry.
        round: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The chain no longer contains the head this device verified before.
    #[error(
        "the round log of task {task} no longer contains round {round} (entry {entry}) that this \
         device verified before: the coordinator truncated or rewrote its log. Stop contributing \
         and tell the model owner; if the coordinator's state was reset on purpose, delete {file} \
         to trust its new log"
    )]
    Rewritten {
        /// The task.
        task: String,
        /// The round of the saved head.
        round: u64,
        /// The saved head's hash (hex).
        entry: String,
        /// The heads file.
        file: String,
    },
    /// The weights of the round are not the ones the log's head names.
    #[error(
        "the coordinator served weights {served} for task {task}, but its round log's head \
         (round {round}) names {named}: the coordinator served weights its log does not name. \
         Not training on them; tell the model owner"
    )]
    WeightsNotInLog {
        /// The task.
        task: String,
        /// The weights of the round.
        served: ContentHash,
        /// What the log's last entry names.
        named: ContentHash,
        /// The round of the log's last entry.
        round: u64,
    },
    /// The heads file could not be read or written.
    #[error("{action} {path}: {reason}; check the state directory's permissions")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        reason: String,
    },
}

impl VerifiedHead {
    fn of(head: &ChainHead) -> Self {
        Self {
            round: head.round.0,
            entry: head.hash.to_hex(),
            model: head.output.to_hex(),
        }
    }

    /// The head as the protocol's chain check continues it; `None` when the saved hex is
    /// unreadable.
    fn chain_head(&self) -> Option<ChainHead> {
        Some(ChainHead {
            round: RoundId(self.round),
            hash: ContentHash::from_hex(&self.entry)?,
            output: ContentHash::from_hex(&self.model)?,
        })
    }
}

/// Says why `e` does not continue the chain of `task`.
fn chain_error(task: &TaskId, e: ChainError) -> LogCheckError {
    let name = task.0.clone();
    let round = e.round().map_or(0, |r| r.0);
    let broken = |what| LogCheckError::Broken {
        task: name.clone(),
        round,
        what,
    };
    match e {
        ChainError::OtherTask { found, .. } => LogCheckError::OtherTask {
            task: name,
            found: found.0,
        },
        ChainError::Altered { .. } => broken("the entry does not hash to its stored hash"),
        ChainError::NotLinked { .. } => broken("the entry does not name the entry before it"),
        ChainError::RoundNotAfter { .. } => broken("round numbers do not increase"),
        ChainError::InputNotPreviousOutput { .. } => {
            broken("the round did not start from the model the round before it produced")
        }
        ChainError::Unsigned { .. } => LogCheckError::NotSigned {
            task: name,
            round,
            what: "that is not signed, though this device pinned the model owner's key",
        },
        ChainError::BadSignature { .. } => LogCheckError::NotSigned {
            task: name,
            round,
            what: "whose signature is not by the model owner's key this device pinned at \
                   enrollment",
        },
    }
}

/// The heads file of a state directory.
pub fn heads_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOG_HEADS_FILE)
}

/// Reads the verified heads of a state directory's file store; empty when the device has
/// verified none yet.
pub fn load_heads(state_dir: &Path) -> Result<VerifiedHeads, LogCheckError> {
    load_heads_from(&FileSecretStore::new(state_dir))
}

/// Reads the verified heads kept with the credentials, in the host's secret store (key
/// [`LOG_HEADS_FILE`]; the file of that name in the state directory for the desktop client's
/// file store). Empty when the device has verified none yet.
pub fn load_heads_from(store: &dyn SecretStore) -> Result<VerifiedHeads, LogCheckError> {
    let place = format!("secret {LOG_HEADS_FILE}");
    let bytes = match store.load(LOG_HEADS_FILE) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(VerifiedHeads::new()),
        Err(e) => {
            return Err(LogCheckError::Io {
                action: "reading",
                path: place,
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| LogCheckError::Io {
        action: "parsing",
        path: place,
        reason: format!("{e} (it is corrupt; delete it to start verifying afresh)"),
    })
}

/// Writes the verified heads of a state directory's file store.
pub fn save_heads(state_dir: &Path, heads: &VerifiedHeads) -> Result<(), LogCheckError> {
    save_heads_to(&FileSecretStore::new(state_dir), heads)
}

/// Writes the verified heads into the host's secret store, beside the credentials (the file
/// store writes atomically and durably, mode 0600).
pub fn save_heads_to(store: &dyn SecretStore, heads: &VerifiedHeads) -> Result<(), LogCheckError> {
    let place = format!("secret {LOG_HEADS_FILE}");
    let json = serde_json::to_vec_pretty(heads).map_err(|e| LogCheckError::Io {
        action: "encoding",
        path: place.clone(),
        reason: e.to_string(),
    })?;
    store
        .store(LOG_HEADS_FILE, &json)
        .map_err(|e| LogCheckError::Io {
            action: "writing",
            path: place,
            reason: e.to_string(),
        })
}

/// Checks `log` (the chain sent with the plan of `task`) against `saved` (the head verified
/// before, if any), `key` (the model owner's key pinned at enrollment, if any) and `served`
/// (the weights of the round). Returns the new head.
pub fn verify(
    task: &TaskId,
    log: &[RoundLogEntry],
    saved: Option<&VerifiedHead>,
    key: Option<&VerifyingKey>,
    served: &ContentHash,
) -> Result<VerifiedHead, LogCheckError> {
    let head = verify_chain(task, log, saved, key)?;
    check_weights(task, &head, served)
}

/// Steps 1 and 2: the chain is intact and contains `saved`, or continues it. Returns the head
/// it ends at.
///
/// `log` is either the whole chain (its first entry names [`ROUND_LOG_GENESIS`]), which must
/// contain `saved`; or the entries after `saved` (the device told the coordinator its head at
/// check-in), whose first entry must name `saved` and start from its model; or empty, when
/// `saved` is still the head.
pub fn verify_chain(
    task: &TaskId,
    log: &[RoundLogEntry],
    saved: Option<&VerifiedHead>,
    key: Option<&VerifyingKey>,
) -> Result<VerifiedHead, LogCheckError> {
    let name = || task.0.clone();
    let Some(first) = log.first() else {
        return saved
            .cloned()
            .ok_or_else(|| LogCheckError::Missing { task: name() });
    };
    let full = first.prev == ROUND_LOG_GENESIS;
    // Where the chain starts: the genesis, or the saved head it continues.
    let from = match (full, saved) {
        (true, _) => None,
        (false, Some(s)) => {
            let head = s.chain_head().ok_or_else(|| rewritten(task, s))?;
            if first.prev != head.hash {
                return Err(rewritten(task, s));
            }
            Some(head)
        }
        (false, None) => {
            return Err(LogCheckError::Broken {
                task: name(),
                round: first.round.0,
                what: "the log does not start at the task's first entry, and this device \
                       holds no earlier head",
            });
        }
    };
    let head = chain::verify_extension(task, from, log, key)
        .map_err(|e| chain_error(task, e))?
        .ok_or_else(|| LogCheckError::Missing { task: name() })?;
    if full && let Some(saved) = saved {
        let found = log
            .iter()
            .any(|e| e.hash.to_hex() == saved.entry && e.round.0 == saved.round);
        if !found {
            return Err(rewritten(task, saved));
        }
    }
    Ok(VerifiedHead::of(&head))
}

fn rewritten(task: &TaskId, saved: &VerifiedHead) -> LogCheckError {
    LogCheckError::Rewritten {
        task: task.0.clone(),
        round: saved.round,
        entry: saved.entry.clone(),
        file: LOG_HEADS_FILE.into(),
    }
}

/// The coordinator answered that `head` (what this device named at check-in) is not on the
/// chain of `task`: the refusal the device reports. The safe behaviour: the device does not
/// contribute on a log that lost a round it verified; deleting [`LOG_HEADS_FILE`] makes it
/// verify the log from round 0 again (against the pinned key), for a coordinator reset on
/// purpose.
pub fn unknown_head(task: &TaskId, head: &RoundLogHead) -> LogCheckError {
    LogCheckError::Rewritten {
        task: task.0.clone(),
        round: head.round.0,
        entry: head.hash.to_hex(),
        file: LOG_HEADS_FILE.into(),
    }
}

/// Checks a batch of entries the coordinator sent before selecting this device (it is more than
/// a message's worth behind), saves the new head, and returns the head to name at the next
/// check-in. A batch from round 0 that ends before the head saved here (the device checked in
/// without naming it, for "any task") is checked on its own, and the saved head is named next.
pub fn record_catch_up(
    store: &dyn SecretStore,
    task: &TaskId,
    entries: &[RoundLogEntry],
    key: Option<&VerifyingKey>,
) -> Result<RoundLogHead, LogCheckError> {
    let mut heads = load_heads_from(store)?;
    let saved = heads.get(&task.0).cloned();
    let behind_saved = match (&saved, entries.last()) {
        (Some(s), Some(last)) => {
            entries.first().is_some_and(|f| f.prev == ROUND_LOG_GENESIS) && last.round.0 < s.round
        }
        _ => false,
    };
    let head = if behind_saved {
        chain::verify_extension(task, None, entries, key).map_err(|e| chain_error(task, e))?;
        saved.clone().ok_or_else(|| LogCheckError::Missing {
            task: task.0.clone(),
        })?
    } else {
        verify_chain(task, entries, saved.as_ref(), key)?
    };
    if saved.as_ref() != Some(&head) {
        heads.insert(task.0.clone(), head.clone());
        save_heads_to(store, &heads)?;
    }
    let parsed = head.chain_head().ok_or_else(|| rewritten(task, &head))?;
    Ok(parsed.wire())
}

/// Step 3: the chain's head names the weights of the round. Returns the new head.
pub fn check_weights(
    task: &TaskId,
    head: &VerifiedHead,
    served: &ContentHash,
) -> Result<VerifiedHead, LogCheckError> {
    if head.model != served.to_hex() {
        return Err(LogCheckError::WeightsNotInLog {
            task: task.0.clone(),
            served: *served,
            named: ContentHash::from_hex(&head.model).unwrap_or(ROUND_LOG_GENESIS),
            round: head.round,
        });
    }
    Ok(head.clone())
}

/// The head saved in `store` for `task`, as the check-in's `known_head`: the coordinator
/// then sends only the entries after it. `None` when there is none (or it is unreadable: the
/// whole chain is then sent and checked).
pub fn saved_head(store: &dyn SecretStore, task: Option<&TaskId>) -> Option<RoundLogHead> {
    let heads = load_heads_from(store).ok()?;
    let head = match task {
        Some(t) => heads.get(&t.0)?,
        // A device that worked on exactly one task checks in for "any" with that one's head.
        None if heads.len() == 1 => heads.values().next()?,
        None => return None,
    };
    head.chain_head().map(|h| h.wire())
}

/// The weights the next round of `task` will most likely start from: those the last entry of
/// `log` names, or the saved head's when `log` is empty. Only a hint for fetching them early
/// (the round's weights are checked against the verified log all the same, and any download is
/// checked against its hash); `None` when neither names any.
pub fn expected_weights(
    store: &dyn SecretStore,
    task: &TaskId,
    log: &[RoundLogEntry],
) -> Option<ContentHash> {
    if let Some(last) = log.last() {
        return Some(last.output_weights);
    }
    let heads = load_heads_from(store).ok()?;
    ContentHash::from_hex(&heads.get(&task.0)?.model)
}

/// [`verify_chain`] against the head saved in `store`: what the client checks as soon as
/// it is accepted, before waiting for its round.
pub fn verify_saved_chain(
    store: &dyn SecretStore,
    task: &TaskId,
    log: &[RoundLogEntry],
    key: Option<&VerifyingKey>,
) -> Result<(), LogCheckError> {
    let heads = load_heads_from(store)?;
    verify_chain(task, log, heads.get(&task.0), key).map(|_| ())
}

/// [`verify`] against the head saved in `store`, then saves the new head there.
pub fn verify_and_record(
    store: &dyn SecretStore,
    task: &TaskId,
    log: &[RoundLogEntry],
    key: Option<&VerifyingKey>,
    served: &ContentHash,
) -> Result<VerifiedHead, LogCheckError> {
    let mut heads = load_heads_from(store)?;
    let head = verify(task, log, heads.get(&task.0), key, served)?;
    if heads.get(&task.0) != Some(&head) {
        heads.insert(task.0.clone(), head.clone());
        save_heads_to(store, &heads)?;
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_protocol::RoundId;
    use serde_bytes::ByteBuf;

    fn chain(task: &str, rounds: u64) -> Vec<RoundLogEntry> {
        let mut out: Vec<RoundLogEntry> = Vec::new();
        for r in 0..rounds {
            let prev = out.last().map_or(ROUND_LOG_GENESIS, |e| e.hash);
            let mut e = RoundLogEntry {
                task: TaskId(task.into()),
                round: RoundId(r),
                participants: r as u32 * 10,
                input_weights: out.last().map_or(ROUND_LOG_GENESIS, |e| e.output_weights),
                output_weights: ContentHash([r as u8 + 1; 32]),
                params: ByteBuf::from(format!("{{\"r\":{r}}}").into_bytes()),
                created_at: 1_700_000_000 + r as i64,
                prev,
                hash: ROUND_LOG_GENESIS,
                signature: ByteBuf::new(),
            };
            e.hash = e.compute_hash();
            out.push(e);
        }
        out
    }

    fn files(dir: &tempfile::TempDir) -> FileSecretStore {
        FileSecretStore::new(dir.path())
    }

    fn t() -> TaskId {
        TaskId("t".into())
    }

    #[test]
    fn intact_chain_naming_the_weights_is_accepted_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = chain("t", 4);
        let head =
            verify_and_record(&files(&dir), &t(), &log, None, &ContentHash([4; 32])).unwrap();
        assert_eq!(head.round, 3);
        assert_eq!(head.entry, log[3].hash.to_hex());
        assert_eq!(load_heads(dir.path()).unwrap()["t"], head);
        // The next round's chain extends it.
        let longer = chain("t", 6);
        let head =
            verify_and_record(&files(&dir), &t(), &longer, None, &ContentHash([6; 32])).unwrap();
        assert_eq!(head.round, 5);
    }

    #[test]
    fn the_weights_to_fetch_early_are_the_head_of_the_log_sent_or_saved() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(&dir);
        // Nothing sent and nothing saved: no hint.
        assert_eq!(expected_weights(&store, &t(), &[]), None);
        // The log sent with the plan: its last entry's output.
        let log = chain("t", 3);
        assert_eq!(
            expected_weights(&store, &t(), &log),
            Some(ContentHash([3; 32]))
        );
        // Nothing new sent (the device is at the head): the saved head's weights.
        verify_and_record(&store, &t(), &log, None, &ContentHash([3; 32])).unwrap();
        assert_eq!(
            expected_weights(&store, &t(), &[]),
            Some(ContentHash([3; 32]))
        );
        // Another task's head is not this one's.
        assert_eq!(expected_weights(&store, &TaskId("u".into()), &[]), None);
    }

    #[test]
    fn weights_the_log_does_not_name_are_refused() {
        let log = chain("t", 3);
        // The weights of an older round, named by the log but not its head.
        match verify(&t(), &log, None, None, &ContentHash([2; 32])) {
            Err(LogCheckError::WeightsNotInLog { named, round, .. }) => {
                assert_eq!((named, round), (ContentHash([3; 32]), 2));
            }
            other => panic!("{other:?}"),
        }
        let err = verify(&t(), &log, None, None, &ContentHash([99; 32]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("its log does not name"), "{err}");
        assert!(matches!(
            verify(&t(), &[], None, None, &ContentHash([1; 32])),
            Err(LogCheckError::Missing { .. })
        ));
    }

    #[test]
    fn tampered_entries_are_refused() {
        let served = ContentHash([5; 32]);
        // An edited field.
        let mut log = chain("t", 5);
        log[2].participants += 1;
        assert!(matches!(
            verify(&t(), &log, None, None, &served),
            Err(LogCheckError::Broken { round: 2, .. })
        ));
        // Edited and re-hashed: the next entry no longer links to it.
        log[2].hash = log[2].compute_hash();
        assert!(matches!(
            verify(&t(), &log, None, None, &served),
            Err(LogCheckError::Broken { round: 3, .. })
        ));
        // A served model swapped into the head and re-hashed: the head is internally
        // consistent, so it is the weights check that must hold, and the chain still links.
        let mut log = chain("t", 5);
        log[4].output_weights = ContentHash([77; 32]);
        log[4].hash = log[4].compute_hash();
        assert!(verify(&t(), &log, None, None, &ContentHash([77; 32])).is_ok());
        // ... but not against the head a device saw before, if the forged entry replaced it.
        let seen = verify(&t(), &chain("t", 5), None, None, &served).unwrap();
        assert!(matches!(
            verify(&t(), &log, Some(&seen), None, &ContentHash([77; 32])),
            Err(LogCheckError::Rewritten { round: 4, .. })
        ));
        // A deleted entry.
        let mut log = chain("t", 5);
        log.remove(1);
        assert!(matches!(
            verify(&t(), &log, None, None, &served),
            Err(LogCheckError::Broken { round: 2, .. })
        ));
        // Another task's chain.
        assert!(matches!(
            verify(&t(), &chain("u", 5), None, None, &served),
            Err(LogCheckError::OtherTask { .. })
        ));
    }

    #[test]
    fn a_truncated_log_is_refused_against_the_saved_head() {
        let dir = tempfile::tempdir().unwrap();
        verify_and_record(
            &files(&dir),
            &t(),
            &chain("t", 5),
            None,
            &ContentHash([5; 32]),
        )
        .unwrap();
        let short = chain("t", 3);
        let err =
            verify_and_record(&files(&dir), &t(), &short, None, &ContentHash([3; 32])).unwrap_err();
        assert!(
            matches!(err, LogCheckError::Rewritten { round: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(LOG_HEADS_FILE));
        // The saved head is unchanged by the refused log.
        assert_eq!(load_heads(dir.path()).unwrap()["t"].round, 4);
    }

    /// The entries after the saved head continue it; the same entries without a saved head,
    /// or not attached to it, are refused; no entry at all keeps the saved head.
    #[test]
    fn the_entries_after_the_saved_head_continue_it() {
        let dir = tempfile::tempdir().unwrap();
        let full = chain("t", 6);
        verify_and_record(&files(&dir), &t(), &full[..3], None, &ContentHash([3; 32])).unwrap();
        assert_eq!(
            saved_head(&files(&dir), Some(&t())),
            Some(RoundLogHead {
                round: full[2].round,
                hash: full[2].hash
            }),
            "the head sent at check-in"
        );
        assert_eq!(
            saved_head(&files(&dir), None).map(|h| h.hash),
            Some(full[2].hash)
        );
        let head =
            verify_and_record(&files(&dir), &t(), &full[3..], None, &ContentHash([6; 32])).unwrap();
        assert_eq!(head.round, 5);
        // Still the head: nothing new, the same model.
        let same = verify_and_record(&files(&dir), &t(), &[], None, &ContentHash([6; 32])).unwrap();
        assert_eq!(same, head);
        // A tail that does not attach to the saved head is a rewrite.
        let other = chain("t", 8);
        let mut forked = other[6..].to_vec();
        forked[0].prev = ContentHash([9; 32]);
        forked[0].hash = forked[0].compute_hash();
        assert!(matches!(
            verify_and_record(&files(&dir), &t(), &forked, None, &ContentHash([8; 32])),
            Err(LogCheckError::Rewritten { round: 5, .. }) | Err(LogCheckError::Broken { .. })
        ));
        // A tail given to a device with no saved head.
        assert!(matches!(
            verify(&t(), &full[3..], None, None, &ContentHash([6; 32])),
            Err(LogCheckError::Broken { round: 3, .. })
        ));
    }

    /// Each entry must start from the model the entry before it produced.
    #[test]
    fn a_round_from_another_model_is_refused() {
        let mut log = chain("t", 4);
        log[2].input_weights = ContentHash([42; 32]);
        log[2].hash = log[2].compute_hash();
        log[3].prev = log[2].hash;
        log[3].hash = log[3].compute_hash();
        assert!(matches!(
            verify(&t(), &log, None, None, &ContentHash([4; 32])),
            Err(LogCheckError::Broken { round: 2, .. })
        ));
    }

    /// A chain signed by the pinned key, as the coordinator signs it.
    fn signed(task: &str, rounds: u64, key: &chain::SigningKey) -> Vec<RoundLogEntry> {
        let mut log = chain(task, rounds);
        for e in &mut log {
            e.signature = ByteBuf::from(chain::sign(key, e).to_vec());
        }
        log
    }

    /// With the owner's key pinned, a signed chain is accepted; an entry re-signed by another
    /// key, a chain forged under another key, or an unsigned entry is refused, and the saved
    /// head does not move.
    #[test]
    fn entries_not_signed_by_the_pinned_key_are_refused() {
        let owner = chain::SigningKey::from_bytes(&[1; 32]);
        let pinned = owner.verifying_key();
        let mallory = chain::SigningKey::from_bytes(&[2; 32]);
        let dir = tempfile::tempdir().unwrap();
        let log = signed("t", 4, &owner);
        verify_and_record(
            &files(&dir),
            &t(),
            &log[..3],
            Some(&pinned),
            &ContentHash([3; 32]),
        )
        .unwrap();
        // A forged next entry: a swapped model, re-hashed and re-signed by another key.
        let mut forged = log[3].clone();
        forged.output_weights = ContentHash([66; 32]);
        forged.hash = forged.compute_hash();
        forged.signature = ByteBuf::from(chain::sign(&mallory, &forged).to_vec());
        let err = verify_and_record(
            &files(&dir),
            &t(),
            std::slice::from_ref(&forged),
            Some(&pinned),
            &ContentHash([66; 32]),
        )
        .unwrap_err();
        assert!(
            matches!(err, LogCheckError::NotSigned { round: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("pinned"), "{err}");
        assert_eq!(load_heads(dir.path()).unwrap()["t"].round, 2);
        // The same forgery passes the hash chain alone: the signature is what stops it.
        assert!(verify(&t(), &log[..3], None, None, &ContentHash([3; 32])).is_ok());
        let mut whole = log[..3].to_vec();
        whole.push(forged);
        assert!(verify(&t(), &whole, None, None, &ContentHash([66; 32])).is_ok());
        // A whole chain made under another key, sent to a fresh device with the owner's key.
        assert!(matches!(
            verify(
                &t(),
                &signed("t", 4, &mallory),
                None,
                Some(&pinned),
                &ContentHash([4; 32])
            ),
            Err(LogCheckError::NotSigned { round: 0, .. })
        ));
        // Unsigned entries, to a device that pinned a key.
        assert!(matches!(
            verify(
                &t(),
                &chain("t", 4),
                None,
                Some(&pinned),
                &ContentHash([4; 32])
            ),
            Err(LogCheckError::NotSigned { round: 0, .. })
        ));
        // The genuine entry is accepted.
        verify_and_record(
            &files(&dir),
            &t(),
            &log[3..],
            Some(&pinned),
            &ContentHash([4; 32]),
        )
        .unwrap();
    }

    /// A device far behind verifies each batch, saves its head and names it next; a batch from
    /// round 0 behind a head saved here keeps that head.
    #[test]
    fn catch_up_batches_advance_the_saved_head() {
        let owner = chain::SigningKey::from_bytes(&[1; 32]);
        let pinned = owner.verifying_key();
        let dir = tempfile::tempdir().unwrap();
        let log = signed("t", 10, &owner);
        let next = record_catch_up(&files(&dir), &t(), &log[..4], Some(&pinned)).unwrap();
        assert_eq!(next.hash, log[3].hash);
        let next = record_catch_up(&files(&dir), &t(), &log[4..8], Some(&pinned)).unwrap();
        assert_eq!(next.hash, log[7].hash);
        assert_eq!(saved_head(&files(&dir), Some(&t())), Some(next));
        // From round 0 again (the device checked in for any task): behind the saved head, which
        // stays and is named next.
        let again = record_catch_up(&files(&dir), &t(), &log[..4], Some(&pinned)).unwrap();
        assert_eq!(again.hash, log[7].hash);
        // A batch that does not attach to the saved head is a rewrite.
        assert!(matches!(
            record_catch_up(
                &files(&dir),
                &t(),
                &signed("t", 10, &owner)[9..],
                Some(&pinned)
            ),
            Err(LogCheckError::Rewritten { round: 7, .. })
        ));
        // The rest with the plan.
        verify_and_record(
            &files(&dir),
            &t(),
            &log[8..],
            Some(&pinned),
            &ContentHash([10; 32]),
        )
        .unwrap();
        let err = unknown_head(&t(), &next);
        assert!(matches!(err, LogCheckError::Rewritten { round: 7, .. }));
        assert!(err.to_string().contains(LOG_HEADS_FILE), "{err}");
    }
}
