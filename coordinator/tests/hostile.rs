//! Hostile peers against the real session handler over real QUIC on loopback (issue 14): each
//! test shows that what one misbehaving connection can cost is bounded, and that it ends in
//! time, without fixed sleeps (every wait is on an event, with a generous deadline only as the
//! test's own safety net).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cohort_coordinator::admission::AdmissionLimits;
use cohort_coordinator::auth::{
    AuthConfig, Authenticator, Enrollment, ManualClock, RateLimitPolicy,
    load_or_generate_server_setup,
};
use cohort_coordinator::session::{SessionContext, SessionOptions, close_code, serve};
use cohort_coordinator::store::{AsyncStore, DB_FILE, Store};
use cohort_edge::enroll;
use cohort_net::opaque_suite::{CohortOpaque, KsfParams};
use cohort_net::quinn::{self, Connection};
use cohort_net::{
    ClientTransport, FramedStream, ServerIdentity, ServerTrust, TransportOptions, bind_server,
};
use cohort_protocol::{
    AuthMessage, CheckIn, ClientMessage, DEFAULT_MAX_FRAME_LEN, DeviceState, ErrorCode,
    MaskedInput, PackedVector, RoundId, ServerMessage, encode_frame,
};
use opaque_ke::ClientLogin;
use rand::rngs::OsRng;
use serde_bytes::ByteBuf;
use tokio::sync::watch;

const MAX: usize = DEFAULT_MAX_FRAME_LEN;
/// The tests' own safety net: far longer than anything awaited should take.
const SAFETY: Duration = Duration::from_secs(60);

struct Harness {
    addr: SocketAddr,
    identity: ServerIdentity,
    client: ClientTransport,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn ksf() -> KsfParams {
    KsfParams::dangerous_insecure_fast_for_tests()
}

async fn start(options: SessionOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coordinator");
    std::fs::create_dir_all(&state).unwrap();
    let identity = ServerIdentity::load_or_generate(&state, &["localhost".into()]).unwrap();
    let setup = load_or_generate_server_setup(&state).unwrap();
    let store = Arc::new(Store::open(&state.join(DB_FILE)).unwrap());
    let auth = Arc::new(Authenticator::new(
        setup,
        store.clone(),
        AuthConfig {
            enrollment: Enrollment::Open,
            rate_limit: RateLimitPolicy::default(),
        },
        Arc::new(ManualClock::new(1_700_000_000)),
    ));
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportOptions::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ctx = Arc::new(SessionContext {
        auth,
        store: AsyncStore(store),
        options,
        scheduler: None,
        weights: Default::default(),
    });
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve(endpoint, ctx, rx));
    let client = transport(&identity);
    Harness {
        addr,
        identity,
        client,
        _shutdown: tx,
        _dir: dir,
    }
}

fn transport(identity: &ServerIdentity) -> ClientTransport {
    ClientTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTrust::Pinned(identity.fingerprint()),
        TransportOptions::default(),
    )
    .unwrap()
}

impl Harness {
    async fn connect(&self) -> Connection {
        self.client.connect(self.addr, "localhost").await.unwrap()
    }

    /// A connection with its session stream, after the hello.
    async fn session(&self) -> (Connection, FramedStream) {
        let conn = self.connect().await;
        let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
        enroll::hello(&mut stream).await.unwrap();
        (conn, stream)
    }
}

/// The application close code once the coordinator closed `conn`.
async fn close_code_of(conn: &Connection) -> Option<u32> {
    match tokio::time::timeout(SAFETY, conn.closed())
        .await
        .expect("the coordinator must close the connection")
    {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner() as u32),
        _ => None,
    }
}

fn check_in() -> ClientMessage {
    ClientMessage::CheckIn(CheckIn {
        task: None,
        device: DeviceState::default(),
        known_head: None,
        known_identity_head: None,
    })
}

fn login_start(username: &str) -> ClientMessage {
    let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
    ClientMessage::Auth(AuthMessage::LoginStart {
        username: username.into(),
        request: ByteBuf::from(start.message.serialize().to_vec()),
    })
}

