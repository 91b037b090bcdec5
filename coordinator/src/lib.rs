//! # cohort-coordinator
//!
//! The coordinator: the server side of Cohort. It accepts edge clients over QUIC
//! ([`cohort_net`]), authenticates them with OPAQUE, keeps its durable state in one SQLite file
//! and a directory of checkpoints, and (with the round scheduler, still to come) drives the
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
//! - [`session`]: the per-connection handler (hello, authentication; check-in and rounds to
//!   come).
//!
//! What it does not hold: round logic (in `cohort-aggregation`), wire types (in
//! `cohort-protocol`), and transport details (in `cohort-net`).
//!
//! Entry point: [`session::serve`] with a [`session::SessionContext`].

mod atomic_file;
pub mod auth;
pub mod checkpoints;
pub mod demo;
pub mod metrics;
pub mod round_driver;
pub mod round_log;
pub mod scheduler;
pub mod selection;
pub mod server;
pub mod session;
pub mod store;
pub mod task;
