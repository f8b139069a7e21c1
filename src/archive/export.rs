//! Writing an archive: the sealed manifest, then each needed blob once,
//! copied as stored.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{
    ARCHIVE_FORMAT_VERSION, ExportOptions, ExportReport, MANIFEST_NAME, Manifest, ManifestBlob,
    ManifestEntry, PAGE, Progress, member_name, report_progress, seal,
};
use crate::blobs::{self, BlobHash, CHUNK, Scratch};
use crate::clock::system_time_ms;
use crate::engine::{EntryInfo, HeaderSet};
use crate::error::{Error, Result};
use crate::index::RecordRow;
use crate::key::{self, Category};
use crate::record::{BlobState, Codec, RECORD_VERSION, Record, to_cbor};
use crate::store::Store;

/// Which records pass the export filters.
struct Filter {
    now: u64,
    live_only: bool,
    written_after: Option<u64>,
    used_after: Option<u64>,
}

impl Filter {
    fn new(opts: &ExportOptions, now: u64) -> Filter {
        Filter {
            now,
            live_only: opts.live_only,
            written_after: opts
                .since
                .map(|d| now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            used_after: opts.accessed_since.map(system_time_ms),
        }
    }

    fn keeps(&self, r: &Record) -> bool {
        (!self.live_only || r.expires_at > self.now)
            && self.written_after.is_none_or(|t| r.created_at >= t)
            && self
                .used_after
                .is_none_or(|t| r.last_access.max(r.created_at) >= t)
    }
}

impl Store {
    /// Writes the selected entries and their blobs to `writer` as one tar
    /// archive (see the module docs of `archive` in DESIGN terms: a CBOR
    /// manifest first, then each blob once, as stored). Blobs are copied
    /// without recompression, in bounded memory; the manifest (about 150
    /// bytes per entry) is built in memory.
    ///
    /// ```
    /// use blobcache::{ExportOptions, ImportOptions, PutOptions, Store, StoreOptions};
    ///
    /// # let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    /// let ci = Store::open(a.path(), StoreOptions::default())?;
    /// ci.put("tmdb", "movie/603", br#"{"id":603}"#, &PutOptions::new())?;
    ///
    /// let mut archive = Vec::new();
    /// let exported = ci.export(&mut archive, &ExportOptions::default())?;
    /// assert_eq!(exported.entries, 1);
    ///
    /// let next_run = Store::open(b.path(), StoreOptions::default())?;
    /// let imported = next_run.import(&archive[..], &ImportOptions::default())?;
    /// assert_eq!(imported.imported, 1);
    /// assert_eq!(next_run.get("tmdb", "movie/603")?.unwrap().data, br#"{"id":603}"#);
    /// # Ok::<(), blobcache::Error>(())
    /// ```
    pub fn export(&self, writer: impl Write, opts: &ExportOptions) -> Result<ExportReport> {
        if opts.accessed_since.is_some() {
            self.v1_only(
                "exporting by access time (accessed_since): access times are not tracked yet",
            )?;
        }
        // Access times reach the records in batches: flush them so the
        // accessed-since filter and the exported records see them.
        self.flush()?;
        let now = self.options().clock.now_ms();
        let (manifest, skipped, spool) = self.build_manifest(opts, now)?;
        let mut counted = Counted {
            inner: BufWriter::with_capacity(CHUNK, writer),
            n: 0,
        };
        let mut report = ExportReport {
            entries: manifest.entries,
            skipped,
            signed: opts.sign_key.is_some(),
            ..ExportReport::default()
        };
        let mut progress = Progress {
            blobs_total: manifest.blobs.len() as u64,
            bytes_total: manifest.blobs.iter().map(|b| b.stored_size).sum(),
            ..Progress::default()
        };
        {
            let mut tar = tar::Builder::new(&mut counted);
            let mtime = manifest.created_at / 1000;
            let bytes = seal::seal(manifest.format, to_cbor(&manifest), opts.sign_key.as_ref());
            append(
                &mut tar,
                MANIFEST_NAME,
                bytes.len() as u64,
                mtime,
                &bytes[..],
            )
            .map_err(|e| Error::ArchiveWrite { source: e })?;
            report_progress(&opts.progress, &progress);
            for blob in &manifest.blobs {
                let n = self.export_blob(&mut tar, blob, mtime, &spool)?;
                report.blobs += 1;
                report.blob_bytes += n;
                progress.blobs_done += 1;
                progress.bytes_done += n;
                report_progress(&opts.progress, &progress);
            }
            tar.finish()
                .map_err(|e| Error::ArchiveWrite { source: e })?;
        }
        counted
            .flush()
            .map_err(|e| Error::ArchiveWrite { source: e })?;
        report.archive_bytes = counted.n;
        Ok(report)
    }

