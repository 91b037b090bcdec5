//! The frame codec at its edges: limits checked from the prefix alone, version mismatches,
//! garbage, truncation, the byte-string vectors, and a decoder that never panics on any input.

use cohort_protocol::codec::{LEN_PREFIX, to_cbor};
use cohort_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_bytes::ByteBuf;

const MAX: usize = 1024;

fn wire_error(message: &str) -> ClientMessage {
    ClientMessage::Error(WireError {
        code: ErrorCode::BadMessage,
        message: message.to_owned(),
    })
}

fn frame(msg: &ClientMessage) -> Vec<u8> {
    encode_frame(msg, DEFAULT_MAX_FRAME_LEN).unwrap()
}

/// A frame with the given version and body, built by hand.
fn raw_frame(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(body);
    out
}

// --- Limits ----------------------------------------------------------------------------------

#[test]
fn oversized_frame_is_refused_from_its_prefix_alone() {
    let mut decoder = FrameDecoder::new(MAX);
    // Only the prefix has arrived; the body never will.
    let err = decoder.push(&((MAX + 1) as u32).to_be_bytes()).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max } if len == MAX + 1 && max == MAX),
        "{err:?}"
    );
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // The decoder stays refused: the stream cannot be re-synchronised.
    assert!(matches!(
        decoder.next::<ClientMessage>(),
        Err(CodecError::FrameTooLarge { .. })
    ));
}

#[test]
fn oversized_prefix_split_across_pushes_is_refused_when_complete() {
    let mut decoder = FrameDecoder::new(MAX);
    let prefix = u32::MAX.to_be_bytes();
    for b in &prefix[..3] {
        decoder.push(&[*b]).unwrap();
        assert!(decoder.next::<ClientMessage>().unwrap().is_none());
    }
    assert!(matches!(
        decoder.push(&prefix[3..]),
        Err(CodecError::FrameTooLarge { len, .. }) if len == u32::MAX as usize
    ));
}

#[test]
fn a_frame_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
    let msg = wire_error(&"x".repeat(100));
    let f = frame(&msg);
    let len = f.len() - LEN_PREFIX;

    let mut decoder = FrameDecoder::new(len);
    decoder.push(&f).unwrap();
    assert_eq!(decoder.next::<ClientMessage>().unwrap(), Some(msg.clone()));
    decoder.finish().unwrap();

    let mut decoder = FrameDecoder::new(len - 1);
    assert!(matches!(
        decoder.push(&f),
        Err(CodecError::FrameTooLarge { len: l, max }) if l == len && max == len - 1
    ));
}

#[test]
fn frame_len_checks_both_bounds() {
    assert_eq!(frame_len(2u32.to_be_bytes(), MAX).unwrap(), 2);
    assert_eq!(frame_len((MAX as u32).to_be_bytes(), MAX).unwrap(), MAX);
    assert!(matches!(
        frame_len(((MAX + 1) as u32).to_be_bytes(), MAX),
        Err(CodecError::FrameTooLarge { len, max }) if len == MAX + 1 && max == MAX
    ));
    assert!(matches!(
        frame_len(u32::MAX.to_be_bytes(), DEFAULT_MAX_FRAME_LEN),
        Err(CodecError::FrameTooLarge { .. })
    ));
    for short in [0u32, 1] {
        let err = frame_len(short.to_be_bytes(), MAX).unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooShort { len } if len == short as usize),
            "{err:?}"
        );
    }
}

#[test]
fn a_too_short_frame_in_a_stream_is_refused() {
    let mut decoder = FrameDecoder::new(MAX);
    assert!(matches!(
        decoder.push(&[0, 0, 0, 1, 0]),
        Err(CodecError::FrameTooShort { len: 1 })
    ));
    assert!(matches!(
        decode_payload::<ClientMessage>(&[1]),
        Err(CodecError::FrameTooShort { len: 1 })
    ));
}

#[test]
fn encode_refuses_a_message_over_the_limit() {
    let msg = ClientMessage::MaskedInput(MaskedInput {
        round_id: RoundId(1),
        vector: PackedVector::pack(&vec![7; 1000], 32).unwrap(),
    });
    let len = frame(&msg).len() - LEN_PREFIX;
    assert!(len > 4000);
    let err = encode_frame(&msg, len - 1).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len: l, max } if l == len && max == len - 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("split"), "{err}");
    assert_eq!(encode_frame(&msg, len).unwrap().len(), len + LEN_PREFIX);
}

