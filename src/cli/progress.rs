//! Progress bars on stderr for long commands, drawn only when stderr is a
//! terminal and neither `--json` nor `-q` was given (see
//! [`super::Ctx::progress`]); otherwise every call is a no-op.

use indicatif::{ProgressBar, ProgressStyle};

use super::Ctx;

/// A progress bar, or nothing; cleared from the terminal when dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
}

/// What a bar counts.
#[derive(Clone, Copy)]
enum Unit {
    Items,
    Bytes,
}

/// The bar for a known total, in `unit`s, with the time left.
fn bar_style(unit: Unit) -> ProgressStyle {
    let counts = match unit {
        Unit::Items => "{human_pos}/{human_len}",
        Unit::Bytes => "{binary_bytes}/{binary_total_bytes}",
    };
    let template = format!("{{msg}} [{{bar:30}}] {counts} ({{eta}} left)");
    ProgressStyle::with_template(&template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A spinner for a step whose total is not known yet: no bar, no ETA.
fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {human_pos} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Draws `done` of `total` on `bar`: a bar with an ETA when the total is
/// known and not zero, a spinner otherwise.
fn draw(bar: &ProgressBar, unit: Unit, done: u64, total: Option<u64>) {
    match total.filter(|&t| t > 0) {
        Some(total) => {
            if bar.length() != Some(total) {
                bar.set_style(bar_style(unit));
                bar.set_length(total);
            }
        }
        None => {
            bar.set_style(spinner_style());
            bar.unset_length();
        }
    }
    bar.set_position(done);
}

impl Progress {
    /// A bar counting `len` items of `what` (e.g. "verifying"), if `ctx`
    /// allows drawing one; a spinner while `len` is 0 (not known yet).
    pub fn start(ctx: &Ctx, what: &'static str, len: u64) -> Progress {
        if !ctx.progress() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::no_length().with_message(what);
        draw(&bar, Unit::Items, 0, Some(len));
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
                draw(bar, Unit::Items, done, total);
            }
        })
    }

    /// A function moving a bar counted in bytes (`done` of `total`), its
    /// message naming the step and the items (`importing blob 3/9`).
    pub fn byte_stepper(&self) -> ByteStepper {
        let bar = self.bar.clone();
        Box::new(move |what, items, bytes| {
            if let Some(bar) = &bar {
                bar.set_message(format!("{what} {}/{}", items.0, items.1));
                draw(bar, Unit::Bytes, bytes.0, Some(bytes.1));
            }
        })
    }
}

/// A function moving a byte-counted bar: the step's name, (items done,
/// items expected), (bytes done, bytes expected).
pub type ByteStepper = Box<dyn Fn(&'static str, (u64, u64), (u64, u64)) + Send + Sync>;

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