/// The CBOR of a `Hello` whose backends list holds `n` empty strings, framed: the frame that
/// decoded to 48 times its size before lists were bounded.
fn amplifying_hello(n: usize) -> Vec<u8> {
    let mut body = vec![0xa1, 0x65];
    body.extend_from_slice(b"Hello");
    body.push(0xa3);
    for (k, v) in [("protocol_version", vec![0x01]), ("software", vec![0x60])] {
        body.push(0x60 + k.len() as u8);
        body.extend_from_slice(k.as_bytes());
        body.extend(v);
    }
    body.extend([0x6c]);
    body.extend_from_slice(b"capabilities");
    body.push(0xa3);
    body.extend([0x6d]);
    body.extend_from_slice(b"max_frame_len");
    body.push(0x00);
    body.extend([0x6d]);
    body.extend_from_slice(b"secagg_suites");
    body.push(0x80);
    body.extend([0x68]);
    body.extend_from_slice(b"backends");
    body.push(0x9a);
    body.extend((n as u32).to_be_bytes());
    body.extend(std::iter::repeat_n(0x60, n));
    let mut frame = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    frame.extend(cohort_protocol::PROTOCOL_VERSION.to_be_bytes());
    frame.extend(body);
    frame
}

/// Issue 14's attack: hellos of empty strings from peers that never read. Over the pre-login
/// frame limit they are refused from the prefix; under it the list bound refuses them while
/// decoding. Either way the connection is closed at once, and a legitimate client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_hellos_from_stalled_readers_are_refused() {
    let h = start(SessionOptions::default()).await;
    let mut conns = Vec::new();
    for n in [60_000, 7_000] {
        for _ in 0..8 {
            let conn = h.connect().await;
            let (mut send, _recv_never_read) = conn.open_bi().await.unwrap();
            send.write_all(&amplifying_hello(n)).await.unwrap();
            conns.push((n, conn, _recv_never_read));
        }
    }
    for (n, conn, _) in &conns {
        let expected = if *n > 8 * 1024 {
            close_code::FRAME_TOO_LARGE
        } else {
            close_code::PROTOCOL_VIOLATION
        };
        assert_eq!(
            close_code_of(conn).await,
            Some(expected),
            "hello of {n} strings"
        );
    }
    let (_c, mut good) = h.session().await;
    enroll::register(&mut good, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
}

/// The pre-login timeout used to restart with every message: a client that sends any non-auth
/// message now and then stayed forever. The deadline is absolute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_anonymous_client_is_closed_at_the_absolute_deadline() {
    let h = start(SessionOptions {
        auth_deadline: Duration::from_secs(2),
        ..SessionOptions::default()
    })
    .await;
    let (conn, mut stream) = h.session().await;
    let mut answered = 0u32;
    loop {
        if stream.send(&check_in()).await.is_err() {
            break;
        }
        match stream.recv::<ServerMessage>().await {
            Ok(Some(ServerMessage::Error(e))) if e.code == ErrorCode::Unauthenticated => {
                answered += 1;
            }
            _ => break,
        }
    }
    assert!(answered > 0);
    assert_eq!(close_code_of(&conn).await, Some(close_code::AUTH_DEADLINE));
}

/// A peer that connects and never opens its session stream is closed at the deadline too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_at_the_deadline() {
    let h = start(SessionOptions {
        auth_deadline: Duration::from_secs(1),
        ..SessionOptions::default()
    })
    .await;
    let conn = h.connect().await;
    assert_eq!(close_code_of(&conn).await, Some(close_code::AUTH_DEADLINE));
}

/// After login, a large frame is allowed only for a kind that may be large, and only with a
/// seat in a round sized for it: a masked input announced outside a round is refused from its
/// head, before its body is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_need_a_kind_and_a_round_that_allow_them() {
    let h = start(SessionOptions::default()).await;
    let (conn, mut stream) = h.session().await;
    enroll::register(&mut stream, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let frame = encode_frame(
        &ClientMessage::MaskedInput(MaskedInput {
            round_id: RoundId(1),
            vector: PackedVector::pack(&vec![0; 1 << 20], 32).unwrap(),
        }),
        usize::MAX,
    )
    .unwrap();
    stream.send.write_all(&frame[..100]).await.unwrap();
    assert_eq!(
        close_code_of(&conn).await,
        Some(close_code::FRAME_TOO_LARGE)
    );
}

/// Connections that have not logged in are capped per address; a login frees a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_per_address() {
    let h = start(SessionOptions {
        admission: AdmissionLimits {
            max_unauthenticated_per_address: 2,
            ..AdmissionLimits::default()
        },
        ..SessionOptions::default()
    })
    .await;
    let (_a, mut first) = h.session().await;
    let (_b, _second) = h.session().await;
    assert!(
        h.client.connect(h.addr, "localhost").await.is_err(),
        "a third anonymous connection from the address is refused"
    );
    enroll::register(&mut first, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let (_c, _third) = h.session().await;
}

