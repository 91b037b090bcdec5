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

pub mod codec;
pub mod error;
pub mod ids;
pub mod message;
pub mod model;
pub mod plan;
pub mod secagg;
pub mod session;
pub mod vectors;

pub use codec::{
    CodecError, DEFAULT_MAX_FRAME_LEN, FrameDecoder, decode_payload, encode_frame, frame_len,
};
pub use error::{ErrorCode, WireError};
pub use ids::{ClientIndex, ContentHash, RoundId, TaskId};
pub use message::{ClientMessage, ServerMessage};
pub use model::{LayerSpec, ModelSpec};
pub use plan::{OptimizerSpec, TaskPlan, TrainingParams, TrainingReport, WeightsChunk};
pub use secagg::*;
pub use session::*;
pub use vectors::{FloatVector, RingVector};

/// The protocol version this build speaks. Bumped on any incompatible change to a message.
pub const PROTOCOL_VERSION: u16 = 1;
