//! Needle framing: one payload inside a pack file, self-describing and
//! checksummed, so a pack can be scanned and verified without the index.
//!
//! Layout (all integers little-endian), `HEADER_LEN` = 60 bytes of header
//! followed by the body:
//!
//! ```text
//! off len field
//!  0   4  magic B1 CA 4E 44
//!  4   1  needle format version (1)
//!  5   1  codec: 0 raw, 1 zstd
//!  6   2  zstd dictionary id (0 = none)
//!  8   4  raw length (decoded payload bytes)
//! 12   4  stored length (payload bytes in the body)
//! 16   2  key length
//! 18   2  record length
//! 20  32  blake3 of the raw payload
//! 52   8  checksum: first 8 bytes of a keyed blake3 (derive-key context
//!         "blobcache pack needle v1") over bytes 0..52 and the body
//! 60      body: key, record, stored payload
//! ```

use std::sync::LazyLock;

use super::dict::Dictionary;
use crate::blobs::{self, BlobError, BlobHash};
use crate::record::Codec;

/// First bytes of every needle (not ASCII, so text payloads rarely hold it).
pub const MAGIC: [u8; 4] = [0xB1, 0xCA, 0x4E, 0x44];
/// Needle format version written by this build.
pub const NEEDLE_VERSION: u8 = 1;
/// Bytes of a needle header.
pub const HEADER_LEN: usize = 60;
/// Largest raw payload a needle holds; larger payloads are blob files.
pub const MAX_RAW: u32 = 64 << 20;
/// Offset of the checksum in the header.
const SUM_AT: usize = 52;

static SUM_KEY: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("blobcache pack needle v1"));

/// How a needle's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeedleCodec {
    /// The raw bytes.
    Raw,
    /// One zstd frame.
    Zstd,
}

impl NeedleCodec {
    fn byte(self) -> u8 {
        match self {
            NeedleCodec::Raw => 0,
            NeedleCodec::Zstd => 1,
        }
    }

    fn from_byte(b: u8) -> Option<NeedleCodec> {
        match b {
            0 => Some(NeedleCodec::Raw),
            1 => Some(NeedleCodec::Zstd),
            _ => None,
        }
    }

    fn as_codec(self) -> Codec {
        match self {
            NeedleCodec::Raw => Codec::Raw,
            NeedleCodec::Zstd => Codec::Zstd,
        }
    }
}

/// The decoded fixed header of a needle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedleHeader {
    /// How the payload is stored.
    pub codec: NeedleCodec,
    /// zstd dictionary id (0 = none).
    pub dict: u16,
    /// Decoded payload length.
    pub raw_len: u32,
    /// Stored payload length.
    pub stored_len: u32,
    /// Length of the key in the body.
    pub key_len: u16,
    /// Length of the record in the body.
    pub record_len: u16,
    /// blake3 of the raw payload.
    pub hash: BlobHash,
    /// The checksum written in the header.
    checksum: u64,
}

impl NeedleHeader {
    /// Bytes of the whole needle, header included.
    pub fn total_len(&self) -> usize {
        HEADER_LEN
            + usize::from(self.key_len)
            + usize::from(self.record_len)
            + self.stored_len as usize
    }

    /// Parses and sanity-checks the first `HEADER_LEN` bytes of `bytes`
    /// (the checksum is checked by [`parse`], which sees the body).
    pub fn parse(bytes: &[u8]) -> Result<NeedleHeader, String> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(format!(
                "{} bytes, shorter than a needle header",
                bytes.len()
            ));
        };
        if h[..4] != MAGIC {
            return Err("no needle magic".into());
        }
        if h[4] != NEEDLE_VERSION {
            return Err(format!(
                "needle version {} is not known to this build",
                h[4]
            ));
        }
        let codec =
            NeedleCodec::from_byte(h[5]).ok_or_else(|| format!("unknown codec {}", h[5]))?;
        let header = NeedleHeader {
            codec,
            dict: le16(&h[6..8]),
            raw_len: le32(&h[8..12]),
            stored_len: le32(&h[12..16]),
            key_len: le16(&h[16..18]),
            record_len: le16(&h[18..20]),
            hash: BlobHash(h[20..52].try_into().map_err(|_| "short hash")?),
            checksum: u64::from_le_bytes(
                h[SUM_AT..HEADER_LEN].try_into().map_err(|_| "short sum")?,
            ),
        };
        header.check_lengths()?;
        Ok(header)
    }

    fn check_lengths(&self) -> Result<(), String> {
        if self.raw_len > MAX_RAW {
            return Err(format!(
                "raw length {} exceeds the needle limit {MAX_RAW}",
                self.raw_len
            ));
        }
        match self.codec {
            NeedleCodec::Raw if self.stored_len != self.raw_len => Err(format!(
                "raw needle stores {} bytes for a {}-byte payload",
                self.stored_len, self.raw_len
            )),
            NeedleCodec::Zstd if self.stored_len == 0 || self.stored_len > MAX_RAW => {
                Err(format!("zstd needle with {} stored bytes", self.stored_len))
            }
            _ => Ok(()),
        }
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A verified needle borrowed from the bytes it was parsed from.
#[derive(Debug)]
pub struct NeedleRef<'a> {
    /// Its header.
    pub header: NeedleHeader,
    /// The key bytes stored with it (may be empty).
    pub key: &'a [u8],
    /// The record bytes stored with it (may be empty).
    pub record: &'a [u8],
    /// The stored payload.
    pub stored: &'a [u8],
}

