//! The mask PRG: a keystream read as little-endian `u32` words, from one of two ciphers chosen
//! per round by the round's [`CipherSuite`] ([`MaskPrg::of`]).
//!
//! A mask is `PRG(seed)` for a 32-byte seed: either a pairwise key `K^mask_uv` (from
//! [`super::kdf::mask_key`]) or a client's self-mask seed `b_u`. Keystream byte `4i..4i+4`, read
//! little-endian, is mask element `i`. A round's ring is Z_{2^r}, r ≤ 32
//! (`EncodingParams::ring_bits`): masks are added mod 2^32 and the client packs the low `r`
//! bits of each word ([`cohort_protocol::PackedVector`]), so each mask element is the word mod
//! 2^r, a uniform element of Z_{2^r}; no rejection sampling is needed.
//!
//! - [`MaskPrg::ChaCha20`] (`X25519HkdfSha256ChaCha20V1`): ChaCha20 (RFC 8439) with the seed as
//!   key, the all-zero 96-bit nonce and the block counter starting at 0.
//! - [`MaskPrg::Aes128Ctr`] (`X25519HkdfSha256Aes128CtrV1`): AES-128 in CTR mode (NIST SP
//!   800-38A, 128-bit big-endian counter) with the key
//!   `HKDF-SHA256(salt = "", ikm = seed, info = "cohort-secagg-mask-aes128ctr-v1")[0..16]` and
//!   the initial counter block 0. AES-NI / ARMv8 AES are detected at run time by the `aes`
//!   crate; on aarch64 only when built with `--cfg aes_armv8` (see [`aes_accelerated`]).
//!
//! Each seed keys exactly one stream, so the fixed nonce (counter block) is safe: a (key, nonce)
//! pair never covers two different streams. ChaCha20's 32-bit block counter bounds a mask at
//! 2^32 blocks of 16 words (2^36 elements, 256 GiB); AES-CTR's 128-bit counter is bounded here
//! at the same length. Longer vectors are refused with a panic (see the functions' `# Panics`
//! sections), which no real model reaches.
//!
//! This is the hot path of SecAgg+: a client adds k + 1 masks of the full model length, and the
//! server removes one mask per survivor and k per dropout. The keystream is therefore never
//! materialised: [`apply_mask`] has the cipher's SIMD backend (ChaCha20: AVX2 or SSE2 detected
//! at run time, AVX-512 with `--cfg chacha20_avx512`, NEON on aarch64; AES: AES-NI or ARMv8
//! AES) generate 4 KiB of keystream at a time into a stack buffer, and adds it into the
//! accumulator while it is in L1. [`apply_masks`] applies many seeds tile by tile (16 KiB of the
//! accumulator at a time) so the accumulator is read from memory once rather than once per
//! seed; each seed's cipher is keyed once and seeked per tile.
//!
//! [`apply_mask_at`] starts at an arbitrary keystream element, so a shell can split a long vector
//! into ranges and mask them on different threads; the result is the same as one
//! [`apply_mask`] over the whole vector.

use aes::Aes128;
use chacha20::variants::Ietf;
use chacha20::{ChaChaCore, R20};
use cohort_protocol::CipherSuite;
use zeroize::Zeroize;

/// ChaCha20 as in RFC 8439 (96-bit nonce, 32-bit block counter), at block level.
type ChaCha20Core = ChaChaCore<R20, Ietf>;

/// AES-128-CTR with a 128-bit big-endian counter, at block level.
type Aes128CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// The HKDF info string that turns a 32-byte mask seed into an AES-128 key.
pub const AES_KEY_INFO: &[u8] = b"cohort-secagg-mask-aes128ctr-v1";

/// Which keystream a round's masks use; fixed by the round's [`CipherSuite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskPrg {
    /// ChaCha20, RFC 8439 (seed as key, zero nonce, counter from 0).
    ChaCha20,
    /// AES-128-CTR, NIST SP 800-38A (key derived from the seed, counter block from 0).
    Aes128Ctr,
}

