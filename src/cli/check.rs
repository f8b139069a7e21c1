//! `blobcache health` and `blobcache verify`: is the cache consistent?

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use blobcache::{Error, Problem, RemoteState, VerifyOptions, VerifyReport};
use clap::Args;
use serde::Serialize;

use super::output::{self, Out};
use super::progress::Progress;
use super::stats::RemoteJson;
use super::{Ctx, Status};

const HEALTH_EXAMPLES: &str = "\
Examples:
  blobcache health && echo ok
  blobcache --json health | jq .problems

Checks that the cache opens, that every entry's blob exists with its
recorded size, and that refcounts, expiry order and totals agree (it does
not read payloads; `verify` does). Past self-healing (damaged entries
dropped, index resets) is shown as warnings.
Exit codes: 0 healthy (also when the cache does not exist yet), 1 problems
found (run `blobcache verify --repair`), 2 the cache cannot be opened.";

const VERIFY_EXAMPLES: &str = "\
Examples:
  blobcache verify              # decode every blob and check its hash
  blobcache verify --quick      # sizes and index consistency only
  blobcache verify --repair     # drop damaged entries, rebuild counts

--repair drops entries whose blob is missing or damaged and undecodable
records, and rebuilds refcounts, expiry order and totals; then it checks
again. Exit codes: 0 clean (or clean after repair), 1 problems remain,
2 error.";

/// Arguments of `health`.
#[derive(Args, Debug)]
#[command(after_help = HEALTH_EXAMPLES)]
pub struct HealthArgs {}

/// Arguments of `verify`.
#[derive(Args, Debug)]
#[command(after_help = VERIFY_EXAMPLES)]
pub struct VerifyArgs {
    /// Fix what is found.
    #[arg(long)]
    repair: bool,
    /// Skip decoding the blobs: check existence, sizes and the index only.
    #[arg(long)]
    quick: bool,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    kind: &'a str,
    subject: &'a str,
    detail: &'a str,
}

fn problems_json(problems: &[Problem]) -> Vec<ProblemJson<'_>> {
    problems
        .iter()
        .map(|p| ProblemJson {
            kind: p.kind.as_str(),
            subject: &p.subject,
            detail: &p.detail,
        })
        .collect()
}

#[derive(Serialize)]
struct HealthJson<'a> {
    dir: String,
    exists: bool,
    healthy: bool,
    entries: u64,
    problems: Vec<ProblemJson<'a>>,
    warnings: Vec<String>,
    /// The remote tier, when `--remote` is given (its state does not make
    /// the local cache unhealthy; a down tier is a warning).
    remote: Option<RemoteJson>,
}

#[derive(Serialize)]
struct VerifyJson<'a> {
    entries: u64,
    blobs: u64,
    orphan_files: u64,
    problems: Vec<ProblemJson<'a>>,
    repaired: u64,
    clean: bool,
}

/// Runs `health`.
pub fn health(_: HealthArgs, ctx: &Ctx) -> Result<Status, Error> {
    let store = ctx.open_existing()?;
    let (report, warnings, remote) = match &store {
        None => (VerifyReport::default(), Vec::new(), None),
        Some(store) => {
            let report = store.verify(VerifyOptions::new())?;
            let stats = store.stats()?;
            let remote = stats.remote.as_ref().map(RemoteJson::of);
            (report, warnings(&stats), remote)
        }
    };
    let healthy = report.is_clean();
    let mut out = Out::new();
    if ctx.json {
        out.json(&HealthJson {
            dir: ctx.dir.display().to_string(),
            exists: store.is_some(),
            healthy,
            entries: report.entries,
            problems: problems_json(&report.problems),
            warnings,
            remote,
        })?;
    } else {
        let state = match (store.is_some(), healthy) {
            (false, _) => "healthy (no cache yet; the first put creates it)".to_string(),
            (true, true) => format!("healthy ({})", output::entries(report.entries)),
            (true, false) => format!(
                "{}; run `blobcache verify --repair`",
                problems(report.problems.len())
            ),
        };
        out.line(format_args!("{}: {state}", ctx.dir.display()))?;
        print_problems(&mut out, &report.problems)?;
        for w in &warnings {
            out.line(format_args!("warning: {w}"))?;
        }
        if let Some(r) = &remote {
            out.line(format_args!("remote: {}", r.line()))?;
        }
    }
    out.flush()?;
    Ok(if healthy {
        Status::Done
    } else {
        Status::NotFound
    })
}

