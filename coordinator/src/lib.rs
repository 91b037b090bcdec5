//! # cohort-coordinator
//!
//! The coordinator: the server side of Cohort. It accepts edge clients over QUIC
//! ([`cohort_net`]), authenticates them with OPAQUE, keeps its durable state in one SQLite file
//! and a directory of checkpoints, and drives the
//! `cohort-aggregation` round state machines.
//!
//! Modules:
//! - [`auth`]: OPAQUE registration and login bound to the TLS session, enrollment policy,
//!   invites, rate limiting of failed logins.
//! - [`store`]: the SQLite database (accounts, invites, tasks, rounds, metrics, round log),
//!   migrated by `user_version`.
//! - [`round_log`]: the hash-chained log of finished rounds, with tamper detection.
//! - [`checkpoints`]: weight vectors stored as files named by content hash.
//! - [`task`]: task definitions in TOML.
//! - [`session`]: the per-connection handler (hello, authentication, check-in, forwarding
//!   round messages to the round driver, weight downloads on separate streams).
//! - [`selection`]: over-selection and pace steering (sans-IO).
//! - [`round_driver`]: one `ServerRound` on tokio (deadlines, outboxes, unmasking off-runtime).
//! - [`federated_evaluation`]: devices' metrics of the global model on their local data,
//!   checked and combined per round (federated evaluation).
//! - [`scheduler`]: per task, the loop from cohort to published model, with retry on abort.
//! - [`metrics`]: Prometheus counters and the tiny `/metrics` responder.
//! - [`server`]: starting a coordinator from a state dir (and resuming after a crash).
//!
//! What it does not hold: round logic (in `cohort-aggregation`), wire types (in
//! `cohort-protocol`), transport details (in `cohort-net`), and any machine learning: it links
//! neither burn nor the edge client (the loopback demo and benchmark are in `cohort-loopback`).
//!
//! Entry point: [`session::serve`] with a [`session::SessionContext`].

mod atomic_file;
pub mod auth;
pub mod checkpoints;
pub mod federated_evaluation;
pub mod metrics;
pub mod round_driver;
pub mod round_log;
pub mod scheduler;
pub mod selection;
pub mod server;
pub mod session;
pub mod store;
pub mod task;