    /// The manifest of the selected entries, how many were left out as
    /// unreadable, and the spool holding the needles of a format-2 cache.
    fn build_manifest(&self, opts: &ExportOptions, now: u64) -> Result<(Manifest, u64, Spool)> {
        let filter = Filter::new(opts, now);
        let mut backends = opts.backends.clone();
        backends.sort();
        backends.dedup();
        let prefixes = if backends.is_empty() {
            vec![Vec::new()]
        } else {
            backends
                .iter()
                .map(|b| key::prefix(b, b""))
                .collect::<Result<Vec<_>>>()?
        };
        let mut blobs: BTreeMap<BlobHash, Option<ManifestBlob>> = BTreeMap::new();
        let mut records = Vec::new();
        let mut skipped = 0;
        let mut spool = Spool::default();
        for prefix in &prefixes {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.export_page(prefix, after.as_deref())?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (k, rec) in page {
                    let mut rec = match rec {
                        Ok(r) if !filter.keeps(&r) => continue,
                        Ok(r) => r,
                        Err(why) => {
                            log::warn!("export: skipping {}: {why}", key::display(&k));
                            skipped += 1;
                            continue;
                        }
                    };
                    let blob = match blobs.entry(rec.hash) {
                        Entry::Occupied(o) => o.get().clone(),
                        Entry::Vacant(v) => {
                            v.insert(self.manifest_blob(&k, &rec, &mut spool)?).clone()
                        }
                    };
                    let Some(blob) = blob else {
                        log::warn!(
                            "export: skipping {}: its blob {} is missing",
                            key::display(&k),
                            rec.hash
                        );
                        skipped += 1;
                        continue;
                    };
                    if self.engine().is_some() {
                        // The record describes the member as archived.
                        (rec.codec, rec.stored_size) = (blob.codec, blob.stored_size);
                    }
                    records.push(ManifestEntry {
                        key: serde_bytes::ByteBuf::from(k),
                        record: rec,
                    });
                }
            }
        }
        let manifest = Manifest {
            format: ARCHIVE_FORMAT_VERSION,
            created_at: now,
            entries: records.len() as u64,
            blobs: blobs.into_values().flatten().collect(),
            records,
        };
        Ok((manifest, skipped, spool))
    }

    /// Up to a page of records under `prefix` after `after`, in key order:
    /// from the index, or a format-2 cache's entries as records (see
    /// [`record_of`]).
    fn export_page(&self, prefix: &[u8], after: Option<&[u8]>) -> Result<Vec<RecordRow>> {
        let Some(e) = self.engine() else {
            return self.index().scan(prefix, after, PAGE);
        };
        let page = e.scan(prefix, after, PAGE)?;
        Ok(page
            .into_iter()
            .map(|(k, info, headers)| {
                let rec = record_of(&info, &headers);
                (k, Ok(rec))
            })
            .collect())
    }

    /// The manifest's blob for the record `rec` of `key`: see
    /// [`Store::index_blob`]; on a format-2 cache a blob file as it is, a
    /// needle's payload spooled as the archive will carry it.
    fn manifest_blob(
        &self,
        key: &[u8],
        rec: &Record,
        spool: &mut Spool,
    ) -> Result<Option<ManifestBlob>> {
        let Some(e) = self.engine() else {
            return self.index_blob(&rec.hash);
        };
        if !rec.inline {
            return Ok(self.file_blob(&rec.hash, rec.codec, rec.raw_size));
        }
        let Some(payload) = e.needle_payload(key, &rec.hash)? else {
            return Ok(None);
        };
        let level = self.options().compression_level;
        let (codec, stored) = match blobs::compress(&payload, level) {
            Some(z) => (Codec::Zstd, z),
            None => (Codec::Raw, payload),
        };
        spool.add(self, rec.hash, &stored)?;
        Ok(Some(ManifestBlob {
            hash: rec.hash,
            codec,
            raw_size: rec.raw_size,
            stored_size: stored.len() as u64,
            inline: true,
        }))
    }

    /// A blob file as the manifest lists it, or `None` when it is not
    /// there.
    fn file_blob(&self, hash: &BlobHash, codec: Codec, raw_size: u64) -> Option<ManifestBlob> {
        let stored_size = match self.blob_store().file_meta(hash) {
            Ok(m) if m.is_file() => m.len(),
            _ => return None,
        };
        Some(ManifestBlob {
            hash: *hash,
            codec,
            raw_size,
            stored_size,
            inline: false,
        })
    }

    /// What the archive will say about one blob of the index, or `None`
    /// when the blob is not usable (unknown to the index, being swept,
    /// file missing).
    fn index_blob(&self, hash: &BlobHash) -> Result<Option<ManifestBlob>> {
        let Some(info) = self.index().blob_info(hash)? else {
            return Ok(None);
        };
        if info.state != BlobState::Live {
            return Ok(None);
        }
        if !info.inline {
            return Ok(self.file_blob(hash, info.codec, info.raw_size));
        }
        Ok(Some(ManifestBlob {
            hash: *hash,
            codec: info.codec,
            raw_size: info.raw_size,
            stored_size: info.stored_size,
            inline: true,
        }))
    }

