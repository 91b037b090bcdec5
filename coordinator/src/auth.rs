//! Accounts: OPAQUE registration and login, enrollment policy, invites and rate limiting.
//!
//! OPAQUE (opaque-ke 4, suite [`CohortOpaque`]) means the coordinator never sees a password or
//! anything a password can be checked against offline without its OPAQUE key: an account row
//! holds only the client's `ServerRegistration` record. The coordinator's OPAQUE key
//! (`ServerSetup`) is generated once and persisted in the state directory, mode 0600.
//!
//! Login is bound to the TLS session: both sides pass the TLS exporter value
//! ([`cohort_net::tls_binding`]) as the OPAQUE context, so a login relayed from one TLS session
//! into another fails. An unknown account gets a response built from a dummy record, so a
//! client cannot tell "no such account" from "wrong password".
//!
//! OPAQUE detects a wrong password on the *client*, which then never sends its final message.
//! So a login that ends any other way than with a verified `LoginFinish` (a wrong proof, the
//! client giving up or disconnecting, or its slot expiring) is a failure, counted three ways
//! ([`RateLimitPolicy`], sliding windows): against the account *from that address* (the online
//! guessing bound: `max_failures` per window), against the *address* (`max_failures` across
//! accounts), and against the *account from everywhere* (`max_account_failures`, a larger bound
//! on guessing from many addresses). A login in progress counts nowhere, so a stranger cannot
//! lock an account by starting logins it never finishes; to lock an account out for its owner
//! from the owner's own address it takes `max_account_failures` failed logins, and those need
//! `max_account_failures / max_failures` addresses.
//!
//! Logins in progress per address are bounded by [`MAX_PENDING_LOGINS_PER_ADDRESS`] slots; the
//! session handler queues a `LoginStart` until a slot is free ([`Authenticator::login_slot`]),
//! and a slot is held at most about 10 s after `LoginResponse`
//! ([`crate::session::SessionOptions::login_slot_ttl`]) or until the connection sends anything
//! else, so one device behind a NAT cannot starve the others.
//!
//! Registration answers uniformly until `RegisterFinish`: `RegisterStart` checks only the name's
//! form and whether an invite is needed, and answers every name alike; whether the name is
//! taken or the invite valid is decided (and told) only when the account is created.
//!
//! The key-stretching function (Argon2id) runs only on the client; its parameters are
//! [`KsfParams`], chosen by the client and kept with its credentials.
//!
//! Every method here is synchronous (SQLite, scalar multiplications): async callers run them
//! on the blocking pool.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use cohort_net::opaque_suite::identifiers;
use cohort_net::opaque_suite::{CohortOpaque, KsfParams};
use cohort_protocol::{ErrorCode, Role, WireError};
use opaque_ke::{
    ClientRegistration, ClientRegistrationFinishParameters, CredentialFinalization,
    CredentialRequest, RegistrationRequest, RegistrationUpload, ServerLogin, ServerLoginParameters,
    ServerRegistration, ServerSetup,
};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::atomic_file::write_atomically;
use crate::store::{Account, Store, StoreError};

/// File of the coordinator's OPAQUE key inside the state directory.
pub const SERVER_SETUP_FILE: &str = "opaque-server-setup.bin";

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_LEN: usize = 64;

/// Logins in progress (between `LoginStart` and its end) allowed at once from one remote
/// address; further `LoginStart`s from it wait for a slot.
pub const MAX_PENDING_LOGINS_PER_ADDRESS: usize = 16;

/// Why an authentication step failed. [`AuthError::to_wire`] gives what the client is told.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The username has characters or a length we do not accept.
    #[error("username {0:?} is not allowed; use 1 to 64 letters, digits, '.', '_', '-' or '@'")]
    InvalidUsername(String),
    /// Enrollment is by invitation and no code was given.
    #[error("registration on this coordinator needs an invite code from a model owner")]
    InviteRequired,
    /// The invite code is unknown, used or expired.
    #[error("the invite code is unknown, already used or expired; ask a model owner for a new one")]
    InviteInvalid,
    /// The name is taken.
    #[error("the username is not available; choose another")]
    UsernameTaken,
    /// Login failed: wrong password, unknown account, or a relayed session; deliberately not
    /// told apart.
    #[error("authentication failed; check the username and password")]
    AuthenticationFailed,
    /// Too many failures recently, or every login slot of the address is busy.
    #[error("too many login attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: i64,
    },
    /// Only owners may do this.
    #[error("only a model owner may issue invites")]
    NotAnOwner,
    /// An OPAQUE message could not be parsed.
    #[error("malformed OPAQUE message: {0}")]
    BadMessage(String),
    /// The coordinator's OPAQUE key could not be loaded or stored.
    #[error("OPAQUE server key at {path}: {reason}")]
    ServerKey {
        /// The file.
        path: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// What the client is told. Internal details (database errors) are not sent.
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            AuthError::InvalidUsername(_) | AuthError::BadMessage(_) => ErrorCode::BadMessage,
            AuthError::InviteRequired | AuthError::InviteInvalid => ErrorCode::InviteRequired,
            AuthError::UsernameTaken | AuthError::AuthenticationFailed | AuthError::NotAnOwner => {
                ErrorCode::AuthenticationFailed
            }
            AuthError::RateLimited { retry_after_secs } => {
                return WireError::rate_limited(
                    "too many login attempts",
                    std::time::Duration::from_secs((*retry_after_secs).max(1) as u64),
                );
            }
            AuthError::ServerKey { .. } | AuthError::Store(_) => ErrorCode::Internal,
        };
        let message = match code {
            ErrorCode::Internal => "the coordinator failed; retry later".to_string(),
            _ => self.to_string(),
        };
        WireError { code, message }
    }
}

