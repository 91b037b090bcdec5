//! Loopback tests of the transport: trust modes, ALPN, framing, the exporter binding and
//! weights streaming, over real quinn connections on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use cohort_net::quinn::{self, Endpoint};
use cohort_net::{
    ClientTransport, FramedStream, NetError, ServerIdentity, ServerTrust, TransportOptions,
    bind_server, receive_weights, send_weights, tls_binding,
};
use cohort_protocol::{
    Capabilities, ClientMessage, CodecError, DEFAULT_MAX_FRAME_LEN, Hello, HelloAck, ServerMessage,
};

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn identity() -> ServerIdentity {
    ServerIdentity::ephemeral(&["localhost".into()]).unwrap()
}

fn hello() -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: cohort_protocol::PROTOCOL_VERSION,
        software: "test/0".into(),
        capabilities: Capabilities::default(),
    })
}

/// A server that answers every `Hello` on the first bidirectional stream of each connection with
/// a `HelloAck`, until the stream ends.
fn spawn_hello_server(endpoint: Endpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut stream) = FramedStream::accept(&conn, MAX).await else {
                    return;
                };
                while let Ok(Some(ClientMessage::Hello(h))) = stream.recv::<ClientMessage>().await {
                    let ack = ServerMessage::HelloAck(HelloAck {
                        protocol_version: h.protocol_version,
                        software: format!("echo of {}", h.software),
                        capabilities: Capabilities::default(),
                    });
                    if stream.send(&ack).await.is_err() {
                        return;
                    }
                }
                stream.finish();
                conn.closed().await;
            });
        }
    });
}

fn client(trust: ServerTrust) -> ClientTransport {
    ClientTransport::bind(loopback(), trust, TransportOptions::default()).unwrap()
}

#[tokio::test]
async fn pinned_client_connects_and_exchanges_frames() {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);

    let client = client(ServerTrust::Pinned(id.fingerprint()));
    let conn = client.connect(addr, "localhost").await.unwrap();
    assert_eq!(
        conn.handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol),
        Some(cohort_net::ALPN.to_vec())
    );
    let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
    for _ in 0..3 {
        stream.send(&hello()).await.unwrap();
        match stream.expect::<ServerMessage>().await.unwrap() {
            ServerMessage::HelloAck(ack) => assert_eq!(ack.software, "echo of test/0"),
            other => panic!("unexpected {other:?}"),
        }
    }
    stream.finish();
    assert!(stream.recv::<ServerMessage>().await.unwrap().is_none());
}

