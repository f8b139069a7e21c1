//! `blobcache ls`: list entries.

use blobcache::{EntryMeta, Error, Selector, Store};
use clap::Args;

use super::output::{self, EntryJson, Out};
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache ls                       # every entry: BACKEND<TAB>SIGNATURE
  blobcache ls tmdb --prefix movie/  # one backend, signatures starting movie/
  blobcache ls --expired --long      # what GC will remove, as a table
  blobcache --json ls tmdb | jq '.[].signature'

--long prints a table: backend, signature, size, stored size, expires in,
hits. --json prints one JSON array of entries (see README for the fields).
A cache directory that does not exist lists nothing.";

/// Arguments of `ls`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct LsArgs {
    /// Only this backend.
    backend: Option<String>,
    /// Only signatures starting with this (needs BACKEND).
    #[arg(long, requires = "backend")]
    prefix: Option<String>,
    /// Only expired entries (still served by `get --stale` until GC).
    #[arg(long)]
    expired: bool,
    /// A table with sizes, expiry and hits.
    #[arg(short, long)]
    long: bool,
}

/// The entries a backend/prefix pair selects.
pub fn selector(backend: Option<&str>, prefix: Option<&str>) -> Selector {
    match (backend, prefix) {
        (Some(b), Some(p)) => Selector::prefix(b, p),
        (Some(b), None) => Selector::backend(b),
        (None, _) => Selector::All,
    }
}

/// Runs `ls`.
pub fn run(a: LsArgs, ctx: &Ctx) -> Result<Status, Error> {
    let store = ctx.open_existing()?;
    let now = output::now_ms();
    let sel = selector(a.backend.as_deref(), a.prefix.as_deref());
    let mut entries = listed(store.as_ref(), &sel)?
        .filter(|m| !a.expired || m.as_ref().map_or(true, |m| m.is_expired_at(now)));
    let mut out = Out::new();
    if ctx.json {
        out.raw(b"[")?;
        for (i, m) in entries.by_ref().enumerate() {
            out.raw(if i == 0 { b"" } else { b"," })?;
            let m = m?;
            serde_json::to_writer(out.writer(), &EntryJson::new(&m, now))
                .map_err(|e| output::stdout_error(std::io::Error::other(e)))?;
        }
        out.raw(b"]\n")?;
    } else if a.long {
        table(&mut out, entries, now)?;
    } else {
        for m in entries {
            let m = m?;
            out.line(format_args!("{}\t{}", m.backend, m.signature_str()))?;
        }
    }
    out.flush()?;
    Ok(Status::Done)
}

/// The selected entries of `store`, or none when there is no cache.
pub fn listed(
    store: Option<&Store>,
    sel: &Selector,
) -> Result<Box<dyn Iterator<Item = Result<EntryMeta, Error>>>, Error> {
    match store {
        Some(s) => Ok(Box::new(s.list(sel)?)),
        None => Ok(Box::new(std::iter::empty())),
    }
}

/// Prints the `--long` table; columns are as wide as their widest cell.
fn table(
    out: &mut Out,
    entries: impl Iterator<Item = Result<EntryMeta, Error>>,
    now: u64,
) -> Result<(), Error> {
    let mut rows = vec![[
        "BACKEND".to_string(),
        "SIGNATURE".into(),
        "SIZE".into(),
        "STORED".into(),
        "EXPIRES".into(),
        "HITS".into(),
    ]];
    for m in entries {
        let m = m?;
        rows.push([
            m.backend.clone(),
            m.signature_str().into_owned(),
            output::size(m.raw_size),
            output::size(m.stored_size),
            output::expires_in(m.expires_at, now),
            m.hits.to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let [b, s, size, stored, exp, hits] = row;
        let [wb, ws, wsz, wst, wex, _] = widths;
        out.line(format_args!(
            "{b:<wb$}  {s:<ws$}  {size:>wsz$}  {stored:>wst$}  {exp:<wex$}  {hits}"
        ))?;
    }
    Ok(())
}
