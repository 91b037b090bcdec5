//! One task per connection: hello, authentication, and (to come) check-in and rounds.
//!
//! [`serve`] accepts connections until shutdown and spawns [`handle_connection`] for each, in
//! the manner of tokio's mini-redis. A connection carries one bidirectional *session stream*
//! that the client opens; on it the client sends [`ClientMessage`]s and the coordinator answers
//! with [`ServerMessage`]s. [`Session`] holds what the coordinator knows about the connection
//! and turns each message into replies; it is where check-in and the round actor's messages
//! will be added.
//!
//! What one peer can cost is bounded, before and after login (limits and where they are
//! enforced: `ARCH-NOTES-hostile.md`):
//! - [`serve`] admits a connection attempt only within the caps of [`Admission`] (connections
//!   not logged in, in total and per address) and answers with a QUIC Retry while many
//!   handshakes are in progress.
//! - From the attempt on, one absolute deadline ([`SessionOptions::auth_deadline`], 30 s)
//!   bounds the handshake, the session stream, every message, every write and the wait for a
//!   login slot until the client has logged in, whatever it sends meanwhile.
//! - The reader reads a frame only within its kind's limit
//!   ([`cohort_protocol::limits::ClientKind::frame_limit`]: 8 KiB before login, 16 KiB for small
//!   messages after, the round's sizes for masked inputs and shares, checked before the body is
//!   read) and holds at most one decoded message ahead of the handler.
//! - After login every write must finish within [`SessionOptions::write_timeout`]; the
//!   transport opens weight streams and its larger receive window only then
//!   ([`cohort_net::open_after_login`]), and an account holds at most
//!   [`AdmissionLimits::max_sessions_per_account`] sessions.
//!
//! A frame over its limit, a frame that does not decode, or a protocol violation closes *that*
//! connection (after an [`ErrorCode`] telling why); other connections are untouched.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_aggregation::secagg::prg::IMPLEMENTED_SUITES;
use cohort_net::quinn::SendStream;
use cohort_net::quinn::{self, Connection, Endpoint, VarInt};
use cohort_net::{
    NetError, read_message, read_message_by_kind, tls_binding, weights_frames, write_message,
    write_message_sized,
};
use cohort_protocol::limits::{ClientKind, PRE_AUTH_MAX_FRAME_LEN};
use cohort_protocol::{
    AuthMessage, Capabilities, CheckInResponse, CipherSuite, ClientMessage, CodecError,
    ContentHash, DEFAULT_MAX_FRAME_LEN, ErrorCode, HelloAck, PROTOCOL_VERSION, ServerMessage,
    WireError,
};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admission::{Admission, AdmissionLimits, PreAuthPermit, SessionPermit};
use crate::auth::{
    AuthError, AuthenticatedAccount, Authenticator, LoginSlot, PendingLogin, PendingRegistration,
};
use crate::checkpoints::CheckpointError;
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
    /// The peer had not logged in by the authentication deadline.
    pub const AUTH_DEADLINE: u32 = 4;
    /// A newer session of the same account replaced this one.
    pub const SUPERSEDED: u32 = crate::admission::SUPERSEDED;
    /// The peer stopped reading what the coordinator sends.
    pub const STALLED: u32 = 6;
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Frame limit of the messages allowed before login (hello, OPAQUE, errors). Other kinds
    /// have their own limits ([`cohort_protocol::limits::ClientKind::frame_limit`]).
    pub pre_auth_max_frame_len: usize,
    /// The largest frame the coordinator writes, and announces in its hello answer.
    pub max_frame_len: usize,
    /// One absolute deadline, counted from the connection attempt: a peer that has not logged
    /// in by then is closed, whatever it sends meanwhile.
    pub auth_deadline: Duration,
    /// A logged-in peer that does not take a message within this long is closed (before login
    /// the authentication deadline bounds writes too).
    pub write_timeout: Duration,
    /// A weight stream must carry its request within this long.
    pub weights_read_timeout: Duration,
    /// Software name and version sent in the hello answer.
    pub software: String,
    /// When an authenticated client checks in and no task is running, it is told to come back
    /// after this long.
    pub idle_retry_after: Duration,
    /// How long a `LoginStart` may wait for one of its address's login slots
    /// ([`crate::auth::MAX_PENDING_LOGINS_PER_ADDRESS`]) before it is refused as rate limited
    /// (never past the authentication deadline).
    pub login_queue_timeout: Duration,
    /// A login slot is released this long after `LoginResponse` if no `LoginFinish` came.
    pub login_slot_ttl: Duration,
    /// Caps on connections and sessions.
    pub admission: AdmissionLimits,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            pre_auth_max_frame_len: PRE_AUTH_MAX_FRAME_LEN,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            auth_deadline: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            weights_read_timeout: Duration::from_secs(10),
            software: concat!("cohort-coordinator/", env!("CARGO_PKG_VERSION")).to_string(),
            idle_retry_after: Duration::from_secs(60),
            login_queue_timeout: Duration::from_secs(20),
            login_slot_ttl: Duration::from_secs(10),
            admission: AdmissionLimits::default(),
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

