//! Index mutations: what an [`Op`] asks for, and the [`Effects`] it has.
//!
//! An op is applied under the index's writer lock by a [`Tx`], which reads
//! the current values (through an overlay of its own writes) and produces
//! the absolute new value of every key it changes, refcounts and totals
//! included. Those effects are written to sled in an order that keeps
//! concurrent readers safe (a blob is stored before a record points to it;
//! a record is removed before its blob is released) and journaled as one
//! frame. Replaying a frame writes the same absolute values again, so it is
//! idempotent: an op cut short by a crash is completed by the replay, and
//! after recovery every op is either wholly applied or not at all.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sled::IVec;

use super::{BackendTotals, State, Trees};
use crate::blobs::BlobHash;
use crate::key;
use crate::policy::MergePolicy;
use crate::record::{BlobInfo, BlobState, Codec, RECORD_VERSION, Record, from_cbor, to_cbor};

/// A mutation of the index, as asked for by a store (or, over the owner
/// socket, by a guest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Ops are built one per call and never held in bulk; boxing the record
// would only add an allocation to every put.
#[allow(clippy::large_enum_variant)]
pub enum Op {
    /// Sets `key` to `record`, referencing its blob (created from `blob` if
    /// new, with `inline` bytes for inline blobs) and releasing the blob of
    /// the record it replaces.
    Put {
        /// Entry key.
        key: ByteBuf,
        /// The new record.
        record: Record,
        /// The blob's info, used when the index does not know the blob yet.
        blob: BlobInfo,
        /// Stored bytes of an inline blob (may be omitted when the writer
        /// saw the blob already in the index; if it vanished meanwhile the
        /// op answers `Retry` and the writer sends them).
        inline: Option<ByteBuf>,
        /// The writer re-checked the blob file after seeing it `Gone` with
        /// this `since`; see [`BlobState::Gone`].
        gone_seen: Option<u64>,
    },
    /// Removes `key` (only if it still points to `hash`, when given).
    Delete {
        /// Entry key.
        key: ByteBuf,
        /// Expected blob of the entry.
        hash: Option<BlobHash>,
    },
    /// Removes several keys.
    DeleteMany {
        /// Entry keys.
        keys: Vec<ByteBuf>,
    },
    /// Removes those of `keys` that are still expired at `before` (a key
    /// re-put since it was listed is kept).
    Expire {
        /// Entry keys.
        keys: Vec<ByteBuf>,
        /// Expiry cut-off (ms since epoch), inclusive.
        before: u64,
    },
    /// Sets a new expiry time on `key`.
    Touch {
        /// Entry key.
        key: ByteBuf,
        /// New expiry (ms since epoch).
        expires_at: u64,
    },
    /// Puts a batch of archived entries, each only where `policy` lets it
    /// replace what the key holds (decided here, under the writer lock).
    /// One op is one journal frame: a batch is applied whole or not at all.
    Import {
        /// The entries, each like an [`Op::Put`].
        items: Vec<ImportItem>,
        /// What to do where a key already holds an entry.
        policy: MergePolicy,
    },
    /// Removes those of `keys` that are unpinned and were neither read nor
    /// written since `before` (a key used since it was listed is kept).
    DropUnused {
        /// Entry keys.
        keys: Vec<ByteBuf>,
        /// Cut-off (ms since epoch), exclusive.
        before: u64,
    },
    /// Evicts entries for the size cap: each key goes only if it is not
    /// pinned and its last access is still at or before the time listed
    /// (an entry used or re-put since it was chosen stays).
    Evict {
        /// Entry keys with the last access the sweeper saw.
        keys: Vec<(ByteBuf, u64)>,
    },
    /// The sweeper claims a file blob for deletion: a `Live` blob with no
    /// references, one the index does not know (an orphan file), or a
    /// `Gone` one (whose file a refused import put back), becomes
    /// `Deleting`. Answers `Applied(true)` when the claim holds;
    /// puts that need the blob then wait and write its file again.
    ClaimBlob {
        /// The blob.
        hash: BlobHash,
        /// Time of the claim (ms since epoch).
        at: u64,
    },
    /// The sweeper removed the file of a claimed blob: `Deleting` becomes
    /// `Gone` (see [`BlobState::Gone`]).
    BlobGone {
        /// The blob.
        hash: BlobHash,
        /// Time of the deletion (ms since epoch).
        at: u64,
    },
    /// Forgets a `Gone` blob whose state is unchanged since `since`.
    ForgetBlob {
        /// The blob.
        hash: BlobHash,
        /// The `since` of the `Gone` state the sweeper saw.
        since: u64,
    },
    /// The sweeper rewrote a zstd blob file at another level (same content,
    /// same hash, same codec); applies only if the index still records the
    /// size the sweeper started from.
    Recompressed {
        /// The blob.
        hash: BlobHash,
        /// The new zstd level.
        level: i32,
        /// Stored size before the rewrite.
        old_stored_size: u64,
        /// Stored size after it.
        stored_size: u64,
        /// Allocated bytes of the new file.
        disk_bytes: u64,
    },
}

