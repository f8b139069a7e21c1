//! `blobcache clear`: remove many entries at once, after confirmation.

use std::io::{self, BufRead, IsTerminal, Write};

use blobcache::{Error, Selector, Store};
use clap::Args;
use serde::Serialize;

use super::ls::{listed, selector};
use super::output::{self, Out};
use super::progress::Progress;
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache clear tmdb                    # asks before removing, on a terminal
  blobcache clear tmdb --prefix search/ --yes
  blobcache clear --all --yes             # everything

Confirmation: without --yes, clear asks on the terminal and removes nothing
unless the answer is y; when standard input is not a terminal (a script, a
pipe, CI) it refuses with an error and removes nothing. Clearing everything
takes --all, so a forgotten BACKEND never empties the cache.
Exit codes: 0 removed (or nothing matched), 1 declined at the prompt, 2 error.";

/// Arguments of `clear`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["backend", "all"]))]
pub struct ClearArgs {
    /// Only this backend's entries.
    backend: Option<String>,
    /// Only signatures starting with this (needs BACKEND).
    #[arg(long, requires = "backend")]
    prefix: Option<String>,
    /// Every entry of every backend.
    #[arg(long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    yes: bool,
}

#[derive(Serialize)]
struct ClearJson {
    removed: u64,
}

/// Runs `clear`.
pub fn run(a: ClearArgs, ctx: &Ctx) -> Result<Status, Error> {
    let sel = selector(a.backend.as_deref(), a.prefix.as_deref());
    let Some(store) = ctx.open_existing()? else {
        return report(0, ctx);
    };
    let matching = count(&store, &sel)?;
    if matching == 0 {
        return report(0, ctx);
    }
    let what = describe(&sel, matching);
    if !a.yes && !confirm(&what, ctx)? {
        if ctx.chatty() {
            let _ = writeln!(io::stderr(), "nothing removed");
        }
        return Ok(Status::NotFound);
    }
    let bar = Progress::start(ctx, "clearing", matching);
    let removed = store.clear_with_progress(&sel, |done| bar.set(done))?;
    drop(bar);
    report(removed, ctx)
}

/// How many entries `sel` matches: from the totals, or by listing for a
/// prefix.
fn count(store: &Store, sel: &Selector) -> Result<u64, Error> {
    match sel {
        Selector::All => Ok(store.stats()?.entries),
        Selector::Backend(b) => Ok(store
            .stats()?
            .backends
            .iter()
            .find(|s| &s.name == b)
            .map_or(0, |s| s.entries)),
        _ => listed(Some(store), sel)?.try_fold(0, |n, m| m.map(|_| n + 1)),
    }
}

fn describe(sel: &Selector, n: u64) -> String {
    let n = output::entries(n);
    match sel {
        Selector::All => format!("all {n} of every backend"),
        Selector::Backend(b) => format!("{n} of backend {b}"),
        Selector::Prefix(b, p) => format!(
            "{n} of backend {b} whose signature starts with {:?}",
            String::from_utf8_lossy(p)
        ),
    }
}

/// Asks on the terminal; refuses (an error) when there is none to ask on.
fn confirm(what: &str, ctx: &Ctx) -> Result<bool, Error> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::NotConfirmed {
            action: format!("clearing {what} from {}", ctx.dir.display()),
        });
    }
    let mut err = io::stderr();
    let _ = write!(err, "Remove {what} from {}? [y/N] ", ctx.dir.display());
    let _ = err.flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|source| Error::Io {
            op: "read the answer from",
            path: "standard input".into(),
            source,
        })?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn report(removed: u64, ctx: &Ctx) -> Result<Status, Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&ClearJson { removed })?;
    } else if ctx.chatty() {
        out.line(format_args!("removed {}", output::entries(removed)))?;
    }
    out.flush()?;
    Ok(Status::Done)
}
