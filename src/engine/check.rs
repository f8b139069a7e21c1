//! Checking the whole engine after the fact (what `Store::verify` runs on
//! a format-2 cache): every record decodes and names a stored header set;
//! its payload is there (the pack holds the needle's bytes, the blob file
//! has its size) and, in a full check, decodes to bytes matching its
//! blake3 (each needle read and checksummed, each blob file streamed in
//! bounded memory); every pack file opens and carries its header. A repair
//! removes the entries found damaged with a logged DELETE each (only if the
//! key still holds the record that was checked) and the damaged blob files.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{Engine, LeanRecord, Place};
use crate::blobs::{BlobHash, ReadCounter};
use crate::error::Result;
use crate::pack::{FILE_HEADER_LEN, Location, PackError, file_header};
use crate::record::Codec;

/// What [`Engine::check`] found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The lean record does not decode.
    UndecodableRecord,
    /// The header set the record names is missing or damaged.
    MissingHeaderSet,
    /// The payload is not there: no pack, no blob file.
    MissingPayload,
    /// The payload is there but damaged (checksum, length or hash).
    DamagedPayload,
    /// A pack file cannot be opened or does not carry its header.
    UnreadablePack,
}

/// One thing [`Engine::check`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What kind.
    pub damage: Damage,
    /// The entry's encoded key (`None` for a pack).
    pub key: Option<Vec<u8>>,
    /// The pack, for [`Damage::UnreadablePack`].
    pub pack: Option<u32>,
    /// What exactly.
    pub detail: String,
    /// The record found damaged: a repair removes the entry only while it
    /// still holds this one.
    record: Option<sled::IVec>,
    /// The damaged blob file a repair removes.
    blob_file: Option<BlobHash>,
}

/// Progress callbacks, given the work done and the total.
pub type CheckProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How [`Engine::check`] checks.
#[derive(Clone, Default)]
pub struct CheckOptions {
    /// Decode every payload and compare it with its hash (reads every
    /// payload byte); otherwise only presence and sizes.
    pub full: bool,
    /// Called after each entry with its position (1-based) and the count.
    pub on_entry: Option<CheckProgress>,
    /// Called in a full check with the payload bytes checked so far and
    /// the total.
    pub on_bytes: Option<CheckProgress>,
}

/// What [`Engine::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Entries checked.
    pub entries: u64,
    /// Distinct payloads checked: each needle, each blob file once.
    pub payloads: u64,
    /// The blob files the records name.
    pub blob_files: HashSet<BlobHash>,
    /// Everything found wrong.
    pub findings: Vec<Finding>,
}

/// A payload's problem: what kind, why, and the blob file to remove.
type Verdict = Option<(Damage, String, Option<BlobHash>)>;

/// One check in progress.
struct Run<'a> {
    engine: &'a Engine,
    opts: &'a CheckOptions,
    pack_lens: HashMap<u32, Option<u64>>,
    files: HashMap<BlobHash, Verdict>,
    bytes_done: u64,
    bytes_total: u64,
    report: CheckReport,
}

impl Engine {
    /// Checks every entry and pack (see the module doc); changes nothing.
    pub fn check(&self, opts: &CheckOptions) -> Result<CheckReport> {
        let mut records = Vec::new();
        for kv in self.records.iter() {
            records.push(kv.map_err(|e| self.index_err(e))?);
        }
        let mut run = Run {
            engine: self,
            opts,
            pack_lens: HashMap::new(),
            files: HashMap::new(),
            bytes_done: 0,
            bytes_total: bytes_to_check(&records, opts),
            report: CheckReport {
                entries: records.len() as u64,
                ..CheckReport::default()
            },
        };
        let total = records.len() as u64;
        for (done, (k, raw)) in (1..).zip(&records) {
            run.entry(k, raw)?;
            if let Some(tick) = &opts.on_entry {
                tick(done, total);
            }
        }
        run.packs()?;
        Ok(run.report)
    }

    /// Removes what `findings` name: each entry still holding the record
    /// found damaged (a logged DELETE), and each damaged blob file. Returns
    /// the keys and files removed.
    pub fn repair(&self, findings: &[Finding]) -> Result<u64> {
        let mut changed = 0;
        let mut discarded = HashSet::new();
        for f in findings {
            if let Some(hash) = f.blob_file.filter(|h| discarded.insert(*h)) {
                self.blobs.discard_corrupt(&hash);
                changed += 1;
            }
            if let (Some(key), Some(raw)) = (&f.key, &f.record) {
                changed += u64::from(self.delete_if_unchanged(key, raw)?);
            }
        }
        Ok(changed)
    }
}

/// Payload bytes a full check with a byte counter reads: each needle's,
/// each blob file's once.
fn bytes_to_check(records: &[(sled::IVec, sled::IVec)], opts: &CheckOptions) -> u64 {
    if !opts.full || opts.on_bytes.is_none() {
        return 0;
    }
    let mut files = HashSet::new();
    let mut total = 0;
    for r in records
        .iter()
        .filter_map(|(_, v)| LeanRecord::decode(v).ok())
    {
        let counted = match r.place {
            Place::Pack(_) => true,
            Place::BlobFile { .. } => files.insert(r.hash),
        };
        if counted {
            total += r.raw_size;
        }
    }
    total
}

