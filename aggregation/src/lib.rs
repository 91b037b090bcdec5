//! # cohort-aggregation
//!
//! The sans-IO core of Cohort: it decides what a coordinator and an edge client say to each
//! other during a federated round, and computes what the coordinator may learn (the sum of the
//! cohort's updates, nothing else).
//!
//! Like `quinn-proto`, this crate contains no networking code, no async runtime, no clock and no
//! machine learning framework. Messages come in as events, each with the current [`time::Time`];
//! messages to send and the round's outcome come out as actions, and a state machine says when
//! it next needs to be woken (`poll_timeout`) and closes a phase whose deadline passed when the
//! shell calls `handle_timeout`. Randomness comes from a seeded RNG, so a run is reproducible.
//! The coordinator, the edge client and the simulator are shells around the same code.
//!
//! - [`secagg`]: SecAgg+ (Bell et al. 2020): [`secagg::ServerRound`] and
//!   [`secagg::ClientRound`], and the primitives under them (PRG, key agreement, Shamir
//!   sharing, share transport, the neighbour graph and its parameters). Heavy work (mask
//!   expansion, unmasking) is in plain functions over slices that a shell may run on worker
//!   threads.
//! - [`encoding`]: fixed-point encoding of `f32` updates into the ring Z_{2^32}, with clipping,
//!   stochastic rounding, and the client's weight carried inside the vector.
//! - [`ring`]: the ring Z_{2^r} of the bits a round's sum needs, and bit-packing of masked
//!   vectors at r bits per coordinate (primitives; the wire format still carries 32 bits).
//! - [`scalars`]: bounded unsigned scalars (federated-evaluation sums) carried as limbs inside
//!   the masked vector, so that only their sum over a round's contributors is learned.
//! - [`strategy`]: server optimizers over flat `f32` vectors (FedAvg, FedAvgM, FedAdam, FedYogi,
//!   FedAdagrad).
//! - [`plain`]: an **insecure** plaintext aggregator, for comparison and debugging only.
//! - [`time`]: [`time::Time`], the time a shell passes in (its own clock, real or virtual).

pub mod encoding;
pub mod plain;
pub mod ring;
pub mod scalars;
pub mod secagg;
pub mod strategy;
pub mod time;
