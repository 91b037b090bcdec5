//! A fast cryptographic RNG for the client's noise and rounding: the ChaCha keystream (RFC 8439
//! block function, 12 or 8 rounds) generated 64 blocks at a time by the `chacha20` crate's SIMD
//! backend (AVX2 or SSE2 detected at run time, AVX-512 with `--cfg chacha20_avx512`, NEON on
//! aarch64), the backend the SecAgg+ masks use.
//!
//! Why not `rand_chacha`: its generator produces four blocks per refill through a portable SIMD
//! layer, about half the rate here, and drawing the noise of a million coordinates is
//! dominated by the keystream once the sampler itself is cheap ([`crate::sampler`]).
//!
//! Each generator is keyed by 32 fresh bytes from the caller's RNG with the all-zero nonce, so
//! a (key, nonce) pair never serves two streams. The IETF block counter has 32 bits: after
//! 2^32 − 64 blocks (about 256 GiB) the generator rekeys itself from its own next 32 bytes,
//! rather than repeat. The buffer is zeroed when the generator is dropped.

use chacha20::cipher::{KeyIvInit, StreamCipherCore};
use chacha20::variants::Ietf;
use chacha20::{ChaChaCore, R8, R12, Rounds};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

/// Blocks generated per refill: 64 blocks = 4 KiB, a multiple of every backend's parallel
/// width (4 for AVX2, 16 for AVX-512), small enough to stay in L1.
const BUFFER_BLOCKS: usize = 64;
/// `u64` words per refill.
const BUFFER_WORDS: usize = BUFFER_BLOCKS * 8;
/// Refills per key: the counter must not wrap (2^32 blocks).
const REFILLS_PER_KEY: u64 = (1u64 << 32) / BUFFER_BLOCKS as u64 - 1;

type Block = chacha20::cipher::Block<ChaChaCore<R12, Ietf>>;

/// The ChaCha keystream with `R` rounds as an [`RngCore`]. See the module docs.
pub struct Keystream<R: Rounds> {
    core: ChaChaCore<R, Ietf>,
    /// The keystream, read 8 bytes at a time, little-endian, where the cipher wrote it.
    blocks: [Block; BUFFER_BLOCKS],
    /// The next `u64` word to read (of BUFFER_WORDS).
    next: usize,
    refills: u64,
}

/// ChaCha12: the noise's generator (rand's `StdRng` round count).
pub type NoiseRng = Keystream<R12>;
/// ChaCha8: the rounding's generator, whose output needs no secrecy, only uniformity.
pub type RoundingRng = Keystream<R8>;

impl<R: Rounds> Keystream<R> {
    /// A generator keyed by 32 bytes from `seed_rng`.
    pub fn from_rng<S: CryptoRng + ?Sized>(seed_rng: &mut S) -> Self {
        let mut key = [0u8; 32];
        seed_rng.fill_bytes(&mut key);
        let generator = Self::from_key(&key);
        key.zeroize();
        generator
    }

    /// A generator keyed by `key` (tests and benchmarks; anything that needs secrecy uses
    /// [`Keystream::from_rng`]).
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            core: ChaChaCore::new(&(*key).into(), &[0u8; 12].into()),
            blocks: [Block::default(); BUFFER_BLOCKS],
            next: BUFFER_WORDS,
            refills: 0,
        }
    }

    #[cold]
    #[inline(never)]
    fn refill(&mut self) {
        if self.refills == REFILLS_PER_KEY {
            // Rekey from the stream itself rather than let the counter wrap.
            self.core.write_keystream_blocks(&mut self.blocks);
            let mut key = [0u8; 32];
            key.copy_from_slice(&self.blocks[0][..32]);
            self.core = ChaChaCore::new(&key.into(), &[0u8; 12].into());
            key.zeroize();
            self.refills = 0;
        }
        self.core.write_keystream_blocks(&mut self.blocks);
        self.refills += 1;
        self.next = 0;
    }
}

impl<R: Rounds> RngCore for Keystream<R> {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        if self.next == BUFFER_WORDS {
            self.refill();
        }
        let (block, word) = (self.next / 8, self.next % 8);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.blocks[block][8 * word..8 * word + 8]);
        self.next += 1;
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, mut dst: &mut [u8]) {
        // Whole words straight from the buffer; a partial last word is consumed whole.
        while !dst.is_empty() {
            if self.next == BUFFER_WORDS {
                self.refill();
            }
            let start = 8 * self.next;
            let take = (BUFFER_WORDS * 8 - start).min(dst.len());
            let (head, rest) = dst.split_at_mut(take);
            for (i, chunk) in head.chunks_mut(64).enumerate() {
                let at = start + 64 * i;
                let block = &self.blocks[at / 64];
                let from = at % 64;
                let len = chunk.len().min(64 - from);
                chunk[..len].copy_from_slice(&block[from..from + len]);
                if len < chunk.len() {
                    let next = &self.blocks[at / 64 + 1];
                    let more = chunk.len() - len;
                    chunk[len..].copy_from_slice(&next[..more]);
                }
            }
            self.next += take.div_ceil(8);
            dst = rest;
        }
    }
}

impl<R: Rounds> CryptoRng for Keystream<R> {}

impl<R: Rounds> Drop for Keystream<R> {
    fn drop(&mut self) {
        for block in &mut self.blocks {
            block.as_mut_slice().zeroize();
        }
    }
}

impl<R: Rounds> std::fmt::Debug for Keystream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the state: it predicts the noise.
        f.debug_struct("Keystream").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_rfc_8439_chacha_read_little_endian() {
        // ChaCha20 is the reference: RFC 8439 §2.3.2's block function with the counter at 0
        // is not published for a zero nonce, so compare against the crate's stream cipher,
        // whose known answers the crate tests, for ChaCha12 and ChaCha8.
        use chacha20::cipher::StreamCipher;
        let key = [0x42u8; 32];
        let mut ours = NoiseRng::from_key(&key);
        let mut bytes = vec![0u8; 8 * (BUFFER_WORDS + 100)];
        let mut reference = chacha20::ChaCha12::new(&key.into(), &[0u8; 12].into());
        reference.apply_keystream(&mut bytes);
        for chunk in bytes.chunks_exact(8) {
            assert_eq!(
                ours.next_u64(),
                u64::from_le_bytes(chunk.try_into().unwrap())
            );
        }
        let mut ours = RoundingRng::from_key(&key);
        let mut bytes = [0u8; 64];
        let mut reference = chacha20::ChaCha8::new(&key.into(), &[0u8; 12].into());
        reference.apply_keystream(&mut bytes);
        let mut got = [0u8; 64];
        ours.fill_bytes(&mut got);
        assert_eq!(got, bytes);
    }

    #[test]
    fn bulk_fills_read_the_same_stream_as_words() {
        // Odd lengths across block and buffer boundaries: fill_bytes gives the words' bytes in
        // order, a partial word consumed whole.
        let key = [7u8; 32];
        let mut words = NoiseRng::from_key(&key);
        let mut bulk = NoiseRng::from_key(&key);
        for len in [3usize, 8, 61, 64, 4000, 5, 8 * BUFFER_WORDS + 11, 1] {
            let mut got = vec![0u8; len];
            bulk.fill_bytes(&mut got);
            let mut want = Vec::new();
            while want.len() < len {
                want.extend_from_slice(&words.next_u64().to_le_bytes());
            }
            assert_eq!(got, want[..len], "length {len}");
        }
    }
}