    /// Appends one blob member; returns its stored size.
    fn export_blob<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        blob: &ManifestBlob,
        mtime: u64,
        spool: &Spool,
    ) -> Result<u64> {
        let name = member_name(&blob.hash);
        let (path, src, len): (PathBuf, Box<dyn Read>, u64) =
            if let Some(src) = spool.member(blob)? {
                src
            } else if blob.inline {
                let path = PathBuf::from(format!("<inline blob {}>", blob.hash));
                let Some(bytes) = self.index().inline_bytes(&blob.hash)? else {
                    return Err(vanished(path));
                };
                let len = bytes.len() as u64;
                (path, Box::new(io::Cursor::new(bytes)), len)
            } else {
                let path = self.blob_store().path_for(&blob.hash);
                let file = self
                    .blob_store()
                    .open_stored(&blob.hash)
                    .map_err(|e| Error::io("open blob for export", &path, e))?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::io("inspect", &path, e))?
                    .len();
                if len != blob.stored_size {
                    // Recompressed by GC since the manifest listed it: the
                    // member must have the listed size, or import refuses it.
                    let e = io::Error::other(format!(
                        "it changed size while exporting ({} bytes listed, {len} now; \
                     recompressed by gc?); run the export again",
                        blob.stored_size
                    ));
                    return Err(Error::io("read blob for export", path, e));
                }
                (path, Box::new(file), len)
            };
        let mut exact = Exact {
            inner: src,
            left: len,
            failed: None,
        };
        match append(tar, &name, len, mtime, &mut exact) {
            Ok(()) => Ok(len),
            Err(e) => match exact.failed.take() {
                Some(read_err) => Err(Error::io("read blob for export", &path, read_err)),
                None => Err(Error::ArchiveWrite { source: e }),
            },
        }
    }
}

fn vanished(path: PathBuf) -> Error {
    let e = io::Error::new(
        io::ErrorKind::NotFound,
        "deleted while exporting; run the export again",
    );
    Error::io("read blob for export", path, e)
}

/// Appends a regular-file member, mode 0600.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    mtime: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    tar.append_data(&mut header, name, data)
}

/// Yields exactly `left` bytes of `inner`, or fails: the tar builder pads
/// whatever it gets, so a blob that shrank under us must be an error, not a
/// member shorter than its header says.
struct Exact {
    inner: Box<dyn Read>,
    left: u64,
    failed: Option<io::Error>,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..cap]) {
            Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "the blob file shrank"),
            Ok(n) => {
                self.left -= n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => e,
        };
        let shown = io::Error::new(n.kind(), n.to_string());
        self.failed = Some(n);
        Err(shown)
    }
}

/// Counts the bytes written through it.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a member's bytes come from: a path for messages, the bytes, their
/// length.
type MemberSource = (PathBuf, Box<dyn Read>, u64);

/// The payloads of a format-2 cache's needles, spooled to a scratch file
/// in `tmp/` while the manifest is built (they are re-encoded without the
/// cache's dictionaries, so their archived size is known only then), and
/// copied from there into the archive: memory stays bounded.
#[derive(Default)]
struct Spool {
    file: Option<Scratch>,
    len: u64,
    at: HashMap<BlobHash, u64>,
}

impl Spool {
    fn add(&mut self, store: &Store, hash: BlobHash, stored: &[u8]) -> Result<()> {
        if self.file.is_none() {
            self.file = Some(store.blob_store().scratch()?);
        }
        let Some(f) = &self.file else {
            return Ok(());
        };
        f.file
            .write_all_at(stored, self.len)
            .map_err(|e| Error::io("write", &f.path, e))?;
        self.at.insert(hash, self.len);
        self.len += stored.len() as u64;
        Ok(())
    }

    /// The member of `blob` as spooled, if it was.
    fn member(&self, blob: &ManifestBlob) -> Result<Option<MemberSource>> {
        let (Some(f), Some(&offset)) = (&self.file, self.at.get(&blob.hash)) else {
            return Ok(None);
        };
        let mut file = f
            .file
            .try_clone()
            .map_err(|e| Error::io("open", &f.path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek", &f.path, e))?;
        let src = Box::new(file.take(blob.stored_size));
        Ok(Some((f.path.clone(), src, blob.stored_size)))
    }
}

/// A format-2 entry as an archive record: its times, pinned flag and
/// header set; `inline` says the payload is a needle (else a blob file),
/// `codec` and `stored_size` are the blob file's until the member is known.
/// Access times are not tracked there: `last_access` is the creation time.
fn record_of(info: &EntryInfo, headers: &HeaderSet) -> Record {
    Record {
        version: RECORD_VERSION,
        hash: info.hash,
        codec: if info.compressed {
            Codec::Zstd
        } else {
            Codec::Raw
        },
        inline: !info.blob_file,
        raw_size: info.raw_size,
        stored_size: info.stored_size,
        created_at: info.created_at,
        fetched_at: info.fetched_at,
        expires_at: info.expires_at.unwrap_or(u64::MAX),
        category: headers
            .category
            .clone()
            .unwrap_or_else(|| Category::Metadata.as_str().to_string()),
        content_type: headers.content_type.clone(),
        headers: headers.headers.clone(),
        hits: 0,
        last_access: info.created_at,
        pinned: info.pinned,
    }
}
