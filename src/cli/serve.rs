//! `blobcache serve`: the long-running mode. Holds the cache open (as its
//! owner when no other process is) with the background sweeper on, so
//! other `blobcache` processes and programs embedding the library reach
//! the index through it, until standard input is closed.

use std::io::{self, Read};
use std::time::Duration;

use blobcache::{Error, Store};
use clap::Args;
use serde::Serialize;

use super::gc::parse_size;
use super::output::Out;
use super::{Ctx, Status};

const EXAMPLES: &str = "\
Examples:
  blobcache serve                          # until Ctrl-D (stdin closed)
  blobcache serve --gc-interval 15m --max-size 2GiB < /dev/tty
  sleep infinity | blobcache serve &       # in a script: until killed
  blobcache serve --until-killed           # e.g. under systemd

serve opens the cache, becoming the owner of its index when no other
process is (other processes then go through it over owner.sock), runs a
GC sweep every --gc-interval, and prints one line saying whether it owns
the cache. It stops, closing the cache cleanly, when its standard input
reaches end of file (Ctrl-D on a terminal, or the writer of a pipe going
away); with --until-killed it ignores stdin. SIGINT and SIGTERM end it at
once: nothing acknowledged is lost (the journal replays), and another
process takes over the ownership. Exit codes: 0 stopped, 2 error.";

/// Arguments of `serve`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ServeArgs {
    /// How often the background sweep runs.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    gc_interval: Duration,
    /// Size cap: a put that crosses it wakes a sweep that evicts least
    /// recently used entries, e.g. 2GiB [default: none].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Do not watch standard input: run until the process is killed.
    #[arg(long)]
    until_killed: bool,
}

#[derive(Serialize)]
struct ServeJson {
    dir: String,
    owner: bool,
    owner_pid: u32,
    pid: u32,
}

/// Runs `serve`.
pub fn run(a: ServeArgs, ctx: &Ctx) -> Result<Status, Error> {
    let mut opts = ctx.store_options().gc_interval(a.gc_interval);
    if let Some(cap) = a.max_size {
        opts = opts.max_size(cap);
    }
    let store = Store::open(&ctx.dir, opts)?;
    announce(&store, ctx)?;
    if a.until_killed {
        loop {
            std::thread::park();
        }
    }
    wait_for_eof();
    log::info!("standard input closed: closing the cache");
    drop(store);
    Ok(Status::Done)
}

fn announce(store: &Store, ctx: &Ctx) -> Result<(), Error> {
    let mut out = Out::new();
    let pid = std::process::id();
    if ctx.json {
        out.json(&ServeJson {
            dir: ctx.dir.display().to_string(),
            owner: store.is_owner(),
            owner_pid: store.owner_pid(),
            pid,
        })?;
    } else if store.is_owner() {
        out.line(format_args!(
            "serving {} as its owner (pid {pid}); close stdin to stop",
            ctx.dir.display()
        ))?;
    } else {
        out.line(format_args!(
            "serving {} as a guest: process {} owns it (this one takes over if it exits); close stdin to stop",
            ctx.dir.display(),
            store.owner_pid()
        ))?;
    }
    out.flush()
}

/// Reads and discards standard input until end of file (or a read error,
/// which means there is nothing left to wait for).
fn wait_for_eof() {
    let mut buf = [0u8; 4096];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("reading standard input failed ({e}): stopping");
                return;
            }
        }
    }
}
