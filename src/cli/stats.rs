//! `blobcache stats`: counts, sizes, ratios and hit rates.

use std::collections::{BTreeMap, HashSet};

use blobcache::{BlobHash, Error, RemoteStats, Selector, Stats, Store};
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::progress::Progress;
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache stats
  blobcache --json stats | jq '.backends[] | {name, entries}'

Ratios: compression = distinct payload bytes / their stored bytes;
dedup = payload bytes of all entries / distinct payload bytes;
hit ratio = hits / (hits + misses) since the cache was created.
Per backend: PAYLOADS sums its entries' payload sizes, STORED their stored
(compressed) sizes, BLOBS the stored size of its distinct blobs, what the
backend occupies in blobs (a blob shared with another backend counts for
both; index overhead and filesystem blocks are not included). Backends are
listed by name. Sizes use binary units (1 KiB = 1024 bytes).
stats reads every entry's record (not the payloads) to count expired
entries per backend and distinct payloads. A cache directory that does
not exist shows zeros.";

/// Arguments of `stats`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct StatsArgs {}

/// Per-backend figures (JSON `backends[]`).
#[derive(Serialize, Default)]
struct BackendJson {
    name: String,
    entries: u64,
    live: u64,
    expired: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    blob_bytes: u64,
}

/// The JSON shape of `stats` (field names are stable; see README).
#[derive(Serialize, Default)]
struct StatsJson {
    dir: String,
    entries: u64,
    live: u64,
    expired: u64,
    blobs: u64,
    raw_bytes: u64,
    unique_raw_bytes: u64,
    unique_stored_bytes: u64,
    blob_bytes: u64,
    index_bytes: u64,
    disk_bytes: u64,
    compression_ratio: Option<f64>,
    dedup_ratio: Option<f64>,
    hits: u64,
    misses: u64,
    stale_hits: u64,
    hit_ratio: Option<f64>,
    puts: u64,
    corrupt_dropped: u64,
    index_resets: u64,
    backends: Vec<BackendJson>,
    /// The remote tier, when `--remote` is given.
    remote: Option<RemoteJson>,
}

/// The remote tier's figures (JSON `remote`), counted by this call.
#[derive(Serialize)]
pub struct RemoteJson {
    url: String,
    prefix: String,
    state: &'static str,
    read_only: bool,
    hits: u64,
    misses: u64,
    errors: u64,
    corrupt: u64,
    writes: u64,
    skipped: u64,
    /// Writes not sent: the background queue stayed full.
    dropped: u64,
    /// Puts that waited for room in the background queue.
    waited: u64,
    latency_us: u64,
}

impl RemoteJson {
    /// The JSON view of `r`.
    pub fn of(r: &RemoteStats) -> RemoteJson {
        RemoteJson {
            url: r.url.clone(),
            prefix: r.prefix.clone(),
            state: r.state.as_str(),
            read_only: r.read_only,
            hits: r.hits,
            misses: r.misses,
            errors: r.errors,
            corrupt: r.corrupt,
            writes: r.writes,
            skipped: r.skipped,
            dropped: r.dropped,
            waited: r.waited,
            latency_us: r.latency_us,
        }
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        format!(
            "{} {}{} ({} hits, {} misses, {} errors, {} refused as corrupt, {} writes dropped; \
             mean latency {} us)",
            self.url,
            self.state,
            if self.read_only { ", read-only" } else { "" },
            self.hits,
            self.misses,
            self.errors,
            self.corrupt,
            self.dropped,
            self.latency_us
        )
    }
}

