//! Starting a whole coordinator from a state directory: certificate, OPAQUE key, database,
//! checkpoints, scheduler, the QUIC endpoint and (optionally) the owners' HTTP server (API,
//! console, `/metrics`). Used by
//! `cohort-coordinator serve`, the demo, and the end-to-end tests.
//!
//! Start-up is also crash recovery: rounds left "running" by a killed process are marked
//! abandoned, and every task in state "running" is resumed from the head of its round log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cohort_net::{CertFingerprint, ServerIdentity, TransportOptions, bind_server};
use tokio::sync::watch;

use crate::auth::{AuthConfig, Authenticator, SystemClock, load_or_generate_server_setup};
use crate::checkpoints::Checkpoints;
use crate::metrics::Metrics;
use crate::scheduler::{Evaluator, Scheduler, SchedulerOptions};
use crate::session::{SessionContext, SessionOptions, serve};
use crate::states::TaskState;
use crate::store::{AsyncStore, DB_FILE, Store};
use crate::task::TaskDefinition;

/// Everything a coordinator is started with.
#[derive(Clone)]
pub struct ServerConfig {
    /// The state directory (database, keys, checkpoints).
    pub state_dir: PathBuf,
    /// The QUIC address.
    pub listen: SocketAddr,
    /// Where the owners' HTTP server (API, console, `/metrics`) listens, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// Accounts and logins.
    pub auth: AuthConfig,
    /// Connection settings.
    pub session: SessionOptions,
    /// Scheduler settings.
    pub scheduler: SchedulerOptions,
    /// Server-side evaluation of the global model.
    pub evaluator: Option<Arc<dyn Evaluator>>,
}

/// A running coordinator. Dropping it does not stop it; call [`Coordinator::shutdown`].
pub struct Coordinator {
    /// The QUIC address it listens on.
    pub addr: SocketAddr,
    /// Where the owners' HTTP server listens.
    pub http_addr: Option<SocketAddr>,
    /// The owner token minted at this start, when the HTTP server runs and the state
    /// directory had no `owner-token` file (it is in that file now).
    pub new_owner_token: Option<String>,
    /// Its certificate's fingerprint, for clients to pin.
    pub fingerprint: CertFingerprint,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// The database.
    pub store: Arc<Store>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Accounts.
    pub auth: Arc<Authenticator>,
    /// The public half of the key that signs the round log (devices pin it at enrollment).
    pub log_key: cohort_protocol::chain::VerifyingKey,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Opens the database of a state directory, creating the directory readable by this user
/// only (0700; the database itself is 0600). A database that cannot be opened or whose pages
/// are damaged is an error naming the file: the coordinator never starts afresh beside it.
pub fn open_store(state_dir: &Path) -> anyhow::Result<Arc<Store>> {
    use anyhow::Context;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", state_dir.display()))?;
    }
    let path = state_dir.join(DB_FILE);
    let damaged = |e: &dyn std::fmt::Display| {
        format!(
            "the database {} is unusable ({e}); restore it from a backup, or move it away to \
             start this coordinator with no accounts and no tasks",
            path.display()
        )
    };
    let store = Store::open(&path).map_err(|e| anyhow::anyhow!(damaged(&e)))?;
    store
        .quick_check()
        .map_err(|e| anyhow::anyhow!(damaged(&e)))?;
    refuse_empty_beside_checkpoints(state_dir, &path, &store)?;
    Ok(Arc::new(store))
}

