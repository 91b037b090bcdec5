//! Streaming a weight vector as a sequence of [`WeightsChunk`] frames.
//!
//! A model's flat weight vector can exceed the frame limit, so it travels as chunks, in order,
//! each naming the whole vector's content hash (SHA-256 of its little-endian bytes) and length.
//! The receiver allocates the vector only after checking the announced length against its own
//! limit, checks every chunk against the first (hash, length, contiguous offsets), and verifies
//! the hash once the last element arrived.

use bytes::Bytes;
use cohort_protocol::{ContentHash, FloatVector, WeightsChunk};
use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use thiserror::Error;

use crate::error::NetError;
use crate::framing::{read_message, write_message};

/// Bytes of a frame reserved for everything but the chunk's values (version, CBOR headers, the
/// hash, offsets, and the enum wrapper of the message that carries the chunk).
pub const CHUNK_OVERHEAD: usize = 1024;

/// Largest chunk, in elements (4 MiB of values), whatever the frame limit: smaller chunks keep
/// the sender's and receiver's peak memory low and let other streams interleave.
pub const MAX_CHUNK_ELEMS: usize = 1 << 20;

/// The content hash of a weight vector: SHA-256 of its little-endian bytes, equal to
/// `ContentHash::of(&FloatVector(values).to_le_bytes())` without building that buffer.
pub fn weights_hash(values: &[f32]) -> ContentHash {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(4096 * 4);
    for block in values.chunks(4096) {
        buf.clear();
        for v in block {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        hasher.update(&buf);
    }
    ContentHash(hasher.finalize().into())
}

/// Elements per chunk for a frame limit; `None` when the limit cannot hold even one element.
pub fn chunk_elems(max_frame_len: usize) -> Option<usize> {
    let n = max_frame_len.checked_sub(CHUNK_OVERHEAD)? / 4;
    (n > 0).then_some(n.min(MAX_CHUNK_ELEMS))
}

/// Splits `values` into chunks that each fit a frame of `max_frame_len` bytes. An empty vector
/// is one empty chunk, so that the receiver learns the (zero) length and the hash.
pub fn chunk_weights(values: &[f32], max_frame_len: usize) -> Result<Vec<WeightsChunk>, NetError> {
    let per = chunk_elems(max_frame_len)
        .ok_or_else(|| NetError::Weights(WeightsError::FrameLimitTooSmall { max_frame_len }))?;
    let hash = weights_hash(values);
    let total_len = values.len() as u64;
    if values.is_empty() {
        return Ok(vec![WeightsChunk {
            hash,
            offset: 0,
            total_len,
            values: FloatVector(Vec::new()),
        }]);
    }
    Ok(values
        .chunks(per)
        .enumerate()
        .map(|(i, c)| WeightsChunk {
            hash,
            offset: (i * per) as u64,
            total_len,
            values: FloatVector(c.to_vec()),
        })
        .collect())
}

/// Why a streamed weight vector was refused (inside [`NetError::Weights`]). Each is the
/// sender's fault or a damaged transfer: fetch the vector again, from an honest peer.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The frame limit cannot hold a chunk of even one element.
    #[error(
        "a frame limit of {max_frame_len} bytes cannot carry weights; raise it above {CHUNK_OVERHEAD}"
    )]
    FrameLimitTooSmall {
        /// The frame limit.
        max_frame_len: usize,
    },
    /// The peer sent a vector other than the one requested.
    #[error("the peer sent weights {sent} but {requested} were requested")]
    OtherVector {
        /// The hash the chunks name.
        sent: ContentHash,
        /// The hash asked for.
        requested: ContentHash,
    },
    /// The announced length is over the receiver's limit (refused before allocating).
    #[error("announced vector of {announced} elements exceeds the limit of {max}")]
    TooLong {
        /// The length the first chunk announced.
        announced: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// A later chunk names another hash or length than the first one did.
    #[error("a chunk names another vector than the first chunk did")]
    MixedVectors,
    /// A chunk arrived out of order.
    #[error(
        "chunk at offset {offset} arrived when offset {expected} was expected; chunks must be sent in order"
    )]
    OutOfOrder {
        /// The chunk's offset.
        offset: u64,
        /// The offset expected next.
        expected: u64,
    },
    /// A chunk runs past the announced length.
    #[error(
        "chunk at offset {offset} with {len} elements overruns the announced length {total_len}"
    )]
    Overrun {
        /// The chunk's offset.
        offset: u64,
        /// Its elements.
        len: usize,
        /// The announced length.
        total_len: usize,
    },
    /// An empty chunk inside a non-empty vector (it would make no progress).
    #[error("empty chunk in a non-empty vector")]
    EmptyChunk,
    /// The whole vector does not hash to the announced hash.
    #[error(
        "received weights hash to {got}, not the announced {announced}; the transfer was corrupted or tampered with"
    )]
    HashMismatch {
        /// The hash of what arrived.
        got: ContentHash,
        /// The hash the chunks announced.
        announced: ContentHash,
    },
    /// The stream ended before the last chunk.
    #[error("the stream ended before the whole vector arrived")]
    EndedEarly,
}

