//! # cohort-net
//!
//! The QUIC transport shared by the Cohort coordinator, the edge client and the simulator's live
//! mode: quinn 0.11 over rustls 0.23, TLS 1.3 only, ALPN [`ALPN`] (`cohort/1`), one crypto
//! provider (ring).
//!
//! What it holds:
//! - [`identity`]: the coordinator's certificate, self-signed and persisted on first start, or
//!   loaded from PEM files, and its SHA-256 [`CertFingerprint`] that clients pin.
//! - [`trust`]: how a client decides to trust a coordinator ([`ServerTrust`]): a pinned
//!   fingerprint, WebPKI roots from a PEM file, or the loudly named
//!   [`ServerTrust::DangerousAcceptAnyCertificate`].
//! - [`endpoint`]: binding server and client endpoints, connecting, and the TLS exporter value
//!   ([`tls_binding`]) that binds an OPAQUE login to one TLS session.
//! - [`framing`]: length-prefixed CBOR messages on quinn streams, with the frame limit checked
//!   before any buffer is allocated.
//! - [`weights`]: streaming a weight vector as [`cohort_protocol::WeightsChunk`] frames and
//!   reassembling it with hash verification.
//! - [`opaque_suite`]: the OPAQUE cipher suite and key-stretching parameters, which both sides
//!   of a login must agree on.
//! - [`atomic_file`]: replacing a file atomically and durably, for every file the coordinator
//!   and the edge client keep (this crate is the lowest both depend on).
//!
//! What it does not hold: any protocol logic (which message comes when is the coordinator's and
//! the edge client's business) and any account or round state.
//!
//! Entry points: [`ServerIdentity::load_or_generate`] and [`bind_server`] on the coordinator,
//! [`ClientTransport::bind`] and [`ClientTransport::connect`] on a client, then
//! [`FramedStream`] on the streams of the connection.

pub mod atomic_file;
pub mod endpoint;
pub mod error;
pub mod framing;
pub mod identity;
pub mod opaque_suite;
pub mod trust;
pub mod weights;

pub use endpoint::{
    AUTHENTICATED_BIDI_STREAMS, AUTHENTICATED_RECEIVE_WINDOW, ClientTransport,
    PRE_AUTH_RECEIVE_WINDOW, TLS_BINDING_LABEL, TransportOptions, bind_server, open_after_login,
    server_config, tls_binding,
};
pub use error::{NetError, TlsSetupError};
pub use framing::{
    FramedStream, read_message, read_message_by_kind, read_message_sized, write_message,
    write_message_sized,
};
pub use identity::{CertFingerprint, ServerIdentity};
pub use trust::ServerTrust;
pub use weights::{
    WeightsAssembler, WeightsError, chunk_weights, receive_weights, send_weights, weights_frames,
};

/// The application protocol negotiated in the TLS handshake. A peer that offers anything else is
/// refused during the handshake.
pub const ALPN: &[u8] = b"cohort/1";

// Re-exported so that the shells name one quinn version.
pub use quinn;
