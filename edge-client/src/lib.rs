//! # cohort-edge
//!
//! The edge client: the contributor's side of Cohort. It connects to a coordinator over QUIC
//! ([`cohort_net`]), enrolls and logs in with OPAQUE ([`enroll`]), keeps its credentials in a
//! secret store ([`credentials`], [`host::SecretStore`]), and takes part in rounds ([`run`]):
//! check-in, the SecAgg+ client round, local training ([`trainer`]) when the eligibility policy
//! allows it ([`eligibility`]), after checking the weights it is served against the
//! coordinator's round log ([`log_check`]) and, for tasks with differential privacy, the task's
//! budget against the owner's limit and each round's noise ([`privacy_check`]).
//!
//! What it does not hold: round logic (in `cohort-aggregation`), models and training (in
//! `cohort-learning`).
//!
//! Entry points:
//! - [`client::EdgeClient`], the library that the `cohort-edge` CLI and the mobile bindings
//!   (`cohort-mobile`) use: blocking calls on its own runtime (`enroll`, `participate_once`,
//!   `run_until_stopped`, `stop`, `status`, and `credit`: the device's own contributor-ledger
//!   rows, each checked against the round log it verified ([`credit`])), with the host's [`host::ExampleSource`],
//!   [`host::DeviceState`] and [`host::SecretStore`], and a [`progress::ProgressListener`].
//! - The async layer underneath: [`enroll::enroll`] once per device, [`run::run`] for the loop.
//!
//! Test hooks (fault injection, recording the exact inputs) are behind the `testing` feature
//! ([`testing`]), off in production builds.

pub mod client;
pub mod credentials;
pub mod credit;
pub mod eligibility;
pub mod enroll;
pub mod host;
pub mod identity_check;
pub mod local_data;
pub mod log_check;
pub mod privacy_check;
pub mod progress;
pub mod run;
#[cfg(feature = "testing")]
pub mod testing;
mod testing_hooks;
pub mod trainer;

pub use client::{EdgeClient, EdgeError, Host, Status};
pub use credit::{CreditError, CreditRow, TaskCredit};
pub use host::{
    DeviceReading, DeviceState, ExampleBatch, ExampleError, ExampleSource, FileSecretStore,
    HostError, LinuxDevice, SecretStore,
};
pub use progress::{ClientProgress, PROGRESS_INTERVAL, Phase, ProgressListener};
pub use run::{Contribution, Participation, RunConfig, RunError};