type CachedFrames = Arc<tokio::sync::OnceCell<Arc<Vec<Bytes>>>>;

/// Weight vectors the cache keeps (the current model and the previous one).
pub const WEIGHTS_CACHE_ENTRIES: usize = 2;

impl WeightsCache {
    /// The frames of `hash`, encoded by `load` on a miss (run on the blocking pool). A failed
    /// load is not cached.
    pub async fn frames<F>(
        &self,
        hash: ContentHash,
        load: F,
    ) -> Result<Arc<Vec<Bytes>>, WeightsLoadError>
    where
        F: FnOnce() -> Result<Vec<Bytes>, WeightsLoadError> + Send + 'static,
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
                    Err(e) => Err(WeightsLoadError::Stopped(e)),
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

/// Why the download frames of a weight vector could not be produced.
#[derive(Debug, Error)]
pub enum WeightsLoadError {
    /// The checkpoint is missing, too large or damaged.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The vector could not be cut into frames under the frame limit.
    #[error("encoding the weights into frames: {0}")]
    Encode(#[from] NetError),
    /// The blocking task that loads the weights panicked or was cancelled.
    #[error("the task loading the weights stopped ({0}); the next request retries")]
    Stopped(tokio::task::JoinError),
}

/// Why a connection ended abnormally.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The transport failed or the peer sent something undecodable.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer had not logged in by the authentication deadline.
    #[error("the client had not logged in {0:?} after connecting")]
    AuthDeadline(Duration),
    /// The peer stopped reading: a write did not complete in time.
    #[error("the client took no data for {0:?}; it stopped reading")]
    WriteStalled(Duration),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Lines about what peers send, per second, before further ones are dropped: a peer cannot
/// flood the log.
const PEER_LOG_LINES_PER_SEC: u64 = 20;
/// Characters of peer-supplied text kept in a log line.
const PEER_TEXT_IN_LOG: usize = 200;

/// Whether a log line about a peer may be written now (a global budget per second).
pub(crate) fn peer_log_allowed() -> bool {
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LINES: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LINES.store(0, Ordering::Relaxed);
    }
    LINES.fetch_add(1, Ordering::Relaxed) < PEER_LOG_LINES_PER_SEC
}

/// Peer-supplied text as it may appear in a log line: cut short, control characters escaped.
pub(crate) fn peer_text(s: &str) -> String {
    s.chars()
        .take(PEER_TEXT_IN_LOG)
        .flat_map(char::escape_default)
        .take(4 * PEER_TEXT_IN_LOG)
        .collect()
}

/// Accepts connections on `endpoint` until `shutdown` turns true, one task per connection.
/// Closes the endpoint on the way out.
///
/// Each attempt first passes the caps of [`Admission`] (refused over them, before any TLS
/// work) and, while many handshakes are in progress, a QUIC Retry; its handshake and login
/// then run under one deadline ([`SessionOptions::auth_deadline`]).
pub async fn serve(
    endpoint: Endpoint,
    ctx: Arc<SessionContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let admission = Admission::new(ctx.options.admission);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                if admission.should_retry() && !incoming.remote_address_validated() {
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                let Some(permit) = admission.admit(remote.ip()) else {
                    if peer_log_allowed() {
                        tracing::debug!(%remote, "connection refused: too many connections that have not logged in");
                    }
                    incoming.refuse();
                    continue;
                };
                let deadline = Instant::now() + ctx.options.auth_deadline;
                let handshake = admission.handshake();
                let ctx = ctx.clone();
                let admission = admission.clone();
                tokio::spawn(async move {
                    let conn = match tokio::time::timeout_at(deadline, incoming).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "handshake not finished by the deadline");
                            return;
                        }
                    };
                    drop(handshake);
                    if let Err(e) = handle_connection(conn, ctx, admission, permit, deadline).await
                        && peer_log_allowed()
                    {
                        tracing::debug!(%remote, error = %peer_text(&e.to_string()), "connection ended");
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

/// The frame limit of a client frame of variant `variant`: the pre-login limit for hello and
/// authentication, the kind's limit after login, with the large kinds sized from the round the
/// connection sits in.
fn client_frame_limit(
    options: &SessionOptions,
    variant: Option<&str>,
    authenticated: bool,
    seat: &std::sync::Mutex<Option<Seat>>,
) -> usize {
    let kind = ClientKind::from_variant(variant);
    if !authenticated && kind == ClientKind::Handshake {
        return options.pre_auth_max_frame_len;
    }
    let round = seat
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.frame_limits);
    kind.frame_limit(authenticated, round.as_ref())
}

/// The largest frame limit of any kind for this connection now: what a length prefix is
/// checked against before the frame's kind is read.
fn largest_client_frame(
    options: &SessionOptions,
    authenticated: bool,
    seat: &std::sync::Mutex<Option<Seat>>,
) -> usize {
    if !authenticated {
        return options.pre_auth_max_frame_len.max(1024);
    }
    let round = seat
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(0, |s| s.frame_limits.max());
    round.max(cohort_protocol::limits::CONTROL_MAX_FRAME_LEN)
}

/// Writes `msg`, giving up at `deadline`.
async fn write_until(
    send: &mut SendStream,
    msg: &ServerMessage,
    max: usize,
    deadline: Instant,
    allowed: Duration,
) -> Result<usize, SessionError> {
    match tokio::time::timeout_at(deadline, write_message_sized(send, msg, max)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SessionError::WriteStalled(allowed)),
    }
}

/// Serves one connection: accepts its session stream and answers messages until the client
/// finishes the stream or breaks the protocol. Messages from the round driver (through the
/// connection's outbox) are written between the client's messages. Once the client logged in,
/// further bidirectional streams carry weight downloads ([`serve_weight_streams`]).
///
/// What one connection can cost is bounded: before login, everything (stream, messages,
/// writes, the wait for a login slot) must end by `deadline`; the reader holds at most one
/// decoded message ahead of the handler and reads a frame only within its kind's limit; after
/// login every write must complete within [`SessionOptions::write_timeout`].
pub async fn handle_connection(
    conn: Connection,
    ctx: Arc<SessionContext>,
    admission: Arc<Admission>,
    pre_auth: PreAuthPermit,
    deadline: Instant,
) -> Result<(), SessionError> {
    let allowed = ctx.options.auth_deadline;
    let binding = tls_binding(&conn)?;
    let remote = conn.remote_address().ip();
    let (mut send_half, mut recv_half) =
        match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
            Ok(s) => s.map_err(NetError::from)?,
            Err(_) => {
                conn.close(
                    VarInt::from_u32(close_code::AUTH_DEADLINE),
                    b"not logged in by the deadline",
                );
                return Err(SessionError::AuthDeadline(allowed));
            }
        };
    let authenticated = Arc::new(AtomicBool::new(false));
    let mut session = Session::new(ctx.clone(), binding, remote);
    // One decoded message at most waits for the handler: the reader takes a slot in the
    // channel before it reads the next frame.
    let (in_tx, mut incoming) = mpsc::channel::<Result<Option<ClientMessage>, NetError>>(1);
    let reader_ctx = ctx.clone();
    let reader_auth = authenticated.clone();
    let reader_seat = session.seat.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Ok(permit) = in_tx.reserve().await else {
                break;
            };
            let authed = reader_auth.load(Ordering::Acquire);
            let max_any = largest_client_frame(&reader_ctx.options, authed, &reader_seat);
            let r = read_message_by_kind::<ClientMessage>(&mut recv_half, max_any, |variant| {
                // Read again: a login may have completed while the frame's prefix was awaited.
                let authed = reader_auth.load(Ordering::Acquire);
                client_frame_limit(&reader_ctx.options, variant, authed, &reader_seat)
            })
            .await
            .map(|m| {
                m.map(|(msg, bytes)| {
                    reader_ctx.count_received(msg.kind(), bytes);
                    msg
                })
            });
            let end = !matches!(r, Ok(Some(_)));
            permit.send(r);
            if end {
                break;
            }
        }
    });
    let (outbox_tx, mut outbox) = mpsc::channel::<ServerMessage>(64);
    session.outbox = Some(outbox_tx);
    let mut pre_auth = Some(pre_auth);
    let mut registered: Option<SessionPermit> = None;
    let mut weights_task: Option<tokio::task::JoinHandle<()>> = None;
    if let Some(s) = &ctx.scheduler {
        s.metrics().connection(true);
    }
    let max = ctx.options.max_frame_len;
    let write_timeout = ctx.options.write_timeout;
    let result = async {
        loop {
            let authed = session.account().is_some();
            // Before login, writes share the authentication deadline.
            let write_deadline = |authed: bool| {
                if authed {
                    (Instant::now() + write_timeout, write_timeout)
                } else {
                    (deadline, allowed)
                }
            };
            let login_expiry = session.login_expiry();
            let received = tokio::select! {
                m = incoming.recv() => m,
                Some(out) = outbox.recv() => {
                    let (at, d) = write_deadline(authed);
                    let n = write_until(&mut send_half, &out, max, at, d).await?;
                    ctx.count_sent(out.kind(), n);
                    continue;
                }
                _ = tokio::time::sleep_until(deadline), if !authed => {
                    let reason = "not logged in by the authentication deadline";
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        write_message(&mut send_half, &ServerMessage::Error(WireError::new(
                            ErrorCode::Unauthenticated,
                            format!("{reason} ({allowed:?} after connecting); closing the connection"),
                        )), max),
                    ).await;
                    close_send_half(&conn, &mut send_half, close_code::AUTH_DEADLINE, reason, Duration::from_millis(500)).await;
                    return Err(SessionError::AuthDeadline(allowed));
                }
                _ = tokio::time::sleep_until(login_expiry.unwrap_or(deadline)), if login_expiry.is_some() => {
                    let reply = session.expire_login();
                    for m in &reply.messages {
                        let (at, d) = write_deadline(authed);
                        let n = write_until(&mut send_half, m, max, at, d).await?;
                        ctx.count_sent(m.kind(), n);
                    }
                    continue;
                }
            };
            let msg = match received {
                Some(Ok(Some(msg))) => msg,
                Some(Ok(None)) | None => {
                    // The client finished its stream: finish ours, and let what was written
                    // reach it before the connection goes.
                    let _ = send_half.finish();
                    let (at, _) = write_deadline(authed);
                    let _ = tokio::time::timeout_at(at, send_half.stopped()).await;
                    return Ok(());
                }
                Some(Err(e)) => return Err(refuse_frame_on(&conn, &mut send_half, e).await),
            };
            let reply = if authed {
                session.handle(msg).await
            } else {
                match tokio::time::timeout_at(deadline, session.handle(msg)).await {
                    Ok(r) => r,
                    // The deadline branch above closes the connection on the next turn.
                    Err(_) => continue,
                }
            };
            if !authed && let Some(account) = session.account() {
                // Logged in: the reader's limits, the transport's windows and the weight
                // streams open up, and the connection leaves the unauthenticated ones.
                authenticated.store(true, Ordering::Release);
                cohort_net::open_after_login(&conn);
                pre_auth.take();
                registered = Some(admission.register_session(
                    &account.username,
                    session.id,
                    conn.clone(),
                ));
                weights_task = Some(tokio::spawn(serve_weight_streams(conn.clone(), ctx.clone())));
            }
            let authed = session.account().is_some();
            for m in &reply.messages {
                let (at, d) = write_deadline(authed);
                let n = write_until(&mut send_half, m, max, at, d).await?;
                ctx.count_sent(m.kind(), n);
            }
            if let Some(reason) = reply.close {
                close_send_half(&conn, &mut send_half, close_code::PROTOCOL_VIOLATION, &reason, Duration::from_millis(500)).await;
                return Err(SessionError::Protocol(reason));
            }
        }
    }
    .await;
    if let Err(SessionError::WriteStalled(_)) = &result {
        conn.close(
            VarInt::from_u32(close_code::STALLED),
            b"the client stopped reading",
        );
    }
    session.disconnected().await;
    drop(registered);
    drop(pre_auth);
    if let Some(s) = &ctx.scheduler {
        s.metrics().connection(false);
    }
    reader.abort();
    if let Some(w) = weights_task {
        w.abort();
    }
    result
}