#[tokio::test]
async fn wrong_pin_fails_with_pin_mismatch() {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);

    let other = identity().fingerprint();
    let client = client(ServerTrust::Pinned(other));
    match client.connect(addr, "localhost").await {
        Err(NetError::PinMismatch {
            expected,
            presented,
        }) => {
            assert_eq!(expected, other.to_hex());
            assert_eq!(presented, id.fingerprint().to_hex());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn certificate_copied_without_its_key_fails() {
    // An impostor presents the real certificate with its own key. The pin matches, so only the
    // proof of possession (the TLS 1.3 CertificateVerify signature) can stop it; rustls may
    // already refuse to serve a key that does not match the certificate, which stops it too.
    let real_dir = tempfile::tempdir().unwrap();
    let impostor_dir = tempfile::tempdir().unwrap();
    let real = ServerIdentity::load_or_generate(real_dir.path(), &["localhost".into()]).unwrap();
    ServerIdentity::load_or_generate(impostor_dir.path(), &["localhost".into()]).unwrap();
    let forged = ServerIdentity::from_pem_files(
        &real_dir.path().join(cohort_net::identity::CERT_FILE),
        &impostor_dir.path().join(cohort_net::identity::KEY_FILE),
    )
    .unwrap();
    assert_eq!(forged.fingerprint(), real.fingerprint());
    let server = match bind_server(loopback(), &forged, &TransportOptions::default()) {
        Ok(s) => s,
        Err(NetError::TlsConfig(_)) => return,
        Err(e) => panic!("unexpected {e}"),
    };
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);
    let client = client(ServerTrust::Pinned(real.fingerprint()));
    let res = tokio::time::timeout(Duration::from_secs(10), client.connect(addr, "localhost"))
        .await
        .unwrap();
    assert!(matches!(res, Err(NetError::Connection(_))), "{res:?}");
}

#[tokio::test]
async fn alpn_mismatch_is_refused() {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);

    for alpn in [vec![b"other/1".to_vec()], vec![]] {
        let options = TransportOptions {
            alpn_protocols: alpn.clone(),
            ..TransportOptions::default()
        };
        let client =
            ClientTransport::bind(loopback(), ServerTrust::Pinned(id.fingerprint()), options)
                .unwrap();
        let res = client.connect(addr, "localhost").await;
        match res {
            Err(NetError::Connection(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("application protocol") || text.contains("120"),
                    "ALPN {alpn:?}: {text}"
                );
            }
            other => panic!("ALPN {alpn:?} should be refused, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn webpki_trust_checks_roots_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let id = ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);

    // The self-signed certificate is its own root.
    let roots = dir.path().join(cohort_net::identity::CERT_FILE);
    let client = client(ServerTrust::WebPki {
        roots: roots.clone(),
    });
    let conn = client.connect(addr, "localhost").await.unwrap();
    let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
    stream.send(&hello()).await.unwrap();
    assert!(matches!(
        stream.expect::<ServerMessage>().await.unwrap(),
        ServerMessage::HelloAck(_)
    ));

    // The wrong name fails.
    let res = client.connect(addr, "coordinator.example").await;
    assert!(matches!(res, Err(NetError::Connection(_))), "{res:?}");

    // Roots that do not include the server's certificate fail.
    let other_dir = tempfile::tempdir().unwrap();
    ServerIdentity::load_or_generate(other_dir.path(), &["localhost".into()]).unwrap();
    let client = client_with_roots(other_dir.path().join(cohort_net::identity::CERT_FILE));
    let res = client.connect(addr, "localhost").await;
    assert!(matches!(res, Err(NetError::Connection(_))), "{res:?}");

    // A roots file that is not PEM is refused when binding.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let res = ClientTransport::bind(
        loopback(),
        ServerTrust::WebPki { roots: bad },
        TransportOptions::default(),
    );
    assert!(matches!(res, Err(NetError::Certificate(_))), "{res:?}");
}

fn client_with_roots(roots: std::path::PathBuf) -> ClientTransport {
    client(ServerTrust::WebPki { roots })
}

#[tokio::test]
async fn dangerous_mode_connects_to_anyone() {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    spawn_hello_server(server);
    let client = client(ServerTrust::DangerousAcceptAnyCertificate);
    client.connect(addr, "localhost").await.unwrap();
}

#[tokio::test]
async fn exporter_is_equal_on_both_ends_and_differs_across_connections() {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = client(ServerTrust::Pinned(id.fingerprint()));

    let mut bindings = Vec::new();
    for _ in 0..2 {
        let (client_conn, server_conn) = tokio::join!(client.connect(addr, "localhost"), async {
            server.accept().await.unwrap().await.unwrap()
        });
        let client_conn = client_conn.unwrap();
        let c = tls_binding(&client_conn).unwrap();
        let s = tls_binding(&server_conn).unwrap();
        assert_eq!(c, s);
        assert_ne!(c, [0u8; 32]);
        bindings.push(c);
    }
    assert_ne!(bindings[0], bindings[1]);
}

/// A connected stream pair: the client's opened stream and the server's accepted one.
async fn stream_pair() -> (
    FramedStream,
    FramedStream,
    quinn::Connection,
    quinn::Connection,
) {
    let id = identity();
    let server = bind_server(loopback(), &id, &TransportOptions::default()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = client(ServerTrust::Pinned(id.fingerprint()));
    let (client_conn, server_conn) = tokio::join!(client.connect(addr, "localhost"), async {
        server.accept().await.unwrap().await.unwrap()
    });
    let client_conn = client_conn.unwrap();
    let mut c = FramedStream::open(&client_conn, MAX).await.unwrap();
    // A stream is announced to the peer only once data is sent on it.
    c.send(&hello()).await.unwrap();
    let mut s = FramedStream::accept(&server_conn, MAX).await.unwrap();
    assert!(matches!(
        s.expect::<ClientMessage>().await.unwrap(),
        ClientMessage::Hello(_)
    ));
    // Keep the endpoints alive through the connections.
    std::mem::forget(server);
    std::mem::forget(client);
    (c, s, client_conn, server_conn)
}

#[tokio::test]
async fn garbage_bytes_yield_a_decode_error() {
    let (mut c, mut s, _cc, _sc) = stream_pair().await;
    // A well-formed prefix and version, then bytes that are not CBOR of a ClientMessage.
    let body = [0xffu8, 0x00, 0x13, 0x37, 0x42];
    let mut frame = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&cohort_protocol::PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&body);
    c.send.write_all(&frame).await.unwrap();
    let err = s.recv::<ClientMessage>().await.unwrap_err();
    assert!(
        matches!(err, NetError::Codec(CodecError::Malformed(_))),
        "{err:?}"
    );
    // The bad frame was consumed: the next one decodes.
    c.send(&hello()).await.unwrap();
    assert!(matches!(
        s.expect::<ClientMessage>().await.unwrap(),
        ClientMessage::Hello(_)
    ));

    // A wrong protocol version is reported as such.
    let mut frame = 4u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&99u16.to_be_bytes());
    frame.extend_from_slice(&[0xa0, 0xa0]);
    c.send.write_all(&frame).await.unwrap();
    let err = s.recv::<ClientMessage>().await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Codec(CodecError::UnsupportedVersion { got: 99, .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn truncated_frame_and_clean_end_are_told_apart() {
    let (mut c, mut s, _cc, _sc) = stream_pair().await;
    let frame = cohort_protocol::encode_frame(&hello(), MAX).unwrap();
    c.send.write_all(&frame[..frame.len() - 3]).await.unwrap();
    c.finish();
    let err = s.recv::<ClientMessage>().await.unwrap_err();
    assert!(matches!(err, NetError::Truncated { .. }), "{err:?}");

    let (mut c, mut s, _cc, _sc) = stream_pair().await;
    c.finish();
    assert!(s.recv::<ClientMessage>().await.unwrap().is_none());
}

#[tokio::test]
async fn frame_over_the_readers_limit_is_refused() {
    let (mut c, mut s, _cc, _sc) = stream_pair().await;
    s.set_max_frame_len(64);
    let big = ClientMessage::Hello(Hello {
        protocol_version: 1,
        software: "x".repeat(200),
        capabilities: Capabilities::default(),
    });
    c.send(&big).await.unwrap();
    let err = s.recv::<ClientMessage>().await.unwrap_err();
    assert!(err.is_frame_too_large(), "{err:?}");
    // The writer refuses to produce a frame over its own limit, without sending anything.
    c.set_max_frame_len(64);
    let err = c.send(&big).await.unwrap_err();
    assert!(err.is_frame_too_large(), "{err:?}");
}

#[tokio::test]
async fn weights_stream_in_chunks_and_verify() {
    let (mut c, mut s, _cc, _sc) = stream_pair().await;
    let values: Vec<f32> = (0..300_000).map(|i| (i as f32).sin()).collect();
    let small = 256 * 1024; // forces several chunks
    let expected = cohort_net::weights::weights_hash(&values);
    let sender = async {
        send_weights(&mut s.send, &values, small, ServerMessage::Weights)
            .await
            .unwrap()
    };
    let receiver = receive_weights::<ServerMessage>(
        &mut c.recv,
        small,
        Some(expected),
        1_000_000,
        |m| match m {
            ServerMessage::Weights(chunk) => Some(chunk),
            _ => None,
        },
    );
    let (hash, received) = tokio::join!(sender, receiver);
    assert_eq!(hash, expected);
    assert_eq!(received.unwrap(), values);

    // The same transfer refused when another vector was asked for.
    let other = cohort_protocol::ContentHash([1; 32]);
    let sender = async {
        let _ = send_weights(&mut s.send, &values, small, ServerMessage::Weights).await;
    };
    let receiver =
        receive_weights::<ServerMessage>(&mut c.recv, small, Some(other), 1_000_000, |m| match m {
            ServerMessage::Weights(chunk) => Some(chunk),
            _ => None,
        });
    let (_, res) = tokio::join!(sender, receiver);
    assert!(matches!(res, Err(NetError::Weights(_))), "{res:?}");
}
