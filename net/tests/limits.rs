//! The transport's limits against a real quinn connection on loopback: one stream and no
//! datagrams before login, more streams after [`open_after_login`], and frame limits by message
//! kind checked before a frame's body is read.

mod support;

use std::time::Duration;

use cohort_net::{NetError, open_after_login, read_message_by_kind};
use cohort_protocol::limits::{ClientKind, PRE_AUTH_MAX_FRAME_LEN};
use cohort_protocol::{
    ClientMessage, CodecError, MaskedInput, PackedVector, RoundId, encode_frame,
};

/// Whether `fut` is still pending after one poll.
async fn pending<F: std::future::Future>(fut: F) -> bool {
    tokio::select! {
        biased;
        _ = fut => false,
        _ = std::future::ready(()) => true,
    }
}

#[tokio::test]
async fn one_stream_and_no_datagrams_until_login() {
    let (client, server, _t) = support::pair().await;
    // The server offered no datagram support, whatever the client would like.
    assert_eq!(client.max_datagram_size(), None);
    assert!(client.send_datagram(vec![1, 2, 3].into()).is_err());
    let (mut send, mut recv) = client.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    let (mut ssend, mut srecv) = server.accept_bi().await.unwrap();
    let mut buf = [0u8; 4];
    srecv.read_exact(&mut buf).await.unwrap();
    ssend.write_all(b"pong").await.unwrap();
    recv.read_exact(&mut buf).await.unwrap();
    // The transport parameters are known on both sides now: a second stream gets no credit.
    assert!(
        pending(client.open_bi()).await,
        "a second stream opened before login"
    );
    open_after_login(&server);
    let second = tokio::time::timeout(Duration::from_secs(10), client.open_bi())
        .await
        .expect("login opens weight streams")
        .unwrap();
    drop(second);
}

/// A frame that announces more than its kind allows is refused after its first bytes, with the
/// kind's limit, although it is far below the largest limit.
#[tokio::test]
async fn frame_limits_depend_on_the_kind_and_are_checked_before_the_body() {
    let (client, server, _t) = support::pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    let masked = ClientMessage::MaskedInput(MaskedInput {
        round_id: RoundId(1),
        vector: PackedVector::pack(&vec![7; 100_000], 32).unwrap(),
    });
    let frame = encode_frame(&masked, usize::MAX).unwrap();
    // Only the prefix and the head: a reader waiting for the body would hang.
    send.write_all(&frame[..64]).await.unwrap();
    let (_ssend, mut srecv) = server.accept_bi().await.unwrap();
    let limit = |variant: Option<&str>| ClientKind::from_variant(variant).frame_limit(false, None);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        read_message_by_kind::<ClientMessage>(&mut srecv, usize::MAX, limit),
    )
    .await
    .expect("refused from the head, without waiting for the body");
    match r {
        Err(NetError::Codec(CodecError::FrameTooLarge { len, max })) => {
            assert_eq!(len, frame.len() - 4);
            assert!(max <= 1024, "{max}");
        }
        other => panic!("expected FrameTooLarge, got {:?}", other.map(|_| ())),
    }
}

/// A frame within its kind's limit is read and decoded whole; the bytes are counted.
#[tokio::test]
async fn frames_within_their_kind_limit_are_read() {
    let (client, server, _t) = support::pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    let hello = ClientMessage::Error(cohort_protocol::WireError::new(
        cohort_protocol::ErrorCode::BadMessage,
        "x".repeat(100),
    ));
    let a = encode_frame(&hello, PRE_AUTH_MAX_FRAME_LEN).unwrap();
    // A frame shorter than the peek window: version and one CBOR null.
    let b = [0, 0, 0, 3, 0, cohort_protocol::PROTOCOL_VERSION as u8, 0xf6];
    send.write_all(&a).await.unwrap();
    send.write_all(&b).await.unwrap();
    send.finish().unwrap();
    let (_ssend, mut srecv) = server.accept_bi().await.unwrap();
    let limit = |variant: Option<&str>| ClientKind::from_variant(variant).frame_limit(false, None);
    let (m, n) = read_message_by_kind::<ClientMessage>(&mut srecv, PRE_AUTH_MAX_FRAME_LEN, limit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m, n), (hello, a.len()));
    assert!(matches!(
        read_message_by_kind::<ClientMessage>(&mut srecv, PRE_AUTH_MAX_FRAME_LEN, limit).await,
        Err(NetError::Codec(CodecError::Malformed(_)))
    ));
    assert!(
        read_message_by_kind::<ClientMessage>(&mut srecv, PRE_AUTH_MAX_FRAME_LEN, limit)
            .await
            .unwrap()
            .is_none()
    );
}

/// A prefix over every kind's limit is refused from the prefix alone, without waiting for the
/// head of the body (which this peer never sends).
#[tokio::test]
async fn a_prefix_over_every_limit_is_refused_without_waiting_for_the_head() {
    let (client, server, _t) = support::pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let (_ssend, mut srecv) = server.accept_bi().await.unwrap();
    let limit = |variant: Option<&str>| ClientKind::from_variant(variant).frame_limit(false, None);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        read_message_by_kind::<ClientMessage>(&mut srecv, PRE_AUTH_MAX_FRAME_LEN, limit),
    )
    .await
    .expect("refused from the prefix");
    assert!(matches!(
        r,
        Err(NetError::Codec(CodecError::FrameTooLarge { len, max }))
            if len == 1 << 20 && max == PRE_AUTH_MAX_FRAME_LEN
    ));
}