/// Answers weight downloads of a logged-in connection: each further bidirectional stream
/// carries one `FetchWeights` (within [`SessionOptions::weights_read_timeout`]) and gets the
/// vector back as `Weights` chunks, from the checkpoints; each chunk must be taken within
/// [`SessionOptions::write_timeout`]. At most [`cohort_net::AUTHENTICATED_BIDI_STREAMS`] − 1
/// downloads run at once (the transport's stream limit).
pub async fn serve_weight_streams(conn: Connection, ctx: Arc<SessionContext>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let max = ctx.options.max_frame_len;
            let write_timeout = ctx.options.write_timeout;
            let request = tokio::time::timeout(
                ctx.options.weights_read_timeout,
                read_message::<ClientMessage>(&mut recv, 1024),
            )
            .await;
            let Ok(Ok(Some(msg))) = request else {
                let _ = send.reset(VarInt::from_u32(close_code::PROTOCOL_VIOLATION));
                return;
            };
            let ClientMessage::FetchWeights(fetch) = msg else {
                let refusal = WireError::new(
                    ErrorCode::BadMessage,
                    "a weights stream carries one FetchWeights",
                );
                refuse_download(&mut send, refusal, max, write_timeout).await;
                return;
            };
            let Some(scheduler) = ctx.scheduler.clone() else {
                let refusal = WireError::new(
                    ErrorCode::NotFound,
                    "no weights with this hash are published",
                );
                refuse_download(&mut send, refusal, max, write_timeout).await;
                return;
            };
            let checkpoints = scheduler.checkpoints().clone();
            let hash = fetch.hash;
            let frames = ctx
                .weights
                .frames(hash, move || {
                    let values = checkpoints.get(&hash, 1 << 32)?;
                    Ok(weights_frames(&values, max, ServerMessage::Weights)?)
                })
                .await;
            match frames {
                Ok(frames) => {
                    for frame in frames.iter() {
                        // The cached frame itself, shared: no copy per stream.
                        let write = send.write_chunk(frame.clone());
                        match tokio::time::timeout(write_timeout, write).await {
                            Ok(Ok(())) => ctx.count_sent("Weights", frame.len()),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "weights transfer failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(
                                    "weights transfer stalled: the client stopped reading"
                                );
                                let _ = send.reset(VarInt::from_u32(close_code::STALLED));
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%hash, error = %e, "weights requested but not available");
                    let refusal = WireError::new(
                        ErrorCode::NotFound,
                        format!("no weights with hash {hash} are published"),
                    );
                    refuse_download(&mut send, refusal, max, write_timeout).await;
                }
            }
            let _ = send.finish();
        });
    }
}

