//! Length-prefixed CBOR messages on quinn streams.
//!
//! The frame format is the protocol crate's ([`cohort_protocol::codec`]): a 4-byte big-endian
//! length, a 2-byte version, the CBOR body. The reader checks the announced length against its
//! limit with [`cohort_protocol::frame_len`] *before* allocating the buffer, so a peer that
//! announces 4 GiB costs nothing.

use cohort_protocol::codec::LEN_PREFIX;
use cohort_protocol::limits::{KIND_PEEK_LEN, peek_variant};
use cohort_protocol::{decode_payload, encode_frame, frame_len};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::NetError;

/// Encodes `msg` as one frame (refusing one longer than `max_frame_len`) and writes it.
pub async fn write_message<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
    max_frame_len: usize,
) -> Result<(), NetError> {
    write_message_sized(send, msg, max_frame_len)
        .await
        .map(|_| ())
}

/// [`write_message`], returning the bytes written (the whole frame, prefix included), for
/// traffic accounting.
pub async fn write_message_sized<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
    max_frame_len: usize,
) -> Result<usize, NetError> {
    let frame = encode_frame(msg, max_frame_len)?;
    let len = frame.len();
    // Handed over as `Bytes` (no copy): `write_all` would copy the frame into quinn's buffers.
    send.write_chunk(bytes::Bytes::from(frame)).await?;
    Ok(len)
}

/// Reads one frame and decodes it. `Ok(None)` when the peer finished the stream cleanly between
/// frames; [`NetError::Truncated`] when it finished inside one.
///
/// Errors: [`NetError::Codec`] with `FrameTooLarge` (nothing allocated; the stream cannot be
/// re-synchronised, so close it), `UnsupportedVersion` or `Malformed` (the frame was consumed);
/// [`NetError::Read`] when the stream or connection failed.
pub async fn read_message<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_frame_len: usize,
) -> Result<Option<T>, NetError> {
    Ok(read_message_sized(recv, max_frame_len)
        .await?
        .map(|(msg, _)| msg))
}

/// [`read_message`], also returning the bytes the frame took on the stream (prefix included),
/// for traffic accounting.
pub async fn read_message_sized<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_frame_len: usize,
) -> Result<Option<(T, usize)>, NetError> {
    let Some(prefix) = read_prefix(recv).await? else {
        return Ok(None);
    };
    let len = frame_len(prefix, max_frame_len)?;
    let mut payload = vec![0u8; len];
    read_part(recv, &mut payload, len, 0).await?;
    Ok(Some((decode_payload(&payload)?, LEN_PREFIX + len)))
}

/// Reads one frame whose limit depends on its kind, checked *before* the body is read:
/// the length prefix is read and checked against `max_any` (the largest limit of any kind, so
/// a frame over it is refused from its prefix alone), then the first few bytes of the payload
/// (at most [`KIND_PEEK_LEN`], so a frame's kind costs nothing to learn), and `limit_for` is
/// asked for the limit of the frame's variant ([`peek_variant`]; `None` for an unexpected
/// encoding).
/// Only a frame within that limit is allocated, read and decoded. Returns the message and the
/// bytes the frame took on the stream.
///
/// Errors as [`read_message_sized`]; a frame over its kind's limit is
/// [`cohort_protocol::CodecError::FrameTooLarge`] with that limit.
pub async fn read_message_by_kind<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_any: usize,
    limit_for: impl Fn(Option<&str>) -> usize,
) -> Result<Option<(T, usize)>, NetError> {
    let Some(prefix) = read_prefix(recv).await? else {
        return Ok(None);
    };
    // The kind's own limit comes with the kind; nothing may exceed the largest one.
    let announced = frame_len(prefix, max_any)?;
    let mut head = [0u8; KIND_PEEK_LEN];
    let head_len = announced.min(KIND_PEEK_LEN);
    read_part(recv, &mut head[..head_len], announced, 0).await?;
    let limit = limit_for(peek_variant(&head[..head_len]));
    let len = frame_len(prefix, limit)?;
    let mut payload = vec![0u8; len];
    payload[..head_len].copy_from_slice(&head[..head_len]);
    read_part(recv, &mut payload[head_len..], len, head_len).await?;
    Ok(Some((decode_payload(&payload)?, LEN_PREFIX + len)))
}

/// Reads a frame's length prefix; `None` when the peer finished the stream cleanly before it
/// (between frames).
async fn read_prefix(recv: &mut RecvStream) -> Result<Option<[u8; LEN_PREFIX]>, NetError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => Ok(Some(prefix)),
        Err(ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(ReadExactError::FinishedEarly(got)) => Err(NetError::Truncated {
            expected: LEN_PREFIX,
            got,
        }),
        Err(ReadExactError::ReadError(e)) => Err(NetError::Read(e)),
    }
}

/// Fills `buf` with the next bytes of a frame of `expected` bytes of which `before` were read
/// already; a stream that finishes first is [`NetError::Truncated`] (counting all the frame's
/// bytes read).
async fn read_part(
    recv: &mut RecvStream,
    buf: &mut [u8],
    expected: usize,
    before: usize,
) -> Result<(), NetError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(got) => NetError::Truncated {
            expected,
            got: before + got,
        },
        ReadExactError::ReadError(e) => NetError::Read(e),
    })
}

/// The two halves of a bidirectional stream with a frame limit: send and receive whole
/// messages.
#[derive(Debug)]
pub struct FramedStream {
    /// The sending half.
    pub send: SendStream,
    /// The receiving half.
    pub recv: RecvStream,
    max_frame_len: usize,
}

impl FramedStream {
    /// Wraps a stream pair; frames longer than `max_frame_len` are refused both ways.
    pub fn new(send: SendStream, recv: RecvStream, max_frame_len: usize) -> Self {
        Self {
            send,
            recv,
            max_frame_len,
        }
    }

    /// Opens a bidirectional stream on `conn`.
    pub async fn open(conn: &quinn::Connection, max_frame_len: usize) -> Result<Self, NetError> {
        let (send, recv) = conn.open_bi().await?;
        Ok(Self::new(send, recv, max_frame_len))
    }

    /// Accepts the peer's next bidirectional stream on `conn`.
    pub async fn accept(conn: &quinn::Connection, max_frame_len: usize) -> Result<Self, NetError> {
        let (send, recv) = conn.accept_bi().await?;
        Ok(Self::new(send, recv, max_frame_len))
    }

    /// The current frame limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the frame limit, e.g. a small one before the peer authenticated and the full one
    /// after.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), NetError> {
        write_message(&mut self.send, msg, self.max_frame_len).await
    }

    /// Receives one message; `Ok(None)` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        read_message(&mut self.recv, self.max_frame_len).await
    }

    /// Receives one message, treating the end of the stream as an error.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, NetError> {
        self.recv()
            .await?
            .ok_or_else(|| NetError::Unexpected("the peer closed the stream".into()))
    }

    /// Finishes the sending half: the peer's reader sees a clean end of stream.
    pub fn finish(&mut self) {
        // Finishing an already finished or reset stream is harmless here.
        let _ = self.send.finish();
    }
}
