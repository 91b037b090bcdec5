//! Connection set-up and OPAQUE login over QUIC on loopback, against the real session handler.
//!
//! `cargo bench -p cohort-coordinator --bench login` prints:
//! - `connect_hello`: a new QUIC connection (TLS 1.3, pinned certificate), the session stream and
//!   the Hello round trip;
//! - `login/argon2_default`: a whole login (LoginStart .. Authenticated) on an open connection,
//!   with the default Argon2id parameters (19 MiB, 2 passes) run on the client;
//! - `login/fast_ksf`: the same with the test-only KSF, which isolates the OPAQUE and network cost.

use std::sync::Arc;

use cohort_coordinator::auth::{
    AuthConfig, Authenticator, Enrollment, RateLimitPolicy, SystemClock,
    load_or_generate_server_setup,
};
use cohort_coordinator::session::{SessionContext, SessionOptions, serve};
use cohort_coordinator::store::{AsyncStore, DB_FILE, Store};
use cohort_edge::enroll;
use cohort_net::opaque_suite::KsfParams;
use cohort_net::{
    ClientTransport, FramedStream, ServerIdentity, ServerTrust, TransportOptions, bind_server,
};
use cohort_protocol::{DEFAULT_MAX_FRAME_LEN, Role};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, client, _shutdown) = rt.block_on(async {
        let identity = ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
        let store = Arc::new(Store::open(&dir.path().join(DB_FILE)).unwrap());
        let auth = Arc::new(Authenticator::new(
            load_or_generate_server_setup(dir.path()).unwrap(),
            store.clone(),
            AuthConfig {
                enrollment: Enrollment::Open,
                // The benchmark logs in thousands of times from one address.
                rate_limit: RateLimitPolicy {
                    max_failures: u32::MAX,
                    window_secs: 1,
                    max_account_failures: u32::MAX,
                },
            },
            Arc::new(SystemClock),
        ));
        auth.register_local("default", b"pw", Role::Contributor, &KsfParams::default())
            .unwrap();
        auth.register_local(
            "fast",
            b"pw",
            Role::Contributor,
            &KsfParams::dangerous_insecure_fast_for_tests(),
        )
        .unwrap();
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
            options: SessionOptions::default(),
            scheduler: None,
            weights: Default::default(),
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(endpoint, ctx, rx));
        let client = ClientTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTrust::Pinned(identity.fingerprint()),
            TransportOptions::default(),
        )
        .unwrap();
        (addr, client, tx)
    });

    c.bench_function("connect_hello", |b| {
        b.iter(|| {
            rt.block_on(async {
                let conn = client.connect(addr, "localhost").await.unwrap();
                let mut s = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN)
                    .await
                    .unwrap();
                enroll::hello(&mut s).await.unwrap();
                s.finish();
                conn.close(0u32.into(), b"");
            })
        })
    });

    let (conn, mut stream) = rt.block_on(async {
        let conn = client.connect(addr, "localhost").await.unwrap();
        let mut s = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        enroll::hello(&mut s).await.unwrap();
        (conn, s)
    });
    let mut group = c.benchmark_group("login");
    group.sample_size(20);
    for (name, user, ksf) in [
        ("argon2_default", "default", KsfParams::default()),
        (
            "fast_ksf",
            "fast",
            KsfParams::dangerous_insecure_fast_for_tests(),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(enroll::login(&conn, &mut stream, user, "pw", &ksf))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
