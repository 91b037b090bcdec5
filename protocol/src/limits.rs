//! The bounds every message keeps, and the frame limit of each message kind.
//!
//! Two layers keep a hostile peer's cost bounded:
//!
//! 1. **A frame limit per message kind, checked before the body is read.** A frame's variant
//!    name sits in its first bytes ([`peek_variant`]), so a receiver reads the length prefix and
//!    those few bytes, looks up the limit of that kind ([`ClientKind::frame_limit`]) and refuses
//!    an oversized frame before allocating its body. Only the masked input, the key shares and
//!    the unmasking shares may be large, and their limits are sized from the round
//!    ([`RoundFrameLimits::for_round`]); everything else a client sends fits
//!    [`CONTROL_MAX_FRAME_LEN`], and everything before login [`PRE_AUTH_MAX_FRAME_LEN`].
//! 2. **Bounded lists and strings inside every message, checked while decoding** (the
//!    `deserialize_with` functions of [`de`]): a `Hello` of 8 KiB made of empty strings no
//!    longer decodes into megabytes of `String`s, because its lists stop at
//!    [`MAX_CAPABILITY_ITEMS`] and its strings at [`MAX_SHORT_TEXT_LEN`] bytes. A violation is a
//!    decode error ([`crate::CodecError::Malformed`]), raised as soon as the bound is crossed.
//!
//! Together they bound how much memory a decoded message can take to a small multiple of the
//! frame limit of its kind.

use crate::codec::VERSION_LEN;

/// Largest frame a peer may send before it has authenticated (hello, OPAQUE messages, errors;
/// all well under 1 KiB in practice).
pub const PRE_AUTH_MAX_FRAME_LEN: usize = 8 * 1024;

/// Largest frame of an authenticated client's small messages: check-in, weight requests, key
/// advertisement, consistency signatures, evaluations and errors.
pub const CONTROL_MAX_FRAME_LEN: usize = 16 * 1024;

/// Longest username, software name, invite code or task id on the wire, in bytes.
pub const MAX_SHORT_TEXT_LEN: usize = 256;

/// Longest human-readable text (error messages, reasons) on the wire, in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Most entries of a capability list (cipher suites, backends).
pub const MAX_CAPABILITY_ITEMS: usize = 16;

/// Longest OPAQUE message on the wire (the largest, a registration upload, is under 200 bytes
/// with Ristretto255).
pub const MAX_OPAQUE_MESSAGE_LEN: usize = 1024;

/// Longest public key, signature or session id on the wire.
pub const MAX_KEY_LEN: usize = 256;

/// Longest share ciphertext or revealed share on the wire (104 and 40 bytes today).
pub const MAX_SHARE_LEN: usize = 256;

/// Most clients in one round: bounds every per-client list of a SecAgg+ message.
pub const MAX_COHORT: usize = 1 << 16;

/// Most round-log entries in one check-in answer.
pub const MAX_LOG_ENTRIES: usize = 1 << 20;

/// Bytes a reader must have of a frame's payload (version included) to learn its variant with
/// [`peek_variant`]: the version, a one-entry map header and a text key of up to 32 bytes.
pub const KIND_PEEK_LEN: usize = VERSION_LEN + 1 + 2 + 32;

/// Frame overhead allowed on top of a large message's payload (version, CBOR headers, field
/// names, the round id).
const LARGE_FRAME_OVERHEAD: usize = 512;

/// Bytes on the wire of one per-neighbour entry of a share message, with room to spare (a share
/// ciphertext is 104 bytes, its CBOR entry about 125).
const SHARE_ENTRY_BYTES: usize = MAX_SHARE_LEN + 32;

