//! The client side of OPAQUE registration and login over a coordinator connection.
//!
//! Two layers. [`RegistrationClient`] and [`LoginClient`] are sans-IO: they turn a password
//! and the coordinator's answers into the next OPAQUE message. [`register`], [`login`] and the
//! state-directory wrappers [`enroll`] and [`login_saved`] drive them over a session stream
//! ([`FramedStream`]), after [`hello`].
//!
//! A login is bound to its TLS session: the client uses the connection's exporter value
//! ([`cohort_net::tls_binding`]) as the OPAQUE context, so the coordinator's proof only verifies
//! on the connection it was made for. A wrong password, an unknown account and a relayed
//! session all end the same way, [`EnrollError::AuthenticationFailed`], detected here before
//! anything is sent back.
//!
//! The password is stretched with Argon2id ([`KsfParams`]) on this device; the parameters used
//! at enrollment are kept in the credentials and must be used at every login.

use std::path::Path;

use cohort_aggregation::secagg::VerifyingKey;
use cohort_aggregation::secagg::identity::enrollment_binding;
use cohort_net::opaque_suite::{CohortOpaque, KsfParams, identifiers};
use cohort_net::{FramedStream, NetError, tls_binding};
use cohort_protocol::{
    AuthMessage, Capabilities, ClientMessage, DeviceIdentity, ErrorCode, Hello, HelloAck,
    PROTOCOL_VERSION, Role, ServerMessage, WireError,
};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use rand::rngs::OsRng;
use serde_bytes::ByteBuf;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::credentials::{Credentials, CredentialsError};
use crate::host::SecretStore;

/// Why enrollment or login failed.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// The connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Wrong password, unknown account, or the session was relayed: deliberately not told apart.
    #[error("authentication failed; check the username and password")]
    AuthenticationFailed,
    /// The coordinator refused (name taken, invite needed, rate limited, ...).
    #[error("the coordinator refused: {} ({:?})", .0.message, .0.code)]
    Refused(WireError),
    /// The coordinator sent something out of protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The Argon2 parameters are not valid.
    #[error("Argon2 parameters refused: {0}")]
    Ksf(String),
    /// The credentials in the state directory are missing or unusable.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The device has not enrolled yet.
    #[error("no credentials in {0}; enroll first")]
    NotEnrolled(String),
}

impl EnrollError {
    /// The coordinator's error code, when it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            EnrollError::Refused(w) => Some(w.code),
            _ => None,
        }
    }
}

/// The OPAQUE export key: the same at registration and at every login with the right password;
/// never sent. Used to seal the device secret.
pub type ExportKey = Zeroizing<Vec<u8>>;

/// Client state between `RegisterStart` and `RegisterFinish`.
pub struct RegistrationClient {
    state: ClientRegistration<CohortOpaque>,
}

impl RegistrationClient {
    /// Blinds the password; returns the state and the `RegistrationRequest` bytes.
    pub fn start(password: &str) -> Result<(Self, Vec<u8>), EnrollError> {
        let start = ClientRegistration::<CohortOpaque>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| EnrollError::Protocol(e.to_string()))?;
        Ok((
            Self { state: start.state },
            start.message.serialize().to_vec(),
        ))
    }

    /// Finishes with the coordinator's `RegistrationResponse`; returns the upload bytes and the
    /// export key.
    pub fn finish(
        self,
        password: &str,
        username: &str,
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<(Vec<u8>, ExportKey), EnrollError> {
        let argon2 = ksf.argon2().map_err(|e| EnrollError::Ksf(e.to_string()))?;
        let response = RegistrationResponse::<CohortOpaque>::deserialize(response)
            .map_err(|e| EnrollError::Protocol(format!("bad RegistrationResponse: {e}")))?;
        let finish = self
            .state
            .finish(
                &mut OsRng,
                password.as_bytes(),
                response,
                ClientRegistrationFinishParameters::new(identifiers(username), Some(&argon2)),
            )
            .map_err(|e| EnrollError::Protocol(format!("registration failed: {e}")))?;
        Ok((
            finish.message.serialize().to_vec(),
            Zeroizing::new(finish.export_key.to_vec()),
        ))
    }
}