/// A database with no task while the checkpoints directory holds checkpoints was emptied,
/// replaced or deleted: starting on it would silently restart every task from scratch (and
/// forget every account), so it is an error naming the file.
fn refuse_empty_beside_checkpoints(
    state_dir: &Path,
    db: &Path,
    store: &Store,
) -> anyhow::Result<()> {
    let dir = state_dir.join(crate::checkpoints::CHECKPOINT_DIR);
    let checkpoints = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".f32le") || name.ends_with(".state")
            })
            .count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => anyhow::bail!("reading the checkpoints directory {}: {e}", dir.display()),
    };
    if checkpoints == 0 {
        return Ok(());
    }
    let tasks = store.tasks()?.len();
    let logged = store.with_conn(|c| {
        Ok(c.query_row("SELECT COUNT(*) FROM round_log", [], |r| r.get::<_, i64>(0))?)
    })?;
    if tasks == 0 && logged == 0 {
        anyhow::bail!(
            "the database {} holds no task and no round log, but {} holds {checkpoints} \
             checkpoint files: the database was emptied, replaced or deleted. Restore it from a \
             backup of the state directory; to really start afresh, move {} away as well",
            db.display(),
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Start-up's check of every task's record against its round log, running or not: each
/// task's chain must verify (the running tasks' checkpoints are checked later, by
/// [`Scheduler::check_resumable`]), and the attempts are reconciled with the log
/// ([`Store::reconcile_with_log`]): what a crash left half-recorded is repaired, and a
/// disagreement that cannot be repaired is an error naming the database and the task.
pub fn reconcile_with_logs(store: &Store, now: i64) -> anyhow::Result<()> {
    let db = store
        .path()
        .map_or_else(|| "(in memory)".to_string(), |p| p.display().to_string());
    for row in store.tasks()? {
        let task = cohort_protocol::TaskId(row.id.clone());
        if let Err(e) = store.round_log().verify(&task) {
            anyhow::bail!(
                "the database {db}: the round log of task {} ({}) does not verify: {e}; restore \
                 the database from a backup",
                row.id,
                row.state.as_str()
            );
        }
    }
    let done = store.reconcile_with_log(now).map_err(|e| match e {
        crate::store::StoreError::Inconsistent { .. } => anyhow::anyhow!(
            "the database {db} disagrees with its own round log ({e}); the round log is the \
             record of what was published: restore the database from a backup"
        ),
        other => anyhow::Error::from(other),
    })?;
    if done.abandoned > 0 || done.rounds_abandoned > 0 {
        tracing::warn!(
            attempts = done.abandoned,
            rounds = done.rounds_abandoned,
            "rounds left running by the previous process were abandoned"
        );
    }
    Ok(())
}

impl Coordinator {
    /// Starts a coordinator; resumes the tasks the database marks running.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Coordinator> {
        let state = &config.state_dir;
        let store = open_store(state)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        reconcile_with_logs(&store, now)?;
        // The model owner's round-log key: made at the first start, kept across restarts;
        // entries logged before it existed are signed now.
        let signed = store.with_conn(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM round_log WHERE signature IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })?;
        store.set_log_key(crate::log_key::load_or_generate(state, signed == 0)?);
        let newly_signed = store.round_log().sign_unsigned()?;
        if newly_signed > 0 {
            tracing::info!(
                entries = newly_signed,
                "signed the round-log entries written before the coordinator had a key"
            );
        }
        let identity = ServerIdentity::load_or_generate(state, &["localhost".into()])?;
        let setup = load_or_generate_server_setup(state)?;
        let auth = Arc::new(Authenticator::new(
            setup,
            store.clone(),
            config.auth,
            Arc::new(SystemClock),
        ));
        let checkpoints = Arc::new(Checkpoints::open(state)?);
        let metrics = Arc::new(Metrics::default());
        let scheduler = Scheduler::new(
            AsyncStore(store.clone()),
            checkpoints,
            config.scheduler.clone(),
            config.evaluator.clone(),
            metrics.clone(),
        );
        // Every running task is checked before any starts: a damaged checkpoint or log stops
        // start-up with an error naming the file, rather than a task loop dying in the
        // background.
        let mut resumed = Vec::new();
        for row in store.tasks()? {
            if row.state == TaskState::Running {
                let def = TaskDefinition::from_stored(&row.definition)?;
                scheduler.check_resumable(&def).await?;
                resumed.push(def);
            }
        }
        for def in resumed {
            tracing::info!(task = %def.id, "resuming task");
            scheduler.start_task(def)?;
        }
        let endpoint = bind_server(config.listen, &identity, &TransportOptions::default())?;
        let addr = endpoint.local_addr()?;
        metrics.watch_endpoint(endpoint.clone());
        let (tx, rx) = watch::channel(false);
        let (http_addr, new_owner_token) = match config.http_listen {
            Some(a) => {
                let api = crate::http::ApiState::new(
                    state.clone(),
                    store.clone(),
                    scheduler.clone(),
                    auth.clone(),
                )?;
                let token = crate::http::tokens::ensure_owner_token_file(
                    state,
                    &store,
                    crate::http::unix_now(),
                )?;
                let listener = tokio::net::TcpListener::bind(a).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(crate::http::serve(listener, api, rx.clone()));
                (Some(bound), token)
            }
            None => (None, None),
        };
        let log_key = store
            .log_key()
            .map(|k| k.verifying_key())
            .ok_or_else(|| anyhow::anyhow!("the round-log key was not set"))?;
        let ctx = Arc::new(SessionContext {
            auth: auth.clone(),
            store: AsyncStore(store.clone()),
            options: config.session.clone(),
            scheduler: Some(scheduler.clone()),
            weights: Default::default(),
        });
        tokio::spawn(serve(endpoint, ctx, rx));
        tracing::info!(%addr, fingerprint = %identity.fingerprint().to_hex(), "coordinator listening");
        Ok(Coordinator {
            addr,
            http_addr,
            new_owner_token,
            fingerprint: identity.fingerprint(),
            scheduler,
            store,
            auth,
            log_key,
            state_dir: config.state_dir.clone(),
            shutdown: tx,
        })
    }

    /// QUIC connections the coordinator's endpoint holds: open, or closing and not yet drained
    /// (the `cohort_quic_connections` metric).
    pub fn quic_connections(&self) -> usize {
        self.scheduler.metrics().quic_connections().unwrap_or(0)
    }

    /// Stores `def` and starts it now.
    pub fn create_and_start(&self, def: TaskDefinition) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.store
            .put_task(&def.id, &def.to_toml()?, TaskState::Running, now)?;
        self.scheduler.start_task(def)?;
        Ok(())
    }

    /// Stops accepting connections and closes the endpoint.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}
