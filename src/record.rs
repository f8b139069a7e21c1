//! The values kept in the index, encoded as CBOR.
//!
//! Two kinds of value live in sled:
//! - [`Record`]: one per entry, under the entry's key;
//! - [`BlobInfo`]: one per blob, under its hash, holding the refcount.
//!
//! Both are CBOR maps with short field names (they are stored once per entry,
//! so every byte counts at a million entries) and a version field. Decoding
//! ignores fields it does not know, so a record written by a newer minor
//! version still reads; fields added later must carry `#[serde(default)]`.

use serde::{Deserialize, Serialize};

use crate::hash::BlobHash;

/// Version written in every record and blob info.
pub const RECORD_VERSION: u32 = 1;

/// How a blob's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// Stored as-is (compression would not have shrunk it).
    #[serde(rename = "r")]
    Raw,
    /// One or more zstd frames.
    #[serde(rename = "z")]
    Zstd,
}

/// The index record of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record format version.
    #[serde(rename = "v")]
    pub version: u32,
    /// blake3 of the raw payload: names the blob.
    #[serde(rename = "h")]
    pub hash: BlobHash,
    /// How the blob is stored.
    #[serde(rename = "c")]
    pub codec: Codec,
    /// The blob lives in the index's inline tree rather than in `blobs/`.
    #[serde(rename = "i")]
    pub inline: bool,
    /// Payload size in bytes.
    #[serde(rename = "rs")]
    pub raw_size: u64,
    /// Size of the stored (possibly compressed) blob in bytes.
    #[serde(rename = "ss")]
    pub stored_size: u64,
    /// When the entry was written (ms since epoch).
    #[serde(rename = "ca")]
    pub created_at: u64,
    /// When the upstream produced the payload (ms since epoch).
    #[serde(rename = "fa")]
    pub fetched_at: u64,
    /// When the entry stops being served by `get` (ms since epoch).
    #[serde(rename = "ea")]
    pub expires_at: u64,
    /// Category name (see [`crate::Category::as_str`]).
    #[serde(rename = "cat")]
    pub category: String,
    /// Content type of the payload, if known.
    #[serde(rename = "ct", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Response headers kept with the payload, in order, secrets removed.
    #[serde(rename = "hd", default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Number of hits served (updated in batches).
    #[serde(rename = "n", default)]
    pub hits: u64,
    /// Last read or write (ms since epoch; updated in batches).
    #[serde(rename = "la", default)]
    pub last_access: u64,
    /// Pinned entries are never evicted by the size cap.
    #[serde(rename = "p", default, skip_serializing_if = "is_false")]
    pub pinned: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// True when an entry with these fields was neither read nor written
/// before `before` (ms) and is not pinned: what
/// [`crate::Store::remove_unused_since`] removes.
pub fn unused_before(pinned: bool, last_access: u64, created_at: u64, before: u64) -> bool {
    !pinned && last_access.max(created_at) < before
}

/// Where a blob's refcount stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobState {
    /// Present; `refs` entries point to it (0 = orphan, awaiting GC).
    #[serde(rename = "l")]
    Live,
    /// The sweeper has claimed the blob and is deleting its file; a put that
    /// needs it must wait and write the file again.
    #[serde(rename = "d")]
    Deleting,
    /// The file was deleted by the sweeper. A put that finds this state knows
    /// its earlier existence check may predate the deletion, so it writes the
    /// file again before referencing it.
    #[serde(rename = "g")]
    Gone,
}

/// The index's view of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Format version.
    #[serde(rename = "v")]
    pub version: u32,
    /// Number of entries pointing to the blob.
    #[serde(rename = "n")]
    pub refs: u64,
    /// Lifecycle state (see [`BlobState`]).
    #[serde(rename = "s")]
    pub state: BlobState,
    /// How the blob is stored.
    #[serde(rename = "c")]
    pub codec: Codec,
    /// Kept in the inline tree rather than as a file.
    #[serde(rename = "i")]
    pub inline: bool,
    /// Raw payload size.
    #[serde(rename = "rs")]
    pub raw_size: u64,
    /// Stored size.
    #[serde(rename = "ss")]
    pub stored_size: u64,
    /// Bytes the blob occupies on disk (allocated blocks for files, stored
    /// size for inline blobs); what the size cap counts.
    #[serde(rename = "db")]
    pub disk_bytes: u64,
    /// When the blob was first referenced or the state last changed.
    #[serde(rename = "t")]
    pub since: u64,
    /// zstd level the sweeper recompressed the blob at (`None`: as written
    /// by a put, at the store's level).
    #[serde(rename = "lv", default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
}

/// Encodes any serde value as CBOR.
pub(crate) fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail, and our types have no fallible
    // Serialize impls; an error here would be a bug in this crate.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        log::error!("CBOR encoding failed: {e}");
    }
    out
}

/// Decodes a CBOR value, returning a short description of the failure.
///
/// The decoder's 4 KiB scratch space is kept per thread: `from_reader`
/// would zero a fresh one on every call, which cost about as much as the
/// decoding itself for a ~200-byte record.
pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
    }
    SCRATCH
        .with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => ciborium::de::from_reader_with_buffer(bytes, &mut scratch),
            Err(_) => ciborium::from_reader(bytes),
        })
        .map_err(|e| e.to_string())
}

/// Header names never stored, whatever the configuration says.
pub const ALWAYS_DROPPED_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// Removes secret-bearing headers: the fixed list above plus `extra`
/// (names compared case-insensitively). Order of the rest is kept.
pub(crate) fn redact_headers(
    headers: &[(String, String)],
    extra: &[String],
) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !is_dropped_header(name, extra))
        .cloned()
        .collect()
}

/// True when the header `name` is never stored: one of the always-dropped
/// credential headers or one named in `extra` (case-insensitive).
pub(crate) fn is_dropped_header(name: &str, extra: &[String]) -> bool {
    ALWAYS_DROPPED_HEADERS
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d))
        || extra.iter().any(|d| name.eq_ignore_ascii_case(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            version: RECORD_VERSION,
            hash: BlobHash::of(b"x"),
            codec: Codec::Zstd,
            inline: true,
            raw_size: 1,
            stored_size: 1,
            created_at: 5,
            fetched_at: 4,
            expires_at: 10,
            category: "metadata".into(),
            content_type: Some("application/json".into()),
            headers: vec![("ETag".into(), "\"1\"".into())],
            hits: 2,
            last_access: 7,
            pinned: false,
        }
    }

    #[test]
    fn record_round_trips() {
        let r = sample();
        let back: Record = from_cbor(&to_cbor(&r)).unwrap();
        assert_eq!(r, back);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // A newer writer adds a field: decode the record as a generic map,
        // add a key, re-encode and read it with today's type.
        let r = sample();
        let mut value: ciborium::Value = from_cbor(&to_cbor(&r)).unwrap();
        if let ciborium::Value::Map(m) = &mut value {
            m.push(("future".into(), ciborium::Value::Integer(42.into())));
        }
        let back: Record = from_cbor(&to_cbor(&value)).unwrap();
        assert_eq!(r, back);
    }

    #[test]
    fn redaction_is_case_insensitive_and_keeps_order() {
        let h = vec![
            ("Content-Type".to_string(), "a".to_string()),
            ("AUTHORIZATION".to_string(), "Bearer x".to_string()),
            ("X-Api-Key".to_string(), "k".to_string()),
            ("ETag".to_string(), "e".to_string()),
            ("set-cookie".to_string(), "s".to_string()),
        ];
        let out = redact_headers(&h, &["x-api-key".to_string()]);
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Content-Type", "ETag"]);
    }
}