/// The variant name of an externally tagged CBOR enum frame, read from the first bytes of its
/// payload (`payload` starts with the 2-byte version). `None` when the bytes do not start a
/// one-entry map with a short text key, which is how this crate's codec writes every message;
/// a receiver should then apply its smallest limit.
pub fn peek_variant(payload: &[u8]) -> Option<&str> {
    let body = payload.get(VERSION_LEN..)?;
    if *body.first()? != 0xa1 {
        return None;
    }
    let (start, len) = match *body.get(1)? {
        b @ 0x60..=0x77 => (2, usize::from(b - 0x60)),
        0x78 => (3, usize::from(*body.get(2)?)),
        _ => return None,
    };
    std::str::from_utf8(body.get(start..start + len)?).ok()
}

/// The kind of a client message, as far as its frame limit is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// `Hello`, `Auth`, `Error`: allowed before login.
    Handshake,
    /// Any other small message.
    Control,
    /// `MaskedInput` (R2).
    MaskedInput,
    /// `ShareKeys` (R1).
    ShareKeys,
    /// `Unmask` (R3).
    Unmask,
    /// A variant this build does not know, or an encoding it does not expect.
    Unknown,
}

impl ClientKind {
    /// The kind of a frame from its variant name ([`peek_variant`]).
    pub fn from_variant(name: Option<&str>) -> Self {
        match name {
            Some("Hello" | "Auth" | "Error") => Self::Handshake,
            Some("CheckIn" | "FetchWeights" | "AdvertiseKeys" | "ConsistencyCheck" | "Ledger") => {
                Self::Control
            }
            Some("MaskedInput") => Self::MaskedInput,
            Some("ShareKeys") => Self::ShareKeys,
            Some("Unmask") => Self::Unmask,
            _ => Self::Unknown,
        }
    }

    /// The frame limit of this kind for a peer that is (or is not yet) `authenticated` and, if
    /// it holds a seat in a running round, that round's limits.
    pub fn frame_limit(self, authenticated: bool, round: Option<&RoundFrameLimits>) -> usize {
        if !authenticated {
            return match self {
                Self::Handshake => PRE_AUTH_MAX_FRAME_LEN,
                // Refused after decoding anyway ("log in first"); keep them small.
                _ => PRE_AUTH_MAX_FRAME_LEN.min(1024),
            };
        }
        match (self, round) {
            (Self::MaskedInput, Some(r)) => r.masked_input,
            (Self::ShareKeys, Some(r)) => r.share_keys,
            (Self::Unmask, Some(r)) => r.unmask,
            (Self::Unknown, _) => PRE_AUTH_MAX_FRAME_LEN.min(1024),
            _ => CONTROL_MAX_FRAME_LEN,
        }
    }
}

/// The frame limits of a round's large client messages, sized from its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundFrameLimits {
    /// `MaskedInput`: the vector's bytes plus overhead.
    pub masked_input: usize,
    /// `ShareKeys`: one ciphertext per neighbour.
    pub share_keys: usize,
    /// `Unmask`: one revealed share per neighbour (of one kind or the other).
    pub unmask: usize,
}

impl RoundFrameLimits {
    /// Limits for a round of these parameters: masked vectors of `vector_len` elements packed
    /// at the ring's `ring_bits`, and `neighbours` neighbours per client.
    pub fn for_params(params: &crate::SecAggParams) -> Self {
        let mut limits = Self::for_round(params.vector_len, params.neighbours);
        let bits = params.encoding.ring_bits.clamp(1, 32);
        limits.masked_input = crate::vectors::packed_len(params.vector_len as usize, bits)
            .saturating_add(LARGE_FRAME_OVERHEAD)
            .max(CONTROL_MAX_FRAME_LEN);
        limits
    }

    /// Limits for a round with masked vectors of `vector_len` elements at up to 32 bits each
    /// and `neighbours` neighbours per client.
    pub fn for_round(vector_len: u32, neighbours: u32) -> Self {
        let entries = (neighbours as usize).saturating_add(1);
        let shares = entries
            .saturating_mul(SHARE_ENTRY_BYTES)
            .saturating_add(LARGE_FRAME_OVERHEAD)
            .max(CONTROL_MAX_FRAME_LEN);
        Self {
            masked_input: (vector_len as usize)
                .saturating_mul(4)
                .saturating_add(LARGE_FRAME_OVERHEAD)
                .max(CONTROL_MAX_FRAME_LEN),
            share_keys: shares,
            unmask: shares,
        }
    }

