//! How a client decides to trust a coordinator's certificate.
//!
//! Three explicit modes, the insecure one loudly named (as rustls names its `dangerous()`
//! configuration):
//! - [`ServerTrust::Pinned`]: the coordinator's certificate must have exactly this SHA-256
//!   fingerprint. This is the default for self-signed coordinators: the operator prints the
//!   fingerprint at start-up and hands it to contributors out of band. The TLS 1.3 handshake
//!   signature is still verified against the pinned certificate's key, so a peer that merely
//!   copies the certificate without its key fails.
//! - [`ServerTrust::WebPki`]: ordinary CA validation (chain, validity, server name) against the
//!   roots in a PEM file.
//! - [`ServerTrust::DangerousAcceptAnyCertificate`]: accepts any certificate. The connection is
//!   encrypted but not authenticated, so anyone on the path can intercept it (and an OPAQUE
//!   login over it only proves the password to whoever answers). Tests and demos only; every
//!   use logs a warning.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use subtle::ConstantTimeEq;

use crate::error::{NetError, TlsSetupError};
use crate::identity::CertFingerprint;

/// How a client verifies the coordinator's certificate.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Accept exactly the certificate with this SHA-256 fingerprint (of its DER encoding).
    Pinned(CertFingerprint),
    /// Validate the chain against the CA roots in this PEM file, and the server name.
    WebPki {
        /// A PEM file of one or more root certificates.
        roots: PathBuf,
    },
    /// Accept any certificate: encrypted but unauthenticated. Never use outside tests and
    /// demos; a warning is logged for every connection.
    DangerousAcceptAnyCertificate,
}

/// The ring provider, the only one compiled in.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a pinning verifier reports the certificate it refused, so that `connect` can return
/// [`NetError::PinMismatch`] instead of a generic handshake failure.
pub(crate) type RefusedSlot = Arc<Mutex<Option<CertFingerprint>>>;

/// The handshake-signature checks both verifiers share (they differ only in which certificates
/// they accept): TLS 1.3 signatures verified with the provider's algorithms, TLS 1.2 refused.
#[derive(Debug)]
struct HandshakeSignatures(Arc<CryptoProvider>);

impl HandshakeSignatures {
    fn new() -> Self {
        Self(provider())
    }

    /// TLS 1.2 is not compiled in; QUIC requires TLS 1.3 anyway.
    fn tls12(&self) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts exactly one certificate, by fingerprint, and verifies TLS 1.3 handshake signatures
/// with the provider's algorithms.
#[derive(Debug)]
pub(crate) struct PinnedCertVerifier {
    pin: CertFingerprint,
    signatures: HandshakeSignatures,
    refused: RefusedSlot,
}

impl PinnedCertVerifier {
    pub(crate) fn new(pin: CertFingerprint, refused: RefusedSlot) -> Self {
        Self {
            pin,
            signatures: HandshakeSignatures::new(),
            refused,
        }
    }
}

/// Compares two fingerprints in constant time (`subtle`). A fingerprint is not secret, but
/// there is no reason to leak where two differ.
fn same_fingerprint(a: &CertFingerprint, b: &CertFingerprint) -> bool {
    a.0.ct_eq(&b.0).into()
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let presented = CertFingerprint::of(end_entity.as_ref());
        if same_fingerprint(&presented, &self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut slot) = self.refused.lock() {
                *slot = Some(presented);
            }
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Accepts any certificate, but still checks that the handshake was signed by the key of the
/// certificate presented (which proves nothing about who the peer is).
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate {
    signatures: HandshakeSignatures,
}

impl AcceptAnyCertificate {
    pub(crate) fn new() -> Self {
        Self {
            signatures: HandshakeSignatures::new(),
        }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        tracing::warn!(
            server = ?server_name,
            fingerprint = %CertFingerprint::of(end_entity.as_ref()),
            "accepting the server's certificate WITHOUT verification \
             (ServerTrust::DangerousAcceptAnyCertificate); anyone on the path can intercept \
             this connection. Pin the fingerprint instead"
        );
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Reads a PEM file of root certificates into a store.
pub(crate) fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, NetError> {
    let pem = std::fs::read(path).map_err(|source| NetError::File {
        action: "reading CA roots",
        path: path.to_path_buf(),
        source,
    })?;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| TlsSetupError::BadPem {
            path: path.to_path_buf(),
            source,
        })?;
        store.add(cert).map_err(|source| TlsSetupError::BadRoot {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if store.is_empty() {
        return Err(TlsSetupError::NoRoots {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(store)
}
