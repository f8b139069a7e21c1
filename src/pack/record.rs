//! The lean index record: a fixed 80-byte little-endian layout, the
//! value sled would keep per key in storage core v2 (in place of today's
//! CBOR record with inline headers).
//!
//! ```text
//! off len field
//!  0   1  version (1)
//!  1   1  flags: bit 0 pinned, bit 1 payload is a blob file, bit 2 zstd
//!         (else raw); bits 3-7 zero
//!  2   2  zstd dictionary id (0 = none)
//!  4  12  location. In a pack: pack id u32, needle offset u32 (packs are
//!         at most 4 GiB), needle length u32. Blob file: stored size u64,
//!         then 4 zero bytes.
//! 16   6  raw size (u48)
//! 22  32  blake3 of the raw payload
//! 54   6  expires at, ms since the epoch (u48; all ones = never)
//! 60   6  created at, ms (u48, saturating)
//! 66   6  fetched at, ms (u48, saturating)
//! 72   8  header-set id (0 = no headers): names the entry's header set
//!         (content type, category, headers), stored once per distinct set
//! ```
//!
//! Hit counts and last-access times are not in the record (they change on
//! reads); they belong in a separate, batched table.

use super::needle::{HEADER_LEN, MAX_RAW};
use super::{FILE_HEADER_LEN, Location};
use crate::blobs::BlobHash;

/// Bytes of an encoded lean record.
pub const LEAN_LEN: usize = 80;
/// Version byte written by this build.
pub const LEAN_VERSION: u8 = 1;
/// Largest value of a 48-bit field; as a time it means "never" / saturated.
const U48_MAX: u64 = (1 << 48) - 1;

const PINNED: u8 = 1;
const BLOB_FILE: u8 = 2;
const ZSTD: u8 = 4;

/// Where an entry's payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A needle in a pack.
    Pack(Location),
    /// A blob file `blobs/ab/cd…` named by the hash, of this stored size.
    BlobFile {
        /// Bytes of the blob file.
        stored_size: u64,
    },
}

/// One entry's index record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeanRecord {
    /// Where the payload is.
    pub place: Place,
    /// blake3 of the raw payload.
    pub hash: BlobHash,
    /// Payload size.
    pub raw_size: u64,
    /// Stored with zstd (else raw).
    pub zstd: bool,
    /// zstd dictionary id (0 = none).
    pub dict: u16,
    /// Expiry in ms since the epoch (`u64::MAX` = never).
    pub expires_at: u64,
    /// When the entry was written (ms).
    pub created_at: u64,
    /// When the upstream produced the payload (ms).
    pub fetched_at: u64,
    /// Never evicted by the size cap.
    pub pinned: bool,
    /// Header-set id (0 = none).
    pub header_set: u64,
}

impl LeanRecord {
    /// Bytes the payload takes where it is stored (a pack needle's whole
    /// length, or the blob file's size).
    pub fn stored_size(&self) -> u64 {
        match self.place {
            Place::Pack(loc) => u64::from(loc.len),
            Place::BlobFile { stored_size } => stored_size,
        }
    }

    /// Encodes the record. Fails on values the layout cannot hold (a pack
    /// offset past 4 GiB, a payload past 256 TiB); times saturate.
    pub fn encode(&self) -> Result<[u8; LEAN_LEN], String> {
        let mut b = [0u8; LEAN_LEN];
        b[0] = LEAN_VERSION;
        b[1] = flag(self.pinned, PINNED) | flag(self.zstd, ZSTD);
        b[2..4].copy_from_slice(&self.dict.to_le_bytes());
        match self.place {
            Place::Pack(loc) => {
                let offset = u32::try_from(loc.offset).map_err(|_| "pack offset past 4 GiB")?;
                b[4..8].copy_from_slice(&loc.pack.to_le_bytes());
                b[8..12].copy_from_slice(&offset.to_le_bytes());
                b[12..16].copy_from_slice(&loc.len.to_le_bytes());
            }
            Place::BlobFile { stored_size } => {
                b[1] |= BLOB_FILE;
                b[4..12].copy_from_slice(&stored_size.to_le_bytes());
            }
        }
        if self.raw_size > U48_MAX {
            return Err(format!("payload of {} bytes is too large", self.raw_size));
        }
        put48(&mut b[16..22], self.raw_size);
        b[22..54].copy_from_slice(&self.hash.0);
        put48(&mut b[54..60], self.expires_at.min(U48_MAX));
        put48(&mut b[60..66], self.created_at.min(U48_MAX));
        put48(&mut b[66..72], self.fetched_at.min(U48_MAX));
        b[72..80].copy_from_slice(&self.header_set.to_le_bytes());
        Ok(b)
    }

    /// Decodes a record; any other bytes are an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<LeanRecord, String> {
        let b: &[u8; LEAN_LEN] = b
            .try_into()
            .map_err(|_| format!("a lean record is {LEAN_LEN} bytes, not {}", b.len()))?;
        if b[0] != LEAN_VERSION {
            return Err(format!(
                "lean record version {} is not known to this build",
                b[0]
            ));
        }
        let flags = b[1];
        if flags & !(PINNED | BLOB_FILE | ZSTD) != 0 {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        let raw_size = get48(&b[16..22]);
        let place = decode_place(b, flags & BLOB_FILE != 0, raw_size)?;
        Ok(LeanRecord {
            place,
            hash: BlobHash(b[22..54].try_into().map_err(|_| "short hash")?),
            raw_size,
            zstd: flags & ZSTD != 0,
            dict: u16::from_le_bytes([b[2], b[3]]),
            expires_at: time48(get48(&b[54..60])),
            created_at: time48(get48(&b[60..66])),
            fetched_at: time48(get48(&b[66..72])),
            pinned: flags & PINNED != 0,
            header_set: u64::from_le_bytes(b[72..80].try_into().map_err(|_| "short id")?),
        })
    }
}

