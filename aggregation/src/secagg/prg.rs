//! The mask PRG: the ChaCha20 keystream (RFC 8439) read as little-endian `u32` words.
//!
//! A mask is `PRG(seed)` for a 32-byte seed: either a pairwise key `K^mask_uv` (from
//! [`super::kdf::mask_key`]) or a client's self-mask seed `b_u`. The PRG is ChaCha20 with the seed
//! as key, the all-zero 96-bit nonce and the block counter starting at 0; keystream byte
//! `4i..4i+4`, read little-endian, is mask element `i`. The ring is Z_{2^32}, so every `u32` is a
//! uniform ring element and no rejection sampling is needed.
//!
//! Each seed keys exactly one stream, so the fixed nonce is safe: a (key, nonce) pair never
//! covers two different streams. The 32-bit block counter bounds a mask at 2^32 blocks of 16
//! words (2^36 elements, 256 GiB); longer vectors are refused with a panic (see the functions'
//! `# Panics` sections), which no real model reaches.
//!
//! This is the hot path of SecAgg+: a client adds k + 1 masks of the full model length, and the
//! server removes one mask per survivor and k per dropout. The keystream is therefore never
//! materialised: [`apply_mask`] has the `chacha20` crate's SIMD backend (AVX2 or SSE2, detected
//! at run time, AVX-512 with `--cfg chacha20_avx512`; NEON on aarch64) generate 64 blocks at a
//! time into a 4 KiB stack buffer, and adds them into the accumulator while they are in L1.
//! [`apply_masks`] applies many seeds tile by tile (16 KiB of the accumulator at a time) so
//! the accumulator is read from memory once rather than once per seed; on the development
//! machine (AMD EPYC, 1,000,000 words, 37 seeds) both paths are within 6–12 % of raw keystream
//! generation, so the simpler per-seed loop is fine there, but the tiled path helps where memory
//! bandwidth is scarcer than cipher throughput.
//!
//! [`apply_mask_at`] starts at an arbitrary keystream element, so a shell can split a long vector
//! into ranges and mask them on different threads; the result is the same as one
//! [`apply_mask`] over the whole vector.

use chacha20::cipher::{KeyIvInit, StreamCipherCore};
use chacha20::variants::Ietf;
use chacha20::{ChaChaCore, R20};
use zeroize::Zeroize;

/// ChaCha20 as in RFC 8439 (96-bit nonce, 32-bit block counter), at block level.
type ChaCha20Core = ChaChaCore<R20, Ietf>;

/// Whether a mask is added to or subtracted from the accumulator (mod 2^32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskSign {
    /// `acc[i] = acc[i] + ks[i]` (wrapping).
    Add,
    /// `acc[i] = acc[i] − ks[i]` (wrapping).
    Subtract,
}

impl MaskSign {
    /// The opposite sign: applying a mask and then its negation leaves the accumulator unchanged.
    pub fn negate(self) -> Self {
        match self {
            MaskSign::Add => MaskSign::Subtract,
            MaskSign::Subtract => MaskSign::Add,
        }
    }
}

/// Words of `u32` in one ChaCha20 block (64 bytes).
pub const BLOCK_WORDS: usize = 16;

/// Longest keystream, in `u32` words, that one seed can produce (2^32 blocks of 16 words).
pub const MAX_WORDS: u64 = (1u64 << 32) * BLOCK_WORDS as u64;

/// Tile length (in words) used by [`apply_masks`]: 16 KiB, half of a typical L1 data cache.
const TILE_WORDS: usize = 4096;

/// Adds (or subtracts) the mask `PRG(seed)` into `acc`: `acc[i] = acc[i] ± ks[i]`, wrapping.
///
/// # Panics
///
/// If `acc` is longer than [`MAX_WORDS`] (2^36 elements), which ChaCha20's 32-bit block
/// counter cannot cover.
pub fn apply_mask(acc: &mut [u32], seed: &[u8; 32], sign: MaskSign) {
    apply_mask_at(acc, 0, seed, sign);
}