impl NeedleRef<'_> {
    /// Decodes the payload and checks its length and blake3 against the
    /// header. Needles naming a dictionary are refused until dictionaries
    /// exist.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        self.payload_with(None)
    }

    /// Like [`NeedleRef::payload`], decoding with `dict` when the needle
    /// names one (it must be that dictionary).
    pub fn payload_with(&self, dict: Option<&Dictionary>) -> Result<Vec<u8>, String> {
        if self.header.dict != 0 {
            let Some(d) = dict.filter(|d| d.id() == self.header.dict) else {
                return Err(format!(
                    "needle needs zstd dictionary {}, which was not given",
                    self.header.dict
                ));
            };
            return self.decode_with(d);
        }
        let codec = self.header.codec.as_codec();
        blobs::decode(
            self.stored,
            codec,
            u64::from(self.header.raw_len),
            &self.header.hash,
        )
        .map_err(|e| match e {
            BlobError::Corrupt(s) => s,
            BlobError::Missing => "payload missing".into(),
            BlobError::Io(e) => e.to_string(),
        })
    }
}

impl NeedleRef<'_> {
    fn decode_with(&self, d: &Dictionary) -> Result<Vec<u8>, String> {
        if self.header.codec != NeedleCodec::Zstd {
            return Err("a raw needle names a dictionary".into());
        }
        let raw_len = self.header.raw_len as usize;
        let raw = d.decompress(self.stored, raw_len)?;
        if raw.len() != raw_len {
            return Err(format!("decoded {} bytes, expected {raw_len}", raw.len()));
        }
        if BlobHash::of(&raw) != self.header.hash {
            return Err("content does not match its hash".into());
        }
        Ok(raw)
    }
}

fn checksum(head: &[u8], body: &[u8]) -> u64 {
    let mut h = SUM_KEY.clone();
    h.update(&head[..SUM_AT]);
    h.update(body);
    let out = h.finalize();
    let b = out.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Parses the needle at the start of `bytes` and verifies its checksum.
/// Bytes after the needle are ignored.
pub fn parse(bytes: &[u8]) -> Result<NeedleRef<'_>, String> {
    let header = NeedleHeader::parse(bytes)?;
    let total = header.total_len();
    let Some(body) = bytes.get(HEADER_LEN..total) else {
        return Err(format!(
            "needle of {total} bytes is cut off after {} bytes",
            bytes.len()
        ));
    };
    if checksum(&bytes[..HEADER_LEN], body) != header.checksum {
        return Err("needle checksum mismatch".into());
    }
    let (key, rest) = body.split_at(usize::from(header.key_len));
    let (record, stored) = rest.split_at(usize::from(header.record_len));
    Ok(NeedleRef {
        header,
        key,
        record,
        stored,
    })
}

/// What to frame: the payload as it will be stored, plus what describes it.
#[derive(Clone, Copy, Debug)]
pub struct NeedleParts<'a> {
    /// blake3 of the raw payload.
    pub hash: BlobHash,
    /// How `stored` encodes it.
    pub codec: NeedleCodec,
    /// zstd dictionary id (0 = none).
    pub dict: u16,
    /// Decoded length.
    pub raw_len: u32,
    /// Key stored with the needle (may be empty).
    pub key: &'a [u8],
    /// Record stored with the needle (may be empty).
    pub record: &'a [u8],
    /// The stored payload.
    pub stored: &'a [u8],
}

