//! `blobcache gc`: run one garbage-collection sweep and print its report.

use std::io::Write;
use std::time::{Duration, SystemTime};

use blobcache::{Error, GcOptions, GcReport, GcStep, Selector, Store};
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::progress::Progress;
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache gc                                  # expired > 7 days, orphans, staging
  blobcache gc --max-size 2GiB                  # also evict least recently used
  blobcache gc --grace 0s --dry-run             # what would go, changing nothing
  blobcache gc --recompress-level 19 --recompress-older-than 30d
  blobcache gc --unused-since 2026-11-23T15:00:00Z   # CI: drop what this job did not use
  blobcache --json gc --wait | jq .bytes_freed

TIME is an RFC 3339 time with any offset (2026-11-23T15:00+01:00), a local
time or date (2026-11-23 15:00, 2026-11-23), or a duration ago (2h). SIZE:
2GiB is 2 x 1024^3 bytes, 2GB (or 2G) 2 x 1000^3. Only one sweep runs at a time per cache: without
--wait a second one fails (exit 2) saying a sweep is already running.
Pinned entries are never evicted, nor entries whose eviction frees no blob
file; when evicting every other entry could not get under --max-size,
nothing is evicted and gc warns \"still over cap\". A dry run reports what
the real sweep would. Exit codes: 0 swept (and under the cap, if any), 1
swept but still over the cap, 2 error.";

/// Arguments of `gc`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct GcArgs {
    /// Evict least recently used entries until the cache occupies at most
    /// this much disk [default: none]. Binary units are powers of 1024
    /// (2GiB = 2,147,483,648 bytes), decimal ones powers of 1000 (2GB and
    /// 2G = 2,000,000,000 bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// How long expired entries stay servable with `get --stale` before
    /// they are removed.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Rewrite old zstd blobs at this level (up to 19) [default: no
    /// recompression].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(-7..=19))]
    recompress_level: Option<i32>,
    /// With --recompress-level (required): only blobs stored at least this
    /// long ago.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "7d",
        requires = "recompress_level",
        value_parser = humantime::parse_duration
    )]
    recompress_older_than: Duration,
    /// Report what the sweep would do without changing anything (with
    /// --unused-since: how many entries it would drop).
    #[arg(long)]
    dry_run: bool,
    /// When another sweep is running, wait for it instead of failing.
    #[arg(long)]
    wait: bool,
    /// First remove every unpinned entry neither read nor written since
    /// TIME (for CI, with `export --accessed-since`).
    #[arg(long, value_name = "TIME", value_parser = output::parse_time)]
    unused_since: Option<SystemTime>,
}

/// Parses `2GiB`, `1.5 GiB`, `500MB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size such as 2GiB or 500MB: {e}"))
}

/// The JSON shape of `gc`: the report's fields, plus `entries_unused`.
#[derive(Serialize)]
struct GcJson<'a> {
    #[serde(flatten)]
    report: &'a GcReport,
    /// Entries removed by `--unused-since` (null without it).
    entries_unused: Option<u64>,
}

fn step_name(step: GcStep) -> &'static str {
    match step {
        GcStep::Expire => "expiring",
        GcStep::Orphans => "orphans",
        GcStep::Staging => "staging",
        GcStep::Evict => "evicting",
        GcStep::Recompress => "recompress",
    }
}

