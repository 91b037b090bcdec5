//! API tokens: random bearer tokens whose SHA-256 the database keeps (`api_tokens`), each with
//! a name and a role. `serve` writes the first owner token to `STATE/owner-token` (mode 0600)
//! when the HTTP server starts with no token file; `cohort-coordinator owner token` mints more.
//!
//! Roles: an *owner* may read and change everything the API offers; a *viewer* may only read
//! (for dashboards). Contributors' OPAQUE accounts have no API access.

use std::path::Path;

use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// File name of the first owner token in the state directory.
pub const OWNER_TOKEN_FILE: &str = "owner-token";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Read and change.
    Owner,
    /// Read only.
    Viewer,
}

impl ApiRole {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Owner => "owner",
            ApiRole::Viewer => "viewer",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "owner" => Ok(ApiRole::Owner),
            "viewer" => Ok(ApiRole::Viewer),
            other => Err(StoreError::Corrupt(format!("unknown API role {other:?}"))),
        }
    }
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: ApiRole,
}

/// Creates the API's tables if they do not exist (they belong to this module, like the
/// round log's to `round_log`).
pub fn ensure_tables(store: &Store) -> Result<(), StoreError> {
    store.with_conn(|c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS api_tokens (
                 token_hash BLOB PRIMARY KEY NOT NULL,
                 name       TEXT NOT NULL,
                 role       TEXT NOT NULL CHECK (role IN ('owner', 'viewer')),
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS api_audit (
                 seq     INTEGER PRIMARY KEY AUTOINCREMENT,
                 at      INTEGER NOT NULL,
                 actor   TEXT NOT NULL,
                 action  TEXT NOT NULL,
                 target  TEXT NOT NULL,
                 outcome TEXT NOT NULL
             );",
        )?;
        Ok(())
    })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Mints a token named `name` with `role`; returns it (only its hash is stored).
pub fn mint(store: &Store, name: &str, role: ApiRole, now: i64) -> Result<String, StoreError> {
    ensure_tables(store)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("cohort_{}", hex::encode(raw));
    register(store, &token, name, role, now)?;
    Ok(token)
}

fn register(
    store: &Store,
    token: &str,
    name: &str,
    role: ApiRole,
    now: i64,
) -> Result<(), StoreError> {
    store.with_conn(|c| {
        c.execute(
            "INSERT OR IGNORE INTO api_tokens (token_hash, name, role, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![hash(token).to_vec(), name, role.as_str(), now],
        )?;
        Ok(())
    })
}

/// The caller a token belongs to, if any.
pub fn lookup(store: &Store, token: &str) -> Result<Option<Caller>, StoreError> {
    let row: Option<(String, String)> = store.with_conn(|c| {
        Ok(c.query_row(
            "SELECT name, role FROM api_tokens WHERE token_hash = ?1",
            [hash(token).to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
    })?;
    row.map(|(name, role)| {
        Ok(Caller {
            name,
            role: ApiRole::parse(&role)?,
        })
    })
    .transpose()
}

/// The first owner token: when `STATE/owner-token` does not exist, mints an owner token
/// named "owner", writes it there with mode 0600 and returns it; otherwise makes sure the
/// token in the file is registered (a database restored from a backup) and returns `None`.
pub fn ensure_owner_token_file(
    state_dir: &Path,
    store: &Store,
    now: i64,
) -> Result<Option<String>, TokenFileError> {
    ensure_tables(store)?;
    let path = state_dir.join(OWNER_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenFileError::Empty(path.display().to_string()));
            }
            register(store, token, "owner", ApiRole::Owner, now)?;
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = mint(store, "owner", ApiRole::Owner, now)?;
            // Atomically, so that a crash never leaves half a token to be registered at the
            // next start; never over a file that appeared meanwhile.
            cohort_net::atomic_file::create_atomically(
                &path,
                format!("{token}\n").as_bytes(),
                true,
            )
            .map_err(|source| TokenFileError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Some(token))
        }
        Err(source) => Err(TokenFileError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Why the owner token file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file could not be read or written.
    #[error("owner token file {path}: {source}; check the state directory's permissions")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error(
        "owner token file {0} is empty; delete it and restart `serve` to mint a new one, or \
         mint one with `cohort-coordinator owner token`"
    )]
    Empty(String),
}
