//! Reading an archive: manifest (checksum and signature checked first),
//! then blobs (verified, staged, linked), then the records, in journaled
//! batches. A refused import takes back the blob files it linked in.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

use serde_bytes::ByteBuf;

use super::seal::{self, ArchiveIntegrity, SignKey, Unsealed};
use super::{
    ARCHIVE_FORMAT_VERSION, ImportOptions, ImportReport, MANIFEST_NAME, MAX_MANIFEST, Manifest,
    ManifestBlob, ManifestEntry, ManifestHead, Progress, SEALED_FORMAT, member_hash, member_name,
    report_progress,
};
use crate::blobs::{
    self, BlobError, BlobHash, ImportBlobError, Scratch, StoredBlob, Written, copy_verified,
};
use crate::engine::{Carried, Engine, EntryInfo, HeaderSet, PutMeta};
use crate::error::{Error, Result};
use crate::index::{ImportItem, Op, Outcome};
use crate::key;
use crate::record::{BlobInfo, BlobState, RECORD_VERSION, from_cbor};
use crate::store::Store;

/// Records per [`Op::Import`] (one journal frame each).
const BATCH: usize = 1000;
/// Inline bytes per batch, well under the journal's frame limit.
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// How many times a batch is retried while the sweeper holds one of its
/// blobs.
const ATTEMPTS: u32 = 50;

/// Where a blob the import needs stands.
enum Need {
    /// The cache already holds it.
    Present(BlobInfo),
    /// Expected from the archive.
    Wanted,
    /// Copied from the archive: a file in place, or inline bytes in the
    /// pack at `(offset, len)`.
    Placed {
        info: BlobInfo,
        inline: Option<(u64, usize)>,
    },
    /// Failed verification (only kept with `skip_damaged`).
    Rejected,
}

/// One import in progress.
struct Session<'a> {
    store: &'a Store,
    opts: &'a ImportOptions,
    now: u64,
    table: HashMap<BlobHash, ManifestBlob>,
    needs: HashMap<BlobHash, Need>,
    seen: HashSet<BlobHash>,
    /// Inline blobs wait here until their records are applied, so memory
    /// stays bounded however many there are.
    pack: Option<Scratch>,
    pack_len: u64,
    /// Blob files this import linked in (none was there before), with the
    /// mtime each had then: taken back if the import is refused.
    linked: Vec<(BlobHash, SystemTime)>,
    report: ImportReport,
    progress: Progress,
}

fn bad(member: &str, reason: impl Into<String>) -> Error {
    Error::BadArchive {
        member: member.to_string(),
        reason: reason.into(),
    }
}

impl Store {
    /// Imports an archive written by [`Store::export`], streaming it in
    /// bounded memory. The manifest's checksum (and, with
    /// [`ImportOptions::sign_key`], its signature) is checked first. Each
    /// blob must be listed in the manifest, once, with its listed size, and
    /// is verified (decoded and its blake3 compared with its name) before
    /// it is linked into the cache; blobs the cache already holds are
    /// skipped. Records are applied, per key as [`ImportOptions::merge`]
    /// says, only once the whole archive has been read: a truncated,
    /// damaged, edited, unsafe (`../x`, absolute paths, links, devices),
    /// forged or newer-format archive returns an error naming the member or
    /// key and imports nothing visible; the blob files it had linked in and
    /// no entry references are removed again (unless a GC sweep is running
    /// then: GC removes them later).
    ///
    /// See [`Store::export`] for an example.
    pub fn import(&self, reader: impl Read, opts: &ImportOptions) -> Result<ImportReport> {
        if self.engine().is_some() {
            self.check_write()?;
        }
        let mut archive = tar::Archive::new(reader);
        let mut members = archive
            .entries()
            .map_err(|e| bad(MANIFEST_NAME, format!("the archive cannot be read: {e}")))?;
        let (manifest, integrity) = read_manifest(&mut members, opts.sign_key.as_ref())?;
        let mut s = Session::new(self, opts, &manifest)?;
        s.report.integrity = integrity;
        match s.run(&mut members, &manifest) {
            Ok(()) => Ok(s.report),
            Err(e) => {
                s.take_back();
                Err(e)
            }
        }
    }
}

