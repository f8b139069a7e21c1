//! The command line: global flags, the subcommand list and dispatch.
//!
//! Each subcommand lives in its own file with an `Args` struct (its flags,
//! help and examples) and a `run` function; adding one is a new file, a
//! variant of [`Command`] and a line in [`Command::run`]. Commands call only
//! the public library API.

mod archive;
mod check;
mod clear;
mod docs;
mod entry;
mod fetch;
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
use clap::builder::FalseyValueParser;
use clap::{Parser, Subcommand};

/// What a command that did not fail reports through the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Exit code 0: done, or a hit.
    Done,
    /// Exit code 1: nothing found (a miss, an absent entry), problems
    /// found, or a prompt declined.
    NotFound,
    /// Exit code 3: `fetch` served a stale entry because its command
    /// failed.
    Stale,
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
  2  error (the message on stderr says what failed and what to do)
  3  fetch served a stale entry because its command failed";

/// The `blobcache` command line.
#[derive(Parser, Debug)]
#[command(name = "blobcache", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Cache directory [default: the platform cache dir, e.g. ~/.cache/blobcache]
    #[arg(long, global = true, env = "BLOBCACHE_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,

    /// The on-disk format of a new cache: 1 (the default) or 2, the
    /// storage core v2 (payloads in pack files, a lean index). An existing
    /// cache keeps its own; asking it for another one is an error.
    #[arg(long, global = true, env = "BLOBCACHE_FORMAT", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=2))]
    format: Option<u32>,

    /// Machine-readable output: one JSON document on stdout (field names
    /// are stable; see README).
    #[arg(long, global = true, env = "BLOBCACHE_JSON", value_parser = FalseyValueParser::new())]
    json: bool,

    /// Only errors on stderr: no progress bars, no warnings, no
    /// confirmations of put/rm/touch/clear.
    #[arg(
        short,
        long,
        global = true,
        env = "BLOBCACHE_QUIET",
        value_parser = FalseyValueParser::new(),
        conflicts_with = "verbose"
    )]
    quiet: bool,

    /// More log output on stderr: -v says what each command does, -vv
    /// debug, -vvv trace (other crates' logs stay at warn, info with
    /// -vvv). BLOBCACHE_VERBOSE=N counts as N times -v; RUST_LOG
    /// overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Refuse to store any payload, header or signature containing SECRET
    /// (an API key), exit 2; the error never repeats it. Repeatable;
    /// BLOBCACHE_DENY_SECRET takes a comma-separated list (prefer it: the
    /// command line is visible to other users).
    #[arg(
        long = "deny-secret",
        global = true,
        env = "BLOBCACHE_DENY_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    deny_secrets: Vec<String>,

    /// Never store the response header NAME (any case), besides
    /// Authorization, Cookie, Set-Cookie and Proxy-Authorization.
    /// Repeatable; BLOBCACHE_DROP_HEADER takes a comma-separated list.
    #[arg(
        long = "drop-header",
        global = true,
        env = "BLOBCACHE_DROP_HEADER",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    drop_headers: Vec<String>,

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
    /// (redis://[user:password@]host[:port][/db], rediss://... for TLS, or
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
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_READ_ONLY",
        value_parser = FalseyValueParser::new()
    )]
    remote_read_only: bool,

    /// Make rm and clear remove the entries from the remote tier as well
    /// (by default they touch the local cache only).
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_DELETE",
        value_parser = FalseyValueParser::new()
    )]
    remote_delete: bool,

    /// With a rediss:// remote: trust the CA certificates in this PEM file
    /// instead of the system's roots.
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_CA_FILE",
        value_name = "PEM"
    )]
    remote_ca_file: Option<PathBuf>,

    /// With a rediss:// remote: the client certificate (PEM) to present to
    /// a Redis that requires one; needs --remote-key-file.
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_CERT_FILE",
        value_name = "PEM",
        requires = "remote_key_file"
    )]
    remote_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --remote-cert-file.
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_REMOTE_KEY_FILE",
        value_name = "PEM",
        requires = "remote_cert_file"
    )]
    remote_key_file: Option<PathBuf>,

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
    /// Print a cached payload, or run a command on a miss and store what
    /// it prints.
    Fetch(fetch::FetchArgs),
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
    /// Write a shell completion script (bash, zsh, fish, ...) to standard
    /// output.
    Completions(docs::CompletionsArgs),
    /// Write the manual page (roff) to standard output.
    Man(docs::ManArgs),
}