/// Like [`apply_mask`], but `acc[0]` corresponds to keystream element `offset`: the cipher is
/// seeked, not run from the start. Masking `v[a..b]` with `offset = a` for every range of a
/// partition of `v` gives the same result as `apply_mask(v, ..)`.
///
/// # Panics
///
/// If `offset + acc.len()` exceeds [`MAX_WORDS`] (2^36 elements).
pub fn apply_mask_at(acc: &mut [u32], offset: usize, seed: &[u8; 32], sign: MaskSign) {
    if acc.is_empty() {
        return;
    }
    let mut core = seeked_core(seed, offset, acc.len());
    match sign {
        MaskSign::Add => mask_blocks::<false>(&mut core, acc, offset % BLOCK_WORDS),
        MaskSign::Subtract => mask_blocks::<true>(&mut core, acc, offset % BLOCK_WORDS),
    }
}

/// Applies several masks to `acc`, each with its own sign; the result equals calling
/// [`apply_mask`] once per `(seed, sign)` pair, but the accumulator is processed in L1-sized
/// tiles so that it is read from memory once rather than once per seed. This is what a client
/// uses to add its k pairwise masks and its self mask.
///
/// # Panics
///
/// If `acc` is longer than [`MAX_WORDS`] (2^36 elements).
pub fn apply_masks(acc: &mut [u32], masks: &[(&[u8; 32], MaskSign)]) {
    apply_masks_at(acc, 0, masks);
}

/// [`apply_masks`] where `acc[0]` corresponds to keystream element `offset` of every mask (see
/// [`apply_mask_at`]).
///
/// # Panics
///
/// If `offset + acc.len()` exceeds [`MAX_WORDS`] (2^36 elements).
pub fn apply_masks_at(acc: &mut [u32], offset: usize, masks: &[(&[u8; 32], MaskSign)]) {
    check_range(offset, acc.len());
    for (i, tile) in acc.chunks_mut(TILE_WORDS).enumerate() {
        let tile_offset = offset + i * TILE_WORDS;
        for (seed, sign) in masks {
            apply_mask_at(tile, tile_offset, seed, *sign);
        }
    }
}

/// Writes the keystream `PRG(seed)` into `out` (element `i` of the stream into `out[i]`).
///
/// # Panics
///
/// If `out` is longer than [`MAX_WORDS`] (2^36 elements).
pub fn expand(seed: &[u8; 32], out: &mut [u32]) {
    out.fill(0);
    apply_mask(out, seed, MaskSign::Add);
}

/// The `chacha20` backend that [`apply_mask`] uses on this machine, for start-up logs and
/// benchmark reports: `"avx512"` (only when built with `--cfg chacha20_avx512`), `"avx2"`,
/// `"sse2"`, `"neon"` or `"soft"` (portable code).
pub fn simd_backend() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if cfg!(chacha20_avx512)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        if std::is_x86_feature_detected!("sse2") {
            return "sse2";
        }
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        return "neon";
    }
    #[allow(unreachable_code)]
    "soft"
}

/// Panics with a clear message when `[offset, offset + len)` lies beyond the keystream.
fn check_range(offset: usize, len: usize) {
    let end = (offset as u64).checked_add(len as u64);
    assert!(
        end.is_some_and(|end| end <= MAX_WORDS),
        "mask range {offset}..{offset}+{len} exceeds the ChaCha20 keystream of 2^36 words; \
         split the vector into several masks"
    );
}

/// A ChaCha20 core keyed by `seed` (zero nonce) and seeked to the block holding element
/// `offset`.
fn seeked_core(seed: &[u8; 32], offset: usize, len: usize) -> ChaCha20Core {
    check_range(offset, len);
    let mut core = ChaCha20Core::new(&(*seed).into(), &[0u8; 12].into());
    // check_range bounds offset / 16 below 2^32.
    let block = u32::try_from(offset / BLOCK_WORDS).unwrap_or(u32::MAX);
    core.set_block_pos(block);
    core
}

/// One ChaCha20 block of keystream.
type KeystreamBlock = chacha20::cipher::Block<ChaCha20Core>;

