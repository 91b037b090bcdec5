//! No per-client metadata in the clear (issue 10 item 5): what a device sends beside its masked
//! input, checked on the CBOR itself, so that a field or message that came back would fail here
//! even if every round trip still passed.
//!
//! - `CheckIn` carries the task, the device's eligibility state and the log heads it verified:
//!   no example count.
//! - `MaskedInput` is the round id and the packed vector, nothing else (federated-evaluation
//!   scalars travel inside the vector).
//! - There is no client message for evaluation metrics: a frame naming the old
//!   `LocalEvaluation` variant is unknown to the frame-limit peek and refused by the decoder.

use std::collections::BTreeSet;

use cohort_protocol::limits::{ClientKind, peek_variant};
use cohort_protocol::*;
use serde_cbor::Value;

/// The field names of `msg`'s CBOR map inside its variant, `{variant: {field: ...}}`.
fn fields(msg: &ClientMessage) -> (String, BTreeSet<String>) {
    let value = serde_cbor::value::to_value(msg).expect("serialises");
    let Value::Map(outer) = value else {
        panic!("a client message is a map from its variant: {value:?}")
    };
    let (Value::Text(variant), Value::Map(inner)) = outer.into_iter().next().expect("a variant")
    else {
        panic!("a variant name and a struct body")
    };
    let names = inner
        .into_keys()
        .map(|k| match k {
            Value::Text(t) => t,
            other => panic!("field names are text: {other:?}"),
        })
        .collect();
    (variant, names)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_check_in_carries_no_example_count() {
    let check_in = ClientMessage::CheckIn(CheckIn {
        task: Some(TaskId("t".into())),
        device: DeviceState::default(),
        known_head: None,
        known_identity_head: None,
    });
    let (variant, names) = fields(&check_in);
    assert_eq!(variant, "CheckIn");
    assert_eq!(
        names,
        set(&["task", "device", "known_head", "known_identity_head"])
    );
    // A build that still sends a count speaks protocol 2 and is refused by the version check.
    const { assert!(PROTOCOL_VERSION >= 3) };
    let frame = encode_frame(&check_in, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(u16::from_be_bytes([frame[4], frame[5]]), PROTOCOL_VERSION);
}

#[test]
fn a_masked_input_is_its_round_and_vector_only() {
    let input = ClientMessage::MaskedInput(MaskedInput {
        round_id: RoundId(1),
        vector: PackedVector::pack(&[1, 2, 3], 8).unwrap(),
    });
    let (variant, names) = fields(&input);
    assert_eq!(variant, "MaskedInput");
    assert_eq!(names, set(&["round_id", "vector"]));
}

#[test]
fn there_is_no_clear_evaluation_message() {
    #[derive(serde::Serialize)]
    struct OldLocalEvaluation {
        round_id: RoundId,
        examples: u64,
        loss: f32,
        accuracy: f32,
    }
    #[derive(serde::Serialize)]
    enum OldClientMessage {
        LocalEvaluation(OldLocalEvaluation),
    }
    let old = OldClientMessage::LocalEvaluation(OldLocalEvaluation {
        round_id: RoundId(1),
        examples: 100,
        loss: 0.5,
        accuracy: 0.9,
    });
    let frame = encode_frame(&old, DEFAULT_MAX_FRAME_LEN).unwrap();
    let payload = &frame[4..];
    assert_eq!(peek_variant(payload), Some("LocalEvaluation"));
    assert_eq!(
        ClientKind::from_variant(peek_variant(payload)),
        ClientKind::Unknown
    );
    assert!(decode_payload::<ClientMessage>(payload).is_err());
}