/// Reads and checks the first member: the manifest, and what could be
/// checked of it.
fn read_manifest<R: Read>(
    members: &mut tar::Entries<'_, R>,
    key: Option<&SignKey>,
) -> Result<(Manifest, ArchiveIntegrity)> {
    let Some(first) = members.next() else {
        return Err(bad(MANIFEST_NAME, "the archive is empty"));
    };
    // The tar reader's message may quote the input's bytes: leave it out.
    let mut m = first.map_err(|e| {
        log::debug!("reading the first tar header failed: {e:?}");
        bad(
            MANIFEST_NAME,
            "no tar header where it should start: this is not a blobcache archive \
             (a compressed one must be decompressed first, e.g. zstd -dc)",
        )
    })?;
    let name = check_member(&m)?;
    if name != MANIFEST_NAME {
        return Err(bad(
            &name,
            format!("the first member must be {MANIFEST_NAME}: this is not a blobcache archive"),
        ));
    }
    let size = m.size();
    if size > MAX_MANIFEST {
        return Err(bad(
            &name,
            format!("it claims {size} bytes, more than the {MAX_MANIFEST} accepted"),
        ));
    }
    let mut bytes = Vec::new();
    let read = (&mut m).take(size).read_to_end(&mut bytes);
    if read.is_err() || bytes.len() as u64 != size {
        return Err(bad(
            &name,
            format!(
                "it ends after {} of its {size} bytes: the archive is truncated",
                bytes.len()
            ),
        ));
    }
    let (body, integrity) = open_manifest(bytes, key)?;
    let unreadable = |e: String| bad(MANIFEST_NAME, format!("it is not a readable manifest: {e}"));
    let manifest: Manifest = from_cbor(&body).map_err(unreadable)?;
    let expected = match integrity {
        ArchiveIntegrity::Unchecked => 1,
        _ => SEALED_FORMAT,
    };
    if manifest.format != expected {
        let reason = format!(
            "it says format {} inside a format {expected} archive",
            manifest.format
        );
        return Err(bad(MANIFEST_NAME, reason));
    }
    if manifest.entries != manifest.records.len() as u64 {
        return Err(bad(
            MANIFEST_NAME,
            format!(
                "it announces {} entries but holds {}",
                manifest.entries,
                manifest.records.len()
            ),
        ));
    }
    Ok((manifest, integrity))
}

/// The manifest's bytes out of the first member's, after the checks its
/// format allows: the checksum, and the signature when `key` is given.
fn open_manifest(bytes: Vec<u8>, key: Option<&SignKey>) -> Result<(Vec<u8>, ArchiveIntegrity)> {
    let head: ManifestHead = from_cbor(&bytes)
        .map_err(|e| bad(MANIFEST_NAME, format!("it is not a readable manifest: {e}")))?;
    match head.format {
        f if f > ARCHIVE_FORMAT_VERSION => Err(Error::NewerArchive {
            found: f,
            supported: ARCHIVE_FORMAT_VERSION,
        }),
        1 if key.is_some() => Err(Error::UnsignedArchive { format: 1 }),
        1 => {
            log::warn!(
                "importing an archive of format 1, which has no checksum: its manifest was \
                 not checked (its blobs are); export it again to get a checked archive"
            );
            Ok((bytes, ArchiveIntegrity::Unchecked))
        }
        SEALED_FORMAT => match seal::unseal(&bytes, key) {
            Ok((body, integrity)) => {
                if integrity == ArchiveIntegrity::SignatureNotChecked {
                    log::info!(
                        "the archive is signed; no key was given, so the signature was not checked"
                    );
                }
                Ok((body, integrity))
            }
            Err(Unsealed::Damaged(reason)) => Err(bad(MANIFEST_NAME, reason)),
            Err(Unsealed::Refused(e)) => Err(e),
        },
        f => Err(bad(
            MANIFEST_NAME,
            format!("it says format {f}, which no blobcache writes: it is damaged"),
        )),
    }
}

/// The member's name, if it is a regular file with a safe path.
fn check_member<R: Read>(m: &tar::Entry<'_, R>) -> Result<String> {
    let name = String::from_utf8_lossy(&m.path_bytes()).into_owned();
    if name.starts_with('/') || name.split('/').any(|c| c == "..") {
        return Err(bad(
            &name,
            "its path is absolute or climbs out with '..'; it was not extracted",
        ));
    }
    let t = m.header().entry_type();
    if !t.is_file() {
        let kind = if t.is_symlink() {
            "a symbolic link"
        } else if t.is_hard_link() {
            "a hard link"
        } else if t.is_character_special() || t.is_block_special() {
            "a device"
        } else if t.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(bad(
            &name,
            format!("it is {kind}; blobcache archives hold regular files only"),
        ));
    }
    Ok(name)
}

