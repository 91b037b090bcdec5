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

use cohort_net::quinn::SendStream;
use cohort_net::quinn::{self, Connection, Endpoint, VarInt};
use cohort_net::{FramedStream, NetError, read_message, send_weights, tls_binding, write_message};
use cohort_protocol::{
    AuthMessage, Capabilities, CheckInResponse, ClientMessage, CodecError, DEFAULT_MAX_FRAME_LEN,
    ErrorCode, HelloAck, PROTOCOL_VERSION, ServerMessage, WireError,
};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::auth::{
    AuthError, AuthenticatedAccount, Authenticator, PendingLogin, PendingRegistration,
};
use crate::round_driver::RoundInput;
use crate::scheduler::{ConnId, Member, Scheduler, Seat};
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
    /// The round scheduler; `None` answers every check-in with "come back later".
    pub scheduler: Option<Arc<Scheduler>>,
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
/// finishes the stream or breaks the protocol. Messages from the round driver (through the
/// connection's outbox) are written between the client's messages. Further bidirectional
/// streams carry weight downloads ([`serve_weight_streams`]).
pub async fn handle_connection(
    conn: Connection,
    ctx: Arc<SessionContext>,
) -> Result<(), SessionError> {
    let binding = tls_binding(&conn)?;
    let remote = conn.remote_address().ip();
    let timeout = ctx.options.pre_auth_timeout;
    let stream = match tokio::time::timeout(
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
    let FramedStream {
        send: mut send_half,
        recv: mut recv_half,
        ..
    } = stream;
    let limit = Arc::new(AtomicUsize::new(ctx.options.pre_auth_max_frame_len));
    let (in_tx, mut incoming) = mpsc::channel::<Result<Option<ClientMessage>, NetError>>(8);
    let reader_limit = limit.clone();
    let reader = tokio::spawn(async move {
        loop {
            let r =
                read_message::<ClientMessage>(&mut recv_half, reader_limit.load(Ordering::Relaxed))
                    .await;
            let end = !matches!(r, Ok(Some(_)));
            if in_tx.send(r).await.is_err() || end {
                break;
            }
        }
        recv_half
    });
    let (outbox_tx, mut outbox) = mpsc::channel::<ServerMessage>(64);
    let authenticated = Arc::new(AtomicBool::new(false));
    let weights_task = tokio::spawn(serve_weight_streams(
        conn.clone(),
        ctx.clone(),
        authenticated.clone(),
    ));
    let mut session = Session::new(ctx.clone(), binding, remote);
    session.outbox = Some(outbox_tx);
    if let Some(s) = &ctx.scheduler {
        s.metrics().connection(true);
    }
    let result = async {
        loop {
            let received = tokio::select! {
                m = incoming.recv() => m,
                Some(out) = outbox.recv() => {
                    write_message(&mut send_half, &out, limit.load(Ordering::Relaxed).max(ctx.options.max_frame_len)).await?;
                    continue;
                }
                _ = tokio::time::sleep(timeout), if session.account().is_none() => {
                    let reason = "no message from an unauthenticated client in time";
                    let _ = write_message(&mut send_half, &ServerMessage::Error(WireError {
                        code: ErrorCode::BadMessage,
                        message: format!("{reason}; closing the connection"),
                    }), ctx.options.max_frame_len).await;
                    close_send_half(&conn, &mut send_half, close_code::PROTOCOL_VIOLATION, reason).await;
                    return Err(SessionError::HelloTimeout(timeout));
                }
            };
            let msg = match received {
                Some(Ok(Some(msg))) => msg,
                Some(Ok(None)) | None => {
                    let _ = send_half.finish();
                    return Ok(());
                }
                Some(Err(e)) => return Err(refuse_frame_on(&conn, &mut send_half, e).await),
            };
            let reply = session.handle(msg).await;
            for m in &reply.messages {
                write_message(&mut send_half, m, limit.load(Ordering::Relaxed).max(ctx.options.max_frame_len)).await?;
            }
            if session.account().is_some() {
                limit.store(ctx.options.max_frame_len, Ordering::Relaxed);
                authenticated.store(true, Ordering::Relaxed);
            }
            if let Some(reason) = reply.close {
                close_send_half(&conn, &mut send_half, close_code::PROTOCOL_VIOLATION, &reason).await;
                return Err(SessionError::Protocol(reason));
            }
        }
    }
    .await;
    session.disconnected().await;
    if let Some(s) = &ctx.scheduler {
        s.metrics().connection(false);
    }
    reader.abort();
    weights_task.abort();
    result
}

/// Answers weight downloads: each further bidirectional stream carries one `FetchWeights` and
/// gets the vector back as `Weights` chunks, from the checkpoints. Only authenticated
/// connections get weights.
pub async fn serve_weight_streams(
    conn: Connection,
    ctx: Arc<SessionContext>,
    authenticated: Arc<AtomicBool>,
) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        let authenticated = authenticated.clone();
        tokio::spawn(async move {
            let max = ctx.options.max_frame_len;
            let reply = |code, message: String| ServerMessage::Error(WireError { code, message });
            let Ok(Some(msg)) = read_message::<ClientMessage>(&mut recv, 4096).await else {
                return;
            };
            let ClientMessage::FetchWeights(fetch) = msg else {
                let _ = write_message(
                    &mut send,
                    &reply(
                        ErrorCode::BadMessage,
                        "a weights stream carries one FetchWeights".into(),
                    ),
                    max,
                )
                .await;
                return;
            };
            if !authenticated.load(Ordering::Relaxed) {
                let _ = write_message(
                    &mut send,
                    &reply(
                        ErrorCode::Unauthenticated,
                        "log in on the session stream before fetching weights".into(),
                    ),
                    max,
                )
                .await;
                return;
            }
            let Some(scheduler) = ctx.scheduler.clone() else {
                let _ = write_message(
                    &mut send,
                    &reply(
                        ErrorCode::NotFound,
                        "no weights with this hash are published".into(),
                    ),
                    max,
                )
                .await;
                return;
            };
            let checkpoints = scheduler.checkpoints().clone();
            let hash = fetch.hash;
            let values = tokio::task::spawn_blocking(move || checkpoints.get(&hash, 1 << 32)).await;
            match values {
                Ok(Ok(values)) => {
                    if let Err(e) =
                        send_weights(&mut send, &values, max, ServerMessage::Weights).await
                    {
                        tracing::debug!(error = %e, "weights transfer failed");
                    }
                }
                _ => {
                    let _ = write_message(
                        &mut send,
                        &reply(
                            ErrorCode::NotFound,
                            format!("no weights with hash {hash} are published"),
                        ),
                        max,
                    )
                    .await;
                }
            }
            let _ = send.finish();
        });
    }
}

