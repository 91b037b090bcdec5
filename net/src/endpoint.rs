//! Binding QUIC endpoints, connecting, and the TLS exporter binding.
//!
//! Both sides speak TLS 1.3 only with ALPN `cohort/1`; rustls and quinn are built with the ring
//! provider alone. A client builds a fresh TLS configuration for every connection, so that a
//! pinning failure is reported as [`NetError::PinMismatch`] for exactly that connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, TransportConfig, VarInt};

use crate::error::{NetError, TlsSetupError};
use crate::identity::ServerIdentity;
use crate::trust::{
    AcceptAnyCertificate, PinnedCertVerifier, RefusedSlot, ServerTrust, load_roots, provider,
};

/// The TLS exporter label of the OPAQUE binding (RFC 8446 §7.5). Both ends of one TLS session
/// derive the same 32 bytes from it; ends of different sessions derive unrelated ones.
pub const TLS_BINDING_LABEL: &[u8] = b"EXPORTER-cohort-opaque-binding";

/// Transport settings shared by servers and clients.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Clients send a keep-alive this often, so an idle but live session survives
    /// `idle_timeout` (and NAT bindings stay open). `None` disables it.
    pub keep_alive: Option<Duration>,
    /// Bidirectional streams a peer may have open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Application protocols offered (client) or accepted (server). Leave it at
    /// `[ALPN]`; it is a field only so that tests can check that other protocols are refused.
    pub alpn_protocols: Vec<Vec<u8>>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keep_alive: Some(Duration::from_secs(15)),
            max_concurrent_bidi_streams: 16,
            alpn_protocols: vec![crate::ALPN.to_vec()],
        }
    }
}

/// The connection-level receive window of a connection that has not logged in: what an
/// anonymous peer can make the coordinator buffer, whatever it sends. Pre-login frames are at
/// most [`cohort_protocol::limits::PRE_AUTH_MAX_FRAME_LEN`] bytes, so this is ample.
pub const PRE_AUTH_RECEIVE_WINDOW: u32 = 64 * 1024;

/// The connection-level receive window once the peer has logged in ([`open_after_login`]):
/// enough for a large masked input to stream at full speed.
pub const AUTHENTICATED_RECEIVE_WINDOW: u32 = 16 << 20;

/// Per-stream receive window (bounded by the connection's window above).
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;

/// Bytes the server keeps in flight per connection: what a peer that stops acknowledging can
/// make the coordinator buffer for it (quinn's default is 10 MB).
pub const SERVER_SEND_WINDOW: u64 = 2 << 20;

/// Bidirectional streams a logged-in client may have open: the session stream and up to four
/// weight downloads. Before login only the session stream ([`server_config`]).
pub const AUTHENTICATED_BIDI_STREAMS: u32 = 5;

impl TransportOptions {
    /// Limits shared by both sides: no datagrams (the protocol uses none, and quinn would
    /// otherwise buffer up to 1.25 MB of them), no unidirectional streams, explicit windows.
    fn base_config(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        // Values above quinn's VarInt range (2^62 ms) are not meaningful; fall back to none.
        t.max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.datagram_receive_buffer_size(None);
        t.datagram_send_buffer_size(0);
        t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
        t
    }

    fn transport_config(&self) -> Arc<TransportConfig> {
        let mut t = self.base_config();
        t.keep_alive_interval(self.keep_alive);
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams));
        t.receive_window(VarInt::from_u32(AUTHENTICATED_RECEIVE_WINDOW));
        Arc::new(t)
    }

    /// The server's transport: the shared limits, and for a connection that has not logged in
    /// one bidirectional stream (the session stream; weight streams open on login), a small
    /// receive window, and no keep-alive from the server (an idle anonymous peer times out;
    /// logged-in clients keep their connections alive themselves).
    fn server_transport_config(&self) -> Arc<TransportConfig> {
        let mut t = self.base_config();
        t.keep_alive_interval(None);
        t.max_concurrent_bidi_streams(VarInt::from_u32(1));
        t.receive_window(VarInt::from_u32(PRE_AUTH_RECEIVE_WINDOW));
        t.send_window(SERVER_SEND_WINDOW);
        Arc::new(t)
    }
}

/// Opens a logged-in client's connection up: the weight streams
/// ([`AUTHENTICATED_BIDI_STREAMS`]) and the larger receive window.
pub fn open_after_login(conn: &Connection) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(AUTHENTICATED_BIDI_STREAMS));
    conn.set_receive_window(VarInt::from_u32(AUTHENTICATED_RECEIVE_WINDOW));
}

/// The quinn server configuration for `identity`: TLS 1.3 only, no client certificates (clients
/// authenticate with OPAQUE inside the connection). Of `options`, only the idle timeout and the
/// ALPN list apply: the server never sends keep-alives and allows one stream until login
/// ([`open_after_login`]), whatever the options say.
pub fn server_config(
    identity: &ServerIdentity,
    options: &TransportOptions,
) -> Result<quinn::ServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain().to_vec(), identity.key())?;
    tls.alpn_protocols = options.alpn_protocols.clone();
    let quic = QuicServerConfig::try_from(tls).map_err(TlsSetupError::NotQuic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(options.server_transport_config());
    // Handshakes not yet accepted by the application: bounded in number and buffered bytes.
    config.max_incoming(MAX_INCOMING);
    config.incoming_buffer_size(16 * 1024);
    config.incoming_buffer_size_total(8 << 20);
    Ok(config)
}

