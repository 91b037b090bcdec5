//! API tokens: random bearer tokens whose SHA-256 the database keeps (`api_tokens`), each with
//! a name and a role. `serve` writes the first owner token to `STATE/owner-token` (mode 0600)
//! when the HTTP server starts with no token file; `cohort-coordinator owner token` mints more.
//!
//! Roles: an *owner* may read and change everything the API offers; a *viewer* may only read
//! (for dashboards). Contributors' OPAQUE accounts have no API access.
//!
//! `cohort-coordinator owner token list` shows every token (name, role, id, revoked or not);
//! `owner token revoke NAME|ID` revokes ([`revoke`]): the row stays, marked, so a revoked token
//! is never registered again.

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
        // Revocation came later: a database made before it gains the column.
        let has_revoked: bool = c
            .prepare("SELECT 1 FROM pragma_table_info('api_tokens') WHERE name = 'revoked_at'")?
            .exists([])?;
        if !has_revoked {
            c.execute_batch("ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;")?;
        }
        Ok(())
    })
}

/// One token as `owner token list` shows it (never the token itself: only its hash is kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's SHA-256: an id to revoke it by.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: ApiRole,
    /// Unix seconds.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A stored token row: hash, name, role, created, revoked.
type TokenRow = (Vec<u8>, String, String, i64, Option<i64>);

/// Every token, oldest first.
pub fn list(store: &Store) -> Result<Vec<TokenInfo>, StoreError> {
    ensure_tables(store)?;
    let rows: Vec<TokenRow> = store.with_conn(|c| {
        let mut stmt = c.prepare(
            "SELECT token_hash, name, role, created_at, revoked_at FROM api_tokens
             ORDER BY created_at, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    })?;
    rows.into_iter()
        .map(|(h, name, role, created_at, revoked_at)| {
            Ok(TokenInfo {
                id: hex::encode(&h).chars().take(12).collect(),
                name,
                role: ApiRole::parse(&role)?,
                created_at,
                revoked_at,
            })
        })
        .collect()
}

/// Revokes the tokens named `which`, or the one whose id ([`TokenInfo::id`], at least 8 hex
/// digits of its SHA-256) starts with `which`; returns how many were revoked. A revoked token
/// is refused (401) from then on (by a running `serve` within
/// [`crate::http::limit::TOKEN_CACHE_TTL`]) and stays revoked: its row is kept, so the owner
/// token file cannot register it again at the next start.
pub fn revoke(store: &Store, which: &str, now: i64) -> Result<usize, StoreError> {
    ensure_tables(store)?;
    let prefix = (which.len() >= 8 && which.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| which.to_ascii_lowercase());
    store.with_conn(|c| {
        let hashes: Vec<Vec<u8>> = {
            let mut stmt =
                c.prepare("SELECT token_hash, name FROM api_tokens WHERE revoked_at IS NULL")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|(h, name)| {
                    name == which
                        || prefix
                            .as_ref()
                            .is_some_and(|p| hex::encode(h).starts_with(p.as_str()))
                })
                .map(|(h, _)| h)
                .collect()
        };
        let tx = c.transaction()?;
        for h in &hashes {
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?1 WHERE token_hash = ?2",
                params![now, h],
            )?;
        }
        tx.commit()?;
        Ok(hashes.len())
    })
}

/// The SHA-256 of a token, as stored.
pub fn hash(token: &str) -> [u8; 32] {
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
    lookup_hash(store, &hash(token))
}

/// The caller of the token whose SHA-256 is `token_hash`, if any.
pub fn lookup_hash(store: &Store, token_hash: &[u8; 32]) -> Result<Option<Caller>, StoreError> {
    let row: Option<(String, String)> = store.with_conn(|c| {
        Ok(c.query_row(
            "SELECT name, role FROM api_tokens WHERE token_hash = ?1 AND revoked_at IS NULL",
            [token_hash.to_vec()],
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
            if lookup(store, token)?.is_none() {
                tracing::warn!(
                    file = %path.display(),
                    "the owner token in this file was revoked; delete the file and restart \
                     `serve` to mint a new one, or mint one with `cohort-coordinator owner token`"
                );
            }
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