fn div(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Runs `stats`.
pub fn run(_: StatsArgs, ctx: &Ctx) -> Result<Status, Error> {
    let mut s = StatsJson {
        dir: ctx.dir.display().to_string(),
        ..StatsJson::default()
    };
    if let Some(store) = ctx.open_existing()? {
        let totals = store.stats()?;
        fill_totals(&mut s, &totals);
        scan(&store, &mut s, ctx)?;
    }
    let mut out = Out::new();
    if ctx.json {
        out.json(&s)?;
    } else {
        human(&mut out, &s)?;
    }
    out.flush()?;
    Ok(Status::Done)
}

fn fill_totals(s: &mut StatsJson, t: &Stats) {
    s.entries = t.entries;
    s.live = t.live;
    s.expired = t.expired;
    s.blobs = t.blobs;
    s.raw_bytes = t.raw_bytes;
    s.blob_bytes = t.blob_bytes;
    s.index_bytes = t.index_bytes;
    s.disk_bytes = t.disk_bytes();
    s.hits = t.hits;
    s.misses = t.misses;
    s.stale_hits = t.stale_hits;
    s.hit_ratio = t.hit_ratio();
    s.puts = t.puts;
    s.corrupt_dropped = t.corrupt;
    s.index_resets = t.index_resets;
    s.remote = t.remote.as_ref().map(RemoteJson::of);
    s.backends = t
        .backends
        .iter()
        .map(|b| BackendJson {
            name: b.name.clone(),
            entries: b.entries,
            raw_bytes: b.raw_bytes,
            ..BackendJson::default()
        })
        .collect();
    s.backends.sort_by(|a, b| a.name.cmp(&b.name));
}

/// What [`scan`] counts per backend.
#[derive(Default)]
struct Tally {
    live: u64,
    expired: u64,
    stored: u64,
    blobs: HashSet<BlobHash>,
    blob_bytes: u64,
}

/// Reads every record once: live/expired per backend, and the distinct
/// payloads for the compression and dedup ratios.
fn scan(store: &Store, s: &mut StatsJson, ctx: &Ctx) -> Result<(), Error> {
    let now = output::now_ms();
    let bar = Progress::start(ctx, "reading", s.entries);
    let mut seen: HashSet<BlobHash> = HashSet::new();
    let mut per: BTreeMap<String, Tally> = BTreeMap::new();
    for (i, m) in (1..).zip(store.list(&Selector::All)?) {
        let m = m?;
        bar.set(i);
        let t = per.entry(m.backend.clone()).or_default();
        if m.is_expired_at(now) {
            t.expired += 1;
        } else {
            t.live += 1;
        }
        t.stored += m.stored_size;
        if t.blobs.insert(m.hash) {
            t.blob_bytes += m.stored_size;
        }
        if seen.insert(m.hash) {
            s.unique_raw_bytes += m.raw_size;
            s.unique_stored_bytes += m.stored_size;
        }
    }
    for b in &mut s.backends {
        if let Some(t) = per.get(&b.name) {
            (b.live, b.expired) = (t.live, t.expired);
            (b.stored_bytes, b.blob_bytes) = (t.stored, t.blob_bytes);
        }
    }
    s.compression_ratio = div(s.unique_raw_bytes, s.unique_stored_bytes);
    s.dedup_ratio = div(s.raw_bytes, s.unique_raw_bytes);
    Ok(())
}

fn human(out: &mut Out, s: &StatsJson) -> Result<(), Error> {
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0));
    let rows = [
        ("cache", s.dir.clone()),
        (
            "entries",
            format!("{} ({} live, {} expired)", s.entries, s.live, s.expired),
        ),
        ("blobs", s.blobs.to_string()),
        (
            "payloads",
            format!(
                "{} in all entries, {} distinct",
                output::size(s.raw_bytes),
                output::size(s.unique_raw_bytes)
            ),
        ),
        (
            "on disk",
            format!(
                "{} ({} blobs + {} index)",
                output::size(s.disk_bytes),
                output::size(s.blob_bytes),
                output::size(s.index_bytes)
            ),
        ),
        (
            "ratios",
            format!(
                "compression {}, dedup {}",
                output::ratio(s.unique_raw_bytes, s.unique_stored_bytes),
                output::ratio(s.raw_bytes, s.unique_raw_bytes)
            ),
        ),
        (
            "lookups",
            format!(
                "{} hits, {} misses, {} stale hits (hit ratio {})",
                s.hits,
                s.misses,
                s.stale_hits,
                pct(s.hit_ratio)
            ),
        ),
        ("puts", s.puts.to_string()),
        (
            "healing",
            format!(
                "{} damaged entries dropped, {} index resets",
                s.corrupt_dropped, s.index_resets
            ),
        ),
    ];
    for (name, value) in rows {
        out.line(format_args!("{name:<10}{value}"))?;
    }
    if let Some(r) = &s.remote {
        out.line(format_args!("{:<10}{}", "remote", r.line()))?;
    }
    if s.backends.is_empty() {
        return Ok(());
    }
    let w = s
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0)
        .max(7);
    out.line("")?;
    out.line(format_args!(
        "{:<w$}  {:>8}  {:>8}  {:>8}  {:>10}  {:>10}  {:>10}",
        "BACKEND", "ENTRIES", "LIVE", "EXPIRED", "PAYLOADS", "STORED", "BLOBS"
    ))?;
    for b in &s.backends {
        out.line(format_args!(
            "{:<w$}  {:>8}  {:>8}  {:>8}  {:>10}  {:>10}  {:>10}",
            b.name,
            b.entries,
            b.live,
            b.expired,
            output::size(b.raw_bytes),
            output::size(b.stored_bytes),
            output::size(b.blob_bytes)
        ))?;
    }
    Ok(())
}