/// Tells the peer why its frame was refused and closes the connection.
async fn refuse_frame_on(conn: &Connection, send: &mut SendStream, e: NetError) -> SessionError {
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
        let _ = write_message(send, &msg, DEFAULT_MAX_FRAME_LEN).await;
    }
    close_send_half(conn, send, code, &e.to_string()).await;
    SessionError::Net(e)
}

/// Finishes the send half, gives the peer a moment to read what was sent, then closes.
async fn close_send_half(conn: &Connection, send: &mut SendStream, code: u32, reason: &str) {
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
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
    id: ConnId,
    outbox: Option<mpsc::Sender<ServerMessage>>,
    seat: Arc<std::sync::Mutex<Option<Seat>>>,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

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
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            outbox: None,
            seat: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn current_seat(&self) -> Option<Seat> {
        self.seat.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection closed: leave the selection pool, and tell a running round.
    pub async fn disconnected(&mut self) {
        if let Some(s) = &self.ctx.scheduler {
            s.leave(self.id);
        }
        if let Some(seat) = self.current_seat() {
            let _ = seat.inputs.send(RoundInput::Disconnected(seat.index)).await;
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
            ClientMessage::CheckIn(check_in) => {
                let (Some(scheduler), Some(outbox)) = (&self.ctx.scheduler, &self.outbox) else {
                    return Reply::one(ServerMessage::CheckIn(CheckInResponse::ComeBackLater {
                        retry_after_ms: self.ctx.options.idle_retry_after.as_millis() as u64,
                        reason: "no task is running".into(),
                    }));
                };
                *self.seat.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let member = Member {
                    outbox: outbox.clone(),
                    seat: self.seat.clone(),
                };
                Reply::one(ServerMessage::CheckIn(scheduler.check_in(
                    self.id,
                    check_in.task.as_ref(),
                    member,
                )))
            }
            ClientMessage::FetchWeights(_) => Reply::error(
                ErrorCode::BadMessage,
                "fetch weights on a separate bidirectional stream, not on the session stream",
            ),
            ClientMessage::TrainingReport(r) => {
                tracing::debug!(remote = %self.remote, round = r.round_id.0, examples = r.num_examples, loss = r.loss, "training report");
                Reply::default()
            }
            message => match self.current_seat() {
                Some(seat) => {
                    let _ = seat
                        .inputs
                        .send(RoundInput::Message {
                            from: seat.index,
                            message,
                        })
                        .await;
                    Reply::default()
                }
                None => Reply::error(
                    ErrorCode::RoundClosed,
                    "no round is running on this connection; check in first",
                ),
            },
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
