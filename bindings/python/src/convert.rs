//! Conversions between Python values and blobcache's types: payloads and
//! signatures in, metadata and reports out as plain dicts.

use std::borrow::Cow;
use std::time::Duration;

use blobcache::{
    BackendStats, EntryMeta, ExportReport, GcReport, ImportReport, Problem, PutReport, Stats,
    VerifyReport,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString};

/// The bytes of a `bytes`, `bytearray`, `memoryview` or `str` (UTF-8)
/// argument; anything else is a `TypeError` naming the argument.
pub fn bytes_arg<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(match s.to_cow()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        });
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(Cow::Owned(copy.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes, bytearray, memoryview or str, not {}",
        type_name(obj)
    )))
}

/// A signature argument: `str` or `bytes` only.
pub fn signature_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyString>() {
        return bytes_arg(obj, "signature");
    }
    Err(PyTypeError::new_err(format!(
        "signature must be str or bytes, not {}",
        type_name(obj)
    )))
}

/// The name of an object's type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// A duration given in seconds; negative, NaN and infinite values are a
/// `ValueError` naming the argument.
pub fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, not {value}"
        ))
    })
}

/// Optional seconds.
pub fn opt_seconds(value: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(v, what)).transpose()
}

/// Epoch milliseconds as epoch seconds (a float, like `time.time()`).
pub fn epoch_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Epoch seconds as epoch milliseconds.
pub fn epoch_ms(s: f64, what: &str) -> PyResult<u64> {
    Ok(seconds(s, what)?.as_millis().min(u64::MAX as u128) as u64)
}

/// Response headers from a mapping (anything with `items()`) or an
/// iterable of `(name, value)` pairs of strings.
pub fn headers_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let pairs = match obj.hasattr("items")? {
        true => obj.call_method0("items")?,
        false => obj.clone(),
    };
    let mut out = Vec::new();
    for pair in pairs.try_iter()? {
        let pair = pair?;
        let (name, value): (String, String) = pair.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "response_headers must map str names to str values; got {}",
                pair.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// Headers as a dict (a repeated name keeps its last value).
pub fn headers_dict<'py>(
    py: Python<'py>,
    headers: &[(String, String)],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (n, v) in headers {
        d.set_item(n, v)?;
    }
    Ok(d)
}

/// A signature as `str` when it is UTF-8, else `bytes`.
pub fn signature_obj<'py>(py: Python<'py>, sig: &[u8]) -> Bound<'py, PyAny> {
    match std::str::from_utf8(sig) {
        Ok(s) => PyString::new(py, s).into_any(),
        Err(_) => PyBytes::new(py, sig).into_any(),
    }
}

/// An entry's metadata as a dict (times in epoch seconds).
pub fn meta_dict<'py>(py: Python<'py>, m: &EntryMeta, now_ms: u64) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("backend", &m.backend)?;
    d.set_item("signature", signature_obj(py, &m.signature))?;
    d.set_item("hash", m.hash.to_hex())?;
    d.set_item("raw_size", m.raw_size)?;
    d.set_item("stored_size", m.stored_size)?;
    d.set_item("compressed", m.compressed)?;
    d.set_item("inline", m.inline)?;
    d.set_item("created_at", epoch_s(m.created_at))?;
    d.set_item("fetched_at", epoch_s(m.fetched_at))?;
    d.set_item("expires_at", epoch_s(m.expires_at))?;
    d.set_item("expired", m.is_expired_at(now_ms))?;
    d.set_item("category", m.category.as_str())?;
    d.set_item("content_type", m.content_type.as_deref())?;
    d.set_item("headers", headers_dict(py, &m.headers)?)?;
    d.set_item("hits", m.hits)?;
    d.set_item("last_access", epoch_s(m.last_access))?;
    d.set_item("pinned", m.pinned)?;
    Ok(d)
}

/// What a put stored.
pub fn put_report_dict<'py>(py: Python<'py>, r: &PutReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("hash", r.hash.to_hex())?;
    d.set_item("raw_size", r.raw_size)?;
    d.set_item("stored_size", r.stored_size)?;
    d.set_item("compressed", r.compressed)?;
    d.set_item("inline", r.inline)?;
    d.set_item("deduplicated", r.deduplicated)?;
    d.set_item("expires_at", epoch_s(r.expires_at))?;
    Ok(d)
}

