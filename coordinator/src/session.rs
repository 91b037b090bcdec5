//! One task per connection: hello, authentication, and (to come) check-in and rounds.
//!
//! [`serve`] accepts connections until shutdown and spawns [`handle_connection`] for each, in
//! the manner of tokio's mini-redis. A connection carries one bidirectional *session stream*
//! that the client opens; on it the client sends [`ClientMessage`]s and the coordinator answers
//! with [`ServerMessage`]s. [`Session`] holds what the coordinator knows about the connection
//! and turns each message into replies; it is where check-in and the round actor's messages
//! will be added.
//!
//! Until the client has authenticated, frames are limited to
//! [`SessionOptions::pre_auth_max_frame_len`] (64 KiB by default), so an anonymous peer cannot
//! make the coordinator buffer megabytes. A frame over the limit, a frame that does not decode,
//! or a protocol violation closes *that* connection (after an [`ErrorCode`] telling why); other
//! connections are untouched.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cohort_net::quinn::{self, Connection, Endpoint, VarInt};
use cohort_net::{FramedStream, NetError, tls_binding};
use cohort_protocol::{
    AuthMessage, Capabilities, CheckInResponse, ClientMessage, CodecError, DEFAULT_MAX_FRAME_LEN,
    ErrorCode, HelloAck, PROTOCOL_VERSION, ServerMessage, WireError,
};
use serde_bytes::ByteBuf;
use thiserror::Error;
use tokio::sync::watch;

use crate::auth::{
    AuthError, AuthenticatedAccount, Authenticator, PendingLogin, PendingRegistration,
};
use crate::store::AsyncStore;

/// Application close codes of a connection.
pub mod close_code {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (bad message, wrong order, undecodable frame).
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The peer sent a frame over the limit.
    pub const FRAME_TOO_LARGE: u32 = 2;
    /// The coordinator is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Frame limit before the client has authenticated.
    pub pre_auth_max_frame_len: usize,
    /// Frame limit after.
    pub max_frame_len: usize,
    /// Time an unauthenticated connection may take to open its session stream, and then
    /// between two of its messages; an anonymous peer cannot hold a connection open for free.
    pub pre_auth_timeout: Duration,
    /// Software name and version sent in the hello answer.
    pub software: String,
    /// When an authenticated client checks in and no task is running, it is told to come back
    /// after this long.
    pub idle_retry_after: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            pre_auth_max_frame_len: 64 * 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            pre_auth_timeout: Duration::from_secs(10),
            software: concat!("cohort-coordinator/", env!("CARGO_PKG_VERSION")).to_string(),
            idle_retry_after: Duration::from_secs(60),
        }
    }
}

/// What every connection handler shares.
#[derive(Debug)]
pub struct SessionContext {
    /// Accounts and logins.
    pub auth: Arc<Authenticator>,
    /// The database.
    pub store: AsyncStore,
    /// Connection settings.
    pub options: SessionOptions,
}