/// Loads the coordinator's OPAQUE key from the state directory, generating and persisting it
/// (mode 0600, written atomically) on first start. Losing it invalidates every account.
pub fn load_or_generate_server_setup(
    state_dir: &Path,
) -> Result<ServerSetup<CohortOpaque>, AuthError> {
    let path = state_dir.join(SERVER_SETUP_FILE);
    let err = |reason: String| AuthError::ServerKey {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            ServerSetup::<CohortOpaque>::deserialize(&bytes).map_err(|e| {
                err(format!(
                    "the file is corrupt ({e}); restore it from a backup (a new key would \
                     invalidate every account)"
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
            let setup = ServerSetup::<CohortOpaque>::new(&mut OsRng);
            let bytes = Zeroizing::new(setup.serialize().to_vec());
            write_atomically(&path, &bytes, true).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "generated the coordinator's OPAQUE key");
            Ok(setup)
        }
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

// The coordinator has one clock (`crate::clock`); logins and invites read its Unix time.
pub use crate::clock::{Clock, ManualClock, SystemClock};

/// Who may register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// Anyone who reaches the coordinator becomes a contributor. Convenient, and open to Sybil
    /// accounts (PROTOCOL.md, open risk 7): use for trials only.
    Open,
    /// Registration needs a single-use invite code issued by an owner (or the admin CLI).
    InviteOnly,
}

/// Failed-attempt limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Failures allowed per remote address, and per account from one address, within the
    /// window.
    pub max_failures: u32,
    /// The sliding window, in seconds.
    pub window_secs: i64,
    /// Failures allowed per account from all addresses together within the window.
    pub max_account_failures: u32,
}

impl Default for RateLimitPolicy {
    /// 5 failures per 15 minutes per address and per account from one address; 50 per account.
    fn default() -> Self {
        Self {
            max_failures: 5,
            window_secs: 15 * 60,
            max_account_failures: 50,
        }
    }
}

/// Authentication settings.
#[derive(Clone, Copy, Debug)]
pub struct AuthConfig {
    /// Who may register.
    pub enrollment: Enrollment,
    /// Failed-attempt limits.
    pub rate_limit: RateLimitPolicy,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enrollment: Enrollment::InviteOnly,
            rate_limit: RateLimitPolicy::default(),
        }
    }
}

/// Who issues an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InviteIssuer {
    /// The operator, through the admin CLI on the coordinator's machine.
    Admin,
    /// An owner account.
    Owner(String),
}

/// A registration between its two messages.
#[derive(Debug)]
pub struct PendingRegistration {
    username: String,
    invite_hash: Option<[u8; 32]>,
    remote: IpAddr,
}

impl PendingRegistration {
    /// The account being registered.
    pub fn username(&self) -> &str {
        &self.username
    }
}

/// A login between its two messages. Dropping it without a successful
/// [`Authenticator::login_finish`] records a failure of its remote address.
pub struct PendingLogin {
    username: String,
    role: Option<Role>,
    remote: IpAddr,
    state: ServerLogin<CohortOpaque>,
    unfinished: UnfinishedLogin,
}

/// Records a failure of the login's address, account and the pair when dropped, unless
/// disarmed by a verified login.
struct UnfinishedLogin {
    limiter: Arc<Mutex<FailureLimiter>>,
    clock: Arc<dyn Clock>,
    username: String,
    remote: IpAddr,
    armed: bool,
}

impl Drop for UnfinishedLogin {
    fn drop(&mut self) {
        if self.armed {
            let now = self.clock.now();
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            limiter.record(LimitKey::Address(self.remote), now);
            limiter.record(LimitKey::Account(self.username.clone()), now);
            limiter.record(LimitKey::AccountAt(self.username.clone(), self.remote), now);
        }
    }
}

