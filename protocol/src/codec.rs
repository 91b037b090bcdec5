//! The frame codec: a 4-byte big-endian length, a 2-byte big-endian protocol version, then the
//! CBOR body.
//!
//! ```text
//! +----------------+-----------------+----------------------------+
//! | len: u32 BE    | version: u16 BE | CBOR body (len - 2 bytes)  |
//! +----------------+-----------------+----------------------------+
//! ```
//!
//! The length is checked against the receiver's limit *before* any buffer is allocated, and the
//! version is checked before the body is parsed, so an unknown version is reported as such rather
//! than as a confusing decode error. serde_cbor is confined to this module, so that replacing it
//! (it is unmaintained upstream, RUSTSEC-2021-0127) touches one file.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::PROTOCOL_VERSION;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the version field.
pub const VERSION_LEN: usize = 2;
/// The default limit on a frame's length (version and body), 16 MiB. Weights larger than this
/// are streamed as several [`crate::WeightsChunk`]s.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// A limit for the frames a peer sends before it has authenticated (hello and OPAQUE messages
/// are well under 1 KiB). A decoded frame can take about 48 times its size in memory (a frame
/// of empty strings becomes a `Vec<String>`), so a coordinator that accepted 16 MiB frames from
/// anonymous peers would let each of them cost it 800 MB; 64 KiB caps that at about 3 MB.
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 64 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The announced frame length is over the receiver's limit; nothing was allocated.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; the peer must split large \
         payloads (weights are streamed in chunks) or the limit must be raised"
    )]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is too short to hold a version.
    #[error("frame of {len} bytes is too short to hold a protocol version")]
    FrameTooShort {
        /// Announced length.
        len: usize,
    },
    /// The peer speaks another protocol version.
    #[error(
        "peer speaks protocol version {got}, this build speaks version {supported}; upgrade the \
         older side"
    )]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
        /// The version this build speaks.
        supported: u16,
    },
    /// The body is not valid CBOR for the expected message type.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// Bytes after the last complete frame did not form a frame before the stream ended.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes left over.
        buffered: usize,
    },
}

/// Encodes `msg` into one frame (prefix included). Fails if it would exceed `max_frame_len`.
pub fn encode_frame<T: Serialize>(msg: &T, max_frame_len: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; LEN_PREFIX];
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    serde_cbor::to_writer(&mut out, msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    // The prefix is a u32, so no limit can let a frame grow past u32::MAX: `len as u32` would
    // otherwise silently wrap and desynchronise the peer.
    let Some(prefix) = u32::try_from(len).ok().filter(|_| len <= max_frame_len) else {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_len.min(u32::MAX as usize),
        });
    };
    out[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Reads a length prefix and checks it against the limit. Call this before allocating the
/// buffer for the rest of the frame.
pub fn frame_len(prefix: [u8; LEN_PREFIX], max_frame_len: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_len {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    if len < VERSION_LEN {
        return Err(CodecError::FrameTooShort { len });
    }
    Ok(len)
}

/// Decodes a frame's payload (everything after the length prefix): checks the version, then
/// parses the body.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.len() < VERSION_LEN {
        return Err(CodecError::FrameTooShort { len: payload.len() });
    }
    let got = u16::from_be_bytes([payload[0], payload[1]]);
    if got != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion {
            got,
            supported: PROTOCOL_VERSION,
        });
    }
    serde_cbor::from_slice(&payload[VERSION_LEN..])
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// An incremental decoder for a byte stream: push what arrives, pop whole messages.
///
/// Use it as `push` what the socket gave, then call [`FrameDecoder::next`] until it returns
/// `Ok(None)`. Used that way, the buffer never holds more than one partial frame (at most the
/// limit) plus what the last push brought, because a frame whose prefix announces more than the
/// limit is refused as soon as the prefix is seen, before its body arrives.
///
/// After [`CodecError::FrameTooLarge`] or [`CodecError::FrameTooShort`] the stream cannot be
/// re-synchronised: every later call fails the same way, and the connection should be closed.
/// After [`CodecError::UnsupportedVersion`] or [`CodecError::Malformed`] the bad frame has been
/// consumed, and the next call decodes the frame after it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed by [`FrameDecoder::next`]. Popping advances this offset
    /// instead of shifting the buffer, so that a buffer holding many small frames is decoded in
    /// linear time (draining per frame was quadratic: a 64 KiB read of 6-byte frames cost
    /// hundreds of megabytes of `memmove`). The consumed prefix is dropped on the next push.
    start: usize,
    max_frame_len: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
        }
    }

    /// The current limit on a frame's length (version and body).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the limit for the frames not yet decoded, e.g. a small limit before a peer has
    /// authenticated and the full one after. A lower limit applies to a frame already partly
    /// buffered too.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// Bytes received but not yet decoded into a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends received bytes. Fails at once if a buffered prefix announces an oversized frame.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.check_prefix()?;
        Ok(())
    }

    /// Pops the next complete message, if one is buffered.
    ///
    /// A frame that fails to decode is consumed, and its error returned; call again for the
    /// frames after it.
    // Not `Iterator::next`: generic over the message type and fallible, so it cannot be one.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        let Some(len) = self.check_prefix()? else {
            return Ok(None);
        };
        let body_start = self.start + LEN_PREFIX;
        if self.buf.len() - body_start < len {
            return Ok(None);
        }
        let msg = decode_payload(&self.buf[body_start..body_start + len]);
        self.start = body_start + len;
        if self.start == self.buf.len() {
            // Everything consumed: reuse the allocation without moving anything.
            self.buf.clear();
            self.start = 0;
        }
        msg.map(Some)
    }

    /// Call at end of stream: fails if a partial frame is left.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(CodecError::Truncated { buffered }),
        }
    }

    /// Checks the prefix of the next frame, if all four bytes of it are buffered, and returns
    /// the frame's length.
    fn check_prefix(&self) -> Result<Option<usize>, CodecError> {
        match self.buf.get(self.start..self.start + LEN_PREFIX) {
            Some(prefix) => {
                let mut p = [0u8; LEN_PREFIX];
                p.copy_from_slice(prefix);
                frame_len(p, self.max_frame_len).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// Encodes a value as bare CBOR (no frame), for hashing and storage of canonical records.
pub fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes bare CBOR written by [`to_cbor`].
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_cbor::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}