/// Why a connection ended abnormally.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The transport failed or the peer sent something undecodable.
    #[error(transparent)]
    Net(#[from] NetError),
    /// An unauthenticated client stayed silent too long.
    #[error("an unauthenticated client sent nothing for {0:?}")]
    HelloTimeout(Duration),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Accepts connections on `endpoint` until `shutdown` turns true, one task per connection.
/// Closes the endpoint on the way out.
pub async fn serve(
    endpoint: Endpoint,
    ctx: Arc<SessionContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => {
                            if let Err(e) = handle_connection(conn, ctx).await {
                                tracing::info!(%remote, error = %e, "connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
                    }
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    endpoint.close(
        VarInt::from_u32(close_code::SHUTDOWN),
        b"coordinator shutting down",
    );
}

/// Serves one connection: accepts its session stream and answers messages until the client
/// finishes the stream or breaks the protocol.
pub async fn handle_connection(
    conn: Connection,
    ctx: Arc<SessionContext>,
) -> Result<(), SessionError> {
    let binding = tls_binding(&conn)?;
    let remote = conn.remote_address().ip();
    let timeout = ctx.options.pre_auth_timeout;
    let mut stream = match tokio::time::timeout(
        timeout,
        FramedStream::accept(&conn, ctx.options.pre_auth_max_frame_len),
    )
    .await
    {
        Ok(s) => s?,
        Err(_) => {
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                b"no hello",
            );
            return Err(SessionError::HelloTimeout(timeout));
        }
    };
    let mut session = Session::new(ctx.clone(), binding, remote);
    loop {
        let received = if session.account().is_some() {
            stream.recv::<ClientMessage>().await
        } else {
            match tokio::time::timeout(timeout, stream.recv::<ClientMessage>()).await {
                Ok(r) => r,
                Err(_) => {
                    let reason = "no message from an unauthenticated client in time";
                    close_gracefully(&conn, &mut stream, close_code::PROTOCOL_VIOLATION, reason)
                        .await;
                    return Err(SessionError::HelloTimeout(timeout));
                }
            }
        };
        let msg = match received {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                stream.finish();
                return Ok(());
            }
            Err(e) => return Err(refuse_frame(&conn, &mut stream, e).await),
        };
        let reply = session.handle(msg).await;
        for m in &reply.messages {
            stream.send(m).await?;
        }
        if session.account().is_some() {
            stream.set_max_frame_len(ctx.options.max_frame_len);
        }
        if let Some(reason) = reply.close {
            close_gracefully(&conn, &mut stream, close_code::PROTOCOL_VIOLATION, &reason).await;
            return Err(SessionError::Protocol(reason));
        }
    }
}

/// Tells the peer why its frame was refused (when the stream still works) and closes the
/// connection.
async fn refuse_frame(conn: &Connection, stream: &mut FramedStream, e: NetError) -> SessionError {
    let (code, wire) = match &e {
        NetError::Codec(CodecError::FrameTooLarge { .. }) => {
            (close_code::FRAME_TOO_LARGE, Some(ErrorCode::FrameTooLarge))
        }
        NetError::Codec(CodecError::UnsupportedVersion { .. }) => (
            close_code::PROTOCOL_VIOLATION,
            Some(ErrorCode::UnsupportedVersion),
        ),
        NetError::Codec(_) => (close_code::PROTOCOL_VIOLATION, Some(ErrorCode::BadMessage)),
        _ => (close_code::PROTOCOL_VIOLATION, None),
    };
    if let Some(code) = wire {
        let msg = ServerMessage::Error(WireError {
            code,
            message: format!("{e}; closing the connection"),
        });
        let _ = stream.send(&msg).await;
    }
    close_gracefully(conn, stream, code, &e.to_string()).await;
    SessionError::Net(e)
}

/// Finishes the stream, gives the peer a moment to read what was sent, then closes.
async fn close_gracefully(conn: &Connection, stream: &mut FramedStream, code: u32, reason: &str) {
    stream.finish();
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.send.stopped()).await;
    let reason: String = reason.chars().take(200).collect();
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// The answer to one message.
#[derive(Debug, Default)]
pub struct Reply {
    /// Messages to send, in order.
    pub messages: Vec<ServerMessage>,
    /// Close the connection after sending, for this reason.
    pub close: Option<String>,
}

impl Reply {
    fn one(msg: ServerMessage) -> Self {
        Self {
            messages: vec![msg],
            close: None,
        }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::one(ServerMessage::Error(WireError {
            code,
            message: message.into(),
        }))
    }

    fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            messages: vec![ServerMessage::Error(WireError {
                code,
                message: message.clone(),
            })],
            close: Some(message),
        }
    }
}

enum AuthState {
    None,
    Registering(PendingRegistration),
    LoggingIn(PendingLogin),
    Authenticated(AuthenticatedAccount),
}

