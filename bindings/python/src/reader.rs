//! A streamed payload (`Cache.open_reader`): the native half of the binary
//! file object the Python side builds on `io.RawIOBase`.

use std::io::Read;
use std::sync::Mutex;

use blobcache::EntryReader;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::new_error;

/// Reads one entry's payload, verifying its hash as it goes; a damaged
/// payload fails the read that reaches its end instead of ending quietly.
#[pyclass(module = "blobcache._native", frozen)]
pub struct NativeReader {
    inner: Mutex<Option<EntryReader>>,
    meta: Py<PyDict>,
    stale: bool,
    size: u64,
}

impl NativeReader {
    /// Wraps an opened entry reader and its metadata.
    pub fn new(reader: EntryReader, meta: Py<PyDict>) -> NativeReader {
        NativeReader {
            stale: reader.stale,
            size: reader.meta.raw_size,
            inner: Mutex::new(Some(reader)),
            meta,
        }
    }
}

/// Reads up to `limit` bytes (all with `None`), looping over short reads.
fn read_up_to(r: &mut EntryReader, limit: Option<usize>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match limit {
        None => {
            r.read_to_end(&mut out)?;
        }
        Some(n) => {
            r.by_ref().take(n as u64).read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

#[pymethods]
impl NativeReader {
    /// Reads up to `size` bytes (everything left when `size` is negative
    /// or omitted); `b""` at the end. Raises `blobcache.CorruptPayloadError`
    /// when the payload turns out to be damaged (the entry is dropped).
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let limit = usize::try_from(size).ok();
        let got = py.detach(|| {
            let mut guard = self.inner.lock().map_err(|_| None)?;
            let r = guard.as_mut().ok_or(None)?;
            read_up_to(r, limit).map_err(Some)
        });
        match got {
            Ok(data) => Ok(PyBytes::new(py, &data)),
            Err(None) => Err(PyValueError::new_err("read from a closed blobcache reader")),
            Err(Some(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(new_error(py, "CorruptPayloadError", e.to_string()))
            }
            Err(Some(e)) => Err(new_error(py, "IoError", e.to_string())),
        }
    }

    /// Releases the payload's file; further reads fail.
    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().map(|g| g.is_none()).unwrap_or(true)
    }

    /// The entry's metadata (see `Cache.meta`).
    #[getter]
    fn meta(&self, py: Python<'_>) -> Py<PyDict> {
        self.meta.clone_ref(py)
    }

    /// True when the entry is expired (opened with `allow_stale=True`).
    #[getter]
    fn stale(&self) -> bool {
        self.stale
    }

    /// The payload's size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }
}