/// Blocks generated per call into the cipher: 64 blocks = 4 KiB, which stays in L1 while it is
/// added, and is a multiple of every backend's parallel width (4 for AVX2, 16 for AVX-512).
const BUFFER_BLOCKS: usize = 64;

/// Adds (or subtracts) the keystream from `core`'s position into `acc`, discarding the first
/// `skip` words of the first block (the caller's offset was not block aligned).
///
/// The cipher writes keystream into a small stack buffer through its own bulk path (the same
/// one the benchmark's raw baseline uses), and a plain loop adds it while it is in L1.
fn mask_blocks<const SUBTRACT: bool>(core: &mut ChaCha20Core, acc: &mut [u32], skip: usize) {
    let mut buffer = [KeystreamBlock::default(); BUFFER_BLOCKS];
    let mut acc = acc;

    if skip > 0 {
        core.write_keystream_blocks(&mut buffer[..1]);
        let take = (BLOCK_WORDS - skip).min(acc.len());
        let (head, rest) = acc.split_at_mut(take);
        add_words::<SUBTRACT>(head, &buffer[0][skip * 4..(skip + take) * 4]);
        acc = rest;
    }

    for chunk in acc.chunks_mut(BUFFER_BLOCKS * BLOCK_WORDS) {
        let blocks = chunk.len().div_ceil(BLOCK_WORDS);
        core.write_keystream_blocks(&mut buffer[..blocks]);
        let mut words = chunk.chunks_exact_mut(BLOCK_WORDS);
        for (dst, ks) in (&mut words).zip(buffer.iter()) {
            add_block::<SUBTRACT>(dst, ks);
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            add_words::<SUBTRACT>(tail, &buffer[blocks - 1][..tail.len() * 4]);
        }
    }

    // The buffer holds mask keystream; do not leave it on the stack.
    for block in buffer.iter_mut() {
        block.as_mut_slice().zeroize();
    }
}

/// [`add_words`] for one whole block, with fixed sizes so that the compiler emits straight-line
/// SIMD code.
#[inline(always)]
fn add_block<const SUBTRACT: bool>(dst: &mut [u32], ks: &[u8]) {
    let (Ok(dst), Ok(ks)) = (
        <&mut [u32; BLOCK_WORDS]>::try_from(dst),
        <&[u8; 4 * BLOCK_WORDS]>::try_from(ks),
    ) else {
        unreachable!("add_block is called with whole blocks only");
    };
    for i in 0..BLOCK_WORDS {
        let k = u32::from_le_bytes([ks[4 * i], ks[4 * i + 1], ks[4 * i + 2], ks[4 * i + 3]]);
        dst[i] = if SUBTRACT {
            dst[i].wrapping_sub(k)
        } else {
            dst[i].wrapping_add(k)
        };
    }
}

/// `dst[i] ±= le_u32(ks[4i..4i+4])`, wrapping. `ks` holds exactly `4 * dst.len()` bytes.
#[inline(always)]
fn add_words<const SUBTRACT: bool>(dst: &mut [u32], ks: &[u8]) {
    for (d, w) in dst.iter_mut().zip(ks.chunks_exact(4)) {
        let k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        *d = if SUBTRACT {
            d.wrapping_sub(k)
        } else {
            d.wrapping_add(k)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_offsets_match_whole_vector() {
        let seed = [7u8; 32];
        let mut whole = vec![0u32; 200];
        expand(&seed, &mut whole);
        for offset in [0usize, 1, 5, 15, 16, 17, 63, 64, 65, 100] {
            for len in [0usize, 1, 3, 15, 16, 17, 64, 65, 99] {
                if offset + len > whole.len() {
                    continue;
                }
                let mut part = vec![0u32; len];
                apply_mask_at(&mut part, offset, &seed, MaskSign::Add);
                assert_eq!(
                    part,
                    whole[offset..offset + len],
                    "offset {offset} len {len}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the ChaCha20 keystream")]
    fn offset_beyond_keystream_panics() {
        let mut acc = [0u32; 4];
        apply_mask_at(
            &mut acc,
            (MAX_WORDS - 2) as usize,
            &[0u8; 32],
            MaskSign::Add,
        );
    }
}
