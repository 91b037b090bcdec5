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
    /// A certificate or key could not be generated or parsed.
    #[error("certificate or key problem: {0}")]
    Certificate(String),
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
    Weights(String),
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
