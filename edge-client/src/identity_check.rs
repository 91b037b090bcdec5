//! The device's side of the identity log: its identity key, the log it has verified, and the
//! keys it checks a round's signatures against.
//!
//! The identity key is an Ed25519 key derived (HKDF-SHA256) from the device secret, which is
//! sealed under the OPAQUE export key ([`crate::credentials`]): only a login with the password
//! recovers it, and the coordinator never sees it. Its public half is registered with the
//! account at enrollment, bound to it by an HMAC under the export key.
//!
//! In a round with the consistency check, the round config carries the identity log's entries
//! after the head this device verified before, and the roster (the log position of each index's
//! key). The device extends its verified view of the log with them
//! ([`IdentityLogView::extend`]: the chain is intact, continues the remembered head, and still
//! holds this device's own key unchanged), saves it ([`IDENTITY_VIEW_FILE`]), and maps the roster
//! to keys ([`IdentityLogView::roster_keys`]: each a current key of a distinct account, its own
//! index carrying its own key). Those keys are the only ones it accepts R0 and R2.5 signatures
//! from, so a coordinator cannot substitute keys without the device noticing, and every key it
//! uses is public in the log.

use std::path::{Path, PathBuf};

use cohort_aggregation::secagg::{IdentityDirectory, SigningKey, VerifyingKey};
use cohort_protocol::{
    ClientIndex, IdentityLogError, IdentityLogHead, IdentityLogView, RosterError, RoundConfig,
};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

/// File in the state directory that holds the verified view of the identity log.
pub const IDENTITY_VIEW_FILE: &str = "identity-log.json";

const IDENTITY_INFO: &[u8] = b"cohort-device-identity-key-v1";

/// Why a round's identity keys were refused.
#[derive(Debug, Error)]
pub enum IdentityCheckError {
    /// The identity log is broken, rewritten, or no longer holds this device's key. The
    /// coordinator is misbehaving; not a condition to retry.
    #[error(
        "{0}. If the coordinator's state was reset on purpose, delete {file} to trust its new \
         identity log",
        file = IDENTITY_VIEW_FILE
    )]
    Log(#[from] IdentityLogError),
    /// The round's roster does not match the verified log.
    #[error(transparent)]
    Roster(#[from] RosterError),
    /// A key in the log is not an Ed25519 public key.
    #[error(
        "the identity key of index {0} in the identity log is not an Ed25519 public key; \
         refusing the round"
    )]
    BadKey(u32),
    /// The view file could not be read or written.
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

impl IdentityCheckError {
    /// Whether a later round may succeed: a roster that does not match is refused round by
    /// round; a broken or rewritten log ends participation until someone looks at it.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Roster(_) | Self::BadKey(_))
    }
}

/// The device's identity key, derived from its device secret.
pub fn identity_key(device_secret: &[u8; 32]) -> SigningKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, device_secret)
        .expand(IDENTITY_INFO, seed.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    SigningKey::from_bytes(&seed)
}

/// The view file of a state directory.
pub fn view_path(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_VIEW_FILE)
}

