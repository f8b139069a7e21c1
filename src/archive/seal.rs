//! The sealed manifest of format 2: a checksum over the manifest, and an
//! optional signature (a keyed blake3 MAC) made with a [`SignKey`].
//!
//! The manifest member holds the CBOR map `{format, manifest, mac?, sum}`:
//!
//! - `manifest`: the CBOR bytes of the manifest proper (format version,
//!   creation time, the blob table with every blob's hash, codec and
//!   sizes, and every entry's key and record);
//! - `mac` (signed archives only): `blake3::keyed_hash(k, manifest)` where
//!   `k = blake3::derive_key(MAC_CONTEXT, key)`; the blobs are covered
//!   through their hashes, which import checks as each blob streams in;
//! - `sum`: blake3 over `format` (4 bytes, little-endian), a flag byte (1
//!   when `mac` is present), the `mac` and the `manifest` bytes, so any
//!   damage to them is detected even without the key.
//!
//! The map must decode to exactly one canonical encoding (the one this
//! build writes): any changed byte of the member either fails to decode,
//! re-encodes differently, or changes a covered field.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, IoContext, Result};
use crate::record::{from_cbor, to_cbor};

/// The blake3 key-derivation context of archive MACs: a key used
/// elsewhere too still gives MACs that mean nothing outside archives.
const MAC_CONTEXT: &str = "blobcache 2026-12 archive manifest MAC v2";
/// Longest key file read: 64 hex digits and a line ending fit.
const MAX_KEY_FILE: u64 = 66;

/// A 32-byte secret that signs exported archives and checks the signature
/// of imported ones ([`crate::ExportOptions::sign_key`],
/// [`crate::ImportOptions::sign_key`]). Its `Debug` form never shows the
/// key.
///
/// ```
/// use blobcache::SignKey;
///
/// let key = SignKey::from_bytes([7; 32]);
/// assert_eq!(format!("{key:?}"), "SignKey(<redacted>)");
/// ```
#[derive(Clone)]
pub struct SignKey([u8; 32]);

impl fmt::Debug for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignKey(<redacted>)")
    }
}

impl SignKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> SignKey {
        SignKey(key)
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits (either
    /// case) optionally followed by one line ending (`openssl rand -hex 32
    /// > key`). Anything else, and an all-zero key, is refused with
    /// [`Error::BadSignKey`]. The key's bytes appear in no message.
    pub fn from_file(path: impl AsRef<Path>) -> Result<SignKey> {
        let path = path.as_ref();
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .ctx("read the signing key file", path)?;
        parse_key(&bytes)
            .map(SignKey)
            .map_err(|reason| Error::BadSignKey {
                path: path.to_path_buf(),
                reason: reason.into(),
            })
    }

    /// The MAC of `manifest` under this key.
    fn mac(&self, manifest: &[u8]) -> blake3::Hash {
        let k = blake3::derive_key(MAC_CONTEXT, &self.0);
        blake3::keyed_hash(&k, manifest)
    }
}

/// The key in a key file's bytes, or why they are not one.
fn parse_key(bytes: &[u8]) -> std::result::Result<[u8; 32], &'static str> {
    let key = match bytes.len() {
        32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            k
        }
        64..=66 => {
            let text = std::str::from_utf8(bytes).map_err(|_| HEX_OR_RAW)?;
            let hex = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(text);
            if hex.len() != 64 {
                return Err(HEX_OR_RAW);
            }
            *blake3::Hash::from_hex(hex)
                .map_err(|_| HEX_OR_RAW)?
                .as_bytes()
        }
        _ => return Err(HEX_OR_RAW),
    };
    if key == [0; 32] {
        return Err("the key is all zeros; make one with `openssl rand -hex 32`");
    }
    Ok(key)
}

const HEX_OR_RAW: &str = "a key file holds exactly 32 raw bytes, or 64 hex digits and at most \
     one line ending; make one with `openssl rand -hex 32 > FILE`";

/// What the manifest member of format 2 holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sealed {
    /// The archive format version (also inside the manifest).
    pub format: u32,
    /// The manifest's CBOR bytes.
    pub manifest: ByteBuf,
    /// The MAC of `manifest`, in signed archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<ByteBuf>,
    /// The checksum of `format`, `mac` and `manifest`.
    pub sum: ByteBuf,
}

/// How far an imported archive could be checked; in
/// [`crate::ImportReport::integrity`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArchiveIntegrity {
    /// An archive of format 1, which carries no checksum: its manifest
    /// could not be checked (blobs still are, against their hashes).
    #[default]
    Unchecked,
    /// The manifest's checksum matched; the archive is not signed.
    Checksummed,
    /// The checksum matched; the archive is signed, but no key was given,
    /// so its signature was not checked.
    SignatureNotChecked,
    /// The checksum and the signature matched the key given.
    SignatureVerified,
}

