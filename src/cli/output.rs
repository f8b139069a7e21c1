//! Writing results: stdout with broken-pipe handling, JSON documents, the
//! JSON shape of an entry, and human forms of sizes, times and durations.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobcache::{EntryMeta, Error, system_time_ms};
use bytesize::ByteSize;
use serde::Serialize;

/// Wraps a failed write to standard output.
pub fn stdout_error(source: io::Error) -> Error {
    Error::Io {
        op: "write to",
        path: PathBuf::from("standard output"),
        source,
    }
}

/// True when `e` is a write to a pipe whose reader has gone (`| head`).
pub fn is_broken_pipe(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

/// Standard output, locked, with errors mapped to [`Error`].
pub struct Out {
    inner: io::StdoutLock<'static>,
}

impl Out {
    /// Locks standard output.
    pub fn new() -> Out {
        Out {
            inner: io::stdout().lock(),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<(), Error> {
        writeln!(self.inner, "{text}").map_err(stdout_error)
    }

    /// Writes `value` as one line of compact JSON.
    pub fn json<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        serde_json::to_writer(&mut self.inner, value)
            .map_err(|e| stdout_error(io::Error::other(e)))?;
        self.line("")
    }

    /// Writes raw bytes (for streamed JSON arrays).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.inner.write_all(bytes).map_err(stdout_error)
    }

    /// Flushes; call before returning so a late error is reported.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.inner.flush().map_err(stdout_error)
    }

    /// The underlying writer.
    pub fn writer(&mut self) -> &mut impl Write {
        &mut self.inner
    }
}

/// Where [`pump`] failed.
pub enum PumpError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the destination failed.
    Write(io::Error),
}

/// Copies `src` to `dst` through a 256 KiB buffer, telling read errors from
/// write errors; returns the bytes copied.
pub fn pump(src: &mut impl Read, dst: &mut impl Write) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        dst.write_all(&buf[..n]).map_err(PumpError::Write)?;
        total += n as u64;
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    system_time_ms(SystemTime::now())
}

/// `1.5 KiB`, `31 B`.
pub fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// Units of [`human`]: seconds each, singular name, plural name.
const UNITS: [(u64, &str, &str); 5] = [
    (365 * 86_400, " year", " years"),
    (86_400, " day", " days"),
    (3600, "h", "h"),
    (60, "m", "m"),
    (1, "s", "s"),
];

/// A duration in its two largest units, rounded to the nearest of the
/// smaller one: `3 days`, `2 days 5h`, `1 year`, `1h 30m`, `59m 58s`.
pub fn human(d: Duration) -> String {
    let secs = d
        .as_secs()
        .saturating_add(u64::from(d.subsec_millis() >= 500));
    let Some(i) = UNITS.iter().position(|&(u, ..)| secs >= u) else {
        return "0s".into();
    };
    let small = UNITS.get(i + 1).map_or(1, |&(u, ..)| u);
    let rounded = secs.saturating_add(small / 2) / small * small;
    // Rounding may carry into a larger unit (59m 59.6s is 1h).
    let i = UNITS.iter().position(|&(u, ..)| rounded >= u).unwrap_or(i);
    let mut parts = Vec::new();
    let mut rest = rounded;
    for &(unit, one, many) in &UNITS[i..(i + 2).min(UNITS.len())] {
        let n = rest / unit;
        rest %= unit;
        if n > 0 {
            parts.push(format!("{n}{}", if n == 1 { one } else { many }));
        }
    }
    parts.join(" ")
}

/// `in 3 days` or `expired 5m ago`, for an expiry time in ms.
pub fn expires_in(expires_at: u64, now: u64) -> String {
    if expires_at > now {
        format!("in {}", human(Duration::from_millis(expires_at - now)))
    } else {
        format!(
            "expired {} ago",
            human(Duration::from_millis(now - expires_at))
        )
    }
}

/// `expires in 3 days` or `expired 5m ago`, for an expiry time in ms.
pub fn expiry(expires_at: u64, now: u64) -> String {
    let when = expires_in(expires_at, now);
    if expires_at > now {
        format!("expires {when}")
    } else {
        when
    }
}

/// RFC 3339 time (UTC, seconds) of a time in ms since the epoch.
pub fn timestamp(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `3.21x`, or `-` when the denominator is zero.
pub fn ratio(num: u64, den: u64) -> String {
    if den == 0 {
        return "-".into();
    }
    format!("{:.2}x", num as f64 / den as f64)
}

/// A header as JSON.
#[derive(Serialize)]
pub struct HeaderJson<'a> {
    /// Header name.
    pub name: &'a str,
    /// Header value.
    pub value: &'a str,
}

/// The JSON shape of an entry (`get --meta --json`, `ls --json`).
#[derive(Serialize)]
pub struct EntryJson<'a> {
    backend: &'a str,
    signature: String,
    hash: String,
    raw_size: u64,
    stored_size: u64,
    compressed: bool,
    inline: bool,
    category: &'a str,
    content_type: Option<&'a str>,
    headers: Vec<HeaderJson<'a>>,
    created_at_ms: u64,
    fetched_at_ms: u64,
    expires_at_ms: u64,
    expired: bool,
    hits: u64,
    last_access_ms: u64,
    pinned: bool,
}

