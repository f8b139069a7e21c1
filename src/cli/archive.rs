//! `blobcache export` and `blobcache import`: the whole cache as one
//! archive, for CI.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use blobcache::{ArchiveIntegrity, Error, ExportOptions, ImportOptions, MergePolicy, SignKey};
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::progress::Progress;
use super::{Ctx, Status};

const EXPORT_EXAMPLES: &str = "\
Examples:
  blobcache export cache.tar
  blobcache export cache.tar --backend tmdb --backend anilist --live-only
  blobcache export cache.tar --accessed-since 2026-11-23T15:00:00Z   # what a CI job used
  blobcache export - --since 7d | zstd > cache.tar.zst
  blobcache --json export cache.tar | jq .archive_bytes
  blobcache export cache.tar --sign-key-file ci-cache.key   # key: openssl rand -hex 32

The archive is a tar file (`tar tf cache.tar` lists it): a manifest (with a
blake3 checksum, and with --sign-key-file a keyed-blake3 signature), then
each blob once, as stored. FILE is written to a temporary file beside it and
renamed into place, so a failed export leaves no partial file; `-` streams
to standard output (not a terminal), and the report then goes to stderr.
TIME is an RFC 3339 time or a duration ago (2h). Exit codes: 0 exported,
2 error.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  blobcache import cache.tar
  blobcache import job1.tar --merge newer && blobcache import job2.tar --merge newer
  zstd -dc cache.tar.zst | blobcache import -
  blobcache import cache.tar --merge keep --ttl-shift
  blobcache --json import cache.tar | jq .imported
  blobcache import cache.tar --sign-key-file ci-cache.key   # signed archives only

