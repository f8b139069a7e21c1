//! The native half of the `blobcache` Python package (`blobcache._native`).
//!
//! Every call goes through blobcache's public Rust API; the Python side
//! (`python/blobcache/`) adds the parts that are plain Python (decorators,
//! JSON helpers, file objects, the requests-cache backend). The GIL is
//! released around every store call, so Python threads run them in
//! parallel.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod cache;
mod convert;
mod errors;
mod options;
mod pyio;
mod reader;

use pyo3::prelude::*;

/// The extension module `blobcache._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<cache::Cache>()?;
    m.add_class::<reader::NativeReader>()?;
    m.add("OPTION_NAMES", options::NAMES.to_vec())?;
    m.add("FORMAT_VERSION", blobcache::FORMAT_VERSION)?;
    m.add("ARCHIVE_FORMAT_VERSION", blobcache::ARCHIVE_FORMAT_VERSION)?;
    m.add(
        "DEFAULT_STALE_IF_ERROR_SECONDS",
        blobcache::DEFAULT_STALE_IF_ERROR.as_secs(),
    )?;
    Ok(())
}
