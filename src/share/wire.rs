//! The owner socket's wire format.
//!
//! Every message is one frame: a little-endian `u32` length followed by
//! that many bytes of CBOR. A connection starts with the guest's [`Hello`]
//! and the owner's [`Welcome`]; then each [`Request`] gets exactly one
//! [`Response`], in order. Only index operations travel: blob bytes never
//! cross the socket (inline blobs of a few KiB excepted, which live in the
//! index).
//!
//! The format is versioned by [`WIRE_VERSION`]: a peer speaking another
//! version is told so in the welcome and the guest reports
//! [`crate::Error::Protocol`].

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::blobs::BlobHash;
use crate::error::Error;
use crate::index::{Access, BackendTotals, CounterValues, Lookup, Op, Outcome, State};
use crate::record::{BlobInfo, Record};
use crate::verify::VerifyReport;

/// Version of the messages below; bump on any incompatible change.
pub(crate) const WIRE_VERSION: u32 = 1;

/// Identifies a blobcache peer (anything else on the socket is refused).
pub(crate) const MAGIC: &str = "blobcache-owner";

/// Largest frame accepted; larger lengths mean a broken or foreign peer.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// The first message of a connection, from the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The guest's [`WIRE_VERSION`].
    pub version: u32,
    /// The guest's process id (for messages).
    pub pid: u32,
}

impl Hello {
    pub fn ours() -> Hello {
        Hello {
            magic: MAGIC.to_string(),
            version: WIRE_VERSION,
            pid: std::process::id(),
        }
    }
}

/// The owner's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Welcome {
    /// Go ahead; the owner's process id.
    Ok { pid: u32 },
    /// The owner speaks another version.
    Mismatch { version: u32 },
    /// The owner will not serve this peer.
    Refused { why: String },
}

/// An index operation asked of the owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// One request is built per call and never held in bulk.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Request {
    Apply(Op),
    Lookup(ByteBuf),
    InlineBytes(BlobHash),
    BlobInfo(BlobHash),
    Scan {
        prefix: ByteBuf,
        after: Option<ByteBuf>,
        limit: u32,
    },
    ScanBlobs {
        after: Option<BlobHash>,
        limit: u32,
    },
    CountExpired(u64),
    ExpiredKeys {
        before: u64,
        limit: u32,
    },
    State,
    Backends,
    Counters,
    /// Counter increments and access statistics a guest gathered.
    Report {
        counters: CounterValues,
        accesses: Vec<(ByteBuf, Access)>,
    },
    Checkpoint,
    Verify {
        full: bool,
        repair: bool,
    },
}

/// The owner's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Response {
    Outcome(Outcome),
    Lookup(Option<Lookup>),
    Bytes(Option<ByteBuf>),
    BlobInfo(Option<BlobInfo>),
    Rows(Vec<(ByteBuf, Result<Record, String>)>),
    Blobs(Vec<(BlobHash, BlobInfo)>),
    Number(u64),
    Keys(Vec<ByteBuf>),
    State(State),
    Backends(Vec<(String, BackendTotals)>),
    Counters(CounterValues),
    Done,
    Verify(VerifyReport),
    /// The owner is shutting down: ask again (of the next owner).
    Retry,
    /// The operation failed in the owner.
    Error(WireError),
}

/// An error crossing the socket: the kinds callers match on keep their
/// shape, the rest travel as their message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    CorruptRecord { key: String, reason: String },
    Busy { hash: String, attempts: u32 },
    Other(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::CorruptRecord { key, reason } => WireError::CorruptRecord {
                key: key.clone(),
                reason: reason.clone(),
            },
            Error::Busy { hash, attempts } => WireError::Busy {
                hash: hash.clone(),
                attempts: *attempts,
            },
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::CorruptRecord { key, reason } => Error::CorruptRecord { key, reason },
            WireError::Busy { hash, attempts } => Error::Busy { hash, attempts },
            WireError::Other(message) => Error::Owner { message },
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The connection failed or closed (EOF included).
    Io(io::Error),
    /// The bytes are not a valid frame of the expected message.
    Invalid(String),
}

/// Writes `msg` as one frame (one `write` for small messages).
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    ciborium::into_writer(msg, &mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    let len = u32::try_from(buf.len() - 4)
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("message too large for the owner socket"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&buf)
}

/// Reads one frame and decodes it as `T`.
pub(crate) fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(FrameError::Io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Invalid(format!(
            "frame of {len} bytes announced, the limit is {MAX_FRAME}"
        )));
    }
    // Grown as bytes arrive, so a peer announcing a large frame and sending
    // nothing holds no memory.
    let mut buf = Vec::new();
    r.take(len as u64)
        .read_to_end(&mut buf)
        .map_err(FrameError::Io)?;
    if buf.len() < len {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    decode(&buf).map_err(FrameError::Invalid)
}

/// Decodes one message body; the wire fuzz target calls this directly.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let req = Request::Scan {
            prefix: ByteBuf::from(b"\x04tmdb".to_vec()),
            after: None,
            limit: 10,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);

        // Truncated: an I/O error (EOF), not a panic.
        let cut = &buf[..buf.len() - 1];
        assert!(matches!(
            read_frame::<Request>(&mut &cut[..]),
            Err(FrameError::Io(_))
        ));
        // Oversized length.
        let huge = (u32::MAX).to_le_bytes();
        assert!(matches!(
            read_frame::<Request>(&mut &huge[..]),
            Err(FrameError::Invalid(_))
        ));
        // Valid frame, wrong message.
        let mut other = Vec::new();
        write_frame(&mut other, &Hello::ours()).unwrap();
        assert!(matches!(
            read_frame::<Request>(&mut other.as_slice()),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn errors_keep_the_kinds_callers_match() {
        let e = Error::CorruptRecord {
            key: "b/s".into(),
            reason: "bad".into(),
        };
        let back: Error = WireError::from(&e).into();
        assert!(matches!(back, Error::CorruptRecord { .. }));
        let back: Error = WireError::Other("disk full".into()).into();
        assert!(back.to_string().contains("disk full"));
    }
}
