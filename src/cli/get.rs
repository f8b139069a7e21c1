//! `blobcache get`: write a cached payload (or its metadata) out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use blobcache::{EntryMeta, Error, Store};
use clap::Args;

use super::output::{self, EntryJson, Out, PumpError};
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache get tmdb movie/603 > movie.json
  blobcache get anidb dump/2026-11 -o dump.xml
  blobcache get tmdb movie/603 --stale || curl ...   # serve expired data offline
  blobcache get tmdb movie/603 --meta                # headers, times, sizes
  blobcache --json get tmdb movie/603 --meta | jq .expires_at_ms

Exit codes: 0 hit, 1 miss (absent or expired entry, no cache yet, or a
damaged payload found before its first byte was written), 2 error. The
payload is written byte for byte, and no byte before it is verified;
`-o` writes it atomically (a temporary file renamed into place) and leaves
no partial file, so a damaged payload is a miss there. A payload over
8 MiB is verified 1 MiB at a time as it streams: damage found after the
first MiB went to standard output stops the output there (what was
written is correct but incomplete) and exits 2.";

/// Arguments of `get`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct GetArgs {
    /// Backend name.
    backend: String,
    /// Signature.
    #[arg(value_parser = super::put::parse_signature)]
    signature: String,
    /// Write the payload to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also serve an expired entry (until GC removes it).
    #[arg(long)]
    stale: bool,
    /// Print the entry's metadata (sizes, times, headers) instead of the
    /// payload; with -o the payload still goes to the file.
    #[arg(long)]
    meta: bool,
}

/// Runs `get`.
pub fn run(a: GetArgs, ctx: &Ctx) -> Result<Status, Error> {
    let Some(store) = ctx.open_existing()? else {
        return Ok(Status::NotFound);
    };
    if a.meta && a.output.is_none() {
        return print_meta_only(&store, &a, ctx);
    }
    let reader = if a.stale {
        store.get_reader_stale(&a.backend, &a.signature)?
    } else {
        store.get_reader(&a.backend, &a.signature)?
    };
    let Some(mut reader) = reader else {
        return Ok(Status::NotFound);
    };
    let key = format!("{}/{}", a.backend, a.signature);
    let written = match &a.output {
        Some(path) => write_file_atomic(path, &mut reader, &key)?,
        None => to_stdout(&mut reader, &key)?,
    };
    if written == Written::Nothing {
        // Damage found before the first byte left: the entry was dropped
        // and nothing was written, which is a miss.
        return Ok(Status::NotFound);
    }
    if a.meta {
        print_meta(&reader.meta, ctx)?;
    }
    Ok(Status::Done)
}

/// `--meta` without `-o`: the metadata alone, without reading the payload.
fn print_meta_only(store: &Store, a: &GetArgs, ctx: &Ctx) -> Result<Status, Error> {
    let Some(meta) = store.meta(&a.backend, &a.signature)? else {
        return Ok(Status::NotFound);
    };
    if meta.is_expired_at(output::now_ms()) && !a.stale {
        return Ok(Status::NotFound);
    }
    print_meta(&meta, ctx)?;
    Ok(Status::Done)
}

fn print_meta(m: &EntryMeta, ctx: &Ctx) -> Result<(), Error> {
    let now = output::now_ms();
    let mut out = Out::new();
    if ctx.json {
        out.json(&EntryJson::new(m, now))?;
        return out.flush();
    }
    let rows = [
        ("backend", m.backend.clone()),
        ("signature", m.signature_str().into_owned()),
        ("hash", m.hash.to_string()),
        ("size", output::size(m.raw_size)),
        (
            "stored",
            format!(
                "{} ({})",
                output::size(m.stored_size),
                output::storage(m.compressed, m.inline)
            ),
        ),
        ("category", m.category.to_string()),
        ("created", output::timestamp(m.created_at)),
        ("fetched", output::timestamp(m.fetched_at)),
        (
            "expires",
            format!(
                "{} ({})",
                output::timestamp(m.expires_at),
                output::expires_in(m.expires_at, now)
            ),
        ),
        ("hits", m.hits.to_string()),
    ];
    for (name, value) in rows {
        out.line(format_args!("{name:<12}{value}"))?;
    }
    if let Some(ct) = &m.content_type {
        out.line(format_args!("{:<12}{ct}", "type"))?;
    }
    for (name, value) in &m.headers {
        out.line(format_args!("{:<12}{name}: {value}", "header"))?;
    }
    out.flush()
}

/// Streams the payload to standard output. Damage found after some of it
/// was written is an error saying so: what was written is verified, but
/// incomplete.
fn to_stdout(reader: &mut impl Read, key: &str) -> Result<Written, Error> {
    let mut out = Out::new();
    let mut counted = Counted {
        inner: reader,
        bytes: 0,
    };
    match pump_to(&mut counted, out.writer(), key, || {
        PathBuf::from("standard output")
    }) {
        Ok(_) => out.flush().map(|()| Written::Payload),
        Err(e) if is_damage(&e) && counted.bytes == 0 => Ok(Written::Nothing),
        Err(Error::Source { key, source }) if counted.bytes > 0 => {
            let _ = out.flush();
            let why = format!(
                "{source}; the {} bytes written to standard output before it are \
                 correct but incomplete; the entry was dropped, put it again",
                counted.bytes
            );
            Err(Error::Source {
                key,
                source: std::io::Error::new(source.kind(), why),
            })
        }
        Err(e) => Err(e),
    }
}

/// What a `get` wrote out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// The whole payload.
    Payload,
    /// Nothing: the payload was found damaged before its first byte left
    /// (the entry is dropped).
    Nothing,
}

/// True for a read of the payload that failed because it is damaged (the
/// store's verifying reader says `InvalidData`, and has dropped the entry).
fn is_damage(e: &Error) -> bool {
    matches!(e, Error::Source { source, .. } if source.kind() == std::io::ErrorKind::InvalidData)
}

/// Counts the bytes read through it (all of which were written before the
/// next read: see [`output::pump`]).
struct Counted<'a, R> {
    inner: &'a mut R,
    bytes: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Copies the payload, telling a damaged payload (read error) from a
/// failed destination (write error).
fn pump_to(
    src: &mut impl Read,
    dst: &mut impl Write,
    key: &str,
    dst_name: impl FnOnce() -> PathBuf,
) -> Result<u64, Error> {
    output::pump(src, dst).map_err(|e| match e {
        PumpError::Read(source) => Error::Source {
            key: key.to_string(),
            source,
        },
        PumpError::Write(source) => Error::Io {
            op: "write to",
            path: dst_name(),
            source,
        },
    })
}

/// Writes `src` to `path` atomically (see [`output::write_atomic`]); a
/// damaged payload leaves no file and is [`Written::Nothing`].
fn write_file_atomic(path: &Path, src: &mut impl Read, key: &str) -> Result<Written, Error> {
    let res = output::write_atomic(path, |f, dest| {
        pump_to(src, f, key, || dest.to_path_buf()).map(drop)
    });
    match res {
        Ok(()) => Ok(Written::Payload),
        Err(e) if is_damage(&e) => Ok(Written::Nothing),
        Err(e) => Err(e),
    }
}
