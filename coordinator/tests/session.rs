//! The coordinator's session handler against the edge client's enrollment, over real QUIC
//! connections on loopback: registration, login, refusals, relays, rate limiting, and that a
//! misbehaving connection is dropped without disturbing another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cohort_coordinator::auth::{
    AuthConfig, Authenticator, Enrollment, InviteIssuer, ManualClock, RateLimitPolicy,
    load_or_generate_server_setup,
};
use cohort_coordinator::session::{SessionContext, SessionOptions, close_code, serve};
use cohort_coordinator::store::{AsyncStore, DB_FILE, Store};
use cohort_edge::enroll::{self, EnrollError};
use cohort_net::opaque_suite::KsfParams;
use cohort_net::quinn::{self, Connection};
use cohort_net::{
    ClientTransport, FramedStream, ServerIdentity, ServerTrust, TransportOptions, bind_server,
    tls_binding,
};
use cohort_protocol::{
    CheckIn, CheckInResponse, ClientMessage, DEFAULT_MAX_FRAME_LEN, DeviceState, ErrorCode,
    MaskedInput, PackedVector, Role, RoundId, ServerMessage,
};
use tokio::sync::watch;

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

struct Harness {
    addr: SocketAddr,
    client: ClientTransport,
    auth: Arc<Authenticator>,
    clock: Arc<ManualClock>,
    _shutdown: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

/// The round-log key of every harness.
fn log_key() -> cohort_protocol::chain::SigningKey {
    cohort_protocol::chain::SigningKey::from_bytes(&[3; 32])
}

fn ksf() -> KsfParams {
    KsfParams::dangerous_insecure_fast_for_tests()
}

async fn start(enrollment: Enrollment) -> Harness {
    start_with(enrollment, SessionOptions::default()).await
}

async fn start_with(enrollment: Enrollment, options: SessionOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coordinator");
    std::fs::create_dir_all(&state).unwrap();
    let identity = ServerIdentity::load_or_generate(&state, &["localhost".into()]).unwrap();
    let setup = load_or_generate_server_setup(&state).unwrap();
    let store = Arc::new(Store::open(&state.join(DB_FILE)).unwrap());
    store.set_log_key(log_key());
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let auth = Arc::new(Authenticator::new(
        setup,
        store.clone(),
        AuthConfig {
            enrollment,
            rate_limit: RateLimitPolicy::default(),
        },
        clock.clone(),
    ));
    let endpoint = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportOptions::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ctx = Arc::new(SessionContext {
        auth: auth.clone(),
        store: AsyncStore(store),
        options,
        scheduler: None,
        weights: Default::default(),
    });
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve(endpoint, ctx, rx));
    let client = ClientTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTrust::Pinned(identity.fingerprint()),
        TransportOptions::default(),
    )
    .unwrap();
    Harness {
        addr,
        client,
        auth,
        clock,
        _shutdown: tx,
        dir,
    }
}

impl Harness {
    /// A new connection with its session stream, after the hello.
    async fn session(&self) -> (Connection, FramedStream) {
        let conn = self.client.connect(self.addr, "localhost").await.unwrap();
        let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
        enroll::hello(&mut stream).await.unwrap();
        (conn, stream)
    }