/// Reassembles a vector from chunks received in order, refusing anything inconsistent.
#[derive(Debug)]
pub struct WeightsAssembler {
    expected: Option<ContentHash>,
    max_len: usize,
    hash: Option<ContentHash>,
    total_len: usize,
    values: Vec<f32>,
}

impl WeightsAssembler {
    /// An assembler that accepts a vector of at most `max_len` elements and, when `expected` is
    /// given, only the vector with that hash.
    pub fn new(expected: Option<ContentHash>, max_len: usize) -> Self {
        Self {
            expected,
            max_len,
            hash: None,
            total_len: 0,
            values: Vec::new(),
        }
    }

    /// Adds the next chunk. Returns the whole vector once the last chunk arrived and the hash
    /// matched.
    pub fn push(&mut self, chunk: WeightsChunk) -> Result<Option<Vec<f32>>, NetError> {
        match self.hash {
            None => {
                if let Some(expected) = self.expected
                    && chunk.hash != expected
                {
                    return Err(WeightsError::OtherVector {
                        sent: chunk.hash,
                        requested: expected,
                    }
                    .into());
                }
                let total_len = usize::try_from(chunk.total_len)
                    .ok()
                    .filter(|n| *n <= self.max_len)
                    .ok_or(WeightsError::TooLong {
                        announced: chunk.total_len,
                        max: self.max_len,
                    })?;
                self.hash = Some(chunk.hash);
                self.total_len = total_len;
                // Bounded by `max_len` above, so this allocation is under the caller's control.
                self.values = Vec::with_capacity(total_len);
            }
            Some(hash) => {
                if chunk.hash != hash || chunk.total_len != self.total_len as u64 {
                    return Err(WeightsError::MixedVectors.into());
                }
            }
        }
        if chunk.offset != self.values.len() as u64 {
            return Err(WeightsError::OutOfOrder {
                offset: chunk.offset,
                expected: self.values.len() as u64,
            }
            .into());
        }
        if chunk.values.len() > self.total_len - self.values.len() {
            return Err(WeightsError::Overrun {
                offset: chunk.offset,
                len: chunk.values.len(),
                total_len: self.total_len,
            }
            .into());
        }
        if chunk.values.is_empty() && self.total_len != 0 {
            return Err(WeightsError::EmptyChunk.into());
        }
        self.values.extend_from_slice(&chunk.values.0);
        if self.values.len() < self.total_len {
            return Ok(None);
        }
        let values = std::mem::take(&mut self.values);
        let got = weights_hash(&values);
        let announced = self.hash.unwrap_or(got);
        if got != announced {
            return Err(WeightsError::HashMismatch { got, announced }.into());
        }
        Ok(Some(values))
    }
}

/// Sends `values` as chunks, each wrapped into the stream's message type by `wrap` (e.g.
/// `ServerMessage::Weights`). Returns the vector's hash.
pub async fn send_weights<T: Serialize>(
    send: &mut SendStream,
    values: &[f32],
    max_frame_len: usize,
    wrap: impl Fn(WeightsChunk) -> T,
) -> Result<ContentHash, NetError> {
    let chunks = chunk_weights(values, max_frame_len)?;
    let hash = chunks[0].hash;
    for chunk in chunks {
        write_message(send, &wrap(chunk), max_frame_len).await?;
    }
    Ok(hash)
}

/// The frames [`send_weights`] would write for `values`, encoded once: a server that sends the
/// same vector to many clients keeps these and hands them to each stream as they are
/// (`SendStream::write_chunk` takes a [`Bytes`] without copying it).
pub fn weights_frames<T: Serialize>(
    values: &[f32],
    max_frame_len: usize,
    wrap: impl Fn(WeightsChunk) -> T,
) -> Result<Vec<Bytes>, NetError> {
    chunk_weights(values, max_frame_len)?
        .into_iter()
        .map(|chunk| {
            Ok(Bytes::from(cohort_protocol::encode_frame(
                &wrap(chunk),
                max_frame_len,
            )?))
        })
        .collect()
}

