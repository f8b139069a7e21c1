//! `blobcache fetch BACKEND SIGNATURE -- CMD ARGS...`: get-or-fetch from
//! the shell. A live entry is printed; on a miss CMD runs and what it
//! writes to standard output is stored (exit 0 only) and printed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use blobcache::{Error, FetchError, FetchStatus, Fetched};
use clap::Args;

use super::output::{self, Out};
use super::put::{EntryArgs, parse_signature};
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache fetch tmdb movie/603 -- curl -fsS https://api.example.org/3/movie/603
  blobcache fetch anilist trending --category trending -- ./fetch-trending.sh
  blobcache fetch tmdb movie/603 --ttl 1h -- curl -fsS \"$URL\" | jq .title

A live entry is printed and CMD does not run. On a miss CMD runs with no
standard input and its standard error passed through; when it exits 0
its standard output is stored and printed. When it fails (or cannot be
started) and the entry expired less than --stale-if-error ago, the stale
entry is printed instead and the exit code is 3. The payload is held in
memory: for large dumps use `put` from a file. Processes fetching one
key at the same time share one run of CMD: the first takes a lock on the
key (locks/fetch/), the others wait for it and print what it stored; if
it dies, the next one runs CMD. A read-only cache has no such lock.
Exit codes: 0 hit or fetched, 3 stale entry served after CMD failed,
2 error (CMD failed with nothing to serve, or the cache failed).";

/// Arguments of `fetch`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct FetchArgs {
    /// Backend name, e.g. tmdb.
    backend: String,
    /// Signature: the request's identity within the backend, e.g. movie/603.
    #[arg(value_parser = parse_signature)]
    signature: String,
    #[command(flatten)]
    entry: EntryArgs,
    /// How long after expiry an entry may still be served when CMD fails.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    stale_if_error: Duration,
    /// The command that fetches the payload, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    command: Vec<String>,
}

/// Why CMD gave nothing to store.
#[derive(Debug)]
struct CmdFailed(String);

impl std::fmt::Display for CmdFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `fetch`.
pub fn run(a: FetchArgs, ctx: &Ctx) -> Result<Status, Error> {
    let store = ctx.open_with(ctx.store_options().stale_if_error(a.stale_if_error))?;
    let opts = a.entry.options(None);
    let answer = store.get_or_fetch(&a.backend, &a.signature, &opts, || run_command(&a.command));
    let answer = match answer {
        Ok(answer) => answer,
        Err(FetchError::Upstream(e)) => {
            return Err(Error::Source {
                key: format!("{}/{}", a.backend, a.signature),
                source: std::io::Error::other(format!(
                    "{e}, and no entry expired less than --stale-if-error ({}) ago \
                     to serve instead; nothing stored",
                    output::human(a.stale_if_error)
                )),
            });
        }
        Err(FetchError::Store(e)) => return Err(e),
    };
    if let Some(e) = answer.error.as_ref().filter(|_| !ctx.quiet) {
        let when = answer
            .expires_at
            .map_or_else(String::new, |t| output::expires_in(t, output::now_ms()));
        // Not eprintln!: it panics when stderr is a closed pipe.
        let _ = writeln!(
            std::io::stderr(),
            "warning: {e}; served the stale entry {}/{} ({when})",
            a.backend,
            a.signature
        );
    }
    log::info!("{}/{}: {:?}", a.backend, a.signature, answer.status);
    let mut out = Out::new();
    out.raw(&answer.data)?;
    out.flush()?;
    Ok(match answer.status {
        FetchStatus::Stale => Status::Stale,
        FetchStatus::Hit | FetchStatus::Fetched => Status::Done,
    })
}

/// Runs CMD, returning its standard output when it exits 0.
fn run_command(cmd: &[String]) -> Result<Fetched, CmdFailed> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| CmdFailed("no command given after --".into()))?;
    log::info!("running {cmd:?}");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| CmdFailed(format!("cannot run {program:?}: {e}")))?;
    if !out.status.success() {
        let how = match out.status.code() {
            Some(c) => format!("exited with {c}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(CmdFailed(format!("{program:?} {how}")));
    }
    Ok(Fetched::new(out.stdout))
}
