//! Test-only misbehaviour, compiled always but reachable from outside the crate only through
//! the `testing` feature's [`crate::testing`] module: a production build of the library has no
//! way to inject a fault or to read the unmasked update.

#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use cohort_protocol::RoundId;
use tokio::sync::mpsc;

/// Where a test makes the client misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection on receiving `RoundConfig` (before R0).
    VanishAtR0,
    /// Close the connection on receiving the R1 request.
    VanishAtR1,
    /// Close the connection on receiving the R2 request.
    VanishAtR2,
    /// Close the connection on receiving the R2.5 consistency-check request (rounds with the
    /// check).
    VanishAtConsistencyCheck,
    /// Close the connection on receiving the R3 request.
    VanishAtR3,
    /// Send a masked input one element too long.
    WrongLength,
    /// Close the connection once after the first completed round, then reconnect.
    ReconnectAfterFirstRound,
}

/// A test hook's record of the input a client gave its `ClientRound`: with the coordinator's
/// list of contributors it lets a test check that the released sum is exact.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvidedInput {
    /// The round.
    pub round_id: RoundId,
    /// The client's index in it.
    pub index: cohort_protocol::ClientIndex,
    /// The weight encoded (capped by the round).
    pub weight: u32,
    /// The update before encoding.
    pub update: Vec<f32>,
}

/// The hooks of one client.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// A fault to inject.
    pub fault: Option<Fault>,
    /// Where to record each input given to the round.
    pub input_hook: Option<mpsc::UnboundedSender<ProvidedInput>>,
}
