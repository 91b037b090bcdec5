//! The edge client's credentials file, and the device secret sealed under the OPAQUE export key.
//!
//! `credentials.json` in the state directory holds the username, the Argon2 parameters the
//! password is stretched with (they must not change after enrollment), the coordinator's pinned
//! certificate fingerprint, and a *sealed device secret*. It never holds the password.
//!
//! The device secret is 32 random bytes made at enrollment, for keys the device needs later
//! (an identity key for the active-adversary SecAgg+ signatures, encryption of cached data). It
//! is sealed with ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the OPAQUE *export
//! key*, which only a client that knows the password can compute: registration and every login
//! yield the same export key, and the coordinator never sees it. So a stolen state directory
//! reveals the username but not the device secret, and a successful login unseals it.

use std::fs;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use cohort_net::opaque_suite::KsfParams;
use hkdf::Hkdf;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::host::SecretStore;

/// File name inside the state directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";

const SEAL_INFO: &[u8] = b"cohort-device-secret-v1";

/// Why the credentials could not be read, written or opened.
#[derive(Debug, Error)]
pub enum CredentialsError {
    /// The file system failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path} is corrupt ({reason}); enroll again")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The host's secret store failed.
    #[error("the secret store failed: {0}")]
    Store(#[from] crate::host::HostError),
    /// The sealed device secret did not open under this export key.
    #[error(
        "the device secret cannot be opened with this login; was the account re-enrolled elsewhere?"
    )]
    SealBroken,
}

/// What the device keeps about its account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The Argon2id parameters the password is stretched with.
    pub ksf: KsfParams,
    /// The coordinator's certificate fingerprint (hex) pinned at enrollment, if pinning is used.
    pub server_fingerprint: Option<String>,
    /// Hex of the 12-byte nonce followed by the ChaCha20-Poly1305 ciphertext of the device
    /// secret.
    pub sealed_device_secret: String,
    /// The model owner's round-log signing key (Ed25519, hex), pinned at enrollment beside the
    /// certificate fingerprint: every round-log entry this device accepts must be signed by it
    /// ([`crate::log_check`]). `None` for devices enrolled before coordinators had one; they
    /// pin the key at their next login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_key: Option<String>,
}

fn seal_key(export_key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, export_key)
        .expand(SEAL_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

impl Credentials {
    /// A fresh device secret (32 bytes from the operating system).
    pub fn new_device_secret() -> Zeroizing<[u8; 32]> {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret.as_mut());
        secret
    }

    /// New credentials with `secret` ([`Credentials::new_device_secret`]) sealed under
    /// `export_key`.
    pub fn new(
        username: &str,
        ksf: KsfParams,
        server_fingerprint: Option<String>,
        export_key: &[u8],
        secret: &[u8; 32],
    ) -> Self {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(seal_key(export_key).as_ref()));
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_slice(),
                    aad: username.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of 32 bytes cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ct);
        Self {
            username: username.to_string(),
            ksf,
            server_fingerprint,
            sealed_device_secret: hex::encode(sealed),
            log_key: None,
        }
    }

    /// The pinned round-log key, if any.
    pub fn log_verifying_key(
        &self,
    ) -> Result<Option<cohort_protocol::chain::VerifyingKey>, CredentialsError> {
        let Some(text) = &self.log_key else {
            return Ok(None);
        };
        parse_log_key(text)
            .map(Some)
            .ok_or_else(|| CredentialsError::Corrupt {
                path: CREDENTIALS_FILE.into(),
                reason: "log_key is not an Ed25519 public key in hex".into(),
            })
    }

    /// Opens the device secret with the export key of a successful login.
    pub fn unseal_device_secret(
        &self,
        export_key: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CredentialsError> {
        let sealed =
            hex::decode(&self.sealed_device_secret).map_err(|_| CredentialsError::SealBroken)?;
        if sealed.len() < 12 {
            return Err(CredentialsError::SealBroken);
        }
        let (nonce, ct) = sealed.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(seal_key(export_key).as_ref()));
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: self.username.as_bytes(),
                    },
                )
                .map_err(|_| CredentialsError::SealBroken)?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(CredentialsError::SealBroken);
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }

    /// Loads `state_dir/credentials.json`; `None` when the device has not enrolled.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, CredentialsError> {
        let path = state_dir.join(CREDENTIALS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CredentialsError::Io {
                    action: "reading",
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CredentialsError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Loads the credentials from a secret store (key [`CREDENTIALS_FILE`]); `None` when the
    /// device has not enrolled.
    pub fn load_from(store: &dyn SecretStore) -> Result<Option<Self>, CredentialsError> {
        let Some(bytes) = store.load(CREDENTIALS_FILE)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CredentialsError::Corrupt {
                path: format!("secret {CREDENTIALS_FILE}"),
                reason: e.to_string(),
            })
    }

    /// Saves the credentials in a secret store (key [`CREDENTIALS_FILE`]).
    pub fn save_to(&self, store: &dyn SecretStore) -> Result<(), CredentialsError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| CredentialsError::Corrupt {
            path: format!("secret {CREDENTIALS_FILE}"),
            reason: e.to_string(),
        })?;
        Ok(store.store(CREDENTIALS_FILE, &json)?)
    }

    /// Writes `state_dir/credentials.json` (mode 0600, atomically).
    pub fn save(&self, state_dir: &Path) -> Result<(), CredentialsError> {
        let path = state_dir.join(CREDENTIALS_FILE);
        let io = |action, source| CredentialsError::Io {
            action,
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(|e| io("creating the directory of", e))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| CredentialsError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        cohort_net::atomic_file::write_atomically(&path, &json, true)
            .map_err(|e| io("writing", e))?;
        Ok(())
    }
}

/// An Ed25519 public key from 64 hex digits (or 32 raw bytes, [`parse_log_key_bytes`]).
pub fn parse_log_key(text: &str) -> Option<cohort_protocol::chain::VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
    cohort_protocol::chain::VerifyingKey::from_bytes(&bytes).ok()
}

/// An Ed25519 public key from its 32 bytes, as `Authenticated` carries it.
pub fn parse_log_key_bytes(bytes: &[u8]) -> Option<cohort_protocol::chain::VerifyingKey> {
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    cohort_protocol::chain::VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_secret_opens_only_with_the_export_key() {
        let secret = Credentials::new_device_secret();
        let creds = Credentials::new("ada", KsfParams::default(), None, &[7; 64], &secret);
        assert_eq!(*creds.unseal_device_secret(&[7; 64]).unwrap(), *secret);
        assert!(matches!(
            creds.unseal_device_secret(&[8; 64]),
            Err(CredentialsError::SealBroken)
        ));
        // Bound to the username too.
        let mut renamed = creds.clone();
        renamed.username = "eve".into();
        assert!(renamed.unseal_device_secret(&[7; 64]).is_err());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Credentials::load(dir.path()).unwrap().is_none());
        let creds = Credentials::new(
            "ada",
            KsfParams::default(),
            Some("ab".repeat(32)),
            &[1; 64],
            &[3; 32],
        );
        creds.save(dir.path()).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), Some(creds.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CREDENTIALS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The file store reads the same file.
        let store = crate::host::FileSecretStore::new(dir.path());
        assert_eq!(
            Credentials::load_from(&store).unwrap().as_ref(),
            Some(&creds)
        );
        fs::write(dir.path().join(CREDENTIALS_FILE), "{").unwrap();
        assert!(matches!(
            Credentials::load(dir.path()),
            Err(CredentialsError::Corrupt { .. })
        ));
    }
}