    fn device_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
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

async fn request(stream: &mut FramedStream, msg: &ClientMessage) -> ServerMessage {
    stream.send(msg).await.unwrap();
    stream.expect::<ServerMessage>().await.unwrap()
}

fn assert_error(msg: ServerMessage, code: ErrorCode) {
    match msg {
        ServerMessage::Error(e) => assert_eq!(e.code, code, "{}", e.message),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

/// The harness runs no scheduler: a logged-in device that checks in is told that no task runs.
fn assert_no_task(msg: ServerMessage) {
    assert!(
        matches!(msg, ServerMessage::CheckIn(CheckInResponse::NoTask { .. })),
        "{msg:?}"
    );
}

#[tokio::test]
async fn register_then_login_and_check_in() {
    let h = start(Enrollment::Open).await;
    let device = h.device_dir("ada");
    let (_conn, mut stream) = h.session().await;
    let (creds, role) = enroll::enroll(&mut stream, &device, "ada", "hunter2!", None, ksf(), None)
        .await
        .unwrap();
    assert_eq!(role, Role::Contributor);
    assert_eq!(creds.username, "ada");
    // The round-log key was pinned at enrollment.
    let owner = log_key().verifying_key();
    assert_eq!(
        creds.log_key.as_deref(),
        Some(hex::encode(owner.to_bytes()).as_str())
    );
    // Registration authenticated this connection.
    assert_no_task(request(&mut stream, &check_in()).await);

    // Two later logins on new connections unseal the same device secret.
    let mut secrets = Vec::new();
    for _ in 0..2 {
        let (conn, mut stream) = h.session().await;
        let done = enroll::login_saved(&conn, &mut stream, &device, "hunter2!")
            .await
            .unwrap();
        assert_eq!(done.role, Role::Contributor);
        assert_eq!(done.log_key, Some(owner));
        assert_no_task(request(&mut stream, &check_in()).await);
        secrets.push(*done.device_secret);
    }
    assert_eq!(secrets[0], secrets[1]);

    // Credentials from before round-log keys pin the key at the next login.
    let mut old = cohort_edge::credentials::Credentials::load(&device)
        .unwrap()
        .unwrap();
    old.log_key = None;
    old.save(&device).unwrap();
    let (conn, mut stream) = h.session().await;
    let done = enroll::login_saved(&conn, &mut stream, &device, "hunter2!")
        .await
        .unwrap();
    assert_eq!(done.log_key, Some(owner));
    assert_eq!(
        cohort_edge::credentials::Credentials::load(&device)
            .unwrap()
            .unwrap()
            .log_key,
        creds.log_key
    );
    // A pinned key is never replaced by the one a login offers.
    let other = cohort_protocol::chain::SigningKey::from_bytes(&[4; 32]).verifying_key();
    let mut pinned = creds.clone();
    pinned.log_key = Some(hex::encode(other.to_bytes()));
    pinned.save(&device).unwrap();
    let (conn, mut stream) = h.session().await;
    let done = enroll::login_saved(&conn, &mut stream, &device, "hunter2!")
        .await
        .unwrap();
    assert_eq!(done.log_key, Some(other));
}

#[tokio::test]
async fn wrong_password_and_unknown_account_fail_alike() {
    let h = start(Enrollment::Open).await;
    let (_c, mut s) = h.session().await;
    enroll::register(&mut s, "ada", "right", None, &ksf(), None)
        .await
        .unwrap();

    let (conn, mut stream) = h.session().await;
    let wrong = enroll::login(&conn, &mut stream, "ada", "wrong", &ksf()).await;
    let unknown = enroll::login(&conn, &mut stream, "nobody", "right", &ksf()).await;
    assert!(
        matches!(wrong, Err(EnrollError::AuthenticationFailed)),
        "{wrong:?}"
    );
    assert!(
        matches!(unknown, Err(EnrollError::AuthenticationFailed)),
        "{unknown:?}"
    );
    // Still not logged in.
    assert_error(
        request(&mut stream, &check_in()).await,
        ErrorCode::Unauthenticated,
    );
    // The right password works on the same connection.
    enroll::login(&conn, &mut stream, "ada", "right", &ksf())
        .await
        .unwrap();
    assert_no_task(request(&mut stream, &check_in()).await);
}

#[tokio::test]
async fn second_registration_of_a_name_fails() {
    let h = start(Enrollment::Open).await;
    let (_c, mut s) = h.session().await;
    enroll::register(&mut s, "ada", "one", None, &ksf(), None)
        .await
        .unwrap();
    let (_c2, mut s2) = h.session().await;
    let err = enroll::register(&mut s2, "ada", "two", None, &ksf(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed), "{err}");
    assert!(err.to_string().contains("not available"), "{err}");
    // The original password still works, the second does not.
    let (conn, mut s3) = h.session().await;
    assert!(
        enroll::login(&conn, &mut s3, "ada", "two", &ksf())
            .await
            .is_err()
    );
    enroll::login(&conn, &mut s3, "ada", "one", &ksf())
        .await
        .unwrap();
}

#[tokio::test]
async fn invite_only_enrollment() {
    let h = start(Enrollment::InviteOnly).await;
    let (_c, mut s) = h.session().await;
    let err = enroll::register(&mut s, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InviteRequired));
    let code = h
        .auth
        .issue_invite(&InviteIssuer::Admin, Role::Owner, None)
        .unwrap();
    let done = enroll::register(&mut s, "ada", "pw", Some(&code), &ksf(), None)
        .await
        .unwrap();
    assert_eq!(done.role, Role::Owner);
    let (_c2, mut s2) = h.session().await;
    let err = enroll::register(&mut s2, "bob", "pw", Some(&code), &ksf(), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InviteRequired),
        "a used invite is refused"
    );
}

#[tokio::test]
async fn unauthenticated_requests_are_refused() {
    let h = start(Enrollment::Open).await;
    let (_conn, mut stream) = h.session().await;
    assert_error(
        request(&mut stream, &check_in()).await,
        ErrorCode::Unauthenticated,
    );
    let fetch = ClientMessage::FetchWeights(cohort_protocol::FetchWeights {
        hash: cohort_protocol::ContentHash([0; 32]),
    });
    assert_error(
        request(&mut stream, &fetch).await,
        ErrorCode::Unauthenticated,
    );
    // The connection stays usable.
    assert_error(
        request(&mut stream, &check_in()).await,
        ErrorCode::Unauthenticated,
    );
}

#[tokio::test]
async fn relayed_login_fails() {
    let h = start(Enrollment::Open).await;
    let (_c, mut s) = h.session().await;
    enroll::register(&mut s, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();

    // The client logs in over connection A but computes OPAQUE with the TLS binding of
    // connection B: what a relay between two TLS sessions amounts to.
    let (conn_a, mut stream_a) = h.session().await;
    let (conn_b, _stream_b) = h.session().await;
    let binding_b = tls_binding(&conn_b).unwrap();
    assert_ne!(binding_b, tls_binding(&conn_a).unwrap());
    let relayed = enroll::login_with_binding(&mut stream_a, &binding_b, "ada", "pw", &ksf()).await;
    assert!(
        matches!(relayed, Err(EnrollError::AuthenticationFailed)),
        "{relayed:?}"
    );
    assert_error(
        request(&mut stream_a, &check_in()).await,
        ErrorCode::Unauthenticated,
    );
    // With its own binding the same client succeeds.
    enroll::login(&conn_a, &mut stream_a, "ada", "pw", &ksf())
        .await
        .unwrap();
}

#[tokio::test]
async fn repeated_failures_are_rate_limited() {
    let h = start(Enrollment::Open).await;
    let (_c, mut s) = h.session().await;
    enroll::register(&mut s, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let (conn, mut stream) = h.session().await;
    for _ in 0..5 {
        let r = enroll::login(&conn, &mut stream, "ada", "guess", &ksf()).await;
        assert!(matches!(r, Err(EnrollError::AuthenticationFailed)), "{r:?}");
    }
    // Even the right password is refused now, with a retry-after.
    let err = enroll::login(&conn, &mut stream, "ada", "pw", &ksf())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
    assert!(err.to_string().contains("retry in"), "{err}");
    // After the window, it works.
    h.clock.advance(15 * 60 + 1);
    enroll::login(&conn, &mut stream, "ada", "pw", &ksf())
        .await
        .unwrap();
}

/// Reads until the connection is closed, returning the application close code.
async fn closed_with(conn: &Connection, stream: &mut FramedStream) -> Option<u32> {
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_secs(5), stream.recv::<ServerMessage>())
            .await
            .expect("the coordinator must close the connection")
    {}
    match tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner() as u32),
        _ => None,
    }
}