#[test]
fn a_lowered_limit_applies_to_the_next_frame() {
    let big = wire_error(&"y".repeat(200));
    let f = frame(&big);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    assert_eq!(decoder.max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    decoder.set_max_frame_len(64);
    assert!(matches!(
        decoder.push(&f),
        Err(CodecError::FrameTooLarge { max: 64, .. })
    ));
}

#[test]
fn a_valid_frame_before_an_oversized_one_is_still_delivered() {
    // Regression: `next` used to re-check the following prefix after decoding and return its
    // error instead of the message it had just decoded, losing that message.
    let msg = wire_error("last words");
    let mut stream = frame(&msg);
    stream.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(&stream).unwrap();
    assert_eq!(decoder.next::<ClientMessage>().unwrap(), Some(msg));
    assert!(matches!(
        decoder.next::<ClientMessage>(),
        Err(CodecError::FrameTooLarge { .. })
    ));
}

// --- Versions --------------------------------------------------------------------------------

#[test]
fn an_unknown_version_is_reported_as_such_with_advice() {
    let mut f = frame(&wire_error("hi"));
    f[LEN_PREFIX..LEN_PREFIX + 2].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());

    let err = decode_payload::<ClientMessage>(&f[LEN_PREFIX..]).unwrap_err();
    match &err {
        CodecError::UnsupportedVersion { got, supported } => {
            assert_eq!(*got, PROTOCOL_VERSION + 1);
            assert_eq!(*supported, PROTOCOL_VERSION);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("upgrade"), "{text}");
    assert!(text.contains(&(PROTOCOL_VERSION + 1).to_string()), "{text}");

    // The version is checked before the body: even a garbage body says "version".
    let garbage = raw_frame(0xBEEF, &[0xff, 0xff, 0xff]);
    assert!(matches!(
        decode_payload::<ServerMessage>(&garbage[LEN_PREFIX..]),
        Err(CodecError::UnsupportedVersion { got: 0xBEEF, .. })
    ));
}

#[test]
fn the_decoder_moves_past_a_bad_frame() {
    let good = wire_error("after");
    let mut stream = raw_frame(PROTOCOL_VERSION + 7, b"whatever");
    stream.extend(raw_frame(PROTOCOL_VERSION, &[0x1f, 0x00]));
    stream.extend(frame(&good));
    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(&stream).unwrap();
    assert!(matches!(
        decoder.next::<ClientMessage>(),
        Err(CodecError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        decoder.next::<ClientMessage>(),
        Err(CodecError::Malformed(_))
    ));
    assert_eq!(decoder.next::<ClientMessage>().unwrap(), Some(good));
    assert_eq!(decoder.next::<ClientMessage>().unwrap(), None);
    decoder.finish().unwrap();
}

// --- Malformed bodies ------------------------------------------------------------------------

#[test]
fn empty_body_trailing_bytes_and_wrong_types_are_malformed() {
    // Version only, no body.
    assert!(matches!(
        decode_payload::<ClientMessage>(&PROTOCOL_VERSION.to_be_bytes()),
        Err(CodecError::Malformed(_))
    ));
    // A valid message followed by one more CBOR item.
    let mut f = frame(&wire_error("x"));
    f.push(0x00);
    assert!(matches!(
        decode_payload::<ClientMessage>(&f[LEN_PREFIX..]),
        Err(CodecError::Malformed(_))
    ));
    // A client message is not a server message.
    let f = frame(&ClientMessage::CheckIn(CheckIn {
        task: None,
        device: DeviceState::default(),
        known_head: None,
        known_identity_head: None,
    }));
    assert!(matches!(
        decode_payload::<ServerMessage>(&f[LEN_PREFIX..]),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn truncated_stream_fails_at_finish() {
    let f = frame(&wire_error("cut short"));
    for cut in [1, LEN_PREFIX, LEN_PREFIX + 1, f.len() - 1] {
        let mut decoder = FrameDecoder::new(MAX);
        decoder.push(&f[..cut]).unwrap();
        assert_eq!(decoder.next::<ClientMessage>().unwrap(), None);
        assert_eq!(decoder.buffered(), cut);
        let err = decoder.finish().unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { buffered } if buffered == cut),
            "{err:?}"
        );
    }
    // A complete frame followed by part of another.
    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(&f).unwrap();
    decoder.push(&f[..3]).unwrap();
    assert!(decoder.next::<ClientMessage>().unwrap().is_some());
    assert!(matches!(
        decoder.finish(),
        Err(CodecError::Truncated { buffered: 3 })
    ));
}

#[test]
fn many_small_frames_in_one_push_all_decode() {
    // 200,000 frames in one buffer. Draining the buffer once per frame made this quadratic
    // (about 10^12 bytes moved); with a read offset it is linear.
    let msgs: Vec<ClientMessage> = (0..200_000).map(|i| wire_error(&i.to_string())).collect();
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend(frame(m));
    }
    let mut decoder = FrameDecoder::new(MAX);
    decoder.push(&stream).unwrap();
    let mut n = 0;
    while let Some(m) = decoder.next::<ClientMessage>().unwrap() {
        assert_eq!(m, msgs[n]);
        n += 1;
    }
    assert_eq!(n, msgs.len());
    assert_eq!(decoder.buffered(), 0);
    decoder.finish().unwrap();
}

// --- Vectors ---------------------------------------------------------------------------------

#[test]
fn vectors_refuse_a_partial_element() {
    for len in [1usize, 2, 3, 5, 7, 401] {
        let bytes = ByteBuf::from(vec![0u8; len]);
        let body = to_cbor(&bytes).unwrap();
        let err = decode_payload::<RingVector>(&raw_frame(PROTOCOL_VERSION, &body)[LEN_PREFIX..])
            .unwrap_err();
        let CodecError::Malformed(text) = &err else {
            panic!("expected Malformed, got {err:?}")
        };
        assert!(text.contains("RingVector"), "{text}");
        assert!(text.contains(&format!("{len} bytes")), "{text}");
        let err = decode_payload::<FloatVector>(&raw_frame(PROTOCOL_VERSION, &body)[LEN_PREFIX..])
            .unwrap_err();
        assert!(matches!(&err, CodecError::Malformed(t) if t.contains("FloatVector")));
    }
    // Whole elements are fine.
    let body = to_cbor(&ByteBuf::from(vec![1, 0, 0, 0, 2, 0, 0, 0])).unwrap();
    assert_eq!(
        decode_payload::<RingVector>(&raw_frame(PROTOCOL_VERSION, &body)[LEN_PREFIX..]).unwrap(),
        RingVector(vec![1, 2])
    );
}

#[test]
fn vectors_refuse_an_array_of_integers() {
    // [1, 0, 0, 0] as a CBOR array: the right bytes, the wrong type.
    let body = [0x84, 0x01, 0x00, 0x00, 0x00];
    assert!(matches!(
        decode_payload::<RingVector>(&raw_frame(PROTOCOL_VERSION, &body)[LEN_PREFIX..]),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn vectors_accept_an_indefinite_length_byte_string() {
    // (_ h'01000000', h'02000000'): valid CBOR, read through serde_cbor's scratch buffer.
    let body = [
        0x5f, 0x44, 1, 0, 0, 0, 0x44, 2, 0, 0, 0, 0xff, //
    ];
    assert_eq!(
        decode_payload::<RingVector>(&raw_frame(PROTOCOL_VERSION, &body)[LEN_PREFIX..]).unwrap(),
        RingVector(vec![1, 2])
    );
}

#[test]
fn a_million_floats_are_one_byte_string() {
    let v = FloatVector((0..1_000_000).map(|i| i as f32 * 0.5).collect());
    let cbor = to_cbor(&v).unwrap();
    // Major type 2 (byte string) with a 4-byte length: 5 bytes of header, then the data.
    assert_eq!(cbor.len(), 4_000_000 + 5);
    assert_eq!(cbor[0], 0x5a);
    assert_eq!(
        u32::from_be_bytes(cbor[1..5].try_into().unwrap()),
        4_000_000
    );
    assert_eq!(&cbor[5..9], &v.0[0].to_le_bytes());
    assert_eq!(&cbor[9..13], &v.0[1].to_le_bytes());

    let f = encode_frame(&v, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(f.len(), LEN_PREFIX + 2 + 4_000_005);
    assert_eq!(decode_payload::<FloatVector>(&f[LEN_PREFIX..]).unwrap(), v);
}

// --- Never a panic ---------------------------------------------------------------------------

/// Pushes `bytes` in pieces and pops until the decoder refuses or runs dry; returns how many
/// frames it decoded. Panics only if the codec does.
fn drain_any<T: serde::de::DeserializeOwned>(bytes: &[u8], piece: usize, max: usize) -> usize {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = 0;
    for chunk in bytes.chunks(piece.max(1)) {
        if decoder.push(chunk).is_err() {
            return frames;
        }
        loop {
            match decoder.next::<T>() {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { .. } | CodecError::FrameTooShort { .. }) => {
                    return frames;
                }
                Err(_) => frames += 1,
            }
        }
    }
    let _ = decoder.finish();
    frames
}

/// Valid frames of a few messages, to mutate.
fn seed_frames() -> Vec<Vec<u8>> {
    vec![
        frame(&ClientMessage::Hello(Hello {
            protocol_version: 1,
            software: "cohort-edge/0.1.0".into(),
            capabilities: Capabilities {
                max_frame_len: 1 << 20,
                secagg_suites: vec![CipherSuite::X25519HkdfSha256ChaCha20V1],
                backends: vec!["wgpu".into(), "flex".into()],
            },
        })),
        frame(&ClientMessage::MaskedInput(MaskedInput {
            round_id: RoundId(9),
            vector: PackedVector::pack(&[1, 2, 3], 32).unwrap(),
        })),
        encode_frame(
            &ServerMessage::CheckIn(CheckInResponse::Accepted {
                plan: TaskPlan {
                    task: TaskId("mnist".into()),
                    model: ModelSpec {
                        input_shape: vec![784],
                        layers: vec![LayerSpec::Linear { out: 10 }],
                        num_classes: 10,
                    },
                    training: TrainingParams {
                        epochs: 1,
                        batch_size: 32,
                        learning_rate: 0.1,
                        optimizer: OptimizerSpec::Adam {
                            beta1: 0.9,
                            beta2: 0.999,
                        },
                        proximal_mu: 0.0,
                    },
                    privacy: None,
                    input: None,
                },
                log: vec![RoundLogEntry {
                    task: TaskId("mnist".into()),
                    round: RoundId(0),
                    participants: 0,
                    input_weights: ROUND_LOG_GENESIS,
                    output_weights: ContentHash([7; 32]),
                    params: ByteBuf::from(b"{}".to_vec()),
                    created_at: 1,
                    prev: ROUND_LOG_GENESIS,
                    hash: ContentHash([8; 32]),
                    signature: ByteBuf::from(vec![9; 64]),
                }],
            }),
            DEFAULT_MAX_FRAME_LEN,
        )
        .unwrap(),
        encode_frame(
            &ServerMessage::Unmask(UnmaskRequest {
                round_id: RoundId(3),
                dropped: vec![ClientIndex(2)],
                survivors: vec![ClientIndex(1), ClientIndex(3)],
                signatures: vec![SurvivorSignature {
                    signer: ClientIndex(3),
                    signature: ByteBuf::from(vec![5; 8]),
                }],
            }),
            DEFAULT_MAX_FRAME_LEN,
        )
        .unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), piece in 1usize..64) {
        drain_any::<ClientMessage>(&bytes, piece, MAX);
        drain_any::<ServerMessage>(&bytes, piece, MAX);
        let _ = decode_payload::<ClientMessage>(&bytes);
        let _ = decode_payload::<ServerMessage>(&bytes);
    }

    /// Random bodies behind a valid header are refused as `Malformed`, never anything else.
    #[test]
    fn garbage_after_a_valid_header_is_malformed(body in vec(any::<u8>(), 0..200)) {
        let f = raw_frame(PROTOCOL_VERSION, &body);
        for r in [
            decode_payload::<ClientMessage>(&f[LEN_PREFIX..]).map(|_| ()),
            decode_payload::<ServerMessage>(&f[LEN_PREFIX..]).map(|_| ()),
        ] {
            prop_assert!(matches!(r, Ok(()) | Err(CodecError::Malformed(_))), "{:?}", r);
        }
        let mut decoder = FrameDecoder::new(MAX);
        decoder.push(&f).unwrap();
        let r = decoder.next::<ClientMessage>();
        prop_assert!(matches!(r, Ok(Some(_)) | Err(CodecError::Malformed(_))), "{:?}", r);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    /// Valid frames with a few bytes overwritten: the hardest inputs for a parser, since most
    /// of the structure is right.
    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..4,
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = seed_frames().swap_remove(which);
        // Keep the prefix and version, so the body is what gets parsed.
        let body = 2 + LEN_PREFIX..f.len();
        for (at, byte) in edits {
            let i = body.start + at.index(body.len());
            f[i] = byte;
        }
        let payload = &f[LEN_PREFIX..];
        let r1 = decode_payload::<ClientMessage>(payload).map(|_| ());
        let r2 = decode_payload::<ServerMessage>(payload).map(|_| ());
        prop_assert!(matches!(r1, Ok(()) | Err(CodecError::Malformed(_))), "{:?}", r1);
        prop_assert!(matches!(r2, Ok(()) | Err(CodecError::Malformed(_))), "{:?}", r2);
        // And a body cut anywhere.
        let end = LEN_PREFIX + 2 + cut.index(f.len() - LEN_PREFIX - 2);
        let r = decode_payload::<ServerMessage>(&f[LEN_PREFIX..end]).map(|_| ());
        prop_assert!(matches!(r, Ok(()) | Err(CodecError::Malformed(_))), "{:?}", r);
    }
}