impl Op {
    /// True for the changes that remove entries or blobs: on a full disk
    /// they may use the space reserve (see `reserve.rs`).
    pub fn frees_space(&self) -> bool {
        matches!(
            self,
            Op::Delete { .. }
                | Op::DeleteMany { .. }
                | Op::Expire { .. }
                | Op::DropUnused { .. }
                | Op::Evict { .. }
                | Op::ClaimBlob { .. }
                | Op::BlobGone { .. }
                | Op::ForgetBlob { .. }
        )
    }
}

/// One entry of an [`Op::Import`]; the fields mean what they mean in
/// [`Op::Put`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportItem {
    /// Entry key.
    pub key: ByteBuf,
    /// The archived record (hits and last access merge with the
    /// existing entry's: the larger of both is kept).
    pub record: Record,
    /// The blob's info, used when the index does not know the blob yet.
    pub blob: BlobInfo,
    /// Stored bytes of an inline blob.
    pub inline: Option<ByteBuf>,
    /// See [`Op::Put`].
    pub gone_seen: Option<u64>,
}

impl ImportItem {
    /// The same entry as a plain [`Op::Put`] (replacing what the key holds).
    pub fn into_put(self) -> Op {
        Op::Put {
            key: self.key,
            record: self.record,
            blob: self.blob,
            inline: self.inline,
            gone_seen: self.gone_seen,
        }
    }
}

/// What an op did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The op was applied; `bool` tells whether its target existed.
    Applied(bool),
    /// Number of entries affected.
    Count(u64),
    /// The blob is being deleted (`Deleting`), was deleted after the
    /// writer's check (`Gone`, with its `since`), or its inline bytes are
    /// needed: store the blob again and retry.
    Retry {
        /// The blob concerned.
        hash: BlobHash,
        /// `Some(since)` when the blob is `Gone`.
        gone_since: Option<u64>,
    },
}

/// Tree numbers used in [`Write`].
pub(crate) const ENTRIES: u8 = 0;
pub(crate) const EXPIRY: u8 = 1;
pub(crate) const BLOBS: u8 = 2;

/// One key's new value (`None`: removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Write {
    #[serde(rename = "t")]
    pub tree: u8,
    #[serde(rename = "k")]
    pub key: ByteBuf,
    #[serde(rename = "v")]
    pub value: Option<ByteBuf>,
}

/// Everything an op changed: one journal frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Effects {
    /// Key writes, in the order they must be applied.
    #[serde(rename = "w")]
    pub writes: Vec<Write>,
    /// Totals after the op (with its sequence number).
    #[serde(rename = "s")]
    pub state: State,
    /// Per-backend totals the op changed, by meta key.
    #[serde(rename = "b")]
    pub backends: Vec<(ByteBuf, BackendTotals)>,
}