impl<'a> Session<'a> {
    fn new(store: &'a Store, opts: &'a ImportOptions, manifest: &Manifest) -> Result<Self> {
        let mut table = HashMap::with_capacity(manifest.blobs.len());
        for b in &manifest.blobs {
            if table.insert(b.hash, b.clone()).is_some() {
                let reason = format!("blob {} is listed twice", b.hash);
                return Err(bad(MANIFEST_NAME, reason));
            }
        }
        let progress = Progress {
            blobs_total: manifest.blobs.len() as u64,
            bytes_total: manifest.blobs.iter().map(|b| b.stored_size).sum(),
            ..Progress::default()
        };
        Ok(Session {
            store,
            opts,
            now: store.options().clock.now_ms(),
            table,
            needs: HashMap::new(),
            seen: HashSet::new(),
            pack: None,
            pack_len: 0,
            linked: Vec::new(),
            report: ImportReport {
                entries: manifest.entries,
                ..ImportReport::default()
            },
            progress,
        })
    }

    /// Everything after the manifest: plan, blobs, records.
    fn run<R: Read>(
        &mut self,
        members: &mut tar::Entries<'_, R>,
        manifest: &Manifest,
    ) -> Result<()> {
        let candidates = self.plan(&manifest.records)?;
        report_progress(&self.opts.progress, &self.progress);
        self.receive(members)?;
        self.check_complete(manifest)?;
        self.apply(manifest, &candidates)
    }

    /// After a refused import: removes the blob files it linked in that no
    /// entry references (see [`Store::reclaim_linked`]).
    fn take_back(&mut self) {
        if self.linked.is_empty() {
            return;
        }
        let linked = std::mem::take(&mut self.linked);
        let reclaimed = match self.store.engine() {
            Some(e) => e.remove_unnamed(&linked).map(Some),
            None => self.store.reclaim_linked(&linked),
        };
        match reclaimed {
            Ok(Some(n)) => log::debug!("refused import: removed {n} blob files it had linked in"),
            Ok(None) => log::info!(
                "refused import: a GC sweep is running, so the {} blob files it linked in \
                 are left to GC",
                linked.len()
            ),
            Err(e) => log::warn!(
                "refused import: could not remove the blob files it linked in ({e}); \
                 `blobcache gc` removes them later"
            ),
        }
    }

    /// Checks every record and picks those the merge policy takes now
    /// (checked again when they are applied); notes the blobs they need.
    fn plan(&mut self, records: &[ManifestEntry]) -> Result<Vec<usize>> {
        let mut keys = HashSet::with_capacity(records.len());
        let mut candidates = Vec::new();
        for (i, e) in records.iter().enumerate() {
            let valid = key::decode(&e.key)
                .is_some_and(|(b, s)| key::encode(&b, &s).is_ok_and(|k| k == e.key.as_slice()));
            if !valid {
                return Err(bad(MANIFEST_NAME, format!("entry {i} has an invalid key")));
            }
            if !keys.insert(e.key.as_slice()) {
                let reason = format!("entry {} appears twice", key::display(&e.key));
                return Err(bad(MANIFEST_NAME, reason));
            }
            let hash = e.record.hash;
            if !self.table.contains_key(&hash) {
                return Err(Error::ArchiveMissingBlob {
                    key: key::display(&e.key),
                    hash: hash.to_hex(),
                });
            }
            if !self.policy_takes(e)? {
                self.report.skipped += 1;
                continue;
            }
            candidates.push(i);
            if !self.needs.contains_key(&hash) {
                // Format 2 keeps no table of blobs: each is taken in.
                let present = match self.store.engine() {
                    Some(_) => None,
                    None => self.store.reusable_blob(&hash)?,
                };
                let need = match present {
                    Some(info) => Need::Present(info),
                    None => Need::Wanted,
                };
                self.needs.insert(hash, need);
            }
        }
        Ok(candidates)
    }