/// Client state between `LoginStart` and `LoginFinish`.
pub struct LoginClient {
    state: ClientLogin<CohortOpaque>,
}

impl LoginClient {
    /// Blinds the password; returns the state and the `CredentialRequest` bytes.
    pub fn start(password: &str) -> Result<(Self, Vec<u8>), EnrollError> {
        let start = ClientLogin::<CohortOpaque>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| EnrollError::Protocol(e.to_string()))?;
        Ok((
            Self { state: start.state },
            start.message.serialize().to_vec(),
        ))
    }

    /// Checks the coordinator's `CredentialResponse` under `binding` (the TLS exporter value of
    /// the connection that carries the login). Returns the finalization bytes and the export
    /// key, or [`EnrollError::AuthenticationFailed`].
    pub fn finish(
        self,
        password: &str,
        username: &str,
        response: &[u8],
        binding: &[u8; 32],
        ksf: &KsfParams,
    ) -> Result<(Vec<u8>, ExportKey), EnrollError> {
        let argon2 = ksf.argon2().map_err(|e| EnrollError::Ksf(e.to_string()))?;
        let response = CredentialResponse::<CohortOpaque>::deserialize(response)
            .map_err(|e| EnrollError::Protocol(format!("bad CredentialResponse: {e}")))?;
        let finish = self
            .state
            .finish(
                &mut OsRng,
                password.as_bytes(),
                response,
                ClientLoginFinishParameters::new(
                    Some(binding),
                    identifiers(username),
                    Some(&argon2),
                ),
            )
            .map_err(|_| EnrollError::AuthenticationFailed)?;
        Ok((
            finish.message.serialize().to_vec(),
            Zeroizing::new(finish.export_key.to_vec()),
        ))
    }
}

/// Receives the next message, turning an `Error` into [`EnrollError::Refused`].
async fn next(stream: &mut FramedStream) -> Result<ServerMessage, EnrollError> {
    match stream.expect::<ServerMessage>().await? {
        ServerMessage::Error(e) => Err(EnrollError::Refused(e)),
        m => Ok(m),
    }
}

/// Sends the hello and waits for the coordinator's answer.
pub async fn hello(stream: &mut FramedStream) -> Result<HelloAck, EnrollError> {
    stream
        .send(&ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            software: concat!("cohort-edge/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: Capabilities {
                max_frame_len: stream.max_frame_len() as u32,
                // What this device's SecAgg+ rounds accept (ClientRound's default options).
                secagg_suites: cohort_aggregation::secagg::prg::local_suites(),
                backends: Vec::new(),
            },
        }))
        .await?;
    match next(stream).await? {
        ServerMessage::HelloAck(ack) => Ok(ack),
        other => Err(EnrollError::Protocol(format!(
            "expected HelloAck, got {other:?}"
        ))),
    }
}

/// The result of a registration or login.
#[derive(Debug)]
pub struct Authenticated {
    /// The account's role.
    pub role: Role,
    /// The OPAQUE export key.
    pub export_key: ExportKey,
    /// The model owner's round-log key the coordinator sent, if any (not yet validated).
    pub log_key: Option<ByteBuf>,
}