/// Tells a downloading peer why it gets no weights, giving up after `write_timeout` (the peer
/// may not be reading).
async fn refuse_download(
    send: &mut SendStream,
    refusal: WireError,
    max_frame_len: usize,
    write_timeout: Duration,
) {
    let reply = ServerMessage::Error(refusal);
    let _ = tokio::time::timeout(write_timeout, write_message(send, &reply, max_frame_len)).await;
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
    let grace = Duration::from_millis(500);
    if let Some(code) = wire {
        let msg =
            ServerMessage::Error(WireError::new(code, format!("{e}; closing the connection")));
        let _ = tokio::time::timeout(grace, write_message(send, &msg, DEFAULT_MAX_FRAME_LEN)).await;
    }
    close_send_half(conn, send, code, &e.to_string(), grace).await;
    SessionError::Net(e)
}

/// Finishes the send half, gives the peer up to `grace` to read what was sent, then closes.
async fn close_send_half(
    conn: &Connection,
    send: &mut SendStream,
    code: u32,
    reason: &str,
    grace: Duration,
) {
    let _ = send.finish();
    let _ = tokio::time::timeout(grace, send.stopped()).await;
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
    /// A login between `LoginResponse` and `LoginFinish`, holding one of its address's login
    /// slots until the instant it expires.
    LoggingIn(PendingLogin, LoginSlot, Instant),
    Authenticated(AuthenticatedAccount),
}