    fn policy_takes(&self, e: &ManifestEntry) -> Result<bool> {
        if let Some(engine) = self.store.engine() {
            let (backend, signature) = key::decode(&e.key).unwrap_or_default();
            let held = engine.info(&backend, signature)?;
            let held = held.map(|(i, _)| (i.created_at, i.fetched_at));
            return Ok(self.opts.merge.takes_times(times(&e.record), held));
        }
        let held = match self.store.index().lookup(&e.key) {
            Ok(found) => found.map(|l| l.record),
            Err(Error::CorruptRecord { .. }) => None,
            Err(err) => return Err(err),
        };
        Ok(self.opts.merge.takes(&e.record, held.as_ref()))
    }

    /// Reads the blob members, copying in those still needed.
    fn receive<R: Read>(&mut self, members: &mut tar::Entries<'_, R>) -> Result<()> {
        let mut last = MANIFEST_NAME.to_string();
        for m in members {
            let mut m = m.map_err(|e| {
                bad(
                    &last,
                    format!("the archive is damaged or truncated after it: {e}"),
                )
            })?;
            let name = check_member(&m)?;
            let Some(hash) = member_hash(&name) else {
                return Err(bad(&name, "not a member of a blobcache archive"));
            };
            let Some(desc) = self.table.get(&hash).cloned() else {
                return Err(bad(&name, "this blob is not listed in the manifest"));
            };
            if !self.seen.insert(hash) {
                return Err(bad(&name, "this blob appears twice in the archive"));
            }
            let size = m.size();
            if size != desc.stored_size {
                let reason = format!(
                    "it holds {size} bytes but the manifest lists {}: the archive is damaged or was edited",
                    desc.stored_size
                );
                return Err(bad(&name, reason));
            }
            let wanted = matches!(self.needs.get(&hash), Some(Need::Wanted));
            if wanted {
                self.take_blob(&mut m, &name, &desc, size)?;
            } else {
                self.report.blobs_skipped += 1;
                self.report.bytes_skipped += size;
            }
            self.progress.blobs_done += 1;
            self.progress.bytes_done += size;
            report_progress(&self.opts.progress, &self.progress);
            last = name;
        }
        Ok(())
    }

    /// Copies one blob in, verifying it.
    fn take_blob(
        &mut self,
        src: &mut dyn Read,
        name: &str,
        desc: &ManifestBlob,
        size: u64,
    ) -> Result<()> {
        let want = StoredBlob {
            hash: desc.hash,
            codec: desc.codec,
            raw_size: desc.raw_size,
            stored_len: size,
        };
        // Format 2: needles up to its blob threshold (by payload size).
        let small = match self.store.engine() {
            Some(e) => desc.raw_size <= e.blob_threshold() as u64,
            None => size <= self.store.options().inline_threshold as u64,
        };
        let placed = if small {
            self.take_inline(src, &want)
        } else {
            self.store.blob_store().import_stored(src, &want).map(|w| {
                self.note_linked(&w);
                Need::Placed {
                    info: self.blob_info(&want, false, w.stored_size, w.disk_bytes),
                    inline: None,
                }
            })
        };
        let need = match placed {
            Ok(need) => {
                self.report.blobs_imported += 1;
                self.report.bytes_imported += size;
                need
            }
            Err(ImportBlobError::Truncated { got, want }) => {
                let reason =
                    format!("it ends after {got} of its {want} bytes: the archive is truncated");
                return Err(bad(name, reason));
            }
            Err(ImportBlobError::Corrupt(why)) if self.opts.skip_damaged => {
                log::warn!("import: blob member {name} rejected: {why}");
                self.report.blobs_rejected += 1;
                self.report.bytes_rejected += size;
                Need::Rejected
            }
            Err(ImportBlobError::Corrupt(why)) => {
                return Err(bad(name, format!("the blob is damaged: {why}")));
            }
            Err(ImportBlobError::Write(e)) => {
                let path = self
                    .pack
                    .as_ref()
                    .map(|p| p.path.clone())
                    .unwrap_or_default();
                return Err(Error::io("write", path, e));
            }
            Err(ImportBlobError::Store(e)) => return Err(e),
        };
        self.needs.insert(desc.hash, need);
        Ok(())
    }

    /// Remembers a file this import put in place (not one that was there).
    fn note_linked(&mut self, w: &Written) {
        if w.existed {
            return;
        }
        let mtime = self
            .store
            .blob_store()
            .file_meta(&w.hash)
            .and_then(|m| m.modified());
        match mtime {
            Ok(t) => self.linked.push((w.hash, t)),
            // Not removable safely without it: left to GC.
            Err(e) => log::debug!("blob {} linked by import: no mtime ({e})", w.hash),
        }
    }

