//! The content address: [`BlobHash`], the blake3 hash of a payload's raw
//! bytes that names its blob, and the buffer size streams hash and copy
//! with.
//!
//! The bottom of the crate with `key` and `error`: the record format, the
//! outboards, blob files, packs and the index all name payloads by it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The blake3 hash of a payload's raw bytes; it names the payload's blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex form (64 characters).
    pub fn to_hex(&self) -> String {
        crate::key::hex(&self.0)
    }

    /// Parses the 64-character hex form.
    pub fn from_hex(s: &str) -> Option<BlobHash> {
        let h = blake3::Hash::from_hex(s).ok()?;
        Some(BlobHash(*h.as_bytes()))
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BlobHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BlobHash, E> {
                let arr: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(BlobHash(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Streaming buffer size.
pub(crate) const CHUNK: usize = 128 * 1024;