impl MaskPrg {
    /// The mask PRG of a suite.
    pub fn of(suite: CipherSuite) -> Self {
        match suite {
            CipherSuite::X25519HkdfSha256ChaCha20V1 => MaskPrg::ChaCha20,
            CipherSuite::X25519HkdfSha256Aes128CtrV1 => MaskPrg::Aes128Ctr,
        }
    }

    /// A short name for logs and benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            MaskPrg::ChaCha20 => "chacha20",
            MaskPrg::Aes128Ctr => "aes128-ctr",
        }
    }
}

impl From<CipherSuite> for MaskPrg {
    fn from(suite: CipherSuite) -> Self {
        MaskPrg::of(suite)
    }
}

/// Whether AES runs on hardware instructions in this build on this machine: AES-NI on x86
/// (detected at run time), the ARMv8 Cryptography Extensions on aarch64 (detected at run time,
/// compiled in only with `--cfg aes_armv8`, which `.cargo/config.toml` sets for aarch64
/// targets). Without them the `aes` crate falls back to a constant-time bitsliced
/// implementation, several times slower than ChaCha20, so a device then advertises ChaCha20
/// only ([`local_suites`]).
pub fn aes_accelerated() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("sse2")
    }
    #[cfg(all(target_arch = "aarch64", aes_armv8))]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        all(target_arch = "aarch64", aes_armv8)
    )))]
    {
        false
    }
}

/// The suites this build implements, in no particular order.
pub const IMPLEMENTED_SUITES: [CipherSuite; 2] = [
    CipherSuite::X25519HkdfSha256Aes128CtrV1,
    CipherSuite::X25519HkdfSha256ChaCha20V1,
];

/// The suites a device advertises in its `Hello`, in its order of preference: AES-128-CTR
/// first where it is accelerated ([`aes_accelerated`]), then ChaCha20, which every device
/// implements and always advertises.
pub fn local_suites() -> Vec<CipherSuite> {
    let mut suites = Vec::with_capacity(2);
    if aes_accelerated() {
        suites.push(CipherSuite::X25519HkdfSha256Aes128CtrV1);
    }
    suites.push(CipherSuite::X25519HkdfSha256ChaCha20V1);
    suites
}

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

/// Longest keystream, in `u32` words, that one seed can produce (2^32 ChaCha20 blocks of 16
/// words; the same bound is applied to AES-CTR).
pub const MAX_WORDS: u64 = (1u64 << 32) * BLOCK_WORDS as u64;

/// Tile length (in words) used by [`apply_masks`]: 16 KiB, half of a typical L1 data cache.
const TILE_WORDS: usize = 4096;

/// Adds (or subtracts) the mask `PRG(seed)` into `acc`: `acc[i] = acc[i] ± ks[i]`, wrapping.
///
/// # Panics
///
/// If `acc` is longer than [`MAX_WORDS`] (2^36 elements).
pub fn apply_mask(prg: MaskPrg, acc: &mut [u32], seed: &[u8; 32], sign: MaskSign) {
    apply_mask_at(prg, acc, 0, seed, sign);
}

/// Like [`apply_mask`], but `acc[0]` corresponds to keystream element `offset`: the cipher is
/// seeked, not run from the start. Masking `v[a..b]` with `offset = a` for every range of a
/// partition of `v` gives the same result as `apply_mask(v, ..)`.
///
/// # Panics
///
/// If `offset + acc.len()` exceeds [`MAX_WORDS`] (2^36 elements).
pub fn apply_mask_at(
    prg: MaskPrg,
    acc: &mut [u32],
    offset: usize,
    seed: &[u8; 32],
    sign: MaskSign,
) {
    apply_masks_at(prg, acc, offset, &[(seed, sign)]);
}

