//! The `blobcache` command line.
//!
//! Exit codes: 0 success (or hit), 1 miss, 2 error.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use blobcache::{Category, PutOptions, Store, StoreOptions};
use clap::{Parser, Subcommand};

/// A persistent, content-addressed cache for API responses and snapshots.
#[derive(Parser, Debug)]
#[command(name = "blobcache", version, about)]
struct Cli {
    /// Cache directory [default: the platform cache dir, e.g. ~/.cache/blobcache]
    #[arg(long, global = true, env = "BLOBCACHE_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,

    /// How long to wait for the process owning the cache to answer, or for
    /// a process holding it exclusively to let go.
    #[arg(
        long,
        global = true,
        env = "BLOBCACHE_OWNER_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    owner_timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a payload (from FILE, or standard input with `-` or no FILE).
    Put {
        /// Backend name, e.g. tmdb.
        backend: String,
        /// Signature: the request's identity within the backend.
        signature: String,
        /// File holding the payload; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Time to live, e.g. 90s, 72h, 30d (default: by category).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// metadata, list, schedule, trending, offline_dump (default metadata).
        #[arg(long, default_value = "metadata")]
        category: String,
        /// A response header to keep, as 'Name: value'. Repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Write a cached payload to standard output (or a file).
    Get {
        /// Backend name.
        backend: String,
        /// Signature.
        signature: String,
        /// Write to this file instead of standard output (atomically).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also serve an expired entry.
        #[arg(long)]
        stale: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("blobcache: {e}");
            ExitCode::from(2)
        }
    }
}

fn default_dir() -> Result<PathBuf, String> {
    dirs::cache_dir()
        .map(|d| d.join("blobcache"))
        .ok_or_else(|| {
            "no cache directory for this platform; pass --dir or set BLOBCACHE_DIR".into()
        })
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let dir = match cli.dir {
        Some(d) => d,
        None => default_dir()?,
    };
    let store_opts = StoreOptions::default().owner_timeout(cli.owner_timeout);
    match cli.command {
        Command::Put {
            backend,
            signature,
            file,
            ttl,
            category,
            headers,
        } => {
            let mut opts = PutOptions::new().category(Category::parse(&category));
            if let Some(ttl) = ttl {
                opts = opts.ttl(ttl);
            }
            for h in headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| format!("header {h:?} is not of the form 'Name: value'"))?;
                opts = opts.header(name.trim(), value.trim());
            }
            let store = Store::open(&dir, store_opts).map_err(|e| e.to_string())?;
            let src: Box<dyn Read> = match file.as_deref() {
                None => Box::new(io::stdin().lock()),
                Some(p) if p == Path::new("-") => Box::new(io::stdin().lock()),
                Some(p) => Box::new(
                    fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?,
                ),
            };
            let r = store
                .put_reader(&backend, &signature, src, &opts)
                .map_err(|e| e.to_string())?;
            println!("{} {} {}", r.hash, r.raw_size, r.stored_size);
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            backend,
            signature,
            output,
            stale,
        } => {
            if !dir.exists() {
                return Ok(ExitCode::from(1));
            }
            let store = Store::open(&dir, store_opts).map_err(|e| e.to_string())?;
            let reader = if stale {
                store.get_reader_stale(&backend, &signature)
            } else {
                store.get_reader(&backend, &signature)
            }
            .map_err(|e| e.to_string())?;
            let Some(mut reader) = reader else {
                return Ok(ExitCode::from(1));
            };
            match output {
                Some(path) => write_file_atomic(&path, &mut reader)?,
                None => {
                    let mut out = io::stdout().lock();
                    io::copy(&mut reader, &mut out)
                        .map_err(|e| format!("writing the payload: {e}"))?;
                    out.flush()
                        .map_err(|e| format!("writing the payload: {e}"))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_file_atomic(path: &Path, src: &mut dyn Read) -> Result<(), String> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = parent.join(format!(".{name}.blobcache-{}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        io::copy(src, &mut f)?;
        f.flush()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(format!("writing {}: {e}", path.display()));
    }
    Ok(())
}
