//! A server killed without closing its connections and started again with the same identity on
//! the same address resets those connections (a QUIC stateless reset, keyed from the identity),
//! so that their clients learn at their next packet that the connection is gone instead of
//! after their idle timeout.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use cohort_net::quinn::ConnectionError;
use cohort_net::{ClientTransport, ServerIdentity, ServerTrust, TransportOptions, bind_server};

/// Serves one connection on `addr` in a runtime of its own, then "crashes": the runtime and
/// every quinn task in it are dropped before the connection and the endpoint, so nothing (no
/// CONNECTION_CLOSE) is ever sent for them. Returns the bound address once it accepted.
fn server_that_crashes(
    identity: ServerIdentity,
    addr: SocketAddr,
    bound: mpsc::Sender<SocketAddr>,
    crash: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (endpoint, conn) = rt.block_on(async move {
            let endpoint = bind_server(addr, &identity, &TransportOptions::default()).unwrap();
            bound.send(endpoint.local_addr().unwrap()).unwrap();
            let conn = endpoint.accept().await.unwrap().await.unwrap();
            crash.await.unwrap();
            (endpoint, conn)
        });
        drop(rt);
        drop(conn);
        drop(endpoint);
    })
}

#[tokio::test]
async fn a_restarted_server_resets_the_connections_of_the_process_before_it() {
    let identity = ServerIdentity::ephemeral(&["localhost".into()]).unwrap();
    let (bound_tx, bound_rx) = mpsc::channel();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel();
    let first = server_that_crashes(
        identity.clone(),
        "127.0.0.1:0".parse().unwrap(),
        bound_tx,
        crash_rx,
    );
    let addr = bound_rx.recv().unwrap();
    // No keep-alives: the client sends only what the test makes it send.
    let client = ClientTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTrust::Pinned(identity.fingerprint()),
        TransportOptions {
            keep_alive: None,
            ..TransportOptions::default()
        },
    )
    .unwrap();
    let conn = client.connect(addr, "localhost").await.unwrap();
    crash_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || first.join().unwrap())
        .await
        .unwrap();

    // The same identity on the same address, as a restarted coordinator.
    let second = bind_server(addr, &identity, &TransportOptions::default()).unwrap();
    // The client's next packet reaches the new process, which knows no such connection.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"anyone there?").await.unwrap();
    // Waiting on the condition; the bound is far below the idle timeout (60 s) after which the
    // client would give up on its own, so only the reset can end it in time.
    let closed = tokio::time::timeout(Duration::from_secs(30), conn.closed())
        .await
        .expect("the connection was not reset within 30 s");
    assert!(
        matches!(closed, ConnectionError::Reset),
        "ended by {closed:?}, not by a stateless reset"
    );
    // And the new process serves the fresh connection the client makes next.
    let (fresh, accepted) = tokio::join!(client.connect(addr, "localhost"), async {
        second.accept().await.unwrap().await
    });
    fresh.expect("a new connection to the restarted server");
    accepted.expect("the restarted server accepts it");
}