impl Run<'_> {
    fn entry(&mut self, key: &sled::IVec, raw: &sled::IVec) -> Result<()> {
        let record = match LeanRecord::decode(raw) {
            Ok(r) => r,
            Err(why) => {
                self.found(key, raw, Damage::UndecodableRecord, why, None);
                return Ok(());
            }
        };
        if let Err(why) = self.engine.headers.get(record.header_set) {
            let why = format!("header set {:016x}: {why}", record.header_set);
            self.found(key, raw, Damage::MissingHeaderSet, why, None);
            return Ok(());
        }
        let verdict = match record.place {
            Place::Pack(loc) => {
                self.report.payloads += 1;
                let v = self.needle(loc, &record.hash);
                self.finished(record.raw_size);
                v
            }
            Place::BlobFile { stored_size } => self.blob_file(&record, stored_size),
        };
        let Some((damage, why, file)) = verdict else {
            return Ok(());
        };
        // Changed meanwhile (a put, a delete, a compaction): not damage.
        let now = self.engine.records.get(key);
        if now.map_err(|e| self.engine.index_err(e))?.as_ref() == Some(raw) {
            self.found(key, raw, damage, why, file);
        }
        Ok(())
    }

    fn found(
        &mut self,
        key: &[u8],
        raw: &sled::IVec,
        damage: Damage,
        detail: String,
        blob_file: Option<BlobHash>,
    ) {
        self.report.findings.push(Finding {
            damage,
            key: Some(key.to_vec()),
            pack: None,
            detail,
            record: Some(raw.clone()),
            blob_file,
        });
    }

    /// The needle at `loc`: read and verified in a full check, else only
    /// found within its pack.
    fn needle(&mut self, loc: Location, hash: &BlobHash) -> Verdict {
        if self.opts.full {
            return match self.engine.reader.read(loc, hash) {
                Ok(_) => None,
                Err(e @ PackError::Missing { .. }) => {
                    Some((Damage::MissingPayload, e.to_string(), None))
                }
                Err(e) => Some((Damage::DamagedPayload, e.to_string(), None)),
            };
        }
        let dir = &self.engine.dir;
        let len = *self.pack_lens.entry(loc.pack).or_insert_with(|| {
            std::fs::symlink_metadata(dir.path(loc.pack))
                .ok()
                .map(|m| m.len())
        });
        match len {
            None => Some((
                Damage::MissingPayload,
                format!("pack {:08x} does not exist", loc.pack),
                None,
            )),
            Some(n) if n < loc.end() => Some((
                Damage::DamagedPayload,
                format!(
                    "pack {:08x} ends at {n}, inside the needle at {}",
                    loc.pack, loc.offset
                ),
                None,
            )),
            Some(_) => None,
        }
    }

    /// The blob file of `record`, checked once per file.
    fn blob_file(&mut self, record: &LeanRecord, stored_size: u64) -> Verdict {
        let hash = record.hash;
        self.report.blob_files.insert(hash);
        if let Some(v) = self.files.get(&hash) {
            return v.clone();
        }
        self.report.payloads += 1;
        let codec = if record.zstd { Codec::Zstd } else { Codec::Raw };
        let counter = self.counter();
        let problem = self.engine.blobs.inspect(
            &hash,
            codec,
            record.raw_size,
            stored_size,
            self.opts.full,
            counter,
        );
        self.finished(record.raw_size);
        let verdict = problem.map(|p| match p.missing {
            true => (Damage::MissingPayload, p.why, None),
            false => (Damage::DamagedPayload, p.why, Some(hash)),
        });
        self.files.insert(hash, verdict.clone());
        verdict
    }

    /// A byte counter for the blob file about to be streamed.
    fn counter(&self) -> Option<ReadCounter> {
        let report = self.opts.on_bytes.clone().filter(|_| self.opts.full)?;
        let (base, total) = (self.bytes_done, self.bytes_total);
        Some(Arc::new(move |n| report(base + n, total)))
    }

    /// One payload of `raw_size` bytes was checked.
    fn finished(&mut self, raw_size: u64) {
        let Some(report) = self.opts.on_bytes.as_ref().filter(|_| self.opts.full) else {
            return;
        };
        self.bytes_done = (self.bytes_done + raw_size).min(self.bytes_total);
        report(self.bytes_done, self.bytes_total);
    }

    /// Every pack file must open and carry its header.
    fn packs(&mut self) -> Result<()> {
        let ids = self.engine.dir.pack_ids().map_err(super::pack_error)?;
        for id in ids {
            let Some(why) = self.pack_problem(id) else {
                continue;
            };
            self.report.findings.push(Finding {
                damage: Damage::UnreadablePack,
                key: None,
                pack: Some(id),
                detail: why,
                record: None,
                blob_file: None,
            });
        }
        Ok(())
    }

    fn pack_problem(&self, id: u32) -> Option<String> {
        let file = match self.engine.dir.open_pack(id, false) {
            Ok(f) => f,
            Err(e) => return Some(e.to_string()),
        };
        let mut head = [0u8; FILE_HEADER_LEN as usize];
        if let Err(e) = file.read_exact_at(&mut head, 0) {
            return Some(format!("its header cannot be read: {e}"));
        }
        (head != file_header(id)).then(|| "it does not start with its pack header".to_string())
    }
}
