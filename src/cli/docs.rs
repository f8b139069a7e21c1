//! `blobcache completions SHELL` and `blobcache man`: shell completions and
//! the manual page, generated from the same clap definitions as `--help`.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use blobcache::Error;

use super::output::{Out, stdout_error};
use super::{Cli, Status};

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  blobcache completions bash > ~/.local/share/bash-completion/completions/blobcache
  blobcache completions zsh > ~/.zfunc/_blobcache     # with fpath+=~/.zfunc
  blobcache completions fish > ~/.config/fish/completions/blobcache.fish
  source <(blobcache completions bash)                # this shell only";

const MAN_EXAMPLES: &str = "\
Examples:
  blobcache man > ~/.local/share/man/man1/blobcache.1 && man blobcache
  blobcache man | man -l -";

/// Arguments of `completions`.
#[derive(Args, Debug)]
#[command(after_help = COMPLETIONS_EXAMPLES)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `man`.
#[derive(Args, Debug)]
#[command(after_help = MAN_EXAMPLES)]
pub struct ManArgs {}

/// Runs `completions`: the script on standard output.
pub fn completions(a: CompletionsArgs) -> Result<Status, Error> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "blobcache", &mut script);
    emit(&script)
}

/// Runs `man`: the manual page (roff, section 1) on standard output.
pub fn man(_: ManArgs) -> Result<Status, Error> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(stdout_error)?;
    emit(&page)
}

fn emit(bytes: &[u8]) -> Result<Status, Error> {
    let mut out = Out::new();
    out.raw(bytes)?;
    out.flush()?;
    Ok(Status::Done)
}
