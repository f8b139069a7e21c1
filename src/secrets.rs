//! The secret guard: refuses to store payloads, headers or signatures that
//! contain a configured secret (an API key, a token).
//!
//! Configured with [`crate::StoreOptions::deny_secrets`]. With no secrets
//! configured every check is a single `is_empty` test, so the hot path
//! costs nothing.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memchr::memmem::Finder;

use crate::error::{Error, Result};
use crate::options::PutOptions;
use crate::record::is_dropped_header;

/// The secrets a store refuses to write. Its `Debug` output shows how many
/// secrets there are, never the secrets themselves.
#[derive(Clone, Default)]
pub(crate) struct SecretGuard {
    finders: Vec<Finder<'static>>,
    /// Length of the longest secret, in bytes.
    longest: usize,
}

impl fmt::Debug for SecretGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretGuard({} secrets)", self.finders.len())
    }
}

impl SecretGuard {
    /// Adds secrets; empty ones are ignored (they would match everything).
    pub(crate) fn extend<S: AsRef<[u8]>>(&mut self, secrets: impl IntoIterator<Item = S>) {
        for s in secrets {
            let s = s.as_ref();
            if s.is_empty() {
                continue;
            }
            self.longest = self.longest.max(s.len());
            self.finders.push(Finder::new(s).into_owned());
        }
    }

    /// True when no secret is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// True when `haystack` contains any configured secret.
    pub(crate) fn found_in(&self, haystack: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(haystack).is_some())
    }

    /// Checks everything of a put except a streamed payload: the signature,
    /// the payload when given, the content type and the headers that will
    /// be stored (names and values). The error names the place, never the
    /// secret, and withholds a signature that contains one.
    pub(crate) fn check_put(
        &self,
        backend: &str,
        signature: &[u8],
        key: &[u8],
        payload: Option<&[u8]>,
        opts: &PutOptions,
        dropped_headers: &[String],
    ) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if self.found_in(backend.as_bytes()) || self.found_in(signature) {
            return Err(refusal(None, "key"));
        }
        let refuse = |place: &str| Err(refusal(Some(key), place));
        if payload.is_some_and(|p| self.found_in(p)) {
            return refuse("payload");
        }
        if opts
            .content_type
            .as_deref()
            .is_some_and(|ct| self.found_in(ct.as_bytes()))
        {
            return refuse("content type");
        }
        for (name, value) in &opts.headers {
            if is_dropped_header(name, dropped_headers) {
                continue;
            }
            if self.found_in(name.as_bytes()) {
                return refuse("header names");
            }
            if self.found_in(value.as_bytes()) {
                return refuse(&format!("header {name}"));
            }
        }
        Ok(())
    }

    /// Wraps a reader so that it fails as soon as the bytes read so far
    /// contain a secret, even one split across two reads. `tripped` is set
    /// when that happens, to tell the failure apart from a genuine I/O error.
    pub(crate) fn scan_reader<R: Read>(&self, inner: R) -> ScanningReader<R> {
        ScanningReader {
            inner,
            guard: self.clone(),
            tail: Vec::new(),
            window: Vec::new(),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The refusal error for a put to `key` (`None`: the key itself holds the
/// secret, so it is not shown).
pub(crate) fn refusal(key: Option<&[u8]>, place: &str) -> Error {
    Error::SecretInPayload {
        key: key.map_or_else(|| "a key (withheld)".to_string(), crate::key::display),
        place: place.to_string(),
    }
}

/// A reader that checks what passes through it for secrets; see
/// [`SecretGuard::scan_reader`].
pub(crate) struct ScanningReader<R> {
    inner: R,
    guard: SecretGuard,
    /// The last `longest - 1` bytes seen, so a secret split across two
    /// reads is still found.
    tail: Vec<u8>,
    /// Scratch buffer: `tail` followed by the bytes of the current read.
    window: Vec<u8>,
    tripped: Arc<AtomicBool>,
}

impl<R> ScanningReader<R> {
    /// A flag that turns true once a secret has been seen.
    pub(crate) fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }

    /// Checks `fresh` and the seam between it and what came before,
    /// without copying more than `2 * (longest - 1)` bytes per read.
    fn check(&mut self, fresh: &[u8]) -> io::Result<()> {
        let keep = self.guard.longest.saturating_sub(1);
        self.window.clear();
        self.window.extend_from_slice(&self.tail);
        self.window
            .extend_from_slice(&fresh[..fresh.len().min(keep)]);
        if self.guard.found_in(&self.window) || self.guard.found_in(fresh) {
            self.tripped.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the payload contains a configured secret"));
        }
        let last = if fresh.len() >= keep {
            fresh
        } else {
            &self.window
        };
        self.tail.clear();
        self.tail
            .extend_from_slice(&last[last.len().saturating_sub(keep)..]);
        Ok(())
    }
}

impl<R: Read> Read for ScanningReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(secrets: &[&str]) -> SecretGuard {
        let mut g = SecretGuard::default();
        g.extend(secrets.iter().map(|s| s.as_bytes()));
        g
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let g = guard(&["", ""]);
        assert!(g.is_empty());
        assert!(!g.found_in(b"anything"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let g = guard(&["sk-live-123"]);
        let shown = format!("{g:?}");
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains('1'));
    }

    #[test]
    fn split_secret_is_found_for_every_read_size() {
        let data = b"....................sk-live-123.........";
        for step in 1..data.len() {
            let g = guard(&["zzz", "sk-live-123"]);
            let mut r = g.scan_reader(Trickle { data, step });
            let tripped = r.tripped();
            let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
            assert!(tripped.load(Ordering::SeqCst), "step {step}: {err}");
        }
    }

    #[test]
    fn clean_stream_passes_unchanged() {
        let data = b"nothing to see here, just a long-ish payload";
        let g = guard(&["secret"]);
        let mut r = g.scan_reader(Trickle { data, step: 3 });
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(!r.tripped().load(Ordering::SeqCst));
    }
}