/// Receives a vector sent by [`send_weights`]: at most `max_len` elements, and only the one with
/// hash `expected` when given. `unwrap` extracts the chunk from the stream's message type and
/// returns `None` for any other message, which is refused.
pub async fn receive_weights<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_frame_len: usize,
    expected: Option<ContentHash>,
    max_len: usize,
    unwrap: impl Fn(T) -> Option<WeightsChunk>,
) -> Result<Vec<f32>, NetError> {
    let mut assembler = WeightsAssembler::new(expected, max_len);
    loop {
        let msg = read_message::<T>(recv, max_frame_len)
            .await?
            .ok_or(WeightsError::EndedEarly)?;
        let chunk = unwrap(msg).ok_or_else(|| {
            NetError::Unexpected(
                "a message other than a weights chunk inside a weights transfer".into(),
            )
        })?;
        if let Some(values) = assembler.push(chunk)? {
            return Ok(values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32) * 0.25 - 3.0).collect()
    }

    #[test]
    fn hash_equals_content_hash_of_le_bytes() {
        let v = sample(10_001);
        assert_eq!(
            weights_hash(&v),
            ContentHash::of(&FloatVector(v.clone()).to_le_bytes())
        );
        assert_eq!(weights_hash(&[]), ContentHash::of(&[]));
    }

    #[test]
    fn chunks_fit_the_frame_and_reassemble() {
        let v = sample(5_000);
        let max = 4096;
        let chunks = chunk_weights(&v, max).unwrap();
        assert!(chunks.len() > 1);
        for c in &chunks {
            let frame = cohort_protocol::encode_frame(
                &cohort_protocol::ServerMessage::Weights(c.clone()),
                max,
            )
            .unwrap();
            assert!(frame.len() <= max + 4);
        }
        let mut a = WeightsAssembler::new(Some(weights_hash(&v)), v.len());
        let mut out = None;
        for c in chunks {
            assert!(out.is_none());
            out = a.push(c).unwrap();
        }
        assert_eq!(out.unwrap(), v);
    }

    #[test]
    fn pre_encoded_frames_decode_to_the_chunks() {
        let v = sample(5_000);
        let max = 4096;
        let frames = weights_frames(&v, max, cohort_protocol::ServerMessage::Weights).unwrap();
        let chunks = chunk_weights(&v, max).unwrap();
        assert_eq!(frames.len(), chunks.len());
        for (frame, chunk) in frames.iter().zip(chunks) {
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len + 4, frame.len());
            let decoded: cohort_protocol::ServerMessage =
                cohort_protocol::decode_payload(&frame[4..]).unwrap();
            assert_eq!(decoded, cohort_protocol::ServerMessage::Weights(chunk));
        }
    }

    #[test]
    fn empty_vector_round_trips() {
        let chunks = chunk_weights(&[], 4096).unwrap();
        assert_eq!(chunks.len(), 1);
        let mut a = WeightsAssembler::new(None, 0);
        assert_eq!(a.push(chunks[0].clone()).unwrap(), Some(vec![]));
    }

    #[test]
    fn inconsistent_chunks_are_refused() {
        let v = sample(3_000);
        let chunks = chunk_weights(&v, 4096).unwrap();
        let hash = weights_hash(&v);

        // Wrong hash requested.
        let mut a = WeightsAssembler::new(Some(ContentHash([7; 32])), v.len());
        assert!(matches!(
            a.push(chunks[0].clone()),
            Err(NetError::Weights(WeightsError::OtherVector { .. }))
        ));

        // Over the length limit: refused before allocating.
        let mut a = WeightsAssembler::new(None, v.len() - 1);
        assert!(matches!(
            a.push(chunks[0].clone()),
            Err(NetError::Weights(WeightsError::TooLong { .. }))
        ));

        // Out of order.
        let mut a = WeightsAssembler::new(Some(hash), v.len());
        a.push(chunks[0].clone()).unwrap();
        assert!(matches!(
            a.push(chunks[2].clone()),
            Err(NetError::Weights(WeightsError::OutOfOrder { .. }))
        ));

        // A tampered value is caught by the final hash.
        let mut tampered = chunks.clone();
        tampered[1].values.0[0] += 1.0;
        let mut a = WeightsAssembler::new(Some(hash), v.len());
        let mut last = Ok(None);
        for c in tampered {
            last = a.push(c);
            if last.is_err() {
                break;
            }
        }
        assert!(matches!(
            last,
            Err(NetError::Weights(WeightsError::HashMismatch { announced, .. })) if announced == hash
        ));

        // A chunk that overruns the announced length.
        let mut long = chunks[0].clone();
        long.total_len = 10;
        let mut a = WeightsAssembler::new(None, v.len());
        assert!(a.push(long).is_err());
    }

    #[test]
    fn tiny_frame_limit_is_refused() {
        assert!(chunk_weights(&[1.0], 100).is_err());
    }
}
