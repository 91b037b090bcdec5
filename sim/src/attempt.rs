//! What one round attempt takes and gives, shared by the SecAgg+ and the plaintext attempt
//! ([`crate::secure_round`], [`crate::plain_round`]): the cohort's prepared updates, the links
//! that time each transfer, and the outcome with its counters.

use cohort_aggregation::secagg::UnmaskedSum;
use cohort_protocol::{ClientMessage, ServerMessage, encode_frame};

use crate::clock::{Micros, micros};
use crate::cohort::{DropPhase, Fate};
use crate::network::DeviceProfile;

/// Framing and CBOR overhead added to a vector's payload when its size is computed rather than
/// encoded (the length prefix, version, enum tags, the round id, the packed vector's 5-byte header).
pub const VECTOR_OVERHEAD_BYTES: u64 = 32;

/// One cohort member's update, computed before the attempt's event loop runs.
#[derive(Clone, Debug)]
pub struct PreparedUpdate {
    /// The encoded (SecAgg+) input, or empty in plaintext mode.
    pub encoded: Vec<u32>,
    /// The clipped update (plaintext mode), or empty with SecAgg+.
    pub plain: Vec<f32>,
    /// The client's weight, capped at `max_weight`.
    pub weight: u32,
    /// Examples trained on (for the compute-time model).
    pub examples: usize,
    /// Training loss.
    pub loss: f32,
}

/// A cohort member as the attempt sees it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The client's device.
    pub profile: &'static DeviceProfile,
    /// What will happen to it.
    pub fate: Fate,
    /// Its update, when its fate lets it upload.
    pub update: Option<PreparedUpdate>,
    /// Simulated seconds of local training.
    pub training_s: f64,
}

/// The result of one attempt.
#[derive(Clone, Debug, Default)]
pub struct AttemptOutcome {
    /// The unmasked sum of a SecAgg+ attempt that released one (the engine decodes it).
    pub sum: Option<UnmaskedSum>,
    /// The weighted mean update of a plaintext attempt.
    pub mean: Option<Vec<f32>>,
    /// The abort reason, when there is no mean.
    pub abort_reason: Option<String>,
    /// Clients whose update is in the mean.
    pub participants: usize,
    /// Clients that dropped out, by phase (R0, R1, R2, R2.5, R3; [`DropPhase`] order).
    pub dropouts: [usize; 5],
    /// Clients the server removed for breaking a rule.
    pub removed: usize,
    /// Over-selected clients told to stop once the server had enough updates (live ones only;
    /// not dropouts).
    pub stopped: usize,
    /// Bytes sent by clients.
    pub bytes_up: u64,
    /// Bytes sent to clients.
    pub bytes_down: u64,
    /// Simulated duration of the attempt.
    pub duration: Micros,
    /// Example-weighted mean training loss of the participants.
    pub train_loss: Option<f32>,
}

impl AttemptOutcome {
    /// Counts a dropout at `phase`.
    pub fn count_drop(&mut self, phase: DropPhase) {
        self.dropouts[phase as usize] += 1;
    }

    /// Total dropouts.
    pub fn total_dropouts(&self) -> usize {
        self.dropouts.iter().sum()
    }
}

/// Per-client link occupancy: each client's uplink and downlink carry one message at a time.
#[derive(Debug)]
pub struct Links {
    up_free: Vec<Micros>,
    down_free: Vec<Micros>,
    /// Bytes sent up so far.
    pub bytes_up: u64,
    /// Bytes sent down so far.
    pub bytes_down: u64,
}

impl Links {
    /// Idle links for `n` clients.
    pub fn new(n: usize) -> Self {
        Self {
            up_free: vec![0; n],
            down_free: vec![0; n],
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// Sends `bytes` from client `i` at `now`; returns the arrival time at the server.
    pub fn upload(&mut self, i: usize, p: &DeviceProfile, now: Micros, bytes: u64) -> Micros {
        self.bytes_up += bytes;
        let start = now.max(self.up_free[i]);
        let busy = micros(bytes as f64 / p.up_bytes_per_s);
        self.up_free[i] = start + busy;
        start + busy + micros(p.latency_s)
    }

    /// Sends `bytes` to client `i` at `now`; returns the arrival time at the client.
    pub fn download(&mut self, i: usize, p: &DeviceProfile, now: Micros, bytes: u64) -> Micros {
        self.bytes_down += bytes;
        let start = now.max(self.down_free[i]);
        let busy = micros(bytes as f64 / p.down_bytes_per_s);
        self.down_free[i] = start + busy;
        start + busy + micros(p.latency_s)
    }
}

/// The size of a client message on the wire. Masked inputs are sized from their packed bytes
/// (⌈r·m/8⌉ at the round's r ring bits) rather than encoded; key-phase messages are small and are
/// encoded.
pub fn client_message_bytes(m: &ClientMessage) -> u64 {
    match m {
        ClientMessage::MaskedInput(mi) => mi.vector.as_bytes().len() as u64 + VECTOR_OVERHEAD_BYTES,
        other => encode_frame(other, usize::MAX).map_or(0, |f| f.len() as u64),
    }
}

/// The size of a server message on the wire.
pub fn server_message_bytes(m: &ServerMessage) -> u64 {
    encode_frame(m, usize::MAX).map_or(0, |f| f.len() as u64)
}

/// The size of a model download of `params` parameters.
pub fn model_bytes(params: usize) -> u64 {
    4 * params as u64 + VECTOR_OVERHEAD_BYTES
}