fn decode_place(b: &[u8; LEAN_LEN], blob_file: bool, raw_size: u64) -> Result<Place, String> {
    if blob_file {
        if b[12..16] != [0; 4] {
            return Err("blob-file record with location bytes set".into());
        }
        let stored_size = u64::from_le_bytes(b[4..12].try_into().map_err(|_| "short size")?);
        return Ok(Place::BlobFile { stored_size });
    }
    let le32 = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let loc = Location {
        pack: le32(4),
        offset: u64::from(le32(8)),
        len: le32(12),
    };
    if loc.pack == 0 || loc.offset < FILE_HEADER_LEN || (loc.len as usize) < HEADER_LEN {
        return Err(format!("not a needle location: {loc:?}"));
    }
    if raw_size > u64::from(MAX_RAW) {
        return Err(format!("a pack needle cannot hold {raw_size} bytes"));
    }
    Ok(Place::Pack(loc))
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn put48(out: &mut [u8], v: u64) {
    out.copy_from_slice(&v.to_le_bytes()[..6]);
}

fn get48(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..6].copy_from_slice(b);
    u64::from_le_bytes(w)
}

fn time48(v: u64) -> u64 {
    if v == U48_MAX { u64::MAX } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LeanRecord {
        LeanRecord {
            place: Place::Pack(Location {
                pack: 3,
                offset: 4096,
                len: 700,
            }),
            hash: BlobHash::of(b"payload"),
            raw_size: 1200,
            zstd: true,
            dict: 0,
            expires_at: u64::MAX,
            created_at: 1_764_000_000_000,
            fetched_at: 1_763_999_999_000,
            pinned: false,
            header_set: 0x0123_4567_89ab_cdef,
        }
    }

    #[test]
    fn fits_in_eighty_bytes_and_round_trips() {
        let r = sample();
        let b = r.encode().unwrap();
        assert_eq!(b.len(), 80);
        assert_eq!(LeanRecord::decode(&b).unwrap(), r);
        let blob = LeanRecord {
            place: Place::BlobFile {
                stored_size: 5 << 30,
            },
            pinned: true,
            ..r
        };
        assert_eq!(LeanRecord::decode(&blob.encode().unwrap()).unwrap(), blob);
    }

    #[test]
    fn refuses_what_it_cannot_hold_and_bad_bytes() {
        let far = LeanRecord {
            place: Place::Pack(Location {
                pack: 1,
                offset: 1 << 32,
                len: 100,
            }),
            ..sample()
        };
        assert!(far.encode().is_err());
        assert!(
            LeanRecord {
                raw_size: 1 << 48,
                ..sample()
            }
            .encode()
            .is_err()
        );
        let good = sample().encode().unwrap();
        assert!(LeanRecord::decode(&good[..79]).is_err());
        let mut b = good;
        b[0] = 2;
        assert!(LeanRecord::decode(&b).is_err());
        let mut b = good;
        b[1] |= 0x80;
        assert!(LeanRecord::decode(&b).is_err());
        let mut b = good;
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(LeanRecord::decode(&b).is_err(), "pack 0");
    }

    #[test]
    fn times_saturate_to_never() {
        let r = LeanRecord {
            created_at: u64::MAX - 5,
            expires_at: U48_MAX + 9,
            ..sample()
        };
        let d = LeanRecord::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(d.created_at, u64::MAX);
        assert_eq!(d.expires_at, u64::MAX);
    }

    fn arb_record() -> impl Strategy<Value = LeanRecord> {
        let place = prop_oneof![
            (
                1u32..,
                FILE_HEADER_LEN..=u64::from(u32::MAX),
                HEADER_LEN as u32..
            )
                .prop_map(|(pack, offset, len)| Place::Pack(Location {
                    pack,
                    offset,
                    len
                })),
            any::<u64>().prop_map(|stored_size| Place::BlobFile { stored_size }),
        ];
        let time = prop_oneof![0..U48_MAX, Just(u64::MAX)];
        (
            place,
            any::<[u8; 32]>(),
            0..=u64::from(MAX_RAW),
            any::<(bool, bool, u16, u64)>(),
            (time.clone(), time.clone(), time),
        )
            .prop_map(
                |(place, h, raw_size, (zstd, pinned, dict, header_set), (e, c, f))| LeanRecord {
                    place,
                    hash: BlobHash(h),
                    raw_size,
                    zstd,
                    dict,
                    expires_at: e,
                    created_at: c,
                    fetched_at: f,
                    pinned,
                    header_set,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(r in arb_record()) {
            let b = r.encode().unwrap();
            prop_assert_eq!(LeanRecord::decode(&b).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(r) = LeanRecord::decode(&bytes) {
                // Whatever decodes re-encodes to the same bytes.
                prop_assert_eq!(&r.encode().unwrap()[..], &bytes[..]);
            }
        }

        #[test]
        fn decode_of_damaged_records_never_panics(r in arb_record(), at in 0usize..80, x in 1u8..) {
            let mut b = r.encode().unwrap();
            b[at] ^= x;
            let _ = LeanRecord::decode(&b);
        }
    }
}
