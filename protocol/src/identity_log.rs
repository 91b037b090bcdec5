//! The wire form of the coordinator's identity log: an append-only, hash-chained record of every
//! account creation, invite use and device identity key, and the checks a device runs on it.
//!
//! Issue 10: the R0 keys of a round with the consistency check are signed with device identity
//! keys, and each client verifies its neighbours' signatures against keys *in this log*. The
//! coordinator publishes the log; a device checks, the way it checks the round log, that the chain
//! is intact, that it extends the head the device saw before (no truncation, no rewriting), and
//! that its own key is in it unchanged ([`verify_identity_log`], [`IdentityLogView`]). A
//! coordinator can still add Sybil accounts, but only in public, and cannot swap a device's key
//! without the device noticing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::ids::ContentHash;

/// The previous hash of the first entry.
pub const IDENTITY_LOG_GENESIS: ContentHash = ContentHash([0u8; 32]);

/// Domain tag of the entry hash.
const DOMAIN: &[u8] = b"cohort-identity-log-v1\0";

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityEvent {
    /// An account was created (OPAQUE registration finished).
    AccountCreated {
        /// The account name.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        account: String,
    },
    /// An invite was used to create an account (the invite's SHA-256, not the code).
    InviteUsed {
        /// SHA-256 of the invite code.
        invite: ContentHash,
        /// The account it created.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        account: String,
    },
    /// A device registered its Ed25519 identity key for an account.
    DeviceKeyRegistered {
        /// The account.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        account: String,
        /// The Ed25519 public key (32 bytes).
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>"
        )]
        key: ByteBuf,
    },
}

/// One entry of the identity log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLogEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// What happened.
    pub event: IdentityEvent,
    /// Unix seconds.
    pub created_at: i64,
    /// The previous entry's hash ([`IDENTITY_LOG_GENESIS`] for the first).
    pub prev: ContentHash,
    /// This entry's hash, [`IdentityLogEntry::compute_hash`].
    pub hash: ContentHash,
}

fn put_bytes(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

impl IdentityLogEntry {
    /// SHA-256 over a domain tag, `seq` (u64 BE), the event (a tag byte 0/1/2, then its fields,
    /// strings and keys length-prefixed with a u64 BE), `created_at` (i64 BE) and `prev`.
    pub fn compute_hash(&self) -> ContentHash {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(self.seq.to_be_bytes());
        match &self.event {
            IdentityEvent::AccountCreated { account } => {
                h.update([0u8]);
                put_bytes(&mut h, account.as_bytes());
            }
            IdentityEvent::InviteUsed { invite, account } => {
                h.update([1u8]);
                h.update(invite.0);
                put_bytes(&mut h, account.as_bytes());
            }
            IdentityEvent::DeviceKeyRegistered { account, key } => {
                h.update([2u8]);
                put_bytes(&mut h, account.as_bytes());
                put_bytes(&mut h, key);
            }
        }
        h.update(self.created_at.to_be_bytes());
        h.update(self.prev.0);
        ContentHash(h.finalize().into())
    }

    /// Builds the entry that follows `prev` (or the first, for `None`), hash filled in.
    pub fn append(prev: Option<&IdentityLogEntry>, event: IdentityEvent, created_at: i64) -> Self {
        let mut e = Self {
            seq: prev.map_or(0, |p| p.seq + 1),
            event,
            created_at,
            prev: prev.map_or(IDENTITY_LOG_GENESIS, |p| p.hash),
            hash: IDENTITY_LOG_GENESIS,
        };
        e.hash = e.compute_hash();
        e
    }
}

/// The head a device remembers: the last entry it verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLogHead {
    /// Its position.
    pub seq: u64,
    /// Its hash.
    pub hash: ContentHash,
}

