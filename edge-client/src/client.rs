//! [`EdgeClient`]: the edge client as a library, the one seam that the `cohort-edge` CLI and
//! every binding (`cohort-mobile`) use.
//!
//! It owns its tokio runtime: every method is a plain blocking call, made from any thread that
//! is not itself inside an async runtime ([`EdgeError::InsideAsyncRuntime`] otherwise). One
//! participation call runs at a time ([`EdgeError::Busy`] for a second); [`EdgeClient::stop`]
//! and [`EdgeClient::status`] may be called from any other thread meanwhile, and from the
//! progress listener. A stop ends the running call within one training step or one message:
//! the round in progress is abandoned (the coordinator sees a dropout) and nothing of it is
//! uploaded.
//!
//! ```text
//! let client = EdgeClient::new(config, host, trainer)?;
//! client.enroll("alice", None, fingerprint, KsfParams::default())?;   // once
//! loop { match client.participate_once()? { ... } }                 // or run_until_stopped()
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cohort_net::opaque_suite::KsfParams;
use cohort_net::{CertFingerprint, ClientTransport, FramedStream, ServerTrust, TransportOptions};
use cohort_protocol::{DEFAULT_MAX_FRAME_LEN, Role, RoundResult, TaskId};
use thiserror::Error;

use crate::credentials::{Credentials, CredentialsError};
use crate::enroll::{self, EnrollError};
use crate::host::{DeviceState, SecretStore};
use crate::progress::{ClientProgress, ProgressListener, ProgressSink, StopSignal};
use crate::run::{Context, Participation, RunConfig, RunError, Session, attempt, drive};
use crate::testing_hooks::Hooks;
use crate::trainer::{TrainError, Trainer};

/// Why an [`EdgeClient`] call failed.
#[derive(Debug, Error)]
pub enum EdgeError {
    /// Taking part failed (connection, coordinator, local training, device state, stop).
    #[error(transparent)]
    Run(#[from] RunError),
    /// Enrollment failed.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// The credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The device has not enrolled.
    #[error("this device is not enrolled (no credentials in {0}); call enroll first")]
    NotEnrolled(String),
    /// The credentials pin no coordinator certificate.
    #[error("the credentials pin no coordinator certificate ({0}); enroll again")]
    NoPinnedCertificate(String),
    /// Another call is running on this client.
    #[error("another call is running on this client; wait for it to return or call stop()")]
    Busy,
    /// `stop` was called while nothing ran.
    #[error("nothing is running, so there is nothing to stop")]
    NotRunning,
    /// `stop` was called twice for the same call.
    #[error("a stop was already requested; the running call is ending")]
    AlreadyStopping,
    /// Called from inside an async runtime, where blocking would stall it.
    #[error(
        "the edge client was called from inside an async runtime; call it from a plain thread \
         (e.g. tokio::task::spawn_blocking)"
    )]
    InsideAsyncRuntime,
    /// The client's runtime or socket could not be created.
    #[error("cannot start the edge client: {0}")]
    Start(#[source] std::io::Error),
    /// The state directory (cached weights, verified round-log heads) could not be created.
    #[error("cannot create the state directory {path}: {source}; give a writable directory")]
    StateDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl EdgeError {
    /// Whether the call ended because [`EdgeClient::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        matches!(
            self,
            EdgeError::Run(RunError::Stopped | RunError::Training(TrainError::Cancelled))
        )
    }
}

/// What the host plugs in besides the trainer (which holds the examples).
#[derive(Clone)]
pub struct Host {
    /// The device's power, network and thermal state.
    pub device: Arc<dyn DeviceState>,
    /// Where the credentials live.
    pub secrets: Arc<dyn SecretStore>,
    /// Names the secret store in messages ("Android Keystore", a directory).
    pub secrets_place: String,
    /// Progress and participation reports.
    pub listener: Option<Arc<dyn ProgressListener>>,
}

/// Where a client stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Status {
    /// A participation call is running.
    pub running: bool,
    /// A stop was requested and the call is ending.
    pub stopping: bool,
    /// Rounds this client completed since it was created.
    pub rounds_completed: u32,
    /// The last progress report.
    pub progress: ClientProgress,
}

#[derive(Default)]
struct CallState {
    running: bool,
}

/// The edge client. See the [module docs](self).
pub struct EdgeClient {
    runtime: Option<tokio::runtime::Runtime>,
    config: RunConfig,
    ctx: Context,
    trainer: Mutex<Option<Box<dyn Trainer>>>,
    session: Mutex<Option<Session>>,
    task: Mutex<Option<TaskId>>,
    transport: Mutex<Option<(CertFingerprint, Arc<ClientTransport>)>>,
    call: Mutex<CallState>,
    rounds: Arc<AtomicU32>,
}

impl std::fmt::Debug for EdgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeClient")
            .field("server", &self.config.server)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a call as running; on drop clears the call and its stop request together.
