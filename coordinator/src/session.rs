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
use cohort_net::{
    FramedStream, NetError, read_message, read_message_sized, tls_binding, weights_frames,
    write_message, write_message_sized,
};
use cohort_protocol::{
    AuthMessage, Capabilities, CheckInResponse, ClientMessage, CodecError, ContentHash,
    DEFAULT_MAX_FRAME_LEN, ErrorCode, HelloAck, PROTOCOL_VERSION, ServerMessage, WireError,
};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::auth::{
    AuthError, AuthenticatedAccount, Authenticator, LoginSlot, PendingLogin, PendingRegistration,
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
    /// How long a `LoginStart` may wait for one of its address's login slots
    /// ([`crate::auth::MAX_PENDING_LOGINS_PER_ADDRESS`]) before it is refused as rate limited.
    pub login_queue_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            pre_auth_max_frame_len: 64 * 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            pre_auth_timeout: Duration::from_secs(10),
            software: concat!("cohort-coordinator/", env!("CARGO_PKG_VERSION")).to_string(),
            idle_retry_after: Duration::from_secs(60),
            login_queue_timeout: Duration::from_secs(60),
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
    /// Published weights, encoded once and shared by every download.
    pub weights: WeightsCache,
}

impl SessionContext {
    fn count_received(&self, kind: &'static str, bytes: usize) {
        if let Some(s) = &self.scheduler {
            s.metrics().received(kind, bytes);
        }
    }

    fn count_sent(&self, kind: &'static str, bytes: usize) {
        if let Some(s) = &self.scheduler {
            s.metrics().sent(kind, bytes);
        }
    }
}

/// The encoded download frames of the most recently requested weight vectors.
///
/// Every client of a round fetches the same new model at about the same moment. Without the
/// cache each request read the checkpoint file, checked its hash and re-encoded the chunks: for
/// 500 clients and a 1M-parameter model, 2 GB read and hashed per round. With it, the first
/// request of a hash loads and encodes it once (later requests for the same hash wait for that
/// load instead of starting their own) and every stream writes the same frames.
#[derive(Debug, Default)]
pub struct WeightsCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(ContentHash, CachedFrames)>>,
}

type CachedFrames = Arc<tokio::sync::OnceCell<Arc<Vec<Vec<u8>>>>>;

/// Weight vectors the cache keeps (the current model and the previous one).
pub const WEIGHTS_CACHE_ENTRIES: usize = 2;

