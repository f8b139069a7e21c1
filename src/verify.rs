//! Consistency checking and repair of a whole cache.
//!
//! `verify` checks every invariant that can be checked after the fact:
//! each record decodes and its blob exists (and, in a full check, decodes to
//! bytes matching its hash); each blob's refcount equals the number of
//! entries using it; the expiry tree matches the records; the running
//! totals match a recount; nothing foreign sits in `blobs/`.
//! Orphan blob files (no entry) are counted, not reported: GC reclaims them.
//!
//! On a format-2 cache ([`verify_v2`]) the engine checks its own records,
//! header sets, needles, blob files and packs (`engine/check.rs`), and the
//! walk of `blobs/` is the same as here.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::blobs::{self, BlobError, BlobHash, FileProblem, Walked};
use crate::engine::{CheckOptions, Damage, Engine, Finding};
use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::index::{Op, Snapshot, file_blob_info};
use crate::key;
use crate::record::{BlobInfo, BlobState, Record};
use crate::store::Store;

/// Called by [`Store::verify`] as it checks each entry, with the entry's
/// position (1-based) and the number of entries.
pub type VerifyProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Called by a full [`Store::verify`] as it decodes and hashes payloads,
/// with the payload bytes checked so far and the total to check (each
/// distinct payload once, large ones reported as they stream).
pub type VerifyByteProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options for [`Store::verify`].
///
/// ```
/// use blobcache::VerifyOptions;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let checked = Arc::new(AtomicU64::new(0));
/// let seen = checked.clone();
/// let opts = VerifyOptions::new()
///     .full(true)
///     .progress(Arc::new(move |done, _total| seen.store(done, Ordering::Relaxed)));
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
pub struct VerifyOptions {
    pub(crate) full: bool,
    pub(crate) repair: bool,
    pub(crate) progress: Option<VerifyProgress>,
    pub(crate) byte_progress: Option<VerifyByteProgress>,
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("full", &self.full)
            .field("repair", &self.repair)
            .field("progress", &self.progress.is_some())
            .field("byte_progress", &self.byte_progress.is_some())
            .finish()
    }
}

impl VerifyOptions {
    /// A quick check: blobs must exist with the recorded size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also decode every blob and compare it with its hash (reads every
    /// byte of the cache).
    pub fn full(mut self, yes: bool) -> Self {
        self.full = yes;
        self
    }

    /// Fix what is found: drop entries whose blob is missing or damaged and
    /// undecodable records, and rebuild refcounts, expiry order and totals.
    pub fn repair(mut self, yes: bool) -> Self {
        self.repair = yes;
        self
    }

    /// Reports progress while entries are checked (see [`VerifyProgress`]);
    /// for progress bars on long, full checks.
    pub fn progress(mut self, report: VerifyProgress) -> Self {
        self.progress = Some(report);
        self
    }

    /// Reports the payload bytes a full check has decoded and hashed (see
    /// [`VerifyByteProgress`]): what a bar's time-left estimate needs when
    /// a few large blobs dominate.
    pub fn byte_progress(mut self, report: VerifyByteProgress) -> Self {
        self.byte_progress = Some(report);
        self
    }
}

/// What kind of inconsistency was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// An index record cannot be decoded.
    UndecodableRecord,
    /// An entry's blob does not exist.
    MissingBlob,
    /// An entry's blob exists but is damaged.
    CorruptBlob,
    /// An entry's blob is unknown to the refcount tree.
    UnknownBlob,
    /// A blob's refcount differs from the number of entries using it.
    Refcount,
    /// The expiry order does not match the records.
    Expiry,
    /// A running total differs from a recount.
    Totals,
    /// Something that is not a blob sits in `blobs/` (a repair moves it,
    /// untouched, into `quarantine/`).
    ForeignFile,
    /// A blob file can be read or written by others than its owner (a
    /// repair sets it back to 0600).
    Permissions,
    /// A format-2 pack file cannot be opened or does not start with its
    /// header (its entries are reported, and repaired, one by one).
    DamagedPack,
}

impl ProblemKind {
    /// Stable name (used in JSON output).
    pub fn as_str(&self) -> &'static str {
        match self {
            ProblemKind::UndecodableRecord => "undecodable_record",
            ProblemKind::MissingBlob => "missing_blob",
            ProblemKind::CorruptBlob => "corrupt_blob",
            ProblemKind::UnknownBlob => "unknown_blob",
            ProblemKind::Refcount => "refcount",
            ProblemKind::Expiry => "expiry",
            ProblemKind::Totals => "totals",
            ProblemKind::ForeignFile => "foreign_file",
            ProblemKind::Permissions => "permissions",
            ProblemKind::DamagedPack => "damaged_pack",
        }
    }
}