struct CallGuard<'a> {
    client: &'a EdgeClient,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let mut call = lock(&self.client.call);
        self.client.ctx.stop.reset();
        call.running = false;
    }
}

impl EdgeClient {
    /// A client for `config` with the host's callbacks, training with `trainer` (usually a
    /// [`crate::trainer::BurnTrainer::from_source`] over the host's examples). Starts the
    /// client's own runtime (two worker threads).
    pub fn new(
        config: RunConfig,
        host: Host,
        trainer: Box<dyn Trainer>,
    ) -> Result<EdgeClient, EdgeError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| EdgeError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cohort-edge")
            .enable_all()
            .build()
            .map_err(EdgeError::Start)?;
        Ok(EdgeClient {
            runtime: Some(runtime),
            config,
            ctx: Context {
                device: host.device,
                secrets: host.secrets,
                secrets_place: host.secrets_place,
                stop: StopSignal::default(),
                progress: ProgressSink::new(host.listener),
                hooks: Hooks::default(),
            },
            trainer: Mutex::new(Some(trainer)),
            session: Mutex::new(None),
            task: Mutex::new(None),
            transport: Mutex::new(None),
            call: Mutex::new(CallState::default()),
            rounds: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    fn begin(&self) -> Result<CallGuard<'_>, EdgeError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(EdgeError::InsideAsyncRuntime);
        }
        let mut call = lock(&self.call);
        if call.running {
            return Err(EdgeError::Busy);
        }
        call.running = true;
        Ok(CallGuard { client: self })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        // `runtime` is `None` only inside `drop`.
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the client")
            .block_on(f)
    }

    fn bind(&self, pin: CertFingerprint) -> Result<ClientTransport, EdgeError> {
        let any: SocketAddr = match self.config.server {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let _enter = self.runtime.as_ref().map(|r| r.enter());
        ClientTransport::bind(any, ServerTrust::Pinned(pin), TransportOptions::default())
            .map_err(|e| EdgeError::Run(RunError::Net(e)))
    }

    /// The transport pinned to the enrolled coordinator's certificate.
    fn transport(&self) -> Result<Arc<ClientTransport>, EdgeError> {
        let creds = Credentials::load_from(self.ctx.secrets.as_ref())?
            .ok_or_else(|| EdgeError::NotEnrolled(self.ctx.secrets_place.clone()))?;
        let pin: CertFingerprint = creds
            .server_fingerprint
            .as_deref()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| EdgeError::NoPinnedCertificate(self.ctx.secrets_place.clone()))?;
        let mut slot = lock(&self.transport);
        if let Some((p, t)) = slot.as_ref()
            && *p == pin
        {
            return Ok(t.clone());
        }
        let t = Arc::new(self.bind(pin)?);
        *slot = Some((pin, t.clone()));
        Ok(t)
    }

    /// Whether the secret store holds credentials.
    pub fn is_enrolled(&self) -> Result<bool, EdgeError> {
        Ok(Credentials::load_from(self.ctx.secrets.as_ref())?.is_some())
    }

    /// Registers this device as `username` with the coordinator whose certificate has
    /// `fingerprint` (pinned from now on), with an invite code when the coordinator requires
    /// one; the credentials go to the host's secret store. Returns the account's role.
    pub fn enroll(
        &self,
        username: &str,
        invite: Option<&str>,
        fingerprint: CertFingerprint,
        ksf: KsfParams,
    ) -> Result<Role, EdgeError> {
        let _call = self.begin()?;
        let transport = self.bind(fingerprint)?;
        let ctx = &self.ctx;
        self.block_on(async {
            let r = ctx
                .unless_stopped(async {
                    let conn = transport
                        .connect(self.config.server, &self.config.server_name)
                        .await?;
                    let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
                    enroll::hello(&mut stream).await?;
                    let (_, role) = enroll::enroll_into(
                        &mut stream,
                        ctx.secrets.as_ref(),
                        username,
                        &self.config.password,
                        invite,
                        ksf,
                        Some(fingerprint.to_hex()),
                    )
                    .await?;
                    stream.finish();
                    conn.close(0u32.into(), b"enrolled");
                    Ok(role)
                })
                .await;
            r.map_err(|e| match e {
                RunError::Enroll(e) => EdgeError::Enroll(e),
                e => EdgeError::Run(e),
            })
        })
    }