fn backend_dict<'py>(py: Python<'py>, b: &BackendStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", b.entries)?;
    d.set_item("raw_bytes", b.raw_bytes)?;
    Ok(d)
}

/// Counts and sizes, with the hit ratio (`None` before the first get).
pub fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", s.entries)?;
    d.set_item("live", s.live)?;
    d.set_item("expired", s.expired)?;
    d.set_item("blobs", s.blobs)?;
    d.set_item("raw_bytes", s.raw_bytes)?;
    d.set_item("blob_bytes", s.blob_bytes)?;
    d.set_item("index_bytes", s.index_bytes)?;
    d.set_item("disk_bytes", s.disk_bytes())?;
    d.set_item("hits", s.hits)?;
    d.set_item("misses", s.misses)?;
    d.set_item("stale_hits", s.stale_hits)?;
    d.set_item("hit_ratio", s.hit_ratio())?;
    d.set_item("puts", s.puts)?;
    d.set_item("corrupt", s.corrupt)?;
    d.set_item("index_resets", s.index_resets)?;
    let backends = PyDict::new(py);
    for b in &s.backends {
        backends.set_item(&b.name, backend_dict(py, b)?)?;
    }
    d.set_item("backends", backends)?;
    Ok(d)
}

fn problems_list<'py>(py: Python<'py>, problems: &[Problem]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for p in problems {
        let d = PyDict::new(py);
        d.set_item("kind", p.kind.as_str())?;
        d.set_item("subject", &p.subject)?;
        d.set_item("detail", &p.detail)?;
        list.append(d)?;
    }
    Ok(list)
}

/// A verify report.
pub fn verify_dict<'py>(py: Python<'py>, r: &VerifyReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("clean", r.is_clean())?;
    d.set_item("entries", r.entries)?;
    d.set_item("blobs", r.blobs)?;
    d.set_item("orphan_files", r.orphan_files)?;
    d.set_item("problems", problems_list(py, &r.problems)?)?;
    d.set_item("repaired", r.repaired)?;
    Ok(d)
}

/// A GC report.
pub fn gc_dict<'py>(py: Python<'py>, r: &GcReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("dry_run", r.dry_run)?;
    d.set_item("entries_expired", r.entries_expired)?;
    d.set_item("entries_evicted", r.entries_evicted)?;
    d.set_item("blobs_deleted", r.blobs_deleted)?;
    d.set_item("bytes_freed", r.bytes_freed)?;
    d.set_item("blobs_recompressed", r.blobs_recompressed)?;
    d.set_item("bytes_recompressed", r.bytes_recompressed)?;
    d.set_item("bytes_saved", r.bytes_saved)?;
    d.set_item("staging_removed", r.staging_removed)?;
    d.set_item("disk_bytes_before", r.disk_bytes_before)?;
    d.set_item("disk_bytes_after", r.disk_bytes_after)?;
    d.set_item("max_size", r.max_size)?;
    d.set_item("cancelled", r.cancelled)?;
    d.set_item("duration_seconds", r.duration.as_secs_f64())?;
    Ok(d)
}

/// An export report.
pub fn export_dict<'py>(py: Python<'py>, r: &ExportReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", r.entries)?;
    d.set_item("skipped", r.skipped)?;
    d.set_item("blobs", r.blobs)?;
    d.set_item("blob_bytes", r.blob_bytes)?;
    d.set_item("archive_bytes", r.archive_bytes)?;
    Ok(d)
}

/// An import report.
pub fn import_dict<'py>(py: Python<'py>, r: &ImportReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", r.entries)?;
    d.set_item("imported", r.imported)?;
    d.set_item("skipped", r.skipped)?;
    d.set_item("rejected", r.rejected)?;
    d.set_item("blobs_imported", r.blobs_imported)?;
    d.set_item("bytes_imported", r.bytes_imported)?;
    d.set_item("blobs_skipped", r.blobs_skipped)?;
    d.set_item("bytes_skipped", r.bytes_skipped)?;
    d.set_item("blobs_rejected", r.blobs_rejected)?;
    d.set_item("bytes_rejected", r.bytes_rejected)?;
    Ok(d)
}