impl<'a> EntryJson<'a> {
    /// The JSON view of `m` at time `now` (ms).
    pub fn new(m: &'a EntryMeta, now: u64) -> EntryJson<'a> {
        EntryJson {
            backend: &m.backend,
            signature: m.signature_str().into_owned(),
            hash: m.hash.to_string(),
            raw_size: m.raw_size,
            stored_size: m.stored_size,
            compressed: m.compressed,
            inline: m.inline,
            category: m.category.as_str(),
            content_type: m.content_type.as_deref(),
            headers: m
                .headers
                .iter()
                .map(|(name, value)| HeaderJson { name, value })
                .collect(),
            created_at_ms: m.created_at,
            fetched_at_ms: m.fetched_at,
            expires_at_ms: m.expires_at,
            expired: m.is_expired_at(now),
            hits: m.hits,
            last_access_ms: m.last_access,
            pinned: m.pinned,
        }
    }
}

/// How a stored blob is kept, in words: `zstd, inline`.
pub fn storage(compressed: bool, inline: bool) -> String {
    let codec = if compressed { "zstd" } else { "raw" };
    let place = if inline { "inline" } else { "file" };
    format!("{codec}, {place}")
}

/// `1 entry`, `3 entries`.
pub fn entries(n: u64) -> String {
    count(n, "entry", "entries")
}

/// `n` followed by the singular or the plural noun.
pub fn count(n: u64, one: &str, many: &str) -> String {
    let noun = if n == 1 { one } else { many };
    format!("{n} {noun}")
}

/// Writes a file atomically: `fill` writes a fresh temporary file beside
/// `path` (it gets the file, and `path` for error messages: the temporary
/// name is ours, not the user's), which is then synced and renamed into
/// place. On any failure the temporary file is removed and `path` is left
/// as it was.
pub fn write_atomic<T>(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<T, Error>,
) -> Result<T, Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.blobcache-{}.tmp", std::process::id()));
    let result = fill_new_file(&tmp, path, fill).and_then(|value| {
        fs::rename(&tmp, path).map_err(|source| Error::Io {
            op: "rename the output into",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn fill_new_file<T>(
    tmp: &Path,
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<T, Error>,
) -> Result<T, Error> {
    let io_err = |op, source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| io_err("create a temporary file beside", e))?;
    let value = fill(&mut f, path)?;
    f.sync_all().map_err(|e| io_err("sync", e))?;
    Ok(value)
}

/// The forms [`parse_time`] accepts, for help texts and errors.
pub const TIME_FORMS: &str = "an RFC 3339 time with any offset (2026-11-23T15:00:00+01:00, \
     2026-11-23T14:00Z), a local time (2026-11-23T15:00, 2026-11-23 15:00:30), \
     a local date (2026-11-23, meaning its midnight), or a duration ago (2h, 1day 3h)";

/// Parses a point in time: RFC 3339 with any offset, seconds optional
/// (`2026-11-23T15:00+01:00`); a time or a date without an offset, read
/// in the local time zone (`TZ`, else the system's); or a duration ago
/// (`2h`, `1day 3h`).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(SystemTime::from(t));
    }
    if let Some(t) = parse_local(s) {
        return t;
    }
    let ago = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a time: give {TIME_FORMS}"))?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s:?} reaches before the start of the clock"))
}

/// A time or date without an offset, in the local time zone; `None` when
/// `s` is neither.
fn parse_local(s: &str) -> Option<Result<SystemTime, String>> {
    let civil = s.parse::<jiff::civil::DateTime>().ok().or_else(|| {
        s.parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    })?;
    let zone = jiff::tz::TimeZone::system();
    Some(
        civil
            .to_zoned(zone)
            .map(|z| SystemTime::from(z.timestamp()))
            .map_err(|e| format!("{s:?} is not a valid local time: {e}")),
    )
}

/// Standard output for binary data (an archive): refused when it is a
/// terminal, where the bytes would only garble the screen.
pub fn binary_stdout() -> Result<io::Stdout, Error> {
    let stdout = io::stdout();
    if stdout.is_terminal() {
        return Err(stdout_error(io::Error::other(
            "it is a terminal; redirect it (> cache.tar) or give a FILE",
        )));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_two_units_rounded_to_the_nearest() {
        let h = |secs: u64, ms: u64| human(Duration::from_secs(secs) + Duration::from_millis(ms));
        assert_eq!(h(0, 0), "0s");
        assert_eq!(h(0, 400), "0s");
        assert_eq!(h(1, 0), "1s");
        assert_eq!(h(59 * 60 + 58, 0), "59m 58s");
        assert_eq!(h(3599, 600), "1h");
        assert_eq!(h(90 * 60 - 1, 990), "1h 30m");
        assert_eq!(h(90 * 60, 0), "1h 30m");
        assert_eq!(h(3 * 86_400 - 1, 0), "3 days");
        assert_eq!(h(86_400, 0), "1 day");
        assert_eq!(h(2 * 86_400 + 5 * 3600 + 20, 0), "2 days 5h");
        // humantime's 1y is 365.25 days.
        assert_eq!(h(31_557_600 - 5, 0), "1 year");
        assert_eq!(h(2 * 365 * 86_400 + 3 * 86_400, 0), "2 years 3 days");
        assert_eq!(h(u64::MAX, 0).split(' ').count(), 4);
    }
}
