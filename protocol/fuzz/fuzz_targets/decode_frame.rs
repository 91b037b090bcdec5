//! Feeds arbitrary bytes to the frame codec, as a peer on the network could.
//!
//! The input is used three ways: as a byte stream pushed into a [`FrameDecoder`] in pieces
//! (sized by the first byte), decoded as both message enums; and as one frame payload given to
//! [`decode_payload`]. Any panic, overflow or runaway allocation is a bug.

#![no_main]

use cohort_protocol::{ClientMessage, CodecError, FrameDecoder, ServerMessage, decode_payload};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

/// Small enough that the fuzzer reaches the "too large" path, large enough for real messages.
const MAX_FRAME_LEN: usize = 64 * 1024;

fn drain<T: DeserializeOwned>(stream: &[u8], piece: usize) {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    for chunk in stream.chunks(piece) {
        if decoder.push(chunk).is_err() {
            return;
        }
        loop {
            match decoder.next::<T>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // The stream cannot be re-synchronised after a bad length.
                Err(CodecError::FrameTooLarge { .. } | CodecError::FrameTooShort { .. }) => {
                    return;
                }
                // A bad frame is consumed; the decoder goes on with the next one.
                Err(_) => {}
            }
        }
    }
    let _ = decoder.finish();
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 16) + 1;
    drain::<ClientMessage>(rest, piece);
    drain::<ServerMessage>(rest, piece);
    let _ = decode_payload::<ClientMessage>(data);
    let _ = decode_payload::<ServerMessage>(data);
});