/// Applies several masks to `acc`, each with its own sign; the result equals calling
/// [`apply_mask`] once per `(seed, sign)` pair, but the accumulator is processed in L1-sized
/// tiles so that it is read from memory once rather than once per seed. This is what a client
/// uses to add its k pairwise masks and its self mask.
///
/// # Panics
///
/// If `acc` is longer than [`MAX_WORDS`] (2^36 elements).
pub fn apply_masks(prg: MaskPrg, acc: &mut [u32], masks: &[(&[u8; 32], MaskSign)]) {
    apply_masks_at(prg, acc, 0, masks);
}

/// [`apply_masks`] where `acc[0]` corresponds to keystream element `offset` of every mask (see
/// [`apply_mask_at`]).
///
/// # Panics
///
/// If `offset + acc.len()` exceeds [`MAX_WORDS`] (2^36 elements).
pub fn apply_masks_at(
    prg: MaskPrg,
    acc: &mut [u32],
    offset: usize,
    masks: &[(&[u8; 32], MaskSign)],
) {
    match prg {
        MaskPrg::ChaCha20 => masks_with::<ChaCha20Stream>(acc, offset, masks),
        MaskPrg::Aes128Ctr => masks_with::<Aes128CtrStream>(acc, offset, masks),
    }
}

/// Writes the keystream `PRG(seed)` into `out` (element `i` of the stream into `out[i]`).
///
/// # Panics
///
/// If `out` is longer than [`MAX_WORDS`] (2^36 elements).
pub fn expand(prg: MaskPrg, seed: &[u8; 32], out: &mut [u32]) {
    out.fill(0);
    apply_mask(prg, out, seed, MaskSign::Add);
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
        "mask range {offset}..{offset}+{len} exceeds the mask keystream of 2^36 words; \
         split the vector into several masks"
    );
}

/// One keyed mask stream at block level: what [`masks_with`] needs of a cipher.
trait Keystream {
    /// `u32` words per cipher block.
    const BLOCK_WORDS: usize;
    /// One block of keystream bytes.
    type Block: AsRef<[u8]> + AsMut<[u8]>;
    /// A 4 KiB buffer of blocks.
    type Buffer: AsRef<[Self::Block]> + AsMut<[Self::Block]>;
    /// The stream of `seed`, at block 0.
    fn keyed(seed: &[u8; 32]) -> Self;
    /// A zeroed buffer.
    fn buffer() -> Self::Buffer;
    /// Moves to block `block` (below 2^32 · 16 / BLOCK_WORDS).
    fn seek(&mut self, block: u64);
    /// Writes the next `blocks.len()` blocks of keystream.
    fn write(&mut self, blocks: &mut [Self::Block]);
}

/// Blocks generated per call into the cipher: 4 KiB, which stays in L1 while it is added, and
/// is a multiple of every backend's parallel width (4 or 16 ChaCha20 blocks, 8 AES blocks).
const BUFFER_BYTES: usize = 4096;

struct ChaCha20Stream(ChaCha20Core);

impl Keystream for ChaCha20Stream {
    const BLOCK_WORDS: usize = 16;
    type Block = chacha20::cipher::Block<ChaCha20Core>;
    type Buffer = [Self::Block; BUFFER_BYTES / 64];

    fn keyed(seed: &[u8; 32]) -> Self {
        use chacha20::cipher::KeyIvInit;
        Self(ChaCha20Core::new(&(*seed).into(), &[0u8; 12].into()))
    }

    fn buffer() -> Self::Buffer {
        std::array::from_fn(|_| Default::default())
    }

    fn seek(&mut self, block: u64) {
        // check_range bounds block below 2^32.
        self.0
            .set_block_pos(u32::try_from(block).unwrap_or(u32::MAX));
    }

    fn write(&mut self, blocks: &mut [Self::Block]) {
        use chacha20::cipher::StreamCipherCore;
        self.0.write_keystream_blocks(blocks);
    }
}

struct Aes128CtrStream(Aes128CtrCore);

impl Aes128CtrStream {
    /// AES-128-CTR with `key` and initial counter block `iv` (NIST SP 800-38A notation).
    fn with_key_iv(key: &[u8; 16], iv: &[u8; 16]) -> Self {
        use ctr::cipher::KeyIvInit;
        Self(Aes128CtrCore::new(key.into(), iv.into()))
    }

