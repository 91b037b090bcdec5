//! SecAgg+ (Bell et al., CCS 2020) as sans-IO state machines, following PROTOCOL.md.
//!
//! Neighbourhoods include the client itself: client u splits each of its two secrets into
//! k + 1 shares, one for each neighbour and one it keeps, with threshold t ("t-of-(k+1)"). We
//! write N⁺(u) = N(u) ∪ {u}. A survivor reveals in R3 the self-mask share of every survivor in
//! N⁺(u), its own included, which is what lets a small complete-graph round with t = q_min
//! finish when exactly q_min clients survive.
//!
//! Entry points: [`ServerRound`] and [`ClientRound`]. The primitives are public for tests,
//! benchmarks and alternative shells.

pub mod accumulator;
pub mod cipher;
pub mod client;
pub mod config;
pub mod graph;
pub mod identity;
pub mod kdf;
pub mod keys;
pub mod params;
pub mod prg;
pub mod seed_rng;
pub mod server;
pub mod shamir;
pub mod unmask;

pub use client::{ClientRound, ClientRoundError, ClientStep};
pub use config::{
    ConfigError, PhaseDeadlines, negotiate_suite, recommended_params, recommended_params_with,
};
pub use identity::{IdentityDirectory, SigningKey, VerifyingKey};
pub use server::{AbortReason, Phase, RoundError, ServerAction, ServerEvent, ServerRound};
pub use unmask::{UnmaskJob, UnmaskedSum};
