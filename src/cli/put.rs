//! `blobcache put`: store a payload from a file or standard input.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use blobcache::{Category, Error, Fetched, PutOptions, PutReport};
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  curl -s https://api.example.org/movie/603 | blobcache put tmdb movie/603 -
  blobcache put tmdb movie/603 movie.json --header 'Content-Type: application/json'
  blobcache put anidb dump/2026-11 dump.xml --category offline_dump
  blobcache put tmdb trending/day trending.json --ttl 90m
  blobcache --json put tmdb movie/603 movie.json | jq -r .hash
  blobcache put tmdb movie/603 movie.json --header 'Cache-Control: max-age=600' --honor-cache-control
  blobcache put anidb dump/2026-11 dump.xml --category offline_dump --pin

Prints the payload's blake3 hash (the blob's name), its size and stored
size. Authorization, Cookie, Set-Cookie and Proxy-Authorization headers are
never stored, nor those named by --drop-header; --deny-secret refuses a
payload or header holding a secret (exit 2, nothing stored).";

/// Arguments of `put`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct PutArgs {
    /// Backend name, e.g. tmdb.
    backend: String,
    /// Signature: the request's identity within the backend, e.g. movie/603.
    #[arg(value_parser = parse_signature)]
    signature: String,
    /// File holding the payload; `-` or nothing reads standard input.
    file: Option<PathBuf>,
    /// Time to live, e.g. 90s, 72h, 30d, '1h 30m' [default: by category].
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// metadata (72h), list (24h), schedule (1h), trending (1h) or
    /// offline_dump (30d), in any case; it sets the default TTL.
    #[arg(long, default_value = "metadata", value_parser = parse_category)]
    category: Category,
    /// A response header to keep, as 'Name: value'. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The payload's media type [default: the Content-Type header's value].
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
    /// Take the TTL from a Cache-Control header (s-maxage, else max-age;
    /// no-cache stores it already expired; no-store does not store it);
    /// --ttl or the category applies when the header says nothing.
    #[arg(long)]
    honor_cache_control: bool,
    /// Never evict this entry to meet gc's size cap (it still expires).
    #[arg(long)]
    pin: bool,
}

/// Refuses an empty signature: on the command line it is almost always a
/// shell variable that expanded to nothing, and every such call would
/// share one entry.
pub fn parse_signature(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the signature is empty; give the request's identity, e.g. movie/603".into());
    }
    Ok(s.to_string())
}

/// The categories the command line accepts.
const CATEGORIES: [Category; 5] = [
    Category::Metadata,
    Category::List,
    Category::Schedule,
    Category::Trending,
    Category::OfflineDump,
];

/// Parses a category name in any case (`Trending`, `OFFLINE_DUMP`,
/// `offline-dump`); an unknown name is refused with the list of valid ones.
pub fn parse_category(s: &str) -> Result<Category, String> {
    match Category::parse(&s.trim().to_ascii_lowercase()) {
        Category::Other(_) => {
            let valid: Vec<&str> = CATEGORIES.iter().map(Category::as_str).collect();
            Err(format!(
                "unknown category {s:?}; valid: {}",
                valid.join(", ")
            ))
        }
        known => Ok(known),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not of the form 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{s:?} has an empty header name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

#[derive(Serialize)]
struct PutJson<'a> {
    backend: &'a str,
    signature: &'a str,
    hash: String,
    raw_size: u64,
    stored_size: u64,
    compressed: bool,
    inline: bool,
    deduplicated: bool,
    expires_at_ms: u64,
}

/// Runs `put`.
pub fn run(a: PutArgs, ctx: &Ctx) -> Result<Status, Error> {
    let mut opts = PutOptions::new()
        .category(a.category.clone())
        .pinned(a.pin)
        .headers(a.headers.iter().cloned());
    let cache_control = a.honor_cache_control.then(|| {
        Fetched::new(Vec::new())
            .headers(a.headers.iter().cloned())
            .honor_cache_control()
    });
    if cache_control.as_ref().is_some_and(Fetched::is_no_store) {
        return not_stored(&a, ctx);
    }
    if let Some(ttl) = cache_control.and_then(|f| f.get_ttl()).or(a.ttl) {
        opts = opts.ttl(ttl);
    }
    let content_type = a
        .content_type
        .clone()
        .or_else(|| header(&a.headers, "content-type"));
    if let Some(ct) = content_type {
        opts = opts.content_type(ct);
    }
    let source = open_source(a.file.as_deref(), ctx)?;
    let store = ctx.open()?;
    let r = store.put_reader(&a.backend, &a.signature, source, &opts)?;
    report(&a, &r, ctx)?;
    Ok(Status::Done)
}

/// The value of the first header called `name` (any case).
fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// `--honor-cache-control` met `no-store`: nothing is stored.
fn not_stored(a: &PutArgs, ctx: &Ctx) -> Result<Status, Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&serde_json::json!({
            "backend": a.backend,
            "signature": a.signature,
            "stored": false,
        }))?;
    } else if ctx.chatty() {
        out.line(format_args!(
            "not stored: the Cache-Control header of {}/{} says no-store",
            a.backend, a.signature
        ))?;
    }
    out.flush()?;
    Ok(Status::Done)
}

/// The payload source: the file, or standard input for `-` or nothing.
fn open_source(file: Option<&Path>, ctx: &Ctx) -> Result<Box<dyn Read>, Error> {
    match file {
        Some(p) if p != Path::new("-") => {
            let f = File::open(p).map_err(|source| Error::Io {
                op: "open the payload file",
                path: p.to_path_buf(),
                source,
            })?;
            Ok(Box::new(f))
        }
        _ => {
            let stdin = io::stdin();
            if stdin.is_terminal() && ctx.chatty() {
                log::warn!("reading the payload from the terminal; end it with Ctrl-D");
            }
            Ok(Box::new(stdin.lock()))
        }
    }
}

fn report(a: &PutArgs, r: &PutReport, ctx: &Ctx) -> Result<(), Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&PutJson {
            backend: &a.backend,
            signature: &a.signature,
            hash: r.hash.to_string(),
            raw_size: r.raw_size,
            stored_size: r.stored_size,
            compressed: r.compressed,
            inline: r.inline,
            deduplicated: r.deduplicated,
            expires_at_ms: r.expires_at,
        })?;
    } else if ctx.chatty() {
        let dedup = if r.deduplicated { ", deduplicated" } else { "" };
        out.line(format_args!(
            "{}  {} -> {} stored ({}{dedup}), {}",
            r.hash,
            output::size(r.raw_size),
            output::size(r.stored_size),
            output::storage(r.compressed, r.inline),
            output::expiry(r.expires_at, output::now_ms()),
        ))?;
    }
    out.flush()
}