    /// Verifies a small blob into memory and parks it in the pack file.
    fn take_inline(
        &mut self,
        src: &mut dyn Read,
        want: &StoredBlob,
    ) -> std::result::Result<Need, ImportBlobError> {
        let mut bytes = Vec::with_capacity(usize::try_from(want.stored_len).unwrap_or(0));
        copy_verified(src, &mut bytes, want)?;
        if self.pack.is_none() {
            let pack = self
                .store
                .blob_store()
                .scratch()
                .map_err(ImportBlobError::Store)?;
            self.pack = Some(pack);
        }
        let offset = self.pack_len;
        if let Some(pack) = &self.pack {
            pack.file
                .write_all_at(&bytes, offset)
                .map_err(ImportBlobError::Write)?;
        }
        self.pack_len += bytes.len() as u64;
        let n = bytes.len() as u64;
        Ok(Need::Placed {
            info: self.blob_info(want, true, n, n),
            inline: Some((offset, bytes.len())),
        })
    }

    fn blob_info(&self, want: &StoredBlob, inline: bool, stored: u64, disk: u64) -> BlobInfo {
        BlobInfo {
            version: RECORD_VERSION,
            refs: 1,
            state: BlobState::Live,
            codec: want.codec,
            inline,
            raw_size: want.raw_size,
            stored_size: stored,
            disk_bytes: disk,
            since: self.now,
            level: None,
        }
    }

    /// Every blob the manifest lists must have been in the archive.
    fn check_complete(&self, manifest: &Manifest) -> Result<()> {
        match manifest.blobs.iter().find(|b| !self.seen.contains(&b.hash)) {
            Some(b) => Err(bad(
                &member_name(&b.hash),
                "it is missing: the archive ends before it (truncated?)",
            )),
            None => Ok(()),
        }
    }