impl WeightsCache {
    /// The frames of `hash`, encoded by `load` on a miss (run on the blocking pool). A failed
    /// load is not cached.
    pub async fn frames<F>(&self, hash: ContentHash, load: F) -> Result<Arc<Vec<Vec<u8>>>, String>
    where
        F: FnOnce() -> Result<Vec<Vec<u8>>, String> + Send + 'static,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            // Most recently used first.
            let cell = match entries.iter().position(|(h, _)| *h == hash) {
                Some(i) => entries.remove(i).map(|(_, c)| c).unwrap_or_default(),
                None => CachedFrames::default(),
            };
            entries.push_front((hash, cell.clone()));
            entries.truncate(WEIGHTS_CACHE_ENTRIES);
            cell
        };
        let frames = cell
            .get_or_try_init(|| async move {
                match tokio::task::spawn_blocking(load).await {
                    Ok(Ok(frames)) => Ok(Arc::new(frames)),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(format!("loading the weights failed: {e}")),
                }
            })
            .await;
        match frames {
            Ok(f) => Ok(f.clone()),
            Err(e) => {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(h, c)| *h != hash || c.initialized());
                Err(e)
            }
        }
    }
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
    let reader_ctx = ctx.clone();
    let reader = tokio::spawn(async move {
        loop {
            let r = read_message_sized::<ClientMessage>(
                &mut recv_half,
                reader_limit.load(Ordering::Relaxed),
            )
            .await
            .map(|m| {
                m.map(|(msg, bytes)| {
                    reader_ctx.count_received(msg.kind(), bytes);
                    msg
                })
            });
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
                    let n = write_message_sized(&mut send_half, &out, limit.load(Ordering::Relaxed).max(ctx.options.max_frame_len)).await?;
                    ctx.count_sent(out.kind(), n);
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
                let n = write_message_sized(&mut send_half, m, limit.load(Ordering::Relaxed).max(ctx.options.max_frame_len)).await?;
                ctx.count_sent(m.kind(), n);
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
            let frames = ctx
                .weights
                .frames(hash, move || {
                    let values = checkpoints.get(&hash, 1 << 32).map_err(|e| e.to_string())?;
                    weights_frames(&values, max, ServerMessage::Weights).map_err(|e| e.to_string())
                })
                .await;
            match frames {
                Ok(frames) => {
                    for frame in frames.iter() {
                        if let Err(e) = send.write_all(frame).await {
                            tracing::debug!(error = %e, "weights transfer failed");
                            break;
                        }
                        ctx.count_sent("Weights", frame.len());
                    }
                }
                Err(e) => {
                    tracing::debug!(%hash, error = %e, "weights requested but not available");
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
    LoggingIn(PendingLogin, LoginSlot),
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
                if matches!(self.auth, AuthState::LoggingIn(..)) {
                    // The client abandoned its login: it fails now (and frees its slot).
                    self.auth = AuthState::None;
                }
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
                    account: self
                        .account()
                        .map(|a| a.username.clone())
                        .unwrap_or_default(),
                    reported_examples: check_in.num_examples,
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
            ClientMessage::LocalEvaluation(e) => {
                // Federated evaluation goes to the client's round, which checks and aggregates
                // it; one that arrives after the round ended is dropped without an error, so a
                // slow evaluation never disturbs the client's next round.
                match self.current_seat() {
                    Some(seat) => {
                        let _ = seat
                            .inputs
                            .send(RoundInput::Message {
                                from: seat.index,
                                message: ClientMessage::LocalEvaluation(e),
                            })
                            .await;
                    }
                    None => {
                        tracing::debug!(remote = %self.remote, round = e.round_id.0, "local evaluation outside a round dropped")
                    }
                }
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
                // A login restarted on this connection ends the previous one (and frees its
                // slot) before queueing for a new slot.
                self.auth = AuthState::None;
                let slot = match tokio::time::timeout(
                    self.ctx.options.login_queue_timeout,
                    auth.login_slot(remote),
                )
                .await
                {
                    Ok(slot) => slot,
                    Err(_) => {
                        return self.auth_failed(AuthError::RateLimited {
                            retry_after_secs: 1,
                        });
                    }
                };
                let res =
                    blocking(move || auth.login_start(&username, &request, &binding, remote)).await;
                match res {
                    Ok((response, pending)) => {
                        self.auth = AuthState::LoggingIn(pending, slot);
                        Reply::one(ServerMessage::Auth(AuthMessage::LoginResponse {
                            response: ByteBuf::from(response),
                        }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::LoginFinish { finalization } => {
                let AuthState::LoggingIn(pending, slot) =
                    std::mem::replace(&mut self.auth, AuthState::None)
                else {
                    return Reply::error(ErrorCode::BadMessage, "LoginFinish without LoginStart");
                };
                let res =
                    blocking(move || auth.login_finish(pending, &finalization, &binding)).await;
                drop(slot);
                match res {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Fifty simultaneous downloads of one new model load and encode it once; a third model
    /// evicts the oldest; a failed load is retried by the next request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weights_cache_loads_each_model_once() {
        let cache = Arc::new(WeightsCache::default());
        let loads = Arc::new(AtomicU32::new(0));
        let fetch = |hash: ContentHash| {
            let cache = cache.clone();
            let loads = loads.clone();
            async move {
                cache
                    .frames(hash, move || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        Ok(vec![hash.0.to_vec()])
                    })
                    .await
            }
        };
        let a = ContentHash::of(b"a");
        let many: Vec<_> = (0..50).map(|_| tokio::spawn(fetch(a))).collect();
        for h in many {
            assert_eq!(h.await.unwrap().unwrap()[0], a.0.to_vec());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let b = ContentHash::of(b"b");
        let c = ContentHash::of(b"c");
        fetch(b).await.unwrap();
        fetch(a).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "a and b fit together");
        fetch(c).await.unwrap();
        fetch(b).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            4,
            "c evicted b, the oldest used"
        );
        let missing = ContentHash::of(b"missing");
        assert!(cache.frames(missing, || Err("gone".into())).await.is_err());
        assert!(fetch(missing).await.is_ok(), "a failed load is not cached");
    }
}
