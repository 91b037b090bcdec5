//! The identity log: an append-only, hash-chained record of every account creation, invite use
//! and device identity key ([`cohort_protocol::identity_log`] defines the entries and the checks
//! devices run on them).
//!
//! Entries are appended in the transaction that creates the account (`append`, called by
//! [`Store::create_account`]), so an account never exists without its entries. The coordinator
//! sends each client of a round with the consistency check the entries after the head it named
//! at check-in ([`entries_after`]) and the identity-log position of every member's key (the
//! round's roster, [`current_keys`]); the clients check their neighbours' signatures against
//! those keys. Accounts created before this table existed have no entries and no device key:
//! they cannot take part in rounds with the consistency check until they enroll again.

use cohort_protocol::{
    ContentHash, IdentityEvent, IdentityLogEntry, IdentityLogHead, RegisteredKey, codec,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::round_log::hash_col;
use crate::store::{Store, StoreError};

/// A device identity key as registered with an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The Ed25519 public key.
    pub key: [u8; 32],
    /// The device's HMAC binding of the key to the account (under its OPAQUE export key).
    pub binding: [u8; 32],
}

/// Appends `event` inside `tx` and returns the new entry.
pub(crate) fn append(
    tx: &Transaction<'_>,
    event: IdentityEvent,
    now: i64,
) -> Result<IdentityLogEntry, StoreError> {
    let last = tx
        .query_row(
            "SELECT seq, entry_hash FROM identity_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, hash_col(r, 1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq as u64 + 1, hash),
        None => (0, cohort_protocol::IDENTITY_LOG_GENESIS),
    };
    let mut entry = IdentityLogEntry {
        seq,
        event,
        created_at: now,
        prev,
        hash: ContentHash([0; 32]),
    };
    entry.hash = entry.compute_hash();
    let event = codec::to_cbor(&entry.event)
        .map_err(|e| StoreError::Corrupt(format!("identity log event does not encode: {e}")))?;
    tx.execute(
        "INSERT INTO identity_log (seq, event, created_at, prev_hash, entry_hash)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            entry.seq as i64,
            event,
            entry.created_at,
            &entry.prev.0[..],
            &entry.hash.0[..]
        ],
    )?;
    Ok(entry)
}

/// Records `key` as `account`'s device key inside `tx` (a `DeviceKeyRegistered` entry, and the
/// key beside the account).
pub(crate) fn register_key(
    tx: &Transaction<'_>,
    account: &str,
    key: &DeviceKey,
    now: i64,
) -> Result<(), StoreError> {
    let entry = append(
        tx,
        IdentityEvent::DeviceKeyRegistered {
            account: account.to_string(),
            key: serde_bytes::ByteBuf::from(key.key.to_vec()),
        },
        now,
    )?;
    tx.execute(
        "INSERT INTO device_keys (username, public_key, binding, log_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (username) DO UPDATE SET public_key = ?2, binding = ?3, log_seq = ?4",
        params![account, &key.key[..], &key.binding[..], entry.seq as i64],
    )?;
    Ok(())
}

/// Registers `key` as `account`'s device key in a transaction of its own (a device that
/// replaces its key). Every device of the account that verified the log before will refuse
/// rounds from then on if the key is not its own: that is how a substituted key is caught
/// (`loopback/tests/identity.rs`).
pub fn replace_device_key(
    store: &Store,
    account: &str,
    key: &DeviceKey,
    now: i64,
) -> Result<(), StoreError> {
    store.with_conn(|c| {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        register_key(&tx, account, key, now)?;
        tx.commit()?;
        Ok(())
    })
}

/// Every entry, oldest first.
pub fn entries(store: &Store) -> Result<Vec<IdentityLogEntry>, StoreError> {
    entries_from(store, 0)
}