/// Frames `parts` into `out` (cleared first). Fails on lengths the format
/// cannot hold.
pub fn encode(parts: &NeedleParts<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let key_len = u16::try_from(parts.key.len()).map_err(|_| "key longer than 65535 bytes")?;
    let record_len =
        u16::try_from(parts.record.len()).map_err(|_| "record longer than 65535 bytes")?;
    let stored_len =
        u32::try_from(parts.stored.len()).map_err(|_| "payload too large for a pack")?;
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(NEEDLE_VERSION);
    out.push(parts.codec.byte());
    out.extend_from_slice(&parts.dict.to_le_bytes());
    out.extend_from_slice(&parts.raw_len.to_le_bytes());
    out.extend_from_slice(&stored_len.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(&record_len.to_le_bytes());
    out.extend_from_slice(&parts.hash.0);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(parts.key);
    out.extend_from_slice(parts.record);
    out.extend_from_slice(parts.stored);
    let header = NeedleHeader::parse(out)?;
    let sum = checksum(&out[..HEADER_LEN], &out[HEADER_LEN..]);
    out[SUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    debug_assert_eq!(header.total_len(), out.len());
    Ok(())
}

fn check_len(raw: &[u8]) -> Result<u32, String> {
    u32::try_from(raw.len())
        .ok()
        .filter(|n| *n <= MAX_RAW)
        .ok_or_else(|| {
            format!(
                "payload of {} bytes exceeds the needle limit {MAX_RAW}",
                raw.len()
            )
        })
}

/// A payload ready to be framed: hashed, and compressed when that shrinks
/// it.
#[derive(Clone, Debug)]
pub struct Prepared<'a> {
    /// blake3 of the raw payload.
    pub hash: BlobHash,
    /// Decoded length.
    pub raw_len: u32,
    /// How `stored` encodes it.
    pub codec: NeedleCodec,
    /// The bytes the needle will hold.
    pub stored: std::borrow::Cow<'a, [u8]>,
    /// The zstd dictionary `stored` needs (0 = none).
    pub dict: u16,
}

impl<'a> Prepared<'a> {
    /// Hashes `raw` and compresses it at `level` (kept raw when `None` or
    /// when zstd does not shrink it). Fails on payloads past [`MAX_RAW`].
    pub fn new(raw: &'a [u8], level: Option<i32>) -> Result<Prepared<'a>, String> {
        let raw_len = check_len(raw)?;
        let (codec, stored) = match level.and_then(|l| blobs::compress(raw, l)) {
            Some(z) => (NeedleCodec::Zstd, std::borrow::Cow::Owned(z)),
            None => (NeedleCodec::Raw, std::borrow::Cow::Borrowed(raw)),
        };
        Ok(Prepared {
            hash: BlobHash::of(raw),
            raw_len,
            codec,
            stored,
            dict: 0,
        })
    }

    /// Hashes `raw` and compresses it with `dict` (kept raw when that
    /// does not shrink it).
    pub fn with_dictionary(raw: &'a [u8], dict: &Dictionary) -> Result<Prepared<'a>, String> {
        let raw_len = check_len(raw)?;
        let z = dict.compress(raw)?;
        let (codec, stored, id) = match z.len() < raw.len() {
            true => (NeedleCodec::Zstd, std::borrow::Cow::Owned(z), dict.id()),
            false => (NeedleCodec::Raw, std::borrow::Cow::Borrowed(raw), 0),
        };
        Ok(Prepared {
            hash: BlobHash::of(raw),
            raw_len,
            codec,
            stored,
            dict: id,
        })
    }

    /// The parts of a needle holding this payload with `key` and `record`.
    pub fn parts<'b>(&'b self, key: &'b [u8], record: &'b [u8]) -> NeedleParts<'b> {
        NeedleParts {
            hash: self.hash,
            codec: self.codec,
            dict: self.dict,
            raw_len: self.raw_len,
            key,
            record,
            stored: &self.stored,
        }
    }

    /// Bytes of the framed needle with a key and record of these lengths.
    pub fn needle_len(&self, key_len: usize, record_len: usize) -> usize {
        HEADER_LEN + key_len + record_len + self.stored.len()
    }
}

/// Compresses `raw` at `level` (raw when `None` or when zstd does not
/// shrink it) and frames it with `key` and `record` into `out`.
pub fn encode_payload(
    raw: &[u8],
    level: Option<i32>,
    key: &[u8],
    record: &[u8],
    out: &mut Vec<u8>,
) -> Result<NeedleHeader, String> {
    let prepared = Prepared::new(raw, level)?;
    encode(&prepared.parts(key, record), out)?;
    NeedleHeader::parse(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(raw: &[u8], level: Option<i32>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_payload(raw, level, b"key", b"rec", &mut out).unwrap();
        out
    }

    #[test]
    fn round_trips_raw_and_zstd() {
        let json = crate::testkit::json_payload(1, 5000);
        for (raw, level) in [(&json[..], Some(3)), (&json[..], None), (&b""[..], Some(3))] {
            let bytes = framed(raw, level);
            let n = parse(&bytes).unwrap();
            assert_eq!(n.key, b"key");
            assert_eq!(n.record, b"rec");
            assert_eq!(n.payload().unwrap(), raw);
            assert_eq!(n.header.total_len(), bytes.len());
        }
        assert_eq!(
            parse(&framed(&json, Some(3))).unwrap().header.codec,
            NeedleCodec::Zstd
        );
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = framed(&crate::testkit::json_payload(2, 300), Some(3));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            let ok = parse(&b).ok().and_then(|n| n.payload().ok());
            assert!(ok.is_none(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_and_noise_are_errors() {
        let bytes = framed(b"hello", None);
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err());
        }
        assert!(parse(&[0xB1, 0xCA, 0x4E, 0x44, 1, 9]).is_err());
        assert!(
            encode_payload(
                &vec![0; MAX_RAW as usize + 1],
                None,
                b"",
                b"",
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn a_dictionary_needle_is_refused_not_misread() {
        let mut out = Vec::new();
        let parts = NeedleParts {
            hash: BlobHash::of(b"x"),
            codec: NeedleCodec::Raw,
            dict: 7,
            raw_len: 1,
            key: b"",
            record: b"",
            stored: b"x",
        };
        encode(&parts, &mut out).unwrap();
        let err = parse(&out).unwrap().payload().unwrap_err();
        assert!(err.contains("dictionary 7"), "{err}");
    }
}
