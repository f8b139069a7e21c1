//! The command line: global flags, the subcommand list and dispatch.
//!
//! Each subcommand lives in its own file with an `Args` struct (its flags,
//! help and examples) and a `run` function; adding one is a new file, a
//! variant of [`Command`] and a line in [`Command::run`]. Commands call only
//! the public library API.

mod archive;
mod check;
mod clear;
mod entry;
mod gc;
mod get;
mod ls;
mod output;
mod progress;
mod put;
mod serve;
mod stats;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use blobcache::{DEFAULT_REMOTE_PREFIX, Error, RemoteOptions, Store, StoreOptions};
use clap::{Parser, Subcommand};

/// What a command that did not fail reports through the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Exit code 0: done, or a hit.
    Done,
    /// Exit code 1: nothing found (a miss, an absent entry), problems
    /// found, or a prompt declined.
    NotFound,
}

const ABOUT: &str =
    "A persistent, content-addressed cache for API responses and dataset snapshots.";

const AFTER_HELP: &str = "\
Examples:
  echo '{\"id\":603}' | blobcache put tmdb movie/603 - --category metadata
  blobcache get tmdb movie/603 > movie.json
  blobcache ls tmdb --long
  blobcache --json stats | jq .hit_ratio
  blobcache gc --max-size 2GiB
  blobcache export cache.tar && blobcache --dir other import cache.tar

Exit codes:
  0  success; for `get`, a hit
  1  nothing found: a miss, an absent entry for rm/touch, problems found by
     health or verify, or a declined confirmation
  2  error (the message on stderr says what failed and what to do)";

/// The `blobcache` command line.
#[derive(Parser, Debug)]
#[command(name = "blobcache", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Cache directory [default: the platform cache dir, e.g. ~/.cache/blobcache]
    #[arg(long, global = true, env = "BLOBCACHE_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Machine-readable output: one JSON document on stdout (field names
    /// are stable; see README).
    #[arg(long, global = true)]
    json: bool,

    /// Only errors on stderr: no progress bars, no warnings, no
    /// confirmations of put/rm/touch/clear.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    /// RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// How long to wait for the process owning the cache to answer, or
    /// for a process holding it exclusively to let go.
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_OWNER_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    owner_timeout: std::time::Duration,

    /// A shared remote tier behind the cache: a Redis URL
    /// (redis://[user:password@]host[:port][/db] or
    /// unix:///path/redis.sock[?pass=...]). A local miss reads through it,
    /// a put writes through to it; a Redis that is down is skipped.
    #[arg(long, global = true, env = "BLOBCACHE_REMOTE", value_name = "URL")]
    remote: Option<String>,

    /// Prefix of the remote tier's keys in Redis (one namespace per team
    /// or project).
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_PREFIX",
        value_name = "PREFIX",
        default_value = DEFAULT_REMOTE_PREFIX
    )]
    remote_prefix: String,

    /// Read through the remote tier but never write or delete anything
    /// there (for untrusted jobs, such as pull-request CI).
    #[arg(long, global = true, env = "BLOBCACHE_REMOTE_READ_ONLY")]
    remote_read_only: bool,

    /// Make rm and clear remove the entries from the remote tier as well
    /// (by default they touch the local cache only).
    #[arg(long, global = true)]
    remote_delete: bool,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Store a payload from FILE or standard input.
    Put(put::PutArgs),
    /// Write a cached payload to standard output or a file.
    Get(get::GetArgs),
    /// Remove an entry.
    Rm(entry::RmArgs),
    /// Give an entry a new time to live, counted from now.
    Touch(entry::TouchArgs),
    /// List entries, of all backends or one.
    Ls(ls::LsArgs),
    /// Remove the entries of a backend, of a signature prefix, or all.
    Clear(clear::ClearArgs),
    /// Show counts, sizes, ratios and hit rates.
    Stats(stats::StatsArgs),
    /// Quick check of the cache; the exit code says whether it is healthy.
    Health(check::HealthArgs),
    /// Check every entry and blob; optionally repair what is wrong.
    Verify(check::VerifyArgs),
    /// Sweep: expired entries, unused blobs, size cap, recompression.
    Gc(gc::GcArgs),
    /// Write the cache (or part of it) as one archive, for CI.
    Export(archive::ExportArgs),
    /// Merge an archive made by `export` into the cache.
    Import(archive::ImportArgs),
    /// Hold the cache open as its owner, with background GC, until stdin
    /// closes (the long-running mode).
    Serve(serve::ServeArgs),
}