/// Connection attempts quinn holds before the coordinator accepts, refuses or retries them.
pub const MAX_INCOMING: usize = 4096;

/// The UDP receive buffer the server asks for (the kernel caps it at `net.core.rmem_max`).
///
/// With the default (about 208 KiB on Linux) a burst of clients connecting at once overflows
/// it: 500 loopback clients starting together lost tens of thousands of datagrams, and the
/// handshakes of some never completed within the idle timeout.
pub const SERVER_RECV_BUFFER: usize = 8 << 20;

/// Binds a server endpoint on `addr` (port 0 picks a free port; read it back with
/// `endpoint.local_addr()`), on a socket from [`server_socket`]. Must be called inside a tokio
/// runtime.
pub fn bind_server(
    addr: SocketAddr,
    identity: &ServerIdentity,
    options: &TransportOptions,
) -> Result<Endpoint, NetError> {
    let config = server_config(identity, options)?;
    let socket = server_socket(addr)?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Bind {
        addr,
        source: std::io::Error::other("no tokio runtime: bind the server inside one"),
    })?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(|source| NetError::Bind { addr, source })
}

/// A UDP socket bound to `addr` with a receive buffer of up to [`SERVER_RECV_BUFFER`] (less
/// where the kernel caps it; that is logged, not an error).
pub fn server_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    let bind = |source| NetError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind)?;
    if let Err(e) = socket.set_recv_buffer_size(SERVER_RECV_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer; bursts of connecting clients may lose packets");
    }
    match socket.recv_buffer_size() {
        Ok(got) if got < SERVER_RECV_BUFFER => tracing::info!(
            requested = SERVER_RECV_BUFFER,
            got,
            "UDP receive buffer capped by the kernel; raise net.core.rmem_max for large cohorts"
        ),
        _ => {}
    }
    socket.bind(&addr.into()).map_err(bind)?;
    Ok(socket.into())
}

/// A client endpoint and the policy by which it trusts coordinators.
#[derive(Debug)]
pub struct ClientTransport {
    endpoint: Endpoint,
    trust: ServerTrust,
    roots: Option<Arc<rustls::RootCertStore>>,
    options: TransportOptions,
}

impl ClientTransport {
    /// Binds a client endpoint on `addr` (usually `0.0.0.0:0` or `127.0.0.1:0`). WebPKI roots
    /// are read here, once. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        trust: ServerTrust,
        options: TransportOptions,
    ) -> Result<Self, NetError> {
        let roots = match &trust {
            ServerTrust::WebPki { roots } => Some(Arc::new(load_roots(roots)?)),
            _ => None,
        };
        let endpoint = Endpoint::client(addr).map_err(|source| NetError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            trust,
            roots,
            options,
        })
    }

    /// The underlying quinn endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Connects to the coordinator at `addr`. `server_name` is checked against the certificate
    /// only under [`ServerTrust::WebPki`]; it must still be a valid DNS name or IP address.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, NetError> {
        let refused: RefusedSlot = Arc::new(Mutex::new(None));
        let config = self.client_config(refused.clone())?;
        let connecting = self.endpoint.connect_with(config, addr, server_name)?;
        match connecting.await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                let presented = refused.lock().ok().and_then(|slot| *slot);
                match (&self.trust, presented) {
                    (ServerTrust::Pinned(pin), Some(presented)) => Err(NetError::PinMismatch {
                        expected: pin.to_hex(),
                        presented: presented.to_hex(),
                    }),
                    _ => Err(NetError::Connection(e)),
                }
            }
        }
    }

    /// Closes every connection of this endpoint and waits until the peers were told.
    pub async fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"client shutting down");
        self.endpoint.wait_idle().await;
    }

    fn client_config(&self, refused: RefusedSlot) -> Result<quinn::ClientConfig, NetError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut tls = match &self.trust {
            ServerTrust::Pinned(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::new(*pin, refused)))
                .with_no_client_auth(),
            ServerTrust::WebPki { .. } => {
                let roots = self.roots.clone().ok_or(TlsSetupError::RootsNotLoaded)?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ServerTrust::DangerousAcceptAnyCertificate => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new()))
                .with_no_client_auth(),
        };
        tls.alpn_protocols = self.options.alpn_protocols.clone();
        let quic = QuicClientConfig::try_from(tls).map_err(TlsSetupError::NotQuic)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.options.transport_config());
        Ok(config)
    }
}

/// The 32-byte TLS exporter value of `conn` under [`TLS_BINDING_LABEL`], with an empty context.
/// Used as the OPAQUE login's context, so that a login relayed from another TLS session fails:
/// the relay's two sessions have different exporter values.
pub fn tls_binding(conn: &Connection) -> Result<[u8; 32], NetError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, TLS_BINDING_LABEL, b"")
        .map_err(|_| NetError::Exporter)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_socket_gets_a_large_receive_buffer() {
        let Some(rmem_max) = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        else {
            eprintln!("no /proc/sys/net/core/rmem_max (not Linux?): nothing to compare against");
            return;
        };
        let socket = server_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux reports twice the granted size (bookkeeping overhead included).
        assert!(
            got >= SERVER_RECV_BUFFER.min(rmem_max),
            "receive buffer {got} B, rmem_max {rmem_max} B"
        );
    }
}
