//! Connection set-up: hello, OPAQUE authentication, check-in and pace steering.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::chain::RoundLogHead;
use crate::identity_log::IdentityLogHead;
use crate::ids::{ContentHash, RoundId, TaskId};
use crate::plan::TaskPlan;
use crate::round_log::RoundLogEntry;
use crate::secagg::CipherSuite;

/// What a peer can do, sent in the hello.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Largest frame the sender accepts, in bytes.
    pub max_frame_len: u32,
    /// SecAgg+ suites the sender implements.
    #[serde(
        deserialize_with = "crate::limits::de::vec::<_, _, { crate::limits::MAX_CAPABILITY_ITEMS }>"
    )]
    pub secagg_suites: Vec<CipherSuite>,
    /// Training backends available on the device ("wgpu", "flex"); empty on the coordinator.
    #[serde(
        deserialize_with = "crate::limits::de::strings::<_, { crate::limits::MAX_CAPABILITY_ITEMS }, { crate::limits::MAX_SHORT_TEXT_LEN }>"
    )]
    pub backends: Vec<String>,
}

/// First message of a client on a new connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol_version: u16,
    /// Software name and version, for logs ("cohort-edge/0.1.0").
    #[serde(
        deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
    )]
    pub software: String,
    /// What the client can do.
    pub capabilities: Capabilities,
}

/// The coordinator's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The protocol version the coordinator speaks on this connection.
    pub protocol_version: u16,
    /// Software name and version.
    #[serde(
        deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
    )]
    pub software: String,
    /// What the coordinator can do.
    pub capabilities: Capabilities,
}

/// OPAQUE messages (opaque-ke, Ristretto255 + TripleDH + Argon2id), carried as opaque bytes. The
/// login is bound to the TLS session: both sides use the TLS exporter value as the OPAQUE
/// context, so a login relayed through another TLS session fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AuthMessage {
    /// Client: start registering `username` (with an invite code when enrollment is closed).
    RegisterStart {
        /// The account name.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        username: String,
        /// The model owner's invite code, when the coordinator requires one.
        #[serde(
            default,
            deserialize_with = "crate::limits::de::opt_string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        invite: Option<String>,
        /// OPAQUE `RegistrationRequest`.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        request: ByteBuf,
    },
    /// Server: OPAQUE `RegistrationResponse`.
    RegisterResponse {
        /// The serialized response.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        response: ByteBuf,
    },
    /// Client: OPAQUE `RegistrationUpload` (the record the server stores).
    RegisterFinish {
        /// The serialized upload.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        upload: ByteBuf,
        /// The device's identity key, bound to the account (absent from clients that predate
        /// it; such accounts cannot take part in rounds with the consistency check).
        #[serde(default)]
        identity: Option<DeviceIdentity>,
    },
    /// Client: start logging in as `username`.
    LoginStart {
        /// The account name.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_SHORT_TEXT_LEN }>"
        )]
        username: String,
        /// OPAQUE `CredentialRequest`.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        request: ByteBuf,
    },
    /// Server: OPAQUE `CredentialResponse`. Sent for unknown accounts too (opaque-ke's dummy
    /// record), so an observer cannot tell whether an account exists.
    LoginResponse {
        /// The serialized response.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        response: ByteBuf,
    },
    /// Client: OPAQUE `CredentialFinalization`.
    LoginFinish {
        /// The serialized finalization.
        #[serde(
            deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_OPAQUE_MESSAGE_LEN }>"
        )]
        finalization: ByteBuf,
    },
    /// Server: authentication succeeded.
    Authenticated {
        /// The account's role.
        role: Role,
        /// The model owner's Ed25519 public key (32 bytes) that signs the round log's entries
        /// ([`crate::chain`]). A device pins it at enrollment, beside the TLS fingerprint, and
        /// refuses log entries it did not sign. Absent from coordinators that predate signing.
        #[serde(
            default,
            deserialize_with = "crate::limits::de::opt_bytes::<_, { crate::limits::MAX_KEY_LEN }>"
        )]
        log_key: Option<ByteBuf>,
    },
}