fn warnings(stats: &blobcache::Stats) -> Vec<String> {
    let mut w = Vec::new();
    if stats.corrupt > 0 {
        w.push(format!(
            "{} dropped because their blob was missing or damaged (check the disk)",
            output::entries(stats.corrupt)
        ));
    }
    if let Some(r) = stats
        .remote
        .as_ref()
        .filter(|r| r.state == RemoteState::Down)
    {
        w.push(format!(
            "the remote tier {} is down (working locally; see -v for its error)",
            r.url
        ));
    }
    if stats.index_resets > 0 {
        w.push(format!(
            "the index was found damaged and rebuilt {} times",
            stats.index_resets
        ));
    }
    w
}

/// `1 problem`, `0 problems`.
fn problems(n: usize) -> String {
    output::count(u64::try_from(n).unwrap_or(u64::MAX), "problem", "problems")
}

fn print_problems(out: &mut Out, problems: &[Problem]) -> Result<(), Error> {
    for p in problems {
        out.line(format_args!("  {p}"))?;
    }
    Ok(())
}

/// Runs `verify`.
pub fn verify(a: VerifyArgs, ctx: &Ctx) -> Result<Status, Error> {
    let Some(store) = ctx.open_existing()? else {
        return verify_report(&VerifyReport::default(), true, false, ctx);
    };
    let bar = Progress::start(ctx, "verifying", store.stats()?.entries);
    let opts = VerifyOptions::new().full(!a.quick).repair(a.repair);
    let opts = match a.quick {
        true => {
            let tick = bar.ticker();
            opts.progress(Arc::new(move |done, _| tick(done)))
        }
        false => with_byte_bar(opts, &bar),
    };
    let report = store.verify(opts)?;
    drop(bar);
    let clean = report.is_clean()
        || (a.repair
            && store
                .verify(VerifyOptions::new().full(!a.quick))?
                .is_clean());
    verify_report(&report, clean, a.repair, ctx)
}

/// A full check's bar counts payload bytes (its time left follows the
/// large blobs), its message the entries: `verifying entry 282/356`.
fn with_byte_bar(opts: VerifyOptions, bar: &Progress) -> VerifyOptions {
    let entries = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let bytes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let step: Arc<super::progress::ByteStepper> = Arc::new(bar.byte_stepper());
    let draw = {
        let (entries, bytes, step) = (entries.clone(), bytes.clone(), step.clone());
        move || {
            let e = (entries.0.load(Relaxed), entries.1.load(Relaxed));
            let b = (bytes.0.load(Relaxed), bytes.1.load(Relaxed));
            step("verifying entry", e, b);
        }
    };
    let draw = Arc::new(draw);
    let on_entry = {
        let (entries, draw) = (entries.clone(), draw.clone());
        move |done, total| {
            entries.0.store(done, Relaxed);
            entries.1.store(total, Relaxed);
            draw();
        }
    };
    let on_bytes = move |done, total| {
        bytes.0.store(done, Relaxed);
        bytes.1.store(total, Relaxed);
        draw();
    };
    opts.progress(Arc::new(on_entry))
        .byte_progress(Arc::new(on_bytes))
}

fn verify_report(r: &VerifyReport, clean: bool, repair: bool, ctx: &Ctx) -> Result<Status, Error> {
    let mut out = Out::new();
    if ctx.json {
        out.json(&VerifyJson {
            entries: r.entries,
            blobs: r.blobs,
            orphan_files: r.orphan_files,
            problems: problems_json(&r.problems),
            repaired: r.repaired,
            clean,
        })?;
    } else {
        out.line(format_args!(
            "checked {}; blobs: {}, orphan files: {} (GC removes them), {}",
            output::entries(r.entries),
            r.blobs,
            r.orphan_files,
            problems(r.problems.len())
        ))?;
        print_problems(&mut out, &r.problems)?;
        if repair && !r.problems.is_empty() {
            let outcome = if clean {
                "clean now"
            } else {
                "problems remain"
            };
            out.line(format_args!(
                "repaired {} ({} changed); {outcome}",
                problems(r.problems.len()),
                output::count(r.repaired, "key or file", "keys and files")
            ))?;
        } else if !clean {
            out.line("run `blobcache verify --repair` to fix them")?;
        }
    }
    out.flush()?;
    Ok(if clean {
        Status::Done
    } else {
        Status::NotFound
    })
}
