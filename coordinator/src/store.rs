//! The coordinator's durable state in one SQLite file: accounts, invites, tasks, rounds,
//! metrics, the round log and the identity log.
//!
//! The store is synchronous: one connection behind a mutex, WAL journal, `synchronous = FULL`
//! (a commit is on disk before the call returns, which is what "durable before acknowledged"
//! needs). Async code calls it through [`AsyncStore`], which runs each call on tokio's blocking
//! pool so that a slow fsync never stalls the QUIC runtime.
//!
//! The schema is versioned with SQLite's `user_version`: [`MIGRATIONS`] lists the steps, and
//! [`Store::open`] applies the missing ones in one transaction each.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use cohort_protocol::{IdentityEvent, Role};
use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;

use crate::identity_log::{self, DeviceKey};
use crate::states::{AttemptState, RoundState, TaskState};

/// SQLite's page cache per connection, in KiB (`PRAGMA cache_size = -N`). Set explicitly so that
/// the coordinator's memory does not depend on the default SQLite was built with (2,000 KiB): a
/// database that grows every round fills its cache once, and then the cache stays this size.
pub const PAGE_CACHE_KIB: i64 = 1024;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "cohort.sqlite3";

/// Schema steps; step `i` brings `user_version` from `i` to `i + 1`. Step 2 adds
/// `round_attempts`: one row per SecAgg+ attempt (a round that aborts is retried under a new
/// round id), so that an attempt abandoned by a crash stays on record after its round is retried
/// and finishes. Step 3 adds the identity log and each account's device key
/// ([`crate::identity_log`]).
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    username      TEXT PRIMARY KEY NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('contributor', 'owner')),
    opaque_record BLOB NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE invites (
    code_hash  BLOB PRIMARY KEY NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('contributor', 'owner')),
    issued_by  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    used_by    TEXT,
    used_at    INTEGER
);
CREATE TABLE tasks (
    id         TEXT PRIMARY KEY NOT NULL,
    definition TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE rounds (
    task         TEXT NOT NULL,
    round        INTEGER NOT NULL,
    state        TEXT NOT NULL,
    participants INTEGER NOT NULL DEFAULT 0,
    dropouts     INTEGER NOT NULL DEFAULT 0,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    metrics      TEXT,
    PRIMARY KEY (task, round)
);
CREATE TABLE metrics (
    task        TEXT NOT NULL,
    round       INTEGER NOT NULL,
    name        TEXT NOT NULL,
    value       REAL NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (task, round, name)
);
CREATE TABLE round_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    task         TEXT NOT NULL,
    round        INTEGER NOT NULL,
    participants INTEGER NOT NULL,
    input_hash   BLOB NOT NULL,
    output_hash  BLOB NOT NULL,
    params       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    prev_hash    BLOB NOT NULL,
    entry_hash   BLOB NOT NULL,
    UNIQUE (task, round)
);
CREATE INDEX round_log_output ON round_log (output_hash);
"#,
    r#"
CREATE TABLE round_attempts (
    task        TEXT NOT NULL,
    round       INTEGER NOT NULL,
    round_id    INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'finished', 'aborted', 'abandoned')),
    selected    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    reason      TEXT,
    PRIMARY KEY (task, round_id)
);
"#,
    r#"
CREATE TABLE identity_log (
    seq        INTEGER PRIMARY KEY NOT NULL,
    event      BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    prev_hash  BLOB NOT NULL,
    entry_hash BLOB NOT NULL
);
CREATE TABLE device_keys (
    username   TEXT PRIMARY KEY NOT NULL REFERENCES accounts (username),
    public_key BLOB NOT NULL,
    binding    BLOB NOT NULL,
    log_seq    INTEGER NOT NULL
);
"#,
    // The model owner's signature of each round-log entry (NULL: not signed yet).
    r#"
