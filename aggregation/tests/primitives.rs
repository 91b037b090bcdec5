//! Known-answer and property tests for the SecAgg+ primitives: the ChaCha20 mask PRG, HKDF key
//! derivation, X25519 key pairs, Shamir sharing over GF(2^61 − 1), ChaCha20-Poly1305 share
//! transport, the Harary neighbour graph and fcp's parameter finder.
//!
//! Known answers come from the RFCs (8439, 5869, 7748) and from an independent implementation
//! (OpenSSL through Python's `cryptography` 48). The "frozen" vectors at the end were computed
//! once by this suite: they pin the exact byte layout of our derivations, so that any change to
//! the primitive suite (which would silently break interoperability between coordinator and
//! clients) fails here first.

use cohort_aggregation::secagg::cipher::{self, CIPHERTEXT_LEN, CipherError};
use cohort_aggregation::secagg::graph::{GraphError, NeighbourGraph};
use cohort_aggregation::secagg::kdf;
use cohort_aggregation::secagg::keys::{KeyError, KeyPair, parse_public_key};
use cohort_aggregation::secagg::params::{
    AdversaryClass, GraphParams, ParamsError, choose_graph_params, choose_graph_params_for,
    min_survivors,
};
use cohort_aggregation::secagg::prg::{
    MaskPrg, MaskSign, apply_mask, apply_mask_at, apply_masks, apply_masks_at, expand,
};
use cohort_aggregation::secagg::shamir::{self, MODULUS, ShamirError, Share};
use cohort_protocol::ClientIndex;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let bytes = hex::decode(s).expect("test vector is valid hex");
    bytes
        .try_into()
        .expect("test vector has the expected length")
}

fn words_le(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------------------------
// PRG (ChaCha20, RFC 8439)
// ---------------------------------------------------------------------------------------------

/// RFC 8439 §2.4.2 (nonce ≠ 0, counter 1) through the `chacha20` crate our PRG is built on.
#[test]
fn chacha20_crate_matches_rfc8439_section_2_4_2() {
    use chacha20::ChaCha20;
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let nonce: [u8; 12] = unhex("000000000000004a00000000");
    let mut buf =
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for \
the future, sunscreen would be it."
            .to_vec();
    let mut c = ChaCha20::new(&key.into(), &nonce.into());
    c.seek(64u32); // block counter 1
    c.apply_keystream(&mut buf);
    assert_eq!(
        hex::encode(&buf),
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd\
62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab\
77937365af90bbf74a35be6b40b8eedf2785e42874d"
    );
}

/// RFC 8439 Appendix A.1 test vectors #1 and #2: all-zero key and nonce, blocks 0 and 1, which
/// is exactly our PRG with the zero seed.
#[test]
fn prg_matches_rfc8439_appendix_a1() {
    let block0 = hex::decode(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7da41597c5157488d7724e03fb8\
d84a376a43b8f41518a11cc387b669b2ee6586",
    )
    .unwrap();
    let block1 = hex::decode(
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed29b721769ce64e43d57133b074\
d839d531ed1f28510afb45ace10a1f4b794d6f",
    )
    .unwrap();
    let mut out = vec![0u32; 32];
    expand(MaskPrg::ChaCha20, &[0u8; 32], &mut out);
    assert_eq!(out[..16], words_le(&block0)[..]);
    assert_eq!(out[16..], words_le(&block1)[..]);

    // Seeking straight to block 1 gives the same words.
    let mut second = vec![0u32; 16];
    apply_mask_at(
        MaskPrg::ChaCha20,
        &mut second,
        16,
        &[0u8; 32],
        MaskSign::Add,
    );
    assert_eq!(second, words_le(&block1));
}

/// Key 00 01 … 1f, nonce 0, counter 0, computed independently with OpenSSL (Python
/// `cryptography` 48): words 0..20 and 1000..1010 (the latter also checks unaligned seeking).
#[test]
fn prg_matches_openssl_vector_with_seek() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let first: [u32; 20] = [
        0x7d2bfd39, 0x6a19c5d9, 0x7703bd8d, 0x494adcb8, 0x6fd8358a, 0xcc6adebc, 0x4c7dccb2,
        0x9224ead8, 0xe7cc232b, 0xab2360a2, 0x69ef0e3f, 0x647fc83a, 0xea358225, 0x2da3f7b1,
        0xa06227c2, 0x0c415b48, 0x3142b818, 0xd1a6e6ad, 0x615c6113, 0x274e43af,
    ];
    let at_1000: [u32; 10] = [
        0xbadd3b6a, 0x4eb08a41, 0xb291d97e, 0x8a405e7f, 0x0f132492, 0xfc790615, 0xbc3f74f9,
        0xef682edd, 0x79d878d8, 0xd7ecfd94,
    ];
    let mut out = vec![0u32; 2000];
    expand(MaskPrg::ChaCha20, &seed, &mut out);
    assert_eq!(out[..20], first);
    assert_eq!(out[1000..1010], at_1000);

    let mut part = vec![0u32; 10];
    apply_mask_at(MaskPrg::ChaCha20, &mut part, 1000, &seed, MaskSign::Add);
    assert_eq!(part, at_1000);
}

const PRGS: [MaskPrg; 2] = [MaskPrg::ChaCha20, MaskPrg::Aes128Ctr];

fn prg_of(aes: bool) -> MaskPrg {
    if aes {
        MaskPrg::Aes128Ctr
    } else {
        MaskPrg::ChaCha20
    }
}

/// The AES-128-CTR mask PRG with seed 00 01 … 1f, computed independently with OpenSSL (Python
/// `cryptography` 48: key = HKDF-SHA256(salt "", ikm seed, info
/// "cohort-secagg-mask-aes128ctr-v1")[..16] = 3db9f89b…d2f87ff0, AES-128-CTR from counter block
/// 0, keystream read as little-endian u32): words 0..12 and 1000..1010, the latter also seeked.
/// The cipher itself is checked against NIST SP 800-38A F.5.1 in `prg.rs`'s unit tests.
#[test]
fn aes_prg_matches_openssl_vector_with_seek() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let first: [u32; 12] = [
        0xec24b309, 0x001637f8, 0xcfbbee54, 0x3294dec7, 0xfab6fdd2, 0x18f16e25, 0x5167d1f6,
        0xd4453543, 0x223fced5, 0xc886a7e5, 0xb75effe2, 0xb5282afe,
    ];
    let at_1000: [u32; 10] = [
        0xe4b7b166, 0x1b4952a0, 0x0aaf7c31, 0x83facf1f, 0x1b02a208, 0x9a692e28, 0x90d9a7b7,
        0x5efff3dc, 0x554e9fbe, 0x21a985c5,
    ];
    let mut out = vec![0u32; 2000];
    expand(MaskPrg::Aes128Ctr, &seed, &mut out);
    assert_eq!(out[..12], first);
    assert_eq!(out[1000..1010], at_1000);

    let mut part = vec![0u32; 10];
    apply_mask_at(MaskPrg::Aes128Ctr, &mut part, 1000, &seed, MaskSign::Add);
    assert_eq!(part, at_1000);
    let mut unaligned = vec![0u32; 9];
    apply_mask_at(
        MaskPrg::Aes128Ctr,
        &mut unaligned,
        1001,
        &seed,
        MaskSign::Add,
    );
    assert_eq!(unaligned, at_1000[1..]);
}