/// Registers `username` (with `invite` when the coordinator requires one), with the device's
/// identity key when given (bound to the account by an HMAC under the export key). On success
/// the connection is authenticated.
pub async fn register(
    stream: &mut FramedStream,
    username: &str,
    password: &str,
    invite: Option<&str>,
    ksf: &KsfParams,
    identity: Option<&VerifyingKey>,
) -> Result<Authenticated, EnrollError> {
    let (client, request) = RegistrationClient::start(password)?;
    stream
        .send(&ClientMessage::Auth(AuthMessage::RegisterStart {
            username: username.into(),
            invite: invite.map(str::to_string),
            request: ByteBuf::from(request),
        }))
        .await?;
    let response = match next(stream).await? {
        ServerMessage::Auth(AuthMessage::RegisterResponse { response }) => response,
        other => {
            return Err(EnrollError::Protocol(format!(
                "expected RegisterResponse, got {other:?}"
            )));
        }
    };
    let (upload, export_key) = client.finish(password, username, &response, ksf)?;
    let identity = identity.map(|key| DeviceIdentity {
        key: ByteBuf::from(key.to_bytes().to_vec()),
        binding: ByteBuf::from(enrollment_binding(&export_key, username, key).to_vec()),
    });
    stream
        .send(&ClientMessage::Auth(AuthMessage::RegisterFinish {
            upload: ByteBuf::from(upload),
            identity,
        }))
        .await?;
    match next(stream).await? {
        ServerMessage::Auth(AuthMessage::Authenticated { role, log_key }) => Ok(Authenticated {
            role,
            export_key,
            log_key,
        }),
        other => Err(EnrollError::Protocol(format!(
            "expected Authenticated, got {other:?}"
        ))),
    }
}

/// Logs in on the connection `conn` that carries `stream`.
pub async fn login(
    conn: &cohort_net::quinn::Connection,
    stream: &mut FramedStream,
    username: &str,
    password: &str,
    ksf: &KsfParams,
) -> Result<Authenticated, EnrollError> {
    let binding = tls_binding(conn)?;
    login_with_binding(stream, &binding, username, password, ksf).await
}

/// Logs in with an explicit TLS binding. It must be the exporter value of the connection that
/// carries `stream`; with any other value the login fails (which is how relays are stopped,
/// and what tests use this for).
pub async fn login_with_binding(
    stream: &mut FramedStream,
    binding: &[u8; 32],
    username: &str,
    password: &str,
    ksf: &KsfParams,
) -> Result<Authenticated, EnrollError> {
    let (client, request) = LoginClient::start(password)?;
    stream
        .send(&ClientMessage::Auth(AuthMessage::LoginStart {
            username: username.into(),
            request: ByteBuf::from(request),
        }))
        .await?;
    let response = match next(stream).await? {
        ServerMessage::Auth(AuthMessage::LoginResponse { response }) => response,
        other => {
            return Err(EnrollError::Protocol(format!(
                "expected LoginResponse, got {other:?}"
            )));
        }
    };
    let (finalization, export_key) =
        match client.finish(password, username, &response, binding, ksf) {
            Ok(v) => v,
            Err(e) => {
                // Tell the coordinator, so its logs show the failure; the attempt already counts
                // against the rate limit there.
                let _ = stream
                    .send(&ClientMessage::Error(WireError {
                        code: ErrorCode::AuthenticationFailed,
                        message: "login abandoned: the coordinator's proof did not verify".into(),
                    }))
                    .await;
                return Err(e);
            }
        };
    stream
        .send(&ClientMessage::Auth(AuthMessage::LoginFinish {
            finalization: ByteBuf::from(finalization),
        }))
        .await?;
    match next(stream).await? {
        ServerMessage::Auth(AuthMessage::Authenticated { role, log_key }) => Ok(Authenticated {
            role,
            export_key,
            log_key,
        }),
        other => Err(EnrollError::Protocol(format!(
            "expected Authenticated, got {other:?}"
        ))),
    }
}

/// Enrolls this device: makes a device secret and the identity key derived from it
/// ([`crate::identity_check::identity_key`]), registers the account with that key, seals the
/// secret under the export key, and saves the credentials in `state_dir`. Returns them.
pub async fn enroll(
    stream: &mut FramedStream,
    state_dir: &Path,
    username: &str,
    password: &str,
    invite: Option<&str>,
    ksf: KsfParams,
    server_fingerprint: Option<String>,
) -> Result<(Credentials, Role), EnrollError> {
    enroll_into(
        stream,
        &crate::host::FileSecretStore::new(state_dir),
        username,
        password,
        invite,
        ksf,
        server_fingerprint,
    )
    .await
}

