//! Progress bars on stderr for long commands, drawn only when stderr is a
//! terminal and neither `--json` nor `-q` was given (see
//! [`super::Ctx::progress`]); otherwise every call is a no-op.

use indicatif::{ProgressBar, ProgressStyle};

use super::Ctx;

/// A progress bar, or nothing; cleared from the terminal when dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar counting `len` items of `what` (e.g. "verifying"), if `ctx`
    /// allows drawing one.
    pub fn start(ctx: &Ctx, what: &'static str, len: u64) -> Progress {
        if !ctx.progress() {
            return Progress { bar: None };
        }
        let style = ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} ({eta} left)",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::new(len).with_style(style).with_message(what);
        Progress { bar: Some(bar) }
    }

    /// Moves the bar to `done` items.
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// A function moving the bar, for callbacks that must be `'static`.
    pub fn ticker(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |done| {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        }
    }
}

/// A function moving the bar of a job with several steps: it names the
/// step, the items done, and the items expected when known.
pub type Stepper = Box<dyn Fn(&'static str, u64, Option<u64>) + Send + Sync>;

impl Progress {
    /// A function that relabels the bar, resizes it when the total is
    /// known, and moves it, for callbacks that must be `'static`.
    pub fn stepper(&self) -> Stepper {
        let bar = self.bar.clone();
        Box::new(move |what, done, total| {
            if let Some(bar) = &bar {
                bar.set_message(what);
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(done);
            }
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