impl Command {
    fn run(self, ctx: &Ctx) -> Result<Status, Error> {
        match self {
            Command::Put(a) => put::run(a, ctx),
            Command::Get(a) => get::run(a, ctx),
            Command::Rm(a) => entry::rm(a, ctx),
            Command::Touch(a) => entry::touch(a, ctx),
            Command::Ls(a) => ls::run(a, ctx),
            Command::Clear(a) => clear::run(a, ctx),
            Command::Stats(a) => stats::run(a, ctx),
            Command::Health(a) => check::health(a, ctx),
            Command::Verify(a) => check::verify(a, ctx),
            Command::Gc(a) => gc::run(a, ctx),
            Command::Export(a) => archive::export(a, ctx),
            Command::Import(a) => archive::import(a, ctx),
            Command::Serve(a) => serve::run(a, ctx),
        }
    }
}

/// What every command gets from the global flags.
#[derive(Debug)]
pub struct Ctx {
    /// The cache directory.
    pub dir: PathBuf,
    /// `--json` was given.
    pub json: bool,
    /// `-q` was given.
    pub quiet: bool,
    /// `--owner-timeout`.
    pub owner_timeout: std::time::Duration,
    /// `--remote` and its companions.
    pub remote: Option<RemoteOptions>,
}

impl Ctx {
    /// Opens the cache, creating it when missing.
    pub fn open(&self) -> Result<Store, Error> {
        let mut opts = StoreOptions::default().owner_timeout(self.owner_timeout);
        if let Some(r) = &self.remote {
            opts = opts.remote(r.clone());
        }
        Store::open(&self.dir, opts)
    }

    /// Opens the cache if its directory exists; `None` means there is no
    /// cache yet, which read-only commands treat as empty. With a remote
    /// tier the cache is created, so that remote hits can be kept.
    pub fn open_existing(&self) -> Result<Option<Store>, Error> {
        if !self.dir.exists() && self.remote.is_none() {
            log::info!("{} does not exist: no cache yet", self.dir.display());
            return Ok(None);
        }
        self.open().map(Some)
    }

    /// True when progress bars may be drawn: stderr is a terminal and
    /// neither `--json` nor `-q` was given.
    pub fn progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// True when human confirmations ("stored ...", "removed ...") print.
    pub fn chatty(&self) -> bool {
        !self.quiet
    }
}

fn default_dir() -> Result<PathBuf, Error> {
    dirs::cache_dir()
        .map(|d| d.join("blobcache"))
        .ok_or_else(|| Error::NotACache {
            path: PathBuf::from("(platform cache directory)"),
            reason: "this platform has no cache directory; pass --dir or set BLOBCACHE_DIR".into(),
        })
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
}

/// Parses the arguments, runs the command, and turns the outcome into the
/// exit code (0 done, 1 not found, 2 error). Errors print as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let remote = remote_options(&cli);
    let result = default_dir_or(cli.dir).and_then(|dir| {
        let ctx = Ctx {
            dir,
            json: cli.json,
            quiet: cli.quiet,
            owner_timeout: cli.owner_timeout,
            remote,
        };
        cli.command.run(&ctx)
    });
    match result {
        Ok(Status::Done) => ExitCode::SUCCESS,
        Ok(Status::NotFound) => ExitCode::from(1),
        // The reader of our output went away (`| head`): not our failure.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The remote tier the flags ask for. A CLI call is short-lived, so its
/// writes are sent before it exits (synchronously).
fn remote_options(cli: &Cli) -> Option<RemoteOptions> {
    let url = cli.remote.as_ref().filter(|u| !u.is_empty())?;
    Some(
        RemoteOptions::new(url)
            .prefix(&cli.remote_prefix)
            .read_only(cli.remote_read_only)
            .delete_remote(cli.remote_delete)
            .sync_writes(true),
    )
}

fn default_dir_or(dir: Option<PathBuf>) -> Result<PathBuf, Error> {
    match dir {
        Some(d) => Ok(d),
        None => default_dir(),
    }
}