/// Why an identity log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityLogError {
    /// The log is empty.
    #[error("the identity log is empty; the coordinator must publish at least this device's key")]
    Empty,
    /// An entry's position, link or hash is wrong.
    #[error(
        "the identity log is broken at entry {seq}: {what}; the coordinator rewrote or damaged \
         it, do not take part in its rounds"
    )]
    Broken {
        /// The entry.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The log does not contain the head this device verified before.
    #[error(
        "the identity log does not extend the head this device saw before (entry {seq}); it was \
         truncated or rewritten; do not take part in its rounds"
    )]
    Forked {
        /// The remembered head's position.
        seq: u64,
    },
    /// This device's key is missing or was replaced.
    #[error(
        "this device's identity key for account {account:?} is {what} in the identity log; the \
         coordinator may be substituting keys, do not take part in its rounds"
    )]
    OwnKey {
        /// The account.
        account: String,
        /// "missing" or "replaced".
        what: &'static str,
    },
}

/// An account's current device key, and the position of the log entry that registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredKey {
    /// The position of the `DeviceKeyRegistered` entry.
    pub seq: u64,
    /// The Ed25519 public key.
    pub key: [u8; 32],
}

/// Why a round's roster (the identity-log entry of each index's key) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The roster's length is not the round's size.
    #[error(
        "the round's roster lists {found} identity keys for {expected} clients; the coordinator \
         sent an inconsistent round, refusing it"
    )]
    Length {
        /// The round's size.
        expected: usize,
        /// The roster's length.
        found: usize,
    },
    /// An entry is not the current key of any account in the verified log.
    #[error(
        "the round's roster names identity-log entry {seq}, which is not any account's current \
         device key; the coordinator may be substituting keys, refusing the round"
    )]
    NotACurrentKey {
        /// The entry.
        seq: u64,
    },
    /// One account holds two indices.
    #[error(
        "account {account:?} holds two places in the round; one account may hold one seat, \
         refusing the round"
    )]
    DuplicateAccount {
        /// The account.
        account: String,
    },
    /// This device's own index does not carry its own key.
    #[error("the round places another key at this device's index {index}; refusing the round")]
    NotOwnKey {
        /// The device's 1-based index.
        index: u32,
    },
}

/// What a device knows of the identity log after verifying it: the head to remember and each
/// account's current device key. It is built up incrementally ([`IdentityLogView::extend`]) from
/// the entries the coordinator sends after the head the device holds, and persisted by the device
/// between connections, so a check-in carries only the new entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLogView {
    /// The last entry verified.
    pub head: Option<IdentityLogHead>,
    /// Each account's current device key.
    pub current: BTreeMap<String, RegisteredKey>,
}

impl IdentityLogView {
    /// The account's current device key (its last registration).
    pub fn key_of(&self, account: &str) -> Option<[u8; 32]> {
        self.current.get(account).map(|k| k.key)
    }

    /// Verifies `entries` as the continuation of this view and applies them; on error the view is
    /// unchanged. The entries must continue from the view's head: entries at or before the head
    /// are accepted only if the one *at* the head has the remembered hash (and are skipped), so
    /// a coordinator that resends the whole chain is fine and one that rewrote it is caught.
    /// With `own = Some((account, key))`, the account's current key must be `key` afterwards.
    ///
    /// # Errors
    ///
    /// [`IdentityLogError::Empty`] (no entries and no head), [`IdentityLogError::Broken`],
    /// [`IdentityLogError::Forked`], [`IdentityLogError::OwnKey`].
    pub fn extend(
        &mut self,
        entries: &[IdentityLogEntry],
        own: Option<(&str, &[u8; 32])>,
    ) -> Result<(), IdentityLogError> {
        if entries.is_empty() && self.head.is_none() {
            return Err(IdentityLogError::Empty);
        }
        let mut next = self.clone();
        let mut new = entries;
        if let Some(head) = self.head
            && let Some(first) = entries.first()
            && first.seq <= head.seq
        {
            let at = (head.seq - first.seq) as usize;
            match entries.get(at) {
                Some(e) if e.seq == head.seq && e.hash == head.hash => new = &entries[at + 1..],
                _ => return Err(IdentityLogError::Forked { seq: head.seq }),
            }
        }
        let (mut seq, mut prev) = match next.head {
            Some(h) => (h.seq + 1, h.hash),
            None => (0, IDENTITY_LOG_GENESIS),
        };
        for e in new {
            let broken = |what| IdentityLogError::Broken { seq: e.seq, what };
            if e.seq != seq {
                return Err(broken(
                    "positions are not consecutive from the remembered head",
                ));
            }
            if e.prev != prev {
                return Err(broken("it does not link to the entry before"));
            }
            if e.compute_hash() != e.hash {
                return Err(broken("its hash does not match its contents"));
            }
            if let IdentityEvent::DeviceKeyRegistered { account, key } = &e.event {
                let key: [u8; 32] = key
                    .as_slice()
                    .try_into()
                    .map_err(|_| broken("a device key is not 32 bytes"))?;
                next.current
                    .insert(account.clone(), RegisteredKey { seq: e.seq, key });
            }
            next.head = Some(IdentityLogHead {
                seq: e.seq,
                hash: e.hash,
            });
            seq = e.seq + 1;
            prev = e.hash;
        }
        if let Some((account, key)) = own {
            match next.current.get(account) {
                None => {
                    return Err(IdentityLogError::OwnKey {
                        account: account.to_string(),
                        what: "missing",
                    });
                }
                Some(k) if &k.key != key => {
                    return Err(IdentityLogError::OwnKey {
                        account: account.to_string(),
                        what: "replaced",
                    });
                }
                Some(_) => {}
            }
        }
        *self = next;
        Ok(())
    }