    /// The AES key of a mask seed.
    fn derive_key(seed: &[u8; 32]) -> zeroize::Zeroizing<[u8; 16]> {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        super::kdf::hkdf_sha256(seed, &[], AES_KEY_INFO, &mut key[..]);
        key
    }
}

impl Keystream for Aes128CtrStream {
    const BLOCK_WORDS: usize = 4;
    type Block = ctr::cipher::Block<Aes128CtrCore>;
    type Buffer = [Self::Block; BUFFER_BYTES / 16];

    fn keyed(seed: &[u8; 32]) -> Self {
        Self::with_key_iv(&Self::derive_key(seed), &[0u8; 16])
    }

    fn buffer() -> Self::Buffer {
        std::array::from_fn(|_| Default::default())
    }

    fn seek(&mut self, block: u64) {
        use ctr::cipher::StreamCipherSeekCore;
        self.0.set_block_pos(u128::from(block));
    }

    fn write(&mut self, blocks: &mut [Self::Block]) {
        use ctr::cipher::StreamCipherCore;
        self.0.write_keystream_blocks(blocks);
    }
}

/// [`apply_masks_at`] for one cipher: every seed's stream is keyed once, then seeked to each
/// tile of the accumulator in turn.
fn masks_with<K: Keystream>(acc: &mut [u32], offset: usize, masks: &[(&[u8; 32], MaskSign)]) {
    check_range(offset, acc.len());
    if acc.is_empty() || masks.is_empty() {
        return;
    }
    let mut streams: Vec<(K, MaskSign)> = masks
        .iter()
        .map(|(seed, sign)| (K::keyed(seed), *sign))
        .collect();
    let mut buffer = K::buffer();
    for (i, tile) in acc.chunks_mut(TILE_WORDS).enumerate() {
        let tile_offset = offset + i * TILE_WORDS;
        for (stream, sign) in streams.iter_mut() {
            stream.seek((tile_offset / K::BLOCK_WORDS) as u64);
            let skip = tile_offset % K::BLOCK_WORDS;
            match sign {
                MaskSign::Add => mask_blocks::<K, false>(stream, buffer.as_mut(), tile, skip),
                MaskSign::Subtract => mask_blocks::<K, true>(stream, buffer.as_mut(), tile, skip),
            }
        }
    }
    // The buffer holds mask keystream; do not leave it on the stack.
    for block in buffer.as_mut() {
        block.as_mut().zeroize();
    }
}

/// Adds (or subtracts) the keystream from `stream`'s position into `acc`, discarding the first
/// `skip` words of the first block (the caller's offset was not block aligned).
///
/// The cipher writes keystream into a small buffer through its own bulk path, and a plain loop
/// adds it while it is in L1.
fn mask_blocks<K: Keystream, const SUBTRACT: bool>(
    stream: &mut K,
    buffer: &mut [K::Block],
    acc: &mut [u32],
    skip: usize,
) {
    let bw = K::BLOCK_WORDS;
    let mut acc = acc;

    if skip > 0 {
        stream.write(&mut buffer[..1]);
        let take = (bw - skip).min(acc.len());
        let (head, rest) = acc.split_at_mut(take);
        add_words::<SUBTRACT>(head, &buffer[0].as_ref()[skip * 4..(skip + take) * 4]);
        acc = rest;
    }

    for chunk in acc.chunks_mut(buffer.len() * bw) {
        let blocks = chunk.len().div_ceil(bw);
        stream.write(&mut buffer[..blocks]);
        let mut words = chunk.chunks_exact_mut(bw);
        for (dst, ks) in (&mut words).zip(buffer.iter()) {
            add_block::<SUBTRACT>(dst, ks.as_ref());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            add_words::<SUBTRACT>(tail, &buffer[blocks - 1].as_ref()[..tail.len() * 4]);
        }
    }
}

