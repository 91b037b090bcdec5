//! The model owners' HTTP server: a JSON API over the coordinator's tasks, rounds, round log,
//! checkpoints, devices and invites (documented in `docs/api/openapi.yaml`), the web console
//! (assets embedded in the binary, [`console`]), live updates as server-sent events
//! ([`events`]) and `GET /metrics` for Prometheus.
//!
//! It listens on 127.0.0.1:8080 by default (`serve --http ADDR`, `--no-http`). Every `/api`
//! request carries a token ([`tokens`]) as `Authorization: Bearer TOKEN` (or `?token=` where
//! a browser cannot set headers: the event stream and model downloads); every write needs an
//! owner token and is recorded in the audit table (`GET /api/v1/audit`), refused or not.
//! Errors are JSON with the status that fits ([`error::ApiError`]); a refused request changes
//! nothing.
//!
//! Reads go through a second SQLite connection (WAL lets readers run beside the scheduler's
//! writes), so a crowd of readers does not queue behind the round's commits; each token has a
//! request budget (excess requests wait, then get 429) and token lookups are cached for a
//! second ([`limit`]), so readers cannot take the CPU the rounds need.

pub mod error;
pub mod events;
pub mod limit;
pub mod tasks;
pub mod tokens;

pub mod console;
mod devices;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};
use rusqlite::params;
use tokio::sync::broadcast;

use crate::auth::Authenticator;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::scheduler::Scheduler;
use crate::store::{DB_FILE, Store, StoreError};

pub use error::ApiError;
pub use tokens::{ApiRole, Caller};

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    reads: Arc<Store>,
    scheduler: Arc<Scheduler>,
    auth: Arc<Authenticator>,
    state_dir: PathBuf,
    changes: broadcast::Sender<events::ApiEvent>,
    lifecycle: tokio::sync::Mutex<()>,
    limiter: limit::RateLimiter,
    token_cache: limit::TokenCache,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The API of the coordinator whose state directory is `state_dir`, with its database,
    /// scheduler and accounts. Creates the API's tables.
    pub fn new(
        state_dir: PathBuf,
        store: Arc<Store>,
        scheduler: Arc<Scheduler>,
        auth: Arc<Authenticator>,
    ) -> Result<Self, StoreError> {
        tokens::ensure_tables(&store)?;
        let reads = Arc::new(Store::open(&state_dir.join(DB_FILE))?);
        let (changes, _) = broadcast::channel(64);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                reads,
                scheduler,
                auth,
                state_dir,
                changes,
                lifecycle: tokio::sync::Mutex::new(()),
                limiter: limit::RateLimiter::default(),
                token_cache: limit::TokenCache::default(),
            }),
        })
    }

    /// The database (writes).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The read connection.
    pub fn reads(&self) -> &Arc<Store> {
        &self.inner.reads
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.inner.scheduler
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.scheduler.metrics()
    }

    /// Runs a read on the blocking pool.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let reads = self.inner.reads.clone();
        tokio::task::spawn_blocking(move || f(&reads))
            .await
            .map_err(ApiError::internal)?
    }

    /// Records a write in the audit table.
    pub async fn audit(&self, caller: &Caller, action: &str, target: &str, outcome: &str) {
        let store = self.inner.store.clone();
        let (actor, action, target, outcome) = (
            caller.name.clone(),
            action.to_string(),
            target.to_string(),
            outcome.to_string(),
        );
        let res = tokio::task::spawn_blocking(move || {
            store.with_conn(|c| {
                c.execute(
                    "INSERT INTO api_audit (at, actor, action, target, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![unix_now(), actor, action, target, outcome],
                )?;
                Ok(())
            })
        })
        .await;
        if !matches!(res, Ok(Ok(()))) {
            tracing::error!(?res, "cannot record an owner's action in the audit table");
        }
    }

    /// Runs an owner's write and records it with its outcome.
    pub async fn audited<R>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("refused: {}", e.code),
        };
        self.audit(caller, action, target, &outcome).await;
        result
    }

    pub(crate) fn notify(&self, event: events::ApiEvent) {
        let _ = self.inner.changes.send(event);
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_of(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(header::AUTHORIZATION) {
        let h = h.to_str().ok()?;
        return h
            .strip_prefix("Bearer ")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    let query = parts.uri.query()?;
    let pairs: HashMap<String, String> = serde_urlencoded::from_str(query).ok()?;
    pairs.get("token").cloned().filter(|t| !t.is_empty())
}

async fn caller(parts: &Parts, state: &ApiState) -> Result<Caller, ApiError> {
    let Some(token) = token_of(parts) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this request needs an API token: send `Authorization: Bearer TOKEN`. `serve` wrote \
             the first owner token to STATE/owner-token; `cohort-coordinator owner token` mints \
             another",
        ));
    };
    let hash = tokens::hash(&token);
    let now = tokio::time::Instant::now();
    let found = match state.inner.token_cache.get(&hash, now) {
        Some(found) => found,
        None => {
            let found = state
                .read(move |s| Ok(tokens::lookup_hash(s, &hash)?))
                .await?;
            state.inner.token_cache.put(hash, found.clone(), now);
            found
        }
    };
    let caller = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the API token is not known to this coordinator (or was revoked); use the one in \
             STATE/owner-token or mint one with `cohort-coordinator owner token`",
        )
    })?;
    rate_limit(state, hash).await?;
    Ok(caller)
}

