//! Targets on the owner socket's wire format: `wire_decode` (the
//! decoders, fast enough for libFuzzer) and [`wire_owner`] (the same bytes
//! sent to a live owner; replayed by `cargo test`).

use std::io::{Cursor, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::{Scratch, must};
use crate::blobs::BlobHash;
use crate::index::{Access, CounterValues, Op};
use crate::share::wire::{self, FrameError, Hello, MAX_FRAME, Request, Response, Welcome};
use crate::{PutOptions, Store, StoreOptions};

/// How long [`wire_owner`] waits for the owner's answers.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Most answer bytes [`wire_owner`] reads.
const ANSWER_MAX: u64 = 1 << 20;

/// Target `wire_decode`: arbitrary bytes as an owner/guest message.
///
/// The bytes are decoded as each message type (hello, welcome, request,
/// response); whatever decodes must encode as a frame that reads back
/// equal. Then the bytes are read as the frame streams each side reads: a
/// hello followed by requests (what the owner reads), and a welcome
/// followed by responses (what a guest reads). Nothing may panic, no frame
/// may be longer than [`MAX_FRAME`], and a stream ends with an I/O error
/// (end of input) or an invalid frame.
pub fn wire_decode(data: &[u8]) {
    round_trips::<Hello>(data);
    round_trips::<Welcome>(data);
    round_trips::<Request>(data);
    round_trips::<Response>(data);
    read_stream::<Hello, Request>(data);
    read_stream::<Welcome, Response>(data);
}

/// Decodes `data` as a `T`; if that works, writes it as a frame and reads
/// the frame back, which must give the same value.
fn round_trips<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = wire::decode(data).ok()?;
    let mut frame = Vec::new();
    must(wire::write_frame(&mut frame, &value), "write_frame");
    let again: T = match wire::read_frame(&mut frame.as_slice()) {
        Ok(v) => v,
        Err(e) => panic!("{value:?} was written as a frame that does not read: {e:?}"),
    };
    assert_eq!(value, again, "a frame round trip changed the message");
    Some(value)
}

/// Reads a `First` frame then `Next` frames from `data` until one fails.
fn read_stream<First, Next>(data: &[u8])
where
    First: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    Next: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut cur = Cursor::new(data);
    if !frame_ok::<First>(&mut cur) {
        return;
    }
    while frame_ok::<Next>(&mut cur) {}
}

/// Reads one frame; true when it was a valid `T` (which must round trip).
fn frame_ok<T>(cur: &mut Cursor<&[u8]>) -> bool
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let start = cur.position();
    let res = wire::read_frame::<T>(cur);
    let used = usize::try_from(cur.position() - start).unwrap_or(usize::MAX);
    assert!(used <= 4 + MAX_FRAME, "a frame of {used} bytes was read");
    match res {
        Ok(msg) => {
            let body = &cur.get_ref()[start as usize + 4..cur.position() as usize];
            let again = round_trips::<T>(body);
            assert!(again.as_ref() == Some(&msg), "frame decodes differently");
            true
        }
        Err(FrameError::Io(_) | FrameError::Invalid(_)) => false,
    }
}

/// A valid opening of a connection to the owner: the hello frame, then one
/// request frame per byte of `kinds` (each byte picks a request, see the
/// code; byte values wrap). For seeds and generated cases.
pub fn wire_seed(kinds: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    must(wire::write_frame(&mut out, &Hello::ours()), "write hello");
    for (i, &k) in kinds.iter().enumerate() {
        let req = seed_request(k, i as u64);
        must(wire::write_frame(&mut out, &req), "write request");
    }
    out
}

fn seed_request(kind: u8, n: u64) -> Request {
    let key = ByteBuf::from(crate::key::encode("fuzz", b"kept").unwrap_or_default());
    match kind % 12 {
        0 => Request::State,
        1 => Request::Lookup(key),
        2 => Request::Scan {
            prefix: ByteBuf::new(),
            after: None,
            limit: 10,
        },
        3 => Request::Counters,
        4 => Request::ScanBlobs {
            after: None,
            limit: 10,
        },
        5 => Request::BlobInfo(BlobHash::of(b"kept")),
        6 => Request::InlineBytes(BlobHash::of(b"kept")),
        7 => Request::CountExpired(n),
        8 => Request::ExpiredKeys {
            before: u64::MAX,
            limit: 5,
        },
        9 => Request::Report {
            counters: CounterValues::default(),
            accesses: vec![(key, Access { hits: 1, last: n })],
        },
        10 => Request::Apply(Op::Touch {
            key,
            expires_at: u64::MAX,
        }),
        _ => Request::Verify {
            full: true,
            repair: false,
        },
    }
}

/// `data` sent as is to a live owner: an owner opened in a scratch
/// directory gets the bytes on a raw connection to `owner.sock`; its
/// answers are read (for up to a few seconds) and dropped. The owner must
/// keep serving: a guest opened on the same directory afterwards must
/// connect, put and read back an entry. (Slower than libFuzzer likes, so
/// it runs in `cargo test` on the `wire_decode` corpus and on generated
/// inputs, not as a cargo-fuzz target.)
pub fn wire_owner(data: &[u8]) {
    let scratch = Scratch::new("wire_owner");
    let owner = must(
        Store::open(&scratch.0, StoreOptions::default()),
        "open owner",
    );
    must(
        owner.put("fuzz", "kept", b"kept", &PutOptions::new()),
        "put",
    );
    let sock = scratch.0.join("owner.sock");
    let mut conn = must(UnixStream::connect(&sock), "connect to the owner");
    must(conn.set_read_timeout(Some(ANSWER_WAIT)), "read timeout");
    must(conn.set_write_timeout(Some(ANSWER_WAIT)), "write timeout");
    // The owner may hang up early (a bad frame): then writing fails.
    let _ = conn.write_all(data);
    let _ = conn.shutdown(Shutdown::Write);
    let _ = (&mut conn).take(ANSWER_MAX).read_to_end(&mut Vec::new());
    drop(conn);

    let guest = must(
        Store::open(&scratch.0, StoreOptions::default()),
        "open guest",
    );
    assert!(!guest.is_owner(), "the second handle took over the owner");
    let fresh = b"written by a guest after the fuzz bytes";
    must(
        guest.put("fuzz", "after", fresh, &PutOptions::new()),
        "guest put",
    );
    let hit = must(guest.get("fuzz", "after"), "guest get");
    assert!(
        hit.is_some_and(|h| h.data == fresh),
        "the owner stopped serving after the fuzz bytes"
    );
}