/// The entries from sequence number `first` on, oldest first.
pub fn entries_from(store: &Store, first: u64) -> Result<Vec<IdentityLogEntry>, StoreError> {
    store.with_conn(|c| {
        let mut stmt = c.prepare(
            "SELECT seq, event, created_at, prev_hash, entry_hash FROM identity_log
             WHERE seq >= ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([first as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                hash_col(r, 3)?,
                hash_col(r, 4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, event, created_at, prev, hash) = row?;
            let event: IdentityEvent = codec::from_cbor(&event).map_err(|e| {
                StoreError::Corrupt(format!("identity log entry {seq} does not decode: {e}"))
            })?;
            out.push(IdentityLogEntry {
                seq: seq as u64,
                event,
                created_at,
                prev,
                hash,
            });
        }
        Ok(out)
    })
}

/// The identity log held in memory, kept current by reading only the entries appended since
/// the last read ([`IdentityLogCache::refresh`]).
///
/// Rounds with the consistency check need the log at every round (each member is sent the
/// entries after its head, a new device all of them). Reading and decoding the whole table
/// each round cost time and transient memory in proportion to the accounts, at every round;
/// the cache costs one copy of the log (two or three entries an account: its creation, its
/// device key, an invite's use) and a read of the new rows. The log is append-only and hash-chained, so new rows extend the copy; a row that does
/// not chain onto it (the database was replaced under the process) makes it read everything
/// again.
#[derive(Debug, Default)]
pub struct IdentityLogCache {
    entries: std::sync::Mutex<Vec<IdentityLogEntry>>,
}

impl IdentityLogCache {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdentityLogEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the entries appended to `store` since the last refresh and adds them.
    pub fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let held = self.len() as u64;
        let new = entries_from(store, held)?;
        let mut entries = self.lock();
        let chains = |entries: &[IdentityLogEntry], e: &IdentityLogEntry| {
            e.seq == entries.len() as u64
                && e.prev
                    == entries
                        .last()
                        .map_or(cohort_protocol::IDENTITY_LOG_GENESIS, |l| l.hash)
        };
        for e in new {
            // Another refresh may have added some of these meanwhile.
            if e.seq < entries.len() as u64 {
                continue;
            }
            if !chains(&entries, &e) {
                tracing::warn!(
                    seq = e.seq,
                    "the identity log in the database does not extend the one in memory; reading it again"
                );
                drop(entries);
                let all = self::entries(store)?;
                *self.lock() = all;
                return Ok(());
            }
            entries.push(e);
        }
        Ok(())
    }

    /// Calls `f` with the entries held.
    pub fn with<R>(&self, f: impl FnOnce(&[IdentityLogEntry]) -> R) -> R {
        f(&self.lock())
    }
}

/// The entries of `log` after the one at `known` (when `known` is in it with that hash); the
/// whole log otherwise, so a device whose head is not in the chain is shown the chain and
/// detects the fork itself.
pub fn entries_after(
    log: &[IdentityLogEntry],
    known: Option<IdentityLogHead>,
) -> &[IdentityLogEntry] {
    match known {
        Some(h) => match log.get(h.seq as usize) {
            Some(e) if e.hash == h.hash => &log[h.seq as usize + 1..],
            _ => log,
        },
        None => log,
    }
}

/// The current device key of each of `accounts` (`None` for an account without one).
pub fn current_keys(
    store: &Store,
    accounts: &[String],
) -> Result<Vec<Option<RegisteredKey>>, StoreError> {
    store.with_conn(|c| {
        let mut stmt =
            c.prepare("SELECT public_key, log_seq FROM device_keys WHERE username = ?1")?;
        accounts
            .iter()
            .map(|a| {
                Ok(stmt
                    .query_row([a], |r| {
                        Ok(RegisteredKey {
                            key: hash_col(r, 0)?.0,
                            seq: r.get::<_, i64>(1)? as u64,
                        })
                    })
                    .optional()?)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Account;
    use cohort_protocol::{Role, verify_identity_log};

    fn account(name: &str) -> Account {
        Account {
            username: name.into(),
            role: Role::Contributor,
            opaque_record: vec![1],
            created_at: 7,
        }
    }

    /// Accounts with and without keys and an invite: the stored chain verifies as a device
    /// checks it, names each account's key, and survives a reopen; a refused registration
    /// (name taken) leaves no entry behind.
    #[test]
    fn account_creation_appends_to_a_chain_that_devices_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::store::DB_FILE);
        let ka = DeviceKey {
            key: [0xa1; 32],
            binding: [1; 32],
        };
        let kb = DeviceKey {
            key: [0xb2; 32],
            binding: [2; 32],
        };
        {
            let store = Store::open(&path).unwrap();
            let code = [9u8; 32];
            store
                .insert_invite(&code, Role::Contributor, "owner", 1, None)
                .unwrap();
            store
                .create_account(&account("alice"), Some(&code), Some(&ka))
                .unwrap();
            store.create_account(&account("bob"), None, None).unwrap();
            assert!(
                store
                    .create_account(&account("bob"), None, Some(&kb))
                    .is_err()
            );
            store
                .create_account(&account("carol"), None, Some(&kb))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let log = entries(&store).unwrap();
        // alice: invite, account, key; bob: account; carol: account, key.
        assert_eq!(log.len(), 6);
        let view = verify_identity_log(&log, None, Some(("alice", &ka.key))).unwrap();
        assert_eq!(view.key_of("carol"), Some(kb.key));
        assert_eq!(view.key_of("bob"), None);
        let keys = current_keys(&store, &["alice".into(), "bob".into(), "carol".into()]).unwrap();
        assert_eq!(keys[0].map(|k| (k.seq, k.key)), Some((2, ka.key)));
        assert_eq!(keys[1], None);
        assert_eq!(keys[2].map(|k| (k.seq, k.key)), Some((5, kb.key)));
        // What a device with head 2 is sent.
        let head = view_head(&log, 2);
        assert_eq!(entries_after(&log, Some(head)), &log[3..]);
        // A head not in the chain gets the whole chain.
        let stranger = IdentityLogHead {
            seq: 2,
            hash: ContentHash([0; 32]),
        };
        assert_eq!(entries_after(&log, Some(stranger)).len(), 6);
    }

    /// The cache reads only new rows and always equals the table; a table that does not
    /// extend what it holds (another database under the same process) is read again whole.
    #[test]
    fn the_cache_follows_the_table_and_rereads_a_replaced_one() {
        let store = Store::open_in_memory().unwrap();
        let cache = IdentityLogCache::default();
        cache.refresh(&store).unwrap();
        assert!(cache.is_empty());
        for (i, name) in ["ada", "bo", "cy"].iter().enumerate() {
            let key = DeviceKey {
                key: [i as u8 + 1; 32],
                binding: [0; 32],
            };
            store
                .create_account(&account(name), None, Some(&key))
                .unwrap();
            cache.refresh(&store).unwrap();
            let table = entries(&store).unwrap();
            assert_eq!(cache.len(), 2 * (i + 1));
            cache.with(|held| assert_eq!(held, &table[..]));
            assert_eq!(entries_from(&store, 2).unwrap(), &table[2..]);
        }
        // Refreshing with nothing new changes nothing.
        cache.refresh(&store).unwrap();
        assert_eq!(cache.len(), 6);

        // A different database with more entries: its first new row does not chain onto the
        // entries held, so the cache takes the other table whole.
        let other = Store::open_in_memory().unwrap();
        for name in ["dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim"] {
            other.create_account(&account(name), None, None).unwrap();
        }
        cache.refresh(&other).unwrap();
        let table = entries(&other).unwrap();
        cache.with(|held| assert_eq!(held, &table[..]));
        assert_eq!(table.len(), 8);
        assert!(verify_identity_log(&table, None, None).is_ok());
    }

    fn view_head(log: &[IdentityLogEntry], seq: usize) -> IdentityLogHead {
        IdentityLogHead {
            seq: seq as u64,
            hash: log[seq].hash,
        }
    }
}