/// An account holds at most `max_sessions_per_account` sessions: a newer login closes the
/// oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holds_a_bounded_number_of_sessions() {
    let h = start(SessionOptions::default()).await;
    let (first, mut s) = h.session().await;
    enroll::register(&mut s, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let mut later = Vec::new();
    for _ in 0..AdmissionLimits::default().max_sessions_per_account {
        let (conn, mut s) = h.session().await;
        enroll::login(&conn, &mut s, "ada", "pw", &ksf())
            .await
            .unwrap();
        later.push((conn, s));
    }
    assert_eq!(close_code_of(&first).await, Some(close_code::SUPERSEDED));
    for (conn, _) in &later {
        assert!(conn.close_reason().is_none());
    }
}

/// A login slot expires after its lifetime, and any other message releases it at once: one
/// address holding all its slots with unfinished logins cannot starve the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_slots_expire_and_are_released_by_other_messages() {
    let h = start(SessionOptions {
        login_slot_ttl: Duration::from_secs(2),
        ..SessionOptions::default()
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..cohort_coordinator::auth::MAX_PENDING_LOGINS_PER_ADDRESS {
        let (conn, mut s) = h.session().await;
        s.send(&login_start("nobody")).await.unwrap();
        assert!(matches!(
            s.expect::<ServerMessage>().await.unwrap(),
            ServerMessage::Auth(AuthMessage::LoginResponse { .. })
        ));
        holders.push((conn, s));
    }
    // Released by another message: the waiting login gets a slot as soon as a holder checks in.
    let (_w, mut waiting) = h.session().await;
    waiting.send(&login_start("nobody")).await.unwrap();
    let (_, holder) = &mut holders[0];
    holder.send(&check_in()).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(SAFETY, waiting.expect::<ServerMessage>())
            .await
            .unwrap()
            .unwrap(),
        ServerMessage::Auth(AuthMessage::LoginResponse { .. })
    ));
    // Expired: every other holder is told its login ran out of time, and a new login proceeds.
    for (_, s) in holders.iter_mut().skip(1) {
        let mut expired = false;
        while let Ok(Some(m)) = tokio::time::timeout(SAFETY, s.recv::<ServerMessage>())
            .await
            .unwrap()
        {
            if let ServerMessage::Error(e) = m {
                assert_eq!(e.code, ErrorCode::AuthenticationFailed, "{}", e.message);
                assert!(e.message.contains("not finished"), "{}", e.message);
                expired = true;
                break;
            }
        }
        assert!(expired);
    }
}

/// A client that finishes its stream right after its request still gets the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_finish_keeps_the_replies_already_written() {
    let h = start(SessionOptions::default()).await;
    let conn = h.connect().await;
    let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
    stream
        .send(&ClientMessage::Hello(cohort_protocol::Hello {
            protocol_version: cohort_protocol::PROTOCOL_VERSION,
            software: "test".into(),
            capabilities: Default::default(),
        }))
        .await
        .unwrap();
    stream.finish();
    assert!(matches!(
        tokio::time::timeout(SAFETY, stream.expect::<ServerMessage>())
            .await
            .unwrap()
            .unwrap(),
        ServerMessage::HelloAck(_)
    ));
}

/// Weight streams open only after login: before it, the transport grants one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_streams_open_only_after_login() {
    let h = start(SessionOptions::default()).await;
    let (conn, mut s) = h.session().await;
    let second = tokio::select! {
        biased;
        r = conn.open_bi() => Some(r),
        _ = std::future::ready(()) => None,
    };
    assert!(second.is_none(), "a weight stream before login");
    enroll::register(&mut s, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let (mut send, mut recv) = tokio::time::timeout(SAFETY, conn.open_bi())
        .await
        .unwrap()
        .unwrap();
    cohort_net::write_message(
        &mut send,
        &ClientMessage::FetchWeights(cohort_protocol::FetchWeights {
            hash: cohort_protocol::ContentHash([0; 32]),
        }),
        MAX,
    )
    .await
    .unwrap();
    let answer: ServerMessage = cohort_net::read_message(&mut recv, MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::Error(ref e) if e.code == ErrorCode::NotFound),
        "{answer:?}"
    );
    let _ = h.identity.fingerprint();
}
