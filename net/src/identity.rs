//! The coordinator's TLS identity: a certificate chain and its private key.
//!
//! A coordinator started with no configuration generates a self-signed certificate on first
//! start and persists it in its state directory, so that its fingerprint, which clients pin,
//! stays the same across restarts. An operator with a real certificate (from a CA) points the
//! coordinator at PEM files instead, and clients then use WebPKI roots.

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::{NetError, TlsSetupError};

/// File name of the persisted self-signed certificate (PEM), inside the state directory.
pub const CERT_FILE: &str = "tls-cert.pem";
/// File name of the persisted private key (PEM, mode 0600), inside the state directory.
pub const KEY_FILE: &str = "tls-key.pem";

/// SHA-256 of a certificate's DER encoding: what a client pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Self(Sha256::digest(cert_der).into())
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({})", self.to_hex())
    }
}

impl FromStr for CertFingerprint {
    type Err = NetError;

    /// Parses 64 hex digits, upper or lower case, with or without colons between bytes (the form
    /// `openssl x509 -fingerprint -sha256` prints).
    fn from_str(s: &str) -> Result<Self, NetError> {
        let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| NetError::BadFingerprint(s.into()))?;
        Ok(Self(out))
    }
}

/// A certificate chain (leaf first) and the leaf's private key.
#[derive(Debug)]
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: CertFingerprint,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl ServerIdentity {
    /// Loads the self-signed identity persisted in `state_dir`, or generates one for
    /// `subject_alt_names` (DNS names or IP addresses, e.g. `["localhost"]`) and persists it:
    /// the key is written with mode 0600 and both files are written to a temporary name, synced
    /// and renamed, so a crash never leaves half a key.
    ///
    /// The names matter only to clients that verify them (WebPKI); pinning clients check the
    /// fingerprint alone.
    pub fn load_or_generate(
        state_dir: &Path,
        subject_alt_names: &[String],
    ) -> Result<Self, NetError> {
        let cert_path = state_dir.join(CERT_FILE);
        let key_path = state_dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => return Self::from_pem_files(&cert_path, &key_path),
            (false, false) => {}
            (cert, _) => {
                let missing = if cert { &key_path } else { &cert_path };
                return Err(TlsSetupError::HalfIdentity {
                    missing: missing.clone(),
                }
                .into());
            }
        }
        fs::create_dir_all(state_dir).map_err(|source| NetError::File {
            action: "creating state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let generated = rcgen::generate_simple_self_signed(subject_alt_names.to_vec())
            .map_err(TlsSetupError::Generate)?;
        // Key first: a certificate without its key is useless, a key without its certificate is
        // detected above.
        write_atomically(
            &key_path,
            generated.signing_key.serialize_pem().as_bytes(),
            true,
        )?;
        write_atomically(&cert_path, generated.cert.pem().as_bytes(), false)?;
        tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
        Self::from_pem_files(&cert_path, &key_path)
    }

    /// Loads a certificate chain (leaf first) and its private key from PEM files, e.g. those a
    /// CA issued.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, NetError> {
        let cert_pem = read_file(cert_path, "reading certificate")?;
        let key_pem = read_file(key_path, "reading private key")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsSetupError::BadPem {
                path: cert_path.to_path_buf(),
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsSetupError::NoCertificate {
                path: cert_path.to_path_buf(),
            }
            .into());
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| {
            TlsSetupError::NoPrivateKey {
                path: key_path.to_path_buf(),
                source,
            }
        })?;
        Self::from_der(chain, key)
    }

    /// An identity from DER values (leaf first).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, NetError> {
        let Some(leaf) = chain.first() else {
            return Err(TlsSetupError::EmptyChain.into());
        };
        let fingerprint = CertFingerprint::of(leaf.as_ref());
        Ok(Self {
            chain,
            key,
            fingerprint,
        })
    }

    /// A fresh self-signed identity that is not persisted (tests, the simulator's live mode).
    pub fn ephemeral(subject_alt_names: &[String]) -> Result<Self, NetError> {
        let generated = rcgen::generate_simple_self_signed(subject_alt_names.to_vec())
            .map_err(TlsSetupError::Generate)?;
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .map_err(TlsSetupError::GeneratedKey)?;
        Self::from_der(vec![generated.cert.der().clone()], key)
    }

    /// SHA-256 of the leaf certificate: print it so that clients can pin it.
    pub fn fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn read_file(path: &Path, action: &'static str) -> Result<Vec<u8>, NetError> {
    fs::read(path).map_err(|source| NetError::File {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// Writes one identity file through [`crate::atomic_file`].
fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> Result<(), NetError> {
    crate::atomic_file::write_atomically(path, bytes, secret).map_err(|source| NetError::File {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_with_colons_and_case() {
        let fp = CertFingerprint::of(b"certificate");
        let colons =
            fp.0.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":");
        assert_eq!(colons.parse::<CertFingerprint>().unwrap(), fp);
        assert_eq!(fp.to_hex().parse::<CertFingerprint>().unwrap(), fp);
        assert!("abcd".parse::<CertFingerprint>().is_err());
        assert!("zz".repeat(32).parse::<CertFingerprint>().is_err());
    }

    #[test]
    fn generated_identity_persists_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
        let second = ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(
            first.fingerprint(),
            CertFingerprint::of(first.chain()[0].as_ref())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Another directory gets another identity.
        let other_dir = tempfile::tempdir().unwrap();
        let other =
            ServerIdentity::load_or_generate(other_dir.path(), &["localhost".into()]).unwrap();
        assert_ne!(other.fingerprint(), first.fingerprint());
    }

    #[test]
    fn half_an_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap_err();
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }

    #[test]
    fn garbage_pem_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, "not a certificate").unwrap();
        fs::write(&key, "not a key").unwrap();
        let err = ServerIdentity::from_pem_files(&cert, &key).unwrap_err();
        assert!(
            matches!(err, NetError::Certificate(TlsSetupError::NoCertificate { ref path }) if *path == cert),
            "{err}"
        );
        // A real certificate with a garbage key names the key file.
        ServerIdentity::load_or_generate(&dir.path().join("real"), &["localhost".into()]).unwrap();
        let real_cert = dir.path().join("real").join(CERT_FILE);
        let err = ServerIdentity::from_pem_files(&real_cert, &key).unwrap_err();
        assert!(
            matches!(err, NetError::Certificate(TlsSetupError::NoPrivateKey { ref path, .. }) if *path == key),
            "{err}"
        );
    }
}