/// One inconsistency.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The key (`backend/signature`), blob hash, total name or path.
    pub subject: String,
    /// What exactly is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.kind.as_str(),
            self.subject,
            self.detail
        )
    }
}

/// The outcome of [`Store::verify`]. On a format-2 cache every field is
/// filled: `blobs` counts the distinct payloads checked (each pack needle,
/// each blob file once), `orphan_files` the blob files no record names,
/// `repaired` the entries removed (a logged delete each) and files
/// discarded or moved; the refcount, expiry and totals problems do not
/// apply there (format 2 keeps none of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Blobs known to the index (format 2: distinct payloads checked).
    pub blobs: u64,
    /// Blob files found in `blobs/` with no index info (format 2: named
    /// by no record); GC removes them.
    pub orphan_files: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
    /// Index keys and blob-directory files changed by the repair (0
    /// without `repair`).
    pub repaired: u64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.problems.push(Problem {
            kind,
            subject: subject.into(),
            detail: detail.into(),
        });
    }
}

/// Checks (and optionally repairs) the cache behind `store`.
pub(crate) fn verify(store: &Store, opts: VerifyOptions) -> Result<VerifyReport> {
    let snap = store.index().snapshot()?;
    let mut report = VerifyReport {
        entries: snap.records.len() as u64,
        ..VerifyReport::default()
    };
    let infos = decode_infos(&snap, &mut report);
    report.blobs = infos.len() as u64;
    let bad_entries = check_records(store, &snap, &infos, &opts, &mut report);
    check_refcounts(&snap, &infos, &mut report);
    check_expiry(&snap, &mut report);
    check_totals(&snap, &infos, &mut report);
    let fixes = check_files(store, &|h| infos.contains_key(h), &mut report)?;
    if opts.repair && !report.is_clean() {
        report.repaired = repair(store, &bad_entries)? + repair_files(store, &fixes)?;
    }
    Ok(report)
}

/// Checks (and optionally repairs) a format-2 cache: every record, its
/// header set and its payload (see `Engine::check`), every pack file, and
/// `blobs/` as format 1 does (orphan, foreign and loose files). Format 2
/// keeps no refcounts, expiry tree or running totals, so
/// [`ProblemKind::UnknownBlob`], [`ProblemKind::Refcount`],
/// [`ProblemKind::Expiry`] and [`ProblemKind::Totals`] never occur there.
pub(crate) fn verify_v2(
    store: &Store,
    engine: &Engine,
    opts: VerifyOptions,
) -> Result<VerifyReport> {
    let checked = engine.check(&CheckOptions {
        full: opts.full,
        on_entry: opts.progress.clone(),
        on_bytes: opts.byte_progress.clone(),
    })?;
    let mut report = VerifyReport {
        entries: checked.entries,
        blobs: checked.payloads,
        ..VerifyReport::default()
    };
    for f in &checked.findings {
        let (kind, subject) = finding_problem(store, f);
        report.problem(kind, subject, f.detail.clone());
    }
    let fixes = check_files(store, &|h| checked.blob_files.contains(h), &mut report)?;
    if opts.repair && !report.is_clean() {
        report.repaired = engine.repair(&checked.findings)? + repair_files(store, &fixes)?;
    }
    Ok(report)
}

/// How a format-2 finding is reported: its kind and subject.
fn finding_problem(store: &Store, f: &Finding) -> (ProblemKind, String) {
    let kind = match f.damage {
        Damage::UndecodableRecord | Damage::MissingHeaderSet => ProblemKind::UndecodableRecord,
        Damage::MissingPayload => ProblemKind::MissingBlob,
        Damage::UnreadablePack => ProblemKind::DamagedPack,
        _ => ProblemKind::CorruptBlob,
    };
    let subject = match (&f.key, f.pack) {
        (Some(k), _) => key::display(k),
        (None, Some(id)) => store
            .layout_root()
            .join("packs")
            .join(crate::pack::pack_name(id))
            .display()
            .to_string(),
        (None, None) => String::new(),
    };
    (kind, subject)
}