/// [`enroll`], keeping the credentials in a host's secret store.
pub async fn enroll_into(
    stream: &mut FramedStream,
    store: &dyn SecretStore,
    username: &str,
    password: &str,
    invite: Option<&str>,
    ksf: KsfParams,
    server_fingerprint: Option<String>,
) -> Result<(Credentials, Role), EnrollError> {
    let secret = Credentials::new_device_secret();
    let identity = crate::identity_check::identity_key(&secret).verifying_key();
    let done = register(stream, username, password, invite, &ksf, Some(&identity)).await?;
    let mut creds = Credentials::new(username, ksf, server_fingerprint, &done.export_key, &secret);
    // The round-log key is pinned here, beside the certificate fingerprint.
    creds.log_key = pinnable_log_key(done.log_key.as_ref().map(|b| b.as_slice()))?;
    creds.save_to(store)?;
    Ok((creds, done.role))
}

/// A login with saved credentials.
#[derive(Debug)]
pub struct LoggedIn {
    /// The account name.
    pub username: String,
    /// The account's role.
    pub role: Role,
    /// The device secret, unsealed with the login's export key.
    pub device_secret: Zeroizing<[u8; 32]>,
    /// The model owner's round-log key pinned in the credentials (at enrollment, or at the
    /// first login that offered one for credentials that predate it).
    pub log_key: Option<cohort_protocol::chain::VerifyingKey>,
}

/// The key to pin from an `Authenticated` (hex), refusing one that is not an Ed25519 key.
fn pinnable_log_key(offered: Option<&[u8]>) -> Result<Option<String>, EnrollError> {
    offered
        .map(|bytes| {
            crate::credentials::parse_log_key_bytes(bytes)
                .map(|k| hex::encode(k.to_bytes()))
                .ok_or_else(|| {
                    EnrollError::Protocol(
                        "the coordinator's round-log key is not an Ed25519 public key".into(),
                    )
                })
        })
        .transpose()
}

/// Logs in with the credentials saved in `state_dir` and unseals the device secret.
pub async fn login_saved(
    conn: &cohort_net::quinn::Connection,
    stream: &mut FramedStream,
    state_dir: &Path,
    password: &str,
) -> Result<LoggedIn, EnrollError> {
    login_stored(
        conn,
        stream,
        &crate::host::FileSecretStore::new(state_dir),
        &state_dir.display().to_string(),
        password,
    )
    .await
}

/// [`login_saved`] with the credentials in a host's secret store (`place` names it in the
/// error when the device has not enrolled).
pub async fn login_stored(
    conn: &cohort_net::quinn::Connection,
    stream: &mut FramedStream,
    store: &dyn SecretStore,
    place: &str,
    password: &str,
) -> Result<LoggedIn, EnrollError> {
    let mut creds = Credentials::load_from(store)?
        .ok_or_else(|| EnrollError::NotEnrolled(place.to_string()))?;
    let done = login(conn, stream, &creds.username, password, &creds.ksf).await?;
    let device_secret = creds.unseal_device_secret(&done.export_key)?;
    // Credentials from before round-log keys pin the key at this login (over the connection
    // whose certificate they pinned); a pinned key is never replaced by what a login offers.
    if creds.log_key.is_none()
        && let Some(key) = pinnable_log_key(done.log_key.as_ref().map(|b| b.as_slice()))?
    {
        tracing::info!("pinned the model owner's round-log key");
        creds.log_key = Some(key);
        creds.save_to(store)?;
    }
    let log_key = creds.log_verifying_key()?;
    Ok(LoggedIn {
        username: creds.username,
        role: done.role,
        device_secret,
        log_key,
    })
}