    /// The largest of the three.
    pub fn max(&self) -> usize {
        self.masked_input.max(self.share_keys).max(self.unmask)
    }
}

/// Bounded decoding, for `#[serde(deserialize_with = "...")]` on the fields of wire types.
/// Each function refuses its input as soon as a bound is crossed, before allocating for it.
pub mod de {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{DeserializeOwned, Deserializer, Error, SeqAccess, Visitor};
    use serde_bytes::ByteBuf;

    struct StrVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for StrVisitor<N> {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a text string of at most {N} bytes")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            if v.len() > N {
                return Err(E::custom(format!(
                    "text of {} bytes exceeds the limit of {N}",
                    v.len()
                )));
            }
            Ok(v.to_owned())
        }
    }

    /// A string of at most `N` bytes.
    pub fn string<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<String, D::Error> {
        d.deserialize_str(StrVisitor::<N>)
    }

    /// An optional string of at most `N` bytes.
    pub fn opt_string<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        Option::<Bounded<String, N>>::deserialize(d).map(|o| o.map(|b| b.0))
    }

    struct BytesVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for BytesVisitor<N> {
        type Value = ByteBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of at most {N} bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
            if v.len() > N {
                return Err(E::custom(format!(
                    "byte string of {} bytes exceeds the limit of {N}",
                    v.len()
                )));
            }
            Ok(ByteBuf::from(v.to_vec()))
        }
    }

    /// A byte string of at most `N` bytes.
    pub fn bytes<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<ByteBuf, D::Error> {
        d.deserialize_bytes(BytesVisitor::<N>)
    }

    /// An optional byte string of at most `N` bytes.
    pub fn opt_bytes<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<ByteBuf>, D::Error> {
        Option::<Bounded<ByteBuf, N>>::deserialize(d).map(|o| o.map(|b| b.0))
    }

    struct SeqVisitor<T, const N: usize>(PhantomData<T>);

    impl<'de, T: DeserializeOwned, const N: usize> Visitor<'de> for SeqVisitor<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} entries")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if let Some(hint) = seq.size_hint()
                && hint > N
            {
                return Err(A::Error::custom(format!(
                    "list of {hint} entries exceeds the limit of {N}"
                )));
            }
            // The hint is the peer's claim: preallocate no more than a few entries for it.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(v) = seq.next_element::<T>()? {
                if out.len() == N {
                    return Err(A::Error::custom(format!(
                        "list of more than {N} entries exceeds the limit"
                    )));
                }
                out.push(v);
            }
            Ok(out)
        }
    }

    /// A list of at most `N` entries.
    pub fn vec<'de, D: Deserializer<'de>, T: DeserializeOwned, const N: usize>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(SeqVisitor::<T, N>(PhantomData))
    }

    /// A list of at most `N` strings of at most `L` bytes each.
    pub fn strings<'de, D: Deserializer<'de>, const N: usize, const L: usize>(
        d: D,
    ) -> Result<Vec<String>, D::Error> {
        let v = d.deserialize_seq(SeqVisitor::<Bounded<String, L>, N>(PhantomData))?;
        Ok(v.into_iter().map(|b| b.0).collect())
    }

    /// A value decoded under a bound of `N` bytes (strings and byte strings).
    struct Bounded<T, const N: usize>(T);

    impl<'de, const N: usize> Deserialize<'de> for Bounded<String, N> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            string::<D, N>(d).map(Bounded)
        }
    }

    impl<'de, const N: usize> Deserialize<'de> for Bounded<ByteBuf, N> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            bytes::<D, N>(d).map(Bounded)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AuthMessage, Capabilities, ClientMessage, EncryptedShares, Hello, MaskedInput,
        PackedVector, RevealedShare, RoundId, ShareKeysResponse, UnmaskResponse, decode_payload,
        encode_frame,
    };
    use serde_bytes::ByteBuf;

    fn payload(msg: &ClientMessage) -> Vec<u8> {
        encode_frame(msg, usize::MAX).unwrap()[4..].to_vec()
    }

    fn hello(backends: Vec<String>) -> ClientMessage {
        ClientMessage::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            software: "test".into(),
            capabilities: Capabilities {
                max_frame_len: 1,
                secagg_suites: vec![],
                backends,
            },
        })
    }

    #[test]
    fn peek_reads_every_client_variant() {
        let msgs = [
            hello(vec![]),
            ClientMessage::Auth(AuthMessage::LoginFinish {
                finalization: ByteBuf::from(vec![1; 64]),
            }),
            ClientMessage::MaskedInput(MaskedInput {
                round_id: RoundId(1),
                vector: PackedVector::pack(&[1, 2, 3], 32).unwrap(),
            }),
        ];
        for m in &msgs {
            let p = payload(m);
            assert_eq!(
                peek_variant(&p[..KIND_PEEK_LEN.min(p.len())]),
                Some(m.kind())
            );
        }
        assert_eq!(peek_variant(&[0, 1]), None);
        assert_eq!(peek_variant(&[0, 1, 0xa1, 0x65, b'H']), None, "cut short");
        assert_eq!(peek_variant(&[0, 1, 0xbf]), None, "indefinite map");
        // Every variant name fits the peek window.
        for name in [
            "Hello",
            "Auth",
            "CheckIn",
            "FetchWeights",
            "AdvertiseKeys",
            "ShareKeys",
            "MaskedInput",
            "ConsistencyCheck",
            "Unmask",
            "Ledger",
            "Error",
        ] {
            assert!(VERSION_LEN + 3 + name.len() <= KIND_PEEK_LEN);
            assert_ne!(ClientKind::from_variant(Some(name)), ClientKind::Unknown);
        }
    }

    /// The amplifying hello of issue 14 (a list of empty strings) is refused while decoding,
    /// and long strings too; a normal hello decodes.
    #[test]
    fn lists_and_strings_are_bounded_at_decode() {
        let ok = hello(vec!["flex".into(), "wgpu".into()]);
        assert_eq!(decode_payload::<ClientMessage>(&payload(&ok)).unwrap(), ok);
        let many = hello(vec![String::new(); MAX_CAPABILITY_ITEMS + 1]);
        let e = decode_payload::<ClientMessage>(&payload(&many)).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        let long = hello(vec!["x".repeat(MAX_SHORT_TEXT_LEN + 1)]);
        assert!(decode_payload::<ClientMessage>(&payload(&long)).is_err());
        let name = ClientMessage::Auth(AuthMessage::LoginStart {
            username: "u".repeat(MAX_SHORT_TEXT_LEN + 1),
            request: ByteBuf::from(vec![0; 32]),
        });
        assert!(decode_payload::<ClientMessage>(&payload(&name)).is_err());
        let opaque = ClientMessage::Auth(AuthMessage::LoginStart {
            username: "u".into(),
            request: ByteBuf::from(vec![0; MAX_OPAQUE_MESSAGE_LEN + 1]),
        });
        assert!(decode_payload::<ClientMessage>(&payload(&opaque)).is_err());
        let invite = ClientMessage::Auth(AuthMessage::RegisterStart {
            username: "u".into(),
            invite: Some("i".repeat(MAX_SHORT_TEXT_LEN + 1)),
            request: ByteBuf::from(vec![0; 32]),
        });
        assert!(decode_payload::<ClientMessage>(&payload(&invite)).is_err());
        let invite_ok = ClientMessage::Auth(AuthMessage::RegisterStart {
            username: "u".into(),
            invite: None,
            request: ByteBuf::from(vec![0; 32]),
        });
        assert_eq!(
            decode_payload::<ClientMessage>(&payload(&invite_ok)).unwrap(),
            invite_ok
        );
    }

    /// The round's largest honest messages fit the limits sized from its parameters.
    #[test]
    fn round_limits_fit_honest_messages() {
        for (m, k) in [(2_411u32, 4u32), (100_001, 99), (1_000_016, 1_000)] {
            let limits = RoundFrameLimits::for_round(m, k);
            let masked = ClientMessage::MaskedInput(MaskedInput {
                round_id: RoundId(u64::MAX),
                vector: PackedVector::pack(&vec![u32::MAX; m as usize], 32).unwrap(),
            });
            assert!(payload(&masked).len() <= limits.masked_input);
            // Sized from the parameters: the packed input at the round's ring bits fits, and
            // limits are no larger than the 32-bit ones.
            for r in [8u8, 20, 24, 26, 32] {
                let params = crate::SecAggParams {
                    num_clients: 3,
                    neighbours: k,
                    threshold: 2,
                    min_survivors: 2,
                    vector_len: m,
                    suite: crate::CipherSuite::X25519HkdfSha256ChaCha20V1,
                    encoding: crate::EncodingParams {
                        clip: 1.0,
                        value_bits: 8,
                        max_weight: 1,
                        ring_bits: r,
                    },
                    consistency_check: false,
                };
                let packed = RoundFrameLimits::for_params(&params);
                let masked = ClientMessage::MaskedInput(MaskedInput {
                    round_id: RoundId(u64::MAX),
                    vector: PackedVector::pack(&vec![u32::MAX; m as usize], r).unwrap(),
                });
                assert!(payload(&masked).len() <= packed.masked_input, "m {m} r {r}");
                assert!(packed.masked_input <= limits.masked_input);
                assert_eq!(packed.share_keys, limits.share_keys);
            }
            let shares = ClientMessage::ShareKeys(ShareKeysResponse {
                round_id: RoundId(u64::MAX),
                shares: (0..=k)
                    .map(|i| EncryptedShares {
                        peer: crate::ClientIndex(u32::MAX - i),
                        ciphertext: ByteBuf::from(vec![0xff; 104]),
                    })
                    .collect(),
            });
            assert!(payload(&shares).len() <= limits.share_keys);
            let share = |i| RevealedShare {
                owner: crate::ClientIndex(u32::MAX - i),
                share: ByteBuf::from(vec![0xff; 40]),
            };
            let unmask = ClientMessage::Unmask(UnmaskResponse {
                round_id: RoundId(u64::MAX),
                self_mask_shares: (0..=k / 2).map(share).collect(),
                key_shares: (k / 2 + 1..=k).map(share).collect(),
            });
            assert!(payload(&unmask).len() <= limits.unmask);
            // Not much more than that either: a 4 MB model does not open 16 MiB frames.
            assert!(limits.masked_input <= (4 * m as usize + 1024).max(CONTROL_MAX_FRAME_LEN));
        }
    }

    #[test]
    fn kinds_get_their_limits() {
        let r = RoundFrameLimits::for_round(1_000_000, 10);
        let k = |name| ClientKind::from_variant(Some(name));
        assert_eq!(k("Hello").frame_limit(false, None), PRE_AUTH_MAX_FRAME_LEN);
        assert!(k("MaskedInput").frame_limit(false, Some(&r)) <= 1024);
        assert_eq!(
            k("CheckIn").frame_limit(true, Some(&r)),
            CONTROL_MAX_FRAME_LEN
        );
        assert_eq!(k("MaskedInput").frame_limit(true, Some(&r)), r.masked_input);
        assert_eq!(
            k("MaskedInput").frame_limit(true, None),
            CONTROL_MAX_FRAME_LEN,
            "no seat, no large frame"
        );
        assert!(ClientKind::Unknown.frame_limit(true, Some(&r)) <= 1024);
    }
}
