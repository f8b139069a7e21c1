//! What an entry looks like in Redis: its key names and its value (CBOR
//! with short field names, the stored blob bytes inside when small).

#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use std::time::Duration;

use crate::blobs::BlobHash;
use crate::key::Category;
use crate::options::PutOptions;
use crate::record::{self, Codec};
use crate::store::PutReport;

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

/// The codec of a put's stored bytes from its report.
pub fn codec_of(compressed: bool) -> Codec {
    match compressed {
        true => Codec::Zstd,
        false => Codec::Raw,
    }
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
    /// The entry of a local put (`report` and its `opts`, at `now`): the
    /// metadata its local record holds, headers redacted the same way
    /// (`drop_headers`), without the blob bytes. The one way in.
    pub fn of_put(
        report: &PutReport,
        opts: &PutOptions,
        now: u64,
        drop_headers: &[String],
    ) -> RemoteEntry {
        RemoteEntry {
            version: ENTRY_VERSION,
            hash: report.hash,
            codec: codec_of(report.compressed),
            raw_size: report.raw_size,
            fetched_at: opts.fetched_at.unwrap_or(now),
            expires_at: report.expires_at,
            category: opts.category.as_str().to_string(),
            content_type: opts.content_type.clone(),
            headers: record::redact_headers(&opts.headers, drop_headers),
            pinned: opts.pinned,
            blob: None,
        }
    }

    /// How a remote hit is stored locally at `now`: the same metadata and
    /// the remaining TTL. The one way out.
    pub fn put_options(&self, now: u64) -> PutOptions {
        let mut o = PutOptions::new()
            .ttl(Duration::from_millis(self.expires_at.saturating_sub(now)))
            .category(Category::parse(&self.category))
            .headers(self.headers.iter().cloned())
            .fetched_at(self.fetched_at)
            .pinned(self.pinned);
        if let Some(ct) = &self.content_type {
            o = o.content_type(ct.clone());
        }
        o
    }

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
    fn a_put_converts_to_an_entry_and_back_to_the_same_options() {
        let opts = PutOptions::new()
            .category(Category::List)
            .ttl(Duration::from_secs(60))
            .content_type("application/json")
            .header("ETag", "\"a\"")
            .header("X-Api-Key", "dropped")
            .fetched_at(7)
            .pinned(true);
        let report = PutReport {
            hash: BlobHash::of(b"{}"),
            raw_size: 2,
            stored_size: 2,
            compressed: false,
            inline: true,
            deduplicated: false,
            expires_at: 60_000 + 1_000,
        };
        let e = RemoteEntry::of_put(&report, &opts, 1_000, &["x-api-key".into()]);
        assert_eq!((e.codec, e.raw_size, e.fetched_at), (Codec::Raw, 2, 7));
        assert_eq!(e.headers, vec![("ETag".to_string(), "\"a\"".to_string())]);
        let back = e.put_options(1_000);
        let expected = PutOptions::new()
            .category(Category::List)
            .ttl(Duration::from_secs(60))
            .content_type("application/json")
            .header("ETag", "\"a\"")
            .fetched_at(7)
            .pinned(true);
        assert_eq!(back, expected);
    }

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(entry_pattern("p:", b"a*b"), b"p:e:a\\*b*".to_vec());
        assert_eq!(entry_key("p:", b"\x01k"), b"p:e:\x01k".to_vec());
    }
}
