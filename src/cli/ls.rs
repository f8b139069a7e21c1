//! `blobcache ls`: list entries.

use blobcache::{Category, EntryMeta, Error, Selector, Store};
use clap::{Args, ValueEnum};

use super::output::{self, EntryJson, Out};
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache ls                       # every entry: BACKEND<TAB>SIGNATURE
  blobcache ls tmdb --prefix movie/  # one backend, signatures starting movie/
  blobcache ls --expired --long      # what GC will remove, as a table
  blobcache ls --sort size --limit 10 --long   # the ten largest payloads
  blobcache ls --category trending --sort expires
  blobcache --json ls tmdb | jq '.[].signature'

Entries are listed by backend name, then signature (byte order), unless
--sort says otherwise: size and hits list the largest first, expires the
soonest first (ties by name). --long prints a table: backend, signature,
size, stored size, expires in, hits. --json prints one JSON array of
entries (see README for the fields). A cache directory that does not exist
lists nothing.";

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
    /// Only entries of this category (any case).
    #[arg(long, value_parser = super::put::parse_category)]
    category: Option<Category>,
    /// Order of the listing.
    #[arg(long, value_enum, default_value_t = SortBy::Name)]
    sort: SortBy,
    /// List at most N entries (after sorting).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// A table with sizes, expiry and hits.
    #[arg(short, long)]
    long: bool,
}

/// The orders `ls --sort` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SortBy {
    /// Backend name, then signature.
    Name,
    /// Payload size, largest first.
    Size,
    /// Expiry time, soonest first.
    Expires,
    /// Hits, most first.
    Hits,
}

type Listing = Box<dyn Iterator<Item = Result<EntryMeta, Error>>>;

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
    let (expired, category) = (a.expired, a.category.clone());
    let filtered = by_name(store.as_ref(), &sel)?.filter(move |m| {
        m.as_ref().map_or(true, |m| {
            (!expired || m.is_expired_at(now)) && category.as_ref().is_none_or(|c| *c == m.category)
        })
    });
    let mut entries = sorted(Box::new(filtered), a.sort)?.take(a.limit.unwrap_or(usize::MAX));
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

/// The selected entries in name order: backends alphabetically (the index
/// orders them by name length first), each one's signatures in byte order.
/// Streams: one backend at a time.
fn by_name(store: Option<&Store>, sel: &Selector) -> Result<Listing, Error> {
    let (Some(store), Selector::All) = (store, sel) else {
        return listed(store, sel);
    };
    let mut names: Vec<String> = store
        .stats()?
        .backends
        .into_iter()
        .map(|b| b.name)
        .collect();
    names.sort_unstable();
    let store = store.clone();
    Ok(Box::new(names.into_iter().flat_map(move |name| {
        listed(Some(&store), &Selector::backend(name))
            .unwrap_or_else(|e| Box::new(std::iter::once(Err(e))))
    })))
}

/// `entries` in the order `by` asks for; sorting other than by name
/// collects them first.
fn sorted(entries: Listing, by: SortBy) -> Result<Listing, Error> {
    if by == SortBy::Name {
        return Ok(entries);
    }
    let mut all = entries.collect::<Result<Vec<_>, _>>()?;
    // A stable sort keeps name order among ties.
    match by {
        SortBy::Name => {}
        SortBy::Size => all.sort_by_key(|m| std::cmp::Reverse(m.raw_size)),
        SortBy::Expires => all.sort_by_key(|m| m.expires_at),
        SortBy::Hits => all.sort_by_key(|m| std::cmp::Reverse(m.hits)),
    }
    Ok(Box::new(all.into_iter().map(Ok)))
}

/// The selected entries of `store`, or none when there is no cache.
pub fn listed(store: Option<&Store>, sel: &Selector) -> Result<Listing, Error> {
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
