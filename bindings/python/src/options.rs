//! `Cache(path, **options)`: the keyword options, mapped onto
//! [`blobcache::StoreOptions`]. Unknown names and wrong types are a
//! `TypeError`, bad values a `ValueError`; `None` means the default.

use std::time::Duration;

use blobcache::{Category, DEFAULT_STALE_IF_ERROR, Durability, Sharing, StoreOptions, TtlPolicy};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{bytes_arg, seconds};

/// The option names `Cache()` accepts, in the order the docs list them.
pub const NAMES: &[&str] = &[
    "durability",
    "compression_level",
    "max_size",
    "memory_tier",
    "memory_tier_max_staleness",
    "deny_secrets",
    "drop_headers",
    "stale_if_error",
    "category_ttls",
    "owner_timeout",
    "exclusive",
    "track_access",
    "inline_threshold",
    "cache_capacity",
    "gc_interval",
    "flush_interval",
    "format",
];

/// What a cache was opened with that the bindings need again later.
pub struct Opened {
    /// The options to open the store with.
    pub store: StoreOptions,
    /// The category TTL table (defaults plus overrides).
    pub ttl: TtlPolicy,
    /// The stale-if-error grace.
    pub stale_if_error: Duration,
}

/// Parses the keyword options.
pub fn parse(options: Option<&Bound<'_, PyDict>>) -> PyResult<Opened> {
    let mut o = Opened {
        store: StoreOptions::default(),
        ttl: TtlPolicy::default(),
        stale_if_error: DEFAULT_STALE_IF_ERROR,
    };
    let Some(options) = options else {
        return Ok(o);
    };
    for (name, value) in options.iter() {
        let name: String = name.extract()?;
        if value.is_none() {
            continue;
        }
        apply(&mut o, &name, &value).map_err(|e| with_option_name(value.py(), &name, e))?;
    }
    o.store = o.store.ttl_policy(o.ttl.clone());
    Ok(o)
}

/// Prefixes an option's conversion error with its name.
fn with_option_name(py: Python<'_>, name: &str, e: PyErr) -> PyErr {
    let msg = format!("option {name}: {}", e.value(py));
    match e.is_instance_of::<PyValueError>(py) {
        true => PyValueError::new_err(msg),
        false => PyTypeError::new_err(msg),
    }
}

fn apply(o: &mut Opened, name: &str, v: &Bound<'_, PyAny>) -> PyResult<()> {
    let s = std::mem::take(&mut o.store);
    o.store = match name {
        "durability" => s.durability(durability(&v.extract::<String>()?)?),
        "compression_level" => s.compression_level(v.extract()?),
        "max_size" => s.max_size(v.extract()?),
        "memory_tier" => s.memory_tier(v.extract()?),
        "memory_tier_max_staleness" => s.memory_tier_max_staleness(secs(v, name)?),
        "deny_secrets" => s.deny_secrets(byte_strings(v)?),
        "drop_headers" => strings(v)?.into_iter().fold(s, |s, h| s.drop_header(h)),
        "stale_if_error" => {
            o.stale_if_error = secs(v, name)?;
            s.stale_if_error(o.stale_if_error)
        }
        "category_ttls" => {
            o.ttl = category_ttls(std::mem::take(&mut o.ttl), v)?;
            s
        }
        "owner_timeout" => s.owner_timeout(secs(v, name)?),
        "exclusive" => s.sharing(match v.extract::<bool>()? {
            true => Sharing::Exclusive,
            false => Sharing::Shared,
        }),
        "track_access" => s.track_access(v.extract()?),
        "inline_threshold" => s.inline_threshold(v.extract()?),
        "cache_capacity" => s.cache_capacity(v.extract()?),
        "gc_interval" => s.gc_interval(secs(v, name)?),
        "flush_interval" => s.flush_interval(secs(v, name)?),
        "format" => s.format(v.extract()?),
        other => {
            return Err(PyTypeError::new_err(format!(
                "unknown option {other:?}; the options are {}",
                NAMES.join(", ")
            )));
        }
    };
    Ok(())
}

fn secs(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    seconds(v.extract()?, what)
}

/// `"buffered"` or `"synced"`.
pub fn durability(name: &str) -> PyResult<Durability> {
    match name {
        "buffered" => Ok(Durability::Buffered),
        "synced" => Ok(Durability::Synced),
        other => Err(PyValueError::new_err(format!(
            "unknown durability {other:?}; use \"buffered\" or \"synced\""
        ))),
    }
}

fn iterable<'py>(v: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if v.is_instance_of::<pyo3::types::PyString>() || v.is_instance_of::<pyo3::types::PyBytes>() {
        return Err(PyTypeError::new_err(
            "expected a list of strings, not a single string",
        ));
    }
    v.try_iter()?.collect()
}

fn strings(v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    iterable(v)?.iter().map(|x| x.extract()).collect()
}

fn byte_strings(v: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u8>>> {
    iterable(v)?
        .iter()
        .map(|x| bytes_arg(x, "a secret").map(|b| b.into_owned()))
        .collect()
}

fn category_ttls(mut policy: TtlPolicy, v: &Bound<'_, PyAny>) -> PyResult<TtlPolicy> {
    let table = v.cast::<PyDict>()?;
    for (k, ttl) in table.iter() {
        let name: String = k.extract()?;
        let ttl = seconds(ttl.extract()?, &format!("the TTL of category {name:?}"))?;
        policy = policy.with(Category::parse(&name), ttl);
    }
    Ok(policy)
}
