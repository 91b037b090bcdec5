//! # cohort-loopback
//!
//! A coordinator and many edge clients in one process, over real QUIC on 127.0.0.1: the
//! harness behind the README's demo, the scale benchmark, the end-to-end and fault tests, and
//! the simulator's live mode. Nothing here is a mock: the coordinator is
//! `cohort-coordinator`'s, each client is `cohort-edge`'s run loop with its own QUIC endpoint,
//! OPAQUE login and SecAgg+.
//!
//! This crate exists so that the production coordinator does not link burn or the edge
//! client: everything that needs both sides of the protocol in one process lives here.
//!
//! - [`demo`]: the digits demo ([`demo::run_demo`]), also the fault tests' driver.
//! - [`clients`]: loopback coordinator settings ([`clients::server_config`]), enrollment with
//!   the certificate pinned, edge clients started as tasks of this process.
//! - [`evaluator`]: server-side evaluation on a held-out dataset through burn's CPU backend.
//! - [`synthetic`]: a trainer that returns a pseudo-random update at once, for benchmarks.
//! - [`bench`](mod@bench): the scale benchmark (`cohort-loopback bench`).
//! - [`farm`]: a device farm, many edge clients in a child process of their own
//!   (`cohort-loopback bench-clients`), so that the benchmark can tell the coordinator's CPU
//!   time from the clients'.
//! - [`soak`]: the soak (`cohort-loopback bench --churn`): many rounds with devices joining and
//!   leaving, the coordinator's memory sampled after every round.
//! - [`process`]: the `cohort-coordinator` binary as a child process, for tests that drive it
//!   as an operator does.
//!
//! Argon2 runs with the fast test parameters here (all clients log in on the same cores); a
//! deployment keeps the defaults.
//!
//! Entry points: the `cohort-loopback` binary (`demo`, `bench`), [`demo::run_demo`],
//! [`clients::spawn_client`].

pub mod bench;
pub mod clients;
pub mod demo;
pub mod evaluator;
pub mod farm;
pub mod process;
pub mod soak;
pub mod synthetic;

pub use clients::{
    BlockingCoordinator, ClientHooks, DemoClient, enroll_client, server_config, spawn_client,
};
pub use evaluator::DatasetEvaluator;
pub use synthetic::SyntheticTrainer;
