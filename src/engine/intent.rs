//! What a needle's record bytes mean to the engine: the index change the
//! needle stands for. The pack is the engine's write-ahead log, so every
//! index change is a needle first (see `ARCHITECTURE.md`, "Storage core v2").
//!
//! ```text
//! byte 0   op
//!   1 SET      then the 80-byte lean record that the key maps to
//!   2 DELETE   nothing more
//!   3 HEADERS  then the header-set id (u64 LE); the needle's payload is
//!              the header set as stored in the `headers` tree
//! ```

use crate::pack::{LEAN_LEN, LeanRecord};

const SET: u8 = 1;
const DELETE: u8 = 2;
const HEADERS: u8 = 3;

/// Bytes of a SET intent.
pub(crate) const SET_LEN: usize = 1 + LEAN_LEN;

/// One index change, as a needle records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// The needle's key now maps to this record.
    Set(LeanRecord),
    /// The needle's key is removed.
    Delete,
    /// The needle's payload is header set `id`.
    Headers(u64),
}

impl Intent {
    /// The record bytes of the needle.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        match self {
            Intent::Set(r) => {
                let mut out = Vec::with_capacity(SET_LEN);
                out.push(SET);
                out.extend_from_slice(&r.encode()?);
                Ok(out)
            }
            Intent::Delete => Ok(vec![DELETE]),
            Intent::Headers(id) => {
                let mut out = vec![HEADERS];
                out.extend_from_slice(&id.to_le_bytes());
                Ok(out)
            }
        }
    }

    /// Decodes a needle's record bytes; anything else is an error.
    pub(crate) fn decode(b: &[u8]) -> Result<Intent, String> {
        match b.split_first() {
            Some((&SET, rest)) => Ok(Intent::Set(LeanRecord::decode(rest)?)),
            Some((&DELETE, [])) => Ok(Intent::Delete),
            Some((&HEADERS, rest)) => {
                let id: [u8; 8] = rest
                    .try_into()
                    .map_err(|_| format!("header-set intent of {} bytes", b.len()))?;
                Ok(Intent::Headers(u64::from_le_bytes(id)))
            }
            Some((op, _)) => Err(format!("unknown intent {op} ({} bytes)", b.len())),
            None => Err("a needle without an intent".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::BlobHash;
    use crate::pack::{Location, Place};

    #[test]
    fn round_trips_and_refuses_noise() {
        let rec = LeanRecord {
            place: Place::Pack(Location {
                pack: 1,
                offset: 16,
                len: 200,
            }),
            hash: BlobHash::of(b"x"),
            raw_size: 1,
            zstd: false,
            dict: 0,
            expires_at: u64::MAX,
            created_at: 5,
            fetched_at: 4,
            pinned: true,
            header_set: 9,
        };
        for i in [Intent::Set(rec), Intent::Delete, Intent::Headers(42)] {
            assert_eq!(Intent::decode(&i.encode().unwrap()).unwrap(), i);
        }
        assert_eq!(Intent::Set(rec).encode().unwrap().len(), SET_LEN);
        for bad in [&[][..], &[2, 0], &[3, 1, 2], &[9], &[1, 1, 2, 3]] {
            assert!(Intent::decode(bad).is_err(), "{bad:?}");
        }
    }
}
