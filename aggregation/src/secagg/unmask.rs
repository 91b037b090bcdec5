//! Removing masks from the aggregate: plain functions over slices, so that a shell can run them
//! on worker threads off its event loop (PROTOCOL.md "Server engineering").
//!
//! After R3 the server holds the streamed sum of masked inputs
//! `Σ_{u∈U3} y_u = Σ x_u + Σ_{u∈U3} PRG(b_u) + Σ_{u∈U3, d∈N(u)∩(U2∖U3)} σ_ud·PRG(K_ud)`
//! (pairwise masks between two survivors cancel). [`ServerRound`](super::server::ServerRound)
//! reconstructs each survivor's self-mask seed `b_u` and each dropped client's mask secret
//! `s_d`; an [`UnmaskJob`] then derives the leftover pairwise keys and subtracts every mask. The
//! job is where the time goes (one mask PRG stream of the vector's length per mask), so it splits
//! the vector into ranges and lets each thread remove every mask from its own range.

use cohort_protocol::{CipherSuite, ClientIndex, RoundId};
use zeroize::Zeroizing;

use super::kdf;
use super::keys::{KeyError, KeyPair};
use super::prg::{MaskPrg, MaskSign, apply_masks_at};

/// One mask to remove: a PRG seed and the sign to apply it with.
pub struct MaskSeed {
    /// The seed (key) of the mask stream.
    pub seed: Zeroizing<[u8; 32]>,
    /// [`MaskSign::Subtract`] removes a mask that was added.
    pub sign: MaskSign,
}

/// A client that sent its keys and shares (U2) but no masked input (not in U3): its pairwise
/// masks with the survivors are left in the sum.
pub struct DroppedClient {
    /// The dropped client.
    pub index: ClientIndex,
    /// Its reconstructed mask secret key s_sk.
    pub mask_secret: Zeroizing<[u8; 32]>,
    /// Its neighbours in U3, with their mask public keys s_pk.
    pub live_neighbours: Vec<(ClientIndex, [u8; 32])>,
}

/// Why unmasking failed. Any of these means the round releases nothing.
#[derive(Debug, thiserror::Error)]
pub enum UnmaskError {
    /// A key agreement with a survivor's mask key failed (a non-contributory key).
    #[error("key agreement between dropped {dropped} and {survivor} failed: {source}")]
    KeyAgreement {
        /// The dropped client.
        dropped: ClientIndex,
        /// The survivor.
        survivor: ClientIndex,
        /// The cause.
        source: KeyError,
    },
}

/// The unmasked result of a round: the sum of the survivors' encoded inputs, modulo 2^r,
/// widened to the 32-bit two's complement form.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmaskedSum {
    /// The round.
    pub round_id: RoundId,
    /// Σ_{u∈U3} Q(x_u) mod 2^r, every value sign-extended from `r` bits and the last element
    /// (the total weight) unsigned ([`crate::ring::widen`]), ready for
    /// `Quantizer::decode_sum_of`, which refuses a total weight beyond the contributors' bounds
    /// and beyond the capacity of the ring (where the values may have wrapped).
    pub sum: Vec<u32>,
    /// U3: the clients whose inputs the sum holds, sorted.
    pub contributors: Vec<ClientIndex>,
    /// Clients that sent keys and shares but no masked input (U2 ∖ U3), sorted.
    pub dropped: Vec<ClientIndex>,
}

/// Derives the masks that a dropped client's neighbours added for it, with the sign that removes
/// them. A survivor `w` added `σ_wd·PRG(K_wd)` with `σ_wd = +1` when `w > d`, so the server applies
/// the opposite sign.
pub fn dropped_client_masks(
    dropped: &DroppedClient,
    session_id: &[u8; 32],
) -> Result<Vec<MaskSeed>, UnmaskError> {
    let keys = KeyPair::from_secret_bytes(*dropped.mask_secret);
    dropped
        .live_neighbours
        .iter()
        .map(|(w, s_pk)| {
            let dh = keys
                .agree(s_pk)
                .map_err(|source| UnmaskError::KeyAgreement {
                    dropped: dropped.index,
                    survivor: *w,
                    source,
                })?;
            let seed = kdf::mask_key(&dh, session_id, dropped.index, *w);
            let sign = if *w > dropped.index {
                MaskSign::Subtract
            } else {
                MaskSign::Add
            };
            Ok(MaskSeed { seed, sign })
        })
        .collect()
}