/// A slot among the [`MAX_PENDING_LOGINS_PER_ADDRESS`] logins one address may have in
/// progress; released when dropped. Hold it from `LoginStart` until the login ends.
#[derive(Debug)]
pub struct LoginSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("username", &self.username)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// A logged-in account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedAccount {
    /// Its name.
    pub username: String,
    /// What it may do.
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LimitKey {
    /// An account, from every address.
    Account(String),
    /// A remote address, for every account.
    Address(IpAddr),
    /// An account from one address.
    AccountAt(String, IpAddr),
}

/// Sliding-window failure counts per key. Memory stays bounded: a key keeps at most
/// `max_failures` timestamps, and keys with none left inside the window are swept regularly.
#[derive(Debug)]
struct FailureLimiter {
    policy: RateLimitPolicy,
    failures: HashMap<LimitKey, VecDeque<i64>>,
    records_since_sweep: u32,
}

impl FailureLimiter {
    fn new(policy: RateLimitPolicy) -> Self {
        Self {
            policy,
            failures: HashMap::new(),
            records_since_sweep: 0,
        }
    }

    fn max_for(&self, key: &LimitKey) -> u32 {
        match key {
            LimitKey::Account(_) => self.policy.max_account_failures,
            _ => self.policy.max_failures,
        }
    }

    /// `Err(retry_after_secs)` when `key` used up its failures.
    fn check(&mut self, key: &LimitKey, now: i64) -> Result<(), i64> {
        let window = self.policy.window_secs;
        let max = self.max_for(key) as usize;
        let Some(times) = self.failures.get_mut(key) else {
            return Ok(());
        };
        while times.front().is_some_and(|t| *t <= now - window) {
            times.pop_front();
        }
        if times.len() >= max
            && let Some(oldest) = times.front()
        {
            return Err((oldest + window - now).max(1));
        }
        Ok(())
    }

    fn record(&mut self, key: LimitKey, now: i64) {
        let cap = self.max_for(&key).max(1) as usize;
        let times = self.failures.entry(key).or_default();
        times.push_back(now);
        while times.len() > cap {
            times.pop_front();
        }
        self.records_since_sweep += 1;
        if self.records_since_sweep >= 4096 {
            self.records_since_sweep = 0;
            let cutoff = now - self.policy.window_secs;
            self.failures
                .retain(|_, t| t.back().is_some_and(|last| *last > cutoff));
        }
    }

    fn clear(&mut self, key: &LimitKey) {
        self.failures.remove(key);
    }
}

/// Checks a username's form.
pub fn validate_username(username: &str) -> Result<(), AuthError> {
    let ok = !username.is_empty()
        && username.len() <= MAX_USERNAME_LEN
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidUsername(
            username.chars().take(MAX_USERNAME_LEN).collect(),
        ))
    }
}

fn invite_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.trim().as_bytes()).into()
}

fn bad(e: impl fmt::Display) -> AuthError {
    AuthError::BadMessage(e.to_string())
}

