//! Maps [`blobcache::Error`] onto the exception classes of
//! `blobcache.errors` (defined in Python so that one class can be both a
//! `blobcache.Error` and a `ValueError` or an `OSError`). Messages are the
//! Rust error's, unchanged.

use blobcache::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The `blobcache.errors` class raised for `e`.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::EmptyBackend | Error::NulInBackend { .. } | Error::KeyTooLong { .. } => {
            "InvalidKeyError"
        }
        Error::Locked { .. } => "LockedError",
        Error::OwnerTimeout { .. } => "OwnerTimeoutError",
        Error::Protocol { .. } => "ProtocolError",
        Error::Owner { .. } => "OwnerError",
        Error::NewerFormat { .. } => "NewerFormatError",
        Error::NotACache { .. } => "NotACacheError",
        Error::Symlink { .. } => "SymlinkError",
        Error::Io { .. } | Error::Source { .. } | Error::ArchiveWrite { .. } => "IoError",
        Error::Index { .. } => "IndexDatabaseError",
        Error::CorruptRecord { .. } => "CorruptRecordError",
        Error::SecretInPayload { .. } => "SecretInPayloadError",
        Error::TooLarge { .. } => "TooLargeError",
        Error::NotConfirmed { .. } => "NotConfirmedError",
        Error::Encode { .. } => "EncodeError",
        Error::Busy { .. } => "BusyError",
        Error::BadArchive { .. } => "BadArchiveError",
        Error::ArchiveMissingBlob { .. } => "ArchiveMissingBlobError",
        Error::NewerArchive { .. } => "NewerArchiveError",
        Error::SweepRunning { .. } => "SweepRunningError",
        _ => "Error",
    }
}

/// The OS error number behind an I/O error, if any.
fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. }
        | Error::Source { source, .. }
        | Error::ArchiveWrite { source } => source.raw_os_error(),
        _ => None,
    }
}

/// The key an error is about (`backend/signature`), if it names one.
fn key(e: &Error) -> Option<&str> {
    match e {
        Error::CorruptRecord { key, .. }
        | Error::SecretInPayload { key, .. }
        | Error::TooLarge { key, .. }
        | Error::Encode { key, .. }
        | Error::Source { key, .. }
        | Error::ArchiveMissingBlob { key, .. } => Some(key),
        _ => None,
    }
}

/// An instance of `blobcache.errors.<name>` carrying `message`.
pub fn new_error(py: Python<'_>, name: &str, message: String) -> PyErr {
    let made = py
        .import("blobcache.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(inst) => PyErr::from_value(inst),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// The Python exception for a blobcache error.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let err = new_error(py, class_name(&e), e.to_string());
    let value = err.value(py);
    // Extra attributes are a convenience: failing to set one changes nothing.
    if let Some(n) = errno(&e) {
        let _ = value.setattr("errno", n);
    }
    if let Some(k) = key(&e) {
        let _ = value.setattr("key", k);
    }
    err
}

/// Converts a `blobcache::Result` into a `PyResult`.
pub trait IntoPy<T> {
    /// Maps the error with [`to_py`].
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for blobcache::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