    /// The accounts and keys of a round's roster: `roster[i]` is the identity-log position of
    /// the key of the client with index `i + 1`. Each must be some account's *current* key, each
    /// account may appear once, and `own_index` (1-based) must carry `own_key`.
    ///
    /// # Errors
    ///
    /// [`RosterError`].
    pub fn roster_keys(
        &self,
        roster: &[u64],
        num_clients: usize,
        own_index: u32,
        own_key: &[u8; 32],
    ) -> Result<Vec<[u8; 32]>, RosterError> {
        if roster.len() != num_clients {
            return Err(RosterError::Length {
                expected: num_clients,
                found: roster.len(),
            });
        }
        let by_seq: BTreeMap<u64, (&str, [u8; 32])> = self
            .current
            .iter()
            .map(|(a, k)| (k.seq, (a.as_str(), k.key)))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut keys = Vec::with_capacity(roster.len());
        for &seq in roster {
            let (account, key) = *by_seq
                .get(&seq)
                .ok_or(RosterError::NotACurrentKey { seq })?;
            if !seen.insert(account) {
                return Err(RosterError::DuplicateAccount {
                    account: account.to_string(),
                });
            }
            keys.push(key);
        }
        if keys.get((own_index as usize).wrapping_sub(1)) != Some(own_key) {
            return Err(RosterError::NotOwnKey { index: own_index });
        }
        Ok(keys)
    }
}