/// Seals `manifest` (its CBOR bytes), signing it when a key is given;
/// returns the member's bytes.
pub(super) fn seal(format: u32, manifest: Vec<u8>, key: Option<&SignKey>) -> Vec<u8> {
    let mac = key.map(|k| ByteBuf::from(k.mac(&manifest).as_bytes().to_vec()));
    let sum = checksum(format, mac.as_ref().map(|m| m.as_slice()), &manifest);
    to_cbor(&Sealed {
        format,
        manifest: ByteBuf::from(manifest),
        mac,
        sum: ByteBuf::from(sum.as_bytes().to_vec()),
    })
}

fn checksum(format: u32, mac: Option<&[u8]>, manifest: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&format.to_le_bytes());
    h.update(&[u8::from(mac.is_some())]);
    h.update(mac.unwrap_or_default());
    h.update(manifest);
    h.finalize()
}

/// Why a sealed member was refused: damage (`Damaged`, with the reason)
/// or a signature problem.
pub(super) enum Unsealed {
    Damaged(String),
    Refused(Error),
}

/// Opens the member `bytes` of format 2: checks it is canonical, its
/// checksum, and its signature when `key` is given. Returns the manifest
/// bytes and what was checked.
pub(super) fn unseal(
    bytes: &[u8],
    key: Option<&SignKey>,
) -> std::result::Result<(Vec<u8>, ArchiveIntegrity), Unsealed> {
    let sealed: Sealed = from_cbor(bytes)
        .map_err(|e| Unsealed::Damaged(format!("it is not a readable sealed manifest: {e}")))?;
    if to_cbor(&sealed) != bytes {
        return Err(Unsealed::Damaged(
            "it is not encoded as blobcache writes it: it was damaged or edited".into(),
        ));
    }
    let sum = hash_field(&sealed.sum, "checksum")?;
    if checksum(
        sealed.format,
        sealed.mac.as_ref().map(|m| m.as_slice()),
        &sealed.manifest,
    ) != sum
    {
        return Err(Unsealed::Damaged(
            "its checksum does not match: it was damaged or edited".into(),
        ));
    }
    let mac = sealed
        .mac
        .as_ref()
        .map(|m| hash_field(m, "signature"))
        .transpose()?;
    let integrity = match (key, mac) {
        (None, None) => ArchiveIntegrity::Checksummed,
        (None, Some(_)) => ArchiveIntegrity::SignatureNotChecked,
        (Some(_), None) => {
            return Err(Unsealed::Refused(Error::UnsignedArchive {
                format: sealed.format,
            }));
        }
        // blake3::Hash compares in constant time.
        (Some(k), Some(mac)) if k.mac(&sealed.manifest) == mac => {
            ArchiveIntegrity::SignatureVerified
        }
        (Some(_), Some(_)) => return Err(Unsealed::Refused(Error::ForgedArchive)),
    };
    Ok((sealed.manifest.into_vec(), integrity))
}

fn hash_field(bytes: &[u8], what: &str) -> std::result::Result<blake3::Hash, Unsealed> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Unsealed::Damaged(format!("its {what} is not 32 bytes long")))?;
    Ok(blake3::Hash::from(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_raw_or_hex() {
        let hex = "0f".repeat(32);
        assert_eq!(parse_key(hex.as_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_key(format!("{hex}\n").as_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_key(format!("{hex}\r\n").as_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_key(&hex.to_uppercase().into_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_key(&[9; 32]), Ok([9; 32]));
        for bad in [
            &b""[..],
            &[9; 31],
            &[9; 33],
            &hex.as_bytes()[..63],
            format!("{hex}\n\n").as_bytes(),
            format!(" {hex}").as_bytes(),
            "g".repeat(64).as_bytes(),
            &[0; 32],
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seal_round_trips_and_detects_every_flip() {
        let key = SignKey::from_bytes([3; 32]);
        for k in [None, Some(&key)] {
            let sealed = seal(2, b"manifest bytes".to_vec(), k);
            let (body, _) = unseal(&sealed, k).ok().unwrap();
            assert_eq!(body, b"manifest bytes");
            for i in 0..sealed.len() {
                for bit in [0x01, 0x80, 0xff] {
                    let mut bad = sealed.clone();
                    bad[i] ^= bit;
                    assert!(unseal(&bad, k).is_err(), "flip {bit:#x} at {i}");
                }
            }
        }
    }
}
