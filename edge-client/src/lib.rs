//! # cohort-edge
//!
//! The edge client: the contributor's side of Cohort. It connects to a coordinator over QUIC
//! ([`cohort_net`]), enrolls and logs in with OPAQUE ([`enroll`]), and keeps its credentials in
//! a local state directory ([`credentials`]), and takes part in rounds ([`run`]): check-in,
//! the SecAgg+ client round, local training ([`trainer`]) when the eligibility policy allows it
//! ([`eligibility`]), after checking the weights it is served against the coordinator's round
//! log ([`log_check`]) and, for tasks with differential privacy, the task's budget against
//! the owner's limit and each round's noise ([`privacy_check`]).
//!
//! What it does not hold: round logic (in `cohort-aggregation`), models and training (in
//! `cohort-learning`).
//!
//! Entry points: [`enroll::enroll`] once per device, then [`enroll::login_saved`] on every
//! connection.

pub mod credentials;
pub mod eligibility;
pub mod enroll;
pub mod log_check;
pub mod privacy_check;
pub mod run;
pub mod trainer;