    /// Checks in once: reads the device state (no check-in when the policy forbids training),
    /// and when the coordinator selects the device, takes part in the round and returns what
    /// it contributed. The logged-in connection is kept for the next call.
    pub fn participate_once(&self) -> Result<Participation, EdgeError> {
        let _call = self.begin()?;
        let transport = self.transport()?;
        let mut trainer = lock(&self.trainer).take();
        let mut session = lock(&self.session).take();
        let mut task = lock(&self.task).clone();
        let r = self.block_on(async {
            loop {
                let fresh = session.is_none();
                if fresh {
                    session = Some(Session::open(&transport, &self.config, &self.ctx).await?);
                }
                let Some(s) = session.as_mut() else {
                    return Err(RunError::Stopped);
                };
                match attempt(s, &self.config, &self.ctx, &mut trainer, &mut task).await {
                    Ok(p) => return Ok(p),
                    // A kept connection that went stale: once more on a new one.
                    Err(e) if e.retryable() && !fresh => session = None,
                    Err(e) => {
                        session = None;
                        return Err(e);
                    }
                }
            }
        });
        *lock(&self.trainer) = trainer;
        *lock(&self.session) = session;
        *lock(&self.task) = task;
        let p = r?;
        if let Participation::Contributed(c) = &p
            && matches!(c.result, RoundResult::Completed { .. })
        {
            self.rounds.fetch_add(1, Ordering::Relaxed);
        }
        self.ctx.progress.participation(&p);
        self.ctx.progress.phase(crate::progress::Phase::Idle, None);
        Ok(p)
    }

    /// Takes part until [`stop`](Self::stop) is called (or `max_rounds` rounds completed, or
    /// the task ended with `until_task_ends`): checks in, waits as the coordinator and the
    /// device state say, reconnects with backoff. Returns the rounds completed.
    pub fn run_until_stopped(&self) -> Result<u32, EdgeError> {
        let _call = self.begin()?;
        let transport = self.transport()?;
        let mut trainer = lock(&self.trainer).take();
        let mut session = lock(&self.session).take();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rounds = self.rounds.clone();
        let counter = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the client")
            .spawn(async move {
                while let Some(c) = rx.recv().await {
                    let c: crate::run::Contribution = c;
                    if matches!(c.result, RoundResult::Completed { .. }) {
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        let r = self.block_on(drive(
            &transport,
            &self.config,
            &self.ctx,
            &mut trainer,
            &mut session,
            Some(&tx),
        ));
        drop(tx);
        let _ = self.block_on(counter);
        *lock(&self.trainer) = trainer;
        *lock(&self.session) = session;
        Ok(r?)
    }

    /// This device's credit in `task` from the coordinator's contributor ledger, each row
    /// checked against the round log this device verified (its membership in the round's
    /// member tree, under the entry's signed root: [`crate::credit`]). Logs in when no
    /// connection is kept. [`crate::credit::CreditError`] (inside [`EdgeError::Run`]) when the
    /// device has verified no log of the task or the coordinator's answer does not check out.
    pub fn credit(&self, task: &TaskId) -> Result<crate::credit::TaskCredit, EdgeError> {
        let _call = self.begin()?;
        let transport = self.transport()?;
        let mut session = lock(&self.session).take();
        let r = self.block_on(async {
            loop {
                let fresh = session.is_none();
                if fresh {
                    session = Some(Session::open(&transport, &self.config, &self.ctx).await?);
                }
                let Some(s) = session.as_mut() else {
                    return Err(RunError::Stopped);
                };
                match crate::run::fetch_credit(s, &self.ctx, task).await {
                    Ok(c) => return Ok(c),
                    // A kept connection that went stale: once more on a new one.
                    Err(RunError::Net(_)) if !fresh => session = None,
                    Err(e) => return Err(e),
                }
            }
        });
        *lock(&self.session) = session;
        Ok(r?)
    }

    /// The tasks whose round log this device has verified (the tasks [`Self::credit`] can
    /// check), by id.
    pub fn verified_tasks(&self) -> Result<Vec<TaskId>, EdgeError> {
        let heads = crate::log_check::load_heads_from(self.ctx.secrets.as_ref())
            .map_err(|e| EdgeError::Run(RunError::Log(e)))?;
        Ok(heads.into_keys().map(TaskId).collect())
    }

    /// Asks the running call to stop; returns at once. The call returns within one training
    /// step or one message. [`EdgeError::NotRunning`] when nothing runs,
    /// [`EdgeError::AlreadyStopping`] when a stop was already requested.
    pub fn stop(&self) -> Result<(), EdgeError> {
        let call = lock(&self.call);
        if !call.running {
            return Err(EdgeError::NotRunning);
        }
        if !self.ctx.stop.request() {
            return Err(EdgeError::AlreadyStopping);
        }
        self.ctx
            .progress
            .report(|p| p.phase = crate::progress::Phase::Stopping);
        Ok(())
    }

    /// Where the client stands.
    pub fn status(&self) -> Status {
        let running = lock(&self.call).running;
        Status {
            running,
            stopping: running && self.ctx.stop.is_set(),
            rounds_completed: self.rounds.load(Ordering::Relaxed),
            progress: self.ctx.progress.last(),
        }
    }
}

impl Drop for EdgeClient {
    fn drop(&mut self) {
        // Close the connection with a reason, then let the runtime's threads go without
        // blocking (the client may be dropped on a thread that must not block).
        if let Some(mut s) = lock(&self.session).take() {
            let _enter = self.runtime.as_ref().map(|r| r.enter());
            s.close("client closed");
            drop(s);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