/// A device's Ed25519 identity key as registered at enrollment: the coordinator publishes it in
/// the identity log ([`crate::identity_log`]), and clients check their neighbours' R0 and R2.5
/// signatures against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The Ed25519 public key (32 bytes).
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub key: ByteBuf,
    /// HMAC-SHA256 under the OPAQUE export key over the account and the key (32 bytes): only the
    /// device can compute it, so a device that lost its local state can tell its own key from
    /// one the coordinator substituted.
    #[serde(deserialize_with = "crate::limits::de::bytes::<_, { crate::limits::MAX_KEY_LEN }>")]
    pub binding: ByteBuf,
}

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Trains models on its own data.
    Contributor,
    /// Defines and launches tasks.
    Owner,
}

/// The device state an app or desktop daemon reports at check-in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// On external power.
    pub charging: bool,
    /// On an unmetered network.
    pub unmetered: bool,
    /// The user is not using the device.
    pub idle: bool,
}

/// Client: I am eligible and would like work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckIn {
    /// A task to work on, or any.
    pub task: Option<TaskId>,
    /// The device's state.
    pub device: DeviceState,
    /// The last round-log entry this device verified for the task (its round and hash), if
    /// any: the coordinator then sends only the entries after it, at most
    /// [`crate::chain::MAX_ENTRIES_PER_MESSAGE`] at a time ([`CheckInResponse::LogCatchUp`]),
    /// so the log a device receives does not grow with the task's age. `None`: the chain from
    /// round 0. A head that is not on the coordinator's chain is answered with
    /// [`CheckInResponse::UnknownLogHead`].
    #[serde(default)]
    pub known_head: Option<RoundLogHead>,
    /// The identity-log head this device verified last, if any: when the device is selected,
    /// its round's [`crate::RoundConfig`] carries only the identity-log entries after it.
    #[serde(default)]
    pub known_identity_head: Option<IdentityLogHead>,
}

/// The coordinator's answer to [`CheckIn`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CheckInResponse {
    /// Selected: here is the plan; a `RoundConfig` follows on this connection.
    Accepted {
        /// What to train and how.
        plan: TaskPlan,
        /// The task's round log after the check-in's `known_head` (from round 0 without
        /// one), oldest entry first, at most [`crate::chain::MAX_ENTRIES_PER_MESSAGE`] entries
        /// (a device further behind is sent [`CheckInResponse::LogCatchUp`] first), none when
        /// its head is still the chain's. The chain's head names the weights the coordinator
        /// will serve for the client's round, so the client can check them against the log.
        #[serde(
            default,
            deserialize_with = "crate::limits::de::vec::<_, _, { crate::chain::MAX_ENTRIES_PER_MESSAGE }>"
        )]
        log: Vec<RoundLogEntry>,
    },
    /// Not selected yet: the device is more than [`crate::chain::MAX_ENTRIES_PER_MESSAGE`]
    /// entries behind the task's round log. Here are the next ones after its `known_head`; it
    /// verifies them, keeps the new head and checks in again at once, naming it.
    LogCatchUp {
        /// The task whose log this is.
        task: TaskId,
        /// The next entries, oldest first.
        #[serde(
            deserialize_with = "crate::limits::de::vec::<_, _, { crate::chain::MAX_ENTRIES_PER_MESSAGE }>"
        )]
        entries: Vec<RoundLogEntry>,
    },
    /// The check-in's `known_head` is not on the task's chain (no entry of that round has that
    /// hash): the coordinator's log was rewritten or reset, or the device verified another
    /// coordinator's. The device must not contribute to the task on this log (see the edge
    /// client's `log_check`).
    UnknownLogHead {
        /// The task.
        task: TaskId,
        /// The head the device named.
        head: RoundLogHead,
        /// The round of the chain's head, for the message the device shows.
        chain_round: RoundId,
    },
    /// No task is running: the one this device worked on (if any) finished or was stopped.
    /// The device may wait for a new task or stop (`cohort-edge run --until-task-ends`).
    NoTask {
        /// Milliseconds to wait before checking in again.
        retry_after_ms: u64,
    },
    /// Not now. Pace steering: the coordinator spreads reconnects over time.
    ComeBackLater {
        /// Milliseconds to wait before checking in again.
        retry_after_ms: u64,
        /// Why, for humans.
        #[serde(
            deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_TEXT_LEN }>"
        )]
        reason: String,
    },
}

/// Client: send me the weights with this hash (those named by the round config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchWeights {
    /// Content hash of the flat weight vector's little-endian bytes.
    pub hash: ContentHash,
}