ALTER TABLE round_log ADD COLUMN signature BLOB;
"#,
];

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed (disk full, file locked by another process, corrupt file).
    #[error("database error: {0}; check the state directory's disk space and permissions")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer coordinator.
    #[error(
        "the database has schema version {found}, newer than this build's {supported}; run the \
         newer coordinator or restore a backup"
    )]
    SchemaTooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// An account with this name exists already.
    #[error("an account named {0:?} exists already")]
    AccountExists(String),
    /// The invite code is unknown, used or expired.
    #[error(
        "the invite code is unknown, already used or expired; ask the model owner for a new one"
    )]
    InviteInvalid,
    /// A stored value is not what the schema promises (edited by hand?).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task running the call panicked or was cancelled.
    #[error("the database worker failed: {0}")]
    Worker(String),
    /// A task's attempts and its round log disagree in a way start-up cannot repair
    /// ([`Store::reconcile_with_log`]).
    #[error("task {task}: {reason}")]
    Inconsistent {
        /// The task.
        task: String,
        /// What disagrees.
        reason: String,
    },
}

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub username: String,
    /// What it may do.
    pub role: Role,
    /// The serialized OPAQUE `ServerRegistration` (no password, no password hash).
    pub opaque_record: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A stored task definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// The task id.
    pub id: String,
    /// The TOML text, as the owner submitted it.
    pub definition: String,
    /// Lifecycle state.
    pub state: TaskState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// One attempt at a round: a SecAgg+ run under its own round id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    /// The task.
    pub task: String,
    /// The round number within the task.
    pub round: u64,
    /// The SecAgg+ round id of the attempt (unique within the task, across restarts).
    pub round_id: u64,
    /// Running, finished, aborted (below quorum and the like) or abandoned (the coordinator
    /// stopped while it ran).
    pub state: AttemptState,
    /// Clients selected.
    pub selected: u32,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once over.
    pub finished_at: Option<i64>,
    /// Why it aborted or was abandoned.
    pub reason: Option<String>,
}

/// Makes `path` and SQLite's `-wal` and `-shm` files beside it readable by this user only.
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut names = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            names.push(p.into());
        }
        for p in names {
            if p.exists()
                && let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot restrict the database file to its owner");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The attempt a round-log entry names (`round_id` in its JSON parameters), if any.
fn logged_round_id(params: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(params)
        .ok()?
        .get("round_id")?
        .as_u64()
}

/// What [`Store::reconcile_with_log`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Attempts left "running" that the log names: published before the crash, now "finished".
    pub published: usize,
    /// Attempts recorded as "aborted" or "abandoned" that the log names, now "finished".
    pub relabelled: usize,
    /// Attempts left "running" that the log does not name, now "abandoned".
    pub abandoned: usize,
    /// Round rows left "running" whose round is not in the log, now "abandoned".
    pub rounds_abandoned: usize,
}

/// What [`Store::reconcile_with_log`] records as the reason.
pub const ABANDONED_REASON: &str =
    "the coordinator stopped while the round ran; nothing of it was applied";

/// A round's record.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    /// The task.
    pub task: String,
    /// The round number within the task.
    pub round: u64,
    /// The state of the round's latest attempt.
    pub state: RoundState,
    /// Clients in the final survivor set.
    pub participants: u32,
    /// Clients that dropped out.
    pub dropouts: u32,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
    /// JSON metrics of the round, once finished.
    pub metrics: Option<String>,
}

pub(crate) fn role_to_sql(role: Role) -> &'static str {
    match role {
        Role::Contributor => "contributor",
        Role::Owner => "owner",
    }
}

pub(crate) fn role_from_sql(s: &str) -> Result<Role, StoreError> {
    match s {
        "contributor" => Ok(Role::Contributor),
        "owner" => Ok(Role::Owner),
        other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
    }
}