/// Why an op produced no effects.
#[derive(Debug)]
pub(crate) enum TxError {
    /// Nothing to change; answer with this outcome.
    Unchanged(Outcome),
    /// The writer must retry (see [`Outcome::Retry`]).
    Retry(Outcome),
    /// The op is malformed.
    Invalid(String),
    /// sled failed.
    Storage(sled::Error),
}

impl From<sled::Error> for TxError {
    fn from(e: sled::Error) -> Self {
        TxError::Storage(e)
    }
}

type TxResult<T> = Result<T, TxError>;

/// The key of an entry in the expiry tree.
pub(crate) fn expiry_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The meta key holding the totals of `key`'s backend.
pub(crate) fn backend_meta_key(key: &[u8]) -> Vec<u8> {
    let len = key.first().map(|&l| usize::from(l)).unwrap_or(0);
    let backend = key.get(1..1 + len).unwrap_or(&[]);
    [super::BACKEND_PREFIX, backend].concat()
}

/// Encodes a blobs-tree value: `len(info) u16 LE | info CBOR | inline bytes`.
pub(crate) fn encode_blob_value(info: &BlobInfo, inline: Option<&[u8]>) -> Vec<u8> {
    let info = to_cbor(info);
    let data = inline.unwrap_or(&[]);
    let mut v = Vec::with_capacity(2 + info.len() + data.len());
    v.extend_from_slice(&(info.len() as u16).to_le_bytes());
    v.extend_from_slice(&info);
    v.extend_from_slice(data);
    v
}

/// Splits a blobs-tree value into its info and its inline bytes.
pub(crate) fn decode_blob_value(v: &[u8]) -> Result<(BlobInfo, &[u8]), String> {
    let (len, rest) = v.split_first_chunk::<2>().ok_or("blob value too short")?;
    let len = usize::from(u16::from_le_bytes(*len));
    if rest.len() < len {
        return Err("blob value truncated".into());
    }
    let (info, data) = rest.split_at(len);
    Ok((from_cbor(info)?, data))
}

/// Computes the effects of one op.
pub(crate) struct Tx<'a> {
    t: &'a Trees,
    overlay: HashMap<(u8, Vec<u8>), Option<IVec>>,
    pub writes: Vec<Write>,
    pub state: State,
    base_backends: &'a HashMap<Vec<u8>, BackendTotals>,
    pub backends: HashMap<Vec<u8>, BackendTotals>,
}

