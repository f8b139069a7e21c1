//! `blobcache put`: store a payload from a file or standard input.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use blobcache::{Category, Error, PutOptions, PutReport};
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

Prints the payload's blake3 hash (the blob's name), its size and stored
size. Authorization, Cookie, Set-Cookie and Proxy-Authorization headers are
never stored.";

/// Arguments of `put`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct PutArgs {
    /// Backend name, e.g. tmdb.
    backend: String,
    /// Signature: the request's identity within the backend, e.g. movie/603.
    signature: String,
    /// File holding the payload; `-` or nothing reads standard input.
    file: Option<PathBuf>,
    /// Time to live, e.g. 90s, 72h, 30d, '1h 30m' [default: by category].
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// metadata (72h), list (24h), schedule (1h), trending (1h),
    /// offline_dump (30d), or another name (72h).
    #[arg(long, default_value = "metadata", value_parser = parse_category)]
    category: Category,
    /// A response header to keep, as 'Name: value'. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_category(s: &str) -> Result<Category, String> {
    if s.trim().is_empty() {
        return Err("the category name is empty".into());
    }
    Ok(Category::parse(s))
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
    let mut opts = PutOptions::new().category(a.category.clone());
    if let Some(ttl) = a.ttl {
        opts = opts.ttl(ttl);
    }
    opts = opts.headers(a.headers.iter().cloned());
    let source = open_source(a.file.as_deref(), ctx)?;
    let store = ctx.open()?;
    let r = store.put_reader(&a.backend, &a.signature, source, &opts)?;
    report(&a, &r, ctx)?;
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