fn decode_infos(snap: &Snapshot, report: &mut VerifyReport) -> HashMap<BlobHash, BlobInfo> {
    let mut infos = HashMap::new();
    for (k, info) in &snap.blobs {
        let hash = <[u8; 32]>::try_from(&k[..]).map(BlobHash);
        match (hash, info) {
            (Ok(h), Ok(info)) => {
                infos.insert(h, info.clone());
            }
            (_, Err(e)) => report.problem(
                ProblemKind::Refcount,
                key::hex(k),
                format!("undecodable blob info: {e}"),
            ),
            (Err(_), _) => report.problem(
                ProblemKind::Refcount,
                key::hex(k),
                "blob key is not a 32-byte hash",
            ),
        }
    }
    infos
}

/// Checks every record and its blob; returns the entries whose blob is
/// missing or damaged, with the file blobs found damaged.
fn check_records(
    store: &Store,
    snap: &Snapshot,
    infos: &HashMap<BlobHash, BlobInfo>,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> Vec<(Vec<u8>, Record, bool)> {
    let inline: HashSet<&[u8]> = snap.inline.iter().map(|k| k.as_slice()).collect();
    let mut bad = Vec::new();
    let mut verdicts: HashMap<BlobHash, Option<(ProblemKind, String)>> = HashMap::new();
    let total = snap.records.len() as u64;
    let mut bytes = ByteTally::new(snap, opts);
    for (done, (k, rec)) in (1..).zip(&snap.records) {
        if let Some(tick) = &opts.progress {
            tick(done, total);
        }
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                report.problem(ProblemKind::UndecodableRecord, key::display(k), e.clone());
                continue;
            }
        };
        if !infos.contains_key(&rec.hash) {
            report.problem(
                ProblemKind::UnknownBlob,
                key::display(k),
                format!("blob {} has no refcount entry", rec.hash),
            );
        }
        let verdict = verdicts.entry(rec.hash).or_insert_with(|| {
            let counter = bytes.counter();
            let v = check_blob(
                store,
                rec,
                infos.get(&rec.hash),
                &inline,
                opts.full,
                counter,
            );
            bytes.finished(rec.raw_size);
            v
        });
        if let Some((kind, why)) = verdict {
            report.problem(*kind, key::display(k), format!("blob {}: {why}", rec.hash));
            bad.push((k.clone(), rec.clone(), *kind == ProblemKind::CorruptBlob));
        }
    }
    bad
}

/// The payload bytes a full check has done, for
/// [`VerifyOptions::byte_progress`].
struct ByteTally {
    report: Option<VerifyByteProgress>,
    done: u64,
    total: u64,
}

impl ByteTally {
    fn new(snap: &Snapshot, opts: &VerifyOptions) -> ByteTally {
        let report = opts.byte_progress.clone().filter(|_| opts.full);
        let mut total = 0;
        if report.is_some() {
            let mut seen = HashSet::new();
            for rec in snap.records.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                if seen.insert(rec.hash) {
                    total += rec.raw_size;
                }
            }
        }
        ByteTally {
            report,
            done: 0,
            total,
        }
    }

    /// A counter for the blob about to be checked.
    fn counter(&self) -> Option<blobs::ReadCounter> {
        let report = self.report.clone()?;
        let (base, total) = (self.done, self.total);
        Some(Arc::new(move |n| report(base + n, total)))
    }

    /// One payload of `raw_size` bytes was checked (or found missing).
    fn finished(&mut self, raw_size: u64) {
        let Some(report) = &self.report else { return };
        self.done = (self.done + raw_size).min(self.total);
        report(self.done, self.total);
    }
}

fn check_blob(
    store: &Store,
    rec: &Record,
    info: Option<&BlobInfo>,
    inline: &HashSet<&[u8]>,
    full: bool,
    counter: Option<blobs::ReadCounter>,
) -> Option<(ProblemKind, String)> {
    if rec.inline {
        if !inline.contains(&rec.hash.0[..]) {
            return Some((ProblemKind::MissingBlob, "inline bytes are missing".into()));
        }
        if !full {
            return None;
        }
        let bytes = match store.index().inline_bytes(&rec.hash) {
            Ok(Some(b)) => b,
            Ok(None) => return Some((ProblemKind::MissingBlob, "inline bytes are missing".into())),
            Err(e) => return Some((ProblemKind::CorruptBlob, e.to_string())),
        };
        return blobs::decode(&bytes, rec.codec, rec.raw_size, &rec.hash)
            .err()
            .map(blob_verdict);
    }
    let expected = info.map_or(rec.stored_size, |i| i.stored_size);
    store
        .blob_store()
        .inspect(&rec.hash, rec.codec, rec.raw_size, expected, full, counter)
        .map(file_verdict)
}

