//! # cohort-protocol
//!
//! Everything that crosses the network between a Cohort edge client and a coordinator: the
//! message types of a round's lifecycle (hello, OPAQUE authentication, check-in and pace
//! steering, the task plan, the SecAgg+ phases R0 to R3, weights by content hash, training
//! metadata, typed errors), the declarative [`ModelSpec`], and the frame [`codec`].
//!
//! This crate does no I/O and holds no protocol *logic*: the state machines that decide what to
//! send live in `cohort-aggregation`, and the sockets in the coordinator and edge-client shells.
//!
//! Entry points: [`ClientMessage`] and [`ServerMessage`], encoded with [`encode_frame`] and
//! decoded with [`FrameDecoder`] (streams) or [`frame_len`] + [`decode_payload`] (when the shell
//! reads the prefix itself and must check the length before allocating).
//!
//! ## Frames
//!
//! Every message travels as one frame:
//!
//! ```text
//! +----------------+-----------------+------------------------------------+
//! | len: u32 BE    | version: u16 BE | CBOR body: len - 2 bytes           |
//! +----------------+-----------------+------------------------------------+
//!   4 bytes          counted in len    one ClientMessage or ServerMessage
//! ```
//!
//! - `len` counts the version and the body, not itself; it is at least 2 and at most the
//!   receiver's limit ([`DEFAULT_MAX_FRAME_LEN`], 16 MiB). A longer frame is refused from its
//!   prefix alone, before its body is read, and the connection cannot recover from that.
//! - `version` is [`PROTOCOL_VERSION`]; another version is refused as
//!   [`CodecError::UnsupportedVersion`] before the body is parsed.
//! - The body is serde's default CBOR: structs as maps keyed by field name, enums externally
//!   tagged by variant name. Weights ([`FloatVector`]) are single CBOR byte strings of
//!   little-endian elements, masked inputs ([`PackedVector`]) one byte string of elements
//!   bit-packed at the round's ring bits; never arrays. Nothing may follow
//!   the body's single CBOR item.
//! - Decoding is bounded: a header that announces a huge array or string fails when the input
//!   runs out, after at most 1 MiB of preallocation, and nesting deeper than 128 levels is
//!   refused. A hostile frame can still decode into about 48 times its size in memory (a
//!   frame full of empty strings), so a receiver should apply a small limit until its peer
//!   has authenticated ([`codec::HANDSHAKE_MAX_FRAME_LEN`], [`FrameDecoder::set_max_frame_len`]).

pub mod chain;
pub mod codec;
pub mod error;
pub mod identity_log;
pub mod ids;
pub mod ledger;
pub mod limits;
pub mod message;
pub mod model;
pub mod model_file;
pub mod plan;
pub mod round_log;
pub mod secagg;
pub mod session;
pub mod vectors;

pub use chain::{ChainError, ChainHead, RoundLogHead};
pub use codec::{
    CodecError, DEFAULT_MAX_FRAME_LEN, FrameDecoder, decode_payload, encode_frame, frame_len,
};
pub use error::{ErrorCode, WireError, truncate_text};
pub use identity_log::{
    IDENTITY_LOG_GENESIS, IdentityEvent, IdentityLogEntry, IdentityLogError, IdentityLogHead,
    IdentityLogView, RegisteredKey, RosterError, verify_identity_log,
};
pub use ids::{ClientIndex, ContentHash, RoundId, TaskId};
pub use ledger::{LedgerPage, LedgerRequest, LedgerRow, MembershipProof};
pub use message::{ClientMessage, ServerMessage};
pub use model::{LayerSpec, ModelSpec};
pub use plan::{
    InputKind, InputSpec, OptimizerSpec, PrivacySpec, TaskPlan, TrainingParams, WeightsChunk,
};
pub use round_log::{ROUND_LOG_GENESIS, RoundLogEntry};
pub use secagg::*;
pub use session::*;
pub use vectors::{FloatVector, PackedError, PackedVector, RingVector, packed_len};

/// The protocol version this build speaks. Bumped on any incompatible change to a message.
///
/// 2: masked inputs travel bit-packed at the round's ring bits ([`PackedVector`],
/// [`EncodingParams::ring_bits`]).
///
/// 3: no per-client metadata in the clear: `CheckIn` carries no example count, and the
/// `LocalEvaluation` message is gone (federated-evaluation scalars travel inside the masked
/// vector of an evaluated round, [`RoundConfig::evaluate`]); a check-in with no task running
/// is answered [`CheckInResponse::NoTask`].
pub const PROTOCOL_VERSION: u16 = 3;