/// The verified view; empty when the device has verified no identity log yet.
pub fn load_view(state_dir: &Path) -> Result<IdentityLogView, IdentityCheckError> {
    let path = view_path(state_dir);
    let io = |action, reason: String| IdentityCheckError::Io {
        action,
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            io(
                "parsing",
                format!("{e} (the file is corrupt; delete it to verify the log afresh)"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IdentityLogView::default()),
        Err(e) => Err(io("reading", e.to_string())),
    }
}

/// The head to name at check-in.
pub fn saved_head(state_dir: &Path) -> Option<IdentityLogHead> {
    load_view(state_dir).ok().and_then(|v| v.head)
}

fn save_view(state_dir: &Path, view: &IdentityLogView) -> Result<(), IdentityCheckError> {
    let path = view_path(state_dir);
    let json = serde_json::to_vec(view).map_err(|e| IdentityCheckError::Io {
        action: "encoding",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    cohort_net::atomic_file::write_atomically(&path, &json, false).map_err(|e| {
        IdentityCheckError::Io {
            action: "writing",
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })
}

/// Checks the identity part of `config` for the device `account` with `identity`, saves the
/// extended view, and returns the directory to check the round's signatures with.
///
/// # Errors
///
/// [`IdentityCheckError`].
pub fn round_directory(
    state_dir: &Path,
    config: &RoundConfig,
    account: &str,
    identity: &SigningKey,
) -> Result<IdentityDirectory, IdentityCheckError> {
    let own = identity.verifying_key().to_bytes();
    let mut view = load_view(state_dir)?;
    let before = view.head;
    view.extend(&config.identity_log, Some((account, &own)))?;
    if view.head != before {
        save_view(state_dir, &view)?;
    }
    let keys = view.roster_keys(
        &config.roster,
        config.params.num_clients as usize,
        config.your_index.0,
        &own,
    )?;
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let index = i as u32 + 1;
            VerifyingKey::from_bytes(k)
                .map(|key| (ClientIndex(index), key))
                .map_err(|_| IdentityCheckError::BadKey(index))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_protocol::{IdentityEvent, IdentityLogEntry};
    use serde_bytes::ByteBuf;

    fn round_config(n: u32) -> RoundConfig {
        let params = cohort_aggregation::secagg::recommended_params(
            n.max(3),
            4,
            cohort_protocol::EncodingParams {
                clip: 1.0,
                value_bits: 16,
                max_weight: 1,
                ring_bits: 32,
            },
            0.05,
            0.1,
        )
        .unwrap();
        let mut params = params;
        params.num_clients = n;
        RoundConfig {
            round_id: cohort_protocol::RoundId(1),
            your_index: ClientIndex(1),
            params,
            model: cohort_protocol::ContentHash([0; 32]),
            evaluate: false,
            roster: Vec::new(),
            identity_log: Vec::new(),
        }
    }

    #[test]
    fn the_identity_key_is_a_function_of_the_device_secret() {
        let a = identity_key(&[1; 32]);
        assert_eq!(a.to_bytes(), identity_key(&[1; 32]).to_bytes());
        assert_ne!(a.verifying_key(), identity_key(&[2; 32]).verifying_key());
    }

    fn registered(
        prev: Option<&IdentityLogEntry>,
        account: &str,
        key: &SigningKey,
    ) -> IdentityLogEntry {
        IdentityLogEntry::append(
            prev,
            IdentityEvent::DeviceKeyRegistered {
                account: account.into(),
                key: ByteBuf::from(key.verifying_key().to_bytes().to_vec()),
            },
            1,
        )
    }

    /// The view is saved between rounds, so the second round carries only the new entries; a
    /// coordinator that swaps this device's key, or rewrites the log, is refused.
    #[test]
    fn rounds_extend_the_saved_view_and_substitution_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = identity_key(&[1; 32]);
        let bob = identity_key(&[2; 32]);
        let e0 = registered(None, "me", &me);
        let e1 = registered(Some(&e0), "bob", &bob);
        let mut config = round_config(2);
        config.params.consistency_check = true;
        config.roster = vec![0, 1];
        config.identity_log = vec![e0.clone(), e1.clone()];
        let dir1 = round_directory(dir.path(), &config, "me", &me).unwrap();
        assert_eq!(dir1.get(ClientIndex(2)), Some(&bob.verifying_key()));
        assert_eq!(saved_head(dir.path()).unwrap().seq, 1);
        // Next round: one new member, only its entry is sent.
        let carol = identity_key(&[3; 32]);
        let e2 = registered(Some(&e1), "carol", &carol);
        let mut config = round_config(3);
        config.params.consistency_check = true;
        config.roster = vec![1, 0, 2];
        config.your_index = ClientIndex(2);
        config.identity_log = vec![e2.clone()];
        let dir2 = round_directory(dir.path(), &config, "me", &me).unwrap();
        assert_eq!(dir2.get(ClientIndex(3)), Some(&carol.verifying_key()));
        // The coordinator registers another key for "me" and uses it: refused, view unchanged.
        let evil = identity_key(&[9; 32]);
        let e3 = registered(Some(&e2), "me", &evil);
        config.identity_log = vec![e3];
        config.roster = vec![1, 3, 2];
        assert!(matches!(
            round_directory(dir.path(), &config, "me", &me),
            Err(IdentityCheckError::Log(IdentityLogError::OwnKey { .. }))
        ));
        assert_eq!(saved_head(dir.path()).unwrap().seq, 2);
        // A roster naming a key entry that is not in the log is refused.
        config.identity_log = Vec::new();
        config.roster = vec![1, 0, 7];
        assert!(matches!(
            round_directory(dir.path(), &config, "me", &me),
            Err(IdentityCheckError::Roster(RosterError::NotACurrentKey {
                seq: 7
            }))
        ));
        // A rewritten history (bob's entry replaced) is refused against the saved head.
        let forged1 = registered(Some(&e0), "bob", &evil);
        let forged2 = registered(Some(&forged1), "carol", &carol);
        config.identity_log = vec![e0, forged1, forged2];
        config.roster = vec![1, 0, 2];
        let err = round_directory(dir.path(), &config, "me", &me).unwrap_err();
        assert!(matches!(
            err,
            IdentityCheckError::Log(IdentityLogError::Forked { seq: 2 })
        ));
        assert!(!err.retryable());
        assert!(err.to_string().contains(IDENTITY_VIEW_FILE));
    }
}