/// A blob file's problem as verify reports it.
fn file_verdict(p: FileProblem) -> (ProblemKind, String) {
    let kind = match p.missing {
        true => ProblemKind::MissingBlob,
        false => ProblemKind::CorruptBlob,
    };
    (kind, p.why)
}

fn blob_verdict(e: BlobError) -> (ProblemKind, String) {
    match e {
        BlobError::Missing => (ProblemKind::MissingBlob, "missing".into()),
        BlobError::Corrupt(why) => (ProblemKind::CorruptBlob, why),
        BlobError::Io(e) => (ProblemKind::CorruptBlob, e.to_string()),
    }
}

fn check_refcounts(
    snap: &Snapshot,
    infos: &HashMap<BlobHash, BlobInfo>,
    report: &mut VerifyReport,
) {
    let mut counted: HashMap<BlobHash, u64> = HashMap::new();
    for rec in snap.records.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        *counted.entry(rec.hash).or_default() += 1;
    }
    for (hash, info) in infos {
        let n = counted.get(hash).copied().unwrap_or(0);
        if info.state == BlobState::Live && info.refs != n {
            report.problem(
                ProblemKind::Refcount,
                hash.to_hex(),
                format!("refcount {} but {n} entries use it", info.refs),
            );
        }
        if info.state != BlobState::Live && n > 0 {
            report.problem(
                ProblemKind::Refcount,
                hash.to_hex(),
                format!("{n} entries use a blob in state {:?}", info.state),
            );
        }
    }
}

fn check_expiry(snap: &Snapshot, report: &mut VerifyReport) {
    let mut want: HashSet<Vec<u8>> = HashSet::new();
    for (k, rec) in &snap.records {
        if let Ok(r) = rec {
            let mut ek = r.expires_at.to_be_bytes().to_vec();
            ek.extend_from_slice(k);
            want.insert(ek);
        }
    }
    for ek in &snap.expiry {
        if !want.remove(ek) {
            let subject = ek.get(8..).map_or_else(|| key::hex(ek), key::display);
            report.problem(
                ProblemKind::Expiry,
                subject,
                "expiry order lists an entry that does not exist",
            );
        }
    }
    for ek in want {
        report.problem(
            ProblemKind::Expiry,
            key::display(&ek[8..]),
            "entry missing from the expiry order",
        );
    }
}

fn check_totals(snap: &Snapshot, infos: &HashMap<BlobHash, BlobInfo>, report: &mut VerifyReport) {
    let recs: Vec<&Record> = snap
        .records
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let live: Vec<&BlobInfo> = infos
        .values()
        .filter(|i| i.state == BlobState::Live)
        .collect();
    let checks = [
        ("entries", snap.state.entries, snap.records.len() as u64),
        (
            "raw_bytes",
            snap.state.raw_bytes,
            recs.iter().map(|r| r.raw_size).sum(),
        ),
        ("blobs", snap.state.blobs, live.len() as u64),
        (
            "blob_bytes",
            snap.state.blob_bytes,
            live.iter().map(|i| i.disk_bytes).sum(),
        ),
    ];
    for (name, recorded, actual) in checks {
        if recorded != actual {
            report.problem(
                ProblemKind::Totals,
                name,
                format!("recorded {recorded}, recount {actual}"),
            );
        }
    }
    let mut per_backend: HashMap<String, (u64, u64)> = HashMap::new();
    for (k, rec) in &snap.records {
        if let (Some((b, _)), Ok(r)) = (key::decode(k), rec) {
            let e = per_backend.entry(b).or_default();
            e.0 += 1;
            e.1 += r.raw_size;
        }
    }
    for (name, t) in &snap.backends {
        let actual = per_backend.remove(name).unwrap_or_default();
        if (t.entries, t.raw_bytes) != actual {
            report.problem(
                ProblemKind::Totals,
                format!("backend {name}"),
                format!(
                    "recorded {} entries / {} bytes, recount {} / {}",
                    t.entries, t.raw_bytes, actual.0, actual.1
                ),
            );
        }
    }
    for (name, (n, _)) in per_backend {
        report.problem(
            ProblemKind::Totals,
            format!("backend {name}"),
            format!("{n} entries not counted"),
        );
    }
}

/// What [`check_files`] found that a repair fixes on disk.
#[derive(Default)]
struct FileFixes {
    /// Blob files open to group or others.
    loose: Vec<PathBuf>,
    /// Entries in `blobs/` that are not blobs.
    foreign: Vec<PathBuf>,
}

