//! `blobcache rm` and `blobcache touch`: change one entry.

use std::time::Duration;

use blobcache::Error;
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::{Ctx, Status};

const RM_EXAMPLES: &str = "\
Examples:
  blobcache rm tmdb movie/603
  blobcache rm tmdb movie/603 || echo 'was not cached'

Exit codes: 0 removed, 1 no such entry, 2 error. The blob is freed when no
other entry shares it (files are reclaimed by GC).";

const TOUCH_EXAMPLES: &str = "\
Examples:
  blobcache touch tmdb movie/603 --ttl 72h   # keep it three more days
  blobcache touch tmdb trending/day --ttl 0s # expire it now (still --stale)

Exit codes: 0 updated, 1 no such entry, 2 error. Works on expired entries
too, which makes them live again.";

/// The key both commands take.
#[derive(Args, Debug)]
struct KeyArgs {
    /// Backend name.
    backend: String,
    /// Signature.
    #[arg(value_parser = super::put::parse_signature)]
    signature: String,
}

/// Arguments of `rm`.
#[derive(Args, Debug)]
#[command(after_help = RM_EXAMPLES)]
pub struct RmArgs {
    #[command(flatten)]
    key: KeyArgs,
}

/// Arguments of `touch`.
#[derive(Args, Debug)]
#[command(after_help = TOUCH_EXAMPLES)]
pub struct TouchArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// New time to live from now, e.g. 90s, 72h, 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    backend: &'a str,
    signature: &'a str,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

/// Runs `rm`.
pub fn rm(a: RmArgs, ctx: &Ctx) -> Result<Status, Error> {
    let found = match ctx.open_existing()? {
        Some(store) => store.delete(&a.key.backend, &a.key.signature)?,
        None => false,
    };
    report(&a.key, found, None, ctx, "removed")
}

/// Runs `touch`.
pub fn touch(a: TouchArgs, ctx: &Ctx) -> Result<Status, Error> {
    let (k, mut expires) = (&a.key, None);
    let found = match ctx.open_existing()? {
        Some(store) => {
            let found = store.touch(&k.backend, &k.signature, a.ttl)?;
            if found {
                expires = store.meta(&k.backend, &k.signature)?.map(|m| m.expires_at);
            }
            found
        }
        None => false,
    };
    report(k, found, expires, ctx, "touched")
}

fn report(
    key: &KeyArgs,
    found: bool,
    expires_at_ms: Option<u64>,
    ctx: &Ctx,
    verb: &str,
) -> Result<Status, Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&ChangeJson {
            backend: &key.backend,
            signature: &key.signature,
            found,
            expires_at_ms,
        })?;
    } else if !found {
        // Like a `get` miss: the exit code (1) says it, nothing is printed.
        log::info!("no entry {}/{}", key.backend, key.signature);
    } else if ctx.chatty() {
        let until = expires_at_ms
            .map(|e| format!(", {}", output::expiry(e, output::now_ms())))
            .unwrap_or_default();
        out.line(format_args!(
            "{verb} {}/{}{until}",
            key.backend, key.signature
        ))?;
    }
    out.flush()?;
    Ok(if found {
        Status::Done
    } else {
        Status::NotFound
    })
}
