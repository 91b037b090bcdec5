//! Dense vectors carried as little-endian byte strings.
//!
//! serde_cbor writes a `Vec<f32>` as an array of tagged floats: 25% larger and about 15 times
//! slower to encode than a byte string (STACK-NOTES.md). These newtypes serialise as one CBOR
//! byte string and refuse a length that is not a whole number of elements, or anything that is
//! not a byte string (an array of integers is not accepted as a vector).

use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! le_vector {
    ($(#[$meta:meta])* $name:ident, $elem:ty) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name(pub Vec<$elem>);

        impl $name {
            /// Number of elements.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether the vector has no elements.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// Encodes the elements as little-endian bytes.
            pub fn to_le_bytes(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(self.0.len() * size_of::<$elem>());
                for v in &self.0 {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out
            }

            /// Decodes little-endian bytes; `None` when the length is not a multiple of the
            /// element size.
            pub fn from_le_bytes(bytes: &[u8]) -> Option<Self> {
                const W: usize = size_of::<$elem>();
                if bytes.len() % W != 0 {
                    return None;
                }
                Some(Self(
                    bytes
                        .chunks_exact(W)
                        .map(|c| <$elem>::from_le_bytes(c.try_into().expect("chunk of W bytes")))
                        .collect(),
                ))
            }
        }

        impl From<Vec<$elem>> for $name {
            fn from(v: Vec<$elem>) -> Self {
                Self(v)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.to_le_bytes())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct BytesVisitor;

                impl<'de> Visitor<'de> for BytesVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(
                            f,
                            "a byte string of little-endian {}-byte elements",
                            size_of::<$elem>()
                        )
                    }

                    // Decodes straight from the input: no intermediate copy of the bytes, so
                    // a vector costs its own size once, whatever the frame announced.
                    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<$name, E> {
                        $name::from_le_bytes(bytes).ok_or_else(|| {
                            E::custom(format!(
                                "a {} of {} bytes is not a whole number of {}-byte elements; \
                                 the sender must encode whole elements",
                                stringify!($name),
                                bytes.len(),
                                size_of::<$elem>()
                            ))
                        })
                    }
                }

                d.deserialize_bytes(BytesVisitor)
            }
        }
    };
}

le_vector!(
    /// A vector over the ring Z_{2^32}: masked inputs and masked sums.
    RingVector,
    u32
);
le_vector!(
    /// A vector of `f32`: model weights and updates in the fixed parameter layout.
    FloatVector,
    f32
);