#[test]
fn suites_map_to_their_prg_and_devices_always_offer_chacha20() {
    use cohort_aggregation::secagg::prg::{aes_accelerated, local_suites};
    use cohort_protocol::CipherSuite;
    assert_eq!(
        MaskPrg::of(CipherSuite::X25519HkdfSha256ChaCha20V1),
        MaskPrg::ChaCha20
    );
    assert_eq!(
        MaskPrg::of(CipherSuite::X25519HkdfSha256Aes128CtrV1),
        MaskPrg::Aes128Ctr
    );
    let local = local_suites();
    assert_eq!(local.last(), Some(&CipherSuite::X25519HkdfSha256ChaCha20V1));
    assert_eq!(
        local.contains(&CipherSuite::X25519HkdfSha256Aes128CtrV1),
        aes_accelerated()
    );
}

#[test]
fn mask_adds_and_subtracts_with_wraparound() {
    for prg in PRGS {
        let seed = [3u8; 32];
        let mut ks = vec![0u32; 100];
        expand(prg, &seed, &mut ks);
        let base: Vec<u32> = (0..100u32).map(|i| u32::MAX - i).collect();

        let mut added = base.clone();
        apply_mask(prg, &mut added, &seed, MaskSign::Add);
        let mut subtracted = base.clone();
        apply_mask(prg, &mut subtracted, &seed, MaskSign::Subtract);
        for i in 0..100 {
            assert_eq!(added[i], base[i].wrapping_add(ks[i]));
            assert_eq!(subtracted[i], base[i].wrapping_sub(ks[i]));
        }
        assert_ne!(added, base, "a mask must change the vector");
    }
}

#[test]
fn different_seeds_and_suites_give_different_masks() {
    let mut masks = Vec::new();
    for prg in PRGS {
        for seed in [[1u8; 32], [2u8; 32]] {
            let mut a = vec![0u32; 64];
            expand(prg, &seed, &mut a);
            masks.push(a);
        }
    }
    for i in 0..masks.len() {
        for j in 0..i {
            assert_ne!(masks[i], masks[j], "masks {i} and {j}");
        }
    }
}