/// Waits for a slot of `key`'s request budget ([`limit`]); 429 when the wait would be too long.
async fn rate_limit(state: &ApiState, key: [u8; 32]) -> Result<(), ApiError> {
    state.inner.limiter.acquire(key).await.map_err(|l| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this token is over its budget of {} requests a second; retry in {:.1} s",
                limit::API_REQUESTS_PER_SEC,
                l.retry_after.as_secs_f64()
            ),
        )
    })
}

/// A caller with any role (reads).
#[derive(Debug)]
pub struct Reader(pub Caller);

/// A caller with the owner role (writes).
#[derive(Debug)]
pub struct Owner(pub Caller);

impl FromRequestParts<ApiState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        caller(parts, state).await.map(Reader)
    }
}

impl FromRequestParts<ApiState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let c = caller(parts, state).await?;
        if c.role != ApiRole::Owner {
            let action = format!("{} {}", parts.method, parts.uri.path());
            state.audit(&c, &action, "", "refused: forbidden").await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {:?} has the {} role, which may only read; changes need an owner \
                     token",
                    c.name,
                    c.role.as_str()
                ),
            ));
        }
        Ok(Owner(c))
    }
}

/// The query string as a map (a malformed one is a 400 in JSON, not axum's text).
pub(crate) fn query_u64(
    query: &Query<HashMap<String, String>>,
    key: &str,
) -> Result<Option<u64>, ApiError> {
    query
        .get(key)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::bad_request(
                    "bad_query",
                    format!("query parameter {key}={v:?} is not a whole number"),
                )
            })
        })
        .transpose()
}

/// Every route: its path, its methods (for the OpenAPI check) and its handlers.
pub fn routes() -> Vec<(
    &'static str,
    &'static [&'static str],
    MethodRouter<ApiState>,
)> {
    vec![
        ("/", &["get"], get(console::index)),
        ("/console.js", &["get"], get(console::script)),
        ("/console.css", &["get"], get(console::style)),
        ("/metrics", &["get"], get(metrics)),
        (
            "/api/v1/tasks",
            &["get", "post"],
            get(tasks::list).post(tasks::create),
        ),
        ("/api/v1/tasks/{id}", &["get"], get(tasks::show)),
        ("/api/v1/tasks/{id}/start", &["post"], post(tasks::start)),
        ("/api/v1/tasks/{id}/pause", &["post"], post(tasks::pause)),
        ("/api/v1/tasks/{id}/resume", &["post"], post(tasks::resume)),
        ("/api/v1/tasks/{id}/stop", &["post"], post(tasks::stop)),
        ("/api/v1/tasks/{id}/rounds", &["get"], get(tasks::rounds)),
        ("/api/v1/tasks/{id}/metrics", &["get"], get(tasks::metrics)),
        ("/api/v1/tasks/{id}/log", &["get"], get(tasks::log)),
        (
            "/api/v1/tasks/{id}/checkpoints",
            &["get"],
            get(tasks::checkpoints),
        ),
        ("/api/v1/tasks/{id}/model", &["get"], get(tasks::model)),
        ("/api/v1/tasks/{id}/ledger", &["get"], get(tasks::ledger)),
        ("/api/v1/tasks/{id}/privacy", &["get"], get(tasks::privacy)),
        ("/api/v1/devices", &["get"], get(devices::devices)),
        (
            "/api/v1/invites",
            &["get", "post"],
            get(devices::invites).post(devices::issue_invite),
        ),
        ("/api/v1/audit", &["get"], get(devices::audit)),
        ("/api/v1/events", &["get"], get(events::stream)),
    ]
}

/// The router of every route, with JSON answers for unknown paths and methods.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for (path, _, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; docs/api/openapi.yaml lists the API",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; docs/api/openapi.yaml lists the API",
            )
        })
        .with_state(state)
}

/// The budget key every `/metrics` scrape shares (scrapes carry no token).
const METRICS_KEY: [u8; 32] = [0xff; 32];

async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    rate_limit(&state, METRICS_KEY).await?;
    Ok((
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics().render(),
    ))
}

/// Serves the router on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}
