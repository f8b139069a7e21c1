//! What an entry looks like in Redis: its key names and its value (CBOR
//! with short field names, the stored blob bytes inside when small).

#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::blobs::BlobHash;
use crate::record::{self, Codec};

/// Version written in every remote entry.
pub const ENTRY_VERSION: u32 = 1;

/// The Redis key of the entry stored under index key `key`.
pub fn entry_key(prefix: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 2 + key.len());
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(b"e:");
    k.extend_from_slice(key);
    k
}

/// The Redis key of a blob kept apart from its entries.
pub fn blob_key(prefix: &str, hash: &BlobHash) -> String {
    format!("{prefix}b:{}", hash.to_hex())
}

/// A `SCAN MATCH` pattern for every entry whose index key starts with
/// `key_prefix` (glob characters escaped).
pub fn entry_pattern(prefix: &str, key_prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for &b in prefix.as_bytes().iter().chain(b"e:").chain(key_prefix) {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

/// An entry as stored in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    /// Format version.
    #[serde(rename = "v")]
    pub version: u32,
    /// blake3 of the raw payload.
    #[serde(rename = "h")]
    pub hash: BlobHash,
    /// How the stored bytes are encoded.
    #[serde(rename = "c")]
    pub codec: Codec,
    /// Payload size.
    #[serde(rename = "rs")]
    pub raw_size: u64,
    /// When the upstream produced the payload (ms since epoch).
    #[serde(rename = "fa")]
    pub fetched_at: u64,
    /// When the entry expires (ms since epoch).
    #[serde(rename = "ea")]
    pub expires_at: u64,
    /// Category name.
    #[serde(rename = "g")]
    pub category: String,
    /// Content type.
    #[serde(rename = "ct", default)]
    pub content_type: Option<String>,
    /// Response headers, secrets already removed.
    #[serde(rename = "hd", default)]
    pub headers: Vec<(String, String)>,
    /// Exempt from size-cap eviction.
    #[serde(rename = "p", default)]
    pub pinned: bool,
    /// The stored blob bytes, when small enough to travel with the entry;
    /// otherwise they are under [`blob_key`].
    #[serde(rename = "b", default)]
    pub blob: Option<ByteBuf>,
}

impl RemoteEntry {
    /// The value written to Redis.
    pub fn encode(&self) -> Vec<u8> {
        record::to_cbor(self)
    }

    /// Decodes a value read from Redis; `Err` says why it is unusable.
    pub fn decode(bytes: &[u8]) -> Result<RemoteEntry, String> {
        let e: RemoteEntry = record::from_cbor(bytes)?;
        if e.version > ENTRY_VERSION {
            return Err(format!("entry format version {} is newer", e.version));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let e = RemoteEntry {
            version: ENTRY_VERSION,
            hash: BlobHash::of(b"x"),
            codec: Codec::Raw,
            raw_size: 1,
            fetched_at: 5,
            expires_at: 9,
            category: "metadata".into(),
            content_type: Some("application/json".into()),
            headers: vec![("ETag".into(), "\"a\"".into())],
            pinned: true,
            blob: Some(ByteBuf::from(b"x".to_vec())),
        };
        assert_eq!(RemoteEntry::decode(&e.encode()), Ok(e));
        assert!(RemoteEntry::decode(b"\xff\x00garbage").is_err());
        assert!(RemoteEntry::decode(b"").is_err());
    }

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(entry_pattern("p:", b"a*b"), b"p:e:a\\*b*".to_vec());
        assert_eq!(entry_key("p:", b"\x01k"), b"p:e:\x01k".to_vec());
    }
}