/// Verifies a whole identity log from its first entry: positions from 0, links, hashes, 32-byte
/// keys; that it contains `previous` (the head this device verified before) unchanged; and, if
/// `own` is given, that the account's current key is the device's. Returns each account's
/// current key and the new head.
///
/// # Errors
///
/// [`IdentityLogError::Empty`], [`IdentityLogError::Broken`], [`IdentityLogError::Forked`],
/// [`IdentityLogError::OwnKey`].
pub fn verify_identity_log(
    entries: &[IdentityLogEntry],
    previous: Option<IdentityLogHead>,
    own: Option<(&str, &[u8; 32])>,
) -> Result<IdentityLogView, IdentityLogError> {
    let mut view = IdentityLogView::default();
    view.extend(entries, own)?;
    if let Some(head) = previous {
        let found = entries.get(head.seq as usize).map(|e| e.hash);
        if found != Some(head.hash) {
            return Err(IdentityLogError::Forked { seq: head.seq });
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Vec<IdentityLogEntry> {
        let events = [
            IdentityEvent::InviteUsed {
                invite: ContentHash([1; 32]),
                account: "alice".into(),
            },
            IdentityEvent::AccountCreated {
                account: "alice".into(),
            },
            IdentityEvent::DeviceKeyRegistered {
                account: "alice".into(),
                key: ByteBuf::from(vec![0xa1; 32]),
            },
            IdentityEvent::AccountCreated {
                account: "bob".into(),
            },
            IdentityEvent::DeviceKeyRegistered {
                account: "bob".into(),
                key: ByteBuf::from(vec![0xb0; 32]),
            },
        ];
        let mut out: Vec<IdentityLogEntry> = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let next = IdentityLogEntry::append(out.last(), e, 1_700_000_000 + i as i64);
            out.push(next);
        }
        out
    }

    #[test]
    fn entry_hash_follows_the_documented_encoding() {
        // Recomputed by hand from the layout in `compute_hash`'s docs.
        let e = IdentityLogEntry::append(
            None,
            IdentityEvent::AccountCreated {
                account: "a".into(),
            },
            0,
        );
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(0u64.to_be_bytes());
        h.update([0u8]);
        h.update(1u64.to_be_bytes());
        h.update(b"a");
        h.update(0i64.to_be_bytes());
        h.update([0u8; 32]);
        assert_eq!(e.hash.0, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn an_intact_log_gives_each_accounts_keys() {
        let l = log();
        let view = verify_identity_log(&l, None, Some(("alice", &[0xa1; 32]))).unwrap();
        assert_eq!(view.key_of("alice"), Some([0xa1; 32]));
        assert_eq!(view.key_of("bob"), Some([0xb0; 32]));
        assert_eq!(view.head.unwrap().seq, 4);
        // It extends an earlier head.
        let head = IdentityLogHead {
            seq: 2,
            hash: l[2].hash,
        };
        assert!(verify_identity_log(&l, Some(head), None).is_ok());
    }

    #[test]
    fn rewriting_truncating_and_key_substitution_are_detected() {
        let l = log();
        // A changed key with the old hash.
        let mut bad = l.clone();
        bad[2].event = IdentityEvent::DeviceKeyRegistered {
            account: "alice".into(),
            key: ByteBuf::from(vec![0xee; 32]),
        };
        assert!(matches!(
            verify_identity_log(&bad, None, None),
            Err(IdentityLogError::Broken { seq: 2, .. })
        ));
        // Rewritten from entry 2 on, consistently: a device that saw entry 3 notices.
        let mut forked = l[..2].to_vec();
        for e in &l[2..] {
            let event = match &e.event {
                IdentityEvent::DeviceKeyRegistered { account, .. } if account == "alice" => {
                    IdentityEvent::DeviceKeyRegistered {
                        account: "alice".into(),
                        key: ByteBuf::from(vec![0xee; 32]),
                    }
                }
                other => other.clone(),
            };
            let next = IdentityLogEntry::append(forked.last(), event, e.created_at);
            forked.push(next);
        }
        let seen = IdentityLogHead {
            seq: 3,
            hash: l[3].hash,
        };
        assert_eq!(
            verify_identity_log(&forked, Some(seen), None),
            Err(IdentityLogError::Forked { seq: 3 })
        );
        // ...and alice's device sees that its key is not there.
        assert!(matches!(
            verify_identity_log(&forked, None, Some(("alice", &[0xa1; 32]))),
            Err(IdentityLogError::OwnKey {
                what: "replaced",
                ..
            })
        ));
        // A later registration replacing alice's key.
        let mut replaced = l.clone();
        let next = IdentityLogEntry::append(
            replaced.last(),
            IdentityEvent::DeviceKeyRegistered {
                account: "alice".into(),
                key: ByteBuf::from(vec![0xee; 32]),
            },
            9,
        );
        replaced.push(next);
        assert!(matches!(
            verify_identity_log(&replaced, None, Some(("alice", &[0xa1; 32]))),
            Err(IdentityLogError::OwnKey {
                what: "replaced",
                ..
            })
        ));
        // Truncation below the remembered head.
        let head = IdentityLogHead {
            seq: 4,
            hash: l[4].hash,
        };
        assert_eq!(
            verify_identity_log(&l[..3], Some(head), None),
            Err(IdentityLogError::Forked { seq: 4 })
        );
        assert_eq!(
            verify_identity_log(&[], None, None),
            Err(IdentityLogError::Empty)
        );
    }

    #[test]
    fn the_view_grows_incrementally_and_refuses_forks_and_gaps() {
        let l = log();
        let mut view = IdentityLogView::default();
        view.extend(&l[..3], Some(("alice", &[0xa1; 32]))).unwrap();
        assert_eq!(view.head.unwrap().seq, 2);
        assert_eq!(view.key_of("bob"), None);
        // Only the new entries, or the whole chain again: same result.
        let mut resent = view.clone();
        view.extend(&l[3..], Some(("alice", &[0xa1; 32]))).unwrap();
        resent.extend(&l, None).unwrap();
        assert_eq!(view, resent);
        assert_eq!(view.key_of("bob"), Some([0xb0; 32]));
        // Nothing new is fine once a head is known.
        view.extend(&[], None).unwrap();
        // A gap (entry 5 missing) and a rewritten history are refused, leaving the view as it was.
        let before = view.clone();
        let e5 = IdentityLogEntry::append(
            l.last(),
            IdentityEvent::AccountCreated {
                account: "carol".into(),
            },
            5,
        );
        let e6 = IdentityLogEntry::append(
            Some(&e5),
            IdentityEvent::AccountCreated {
                account: "dave".into(),
            },
            6,
        );
        assert!(matches!(
            view.extend(std::slice::from_ref(&e6), None),
            Err(IdentityLogError::Broken { seq: 6, .. })
        ));
        let mut rewritten = l.clone();
        rewritten[4] = IdentityLogEntry::append(
            Some(&l[3]),
            IdentityEvent::DeviceKeyRegistered {
                account: "bob".into(),
                key: ByteBuf::from(vec![0xee; 32]),
            },
            4,
        );
        assert_eq!(
            view.extend(&rewritten, None),
            Err(IdentityLogError::Forked { seq: 4 })
        );
        assert_eq!(view, before);
        // The view survives a round trip through the device's file format.
        let bytes = crate::codec::to_cbor(&view).unwrap();
        assert_eq!(
            crate::codec::from_cbor::<IdentityLogView>(&bytes).unwrap(),
            view
        );
    }

    #[test]
    fn a_roster_must_name_current_keys_of_distinct_accounts_and_this_device() {
        let l = log();
        let view = verify_identity_log(&l, None, None).unwrap();
        // alice's key is entry 2, bob's entry 4.
        assert_eq!(
            view.roster_keys(&[2, 4], 2, 1, &[0xa1; 32]).unwrap(),
            vec![[0xa1; 32], [0xb0; 32]]
        );
        assert_eq!(
            view.roster_keys(&[2], 2, 1, &[0xa1; 32]),
            Err(RosterError::Length {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            view.roster_keys(&[2, 3], 2, 1, &[0xa1; 32]),
            Err(RosterError::NotACurrentKey { seq: 3 })
        );
        assert!(matches!(
            view.roster_keys(&[2, 2], 2, 1, &[0xa1; 32]),
            Err(RosterError::DuplicateAccount { .. })
        ));
        assert_eq!(
            view.roster_keys(&[4, 2], 2, 1, &[0xa1; 32]),
            Err(RosterError::NotOwnKey { index: 1 })
        );
        // A replaced key is no longer current.
        let mut more = l.clone();
        more.push(IdentityLogEntry::append(
            l.last(),
            IdentityEvent::DeviceKeyRegistered {
                account: "bob".into(),
                key: ByteBuf::from(vec![0xbb; 32]),
            },
            5,
        ));
        let view = verify_identity_log(&more, None, None).unwrap();
        assert_eq!(
            view.roster_keys(&[2, 4], 2, 1, &[0xa1; 32]),
            Err(RosterError::NotACurrentKey { seq: 4 })
        );
        assert!(view.roster_keys(&[2, 5], 2, 1, &[0xa1; 32]).is_ok());
    }
}