impl<'a> Tx<'a> {
    pub fn new(
        t: &'a Trees,
        state: &State,
        backends: &'a HashMap<Vec<u8>, BackendTotals>,
    ) -> Tx<'a> {
        Tx {
            t,
            overlay: HashMap::new(),
            writes: Vec::new(),
            state: state.clone(),
            base_backends: backends,
            backends: HashMap::new(),
        }
    }

    fn get(&self, tree: u8, key: &[u8]) -> TxResult<Option<IVec>> {
        if let Some(v) = self.overlay.get(&(tree, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.t.tree(tree).get(key)?)
    }

    fn set(&mut self, tree: u8, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.overlay
            .insert((tree, key.clone()), value.clone().map(IVec::from));
        self.writes.push(Write {
            tree,
            key: ByteBuf::from(key),
            value: value.map(ByteBuf::from),
        });
    }

    /// The record at `key`; an undecodable record reads as `Err(())`.
    fn record(&self, key: &[u8]) -> TxResult<Option<Result<Record, ()>>> {
        Ok(self.get(ENTRIES, key)?.map(|v| {
            from_cbor::<Record>(&v).map_err(|e| {
                log::warn!("undecodable record for {}: {e}", key::display(key));
            })
        }))
    }

    /// The blob's info and inline bytes.
    fn blob(&self, hash: &BlobHash) -> TxResult<Option<(BlobInfo, Vec<u8>)>> {
        let Some(v) = self.get(BLOBS, &hash.0)? else {
            return Ok(None);
        };
        match decode_blob_value(&v) {
            Ok((info, data)) => Ok(Some((info, data.to_vec()))),
            Err(e) => {
                log::warn!("undecodable blob info for {hash}: {e}; treating as unknown");
                Ok(None)
            }
        }
    }

    fn backend(&mut self, key: &[u8]) -> &mut BackendTotals {
        let mk = backend_meta_key(key);
        let base = self.base_backends.get(&mk).cloned().unwrap_or_default();
        self.backends.entry(mk).or_insert(base)
    }

    fn add_ref(
        &mut self,
        hash: &BlobHash,
        template: &BlobInfo,
        inline: Option<&[u8]>,
        gone_seen: Option<u64>,
    ) -> TxResult<()> {
        let retry = |gone_since| {
            TxError::Retry(Outcome::Retry {
                hash: *hash,
                gone_since,
            })
        };
        // An inline blob's bytes live in the index, whose size counts them:
        // it occupies no blob file (counting it here too counted it twice).
        let fresh = BlobInfo {
            refs: 1,
            state: BlobState::Live,
            disk_bytes: if template.inline {
                0
            } else {
                template.disk_bytes
            },
            ..template.clone()
        };
        let (info, data) = match self.blob(hash)? {
            Some((mut info, data)) => match info.state {
                BlobState::Live => {
                    info.refs += 1;
                    (info, data)
                }
                BlobState::Deleting => return Err(retry(None)),
                BlobState::Gone if gone_seen == Some(info.since) => {
                    self.count_new_blob(&fresh);
                    (fresh, Vec::new())
                }
                BlobState::Gone => return Err(retry(Some(info.since))),
            },
            None => {
                let data = match (template.inline, inline) {
                    (false, _) => Vec::new(),
                    (true, Some(bytes)) => bytes.to_vec(),
                    // The writer skipped the bytes, trusting an earlier
                    // look-up; the blob has gone since.
                    (true, None) => return Err(retry(None)),
                };
                self.count_new_blob(&fresh);
                (fresh, data)
            }
        };
        let value = encode_blob_value(&info, info.inline.then_some(data.as_slice()));
        self.set(BLOBS, hash.0.to_vec(), Some(value));
        Ok(())
    }

    fn count_new_blob(&mut self, info: &BlobInfo) {
        self.state.blobs += 1;
        self.state.blob_bytes += info.disk_bytes;
    }

    fn drop_ref(&mut self, hash: &BlobHash) -> TxResult<()> {
        let Some((mut info, data)) = self.blob(hash)? else {
            log::warn!("entry referenced blob {hash} unknown to the index");
            return Ok(());
        };
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 && info.inline {
            // Inline blobs have no file to race with: free them at once.
            self.set(BLOBS, hash.0.to_vec(), None);
            self.state.blobs = self.state.blobs.saturating_sub(1);
            self.state.blob_bytes = self.state.blob_bytes.saturating_sub(info.disk_bytes);
            return Ok(());
        }
        let value = encode_blob_value(&info, info.inline.then_some(data.as_slice()));
        self.set(BLOBS, hash.0.to_vec(), Some(value));
        Ok(())
    }

    fn put(
        &mut self,
        key: &[u8],
        record: &Record,
        blob: &BlobInfo,
        inline: Option<&[u8]>,
        gone_seen: Option<u64>,
    ) -> TxResult<Outcome> {
        let old = self.record(key)?;
        let old_rec = old.as_ref().and_then(|r| r.as_ref().ok()).cloned();
        let same_blob = old_rec.as_ref().is_some_and(|o| o.hash == record.hash);
        let mut record = record.clone();
        // The blob first, so no reader finds the record without its blob.
        if !same_blob {
            self.add_ref(&record.hash, blob, inline, gone_seen)?;
        }
        if let Some(o) = &old_rec {
            record.hits += o.hits;
            if o.expires_at != record.expires_at {
                self.set(EXPIRY, expiry_key(o.expires_at, key), None);
            }
        }
        if old_rec
            .as_ref()
            .is_none_or(|o| o.expires_at != record.expires_at)
        {
            self.set(EXPIRY, expiry_key(record.expires_at, key), Some(Vec::new()));
        }
        self.set(ENTRIES, key.to_vec(), Some(to_cbor(&record)));
        if let Some(o) = &old_rec
            && !same_blob
        {
            self.drop_ref(&o.hash)?;
        }
        let old_raw = old_rec.as_ref().map_or(0, |o| o.raw_size);
        let is_new = old.is_none();
        self.state.entries += u64::from(is_new);
        self.state.raw_bytes = (self.state.raw_bytes + record.raw_size).saturating_sub(old_raw);
        let b = self.backend(key);
        b.entries += u64::from(is_new);
        b.raw_bytes = (b.raw_bytes + record.raw_size).saturating_sub(old_raw);
        Ok(Outcome::Applied(!is_new))
    }

    fn delete(&mut self, key: &[u8], hash: Option<&BlobHash>) -> TxResult<bool> {
        let Some(old) = self.record(key)? else {
            return Ok(false);
        };
        if let (Some(want), Ok(rec)) = (hash, &old)
            && rec.hash != *want
        {
            return Ok(false);
        }
        // The record first, so no reader finds it after its blob is freed.
        self.set(ENTRIES, key.to_vec(), None);
        self.state.entries = self.state.entries.saturating_sub(1);
        let raw = old.as_ref().map_or(0, |r| r.raw_size);
        self.state.raw_bytes = self.state.raw_bytes.saturating_sub(raw);
        let b = self.backend(key);
        b.entries = b.entries.saturating_sub(1);
        b.raw_bytes = b.raw_bytes.saturating_sub(raw);
        if let Ok(rec) = old {
            self.set(EXPIRY, expiry_key(rec.expires_at, key), None);
            self.drop_ref(&rec.hash)?;
        }
        Ok(true)
    }

    fn touch(&mut self, key: &[u8], expires_at: u64) -> TxResult<bool> {
        let Some(Ok(mut rec)) = self.record(key)? else {
            return Ok(false);
        };
        if rec.expires_at == expires_at {
            return Ok(true);
        }
        self.set(EXPIRY, expiry_key(rec.expires_at, key), None);
        rec.expires_at = expires_at;
        self.set(EXPIRY, expiry_key(expires_at, key), Some(Vec::new()));
        self.set(ENTRIES, key.to_vec(), Some(to_cbor(&rec)));
        Ok(true)
    }

    /// Puts one archived entry if `policy` allows; true if it did.
    fn import_one(&mut self, item: &ImportItem, policy: MergePolicy) -> TxResult<bool> {
        if key::decode(&item.key).is_none() {
            return Err(TxError::Invalid("malformed import item".into()));
        }
        let old = self.record(&item.key)?;
        let held = old.as_ref().and_then(|r| r.as_ref().ok());
        if !policy.takes(&item.record, held) {
            return Ok(false);
        }
        let mut record = item.record.clone();
        if let Some(Ok(o)) = &old {
            // `put` adds the old hits; keep the larger count instead.
            record.hits = record.hits.saturating_sub(o.hits);
            record.last_access = record.last_access.max(o.last_access);
        }
        let inline = item.inline.as_ref().map(|b| b.as_slice());
        self.put(&item.key, &record, &item.blob, inline, item.gone_seen)?;
        Ok(true)
    }

    fn evict(&mut self, keys: &[(ByteBuf, u64)]) -> TxResult<Outcome> {
        let mut n = 0;
        for (k, seen) in keys {
            if let Some(Ok(rec)) = self.record(k)?
                && !rec.pinned
                && rec.last_access <= *seen
            {
                n += u64::from(self.delete(k, None)?);
            }
        }
        Self::count_or_unchanged(n)
    }

    fn set_blob_info(&mut self, hash: &BlobHash, info: &BlobInfo) {
        self.set(BLOBS, hash.0.to_vec(), Some(encode_blob_value(info, None)));
    }

    fn claim_blob(&mut self, hash: &BlobHash, at: u64) -> TxResult<Outcome> {
        let claimed = match self.blob(hash)? {
            None => BlobInfo {
                version: RECORD_VERSION,
                refs: 0,
                state: BlobState::Deleting,
                codec: Codec::Raw,
                inline: false,
                raw_size: 0,
                stored_size: 0,
                disk_bytes: 0,
                since: at,
                level: None,
            },
            Some((info, _)) if info.state == BlobState::Live && info.refs == 0 && !info.inline => {
                self.state.blobs = self.state.blobs.saturating_sub(1);
                self.state.blob_bytes = self.state.blob_bytes.saturating_sub(info.disk_bytes);
                BlobInfo {
                    state: BlobState::Deleting,
                    since: at.max(info.since.saturating_add(1)),
                    ..info
                }
            }
            // Deleted already, and its file put back by an import that was
            // then refused: claimed again, with a later `since`, so a
            // writer that re-checked the file against the old one checks
            // it once more.
            Some((info, _)) if info.state == BlobState::Gone => BlobInfo {
                state: BlobState::Deleting,
                since: at.max(info.since.saturating_add(1)),
                ..info
            },
            Some(_) => return Err(TxError::Unchanged(Outcome::Applied(false))),
        };
        self.set_blob_info(hash, &claimed);
        Ok(Outcome::Applied(true))
    }

    fn blob_gone(&mut self, hash: &BlobHash, at: u64) -> TxResult<Outcome> {
        let Some((info, _)) = self.blob(hash)? else {
            return Err(TxError::Unchanged(Outcome::Applied(false)));
        };
        if info.state != BlobState::Deleting {
            return Err(TxError::Unchanged(Outcome::Applied(false)));
        }
        // A strictly later `since`, so a writer's `gone_seen` can never
        // match a later deletion of the same blob.
        let gone = BlobInfo {
            state: BlobState::Gone,
            since: at.max(info.since.saturating_add(1)),
            ..info
        };
        self.set_blob_info(hash, &gone);
        Ok(Outcome::Applied(true))
    }

    fn forget_blob(&mut self, hash: &BlobHash, since: u64) -> TxResult<Outcome> {
        match self.blob(hash)? {
            Some((info, _)) if info.state == BlobState::Gone && info.since == since => {
                self.set(BLOBS, hash.0.to_vec(), None);
                Ok(Outcome::Applied(true))
            }
            _ => Err(TxError::Unchanged(Outcome::Applied(false))),
        }
    }

    fn recompressed(
        &mut self,
        hash: &BlobHash,
        level: i32,
        sizes: (u64, u64, u64),
    ) -> TxResult<Outcome> {
        let (old_stored_size, stored_size, disk_bytes) = sizes;
        let Some((info, _)) = self.blob(hash)? else {
            return Err(TxError::Unchanged(Outcome::Applied(false)));
        };
        let applies = info.state == BlobState::Live
            && !info.inline
            && info.codec == Codec::Zstd
            && info.stored_size == old_stored_size;
        if !applies {
            return Err(TxError::Unchanged(Outcome::Applied(false)));
        }
        self.state.blob_bytes =
            (self.state.blob_bytes + disk_bytes).saturating_sub(info.disk_bytes);
        let info = BlobInfo {
            stored_size,
            disk_bytes,
            level: Some(level),
            ..info
        };
        self.set_blob_info(hash, &info);
        Ok(Outcome::Applied(true))
    }

    fn count_or_unchanged(n: u64) -> TxResult<Outcome> {
        if n == 0 {
            return Err(TxError::Unchanged(Outcome::Count(0)));
        }
        Ok(Outcome::Count(n))
    }

    /// Computes the effects of `op`.
    pub fn apply(&mut self, op: &Op) -> TxResult<Outcome> {
        match op {
            Op::Put {
                key,
                record,
                blob,
                inline,
                gone_seen,
            } => {
                if record.hash.0.len() != 32 || key::decode(key).is_none() {
                    return Err(TxError::Invalid("malformed put".into()));
                }
                let inline = inline.as_ref().map(|b| b.as_slice());
                self.put(key, record, blob, inline, *gone_seen)
            }
            Op::Delete { key, hash } => match self.delete(key, hash.as_ref())? {
                true => Ok(Outcome::Applied(true)),
                false => Err(TxError::Unchanged(Outcome::Applied(false))),
            },
            Op::DeleteMany { keys } => {
                let mut n = 0;
                for k in keys {
                    n += u64::from(self.delete(k, None)?);
                }
                Self::count_or_unchanged(n)
            }
            Op::Expire { keys, before } => {
                let mut n = 0;
                for k in keys {
                    if let Some(Ok(rec)) = self.record(k)?
                        && rec.expires_at <= *before
                    {
                        n += u64::from(self.delete(k, None)?);
                    }
                }
                Self::count_or_unchanged(n)
            }
            Op::Import { items, policy } => {
                let mut n = 0;
                for item in items {
                    n += u64::from(self.import_one(item, *policy)?);
                }
                Self::count_or_unchanged(n)
            }
            Op::DropUnused { keys, before } => {
                let mut n = 0;
                for k in keys {
                    if let Some(Ok(rec)) = self.record(k)?
                        && crate::record::unused_before(
                            rec.pinned,
                            rec.last_access,
                            rec.created_at,
                            *before,
                        )
                    {
                        n += u64::from(self.delete(k, None)?);
                    }
                }
                Self::count_or_unchanged(n)
            }
            Op::Touch { key, expires_at } => match self.touch(key, *expires_at)? {
                true if !self.writes.is_empty() => Ok(Outcome::Applied(true)),
                true => Err(TxError::Unchanged(Outcome::Applied(true))),
                false => Err(TxError::Unchanged(Outcome::Applied(false))),
            },
            Op::Evict { keys } => self.evict(keys),
            Op::ClaimBlob { hash, at } => self.claim_blob(hash, *at),
            Op::BlobGone { hash, at } => self.blob_gone(hash, *at),
            Op::ForgetBlob { hash, since } => self.forget_blob(hash, *since),
            Op::Recompressed {
                hash,
                level,
                old_stored_size,
                stored_size,
                disk_bytes,
            } => self.recompressed(hash, *level, (*old_stored_size, *stored_size, *disk_bytes)),
        }
    }

    /// The effects computed so far, as a journal frame.
    pub fn into_effects(self) -> Effects {
        let mut backends: Vec<(ByteBuf, BackendTotals)> = self
            .backends
            .into_iter()
            .map(|(k, v)| (ByteBuf::from(k), v))
            .collect();
        backends.sort_by(|a, b| a.0.cmp(&b.0));
        Effects {
            writes: self.writes,
            state: self.state,
            backends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Codec;

    #[test]
    fn blob_value_round_trips_and_rejects_garbage() {
        let info = BlobInfo {
            version: 1,
            refs: 2,
            state: BlobState::Live,
            codec: Codec::Zstd,
            inline: true,
            raw_size: 10,
            stored_size: 3,
            disk_bytes: 3,
            since: 7,
            level: Some(19),
        };
        let v = encode_blob_value(&info, Some(b"abc"));
        let (back, data) = decode_blob_value(&v).unwrap();
        assert_eq!((back, data), (info, &b"abc"[..]));
        assert!(decode_blob_value(&[]).is_err());
        assert!(decode_blob_value(&[0xff, 0xff, 1]).is_err());
        assert!(decode_blob_value(&v[..5]).is_err());
    }
}