/// What the coordinator knows about one connection.
pub struct Session {
    ctx: Arc<SessionContext>,
    binding: [u8; 32],
    remote: IpAddr,
    greeted: bool,
    /// The SecAgg+ suites the client advertised in its `Hello`; the round picks one that every
    /// member advertised (`cohort_aggregation::secagg::negotiate_suite`).
    secagg_suites: Vec<CipherSuite>,
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
            secagg_suites: Vec::new(),
            auth: AuthState::None,
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            outbox: None,
            seat: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The public key that signs the round log, as `Authenticated` carries it.
    fn log_key(&self) -> Option<ByteBuf> {
        self.ctx
            .store
            .0
            .log_key()
            .map(|k| ByteBuf::from(k.verifying_key().to_bytes().to_vec()))
    }

    fn current_seat(&self) -> Option<Seat> {
        self.seat.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection closed: leave the selection pool, and tell a running round.
    pub async fn disconnected(&mut self) {
        if let Some(s) = &self.ctx.scheduler
            && let Some(account) = self.account()
        {
            s.leave(self.id, &account.username);
        }
        if let Some(seat) = self.current_seat() {
            let _ = seat.inputs.send(RoundInput::Disconnected(seat.index)).await;
        }
    }

    /// When the login in progress expires (and frees its slot), if one is.
    pub fn login_expiry(&self) -> Option<Instant> {
        match &self.auth {
            AuthState::LoggingIn(_, _, at) => Some(*at),
            _ => None,
        }
    }

    /// The login in progress was not finished in time: it ends as a failure (counted against
    /// its account and address) and its slot goes to the next login of the address.
    pub fn expire_login(&mut self) -> Reply {
        if !matches!(self.auth, AuthState::LoggingIn(..)) {
            return Reply::default();
        }
        self.auth = AuthState::None;
        Reply::error(
            ErrorCode::AuthenticationFailed,
            format!(
                "the login was not finished within {:?} of the server's answer; start it again",
                self.ctx.options.login_slot_ttl
            ),
        )
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
                    self.secagg_suites = h.capabilities.secagg_suites;
                    Reply::one(ServerMessage::HelloAck(HelloAck {
                        protocol_version: PROTOCOL_VERSION,
                        software: self.ctx.options.software.clone(),
                        capabilities: Capabilities {
                            max_frame_len: self.ctx.options.max_frame_len as u32,
                            secagg_suites: IMPLEMENTED_SUITES.to_vec(),
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
        if !matches!(msg, ClientMessage::Auth(_)) && matches!(self.auth, AuthState::LoggingIn(..)) {
            // Anything but the login's next step abandons it: it fails now and frees its slot.
            self.auth = AuthState::None;
        }
        match msg {
            ClientMessage::Hello(_) => Reply::fatal(ErrorCode::BadMessage, "Hello sent twice"),
            ClientMessage::Auth(m) => self.handle_auth(m).await,
            ClientMessage::Error(e) => {
                if peer_log_allowed() {
                    tracing::debug!(remote = %self.remote, code = ?e.code, message = %peer_text(&e.message), "client reported an error");
                }
                Reply::default()
            }
            _ if self.account().is_none() => Reply::error(
                ErrorCode::Unauthenticated,
                "log in first: this request needs an authenticated account",
            ),
            ClientMessage::CheckIn(check_in) => {
                let (Some(scheduler), Some(outbox)) = (&self.ctx.scheduler, &self.outbox) else {
                    return Reply::one(ServerMessage::CheckIn(CheckInResponse::NoTask {
                        retry_after_ms: self.ctx.options.idle_retry_after.as_millis() as u64,
                    }));
                };
                *self.seat.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let account = self
                    .account()
                    .map(|a| a.username.clone())
                    .unwrap_or_default();
                let has_device_key = {
                    let name = account.clone();
                    matches!(
                        self.ctx
                            .store
                            .call(move |s| crate::identity_log::current_keys(s, &[name]))
                            .await
                            .as_deref(),
                        Ok([Some(_)])
                    )
                };
                let member = Member {
                    outbox: outbox.clone(),
                    seat: self.seat.clone(),
                    account: account.clone(),
                    known_identity_head: check_in.known_identity_head,
                    has_device_key,
                    secagg_suites: self.secagg_suites.clone(),
                };
                Reply::one(ServerMessage::CheckIn(scheduler.check_in(
                    self.id,
                    &account,
                    check_in.task.as_ref(),
                    check_in.known_head,
                    member,
                )))
            }
            ClientMessage::Ledger(request) => {
                // Only the logged-in account's own rows: the account comes from the login,
                // never from the request.
                let account = self
                    .account()
                    .map(|a| a.username.clone())
                    .unwrap_or_default();
                let store = self.ctx.store.0.clone();
                let page = tokio::task::spawn_blocking(move || {
                    crate::ledger::page_for(&store, &request.task, &account, &request.ending_at)
                })
                .await;
                match page {
                    Ok(Ok(page)) => Reply::one(ServerMessage::Ledger(page)),
                    Ok(Err(e @ crate::ledger::LedgerPageError::UnknownEntry { .. })) => {
                        Reply::error(ErrorCode::NotFound, e.to_string())
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "serving a ledger page failed");
                        Reply::error(ErrorCode::Internal, "the ledger could not be read")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "serving a ledger page failed");
                        Reply::error(ErrorCode::Internal, "the ledger could not be read")
                    }
                }
            }
            ClientMessage::FetchWeights(_) => Reply::error(
                ErrorCode::BadMessage,
                "fetch weights on a separate bidirectional stream, not on the session stream",
            ),
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
            AuthMessage::RegisterFinish { upload, identity } => {
                let AuthState::Registering(pending) =
                    std::mem::replace(&mut self.auth, AuthState::None)
                else {
                    return Reply::error(
                        ErrorCode::BadMessage,
                        "RegisterFinish without RegisterStart",
                    );
                };
                let username = pending_username(&pending);
                match blocking(move || {
                    auth.registration_finish(pending, &upload, identity.as_ref())
                })
                .await
                {
                    Ok(role) => {
                        // Registering proves what a login would: the account is this client's.
                        self.auth =
                            AuthState::Authenticated(AuthenticatedAccount { username, role });
                        Reply::one(ServerMessage::Auth(AuthMessage::Authenticated {
                            role,
                            log_key: self.log_key(),
                        }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::LoginStart { username, request } => {
                // A login restarted on this connection ends the previous one (and frees its
                // slot) before queueing for a new slot.
                self.auth = AuthState::None;
                let ttl = self.ctx.options.login_slot_ttl;
                let slot = match tokio::time::timeout(
                    self.ctx.options.login_queue_timeout,
                    auth.login_slot(remote),
                )
                .await
                {
                    Ok(slot) => slot,
                    Err(_) => {
                        // Every slot of the address is held by a login that ends within the
                        // slot's lifetime: by then one is free.
                        return self.auth_failed(AuthError::RateLimited {
                            retry_after_secs: ttl.as_secs().max(1) as i64,
                        });
                    }
                };
                let res =
                    blocking(move || auth.login_start(&username, &request, &binding, remote)).await;
                match res {
                    Ok((response, pending)) => {
                        self.auth = AuthState::LoggingIn(pending, slot, Instant::now() + ttl);
                        Reply::one(ServerMessage::Auth(AuthMessage::LoginResponse {
                            response: ByteBuf::from(response),
                        }))
                    }
                    Err(e) => self.auth_failed(e),
                }
            }
            AuthMessage::LoginFinish { finalization } => {
                let AuthState::LoggingIn(pending, slot, _) =
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
                        Reply::one(ServerMessage::Auth(AuthMessage::Authenticated {
                            role,
                            log_key: self.log_key(),
                        }))
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
                        Ok(vec![Bytes::copy_from_slice(&hash.0)])
                    })
                    .await
            }
        };
        let a = ContentHash::of(b"a");
        let many: Vec<_> = (0..50).map(|_| tokio::spawn(fetch(a))).collect();
        for h in many {
            assert_eq!(h.await.unwrap().unwrap()[0], a.0.as_slice());
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
        assert!(matches!(
            cache
                .frames(missing, move || Err(CheckpointError::NotFound(missing).into()))
                .await,
            Err(WeightsLoadError::Checkpoint(CheckpointError::NotFound(h))) if h == missing
        ));
        assert!(fetch(missing).await.is_ok(), "a failed load is not cached");
    }
}