impl Command {
    fn run(self, ctx: &Ctx) -> Result<Status, Error> {
        match self {
            Command::Put(a) => put::run(a, ctx),
            Command::Get(a) => get::run(a, ctx),
            Command::Fetch(a) => fetch::run(a, ctx),
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
            Command::Completions(a) => docs::completions(a),
            Command::Man(a) => docs::man(a),
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
    /// `--deny-secret`.
    deny_secrets: Vec<String>,
    /// `--drop-header`.
    drop_headers: Vec<String>,
    /// `--remote` and its companions.
    pub remote: Option<RemoteOptions>,
    /// `--format`.
    format: Option<u32>,
}

impl Ctx {
    /// The store options the global flags ask for.
    pub fn store_options(&self) -> StoreOptions {
        let mut opts = StoreOptions::default()
            .owner_timeout(self.owner_timeout)
            .deny_secrets(&self.deny_secrets);
        for name in &self.drop_headers {
            opts = opts.drop_header(name.as_str());
        }
        if let Some(r) = &self.remote {
            opts = opts.remote(r.clone());
        }
        if let Some(f) = self.format {
            opts = opts.format(f);
        }
        opts
    }

    /// Opens the cache, creating it when missing.
    pub fn open(&self) -> Result<Store, Error> {
        self.open_with(self.store_options())
    }

    /// Opens the cache with `opts` (built on [`Ctx::store_options`]),
    /// creating it when missing.
    pub fn open_with(&self, opts: StoreOptions) -> Result<Store, Error> {
        let store = Store::open(&self.dir, opts)?;
        log::info!("opened {} ({})", self.dir.display(), role(&store));
        Ok(store)
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

/// Whether this process owns the cache, for `-v`.
fn role(store: &Store) -> String {
    if store.is_owner() {
        "this process owns it".into()
    } else {
        format!("a guest of its owner, process {}", store.owner_pid())
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

/// The log filter for `-q`/`-v`: our own crate at the level asked for,
/// other crates (sled) at warn, or info with `-vvv`.
fn log_filter(quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "warn,blobcache=info",
        (false, 2) => "warn,blobcache=debug",
        (false, _) => "info,blobcache=trace",
    }
}

fn init_logging(cli: &Cli) {
    let verbose = match cli.verbose {
        0 => std::env::var("BLOBCACHE_VERBOSE")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        n => n,
    };
    let filter = log_filter(cli.quiet, verbose);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_target(false)
        .init();
}

/// Parses the arguments; a usage error prints as one line (the first of
/// clap's message, which names the problem) and exits 2.
fn parse_args() -> Result<Cli, ExitCode> {
    let e = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    use clap::error::ErrorKind::{
        DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
    };
    if matches!(
        e.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        let code = if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
            2
        } else {
            0
        };
        return Err(ExitCode::from(code));
    }
    let text = e.render().to_string();
    // The first paragraph names the problem (a list of missing arguments
    // continues on indented lines); usage and tips follow.
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let _ = writeln!(std::io::stderr(), "{} (see --help)", first.join(" "));
    Err(ExitCode::from(2))
}

/// Parses the arguments, runs the command, and turns the outcome into the
/// exit code (0 done, 1 not found, 2 error). Errors print as one line.
pub fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logging(&cli);
    let remote = remote_options(&cli);
    // Completions and the man page need no cache directory.
    let dir = match cli.command {
        Command::Completions(_) | Command::Man(_) => Ok(cli.dir.unwrap_or_default()),
        _ => default_dir_or(cli.dir),
    };
    let result = dir.and_then(|dir| {
        let ctx = Ctx {
            dir,
            json: cli.json,
            quiet: cli.quiet,
            owner_timeout: cli.owner_timeout,
            deny_secrets: cli.deny_secrets,
            drop_headers: cli.drop_headers,
            remote,
            format: cli.format,
        };
        cli.command.run(&ctx)
    });
    match result {
        Ok(Status::Done) => ExitCode::SUCCESS,
        Ok(Status::NotFound) => ExitCode::from(1),
        Ok(Status::Stale) => ExitCode::from(3),
        // The reader of our output went away (`| head`): not our failure.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

/// The one-line message for `e`, naming command-line flags where the
/// library's message names its own options.
fn message(e: &Error) -> String {
    match e {
        Error::SweepRunning { path } => format!(
            "a GC sweep is already running on cache {}; wait for it to finish, or pass --wait",
            path.display()
        ),
        Error::OwnerTimeout { path, pid, after } => format!(
            "the process owning cache {} (pid {pid}) did not answer within {}; \
             it may be hung or overloaded: check it, or raise --owner-timeout",
            path.display(),
            output::human(*after)
        ),
        other => other.to_string(),
    }
}

/// The remote tier the flags ask for. A CLI call is short-lived, so its
/// writes are sent before it exits (synchronously).
fn remote_options(cli: &Cli) -> Option<RemoteOptions> {
    let url = cli.remote.as_ref().filter(|u| !u.is_empty())?;
    let mut opts = RemoteOptions::new(url)
        .prefix(&cli.remote_prefix)
        .read_only(cli.remote_read_only)
        .delete_remote(cli.remote_delete)
        .sync_writes(true);
    if let Some(ca) = &cli.remote_ca_file {
        opts = opts.ca_file(ca);
    }
    if let (Some(cert), Some(key)) = (&cli.remote_cert_file, &cli.remote_key_file) {
        opts = opts.client_cert(cert, key);
    }
    Some(opts)
}

fn default_dir_or(dir: Option<PathBuf>) -> Result<PathBuf, Error> {
    match dir {
        Some(d) => Ok(d),
        None => default_dir(),
    }
}