/// Runs `gc`.
pub fn run(a: GcArgs, ctx: &Ctx) -> Result<Status, Error> {
    let Some(store) = ctx.open_existing()? else {
        // No cache yet: nothing to sweep, and nothing is created.
        print(&GcReport::default(), a.unused_since.map(|_| 0), &a, ctx)?;
        return Ok(Status::Done);
    };
    let unused = match a.unused_since {
        Some(t) if a.dry_run => Some(count_unused(&store, t)?),
        Some(t) => Some(store.remove_unused_since(t)?),
        None => None,
    };
    let bar = Progress::start(ctx, "sweeping", 0);
    let (step, bytes) = (bar.stepper(), bar.byte_stepper());
    let mut opts = GcOptions::new()
        .grace(a.grace)
        .recompress_older_than(a.recompress_older_than)
        .dry_run(a.dry_run)
        .wait(a.wait)
        .progress(move |p| match (p.bytes, p.total) {
            // Blobs vary in size: the bar and its time left follow bytes.
            (Some(b), Some(total)) => bytes(step_name(p.step), (p.done, total), b),
            _ => step(step_name(p.step), p.done, p.total),
        });
    if let Some(size) = a.max_size {
        opts = opts.max_size(size);
    }
    if let Some(level) = a.recompress_level {
        opts = opts.recompress_level(level);
    }
    let report = store.gc(&opts)?;
    drop(bar);
    print(&report, unused, &a, ctx)?;
    if report.still_over_cap {
        warn_over_cap(&report);
        return Ok(Status::NotFound);
    }
    Ok(Status::Done)
}

/// How many entries `remove_unused_since(t)` would remove.
fn count_unused(store: &Store, t: SystemTime) -> Result<u64, Error> {
    let mut n = 0;
    for m in store.list(&Selector::All)? {
        n += u64::from(m?.is_unused_since(t));
    }
    Ok(n)
}

fn print(r: &GcReport, unused: Option<u64>, a: &GcArgs, ctx: &Ctx) -> Result<(), Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&GcJson {
            report: r,
            entries_unused: unused,
        })?;
        return out.flush();
    }
    if r.dry_run {
        out.line("dry run: nothing was changed; the figures say what a sweep would do")?;
    }
    let cap = r.max_size.map_or_else(
        || "no cap".to_string(),
        |c| format!("cap {}", output::size(c)),
    );
    let mut rows = vec![
        (
            "expired",
            format!(
                "{} removed (expired for more than {})",
                output::entries(r.entries_expired),
                output::human(a.grace)
            ),
        ),
        (
            "evicted",
            format!("{} ({cap})", output::entries(r.entries_evicted)),
        ),
        (
            "blobs",
            format!(
                "{} deleted, {} freed",
                r.blobs_deleted,
                output::size(r.bytes_freed)
            ),
        ),
        (
            "staging",
            format!("{} abandoned files removed", r.staging_removed),
        ),
        (
            "recompress",
            format!(
                "{}, {} saved of {}",
                output::count(r.blobs_recompressed, "blob", "blobs"),
                output::size(r.bytes_saved),
                output::size(r.bytes_recompressed)
            ),
        ),
        (
            "on disk",
            format!(
                "{} -> {}",
                output::size(r.disk_bytes_before),
                output::size(r.disk_bytes_after)
            ),
        ),
        (
            "took",
            humantime::format_duration(rounded(r.duration)).to_string(),
        ),
    ];
    if let Some(n) = unused {
        rows.insert(0, ("unused", format!("{} removed", output::entries(n))));
    }
    for (name, value) in rows {
        out.line(format_args!("{name:<12}{value}"))?;
    }
    if r.cancelled {
        out.line("the sweep stopped early: the cache was being closed")?;
    }
    out.flush()
}

/// Says on stderr that the sweep could not get under the cap, and why.
fn warn_over_cap(r: &GcReport) {
    let cap = r.max_size.map_or_else(String::new, output::size);
    // Not eprintln!: it panics when stderr is a closed pipe.
    let _ = writeln!(
        std::io::stderr(),
        "warning: still over cap: the cache takes {} and the cap is {cap}; what is left \
         (index, inline payloads, pinned entries) cannot be evicted below it, so no entry \
         was evicted for it; raise the cap or remove entries",
        output::size(r.disk_bytes_after)
    );
}

/// `d` rounded down to whole microseconds under a millisecond, to whole
/// milliseconds above (humantime prints every digit).
fn rounded(d: Duration) -> Duration {
    if d < Duration::from_millis(1) {
        return Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
