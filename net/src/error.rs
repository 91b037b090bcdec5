//! The transport's error type.

use std::path::PathBuf;

use cohort_protocol::CodecError;
use thiserror::Error;

/// Why a transport operation failed.
#[derive(Debug, Error)]
pub enum NetError {
    /// A file of the server identity or of the trust roots could not be read or written.
    #[error("{action} {}: {source}; check that the path exists and is readable by this user", path.display())]
    File {
        /// What was being done ("reading certificate", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be generated, read or used.
    #[error(transparent)]
    Certificate(#[from] TlsSetupError),
    /// A fingerprint string is not 64 hex digits.
    #[error(
        "{0:?} is not a SHA-256 certificate fingerprint; expected 64 hex digits (colons allowed), \
         as printed by the coordinator at start-up"
    )]
    BadFingerprint(String),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration refused: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind a UDP socket on {addr}: {source}; pick a free port or address")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection attempt could not even start (bad server name, endpoint closed).
    #[error("cannot start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The coordinator presented a certificate other than the pinned one.
    #[error(
        "the server presented a certificate with fingerprint {presented}, but {expected} is \
         pinned; the server changed its certificate or someone is intercepting the connection. \
         Get the current fingerprint from the coordinator's operator before re-pinning"
    )]
    PinMismatch {
        /// The pinned fingerprint (hex).
        expected: String,
        /// The fingerprint of the certificate the server presented (hex).
        presented: String,
    },
    /// The connection failed or was closed (handshake refused, timeout, peer closed).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("writing to the stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("reading from the stream failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended inside a frame.
    #[error(
        "the stream ended inside a frame ({got} of {expected} bytes); the peer gave up or crashed"
    )]
    Truncated {
        /// Bytes the frame needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// A frame could not be encoded or decoded (too large, bad version, malformed body).
    #[error(transparent)]
    Codec(#[from] cohort_protocol::CodecError),
    /// The TLS exporter value could not be derived (the handshake had not finished).
    #[error("cannot derive the TLS exporter value: the handshake has not completed")]
    Exporter,
    /// A streamed weight vector was inconsistent or did not match its hash.
    #[error("weights transfer refused: {0}")]
    Weights(#[from] crate::weights::WeightsError),
    /// The peer sent a message other than the one expected at this point.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl NetError {
    /// Whether this error is the frame limit being exceeded.
    pub fn is_frame_too_large(&self) -> bool {
        matches!(self, NetError::Codec(CodecError::FrameTooLarge { .. }))
    }
}

/// Why a certificate, a key or a TLS configuration could not be generated, read or used.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// One file of a persisted identity exists without the other.
    #[error(
        "{} is missing while its pair exists; restore it from a backup, or delete both files to \
         generate a new identity (clients must then re-pin)",
        missing.display()
    )]
    HalfIdentity {
        /// The missing file.
        missing: PathBuf,
    },
    /// rcgen could not generate a self-signed certificate.
    #[error(
        "cannot generate a certificate: {0}; check the subject names (DNS names or IP addresses)"
    )]
    Generate(#[source] rcgen::Error),
    /// The generated key could not be used as a private key (a bug in the generator's output).
    #[error("the generated key is unusable: {0}; please report this as a bug")]
    GeneratedKey(&'static str),
    /// A file is not valid PEM.
    #[error("{} is not valid PEM: {source}; give a PEM file", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// A key file holds no private key of a supported kind.
    #[error(
        "{} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {source}",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error(
        "{} holds no certificate; give a PEM file with the certificate chain, leaf first",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// An identity was built from an empty certificate chain.
    #[error("the certificate chain is empty; give at least the leaf certificate")]
    EmptyChain,
    /// A certificate of a roots file cannot be a trust anchor.
    #[error("{} holds a certificate that cannot be a root: {source}", path.display())]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// rustls' refusal.
        source: rustls::Error,
    },
    /// A roots file holds no certificate.
    #[error("{} holds no certificate; give a PEM file of CA roots", path.display())]
    NoRoots {
        /// The file.
        path: PathBuf,
    },
    /// `ServerTrust::WebPki` was asked for without its roots loaded.
    #[error(
        "WebPKI trust without loaded roots; bind the client with ServerTrust::WebPki so that its roots file is read"
    )]
    RootsNotLoaded,
    /// The TLS configuration cannot carry QUIC (no TLS 1.3 cipher suite usable for QUIC).
    #[error("TLS configuration unusable for QUIC: {0}")]
    NotQuic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
}
