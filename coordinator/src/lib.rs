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
//! - [`task`]: task definitions in TOML (`cohort-task`'s vocabulary, plus what only a
//!   deployment needs: SecAgg+ mandatory, a fully stated model).
//! - [`session`]: the per-connection handler (hello, authentication, check-in, forwarding
//!   round messages to the round driver, weight downloads on separate streams).
//! - [`round_driver`]: one SecAgg+ round on tokio (deadlines, outboxes, unmasking off-runtime),
//!   with `cohort-task`'s over-selection cut-off.
//! - [`scheduler`]: per task, the loop from cohort to published model, with retry on abort;
//!   selection, round planning, decoding and federated evaluation are `cohort-task`'s.
//! - [`publish`]: a finished round made durable (checkpoint, strategy state, round-log entry,
//!   in that order) and the records of every attempt.
//! - [`states`]: the task, round and attempt states, and their names in the database.
//! - [`clock`]: the one clock (Unix time for records, monotonic time for windows); tests pass
//!   a manual one.
//! - [`metrics`]: Prometheus counters and gauges (`prometheus-client`), each task's labelled
//!   `task`.
//! - [`export`]: a logged round's model as a safetensors file (tensor names and shapes from
//!   `ModelSpec::parameter_layout`, the spec and round-log hashes in the metadata).
//! - [`ledger`]: the contributor ledger (each round's improvement split among the devices
//!   whose inputs are in its sum; the member set's hash in the round-log entry).
//! - [`http`]: the model owners' HTTP server: JSON API, web console, server-sent events and
//!   `/metrics` (axum), with owner tokens and an audit table.
//! - [`server`]: starting a coordinator from a state dir (and resuming after a crash).
//! - [`allocator`]: `serve`'s one malloc setting (large blocks always mapped, so that transient
//!   copies of the identity log do not stay resident).
//!
//! What it does not hold: round logic (in `cohort-aggregation` and `cohort-task`), wire types (in
//! `cohort-protocol`), transport details (in `cohort-net`), and any machine learning: it links
//! neither burn nor the edge client (the loopback demo and benchmark are in `cohort-loopback`).
//!
//! Entry point: [`session::serve`] with a [`session::SessionContext`].

pub mod admission;
pub mod allocator;
pub mod auth;
pub mod budget;
pub mod checkpoints;
pub mod clock;
pub mod export;
pub mod http;
pub mod identity_log;
pub mod ledger;
pub mod log_key;
pub mod metrics;
pub mod publish;
pub mod round_driver;
pub mod round_log;
pub mod scheduler;
pub mod server;
pub mod session;
pub mod states;
pub mod store;
pub mod task;

// The one atomic-write helper, shared with the edge client (`crate::atomic_file` in this crate).
use cohort_net::atomic_file;
