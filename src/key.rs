//! Keys and TTL policy.
//!
//! An entry is named by `(backend, signature)`. In the index the pair is
//! encoded as `len(backend) as u8 ++ backend ++ signature`: the length prefix
//! makes the encoding injective (no two pairs share bytes) and puts all the
//! entries of one backend under one prefix, ordered by signature, so listing a
//! backend or a signature prefix is one sled range scan (ARCHITECTURE.md
//! §2, invariant 6).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Longest backend name accepted, in bytes.
pub const MAX_BACKEND_LEN: usize = 255;
/// Longest signature accepted, in bytes.
pub const MAX_SIGNATURE_LEN: usize = 4096;

/// Checks a backend name: non-empty, at most [`MAX_BACKEND_LEN`] bytes, no NUL.
pub fn validate_backend(backend: &str) -> Result<()> {
    if backend.is_empty() {
        return Err(Error::EmptyBackend);
    }
    if backend.len() > MAX_BACKEND_LEN {
        return Err(Error::KeyTooLong {
            part: "backend",
            len: backend.len(),
            max: MAX_BACKEND_LEN,
        });
    }
    if backend.contains('\0') {
        return Err(Error::NulInBackend {
            backend: backend.to_string(),
        });
    }
    Ok(())
}

/// Encodes `(backend, signature)` into index key bytes.
///
/// ```
/// let k = blobcache::key::encode("tmdb", b"movie/603").unwrap();
/// assert_eq!(k[0] as usize, "tmdb".len());
/// assert_eq!(blobcache::key::decode(&k), Some(("tmdb".to_string(), b"movie/603".to_vec())));
/// ```
pub fn encode(backend: &str, signature: &[u8]) -> Result<Vec<u8>> {
    validate_backend(backend)?;
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(Error::KeyTooLong {
            part: "signature",
            len: signature.len(),
            max: MAX_SIGNATURE_LEN,
        });
    }
    let mut out = Vec::with_capacity(1 + backend.len() + signature.len());
    // validate_backend bounds the length to 255, so it fits in one byte.
    out.push(backend.len() as u8);
    out.extend_from_slice(backend.as_bytes());
    out.extend_from_slice(signature);
    Ok(out)
}

/// The key prefix shared by every entry of `backend` whose signature starts
/// with `signature_prefix` (pass `b""` for the whole backend).
pub fn prefix(backend: &str, signature_prefix: &[u8]) -> Result<Vec<u8>> {
    encode(backend, signature_prefix)
}

/// Decodes index key bytes back into `(backend, signature)`; `None` if the
/// bytes are not a valid key.
pub fn decode(key: &[u8]) -> Option<(String, Vec<u8>)> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return None;
    }
    let backend = std::str::from_utf8(&rest[..len]).ok()?;
    if backend.contains('\0') {
        return None;
    }
    Some((backend.to_string(), rest[len..].to_vec()))
}

/// A key for humans: `backend/signature`, the signature shown lossily as UTF-8.
pub fn display(key: &[u8]) -> String {
    match decode(key) {
        Some((b, s)) => format!("{b}/{}", String::from_utf8_lossy(&s)),
        None => format!("<undecodable key {}>", hex(key)),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What kind of response an entry holds; it picks the default TTL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Category {
    /// Details of one item (a movie, an anime, a book): 72 hours by default.
    #[default]
    Metadata,
    /// A page of a list or search: 24 hours.
    List,
    /// Air dates and release schedules: 1 hour.
    Schedule,
    /// Trending and popular lists: 1 hour.
    Trending,
    /// A whole-dataset snapshot kept for offline use: 30 days.
    OfflineDump,
    /// Any other name; its TTL is the per-store override for that name, or
    /// the metadata TTL.
    Other(String),
}

impl Category {
    /// The stable name stored in records and accepted on the command line.
    pub fn as_str(&self) -> &str {
        match self {
            Category::Metadata => "metadata",
            Category::List => "list",
            Category::Schedule => "schedule",
            Category::Trending => "trending",
            Category::OfflineDump => "offline_dump",
            Category::Other(s) => s,
        }
    }

    /// Parses a category name; unknown names become [`Category::Other`].
    pub fn parse(s: &str) -> Category {
        match s {
            "metadata" => Category::Metadata,
            "list" => Category::List,
            "schedule" => Category::Schedule,
            "trending" => Category::Trending,
            "offline_dump" | "offline-dump" => Category::OfflineDump,
            other => Category::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Category::parse(s))
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Default TTL per category, with per-store overrides.
///
/// ```
/// use blobcache::{Category, TtlPolicy};
/// use std::time::Duration;
///
/// let policy = TtlPolicy::default().with(Category::List, Duration::from_secs(600));
/// assert_eq!(policy.ttl_for(&Category::List), Duration::from_secs(600));
/// assert_eq!(policy.ttl_for(&Category::Metadata), Duration::from_secs(72 * 3600));
/// // Unknown categories fall back to the metadata TTL.
/// assert_eq!(policy.ttl_for(&Category::parse("posters")), Duration::from_secs(72 * 3600));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    table: BTreeMap<Category, Duration>,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        let table = BTreeMap::from([
            (Category::Metadata, 72 * HOUR),
            (Category::List, 24 * HOUR),
            (Category::Schedule, HOUR),
            (Category::Trending, HOUR),
            (Category::OfflineDump, 30 * 24 * HOUR),
        ]);
        TtlPolicy { table }
    }
}

impl TtlPolicy {
    /// Overrides the TTL of one category (including [`Category::Other`] names).
    pub fn with(mut self, category: Category, ttl: Duration) -> Self {
        self.table.insert(category, ttl);
        self
    }

    /// The TTL for `category`: its entry in the table, else the metadata TTL.
    pub fn ttl_for(&self, category: &Category) -> Duration {
        self.table
            .get(category)
            .or_else(|| self.table.get(&Category::Metadata))
            .copied()
            .unwrap_or(72 * HOUR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_backends() {
        assert!(matches!(encode("", b"x"), Err(Error::EmptyBackend)));
        assert!(matches!(
            encode("a\0b", b"x"),
            Err(Error::NulInBackend { .. })
        ));
        let long = "b".repeat(MAX_BACKEND_LEN + 1);
        assert!(matches!(
            encode(&long, b"x"),
            Err(Error::KeyTooLong {
                part: "backend",
                ..
            })
        ));
        let sig = vec![b's'; MAX_SIGNATURE_LEN + 1];
        assert!(matches!(
            encode("b", &sig),
            Err(Error::KeyTooLong {
                part: "signature",
                ..
            })
        ));
        assert!(encode(&"b".repeat(MAX_BACKEND_LEN), &sig[1..]).is_ok());
    }

    #[test]
    fn backend_prefix_does_not_match_longer_backend() {
        let p = prefix("tmdb", b"").unwrap();
        let other = encode("tmdb2", b"x").unwrap();
        assert!(!other.starts_with(&p));
        assert!(encode("tmdb", b"x").unwrap().starts_with(&p));
    }
}