#[tokio::test]
async fn bad_frames_drop_only_their_connection() {
    let h = start(Enrollment::Open).await;
    // A well-behaved, logged-in client.
    let (_c, mut good) = h.session().await;
    enroll::register(&mut good, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();

    // Garbage: a valid prefix and version, then bytes that are not a message.
    let (bad_conn, mut bad) = h.session().await;
    let mut frame = 7u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&cohort_protocol::PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&[0xff, 0x13, 0x37, 0x00, 0x42]);
    bad.send.write_all(&frame).await.unwrap();
    assert_error(
        bad.expect::<ServerMessage>().await.unwrap(),
        ErrorCode::BadMessage,
    );
    assert_eq!(
        closed_with(&bad_conn, &mut bad).await,
        Some(close_code::PROTOCOL_VIOLATION)
    );

    assert_no_task(request(&mut good, &check_in()).await);

    // Oversized: before authentication the limit is 8 KiB; announce 1 MiB.
    let (big_conn, mut big) = h.session().await;
    big.send
        .write_all(&(1u32 << 20).to_be_bytes())
        .await
        .unwrap();
    assert_error(
        big.expect::<ServerMessage>().await.unwrap(),
        ErrorCode::FrameTooLarge,
    );
    assert_eq!(
        closed_with(&big_conn, &mut big).await,
        Some(close_code::FRAME_TOO_LARGE)
    );

    assert_no_task(request(&mut good, &check_in()).await);

    // After authentication a small masked input is read (and refused only because no round
    // is running); a large one needs a seat in a round sized for it.
    let small = ClientMessage::MaskedInput(MaskedInput {
        round_id: RoundId(1),
        vector: PackedVector::pack(&vec![7u32; 1_000], 32).unwrap(),
    });
    assert_error(request(&mut good, &small).await, ErrorCode::RoundClosed);
    let masked = ClientMessage::MaskedInput(MaskedInput {
        round_id: RoundId(1),
        vector: PackedVector::pack(&vec![7u32; 50_000], 32).unwrap(),
    });
    let (seatless_conn, mut seatless) = h.session().await;
    enroll::login(&seatless_conn, &mut seatless, "ada", "pw", &ksf())
        .await
        .unwrap();
    seatless.send(&masked).await.unwrap();
    assert_error(
        seatless.expect::<ServerMessage>().await.unwrap(),
        ErrorCode::FrameTooLarge,
    );
    assert_eq!(
        closed_with(&seatless_conn, &mut seatless).await,
        Some(close_code::FRAME_TOO_LARGE)
    );
    // The same message from an anonymous client is over its limit. The coordinator refuses it
    // from the length prefix, before login only a 64 KiB window is open, so the write itself may
    // be stopped before it completes; either way the connection closes as too large.
    let (anon_conn, mut anon) = h.session().await;
    if anon.send(&masked).await.is_ok() {
        assert_error(
            anon.expect::<ServerMessage>().await.unwrap(),
            ErrorCode::FrameTooLarge,
        );
    }
    assert_eq!(
        closed_with(&anon_conn, &mut anon).await,
        Some(close_code::FRAME_TOO_LARGE)
    );

    assert_no_task(request(&mut good, &check_in()).await);
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let h = start(Enrollment::Open).await;
    let conn = h.client.connect(h.addr, "localhost").await.unwrap();
    let mut stream = FramedStream::open(&conn, MAX).await.unwrap();
    assert_error(
        request(&mut stream, &check_in()).await,
        ErrorCode::BadMessage,
    );
    assert_eq!(
        closed_with(&conn, &mut stream).await,
        Some(close_code::PROTOCOL_VIOLATION)
    );
}

#[tokio::test]
async fn silent_anonymous_connection_is_closed() {
    let h = start_with(
        Enrollment::Open,
        SessionOptions {
            auth_deadline: Duration::from_secs(2),
            ..SessionOptions::default()
        },
    )
    .await;
    // An authenticated connection may stay silent past its deadline: it connected before the
    // anonymous one below, whose closing at its own deadline proves this one's passed.
    let (_c, mut good) = h.session().await;
    enroll::register(&mut good, "ada", "pw", None, &ksf(), None)
        .await
        .unwrap();
    let (conn, mut stream) = h.session().await;
    assert_eq!(
        closed_with(&conn, &mut stream).await,
        Some(close_code::AUTH_DEADLINE)
    );
    assert_no_task(request(&mut good, &check_in()).await);
}
