//! The model owner's round-log signing key: an Ed25519 key generated when the coordinator first
//! starts on a state directory, kept in [`LOG_KEY_FILE`] there (mode 0600), and used to sign
//! every round-log entry ([`cohort_protocol::chain`]). Its public half is sent with
//! `Authenticated`, and devices pin it at enrollment beside the TLS fingerprint, so a log entry
//! the owner's coordinator did not sign (a forged or re-signed one) is refused by every device.
//!
//! The key must survive restarts (devices pinned it): a restart reads the same file, and a
//! missing file beside an existing round log is not replaced silently, since devices would
//! then refuse every new entry; see [`load_or_generate`].

use std::path::{Path, PathBuf};

use cohort_protocol::chain::SigningKey;
use rand::RngCore;
use thiserror::Error;
use zeroize::Zeroizing;

/// File in the state directory holding the key's 32-byte seed, hex.
pub const LOG_KEY_FILE: &str = "round-log-key";

/// Why the key could not be loaded or made.
#[derive(Debug, Error)]
#[error("the round-log signing key {}: {reason}", path.display())]
pub struct LogKeyError {
    /// The key file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

/// Loads the key of `state_dir`, or generates and saves one when there is none and
/// `may_generate` (the caller's judgement that no device can have pinned an earlier key: the
/// round log is empty, or the log's entries are still unsigned).
pub fn load_or_generate(state_dir: &Path, may_generate: bool) -> Result<SigningKey, LogKeyError> {
    let path = state_dir.join(LOG_KEY_FILE);
    let err = |reason: String| LogKeyError {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|e| {
                err(format!(
                    "the file is corrupt ({e}); restore it from a backup of the state directory \
                     (devices pinned this key and refuse entries signed by another)"
                ))
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_generate {
                return Err(err(
                    "the file is missing, but the round log holds signed entries: devices \
                     pinned the key that signed them and would refuse a new one. Restore the \
                     file from a backup of the state directory"
                        .into(),
                ));
            }
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut());
            let text = Zeroizing::new(hex::encode(seed.as_ref()));
            crate::atomic_file::write_atomically(&path, text.as_bytes(), true)
                .map_err(|e| err(format!("cannot write it: {e}")))?;
            tracing::info!(path = %path.display(), "generated the round-log signing key");
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_generated_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load_or_generate(dir.path(), false).is_err(),
            "not made when refused"
        );
        let key = load_or_generate(dir.path(), true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(LOG_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_generate(dir.path(), false).unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
        std::fs::write(dir.path().join(LOG_KEY_FILE), "zz").unwrap();
        let e = load_or_generate(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains(LOG_KEY_FILE) && e.contains("restore"), "{e}");
    }
}