/// The coordinator's database.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: Option<std::path::PathBuf>,
    log_key: std::sync::OnceLock<cohort_protocol::chain::SigningKey>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// The database and its WAL files are made readable by this user only (0600): they hold
    /// the accounts' OPAQUE records.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        #[cfg(unix)]
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            // Created empty with mode 0600 before SQLite opens it; SQLite gives its WAL and
            // shared-memory files the database file's mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Worker(format!("creating {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)?;
        // Before the first statement: a CLI command (`log verify`, `task history`) opening the
        // database while `serve` writes waits for the write instead of failing as "locked".
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let mut store = Self::init(conn)?;
        store.path = Some(path.to_path_buf());
        restrict_to_owner(path);
        Ok(store)
    }

    /// Checks the database file's pages (SQLite's `quick_check`): `Err(StoreError::Corrupt)`
    /// naming what SQLite found when a page is damaged.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        let findings: Vec<String> = self.with_conn(|c| {
            let mut stmt = c.prepare("PRAGMA quick_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        if findings.len() == 1 && findings[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Corrupt(findings.join("; ")))
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Negative: KiB rather than pages.
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: None,
            log_key: std::sync::OnceLock::new(),
        })
    }

    /// Sets the model owner's key that signs every round-log entry appended from now on
    /// ([`crate::log_key`]). Set once; a second call is ignored.
    pub fn set_log_key(&self, key: cohort_protocol::chain::SigningKey) {
        let _ = self.log_key.set(key);
    }

    /// The key round-log entries are signed with, if set.
    pub fn log_key(&self) -> Option<&cohort_protocol::chain::SigningKey> {
        self.log_key.get()
    }

    /// The database file, `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Runs `f` with the connection (for modules that own their own tables, like the round
    /// log, and for tests).
    pub fn with_conn<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- accounts ----

    /// Creates an account; when `invite_hash` is given, consumes that invite in the same
    /// transaction (so an invite is used exactly once, and only by an account that exists), and
    /// registers the device's identity key when given. The identity log records the invite use,
    /// the account and the key in the same transaction.
    pub fn create_account(
        &self,
        account: &Account,
        invite_hash: Option<&[u8; 32]>,
        device_key: Option<&DeviceKey>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(hash) = invite_hash {
            let used = tx.execute(
                "UPDATE invites SET used_by = ?1, used_at = ?2
                 WHERE code_hash = ?3 AND used_by IS NULL
                   AND (expires_at IS NULL OR expires_at > ?2)",
                params![account.username, account.created_at, &hash[..]],
            )?;
            if used != 1 {
                return Err(StoreError::InviteInvalid);
            }
        }
        let inserted = tx.execute(
            "INSERT INTO accounts (username, role, opaque_record, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (username) DO NOTHING",
            params![
                account.username,
                role_to_sql(account.role),
                account.opaque_record,
                account.created_at
            ],
        )?;
        if inserted != 1 {
            return Err(StoreError::AccountExists(account.username.clone()));
        }
        if let Some(hash) = invite_hash {
            identity_log::append(
                &tx,
                IdentityEvent::InviteUsed {
                    invite: cohort_protocol::ContentHash(*hash),
                    account: account.username.clone(),
                },
                account.created_at,
            )?;
        }
        identity_log::append(
            &tx,
            IdentityEvent::AccountCreated {
                account: account.username.clone(),
            },
            account.created_at,
        )?;
        if let Some(key) = device_key {
            identity_log::register_key(&tx, &account.username, key, account.created_at)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Looks an account up by name.
    pub fn account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let row = self
            .lock()
            .query_row(
                "SELECT username, role, opaque_record, created_at FROM accounts WHERE username = ?1",
                [username],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(username, role, opaque_record, created_at)| {
            Ok(Account {
                username,
                role: role_from_sql(&role)?,
                opaque_record,
                created_at,
            })
        })
        .transpose()
    }

    /// Number of accounts with `role`.
    pub fn count_accounts(&self, role: Role) -> Result<u64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FROM accounts WHERE role = ?1",
            [role_to_sql(role)],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    // ---- invites ----

    /// Stores an invite by the SHA-256 of its code (the code itself is never stored).
    pub fn insert_invite(
        &self,
        code_hash: &[u8; 32],
        role: Role,
        issued_by: &str,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO invites (code_hash, role, issued_by, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                &code_hash[..],
                role_to_sql(role),
                issued_by,
                created_at,
                expires_at
            ],
        )?;
        Ok(())
    }

    /// The role an unused, unexpired invite grants; `None` when the code is unknown, used or
    /// expired.
    pub fn invite_role(&self, code_hash: &[u8; 32], now: i64) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = self
            .lock()
            .query_row(
                "SELECT role FROM invites WHERE code_hash = ?1 AND used_by IS NULL
                   AND (expires_at IS NULL OR expires_at > ?2)",
                params![&code_hash[..], now],
                |r| r.get(0),
            )
            .optional()?;
        role.map(|r| role_from_sql(&r)).transpose()
    }

    // ---- tasks ----

    /// Inserts or replaces a task definition.
    pub fn put_task(
        &self,
        id: &str,
        definition: &str,
        state: TaskState,
        now: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO tasks (id, definition, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET definition = ?2, state = ?3, updated_at = ?4",
            params![id, definition, state, now],
        )?;
        Ok(())
    }

    /// Changes a task's state; returns whether the task exists.
    pub fn set_task_state(&self, id: &str, state: TaskState, now: i64) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "UPDATE tasks SET state = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, state, now],
        )? == 1)
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, definition, state, created_at, updated_at FROM tasks WHERE id = ?1",
                [id],
                task_row,
            )
            .optional()?)
    }

    /// All tasks, by id.
    pub fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, definition, state, created_at, updated_at FROM tasks ORDER BY id",
        )?;
        let rows = stmt.query_map([], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- rounds ----

    /// Inserts or replaces a round's record.
    pub fn put_round(&self, round: &RoundRow) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO rounds
               (task, round, state, participants, dropouts, started_at, finished_at, metrics)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                round.task,
                round.round as i64,
                round.state,
                round.participants,
                round.dropouts,
                round.started_at,
                round.finished_at,
                round.metrics
            ],
        )?;
        Ok(())
    }

    /// The rounds of a task, in order.
    pub fn rounds(&self, task: &str) -> Result<Vec<RoundRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT task, round, state, participants, dropouts, started_at, finished_at, metrics
             FROM rounds WHERE task = ?1 ORDER BY round",
        )?;
        let rows = stmt.query_map([task], |r| {
            Ok(RoundRow {
                task: r.get(0)?,
                round: r.get::<_, i64>(1)? as u64,
                state: r.get(2)?,
                participants: r.get(3)?,
                dropouts: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                metrics: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reconciles the rounds and attempts still "running" against the round log, as a
    /// coordinator does at start-up after a crash ([`Store::reconcile_with_log`]). Returns how
    /// many rounds were abandoned.
    pub fn abandon_running_rounds(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.reconcile_with_log(now)?.rounds_abandoned)
    }

    /// Reconciles every task's attempts (running, finished or stopped tasks alike) with its
    /// round log, the record of what was published, in one transaction. The log wins where the
    /// two can be made to agree:
    /// - an attempt whose round id the log names was published: "running" (the process died
    ///   between the log append and the attempt's update), "aborted" or "abandoned" become
    ///   "finished";
    /// - every other attempt still "running" becomes "abandoned" (nothing of it was applied);
    /// - a round row left "running" becomes "finished" when the log holds the round, else
    ///   "abandoned".
    ///
    /// Where they cannot, nothing is changed and the answer is
    /// [`StoreError::Inconsistent`] naming the task, the round and the attempt: an attempt
    /// recorded as finished that the log does not name (the log lost a published round, or
    /// another attempt of the same round is the one logged), or a log entry naming an attempt
    /// of another round.
    pub fn reconcile_with_log(&self, now: i64) -> Result<Reconciled, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // (task, round) -> the attempt the log names (if its params say), and the reverse.
        let mut logged_round: HashMap<(String, u64), Option<u64>> = HashMap::new();
        let mut logged_attempt: HashMap<(String, u64), u64> = HashMap::new();
        {
            let mut stmt = tx.prepare("SELECT task, round, params FROM round_log")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (task, round, params) = row?;
                let round_id = logged_round_id(&params);
                if let Some(id) = round_id {
                    logged_attempt.insert((task.clone(), id), round);
                }
                logged_round.insert((task, round), round_id);
            }
        }
        let attempts: Vec<(String, u64, u64, AttemptState)> = {
            let mut stmt = tx.prepare(
                "SELECT task, round, round_id, state FROM round_attempts ORDER BY task, round_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get(3)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Reconciled::default();
        for (task, round, round_id, state) in attempts {
            let attempt = cohort_task::Attempt::from_round_id(cohort_protocol::RoundId(round_id));
            let inconsistent = |reason: String| StoreError::Inconsistent {
                task: task.clone(),
                reason,
            };
            match logged_attempt.get(&(task.clone(), round_id)) {
                Some(&logged) if logged != round => {
                    return Err(inconsistent(format!(
                        "the round log publishes round {logged} from attempt {round_id} \
                         ({attempt}), which is recorded as an attempt of round {round}"
                    )));
                }
                Some(_) => {
                    if state != AttemptState::Finished {
                        tx.execute(
                            "UPDATE round_attempts SET state = 'finished', finished_at = ?3,
                               reason = NULL WHERE task = ?1 AND round_id = ?2",
                            params![task, round_id as i64, now],
                        )?;
                        if state == AttemptState::Running {
                            out.published += 1;
                        } else {
                            out.relabelled += 1;
                        }
                    }
                }
                None => match state {
                    AttemptState::Finished => {
                        let why = match logged_round.get(&(task.clone(), round)) {
                            Some(Some(other)) => format!(
                                "the round log publishes round {round} from attempt {other}, \
                                 not from {attempt}"
                            ),
                            Some(None) => {
                                format!("the round log's entry for round {round} names no attempt")
                            }
                            None => format!(
                                "the round log has no round {round}: a published round is \
                                 missing from the log (was the database rolled back or edited?)"
                            ),
                        };
                        return Err(inconsistent(format!(
                            "{attempt} (round id {round_id}) is recorded as finished, but {why}"
                        )));
                    }
                    AttemptState::Running => {
                        tx.execute(
                            "UPDATE round_attempts SET state = 'abandoned', finished_at = ?3,
                               reason = ?4 WHERE task = ?1 AND round_id = ?2",
                            params![task, round_id as i64, now, ABANDONED_REASON],
                        )?;
                        out.abandoned += 1;
                    }
                    AttemptState::Aborted | AttemptState::Abandoned => {}
                },
            }
        }
        tx.execute(
            "UPDATE rounds SET state = 'finished', finished_at = ?1
             WHERE state = 'running' AND EXISTS (
               SELECT 1 FROM round_log l WHERE l.task = rounds.task AND l.round = rounds.round)",
            [now],
        )?;
        out.rounds_abandoned = tx.execute(
            "UPDATE rounds SET state = 'abandoned', finished_at = ?1 WHERE state = 'running'",
            [now],
        )?;
        tx.commit()?;
        if out.published > 0 || out.relabelled > 0 {
            tracing::warn!(
                published = out.published,
                relabelled = out.relabelled,
                "attempts the round log names as published were not recorded as finished (the \
                 process died between the log append and the attempt's update); marked finished"
            );
        }
        Ok(out)
    }

    // ---- attempts ----

    /// Records the start of an attempt (state "running").
    pub fn start_attempt(&self, attempt: &AttemptRow) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO round_attempts
               (task, round, round_id, state, selected, started_at, finished_at, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                attempt.task,
                attempt.round as i64,
                attempt.round_id as i64,
                attempt.state,
                attempt.selected,
                attempt.started_at,
                attempt.finished_at,
                attempt.reason
            ],
        )?;
        Ok(())
    }

    /// Ends an attempt with `state` (finished or aborted) and an optional reason.
    pub fn end_attempt(
        &self,
        task: &str,
        round_id: u64,
        state: AttemptState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE round_attempts SET state = ?3, reason = ?4, finished_at = ?5
             WHERE task = ?1 AND round_id = ?2",
            params![task, round_id as i64, state, reason, now],
        )?;
        Ok(())
    }

    /// The attempts of a task, by round id.
    pub fn attempts(&self, task: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT task, round, round_id, state, selected, started_at, finished_at, reason
             FROM round_attempts WHERE task = ?1 ORDER BY round_id",
        )?;
        let rows = stmt.query_map([task], |r| {
            Ok(AttemptRow {
                task: r.get(0)?,
                round: r.get::<_, i64>(1)? as u64,
                round_id: r.get::<_, i64>(2)? as u64,
                state: r.get(3)?,
                selected: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The largest round id any attempt of `task` used, so that a restarted coordinator never
    /// reuses one.
    pub fn last_round_id(&self, task: &str) -> Result<Option<u64>, StoreError> {
        let max: Option<i64> = self.lock().query_row(
            "SELECT MAX(round_id) FROM round_attempts WHERE task = ?1",
            [task],
            |r| r.get(0),
        )?;
        Ok(max.map(|m| m as u64))
    }

    // ---- metrics ----

    /// Records (or overwrites) one named metric of a round.
    pub fn put_metric(
        &self,
        task: &str,
        round: u64,
        name: &str,
        value: f64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO metrics (task, round, name, value, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, round as i64, name, value, now],
        )?;
        Ok(())
    }

    /// A task's metrics as (round, name, value), by round then name.
    pub fn metrics(&self, task: &str) -> Result<Vec<(u64, String, f64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT round, name, value FROM metrics WHERE task = ?1 ORDER BY round, name",
        )?;
        let rows = stmt.query_map([task], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: r.get(0)?,
        definition: r.get(1)?,
        state: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as u32;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

/// The store for async code: every call runs on tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct AsyncStore(pub Arc<Store>);

impl AsyncStore {
    /// Runs `f` on the blocking pool and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, role: Role) -> Account {
        Account {
            username: name.into(),
            role,
            opaque_record: vec![1, 2, 3],
            created_at: 100,
        }
    }

    #[test]
    fn schema_is_migrated_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
            store
                .create_account(&account("ada", Role::Owner), None, None)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.account("ada").unwrap().unwrap().role, Role::Owner);
        let mode: String = store
            .with_conn(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Store::open(&path)
            .unwrap()
            .with_conn(|c| Ok(c.pragma_update(None, "user_version", 99)?))
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn duplicate_account_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store
            .create_account(&account("bo", Role::Contributor), None, None)
            .unwrap();
        assert!(matches!(
            store.create_account(&account("bo", Role::Owner), None, None),
            Err(StoreError::AccountExists(_))
        ));
        assert_eq!(
            store.account("bo").unwrap().unwrap().role,
            Role::Contributor
        );
        assert_eq!(store.count_accounts(Role::Owner).unwrap(), 0);
    }

    #[test]
    fn invite_is_single_use_and_expires() {
        let store = Store::open_in_memory().unwrap();
        let code = [9u8; 32];
        store
            .insert_invite(&code, Role::Contributor, "owner", 0, Some(1_000))
            .unwrap();
        assert_eq!(
            store.invite_role(&code, 10).unwrap(),
            Some(Role::Contributor)
        );
        assert_eq!(store.invite_role(&code, 1_000).unwrap(), None);
        store
            .create_account(&account("a", Role::Contributor), Some(&code), None)
            .unwrap();
        assert_eq!(store.invite_role(&code, 10).unwrap(), None);
        // Second use refused, and the account is not created.
        assert!(matches!(
            store.create_account(&account("b", Role::Contributor), Some(&code), None),
            Err(StoreError::InviteInvalid)
        ));
        assert!(store.account("b").unwrap().is_none());
        // A taken name does not burn the invite.
        let code2 = [8u8; 32];
        store
            .insert_invite(&code2, Role::Contributor, "owner", 0, None)
            .unwrap();
        assert!(
            store
                .create_account(&account("a", Role::Contributor), Some(&code2), None)
                .is_err()
        );
        assert!(store.invite_role(&code2, 10).unwrap().is_some());
    }

    #[test]
    fn tasks_rounds_and_metrics_round_trip() {
        let store = Store::open_in_memory().unwrap();
        store
            .put_task("digits", "id = \"digits\"", TaskState::Created, 5)
            .unwrap();
        assert!(
            store
                .set_task_state("digits", TaskState::Running, 6)
                .unwrap()
        );
        assert!(!store.set_task_state("nope", TaskState::Running, 6).unwrap());
        let t = store.task("digits").unwrap().unwrap();
        assert_eq!(
            (t.state, t.created_at, t.updated_at),
            (TaskState::Running, 5, 6)
        );
        let mut r = RoundRow {
            task: "digits".into(),
            round: 1,
            state: AttemptState::Running,
            participants: 0,
            dropouts: 0,
            started_at: 7,
            finished_at: None,
            metrics: None,
        };
        store.put_round(&r).unwrap();
        r.round = 2;
        store.put_round(&r).unwrap();
        assert_eq!(store.abandon_running_rounds(9).unwrap(), 2);
        let rounds = store.rounds("digits").unwrap();
        assert_eq!(rounds.len(), 2);
        assert!(
            rounds
                .iter()
                .all(|r| r.state == AttemptState::Abandoned && r.finished_at == Some(9))
        );
        store.put_metric("digits", 1, "accuracy", 0.5, 9).unwrap();
        assert_eq!(store.attempts("digits").unwrap(), vec![]);
        store.put_metric("digits", 1, "accuracy", 0.75, 9).unwrap();
        store.put_metric("digits", 1, "loss", 1.5, 9).unwrap();
        assert_eq!(
            store.metrics("digits").unwrap(),
            vec![(1, "accuracy".into(), 0.75), (1, "loss".into(), 1.5)]
        );
    }

    /// Issue 14: a crash between the round-log append and the attempt's update labelled a
    /// published round "abandoned". At start-up the attempt whose round id the log names is
    /// finished; the others still running are abandoned.
    #[test]
    fn a_published_attempt_left_running_is_reconciled_as_finished() {
        let store = Store::open_in_memory().unwrap();
        let attempt = |round, round_id| AttemptRow {
            task: "t".into(),
            round,
            round_id,
            state: AttemptState::Running,
            selected: 4,
            started_at: 5,
            finished_at: None,
            reason: None,
        };
        store.start_attempt(&attempt(1, 1_000_001)).unwrap();
        let entry = |round: u64, input: u8, params: String| crate::round_log::NewLogEntry {
            task: cohort_protocol::TaskId("t".into()),
            round: cohort_protocol::RoundId(round),
            participants: 4,
            input_weights: cohort_protocol::ContentHash([input; 32]),
            output_weights: cohort_protocol::ContentHash([input + 1; 32]),
            params: params.into_bytes(),
            created_at: 6,
        };
        store.round_log().append(entry(0, 0, "{}".into())).unwrap();
        store
            .round_log()
            .append(entry(1, 1, r#"{"round_id":1000001}"#.into()))
            .unwrap();
        store.start_attempt(&attempt(2, 2_000_001)).unwrap();
        assert_eq!(store.abandon_running_rounds(9).unwrap(), 0);
        let states: Vec<_> = store
            .attempts("t")
            .unwrap()
            .into_iter()
            .map(|a| (a.round_id, a.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (1_000_001, AttemptState::Finished),
                (2_000_001, AttemptState::Abandoned)
            ]
        );
    }

    /// The page cache is bounded explicitly, on every connection (issue 14's soak).
    #[test]
    fn the_page_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            Store::open_in_memory().unwrap(),
            Store::open(&dir.path().join(DB_FILE)).unwrap(),
        ] {
            let size: i64 = store
                .with_conn(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(size, -PAGE_CACHE_KIB);
        }
    }

    #[test]
    fn database_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let store = Store::open(&path).unwrap();
        store.quick_check().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn attempts_are_kept_per_round_id_and_abandoned_on_restart() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.last_round_id("t").unwrap(), None);
        let attempt = |round, round_id| AttemptRow {
            task: "t".into(),
            round,
            round_id,
            state: AttemptState::Running,
            selected: 12,
            started_at: 5,
            finished_at: None,
            reason: None,
        };
        store.start_attempt(&attempt(1, 1_000_001)).unwrap();
        store
            .end_attempt(
                "t",
                1_000_001,
                AttemptState::Aborted,
                Some("below quorum"),
                6,
            )
            .unwrap();
        store.start_attempt(&attempt(1, 1_000_002)).unwrap();
        store.round_log().append(log_entry(0, None)).unwrap();
        store
            .round_log()
            .append(log_entry(1, Some(1_000_002)))
            .unwrap();
        store
            .end_attempt("t", 1_000_002, AttemptState::Finished, None, 7)
            .unwrap();
        store.start_attempt(&attempt(2, 2_000_003)).unwrap();
        assert_eq!(store.abandon_running_rounds(8).unwrap(), 0);
        let states: Vec<_> = store
            .attempts("t")
            .unwrap()
            .into_iter()
            .map(|a| (a.round_id, a.state, a.reason, a.finished_at))
            .collect();
        assert_eq!(
            states,
            vec![
                (
                    1_000_001,
                    AttemptState::Aborted,
                    Some("below quorum".into()),
                    Some(6)
                ),
                (1_000_002, AttemptState::Finished, None, Some(7)),
                (
                    2_000_003,
                    AttemptState::Abandoned,
                    Some(ABANDONED_REASON.into()),
                    Some(8)
                ),
            ]
        );
        assert_eq!(store.last_round_id("t").unwrap(), Some(2_000_003));
        assert_eq!(store.last_round_id("u").unwrap(), None);
    }

    /// Round `round` of task "t" in the log: its input is round − 1's output; `round_id` the
    /// attempt that published it.
    fn log_entry(round: u64, round_id: Option<u64>) -> crate::round_log::NewLogEntry {
        crate::round_log::NewLogEntry {
            task: cohort_protocol::TaskId("t".into()),
            round: cohort_protocol::RoundId(round),
            participants: 4,
            input_weights: cohort_protocol::ContentHash([round as u8; 32]),
            output_weights: cohort_protocol::ContentHash([round as u8 + 1; 32]),
            params: round_id
                .map_or_else(|| "{}".into(), |id| format!(r#"{{"round_id":{id}}}"#))
                .into_bytes(),
            created_at: 6,
        }
    }

    fn attempt_row(round: u64, round_id: u64, state: AttemptState) -> AttemptRow {
        AttemptRow {
            task: "t".into(),
            round,
            round_id,
            state,
            selected: 4,
            started_at: 5,
            finished_at: None,
            reason: None,
        }
    }

    fn states(store: &Store) -> Vec<(u64, AttemptState)> {
        store
            .attempts("t")
            .unwrap()
            .into_iter()
            .map(|a| (a.round_id, a.state))
            .collect()
    }

    /// Issue 14, item 4: start-up reconciles every task's attempts with its log, whatever the
    /// task's state. An attempt the log names that was recorded as aborted or abandoned (an
    /// older coordinator labelled a crash between the log append and the attempt's update
    /// "abandoned") is finished.
    #[test]
    fn an_attempt_the_log_names_is_finished_whatever_it_was_labelled() {
        let store = Store::open_in_memory().unwrap();
        store
            .put_task("t", "id = \"t\"", TaskState::Finished, 1)
            .unwrap();
        store.round_log().append(log_entry(0, None)).unwrap();
        store
            .start_attempt(&attempt_row(1, 1_000_001, AttemptState::Aborted))
            .unwrap();
        store
            .start_attempt(&attempt_row(1, 1_000_002, AttemptState::Abandoned))
            .unwrap();
        store
            .round_log()
            .append(log_entry(1, Some(1_000_002)))
            .unwrap();
        let done = store.reconcile_with_log(9).unwrap();
        assert_eq!(
            done,
            Reconciled {
                relabelled: 1,
                ..Reconciled::default()
            }
        );
        assert_eq!(
            states(&store),
            vec![
                (1_000_001, AttemptState::Aborted),
                (1_000_002, AttemptState::Finished)
            ]
        );
        // Reconciling again changes nothing.
        assert_eq!(store.reconcile_with_log(10).unwrap(), Reconciled::default());
    }

    /// An attempt recorded as finished that the log does not name cannot be repaired: the log
    /// lost a published round (or another attempt is the one logged). Start-up stops with an
    /// error naming the task, the round and the attempt, and changes nothing.
    #[test]
    fn a_finished_attempt_the_log_does_not_name_is_an_error_naming_it() {
        let store = Store::open_in_memory().unwrap();
        store.round_log().append(log_entry(0, None)).unwrap();
        store
            .start_attempt(&attempt_row(1, 1_000_001, AttemptState::Finished))
            .unwrap();
        store
            .start_attempt(&attempt_row(2, 2_000_001, AttemptState::Running))
            .unwrap();
        let err = store.reconcile_with_log(9).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, StoreError::Inconsistent { task, .. } if task == "t"),
            "{err:?}"
        );
        assert!(text.contains("round 1, attempt 1"), "{text}");
        assert!(text.contains("the round log has no round 1"), "{text}");
        // Nothing was changed: the running attempt is still running.
        assert_eq!(
            states(&store),
            vec![
                (1_000_001, AttemptState::Finished),
                (2_000_001, AttemptState::Running)
            ]
        );

        // Two attempts of one round recorded as finished: the log names only one.
        let store = Store::open_in_memory().unwrap();
        store.round_log().append(log_entry(0, None)).unwrap();
        store
            .start_attempt(&attempt_row(1, 1_000_001, AttemptState::Finished))
            .unwrap();
        store
            .start_attempt(&attempt_row(1, 1_000_002, AttemptState::Finished))
            .unwrap();
        store
            .round_log()
            .append(log_entry(1, Some(1_000_002)))
            .unwrap();
        let text = store.reconcile_with_log(9).unwrap_err().to_string();
        assert!(
            text.contains("publishes round 1 from attempt 1000002"),
            "{text}"
        );
    }

    /// A log entry that names an attempt recorded under another round cannot be repaired.
    #[test]
    fn a_log_entry_naming_an_attempt_of_another_round_is_an_error() {
        let store = Store::open_in_memory().unwrap();
        store.round_log().append(log_entry(0, None)).unwrap();
        store
            .start_attempt(&attempt_row(2, 1_000_001, AttemptState::Finished))
            .unwrap();
        store
            .round_log()
            .append(log_entry(1, Some(1_000_001)))
            .unwrap();
        let text = store.reconcile_with_log(9).unwrap_err().to_string();
        assert!(
            text.contains("task t: the round log publishes round 1 from attempt 1000001"),
            "{text}"
        );
        assert!(text.contains("attempt of round 2"), "{text}");
    }
}