/// Walks `blobs/`: counts orphan files, reports foreign ones and blob files
/// with group or other permission bits.
fn check_files(
    store: &Store,
    known: &dyn Fn(&BlobHash) -> bool,
    report: &mut VerifyReport,
) -> Result<FileFixes> {
    let cache = &store.layout_root();
    let root = cache.join("blobs");
    let mut fixes = FileFixes::default();
    for (path, what) in blobs::walk(&root)? {
        match what {
            Walked::Blob(h) if known(&h) => check_mode(cache, path, report, &mut fixes),
            // A blob's outboard lives and goes with it; one without its
            // blob is an orphan GC removes.
            Walked::Outboard(h) if store.blob_store().has_file(&h) => {
                check_mode(cache, path, report, &mut fixes)
            }
            Walked::Blob(_) | Walked::Outboard(_) => report.orphan_files += 1,
            Walked::Foreign => {
                report.problem(
                    ProblemKind::ForeignFile,
                    path.display().to_string(),
                    "not a blob",
                );
                fixes.foreign.push(path);
            }
        }
    }
    Ok(fixes)
}

fn check_mode(cache: &Path, path: PathBuf, report: &mut VerifyReport, fixes: &mut FileFixes) {
    let Ok(meta) = fsutil::metadata_in(cache, &path) else {
        return; // removed meanwhile: the record checks report what matters
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    report.problem(
        ProblemKind::Permissions,
        path.display().to_string(),
        format!("mode {mode:04o}, expected 0600"),
    );
    fixes.loose.push(path);
}

/// Sets loose blob files back to 0600 and moves foreign entries out of
/// `blobs/` into `quarantine/` (never deleted: they may be someone's).
fn repair_files(store: &Store, fixes: &FileFixes) -> Result<u64> {
    let cache = &store.layout_root();
    for path in &fixes.loose {
        let file = fsutil::open_in(cache, path, fsutil::OpenHow::Read).ctx("open", path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .ctx("chmod", path)?;
    }
    if fixes.foreign.is_empty() {
        return Ok(fixes.loose.len() as u64);
    }
    let quarantine = cache.join("quarantine");
    fsutil::ensure_dir_in(cache, &quarantine)?;
    for path in &fixes.foreign {
        let to = quarantine_name(cache, &quarantine, path);
        fsutil::rename_in(cache, path, &to).ctx("move to quarantine", path)?;
        log::warn!("moved foreign {} to {}", path.display(), to.display());
    }
    Ok((fixes.loose.len() + fixes.foreign.len()) as u64)
}

/// A free name in `quarantine/` for `path` (`blobs/ab/x` → `ab_x`, then
/// `ab_x.1`, `ab_x.2`, ... when taken).
fn quarantine_name(cache: &Path, quarantine: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix(cache.join("blobs")).unwrap_or(path);
    let flat: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let base = flat.join("_");
    let mut candidate = quarantine.join(&base);
    let mut n = 0u32;
    while fsutil::metadata_in(cache, &candidate).is_ok() {
        n += 1;
        candidate = quarantine.join(format!("{base}.{n}"));
    }
    candidate
}

fn repair(store: &Store, bad: &[(Vec<u8>, Record, bool)]) -> Result<u64> {
    let mut changed = 0;
    for (k, rec, corrupt) in bad {
        if *corrupt && !rec.inline {
            store.blob_store().discard_corrupt(&rec.hash);
        }
        let op = Op::Delete {
            key: ByteBuf::from(k.clone()),
            hash: Some(rec.hash),
        };
        store.apply(&op)?;
        changed += 1;
    }
    changed += rebuild_counts(store)?;
    Ok(changed)
}

/// Recomputes refcounts and totals from the entries (see
/// `Index::rebuild_counts`), describing unknown file blobs from disk.
pub(crate) fn rebuild_counts(store: &Store) -> Result<u64> {
    let blobs_store = store.blob_store().clone();
    let file_info = move |rec: &Record| -> Option<BlobInfo> {
        let meta = blobs_store
            .file_meta(&rec.hash)
            .ok()
            .filter(|m| m.is_file())?;
        Some(file_blob_info(rec, meta.len(), fsutil::disk_bytes(&meta)))
    };
    store.index().rebuild_counts(&file_info)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{PutOptions, StoreOptions};

    #[test]
    fn progress_reports_every_entry_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..5u8 {
            store.put("b", [i], &[i; 100], &PutOptions::new()).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let opts = VerifyOptions::new()
            .full(true)
            .progress(Arc::new(move |done, total| {
                sink.lock().unwrap().push((done, total))
            }));
        assert!(store.verify(opts).unwrap().is_clean());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=5).map(|d| (d, 5)).collect::<Vec<_>>());
    }
}