#[test]
fn empty_accumulator_is_left_alone() {
    for prg in PRGS {
        let mut empty: [u32; 0] = [];
        apply_mask(prg, &mut empty, &[1u8; 32], MaskSign::Add);
        apply_mask_at(prg, &mut empty, 12345, &[1u8; 32], MaskSign::Subtract);
        apply_masks(prg, &mut empty, &[(&[1u8; 32], MaskSign::Add)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Masking any partition of a vector range by range (with the right offsets) equals
    /// masking the whole vector at once.
    #[test]
    fn split_ranges_equal_whole(
        seed in any::<[u8; 32]>(),
        len in 0usize..3000,
        cuts in proptest::collection::vec(0usize..3000, 0..6),
        base_offset in 0usize..100_000,
        subtract in any::<bool>(),
        aes in any::<bool>(),
    ) {
        let prg = prg_of(aes);
        let sign = if subtract { MaskSign::Subtract } else { MaskSign::Add };
        let init: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut whole = init.clone();
        apply_mask_at(prg, &mut whole, base_offset, &seed, sign);

        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
        bounds.push(0);
        bounds.push(len);
        bounds.sort_unstable();
        let mut pieces = init.clone();
        for w in bounds.windows(2) {
            apply_mask_at(prg, &mut pieces[w[0]..w[1]], base_offset + w[0], &seed, sign);
        }
        prop_assert_eq!(pieces, whole);
    }

    /// Adding a mask then subtracting it (or the reverse) is the identity.
    #[test]
    fn add_then_subtract_is_identity(
        seed in any::<[u8; 32]>(),
        init in proptest::collection::vec(any::<u32>(), 0..2000),
        offset in 0usize..1_000_000,
        subtract_first in any::<bool>(),
        aes in any::<bool>(),
    ) {
        let prg = prg_of(aes);
        let first = if subtract_first { MaskSign::Subtract } else { MaskSign::Add };
        let mut acc = init.clone();
        apply_mask_at(prg, &mut acc, offset, &seed, first);
        apply_mask_at(prg, &mut acc, offset, &seed, first.negate());
        prop_assert_eq!(acc, init);
    }

    /// The tiled multi-seed path equals one apply_mask per seed.
    #[test]
    fn apply_masks_equals_sequential(
        seeds in proptest::collection::vec((any::<[u8; 32]>(), any::<bool>()), 0..6),
        len in 0usize..10_000,
        offset in 0usize..50,
        aes in any::<bool>(),
    ) {
        let prg = prg_of(aes);
        let masks: Vec<(&[u8; 32], MaskSign)> = seeds
            .iter()
            .map(|(s, sub)| (s, if *sub { MaskSign::Subtract } else { MaskSign::Add }))
            .collect();
        let mut sequential = vec![7u32; len];
        for (seed, sign) in &masks {
            apply_mask_at(prg, &mut sequential, offset, seed, *sign);
        }
        let mut tiled = vec![7u32; len];
        apply_masks_at(prg, &mut tiled, offset, &masks);
        prop_assert_eq!(&tiled, &sequential);
        if offset == 0 {
            let mut tiled0 = vec![7u32; len];
            apply_masks(prg, &mut tiled0, &masks);
            prop_assert_eq!(tiled0, sequential);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KDF (HKDF-SHA256, RFC 5869) and session id
// ---------------------------------------------------------------------------------------------

/// RFC 5869 Appendix A.1 (test case 1).
#[test]
fn hkdf_matches_rfc5869_test_case_1() {
    let ikm = [0x0bu8; 22];
    let salt: Vec<u8> = (0x00..=0x0c).collect();
    let info: Vec<u8> = (0xf0..=0xf9).collect();
    let mut okm = [0u8; 42];
    kdf::hkdf_sha256(&ikm, &salt, &info, &mut okm);
    assert_eq!(
        hex::encode(okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
}

#[test]
fn pair_keys_are_symmetric_and_separated() {
    let dh = [9u8; 32];
    let sid = [4u8; 32];
    let (a, b, c) = (ClientIndex(3), ClientIndex(17), ClientIndex(18));
    assert_eq!(
        *kdf::mask_key(&dh, &sid, a, b),
        *kdf::mask_key(&dh, &sid, b, a)
    );
    assert_eq!(
        *kdf::share_key(&dh, &sid, a, b),
        *kdf::share_key(&dh, &sid, b, a)
    );
    assert_ne!(
        *kdf::mask_key(&dh, &sid, a, b),
        *kdf::share_key(&dh, &sid, a, b)
    );
    assert_ne!(
        *kdf::mask_key(&dh, &sid, a, b),
        *kdf::mask_key(&dh, &sid, a, c)
    );
    assert_ne!(
        *kdf::mask_key(&dh, &sid, a, b),
        *kdf::mask_key(&dh, &[5u8; 32], a, b)
    );
    assert_ne!(
        *kdf::mask_key(&dh, &sid, a, b),
        *kdf::mask_key(&[8u8; 32], &sid, a, b)
    );
}

/// mask_key is exactly HKDF(ikm = dh, salt = session id, info = "mask" ‖ min BE ‖ max BE).
#[test]
fn pair_keys_follow_the_documented_layout() {
    let dh = [0x11u8; 32];
    let sid = [0x22u8; 32];
    let mut want = [0u8; 32];
    kdf::hkdf_sha256(
        &dh,
        &sid,
        b"mask\x00\x00\x00\x05\x00\x00\x01\x00",
        &mut want,
    );
    assert_eq!(
        *kdf::mask_key(&dh, &sid, ClientIndex(256), ClientIndex(5)),
        want
    );
    kdf::hkdf_sha256(&dh, &sid, b"enc\x00\x00\x00\x05\x00\x00\x01\x00", &mut want);
    assert_eq!(
        *kdf::share_key(&dh, &sid, ClientIndex(5), ClientIndex(256)),
        want
    );
}

#[test]
fn session_id_is_order_independent_and_binds_everything() {
    let keys = vec![
        (ClientIndex(2), [2u8; 32], [20u8; 32]),
        (ClientIndex(1), [1u8; 32], [10u8; 32]),
        (ClientIndex(3), [3u8; 32], [30u8; 32]),
    ];
    let base = kdf::session_id(7, b"config", &keys);
    let mut reversed = keys.clone();
    reversed.reverse();
    assert_eq!(kdf::session_id(7, b"config", &reversed), base);

    assert_ne!(kdf::session_id(8, b"config", &keys), base);
    assert_ne!(kdf::session_id(7, b"config!", &keys), base);
    assert_ne!(kdf::session_id(7, b"config", &keys[..2]), base);
    let mut swapped = keys.clone();
    let entry = &mut swapped[0];
    std::mem::swap(&mut entry.1, &mut entry.2);
    assert_ne!(kdf::session_id(7, b"config", &swapped), base);
    let mut renumbered = keys.clone();
    renumbered[0].0 = ClientIndex(4);
    assert_ne!(kdf::session_id(7, b"config", &renumbered), base);
}

// ---------------------------------------------------------------------------------------------
// X25519 (RFC 7748)
// ---------------------------------------------------------------------------------------------

/// RFC 7748 §6.1.
#[test]
fn x25519_matches_rfc7748_section_6_1() {
    let alice = KeyPair::from_secret_bytes(unhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    let bob = KeyPair::from_secret_bytes(unhex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    assert_eq!(
        hex::encode(alice.public_bytes()),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(
        hex::encode(bob.public_bytes()),
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    );
    let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    assert_eq!(
        hex::encode(*alice.agree(&bob.public_bytes()).unwrap()),
        shared
    );
    assert_eq!(
        hex::encode(*bob.agree(&alice.public_bytes()).unwrap()),
        shared
    );
}

#[test]
fn agree_refuses_low_order_points() {
    let me = KeyPair::generate(&mut rng(1));
    // The identity (0), the point of order 2 (u = 1) and a point of order 8.
    let low_order: [[u8; 32]; 3] = [
        [0u8; 32],
        {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        },
        unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ];
    for point in low_order {
        assert_eq!(
            me.agree(&point),
            Err(KeyError::NonContributory),
            "{}",
            hex::encode(point)
        );
    }
}

#[test]
fn key_pairs_round_trip_and_are_seeded() {
    let a = KeyPair::generate(&mut rng(5));
    let again = KeyPair::generate(&mut rng(5));
    let other = KeyPair::generate(&mut rng(6));
    assert_eq!(a.public_bytes(), again.public_bytes());
    assert_ne!(a.public_bytes(), other.public_bytes());

    let rebuilt = KeyPair::from_secret_bytes(*a.secret_bytes());
    assert_eq!(rebuilt.public_bytes(), a.public_bytes());
    assert_eq!(
        *rebuilt.agree(&other.public_bytes()).unwrap(),
        *other.agree(&a.public_bytes()).unwrap()
    );
    assert!(!format!("{a:?}").contains(&hex::encode(*a.secret_bytes())));
}

#[test]
fn parse_public_key_checks_length() {
    assert_eq!(parse_public_key(&[7u8; 32]), Ok([7u8; 32]));
    assert_eq!(
        parse_public_key(&[7u8; 31]),
        Err(KeyError::BadLength { len: 31 })
    );
    assert_eq!(
        parse_public_key(&[7u8; 33]),
        Err(KeyError::BadLength { len: 33 })
    );
    assert_eq!(parse_public_key(&[]), Err(KeyError::BadLength { len: 0 }));
}

// ---------------------------------------------------------------------------------------------
// Shamir over GF(2^61 − 1)
// ---------------------------------------------------------------------------------------------

/// Shares computed by hand from fixed degree-1 polynomials: chunk 0 of the secret is 1
/// (f₀(x) = 1 + 5x), chunks 1..4 are 0 (f(x) = 7x).
#[test]
fn shamir_reconstructs_hand_computed_shares() {
    let mut secret = [0u8; 32];
    secret[0] = 1;
    let s1 = Share {
        x: 1,
        y: [6, 7, 7, 7, 7],
    };
    let s2 = Share {
        x: 2,
        y: [11, 14, 14, 14, 14],
    };
    let s3 = Share {
        x: 3,
        y: [16, 21, 21, 21, 21],
    };
    for pair in [[&s1, &s2], [&s1, &s3], [&s3, &s2]] {
        let shares: Vec<Share> = pair.iter().map(|s| (*s).clone()).collect();
        assert_eq!(*shamir::reconstruct(&shares, 2).unwrap(), secret);
    }
    // With three shares and threshold 2 only the first two are used.
    let junk = Share {
        x: 9,
        y: [1, 2, 3, 4, 5],
    };
    assert_eq!(
        *shamir::reconstruct(&[s1.clone(), s2.clone(), junk], 2).unwrap(),
        secret
    );

    // f₀(0) = 2·y(1) − y(2) = −1 ≡ 2^61 − 2: wider than 56 bits, so the shares are inconsistent.
    let bad = [
        Share { x: 1, y: [0; 5] },
        Share {
            x: 2,
            y: [1, 0, 0, 0, 0],
        },
    ];
    assert_eq!(shamir::reconstruct(&bad, 2), Err(ShamirError::Inconsistent));

    // A secret whose bytes fill every chunk (all 0xff): f(x) = secret chunk, constant (t = 1).
    let full = [0xffu8; 32];
    let c = (1u64 << 56) - 1;
    let constant = Share {
        x: 4,
        y: [c, c, c, c, u64::from(u32::MAX)],
    };
    assert_eq!(*shamir::reconstruct(&[constant], 1).unwrap(), full);
}

#[test]
fn shamir_share_bytes_round_trip_and_validation() {
    let share = Share {
        x: 12,
        y: [1, 2, MODULUS - 1, 0, 1 << 56],
    };
    let bytes = share.to_bytes();
    assert_eq!(&bytes[..8], &1u64.to_le_bytes());
    assert_eq!(&bytes[16..24], &(MODULUS - 1).to_le_bytes());
    assert_eq!(Share::from_bytes(12, &bytes), Ok(share));

    assert_eq!(
        Share::from_bytes(12, &bytes[..39]),
        Err(ShamirError::BadShareLength { len: 39 })
    );
    assert_eq!(Share::from_bytes(0, &bytes), Err(ShamirError::ZeroX));
    let mut out_of_field = bytes;
    out_of_field[24..32].copy_from_slice(&MODULUS.to_le_bytes());
    assert_eq!(
        Share::from_bytes(12, &out_of_field),
        Err(ShamirError::NotInField { chunk: 3 })
    );
}

#[test]
fn shamir_refuses_bad_arguments() {
    let secret = [5u8; 32];
    let mut r = rng(3);
    assert_eq!(
        shamir::split(&secret, 0, &[1, 2], &mut r),
        Err(ShamirError::ZeroThreshold)
    );
    assert_eq!(
        shamir::split(&secret, 3, &[1, 2], &mut r),
        Err(ShamirError::ThresholdTooLarge {
            threshold: 3,
            holders: 2
        })
    );
    assert_eq!(
        shamir::split(&secret, 2, &[1, 0, 3], &mut r),
        Err(ShamirError::ZeroX)
    );
    assert_eq!(
        shamir::split(&secret, 2, &[4, 2, 4], &mut r),
        Err(ShamirError::DuplicateX { x: 4 })
    );

    let shares = shamir::split(&secret, 3, &[1, 2, 3, 4], &mut r).unwrap();
    assert_eq!(
        shamir::reconstruct(&shares[..2], 3),
        Err(ShamirError::TooFewShares {
            got: 2,
            threshold: 3
        })
    );
    assert_eq!(
        shamir::reconstruct(&shares, 0),
        Err(ShamirError::ZeroThreshold)
    );
    let dup = vec![shares[0].clone(), shares[1].clone(), shares[0].clone()];
    assert_eq!(
        shamir::reconstruct(&dup, 3),
        Err(ShamirError::DuplicateX { x: 1 })
    );
    let mut zero = shares.clone();
    zero[1].x = 0;
    assert_eq!(shamir::reconstruct(&zero, 3), Err(ShamirError::ZeroX));
    let mut wide = shares.clone();
    wide[2].y[4] = MODULUS;
    assert_eq!(
        shamir::reconstruct(&wide, 3),
        Err(ShamirError::NotInField { chunk: 4 })
    );
}

#[test]
fn shamir_split_is_one_share_per_x_in_order() {
    let xs = [5u32, 1, 900, 33];
    let shares = shamir::split(&[1u8; 32], 2, &xs, &mut rng(8)).unwrap();
    assert_eq!(shares.iter().map(|s| s.x).collect::<Vec<_>>(), xs);
    assert!(shares.iter().all(|s| s.y.iter().all(|&y| y < MODULUS)));
    // Fresh randomness: two splits of the same secret differ.
    let again = shamir::split(&[1u8; 32], 2, &xs, &mut rng(9)).unwrap();
    assert_ne!(shares, again);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any t of the n shares (in any order, from any x-set) rebuild the secret; t − 1 shares
    /// interpolated as if the threshold were t − 1 give another secret or an error.
    #[test]
    fn shamir_any_t_subset_reconstructs(
        secret in any::<[u8; 32]>(),
        (t, n) in (1usize..=12).prop_flat_map(|t| (Just(t), t..=16)),
        xs_seed in any::<u64>(),
        rng_seed in any::<u64>(),
    ) {
        let mut pick = rng(xs_seed);
        let mut xs: Vec<u32> = (1..=u32::MAX).step_by(4_000_037).take(1000).collect();
        xs.shuffle(&mut pick);
        xs.truncate(n);
        let shares = shamir::split(&secret, t, &xs, &mut rng(rng_seed)).unwrap();

        let mut subset = shares.clone();
        subset.shuffle(&mut pick);
        subset.truncate(t);
        prop_assert_eq!(*shamir::reconstruct(&subset, t).unwrap(), secret);

        if t >= 2 {
            match shamir::reconstruct(&subset[..t - 1], t - 1) {
                Ok(wrong) => prop_assert_ne!(*wrong, secret),
                Err(e) => prop_assert_eq!(e, ShamirError::Inconsistent),
            }
        }
    }

    /// Mixing shares of two different secrets is refused or gives neither secret.
    #[test]
    fn shamir_mixed_shares_do_not_reconstruct(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        t in 2usize..8,
        seed in any::<u64>(),
    ) {
        prop_assume!(a != b);
        let xs: Vec<u32> = (1..=t as u32).collect();
        let sa = shamir::split(&a, t, &xs, &mut rng(seed)).unwrap();
        let sb = shamir::split(&b, t, &xs, &mut rng(seed ^ 1)).unwrap();
        let mut mixed = sa.clone();
        mixed[t - 1] = sb[t - 1].clone();
        match shamir::reconstruct(&mixed, t) {
            Ok(got) => {
                prop_assert_ne!(*got, a);
                prop_assert_ne!(*got, b);
            }
            Err(e) => prop_assert_eq!(e, ShamirError::Inconsistent),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Share transport (ChaCha20-Poly1305)
// ---------------------------------------------------------------------------------------------

fn sample_shares() -> (Share, Share) {
    let mut r = rng(11);
    let s = shamir::split(&[0xaau8; 32], 2, &[7, 9], &mut r).unwrap();
    let b = shamir::split(&[0xbbu8; 32], 2, &[7, 9], &mut r).unwrap();
    (s[1].clone(), b[1].clone()) // the shares held by x = 9
}

#[test]
fn cipher_round_trip() {
    let key = [1u8; 32];
    let sid = [2u8; 32];
    let (from, to) = (ClientIndex(7), ClientIndex(9));
    let (s, b) = sample_shares();
    let ct = cipher::seal_shares(&key, &sid, from, to, &s, &b);
    assert_eq!(ct.len(), CIPHERTEXT_LEN);
    let (s2, b2) = cipher::open_shares(&key, &sid, from, to, &ct).unwrap();
    assert_eq!((s2.x, b2.x), (9, 9));
    assert_eq!((s2, b2), (s.clone(), b.clone()));

    // Deterministic: resealing gives the same bytes (safe retransmission).
    assert_eq!(cipher::seal_shares(&key, &sid, from, to, &s, &b), ct);
    // The plaintext does not appear in the ciphertext.
    assert!(!ct.windows(8).any(|w| w == &s.to_bytes()[..8]));
}

#[test]
fn cipher_refuses_tampering_and_misdelivery() {
    let key = [1u8; 32];
    let sid = [2u8; 32];
    let (from, to) = (ClientIndex(7), ClientIndex(9));
    let (s, b) = sample_shares();
    let ct = cipher::seal_shares(&key, &sid, from, to, &s, &b);
    let auth = |f: ClientIndex, t: ClientIndex| CipherError::Authentication { from: f, to: t };

    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            cipher::open_shares(&key, &sid, from, to, &bad),
            Err(auth(from, to)),
            "byte {i}"
        );
    }
    assert_eq!(
        cipher::open_shares(&[3u8; 32], &sid, from, to, &ct),
        Err(auth(from, to))
    );
    assert_eq!(
        cipher::open_shares(&key, &[3u8; 32], from, to, &ct),
        Err(auth(from, to))
    );
    assert_eq!(
        cipher::open_shares(&key, &sid, to, from, &ct),
        Err(auth(to, from))
    );
    let other = ClientIndex(8);
    assert_eq!(
        cipher::open_shares(&key, &sid, from, other, &ct),
        Err(auth(from, other))
    );
    assert_eq!(
        cipher::open_shares(&key, &sid, from, to, &ct[..CIPHERTEXT_LEN - 1]),
        Err(CipherError::BadLength {
            len: CIPHERTEXT_LEN - 1
        })
    );
    let mut long = ct.clone();
    long.push(0);
    assert_eq!(
        cipher::open_shares(&key, &sid, from, to, &long),
        Err(CipherError::BadLength {
            len: CIPHERTEXT_LEN + 1
        })
    );
}

/// An authentic ciphertext whose plaintext names another pair (a faulty sender) is refused.
#[test]
fn cipher_checks_embedded_endpoints() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
    let key = [1u8; 32];
    let sid = [2u8; 32];
    let (s, b) = sample_shares();
    let mut plaintext = Vec::new();
    plaintext.extend_from_slice(&7u32.to_be_bytes());
    plaintext.extend_from_slice(&10u32.to_be_bytes()); // claims recipient 10
    plaintext.extend_from_slice(&s.to_bytes());
    plaintext.extend_from_slice(&b.to_bytes());
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&7u32.to_be_bytes());
    nonce[4..8].copy_from_slice(&9u32.to_be_bytes());
    let mut aad = sid.to_vec();
    aad.extend_from_slice(&7u32.to_be_bytes());
    aad.extend_from_slice(&9u32.to_be_bytes());
    let ct = ChaCha20Poly1305::new(Key::from_slice(&key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(
        cipher::open_shares(&key, &sid, ClientIndex(7), ClientIndex(9), &ct),
        Err(CipherError::WrongEndpoints {
            from: ClientIndex(7),
            to: ClientIndex(9),
            embedded_from: 7,
            embedded_to: 10,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Neighbour graph
// ---------------------------------------------------------------------------------------------

fn check_graph(g: &NeighbourGraph) {
    let n = g.num_clients();
    for u in 1..=n {
        let u = ClientIndex(u);
        let ns = g.neighbours(u);
        assert_eq!(ns.len() as u32, g.degree(), "degree of {u}");
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert!(!ns.contains(&u), "no self loop");
        for v in &ns {
            assert!(v.0 >= 1 && v.0 <= n);
            assert!(g.are_neighbours(u, *v) && g.are_neighbours(*v, u));
            assert!(g.neighbours(*v).contains(&u), "symmetric");
        }
        let listed = ns.len();
        let counted = (1..=n)
            .filter(|&v| g.are_neighbours(u, ClientIndex(v)))
            .count();
        assert_eq!(listed, counted, "are_neighbours agrees with neighbours");
    }
}

#[test]
fn harary_graph_is_regular_and_symmetric() {
    for (n, k) in [(3, 2), (5, 2), (10, 4), (11, 8), (64, 36), (200, 10)] {
        let g = NeighbourGraph::harary(n, k, &mut rng(u64::from(n * 100 + k))).unwrap();
        assert_eq!((g.num_clients(), g.degree()), (n, k));
        check_graph(&g);
    }
}

#[test]
fn harary_graph_is_a_random_placement() {
    let a = NeighbourGraph::harary(100, 6, &mut rng(1)).unwrap();
    let b = NeighbourGraph::harary(100, 6, &mut rng(1)).unwrap();
    let c = NeighbourGraph::harary(100, 6, &mut rng(2)).unwrap();
    assert_eq!(a, b, "same seed, same graph");
    assert_ne!(a, c, "different seed, different placement");
    // Not the identity placement: 1's neighbours are not simply 2, 3, 4, 98, 99, 100.
    let identity: Vec<ClientIndex> = [2, 3, 4, 98, 99, 100].map(ClientIndex).to_vec();
    assert!(
        [&a, &c]
            .iter()
            .any(|g| g.neighbours(ClientIndex(1)) != identity)
    );
}

#[test]
fn complete_graph_and_unknown_clients() {
    let g = NeighbourGraph::complete(6);
    assert_eq!((g.num_clients(), g.degree()), (6, 5));
    check_graph(&g);
    assert_eq!(
        g.neighbours(ClientIndex(3)),
        [1, 2, 4, 5, 6].map(ClientIndex).to_vec()
    );

    let h = NeighbourGraph::harary(10, 2, &mut rng(0)).unwrap();
    for graph in [&g, &h] {
        assert!(graph.neighbours(ClientIndex(0)).is_empty());
        assert!(graph.neighbours(ClientIndex(11)).is_empty());
        assert!(!graph.are_neighbours(ClientIndex(0), ClientIndex(1)));
        assert!(!graph.are_neighbours(ClientIndex(1), ClientIndex(1)));
        assert!(!graph.are_neighbours(ClientIndex(1), ClientIndex(99)));
    }
}

#[test]
fn harary_refuses_bad_degrees() {
    let mut r = rng(0);
    assert_eq!(
        NeighbourGraph::harary(10, 3, &mut r),
        Err(GraphError::OddDegree { k: 3 })
    );
    assert_eq!(
        NeighbourGraph::harary(10, 0, &mut r),
        Err(GraphError::ZeroDegree)
    );
    assert_eq!(
        NeighbourGraph::harary(10, 10, &mut r),
        Err(GraphError::DegreeTooLarge { k: 10, n: 10 })
    );
    assert_eq!(
        NeighbourGraph::harary(4, 12, &mut r),
        Err(GraphError::DegreeTooLarge { k: 12, n: 4 })
    );
}

#[test]
fn harary_graph_scales_to_100k_clients() {
    // An n×n structure (10^10 entries) would not fit in memory: building the graph at all shows
    // it is sparse. How fast it builds is a benchmark's question, not this test's.
    let g = NeighbourGraph::harary(100_000, 50, &mut rng(42)).unwrap();
    for u in (1..=100_000).step_by(997) {
        let ns = g.neighbours(ClientIndex(u));
        assert_eq!(ns.len(), 50);
        assert!(ns.iter().all(|v| g.are_neighbours(*v, ClientIndex(u))));
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters (fcp's Harary graph parameter finder)
// ---------------------------------------------------------------------------------------------

fn harary(k: u32, t: u32) -> GraphParams {
    GraphParams {
        neighbours: k,
        threshold: t,
        complete: false,
    }
}

/// The values PROTOCOL.md quotes for adv = 0.05, drop = 0.10.
#[test]
fn params_match_protocol_defaults() {
    assert_eq!(choose_graph_params(1_000, 0.05, 0.10), Ok(harary(36, 19)));
    assert_eq!(choose_graph_params(100_000, 0.05, 0.10), Ok(harary(46, 23)));
}

/// A sample of fcp's own table (`graph_parameter_finder_test.cc`, semi-honest class).
#[test]
fn params_match_fcp_table() {
    let table: [(u32, f64, f64, u32, u32); 16] = [
        (100, 0.45, 0.45, 92, 46),
        (1_000, 0.45, 0.45, 822, 417),
        (10, 0.33, 0.33, 8, 4),
        (1_000, 0.33, 0.33, 286, 150),
        (100_000, 0.33, 0.33, 480, 251),
        // fcp: (10, 0.05, 0.33) -> k = 4, t = 2; we assume 2 colluders where ⌊adv·n⌋ < 2.
        (10, 0.05, 0.33, 6, 3),
        (1_000, 0.05, 0.33, 72, 24),
        (1_000_000, 0.05, 0.33, 102, 34),
        (100, 0.33, 0.05, 34, 29),
        (10_000, 0.33, 0.05, 92, 70),
        (100, 0.05, 0.05, 12, 6),
        (1_000, 0.05, 0.05, 30, 17),
        (100_000, 0.05, 0.05, 36, 21),
        (1_000, 0.33, 0.0, 38, 36),
        // fcp: 38, 2 and 2, 2 (no adversary at all); with 2 assumed colluders:
        (1_000, 0.0, 0.33, 38, 3),
        (1_000, 0.0, 0.0, 4, 3),
    ];
    for (n, adv, drop, k, t) in table {
        assert_eq!(
            choose_graph_params(n, adv, drop),
            Ok(harary(k, t)),
            "n = {n}, adv = {adv}, drop = {drop}"
        );
    }
}

/// A sample of fcp's table for the semi-malicious class.
#[test]
fn params_match_fcp_table_semi_malicious() {
    // fcp gives (10, 0.05, 0.33) -> k = 8, t = 5; with two assumed colluders no Harary graph
    // passes and the complete graph is used (`complete_graph_when_the_finder_fails`).
    let table: [(u32, f64, f64, u32, u32); 5] = [
        (1_000, 0.05, 0.33, 398, 223),
        (100, 0.05, 0.05, 16, 11),
        (1_000, 0.3, 0.3, 872, 584),
        (100_000, 0.33, 0.05, 196, 160),
        (1_000_000, 0.05, 0.05, 74, 52),
    ];
    for (n, adv, drop, k, t) in table {
        assert_eq!(
            choose_graph_params_for(n, adv, drop, AdversaryClass::SemiMalicious),
            Ok(harary(k, t)),
            "n = {n}, adv = {adv}, drop = {drop}"
        );
    }
}

/// Small cohorts: fcp's model assumes ⌊adv·n⌋ adversaries (0 below n = 20 for adv = 0.05) and
/// gave k = 2, t = 2 at n = 10; we assume at least two colluders.
#[test]
fn small_cohorts_assume_two_colluders() {
    assert_eq!(choose_graph_params(10, 0.05, 0.10), Ok(harary(4, 3)));
    assert_eq!(choose_graph_params(20, 0.05, 0.10), Ok(harary(6, 3)));
    assert_eq!(choose_graph_params(50, 0.05, 0.10), Ok(harary(8, 3)));
    assert_eq!(choose_graph_params(64, 0.05, 0.10), Ok(harary(10, 4)));
}

/// Where the finder fails, the complete graph with t = q_min = max(⌊n/2⌋ + 1, ⌈(1−drop)·n⌉).
#[test]
fn complete_graph_when_the_finder_fails() {
    let complete = |n: u32, t: u32| GraphParams {
        neighbours: n - 1,
        threshold: t,
        complete: true,
    };
    // n = 3: no even k < n − 1 exists.
    assert_eq!(choose_graph_params(3, 0.05, 0.10), Ok(complete(3, 3)));
    // t = q_min = ⌈0.5 · 3⌉ = 2 would let the two assumed colluders reconstruct: refused.
    assert!(matches!(
        choose_graph_params(3, 0.0, 0.5),
        Err(ParamsError::Infeasible { .. })
    ));
    assert_eq!(
        choose_graph_params_for(10, 0.05, 0.33, AdversaryClass::SemiMalicious),
        Ok(complete(10, 7))
    );
    // High dropout: semi-honest, t = ⌈0.5 · 10⌉ = 5 > 3 colluders (fcp's majority term, which
    // only guards against a server lying about dropouts, would make it 6).
    assert_eq!(choose_graph_params(10, 0.3, 0.5), Ok(complete(10, 5)));
    // High adversarial fraction: ⌈0.8 · 10⌉ = 8.
    assert_eq!(choose_graph_params(10, 0.6, 0.2), Ok(complete(10, 8)));
    assert_eq!(
        choose_graph_params_for(12, 0.5, 0.2, AdversaryClass::SemiMalicious),
        Ok(complete(12, 10))
    );
    assert_eq!(min_survivors(10, 8, 0.2), 8);
}

#[test]
fn params_refuse_bad_input() {
    assert_eq!(
        choose_graph_params(2, 0.05, 0.1),
        Err(ParamsError::TooFewClients { n: 2 })
    );
    assert_eq!(
        choose_graph_params(0, 0.05, 0.1),
        Err(ParamsError::TooFewClients { n: 0 })
    );
    assert!(matches!(
        choose_graph_params(1_000_001, 0.05, 0.1),
        Err(ParamsError::TooManyClients { .. })
    ));
    for bad in [-0.01, 1.0, 1.5, f64::NAN] {
        assert!(matches!(
            choose_graph_params(100, bad, 0.1),
            Err(ParamsError::AdversarialOutOfRange { .. })
        ));
        assert!(matches!(
            choose_graph_params(100, 0.05, bad),
            Err(ParamsError::DropoutOutOfRange { .. })
        ));
    }
    assert!(matches!(
        choose_graph_params(1_000, 0.5, 0.5),
        Err(ParamsError::Infeasible { .. })
    ));
    assert!(matches!(
        choose_graph_params_for(1_000, 0.3, 0.31, AdversaryClass::SemiMalicious),
        Err(ParamsError::Infeasible { .. })
    ));
    // Complete graph whose quorum t = 3 does not exceed the ⌈0.6 · 4⌉ = 3 adversaries.
    assert!(matches!(
        choose_graph_params(4, 0.6, 0.3),
        Err(ParamsError::Infeasible { .. })
    ));
}

#[test]
fn min_survivors_is_the_quorum() {
    assert_eq!(min_survivors(1_000, 19, 0.10), 900);
    assert_eq!(min_survivors(100_000, 23, 0.10), 90_000);
    assert_eq!(min_survivors(20, 19, 0.10), 19);
    assert_eq!(min_survivors(50, 45, 0.10), 45);
    assert_eq!(min_survivors(7, 2, 0.0), 7);
    assert_eq!(min_survivors(7, 2, 0.5), 4);
}

// ---------------------------------------------------------------------------------------------
// Frozen vectors: computed once by this suite and cross-checked with an independent Python
// implementation (hashlib + `cryptography`) of the documented layouts; a change here changes the
// wire protocol.
// ---------------------------------------------------------------------------------------------

const FROZEN_DH: [u8; 32] = [0x5a; 32];
const FROZEN_SID_KEYS: [(u32, u8, u8); 3] = [(3, 0x33, 0x34), (1, 0x11, 0x12), (2, 0x21, 0x22)];

fn frozen_session_id() -> [u8; 32] {
    let keys: Vec<(ClientIndex, [u8; 32], [u8; 32])> = FROZEN_SID_KEYS
        .iter()
        .map(|&(i, c, s)| (ClientIndex(i), [c; 32], [s; 32]))
        .collect();
    kdf::session_id(42, b"round-config-bytes", &keys)
}

#[test]
fn frozen_session_id_and_pair_keys() {
    let sid = frozen_session_id();
    assert_eq!(hex::encode(sid), FROZEN_SESSION_ID);
    assert_eq!(
        hex::encode(*kdf::mask_key(
            &FROZEN_DH,
            &sid,
            ClientIndex(2),
            ClientIndex(1)
        )),
        FROZEN_MASK_KEY
    );
    assert_eq!(
        hex::encode(*kdf::share_key(
            &FROZEN_DH,
            &sid,
            ClientIndex(1),
            ClientIndex(2)
        )),
        FROZEN_SHARE_KEY
    );
}

#[test]
fn frozen_masking_and_sealing() {
    let sid = frozen_session_id();
    let mask_key = kdf::mask_key(&FROZEN_DH, &sid, ClientIndex(1), ClientIndex(2));
    let mut acc: Vec<u32> = (0..24u32).map(|i| i * 1000).collect();
    apply_mask(MaskPrg::ChaCha20, &mut acc, &mask_key, MaskSign::Subtract);
    let got: Vec<String> = acc.iter().map(|w| format!("{w:08x}")).collect();
    assert_eq!(got.concat(), FROZEN_MASKED);

    let share_key = kdf::share_key(&FROZEN_DH, &sid, ClientIndex(1), ClientIndex(2));
    let s = Share {
        x: 2,
        y: [1, 2, 3, 4, 5],
    };
    let b = Share {
        x: 2,
        y: [MODULUS - 1, 0, 1 << 55, 77, 1 << 31],
    };
    let ct = cipher::seal_shares(&share_key, &sid, ClientIndex(1), ClientIndex(2), &s, &b);
    assert_eq!(hex::encode(&ct), FROZEN_SEALED);
}

const FROZEN_SESSION_ID: &str = "5b35c2d81a90a4fddae37faff2abaed6258af9c7cdf9670e9087819f3fbf0842";
const FROZEN_MASK_KEY: &str = "0be83a4eb741e2de0eabcd53328eab2afbd90ca54f8b5eefa545f097205a5ba2";
const FROZEN_SHARE_KEY: &str = "5748ae935613161345eb41dffee66bf884d20595b03acb4cdd8fd6d51862e6b3";
const FROZEN_MASKED: &str = concat!(
    "3e7bebdab48a1fab9175d7da54f50082533872f9b8ffaef2af4fb32e042078de62c9ccf10c5ee407c937aedf",
    "6ac8b50fb7d08c8e54c8b34a187b50c4d1cb238c1a4e9dd1ace4f08a3e8e204d287261a7681d7a0e634c0904",
    "2d42eb7578acb417",
);
const FROZEN_SEALED: &str = concat!(
    "c4e8dc7849f6b5bf2c3551a967b103d339e8ab5c6e3f7be15a41223bd21a3c8a3835803f1af72827e879e216",
    "e8974e147b4eabd8d0c469880e52d648219c457698304a6bd20bd017803ebb0bc6110edd4a7969b59fd9b57d",
    "6bf4f8649c72ebca5fa05dd88704fcc5",
);

// ---------------------------------------------------------------------------------------------
// Secrets that are wiped (issue 10 item 6)
// ---------------------------------------------------------------------------------------------

/// The client's seeded generator is the RFC 8439 ChaCha20 keystream (test vector A.1 #1: key 0,
/// nonce 0, counter 0), and the round secrets are drawn from it in the documented order.
#[test]
fn seed_rng_is_the_chacha20_keystream() {
    use cohort_aggregation::secagg::seed_rng::{SeedRng, round_secrets};
    use rand_core::RngCore;
    let mut out = [0u8; 64];
    SeedRng::new(&[0; 32]).fill_bytes(&mut out);
    assert_eq!(
        hex::encode(out),
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
         da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    );
    let r = round_secrets(&[0; 32]);
    assert_eq!(
        r.c_keys.public_bytes(),
        KeyPair::from_secret_bytes(out[..32].try_into().unwrap()).public_bytes()
    );
    assert_eq!(
        r.s_keys.public_bytes(),
        KeyPair::from_secret_bytes(out[32..].try_into().unwrap()).public_bytes()
    );
    let mut rng = SeedRng::new(&[0; 32]);
    let mut skip = [0u8; 64];
    rng.fill_bytes(&mut skip);
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    assert_eq!(*r.self_mask_seed, b);
}

/// Shares wipe themselves when dropped (a compile-time check: `Share: ZeroizeOnDrop`).
#[test]
fn shares_and_seeds_zeroize_on_drop() {
    fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<Share>();
    zeroize_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
}

// ---------------------------------------------------------------------------------------------
// Identity keys (issue 10)
// ---------------------------------------------------------------------------------------------

/// RFC 8032 test vector 1 (empty message) through the directory's strict verification, and the
/// domain separation of the two signed messages.
#[test]
fn identity_signatures_known_answer_and_domain_separation() {
    use cohort_aggregation::secagg::identity::{
        IdentityDirectory, SignatureError, SigningKey, advertise_message, consistency_message, sign,
    };
    let secret: [u8; 32] =
        unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let key = SigningKey::from_bytes(&secret);
    assert_eq!(
        hex::encode(key.verifying_key().as_bytes()),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let sig = sign(&key, b"");
    assert_eq!(
        hex::encode(sig),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
    let dir: IdentityDirectory = [(ClientIndex(1), key.verifying_key())]
        .into_iter()
        .collect();
    assert_eq!(dir.verify(ClientIndex(1), b"", &sig), Ok(()));
    assert_eq!(
        dir.verify(ClientIndex(1), b"x", &sig),
        Err(SignatureError::Invalid(ClientIndex(1)))
    );
    assert_eq!(
        dir.verify(ClientIndex(2), b"", &sig),
        Err(SignatureError::UnknownIdentity(ClientIndex(2)))
    );
    assert!(matches!(
        dir.verify(ClientIndex(1), b"", &sig[..63]),
        Err(SignatureError::BadLength { len: 63, .. })
    ));
    // A signature on keys is no signature on a survivor set, for any index or set.
    let digest = dir.digest();
    let adv = advertise_message(&[1; 32], &digest, ClientIndex(1), &[2; 32], &[3; 32]);
    let cons = consistency_message(&[1; 32], &digest, &[ClientIndex(1), ClientIndex(2)]);
    let s = sign(&key, &adv);
    assert!(dir.verify(ClientIndex(1), &adv, &s).is_ok());
    assert!(dir.verify(ClientIndex(1), &cons, &s).is_err());
    let other = advertise_message(&[1; 32], &digest, ClientIndex(2), &[2; 32], &[3; 32]);
    assert!(dir.verify(ClientIndex(1), &other, &s).is_err());
    // A signature made under one view of the keys is no signature under another.
    let forked = advertise_message(&[1; 32], &[0; 32], ClientIndex(1), &[2; 32], &[3; 32]);
    assert!(dir.verify(ClientIndex(1), &forked, &s).is_err());
}

/// Known answers for the directory digest and the exact bytes each signature covers (so that a
/// change of layout is a visible change of this test), and the digest's sensitivity to any key
/// or index.
#[test]
fn directory_digest_and_signed_bytes_known_answers() {
    use cohort_aggregation::secagg::identity::{
        IdentityDirectory, SigningKey, advertise_message, consistency_message,
    };
    use sha2::{Digest, Sha256};
    let k1 = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let k2 = SigningKey::from_bytes(&[2; 32]).verifying_key();
    let dir: IdentityDirectory = [(ClientIndex(2), k2), (ClientIndex(1), k1)]
        .into_iter()
        .collect();
    let mut expected = Sha256::new();
    expected.update(b"cohort-secagg-directory-v1");
    expected.update(2u32.to_be_bytes());
    expected.update(1u32.to_be_bytes());
    expected.update(k1.as_bytes());
    expected.update(2u32.to_be_bytes());
    expected.update(k2.as_bytes());
    let expected: [u8; 32] = expected.finalize().into();
    assert_eq!(dir.digest(), expected);
    assert_eq!(
        hex::encode(dir.digest()),
        "57c953c8852e823da2b42c0e27f04f43abf161aa3ed6b53be870320952608004"
    );
    let swapped: IdentityDirectory = [(ClientIndex(1), k2), (ClientIndex(2), k1)]
        .into_iter()
        .collect();
    assert_ne!(swapped.digest(), dir.digest());
    let fewer: IdentityDirectory = [(ClientIndex(1), k1)].into_iter().collect();
    assert_ne!(fewer.digest(), dir.digest());

    let adv = advertise_message(&[7; 32], &[8; 32], ClientIndex(3), &[9; 32], &[10; 32]);
    let mut want = b"cohort-secagg-advertise-v2".to_vec();
    want.extend([7; 32]);
    want.extend([8; 32]);
    want.extend(3u32.to_be_bytes());
    want.extend([9; 32]);
    want.extend([10; 32]);
    assert_eq!(adv, want);
    let cons = consistency_message(&[7; 32], &[8; 32], &[ClientIndex(1), ClientIndex(4)]);
    let mut want = b"cohort-secagg-consistency-v2".to_vec();
    want.extend([7; 32]);
    want.extend([8; 32]);
    want.extend(2u32.to_be_bytes());
    want.extend(1u32.to_be_bytes());
    want.extend(4u32.to_be_bytes());
    assert_eq!(cons, want);
}

#[test]
fn enrollment_binding_needs_the_export_key() {
    use cohort_aggregation::secagg::identity::{
        SigningKey, check_enrollment_binding, enrollment_binding,
    };
    let key = SigningKey::from_bytes(&[4; 32]).verifying_key();
    let other = SigningKey::from_bytes(&[5; 32]).verifying_key();
    let b = enrollment_binding(&[9; 64], "alice", &key);
    assert!(check_enrollment_binding(&[9; 64], "alice", &key, &b));
    assert!(!check_enrollment_binding(&[8; 64], "alice", &key, &b));
    assert!(!check_enrollment_binding(&[9; 64], "alicf", &key, &b));
    assert!(!check_enrollment_binding(&[9; 64], "alice", &other, &b));
}