    /// Applies the chosen records in batches.
    fn apply(&mut self, manifest: &Manifest, candidates: &[usize]) -> Result<()> {
        let shift = self.shift(manifest);
        if let Some(engine) = self.store.engine() {
            return self.apply_v2(engine, manifest, candidates, shift);
        }
        let mut batch = Vec::new();
        let mut inline_bytes = 0;
        for &i in candidates {
            let Some(item) = self.item(&manifest.records[i], shift)? else {
                self.report.rejected += 1;
                continue;
            };
            inline_bytes += item.inline.as_ref().map_or(0, |b| b.len());
            batch.push(item);
            if batch.len() >= BATCH || inline_bytes >= BATCH_BYTES {
                self.apply_batch(std::mem::take(&mut batch))?;
                inline_bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.apply_batch(batch)?;
        }
        Ok(())
    }

    /// How far expiry times move ([`ImportOptions::ttl_shift`]).
    fn shift(&self, manifest: &Manifest) -> u64 {
        if self.opts.ttl_shift {
            self.now.saturating_sub(manifest.created_at)
        } else {
            0
        }
    }

    /// Applies the chosen records to a format-2 cache, one engine put each
    /// keeping the entry's own times, the merge policy checked again under
    /// the engine's writer lock; then drops them from the memory tier.
    fn apply_v2(
        &mut self,
        engine: &Engine,
        manifest: &Manifest,
        candidates: &[usize],
        shift: u64,
    ) -> Result<()> {
        let mut written = Vec::new();
        let done = self.put_all_v2(engine, manifest, candidates, shift, &mut written);
        self.store.forget_v2(&written);
        done
    }

    fn put_all_v2(
        &mut self,
        engine: &Engine,
        manifest: &Manifest,
        candidates: &[usize],
        shift: u64,
        written: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let policy = self.opts.merge;
        for &i in candidates {
            let Some(item) = self.item(&manifest.records[i], shift)? else {
                self.report.rejected += 1;
                continue;
            };
            let r = &item.record;
            let raw;
            let payload = match &item.inline {
                Some(stored) => {
                    raw = blobs::decode(stored, r.codec, r.raw_size, &r.hash).map_err(|e| {
                        let why = match e {
                            BlobError::Corrupt(why) => why,
                            other => format!("{other:?}"),
                        };
                        bad(&member_name(&r.hash), format!("the blob is damaged: {why}"))
                    })?;
                    Carried::Bytes(&raw)
                }
                None => Carried::BlobFile {
                    hash: r.hash,
                    codec: r.codec,
                    raw_size: r.raw_size,
                },
            };
            let meta = PutMeta {
                ttl: None,
                headers: HeaderSet {
                    content_type: r.content_type.clone(),
                    category: Some(r.category.clone()),
                    headers: r.headers.clone(),
                },
                pinned: r.pinned,
                fetched_at: Some(r.fetched_at),
                expires_at: Some(r.expires_at),
                created_at: Some(r.created_at),
            };
            let incoming = times(r);
            let takes = |held: Option<&EntryInfo>| {
                policy.takes_times(incoming, held.map(|h| (h.created_at, h.fetched_at)))
            };
            if engine.put_carried(&item.key, payload, &meta, &takes)? {
                self.report.imported += 1;
                written.push(item.key.to_vec());
            } else {
                self.report.skipped += 1;
            }
        }
        Ok(())
    }

    /// The op item for one record, or `None` when its blob was rejected.
    fn item(&self, e: &ManifestEntry, shift: u64) -> Result<Option<ImportItem>> {
        let hash = e.record.hash;
        let (info, inline) = match self.needs.get(&hash) {
            Some(Need::Present(info)) => (info.clone(), None),
            Some(Need::Placed { info, inline }) => (info.clone(), self.read_pack(*inline)?),
            Some(Need::Rejected) => return Ok(None),
            Some(Need::Wanted) | None => {
                return Err(Error::ArchiveMissingBlob {
                    key: key::display(&e.key),
                    hash: hash.to_hex(),
                });
            }
        };
        let mut record = e.record.clone();
        record.version = RECORD_VERSION;
        record.codec = info.codec;
        record.inline = info.inline;
        record.raw_size = info.raw_size;
        record.stored_size = info.stored_size;
        if record.expires_at != u64::MAX {
            record.expires_at = record.expires_at.saturating_add(shift);
        }
        Ok(Some(ImportItem {
            key: e.key.clone(),
            record,
            blob: info,
            inline: inline.map(ByteBuf::from),
            gone_seen: None,
        }))
    }

    fn read_pack(&self, at: Option<(u64, usize)>) -> Result<Option<Vec<u8>>> {
        let (Some((offset, len)), Some(pack)) = (at, &self.pack) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; len];
        pack.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("read", &pack.path, e))?;
        Ok(Some(buf))
    }

    /// Applies one batch, retrying while the sweeper holds one of its
    /// blobs.
    fn apply_batch(&mut self, items: Vec<ImportItem>) -> Result<()> {
        let total = items.len() as u64;
        let mut op = Op::Import {
            items,
            policy: self.opts.merge,
        };
        for attempt in 0..ATTEMPTS {
            match self.store.apply(&op)? {
                Outcome::Retry { hash, gone_since } => {
                    self.prepare_retry(&mut op, &hash, gone_since, attempt)?
                }
                Outcome::Count(n) => {
                    self.report.imported += n;
                    self.report.skipped += total.saturating_sub(n);
                    return Ok(());
                }
                Outcome::Applied(_) => return Ok(()),
            }
        }
        let hash = match &op {
            Op::Import { items, .. } => items.first().map(|i| i.record.hash.to_hex()),
            _ => None,
        };
        Err(Error::Busy {
            hash: hash.unwrap_or_default(),
            attempts: ATTEMPTS,
        })
    }

    /// The sweeper was deleting `hash` (`gone_since: None`: wait) or has
    /// deleted it since it was checked: if the file this import linked is
    /// in place, say so and try again.
    fn prepare_retry(
        &self,
        op: &mut Op,
        hash: &BlobHash,
        gone_since: Option<u64>,
        attempt: u32,
    ) -> Result<()> {
        let Some(since) = gone_since else {
            std::thread::sleep(Duration::from_millis(2 + 2 * u64::from(attempt)));
            return Ok(());
        };
        let present = self
            .store
            .blob_store()
            .file_meta(hash)
            .is_ok_and(|m| m.is_file());
        if !present {
            return Err(Error::Busy {
                hash: hash.to_hex(),
                attempts: attempt + 1,
            });
        }
        if let Op::Import { items, .. } = op {
            for item in items.iter_mut().filter(|i| i.record.hash == *hash) {
                item.gone_seen = Some(since);
            }
        }
        Ok(())
    }
}

/// The times a merge policy compares: `(created_at, fetched_at)`.
fn times(r: &crate::record::Record) -> (u64, u64) {
    (r.created_at, r.fetched_at)
}