/// Applies every mask in `masks` to `acc`, where `acc[0]` is element `offset` of the full
/// vector. The accumulator is walked in cache-sized tiles with every stream applied to a tile
/// before the next (see [`apply_masks_at`]), so it is read from memory once.
pub fn remove_masks(prg: MaskPrg, acc: &mut [u32], offset: usize, masks: &[MaskSeed]) {
    let refs: Vec<(&[u8; 32], MaskSign)> = masks.iter().map(|m| (&*m.seed, m.sign)).collect();
    apply_masks_at(prg, acc, offset, &refs);
}

/// Everything the server needs to turn the masked sum into the plain sum, handed to the shell by
/// [`ServerRound`](super::server::ServerRound) when R3 completes.
pub struct UnmaskJob {
    pub(crate) round_id: RoundId,
    pub(crate) session_id: [u8; 32],
    pub(crate) suite: CipherSuite,
    pub(crate) masked_sum: Vec<u32>,
    pub(crate) self_masks: Vec<MaskSeed>,
    pub(crate) dropped: Vec<DroppedClient>,
    pub(crate) contributors: Vec<ClientIndex>,
    pub(crate) ring_bits: u8,
}

impl std::fmt::Debug for UnmaskJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnmaskJob")
            .field("round_id", &self.round_id)
            .field("len", &self.masked_sum.len())
            .field("self_masks", &self.self_masks.len())
            .field("dropped", &self.dropped.len())
            .finish_non_exhaustive()
    }
}

impl UnmaskJob {
    /// Assembles a job from its parts. [`ServerRound`](super::server::ServerRound) builds jobs
    /// itself; this is for benchmarks and for shells that aggregate hierarchically.
    pub fn new(
        round_id: RoundId,
        session_id: [u8; 32],
        suite: CipherSuite,
        masked_sum: Vec<u32>,
        self_masks: Vec<MaskSeed>,
        dropped: Vec<DroppedClient>,
        contributors: Vec<ClientIndex>,
    ) -> Self {
        Self {
            round_id,
            session_id,
            suite,
            masked_sum,
            self_masks,
            dropped,
            contributors,
            ring_bits: 32,
        }
    }

    /// The job for a ring of `ring_bits` bits (1..=32): the sum is read mod 2^ring_bits and
    /// widened ([`crate::ring::widen`]). [`UnmaskJob::new`] is the full 32-bit ring.
    pub fn with_ring(mut self, ring_bits: u8) -> Self {
        self.ring_bits = ring_bits.clamp(1, 32);
        self
    }

    /// Number of mask streams the job will expand (a measure of its cost).
    pub fn num_streams(&self) -> usize {
        self.self_masks.len()
            + self
                .dropped
                .iter()
                .map(|d| d.live_neighbours.len())
                .sum::<usize>()
    }

    /// Removes all masks using up to `threads` threads (at least one), and returns the sum.
    pub fn run(mut self, threads: usize) -> Result<UnmaskedSum, UnmaskError> {
        let threads = threads.max(1);
        let mut masks = std::mem::take(&mut self.self_masks);
        // Key agreement and derivation for the dropped clients, spread over the threads.
        let dropped = std::mem::take(&mut self.dropped);
        let per_thread = dropped.len().div_ceil(threads).max(1);
        let derived: Vec<Result<Vec<MaskSeed>, UnmaskError>> = std::thread::scope(|s| {
            let handles: Vec<_> = dropped
                .chunks(per_thread)
                .map(|chunk| {
                    let session_id = &self.session_id;
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for d in chunk {
                            out.extend(dropped_client_masks(d, session_id)?);
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("mask derivation does not panic"))
                .collect()
        });
        for part in derived {
            masks.extend(part?);
        }

        let prg = MaskPrg::of(self.suite);
        let mut sum = std::mem::take(&mut self.masked_sum);
        let per_range = sum.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (i, range) in sum.chunks_mut(per_range).enumerate() {
                let masks = &masks;
                s.spawn(move || remove_masks(prg, range, i * per_range, masks));
            }
        });
        // The masks cancel mod 2^32, hence mod 2^r: read the sum in the ring. Whether its total
        // weight is one the contributors can honestly reach (else its values may have wrapped)
        // is the decoder's check (`Quantizer::decode_sum_of`, `TaskPrivacy::release`).
        crate::ring::widen(&mut sum, self.ring_bits);
        Ok(UnmaskedSum {
            round_id: self.round_id,
            sum,
            contributors: std::mem::take(&mut self.contributors),
            dropped: dropped.iter().map(|d| d.index).collect(),
        })
    }
}