/// [`add_words`] for one whole block, with fixed sizes for the two block lengths (16 words for
/// ChaCha20, 4 for AES) so that the compiler emits straight-line SIMD code.
#[inline(always)]
fn add_block<const SUBTRACT: bool>(dst: &mut [u32], ks: &[u8]) {
    match dst.len() {
        16 => add_fixed::<SUBTRACT, 16, 64>(dst, ks),
        4 => add_fixed::<SUBTRACT, 4, 16>(dst, ks),
        _ => add_words::<SUBTRACT>(dst, ks),
    }
}

/// `dst[i] ±= le_u32(ks[4i..4i+4])` for exactly `W` words (`B` = 4·W bytes).
#[inline(always)]
fn add_fixed<const SUBTRACT: bool, const W: usize, const B: usize>(dst: &mut [u32], ks: &[u8]) {
    let (Ok(dst), Ok(ks)) = (<&mut [u32; W]>::try_from(dst), <&[u8; B]>::try_from(ks)) else {
        unreachable!("add_fixed is called with whole blocks only");
    };
    for i in 0..W {
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

    const PRGS: [MaskPrg; 2] = [MaskPrg::ChaCha20, MaskPrg::Aes128Ctr];

    #[test]
    fn unaligned_offsets_match_whole_vector() {
        let seed = [7u8; 32];
        for prg in PRGS {
            let mut whole = vec![0u32; 200];
            expand(prg, &seed, &mut whole);
            for offset in [0usize, 1, 3, 5, 15, 16, 17, 63, 64, 65, 100] {
                for len in [0usize, 1, 3, 15, 16, 17, 64, 65, 99] {
                    if offset + len > whole.len() {
                        continue;
                    }
                    let mut part = vec![0u32; len];
                    apply_mask_at(prg, &mut part, offset, &seed, MaskSign::Add);
                    assert_eq!(
                        part,
                        whole[offset..offset + len],
                        "{prg:?} offset {offset} len {len}"
                    );
                }
            }
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// NIST SP 800-38A, F.5.1 (CTR-AES128.Encrypt): the keystream is ciphertext ⊕ plaintext,
    /// so encrypting the plaintext with our stream must give the ciphertext. The four blocks
    /// are read from a stream seeked to each block too.
    #[test]
    fn aes128_ctr_matches_nist_sp800_38a_f51() {
        let key: [u8; 16] = unhex("2b7e151628aed2a6abf7158809cf4f3c")
            .try_into()
            .unwrap();
        let iv: [u8; 16] = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .try_into()
            .unwrap();
        let plaintext = unhex(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        let ciphertext = unhex(
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
             5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
        );
        let mut stream = Aes128CtrStream::with_key_iv(&key, &iv);
        let mut blocks = Aes128CtrStream::buffer();
        stream.write(&mut blocks[..4]);
        let keystream: Vec<u8> = blocks[..4].iter().flat_map(|b| b.to_vec()).collect();
        let encrypted: Vec<u8> = plaintext
            .iter()
            .zip(&keystream)
            .map(|(p, k)| p ^ k)
            .collect();
        assert_eq!(encrypted, ciphertext);

        // Seeking: block i of the stream alone (the counter is iv + i).
        for i in 0..4u64 {
            let mut s = Aes128CtrStream::with_key_iv(&key, &iv);
            // The counter is relative to the initial block: seek adds to iv's 128-bit value.
            s.seek(i);
            let mut one = Aes128CtrStream::buffer();
            s.write(&mut one[..1]);
            assert_eq!(
                one[0].as_slice(),
                &keystream[16 * i as usize..16 * (i as usize + 1)]
            );
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the mask keystream")]
    fn offset_beyond_keystream_panics() {
        let mut acc = [0u32; 4];
        apply_mask_at(
            MaskPrg::ChaCha20,
            &mut acc,
            (MAX_WORDS - 2) as usize,
            &[0u8; 32],
            MaskSign::Add,
        );
    }
}