/// Accounts and logins.
pub struct Authenticator {
    setup: ServerSetup<CohortOpaque>,
    store: Arc<Store>,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    limiter: Arc<Mutex<FailureLimiter>>,
    login_slots: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `store` with the coordinator's OPAQUE key.
    pub fn new(
        setup: ServerSetup<CohortOpaque>,
        store: Arc<Store>,
        config: AuthConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            setup,
            store,
            limiter: Arc::new(Mutex::new(FailureLimiter::new(config.rate_limit))),
            login_slots: Mutex::new(HashMap::new()),
            config,
            clock,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for one of the [`MAX_PENDING_LOGINS_PER_ADDRESS`] login slots of `remote`. The
    /// session handler takes one before `LoginStart` and keeps it until the login ends.
    pub async fn login_slot(&self, remote: IpAddr) -> LoginSlot {
        let semaphore = {
            let mut slots = self.login_slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= 1024 {
                // Forget addresses with no login in progress (nobody else holds their semaphore).
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots
                .entry(remote)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_LOGINS_PER_ADDRESS))
                })
                .clone()
        };
        // These semaphores are never closed, so acquiring fails never; were one closed, the
        // login would proceed without a slot rather than hang.
        LoginSlot {
            _permit: semaphore.acquire_owned().await.ok(),
        }
    }

    fn check_limit(&self, keys: &[LimitKey], now: i64) -> Result<(), AuthError> {
        let mut limiter = self.limiter();
        for key in keys {
            limiter
                .check(key, now)
                .map_err(|retry_after_secs| AuthError::RateLimited { retry_after_secs })?;
        }
        Ok(())
    }

    /// Handles `RegisterStart`: checks the name's form and the enrollment policy, and answers
    /// the OPAQUE registration request, alike for every name and invite code: whether the name
    /// is free and the invite valid is decided at [`Authenticator::registration_finish`], so
    /// `RegisterStart` tells a stranger nothing about existing accounts. Refusals count as
    /// failures of `remote`.
    pub fn registration_start(
        &self,
        username: &str,
        invite: Option<&str>,
        request: &[u8],
        remote: IpAddr,
    ) -> Result<(Vec<u8>, PendingRegistration), AuthError> {
        let now = self.clock.now();
        let address = LimitKey::Address(remote);
        self.check_limit(std::slice::from_ref(&address), now)?;
        let result = self.registration_start_inner(username, invite, request, remote);
        if matches!(result, Err(AuthError::InviteRequired)) {
            self.limiter().record(address, now);
        }
        result
    }

    fn registration_start_inner(
        &self,
        username: &str,
        invite: Option<&str>,
        request: &[u8],
        remote: IpAddr,
    ) -> Result<(Vec<u8>, PendingRegistration), AuthError> {
        validate_username(username)?;
        let request = RegistrationRequest::<CohortOpaque>::deserialize(request).map_err(bad)?;
        let invite_hash = match (self.config.enrollment, invite) {
            (_, Some(code)) => Some(invite_hash(code)),
            (Enrollment::Open, None) => None,
            (Enrollment::InviteOnly, None) => return Err(AuthError::InviteRequired),
        };
        // The response depends only on the server's key and the name (opaque-ke derives the
        // OPRF key from both), so a taken name is answered exactly like a free one.
        let response =
            ServerRegistration::<CohortOpaque>::start(&self.setup, request, username.as_bytes())
                .map_err(bad)?;
        Ok((
            response.message.serialize().to_vec(),
            PendingRegistration {
                username: username.to_string(),
                invite_hash,
                remote,
            },
        ))
    }

    /// Handles `RegisterFinish`: checks the invite, then stores the record, consuming the
    /// invite, atomically. A refusal (invite invalid, name taken) counts as a failure of the
    /// registration's address.
    pub fn registration_finish(
        &self,
        pending: PendingRegistration,
        upload: &[u8],
    ) -> Result<Role, AuthError> {
        let remote = pending.remote;
        let result = self.registration_finish_inner(pending, upload);
        if matches!(
            result,
            Err(AuthError::UsernameTaken | AuthError::InviteInvalid)
        ) {
            self.limiter()
                .record(LimitKey::Address(remote), self.clock.now());
        }
        result
    }

    fn registration_finish_inner(
        &self,
        pending: PendingRegistration,
        upload: &[u8],
    ) -> Result<Role, AuthError> {
        let upload = RegistrationUpload::<CohortOpaque>::deserialize(upload).map_err(bad)?;
        let role = match &pending.invite_hash {
            Some(hash) => self
                .store
                .invite_role(hash, self.clock.now())?
                .ok_or(AuthError::InviteInvalid)?,
            None => Role::Contributor,
        };
        let record = ServerRegistration::<CohortOpaque>::finish(upload);
        let account = Account {
            username: pending.username,
            role,
            opaque_record: record.serialize().to_vec(),
            created_at: self.clock.now(),
        };
        match self
            .store
            .create_account(&account, pending.invite_hash.as_ref())
        {
            Ok(()) => {
                tracing::info!(username = %account.username, role = ?account.role, "account registered");
                Ok(account.role)
            }
            Err(StoreError::AccountExists(_)) => Err(AuthError::UsernameTaken),
            Err(StoreError::InviteInvalid) => Err(AuthError::InviteInvalid),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles `LoginStart` on a connection whose TLS exporter value is `binding`. Unknown
    /// accounts get a dummy response indistinguishable from a real one. The attempt counts as
    /// a failure of its account, address and the pair if it ends any other way than with a
    /// verified [`Authenticator::login_finish`] (see the module docs). Callers that serve many
    /// connections take a [`Authenticator::login_slot`] first.
    pub fn login_start(
        &self,
        username: &str,
        request: &[u8],
        binding: &[u8; 32],
        remote: IpAddr,
    ) -> Result<(Vec<u8>, PendingLogin), AuthError> {
        let now = self.clock.now();
        validate_username(username)?;
        let keys = [
            LimitKey::AccountAt(username.to_string(), remote),
            LimitKey::Address(remote),
            LimitKey::Account(username.to_string()),
        ];
        self.check_limit(&keys, now)?;
        let request = CredentialRequest::<CohortOpaque>::deserialize(request).map_err(bad)?;
        let account = self.store.account(username)?;
        let record = match &account {
            Some(a) => Some(
                ServerRegistration::<CohortOpaque>::deserialize(&a.opaque_record).map_err(|e| {
                    StoreError::Corrupt(format!("OPAQUE record of {username:?}: {e}"))
                })?,
            ),
            None => None,
        };
        let start = ServerLogin::start(
            &mut OsRng,
            &self.setup,
            record,
            request,
            username.as_bytes(),
            ServerLoginParameters {
                context: Some(binding),
                identifiers: identifiers(username),
            },
        )
        .map_err(bad)?;
        Ok((
            start.message.serialize().to_vec(),
            PendingLogin {
                username: username.to_string(),
                role: account.map(|a| a.role),
                remote,
                state: start.state,
                unfinished: UnfinishedLogin {
                    limiter: self.limiter.clone(),
                    clock: self.clock.clone(),
                    username: username.to_string(),
                    remote,
                    armed: true,
                },
            },
        ))
    }

    /// Handles `LoginFinish`: checks the client's proof. Fails with
    /// [`AuthError::AuthenticationFailed`] for a wrong password, an unknown account and a relayed
    /// session alike.
    pub fn login_finish(
        &self,
        mut pending: PendingLogin,
        finalization: &[u8],
        binding: &[u8; 32],
    ) -> Result<AuthenticatedAccount, AuthError> {
        let finalization = CredentialFinalization::<CohortOpaque>::deserialize(finalization)
            .map_err(|_| AuthError::AuthenticationFailed)?;
        let finished = pending.state.finish(
            finalization,
            ServerLoginParameters {
                context: Some(binding),
                identifiers: identifiers(&pending.username),
            },
        );
        match (finished, pending.role) {
            (Ok(_session), Some(role)) => {
                // The owner proved the password from here: its failures from this address are
                // forgiven (those from elsewhere still count against the account).
                self.limiter().clear(&LimitKey::AccountAt(
                    pending.username.clone(),
                    pending.remote,
                ));
                pending.unfinished.armed = false;
                tracing::info!(username = %pending.username, "login");
                Ok(AuthenticatedAccount {
                    username: pending.username,
                    role,
                })
            }
            _ => {
                tracing::debug!(username = %pending.username, remote = %pending.remote, "login failed");
                Err(AuthError::AuthenticationFailed)
            }
        }
    }

    /// Issues a single-use invite granting `role`, valid for `ttl_secs` (forever when `None`).
    /// Returns the code to hand to the invitee; only its hash is stored.
    pub fn issue_invite(
        &self,
        issuer: &InviteIssuer,
        role: Role,
        ttl_secs: Option<i64>,
    ) -> Result<String, AuthError> {
        let issued_by = match issuer {
            InviteIssuer::Admin => "admin".to_string(),
            InviteIssuer::Owner(name) => {
                match self.store.account(name)? {
                    Some(a) if a.role == Role::Owner => {}
                    _ => return Err(AuthError::NotAnOwner),
                }
                name.clone()
            }
        };
        let mut raw = [0u8; 16];
        OsRng.fill_bytes(&mut raw);
        let code = hex::encode(raw);
        let now = self.clock.now();
        self.store.insert_invite(
            &invite_hash(&code),
            role,
            &issued_by,
            now,
            ttl_secs.map(|t| now + t),
        )?;
        Ok(code)
    }

    /// Registers an account with both OPAQUE sides run in this process: how the admin CLI
    /// creates the first owner on the coordinator's machine. `ksf` must be what the account's
    /// clients will use at login.
    pub fn register_local(
        &self,
        username: &str,
        password: &[u8],
        role: Role,
        ksf: &KsfParams,
    ) -> Result<(), AuthError> {
        validate_username(username)?;
        let argon2 = ksf
            .argon2()
            .map_err(|e| AuthError::BadMessage(format!("Argon2 parameters refused: {e}")))?;
        let start = ClientRegistration::<CohortOpaque>::start(&mut OsRng, password).map_err(bad)?;
        let response = ServerRegistration::<CohortOpaque>::start(
            &self.setup,
            start.message,
            username.as_bytes(),
        )
        .map_err(bad)?;
        let finish = start
            .state
            .finish(
                &mut OsRng,
                password,
                response.message,
                ClientRegistrationFinishParameters::new(identifiers(username), Some(&argon2)),
            )
            .map_err(bad)?;
        let record = ServerRegistration::<CohortOpaque>::finish(finish.message);
        let account = Account {
            username: username.to_string(),
            role,
            opaque_record: record.serialize().to_vec(),
            created_at: self.clock.now(),
        };
        match self.store.create_account(&account, None) {
            Err(StoreError::AccountExists(_)) => Err(AuthError::UsernameTaken),
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn fast() -> KsfParams {
        KsfParams::dangerous_insecure_fast_for_tests()
    }

    fn auth(enrollment: Enrollment) -> (Authenticator, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(Store::open_in_memory().unwrap());
        let a = Authenticator::new(
            ServerSetup::<CohortOpaque>::new(&mut OsRng),
            store,
            AuthConfig {
                enrollment,
                rate_limit: RateLimitPolicy::default(),
            },
            clock.clone(),
        );
        (a, clock)
    }

    /// Runs a whole login; the client uses `client_binding`, the server `server_binding`.
    fn login(
        a: &Authenticator,
        user: &str,
        password: &[u8],
        client_binding: &[u8; 32],
        server_binding: &[u8; 32],
        remote: IpAddr,
    ) -> Result<AuthenticatedAccount, AuthError> {
        let argon2 = fast().argon2().unwrap();
        let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, password).unwrap();
        let (response, pending) =
            a.login_start(user, &start.message.serialize(), server_binding, remote)?;
        let response = CredentialResponse::<CohortOpaque>::deserialize(&response).unwrap();
        let finish = start
            .state
            .finish(
                &mut OsRng,
                password,
                response,
                ClientLoginFinishParameters::new(
                    Some(client_binding),
                    identifiers(user),
                    Some(&argon2),
                ),
            )
            .map_err(|_| AuthError::AuthenticationFailed)?;
        a.login_finish(pending, &finish.message.serialize(), server_binding)
    }

    #[test]
    fn register_and_login() {
        let (a, _) = auth(Enrollment::Open);
        a.register_local("ada", b"correct horse", Role::Owner, &fast())
            .unwrap();
        let acc = login(&a, "ada", b"correct horse", &[1; 32], &[1; 32], ADDR).unwrap();
        assert_eq!(acc.role, Role::Owner);
        // The stored record holds neither the password nor a hash of it alone.
        let rec = a.store.account("ada").unwrap().unwrap().opaque_record;
        assert!(!rec.windows(13).any(|w| w == b"correct horse"));
    }

    #[test]
    fn wrong_password_unknown_account_and_relay_fail_alike() {
        let (a, _) = auth(Enrollment::Open);
        a.register_local("ada", b"pw", Role::Contributor, &fast())
            .unwrap();
        let wrong = login(&a, "ada", b"nope", &[1; 32], &[1; 32], ADDR).unwrap_err();
        let unknown = login(&a, "bob", b"pw", &[1; 32], &[1; 32], ADDR).unwrap_err();
        let relayed = login(&a, "ada", b"pw", &[2; 32], &[1; 32], ADDR).unwrap_err();
        for e in [wrong, unknown, relayed] {
            assert!(matches!(e, AuthError::AuthenticationFailed), "{e:?}");
        }
    }

    #[test]
    fn garbage_finalization_fails_as_authentication() {
        let (a, _) = auth(Enrollment::Open);
        a.register_local("ada", b"pw", Role::Contributor, &fast())
            .unwrap();
        let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
        let (_, pending) = a
            .login_start("ada", &start.message.serialize(), &[0; 32], ADDR)
            .unwrap();
        assert!(matches!(
            a.login_finish(pending, &[0u8; 3], &[0; 32]),
            Err(AuthError::AuthenticationFailed)
        ));
        assert!(matches!(
            a.login_start("ada", b"short", &[0; 32], ADDR),
            Err(AuthError::BadMessage(_))
        ));
    }

    /// Guessing one account's password from one address is limited, with an honest retry
    /// time, and the limit recovers; the owner logging in from elsewhere is not locked out.
    #[test]
    fn guessing_from_one_address_is_limited_and_recovers() {
        let (a, clock) = auth(Enrollment::Open);
        a.register_local("ada", b"pw", Role::Contributor, &fast())
            .unwrap();
        for _ in 0..5 {
            assert!(matches!(
                login(&a, "ada", b"wrong", &[0; 32], &[0; 32], ADDR),
                Err(AuthError::AuthenticationFailed)
            ));
            clock.advance(10);
        }
        match login(&a, "ada", b"pw", &[0; 32], &[0; 32], ADDR) {
            Err(AuthError::RateLimited { retry_after_secs }) => {
                assert_eq!(retry_after_secs, 15 * 60 - 50)
            }
            other => panic!("{other:?}"),
        }
        let home = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 99));
        login(&a, "ada", b"pw", &[0; 32], &[0; 32], home).expect("the owner is not locked out");
        clock.advance(15 * 60 - 50 + 1);
        // One failure left the window: one attempt allowed from the guessing address.
        login(&a, "ada", b"pw", &[0; 32], &[0; 32], ADDR).unwrap();
    }

    /// Issue 14: five unfinished `LoginStart`s locked any known account for 15 minutes. Logins
    /// in progress count nowhere; abandoned ones count against the account from their own
    /// address, so strangers starting logins do not lock the owner out.
    #[test]
    fn unfinished_logins_do_not_lock_an_account() {
        let (a, _) = auth(Enrollment::Open);
        a.register_local("ada", b"pw", Role::Contributor, &fast())
            .unwrap();
        let mut pending = Vec::new();
        for i in 0..40u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i));
            let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
            let (_, p) = a
                .login_start("ada", &start.message.serialize(), &[0; 32], ip)
                .unwrap();
            pending.push(p);
        }
        login(&a, "ada", b"pw", &[0; 32], &[0; 32], ADDR).expect("pending logins lock nothing");
        drop(pending);
        login(&a, "ada", b"pw", &[0; 32], &[0; 32], ADDR)
            .expect("40 abandoned logins from strangers do not lock the owner out");
    }

    /// Guessing from many addresses is bounded per account.
    #[test]
    fn account_limit_bounds_guessing_from_many_addresses() {
        let (a, _) = auth(Enrollment::Open);
        a.register_local("ada", b"pw", Role::Contributor, &fast())
            .unwrap();
        for i in 0..50u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 2, i / 5, i % 5));
            assert!(matches!(
                login(&a, "ada", b"wrong", &[0; 32], &[0; 32], ip),
                Err(AuthError::AuthenticationFailed)
            ));
        }
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(10, 3, 0, 1));
        assert!(matches!(
            login(&a, "ada", b"pw", &[0; 32], &[0; 32], fresh),
            Err(AuthError::RateLimited { .. })
        ));
        // Other accounts are not affected.
        a.register_local("bob", b"pw", Role::Contributor, &fast())
            .unwrap();
        login(&a, "bob", b"pw", &[0; 32], &[0; 32], fresh).unwrap();
    }

    /// `RegisterStart` answers a taken name and a bogus invite like any other; the refusal
    /// comes with `RegisterFinish`.
    #[test]
    fn registration_answers_uniformly_until_finish() {
        let (a, _) = auth(Enrollment::InviteOnly);
        let code = a
            .issue_invite(&InviteIssuer::Admin, Role::Contributor, None)
            .unwrap();
        assert_eq!(register(&a, "ada", Some(&code)).unwrap(), Role::Contributor);
        for (name, invite) in [("ada", "bogus"), ("ada", code.as_str()), ("new", "bogus")] {
            let start = ClientRegistration::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
            a.registration_start(name, Some(invite), &start.message.serialize(), ADDR)
                .expect("RegisterStart tells nothing");
        }
        assert!(matches!(
            register(&a, "ada", Some("bogus")),
            Err(AuthError::InviteInvalid)
        ));
    }

    #[test]
    fn address_is_rate_limited_across_accounts() {
        let (a, _) = auth(Enrollment::Open);
        for i in 0..5 {
            let _ = login(&a, &format!("user{i}"), b"pw", &[0; 32], &[0; 32], ADDR);
        }
        assert!(matches!(
            login(&a, "someone-else", b"pw", &[0; 32], &[0; 32], ADDR),
            Err(AuthError::RateLimited { .. })
        ));
        // Another address is not affected.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        assert!(matches!(
            login(&a, "someone-else", b"pw", &[0; 32], &[0; 32], other),
            Err(AuthError::AuthenticationFailed)
        ));
    }

    /// Regression: logins in progress used to count as failures of their address, so a sixth
    /// concurrent login from one address was refused although none had failed.
    #[test]
    fn concurrent_logins_from_one_address_all_succeed() {
        let (a, _) = auth(Enrollment::Open);
        let argon2 = fast().argon2().unwrap();
        let users: Vec<String> = (0..20).map(|i| format!("device{i}")).collect();
        for u in &users {
            a.register_local(u, b"pw", Role::Contributor, &fast())
                .unwrap();
        }
        let started: Vec<_> = users
            .iter()
            .map(|u| {
                let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
                let (response, pending) = a
                    .login_start(u, &start.message.serialize(), &[0; 32], ADDR)
                    .expect("a login in progress is not a failure");
                (u, start, response, pending)
            })
            .collect();
        for (u, start, response, pending) in started {
            let response = CredentialResponse::<CohortOpaque>::deserialize(&response).unwrap();
            let finish = start
                .state
                .finish(
                    &mut OsRng,
                    b"pw",
                    response,
                    ClientLoginFinishParameters::new(Some(&[0; 32]), identifiers(u), Some(&argon2)),
                )
                .unwrap();
            a.login_finish(pending, &finish.message.serialize(), &[0; 32])
                .unwrap();
        }
        // None of them left a failure behind: five wrong guesses are still allowed.
        for i in 0..5 {
            assert!(matches!(
                login(&a, &format!("nobody{i}"), b"pw", &[0; 32], &[0; 32], ADDR),
                Err(AuthError::AuthenticationFailed)
            ));
        }
        assert!(matches!(
            login(&a, "nobody", b"pw", &[0; 32], &[0; 32], ADDR),
            Err(AuthError::RateLimited { .. })
        ));
    }

    /// A login the client abandons (its password was wrong, so it never sends `LoginFinish`)
    /// counts against the address once the pending login is dropped.
    #[test]
    fn abandoned_login_counts_against_the_address() {
        let (a, _) = auth(Enrollment::Open);
        for i in 0..5 {
            let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
            let (_, pending) = a
                .login_start(&format!("u{i}"), &start.message.serialize(), &[0; 32], ADDR)
                .unwrap();
            drop(pending);
        }
        assert!(matches!(
            login(&a, "u9", b"pw", &[0; 32], &[0; 32], ADDR),
            Err(AuthError::RateLimited { .. })
        ));
    }

    #[tokio::test]
    async fn login_slots_bound_pending_logins_per_address() {
        let (a, _) = auth(Enrollment::Open);
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING_LOGINS_PER_ADDRESS {
            held.push(a.login_slot(ADDR).await);
        }
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), a.login_slot(ADDR));
        assert!(
            waiting.await.is_err(),
            "a slot beyond the bound was granted"
        );
        // Another address has its own slots.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        let _o = a.login_slot(other).await;
        held.pop();
        let _s = tokio::time::timeout(std::time::Duration::from_secs(1), a.login_slot(ADDR))
            .await
            .expect("a released slot is granted");
    }

    fn register(a: &Authenticator, user: &str, invite: Option<&str>) -> Result<Role, AuthError> {
        let argon2 = fast().argon2().unwrap();
        let start = ClientRegistration::<CohortOpaque>::start(&mut OsRng, b"pw").unwrap();
        let (response, pending) =
            a.registration_start(user, invite, &start.message.serialize(), ADDR)?;
        let response =
            opaque_ke::RegistrationResponse::<CohortOpaque>::deserialize(&response).unwrap();
        let finish = start
            .state
            .finish(
                &mut OsRng,
                b"pw",
                response,
                ClientRegistrationFinishParameters::new(identifiers(user), Some(&argon2)),
            )
            .unwrap();
        a.registration_finish(pending, &finish.message.serialize())
    }

    #[test]
    fn invites_gate_registration_and_are_single_use() {
        let (a, _) = auth(Enrollment::InviteOnly);
        assert!(matches!(
            register(&a, "c1", None),
            Err(AuthError::InviteRequired)
        ));
        assert!(matches!(
            register(&a, "c1", Some("bogus")),
            Err(AuthError::InviteInvalid)
        ));
        let owner_code = a
            .issue_invite(&InviteIssuer::Admin, Role::Owner, None)
            .unwrap();
        assert_eq!(
            register(&a, "owner", Some(&owner_code)).unwrap(),
            Role::Owner
        );
        assert!(matches!(
            register(&a, "owner2", Some(&owner_code)),
            Err(AuthError::InviteInvalid)
        ));
        let code = a
            .issue_invite(
                &InviteIssuer::Owner("owner".into()),
                Role::Contributor,
                Some(60),
            )
            .unwrap();
        assert_eq!(register(&a, "c1", Some(&code)).unwrap(), Role::Contributor);
        assert!(matches!(
            a.issue_invite(&InviteIssuer::Owner("c1".into()), Role::Contributor, None),
            Err(AuthError::NotAnOwner)
        ));
        // Invalid names are refused before anything else.
        assert!(matches!(
            register(&a, "bad name", None),
            Err(AuthError::InvalidUsername(_))
        ));
    }

    #[test]
    fn second_registration_of_a_name_fails() {
        let (a, _) = auth(Enrollment::Open);
        register(&a, "ada", None).unwrap();
        assert!(matches!(
            register(&a, "ada", None),
            Err(AuthError::UsernameTaken)
        ));
        assert!(matches!(
            a.register_local("ada", b"x", Role::Owner, &fast()),
            Err(AuthError::UsernameTaken)
        ));
    }

    #[test]
    fn server_key_persists_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate_server_setup(dir.path()).unwrap();
        let b = load_or_generate_server_setup(dir.path()).unwrap();
        assert_eq!(a.serialize(), b.serialize());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SERVER_SETUP_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(SERVER_SETUP_FILE), b"garbage").unwrap();
        assert!(matches!(
            load_or_generate_server_setup(dir.path()),
            Err(AuthError::ServerKey { .. })
        ));
    }

    #[test]
    fn wire_errors_hide_internals() {
        let e = AuthError::Store(StoreError::Worker("secret detail".into())).to_wire();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("secret"));
        assert_eq!(
            AuthError::RateLimited {
                retry_after_secs: 3
            }
            .to_wire()
            .code,
            ErrorCode::RateLimited
        );
    }
}