The manifest's checksum is checked first, every blob is checked against its
hash before it enters the cache, and the entries are applied only once the
whole archive has been read: a truncated, damaged, edited or unsafe archive
imports nothing (exit 2, the error names the member or key). With
--sign-key-file (or BLOBCACHE_SIGN_KEY_FILE), only archives signed with that
key are accepted: an unsigned or forged one imports nothing (exit 2). --merge says which entry wins when a key is already held:
newer (the one written later, default), keep (the cache's), replace (the
archive's). Expiry times are absolute; --ttl-shift moves them by the time
since the export. Exit codes: 0 imported, 2 error.";

/// Arguments of `export`.
#[derive(Args, Debug)]
#[command(after_help = EXPORT_EXAMPLES)]
pub struct ExportArgs {
    /// Archive to write; `-` writes to standard output.
    file: PathBuf,
    /// Only entries of this backend. Repeatable [default: all backends].
    #[arg(long = "backend", value_name = "B")]
    backends: Vec<String>,
    /// Leave out expired entries.
    #[arg(long)]
    live_only: bool,
    /// Only entries written within this long, e.g. 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only entries read or written since TIME (RFC 3339, or a duration
    /// ago such as 2h).
    #[arg(long, value_name = "TIME", value_parser = output::parse_time)]
    accessed_since: Option<SystemTime>,
    /// Sign the archive with the key in this file: 32 raw bytes, or 64 hex
    /// digits (`openssl rand -hex 32`).
    #[arg(long, env = "BLOBCACHE_SIGN_KEY_FILE", value_name = "PATH")]
    sign_key_file: Option<PathBuf>,
}

/// Arguments of `import`.
#[derive(Args, Debug)]
#[command(after_help = IMPORT_EXAMPLES)]
pub struct ImportArgs {
    /// Archive to read; `-` reads standard input.
    file: PathBuf,
    /// Which entry wins when a key is already held: newer, keep or replace.
    #[arg(long, value_name = "POLICY", default_value = "newer", value_parser = clap::builder::ValueParser::new(parse_merge))]
    merge: MergePolicy,
    /// Move every expiry forward by the time since the export, so entries
    /// keep the lifetime they had left.
    #[arg(long)]
    ttl_shift: bool,
    /// Import the intact entries when some blobs are damaged, counting the
    /// others as rejected (truncated or unsafe archives still fail).
    #[arg(long)]
    skip_damaged: bool,
    /// Import only archives signed with the key in this file (32 raw
    /// bytes, or 64 hex digits); unsigned or forged ones are refused.
    #[arg(long, env = "BLOBCACHE_SIGN_KEY_FILE", value_name = "PATH")]
    sign_key_file: Option<PathBuf>,
}

fn parse_merge(s: &str) -> Result<MergePolicy, String> {
    s.parse()
}

/// Blob members done and expected.
fn blob_counts(p: &blobcache::Progress) -> (u64, u64) {
    (p.blobs_done, p.blobs_total)
}

/// Stored blob bytes done and expected.
fn byte_counts(p: &blobcache::Progress) -> (u64, u64) {
    (p.bytes_done, p.bytes_total)
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Runs `export`.
pub fn export(a: ExportArgs, ctx: &Ctx) -> Result<Status, Error> {
    // A mistyped --dir must not pass for an empty cache: export never
    // creates one, and writes no archive.
    // (Checked here, not by open_existing: with --remote that one creates
    // the cache.)
    if !ctx.dir.exists() {
        return Err(Error::NotACache {
            path: ctx.dir.clone(),
            reason:
                "it does not exist (is --dir or BLOBCACHE_DIR mistyped?); no archive was written"
                    .into(),
        });
    }
    let key = load_key(a.sign_key_file.as_deref())?;
    let store = ctx.open()?;
    let mut opts = ExportOptions::default().live_only(a.live_only);
    if let Some(k) = key {
        opts = opts.sign_key(k);
    }
    for b in &a.backends {
        opts = opts.backend(b.as_str());
    }
    if let Some(age) = a.since {
        opts = opts.since(age);
    }
    if let Some(t) = a.accessed_since {
        opts = opts.accessed_since(t);
    }
    let bar = Progress::start(ctx, "exporting", 0);
    let step = bar.byte_stepper();
    let opts = opts.progress(move |p| step("exporting blob", blob_counts(p), byte_counts(p)));
    let to_stdout = is_stdio(&a.file);
    let report = if to_stdout {
        let stdout = output::binary_stdout()?;
        let mut lock = stdout.lock();
        let report = store.export(&mut lock, &opts)?;
        lock.flush().map_err(output::stdout_error)?;
        report
    } else {
        output::write_atomic(&a.file, |f, _| store.export(f, &opts))?
    };
    drop(bar);
    let human = format!(
        "exported {} ({}, {}) to {}: {}{} archive{}",
        output::entries(report.entries),
        output::count(report.blobs, "blob", "blobs"),
        output::size(report.blob_bytes),
        destination(&a.file),
        output::size(report.archive_bytes),
        if report.signed { " signed" } else { "" },
        skipped_note(report.skipped),
    );
    emit(ctx, to_stdout, &report, &human)
}

/// The signing key in `path`, if one is given (read before anything is
/// opened or written).
fn load_key(path: Option<&Path>) -> Result<Option<SignKey>, Error> {
    path.map(SignKey::from_file).transpose()
}

/// What the import line says about the checks, if anything.
fn integrity_note(i: ArchiveIntegrity) -> &'static str {
    match i {
        ArchiveIntegrity::Checksummed => "",
        ArchiveIntegrity::SignatureVerified => "; signature verified",
        ArchiveIntegrity::SignatureNotChecked => {
            "; the archive is signed, but its signature was not checked (no --sign-key-file)"
        }
        ArchiveIntegrity::Unchecked => {
            "; format 1 archive: its manifest has no checksum and was not checked"
        }
        // A later kind of check: nothing to add.
        _ => "",
    }
}

fn destination(path: &Path) -> String {
    if is_stdio(path) {
        "standard output".into()
    } else {
        path.display().to_string()
    }
}

fn skipped_note(skipped: u64) -> String {
    if skipped == 0 {
        return String::new();
    }
    format!(
        "; {} left out: record or blob unreadable (run `blobcache verify`)",
        output::entries(skipped)
    )
}

/// Runs `import`.
pub fn import(a: ImportArgs, ctx: &Ctx) -> Result<Status, Error> {
    let key = load_key(a.sign_key_file.as_deref())?;
    let store = ctx.open()?;
    let bar = Progress::start(ctx, "importing", 0);
    let step = bar.byte_stepper();
    let mut opts = ImportOptions::default();
    if let Some(k) = key {
        opts = opts.sign_key(k);
    }
    let opts = opts
        .merge(a.merge)
        .ttl_shift(a.ttl_shift)
        .skip_damaged(a.skip_damaged)
        .progress(move |p| step("importing blob", blob_counts(p), byte_counts(p)));
    let report = if is_stdio(&a.file) {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            return Err(Error::Io {
                op: "read the archive from",
                path: PathBuf::from("standard input"),
                source: io::Error::other("it is a terminal; pipe the archive in or give a FILE"),
            });
        }
        store.import(stdin.lock(), &opts)?
    } else {
        let f = File::open(&a.file).map_err(|source| Error::Io {
            op: "open the archive",
            path: a.file.clone(),
            source,
        })?;
        store.import(f, &opts)?
    };
    drop(bar);
    let mut human = format!(
        "imported {} of {} ({} skipped by --merge, {} rejected); blobs: {} copied ({}), {} already present or unneeded ({})",
        output::entries(report.imported),
        report.entries,
        report.skipped,
        report.rejected,
        report.blobs_imported,
        output::size(report.bytes_imported),
        report.blobs_skipped,
        output::size(report.bytes_skipped),
    );
    if report.blobs_rejected > 0 {
        human.push_str(&format!(
            ", {} damaged and rejected ({})",
            report.blobs_rejected,
            output::size(report.bytes_rejected)
        ));
    }
    human.push_str(integrity_note(report.integrity));
    emit(ctx, false, &report, &human)
}

/// Prints a report: JSON with `--json`, else `human` unless `-q`; on
/// stderr when stdout carries the archive.
fn emit<T: Serialize>(
    ctx: &Ctx,
    to_stderr: bool,
    report: &T,
    human: &str,
) -> Result<Status, Error> {
    if !ctx.json && !ctx.chatty() {
        return Ok(Status::Done);
    }
    if to_stderr {
        let text = if ctx.json {
            serde_json::to_string(report).map_err(|e| output::stdout_error(io::Error::other(e)))?
        } else {
            human.to_string()
        };
        // A closed stderr is not worth failing a finished export for.
        let _ = writeln!(io::stderr(), "{text}");
        return Ok(Status::Done);
    }
    let mut out = Out::new();
    if ctx.json {
        out.json(report)?;
    } else {
        out.line(human)?;
    }
    out.flush()?;
    Ok(Status::Done)
}
