//! What the transport's integration tests share.

use cohort_net::quinn::Connection;
use cohort_net::{ClientTransport, ServerIdentity, ServerTrust, TransportOptions, bind_server};

/// A connected pair: (client side, server side).
pub async fn pair() -> (Connection, Connection, ClientTransport) {
    let id = ServerIdentity::ephemeral(&["localhost".into()]).unwrap();
    let server = bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &TransportOptions::default(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = ClientTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTrust::Pinned(id.fingerprint()),
        TransportOptions::default(),
    )
    .unwrap();
    let (c, s) = tokio::join!(client.connect(addr, "localhost"), async {
        server.accept().await.unwrap().await.unwrap()
    });
    (c.unwrap(), s, client)
}