/// What the coordinator knows about one connection.
pub struct Session {
    ctx: Arc<SessionContext>,
    binding: [u8; 32],
    remote: IpAddr,
    greeted: bool,
    auth: AuthState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote)
            .field("greeted", &self.greeted)
            .field("account", &self.account())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for a connection from `remote` whose TLS exporter value is `binding`.
    pub fn new(ctx: Arc<SessionContext>, binding: [u8; 32], remote: IpAddr) -> Self {
        Self {
            ctx,
            binding,
            remote,
            greeted: false,
            auth: AuthState::None,
        }
    }

    /// The logged-in account, if any.
    pub fn account(&self) -> Option<&AuthenticatedAccount> {
        match &self.auth {
            AuthState::Authenticated(a) => Some(a),
            _ => None,
        }
    }

    /// Handles one message from the client.
    pub async fn handle(&mut self, msg: ClientMessage) -> Reply {
        if !self.greeted {
            return match msg {
                ClientMessage::Hello(h) if h.protocol_version == PROTOCOL_VERSION => {
                    self.greeted = true;
                    Reply::one(ServerMessage::HelloAck(HelloAck {
                        protocol_version: PROTOCOL_VERSION,
                        software: self.ctx.options.software.clone(),
                        capabilities: Capabilities {
                            max_frame_len: self.ctx.options.max_frame_len as u32,
                            secagg_suites: Vec::new(),
                            backends: Vec::new(),
                        },
                    }))
                }
                ClientMessage::Hello(h) => Reply::fatal(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks protocol version {}, this coordinator speaks {}; upgrade \
                         the older side",
                        h.protocol_version, PROTOCOL_VERSION
                    ),
                ),
                _ => Reply::fatal(ErrorCode::BadMessage, "the first message must be Hello"),
            };
        }
        match msg {
            ClientMessage::Hello(_) => Reply::fatal(ErrorCode::BadMessage, "Hello sent twice"),
            ClientMessage::Auth(m) => self.handle_auth(m).await,
            ClientMessage::Error(e) => {
                tracing::info!(remote = %self.remote, code = ?e.code, message = %e.message, "client reported an error");
                Reply::default()
            }
            _ if self.account().is_none() => Reply::error(
                ErrorCode::Unauthenticated,
                "log in first: this request needs an authenticated account",
            ),
            ClientMessage::CheckIn(_) => {
                // The round scheduler will answer here; until then nobody is selected.
                Reply::one(ServerMessage::CheckIn(CheckInResponse::ComeBackLater {
                    retry_after_ms: self.ctx.options.idle_retry_after.as_millis() as u64,
                    reason: "no task is running".into(),
                }))
            }
            ClientMessage::FetchWeights(_) => Reply::error(
                ErrorCode::NotFound,
                "no weights with this hash are published",
            ),
            _ => Reply::error(
                ErrorCode::RoundClosed,
                "no round is running on this connection; check in first",
            ),
        }
    }

    async fn handle_auth(&mut self, msg: AuthMessage) -> Reply {
        let auth = self.ctx.auth.clone();
        let remote = self.remote;
        let binding = self.binding;
        match msg {
            AuthMessage::RegisterStart {
                username,
                invite,
                request,
            } => {
                let res = blocking(move || {
                    auth.registration_start(&username, invite.as_deref(), &request, remote)
                })
                .await;
                match res {
                    Ok((response, pending)) => {
                        self.auth = AuthState::Registering(pending);
                        Reply::one(ServerMessage::Auth(AuthMessage::RegisterResponse {
                            response: ByteBuf::from(response),
                        }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::RegisterFinish { upload } => {
                let AuthState::Registering(pending) =
                    std::mem::replace(&mut self.auth, AuthState::None)
                else {
                    return Reply::error(
                        ErrorCode::BadMessage,
                        "RegisterFinish without RegisterStart",
                    );
                };
                let username = pending_username(&pending);
                match blocking(move || auth.registration_finish(pending, &upload)).await {
                    Ok(role) => {
                        // Registering proves what a login would: the account is this client's.
                        self.auth =
                            AuthState::Authenticated(AuthenticatedAccount { username, role });
                        Reply::one(ServerMessage::Auth(AuthMessage::Authenticated { role }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::LoginStart { username, request } => {
                let res =
                    blocking(move || auth.login_start(&username, &request, &binding, remote)).await;
                match res {
                    Ok((response, pending)) => {
                        self.auth = AuthState::LoggingIn(pending);
                        Reply::one(ServerMessage::Auth(AuthMessage::LoginResponse {
                            response: ByteBuf::from(response),
                        }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::LoginFinish { finalization } => {
                let AuthState::LoggingIn(pending) =
                    std::mem::replace(&mut self.auth, AuthState::None)
                else {
                    return Reply::error(ErrorCode::BadMessage, "LoginFinish without LoginStart");
                };
                match blocking(move || auth.login_finish(pending, &finalization, &binding)).await {
                    Ok(account) => {
                        let role = account.role;
                        self.auth = AuthState::Authenticated(account);
                        Reply::one(ServerMessage::Auth(AuthMessage::Authenticated { role }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::RegisterResponse { .. }
            | AuthMessage::LoginResponse { .. }
            | AuthMessage::Authenticated { .. } => {
                Reply::fatal(ErrorCode::BadMessage, "clients do not send server messages")
            }
        }
    }

    fn auth_failed(&mut self, e: AuthError) -> Reply {
        // A failed step leaves the connection unauthenticated, whatever it was before.
        self.auth = AuthState::None;
        if matches!(e, AuthError::Store(_) | AuthError::ServerKey { .. }) {
            tracing::error!(error = %e, "authentication step failed inside the coordinator");
        }
        Reply::one(ServerMessage::Error(e.to_wire()))
    }
}

fn pending_username(p: &PendingRegistration) -> String {
    p.username().to_string()
}

/// Runs `f` on the blocking pool; a panic there becomes an internal error.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, AuthError> + Send + 'static,
) -> Result<R, AuthError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(AuthError::Store(crate::store::StoreError::Worker(
            e.to_string(),
        )))
    })
}

/// Re-exported for the binaries: close an endpoint's connections with a reason.
pub fn close_endpoint(endpoint: &quinn::Endpoint) {
    endpoint.close(
        VarInt::from_u32(close_code::SHUTDOWN),
        b"coordinator shutting down",
    );
}
