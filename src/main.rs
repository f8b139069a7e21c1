//! The `blobcache` command line; see `src/cli/` and `blobcache --help`.
//!
//! Exit codes: 0 success (or hit), 1 nothing found (a miss, an absent
//! entry, problems found by `health`/`verify`), 2 error.

#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
