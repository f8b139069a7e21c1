//! `blobcache._native.Cache`: one open [`blobcache::Store`], shared by the
//! Python threads that use it. Every store call runs with the GIL
//! released.

use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use blobcache::{
    Category, ExportOptions, FetchError, FetchStatus, Fetched, GcOptions, ImportOptions,
    MergePolicy, PutOptions, Selector, Store, TtlPolicy, VerifyOptions, system_time_ms,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::convert::{
    bytes_arg, epoch_ms, epoch_s, export_dict, gc_dict, headers_arg, headers_dict, import_dict,
    meta_dict, opt_seconds, put_report_dict, seconds, signature_arg, stats_dict, verify_dict,
};
use crate::errors::{IntoPy, new_error, to_py};
use crate::options;
use crate::pyio::{read_from, write_to};
use crate::reader::NativeReader;

/// A blobcache cache directory, open in this process.
///
/// Several processes (and the ``blobcache`` command line) may open the same
/// directory at once; a handle is safe to share between threads.
#[pyclass(module = "blobcache._native", name = "Cache", subclass, frozen)]
pub struct Cache {
    store: RwLock<Option<Store>>,
    path: PathBuf,
    pid: u32,
    ttl: TtlPolicy,
    stale_if_error: Duration,
}

/// `(payload, meta, stale)` of `Cache._get_stale`.
type StaleHit<'py> = (Bound<'py, PyBytes>, Bound<'py, PyDict>, bool);

/// The per-write options shared by `set_with_meta`, `put_file` and
/// `get_or_fetch`.
struct PutArgs<'a, 'py> {
    ttl_seconds: Option<f64>,
    category: Option<&'a str>,
    headers: Option<&'a Bound<'py, PyAny>>,
    content_type: Option<String>,
    fetched_at: Option<f64>,
    pinned: bool,
}

impl<'a, 'py> PutArgs<'a, 'py> {
    fn simple(ttl_seconds: Option<f64>, category: Option<&'a str>) -> PutArgs<'a, 'py> {
        PutArgs {
            ttl_seconds,
            category,
            headers: None,
            content_type: None,
            fetched_at: None,
            pinned: false,
        }
    }

    fn build(&self) -> PyResult<PutOptions> {
        let mut o = PutOptions::new().pinned(self.pinned);
        if let Some(ttl) = opt_seconds(self.ttl_seconds, "ttl_seconds")? {
            o = o.ttl(ttl);
        }
        if let Some(c) = self.category {
            o = o.category(Category::parse(c));
        }
        if let Some(h) = self.headers.filter(|h| !h.is_none()) {
            o = o.headers(headers_arg(h)?);
        }
        if let Some(ct) = &self.content_type {
            o = o.content_type(ct.clone());
        }
        if let Some(at) = self.fetched_at {
            o = o.fetched_at(epoch_ms(at, "fetched_at")?);
        }
        Ok(o)
    }
}

/// The default cache directory: `$BLOBCACHE_DIR`, else the platform cache
/// directory's `blobcache` (as the command line picks it).
fn default_dir(py: Python<'_>) -> PyResult<PathBuf> {
    if let Some(d) = std::env::var_os("BLOBCACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::cache_dir()
        .map(|d| d.join("blobcache"))
        .ok_or_else(|| {
            new_error(
                py,
                "NotACacheError",
                "this platform has no cache directory; pass a path or set BLOBCACHE_DIR".into(),
            )
        })
}

/// The process that opened this interpreter's first cache (0: none yet).
/// Memory survives `fork`, so a child sees its parent's id here.
static OPENED_IN: AtomicU32 = AtomicU32::new(0);

/// Refuses to open a cache in a process forked after a cache was opened:
/// the index database's background threads (and its global thread pool)
/// do not exist in the child, so opening the index there would hang.
fn check_not_forked(py: Python<'_>, path: &std::path::Path) -> PyResult<()> {
    let me = std::process::id();
    match OPENED_IN.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => Ok(()),
        Err(pid) if pid == me => Ok(()),
        Err(pid) => Err(new_error(
            py,
            "ForkedError",
            format!(
                "cannot open the cache at {}: this process was forked from process {pid} \
                 after that process had opened a blobcache cache, and the index's \
                 background threads do not survive fork; start workers with the \
                 'spawn' or 'forkserver' multiprocessing start method, or fork before \
                 opening any cache",
                path.display()
            ),
        )),
    }
}

/// `None` selects everything; a prefix needs its backend.
fn selector(backend: Option<String>, prefix: Option<&Bound<'_, PyAny>>) -> PyResult<Selector> {
    match (backend, prefix) {
        (None, None) => Ok(Selector::All),
        (Some(b), None) => Ok(Selector::backend(b)),
        (Some(b), Some(p)) => Ok(Selector::prefix(b, signature_arg(p)?)),
        (None, Some(_)) => Err(PyValueError::new_err(
            "a signature prefix needs its backend: pass backend= as well",
        )),
    }
}

/// Splits what a `get_or_fetch` callback returned into a [`Fetched`].
fn fetched(ret: &Bound<'_, PyAny>, honor_cache_control: bool) -> PyResult<Fetched> {
    let (body, headers) = match ret.cast::<PyTuple>() {
        Ok(t) if t.len() == 2 => (t.get_item(0)?, Some(t.get_item(1)?)),
        Ok(_) => {
            return Err(PyTypeError::new_err(
                "fetch must return a payload or a (payload, headers) pair",
            ));
        }
        Err(_) => (ret.clone(), None),
    };
    let mut f = Fetched::new(bytes_arg(&body, "the payload fetch returned")?.into_owned());
    if let Some(h) = headers.filter(|h| !h.is_none()) {
        f = f.headers(headers_arg(&h)?);
    }
    Ok(match honor_cache_control {
        true => f.honor_cache_control(),
        false => f,
    })
}

fn status_name(s: FetchStatus) -> &'static str {
    match s {
        FetchStatus::Hit => "hit",
        FetchStatus::Fetched => "fetched",
        FetchStatus::Stale => "stale",
    }
}

impl Cache {
    /// The open store, or `ClosedError`.
    fn store(&self, py: Python<'_>) -> PyResult<Store> {
        let closed = || {
            let msg = format!("the cache at {} is closed", self.path.display());
            new_error(py, "ClosedError", msg)
        };
        if std::process::id() != self.pid {
            let msg = format!(
                "this Cache for {} was opened in process {} before a fork; \
                 a forked process cannot use blobcache: start workers with the \
                 'spawn' or 'forkserver' multiprocessing start method",
                self.path.display(),
                self.pid
            );
            return Err(new_error(py, "ForkedError", msg));
        }
        let guard = self.store.read().map_err(|_| closed())?;
        guard.clone().ok_or_else(closed)
    }

    /// Runs `f` with the GIL released on the open store and the
    /// signature's bytes.
    fn on_key<T: Send>(
        &self,
        py: Python<'_>,
        signature: &Bound<'_, PyAny>,
        f: impl FnOnce(&Store, &[u8]) -> blobcache::Result<T> + Send,
    ) -> PyResult<T> {
        let sig = signature_arg(signature)?;
        let store = self.store(py)?;
        py.detach(|| f(&store, &sig)).py_err(py)
    }

    fn now_ms() -> u64 {
        system_time_ms(std::time::SystemTime::now())
    }
}

#[pymethods]
impl Cache {
    /// Opens (creating if needed) the cache directory `path`; by default
    /// ``$BLOBCACHE_DIR`` or the platform cache directory's ``blobcache``
    /// (``~/.cache/blobcache`` on Linux), as the command line does.
    #[new]
    #[pyo3(signature = (path=None, **options))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let path = match path {
            Some(p) => p,
            None => default_dir(py)?,
        };
        check_not_forked(py, &path)?;
        let opened = options::parse(options)?;
        let (p, opts) = (path.clone(), opened.store);
        let store = py.detach(move || Store::open(&p, opts)).py_err(py)?;
        Ok(Cache {
            store: RwLock::new(Some(store)),
            path,
            pid: std::process::id(),
            ttl: opened.ttl,
            stale_if_error: opened.stale_if_error,
        })
    }

    /// The cache directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The cache's on-disk format: 1, or 2 for the storage core v2.
    #[getter]
    fn format(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.store(py)?.format())
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.store.read().map(|g| g.is_none()).unwrap_or(true)
    }

    /// The stale-if-error grace in seconds (see `get_or_fetch`).
    #[getter]
    fn stale_if_error_seconds(&self) -> f64 {
        self.stale_if_error.as_secs_f64()
    }

    /// Makes everything written durable and lets go of the cache directory
    /// (another process may take over as its owner). Idempotent; any call
    /// after it raises ``ClosedError``.
    fn close(&self, py: Python<'_>) {
        let taken = self.store.write().ok().and_then(|mut g| g.take());
        match std::process::id() == self.pid {
            true => py.detach(move || drop(taken)),
            // A forked child's copy belongs to the parent: never flush it from here.
            false => std::mem::forget(taken),
        }
    }

    /// True when this process owns the cache's index (informational).
    fn is_owner(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.store(py)?.is_owner())
    }

    /// Stores ``payload`` under ``(backend, signature)``, replacing what was
    /// there. The TTL is ``ttl_seconds``, else the category's default.
    #[pyo3(signature = (backend, signature, payload, *, ttl_seconds=None, category=None))]
    fn set(
        &self,
        py: Python<'_>,
        backend: String,
        signature: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        ttl_seconds: Option<f64>,
        category: Option<&str>,
    ) -> PyResult<()> {
        let (sig, data) = (signature_arg(signature)?, bytes_arg(payload, "payload")?);
        let opts = PutArgs::simple(ttl_seconds, category).build()?;
        let store = self.store(py)?;
        py.detach(|| store.put(&backend, &sig, &data, &opts))
            .py_err(py)?;
        Ok(())
    }

    /// Like ``set``, keeping the response headers (credentials dropped),
    /// content type and fetch time too; returns what was stored.
    #[pyo3(signature = (backend, signature, payload, *, response_headers=None, ttl_seconds=None,
        category=None, content_type=None, fetched_at=None, pinned=false))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn set_with_meta<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
        payload: &Bound<'py, PyAny>,
        response_headers: Option<&Bound<'py, PyAny>>,
        ttl_seconds: Option<f64>,
        category: Option<&str>,
        content_type: Option<String>,
        fetched_at: Option<f64>,
        pinned: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (sig, data) = (signature_arg(signature)?, bytes_arg(payload, "payload")?);
        let args = PutArgs {
            ttl_seconds,
            category,
            headers: response_headers,
            content_type,
            fetched_at,
            pinned,
        };
        let opts = args.build()?;
        let store = self.store(py)?;
        let report = py
            .detach(|| store.put(&backend, &sig, &data, &opts))
            .py_err(py)?;
        put_report_dict(py, &report)
    }

    /// The live payload, or ``None`` when absent or expired.
    fn get<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let hit = self.on_key(py, signature, |s, sig| s.get(&backend, sig))?;
        Ok(hit.map(|h| PyBytes::new(py, &h.data)))
    }

    /// ``(payload, headers, fetched_at)`` of the live entry, or ``None``;
    /// ``fetched_at`` is in epoch seconds.
    fn get_with_meta<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(hit) = self.on_key(py, signature, |s, sig| s.get(&backend, sig))? else {
            return Ok(None);
        };
        let headers = headers_dict(py, &hit.meta.headers)?;
        let t = (
            PyBytes::new(py, &hit.data),
            headers,
            epoch_s(hit.meta.fetched_at),
        );
        Ok(Some(PyTuple::new(
            py,
            [
                t.0.into_any(),
                t.1.into_any(),
                t.2.into_pyobject(py)?.into_any(),
            ],
        )?))
    }

    /// ``(payload, meta, stale)`` of the entry, expired or not, as long as
    /// GC has not removed it; ``None`` when absent.
    fn _get_stale<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
    ) -> PyResult<Option<StaleHit<'py>>> {
        let Some(hit) = self.on_key(py, signature, |s, sig| s.get_stale(&backend, sig))? else {
            return Ok(None);
        };
        let meta = meta_dict(py, &hit.meta, Self::now_ms())?;
        Ok(Some((PyBytes::new(py, &hit.data), meta, hit.stale)))
    }

    /// The entry's metadata as a dict (live or expired), or ``None``.
    fn meta<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let m = self.on_key(py, signature, |s, sig| s.meta(&backend, sig))?;
        m.map(|m| meta_dict(py, &m, Self::now_ms())).transpose()
    }

    /// True when a live entry exists (the payload is not read).
    fn contains(
        &self,
        py: Python<'_>,
        backend: String,
        signature: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.on_key(py, signature, |s, sig| s.contains(&backend, sig))
    }

    /// ``(backend, signature) in cache``.
    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let bad = || PyTypeError::new_err("expected a (backend, signature) pair");
        let t = key.cast::<PyTuple>().map_err(|_| bad())?;
        if t.len() != 2 {
            return Err(bad());
        }
        let backend: String = t.get_item(0)?.extract()?;
        self.contains(py, backend, &t.get_item(1)?)
    }

    /// Removes the entry; True if it existed.
    fn delete(
        &self,
        py: Python<'_>,
        backend: String,
        signature: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.on_key(py, signature, |s, sig| s.delete(&backend, sig))
    }

    /// Makes the entry expire ``ttl_seconds`` from now; True if it existed.
    fn touch(
        &self,
        py: Python<'_>,
        backend: String,
        signature: &Bound<'_, PyAny>,
        ttl_seconds: f64,
    ) -> PyResult<bool> {
        let ttl = seconds(ttl_seconds, "ttl_seconds")?;
        self.on_key(py, signature, |s, sig| s.touch(&backend, sig, ttl))
    }

    /// Removes every entry, a backend's, or those of a backend whose
    /// signature starts with ``prefix``; returns how many.
    #[pyo3(signature = (backend=None, prefix=None))]
    fn clear(
        &self,
        py: Python<'_>,
        backend: Option<String>,
        prefix: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let sel = selector(backend, prefix)?;
        let store = self.store(py)?;
        py.detach(|| store.clear(&sel)).py_err(py)
    }

    /// The metadata of the entries selected as in ``clear`` (expired ones
    /// included, flagged ``expired``), in key order; at most ``limit``.
    #[pyo3(signature = (backend=None, prefix=None, *, limit=None))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        backend: Option<String>,
        prefix: Option<&Bound<'py, PyAny>>,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let sel = selector(backend, prefix)?;
        let store = self.store(py)?;
        let metas = py
            .detach(|| -> blobcache::Result<Vec<_>> {
                store
                    .list(&sel)?
                    .take(limit.unwrap_or(usize::MAX))
                    .collect()
            })
            .py_err(py)?;
        let now = Self::now_ms();
        let out = PyList::empty(py);
        for m in &metas {
            out.append(meta_dict(py, m, now)?)?;
        }
        Ok(out)
    }

    /// The signatures of a backend's entries (live and expired), in order.
    fn _signatures<'py>(&self, py: Python<'py>, backend: String) -> PyResult<Bound<'py, PyList>> {
        let sel = Selector::backend(backend);
        let store = self.store(py)?;
        let metas = py
            .detach(|| -> blobcache::Result<Vec<_>> { store.list(&sel)?.collect() })
            .py_err(py)?;
        let out = PyList::empty(py);
        for m in &metas {
            out.append(crate::convert::signature_obj(py, &m.signature))?;
        }
        Ok(out)
    }

    /// How many entries (live and expired) a backend holds.
    fn _count(&self, py: Python<'_>, backend: String) -> PyResult<usize> {
        let sel = Selector::backend(backend);
        let store = self.store(py)?;
        py.detach(|| -> blobcache::Result<usize> {
            let mut n = 0;
            for m in store.list(&sel)? {
                m?;
                n += 1;
            }
            Ok(n)
        })
        .py_err(py)
    }

    /// Removes every expired entry now; returns how many.
    fn purge_expired(&self, py: Python<'_>) -> PyResult<u64> {
        let store = self.store(py)?;
        py.detach(|| store.purge_expired()).py_err(py)
    }

    /// The TTL in seconds a ``set`` with this category and no
    /// ``ttl_seconds`` gets (metadata 72 h, list 24 h, schedule and
    /// trending 1 h, offline_dump 30 d, unknown names as metadata, unless
    /// overridden by the ``category_ttls`` option).
    fn default_ttl_seconds(&self, category: &str) -> f64 {
        self.ttl.ttl_for(&Category::parse(category)).as_secs_f64()
    }

    /// Counts and sizes as a dict: entries, live, expired, blobs, raw,
    /// blob, index and disk bytes, hits, misses, stale hits, hit ratio,
    /// puts, corrupt, and per-backend entries and bytes.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store(py)?;
        let s = py.detach(|| store.stats()).py_err(py)?;
        stats_dict(py, &s)
    }

    /// A quick check (the index against the payloads, without reading
    /// every payload) with the counters worth watching: ``healthy``,
    /// ``entries``, ``problems``, ``corrupt``, ``index_resets``, ``hit_ratio``,
    /// ``disk_bytes``, ``owner_pid``.
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store(py)?;
        let (report, stats) = py
            .detach(|| {
                Ok::<_, blobcache::Error>((store.verify(VerifyOptions::new())?, store.stats()?))
            })
            .py_err(py)?;
        let d = PyDict::new(py);
        d.set_item("dir", self.path.clone())?;
        d.set_item("healthy", report.is_clean() && stats.corrupt == 0)?;
        d.set_item("entries", report.entries)?;
        d.set_item("problems", verify_dict(py, &report)?.get_item("problems")?)?;
        d.set_item("corrupt", stats.corrupt)?;
        d.set_item("index_resets", stats.index_resets)?;
        d.set_item("hit_ratio", stats.hit_ratio())?;
        d.set_item("disk_bytes", stats.disk_bytes())?;
        d.set_item("owner_pid", store.owner_pid())?;
        Ok(d)
    }

    /// Checks the index against the payloads (``full=True`` also hashes
    /// every payload); ``repair=True`` drops what is broken.
    #[pyo3(signature = (*, full=false, repair=false))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        full: bool,
        repair: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store(py)?;
        let opts = VerifyOptions::new().full(full).repair(repair);
        let r = py.detach(|| store.verify(opts)).py_err(py)?;
        verify_dict(py, &r)
    }

    /// Runs a GC sweep: removes entries expired longer than the grace,
    /// evicts least recently used ones above ``max_size``, reclaims
    /// unused payload files. Returns the report as a dict.
    #[pyo3(signature = (*, grace_seconds=None, max_size=None, dry_run=false, wait=false))]
    fn gc<'py>(
        &self,
        py: Python<'py>,
        grace_seconds: Option<f64>,
        max_size: Option<u64>,
        dry_run: bool,
        wait: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut opts = GcOptions::new().dry_run(dry_run).wait(wait);
        if let Some(g) = opt_seconds(grace_seconds, "grace_seconds")? {
            opts = opts.grace(g);
        }
        if let Some(m) = max_size {
            opts = opts.max_size(m);
        }
        let store = self.store(py)?;
        let r = py.detach(|| store.gc(&opts)).py_err(py)?;
        gc_dict(py, &r)
    }

    /// Makes everything written so far durable in the index now.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store(py)?;
        py.detach(|| store.flush()).py_err(py)
    }

    /// Writes the cache (or one backend, or only live entries) as one
    /// archive to a path or a binary file object; returns the report.
    #[pyo3(signature = (target, *, backend=None, live_only=false))]
    fn export<'py>(
        &self,
        py: Python<'py>,
        target: &Bound<'py, PyAny>,
        backend: Option<String>,
        live_only: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut opts = ExportOptions::default().live_only(live_only);
        if let Some(b) = backend {
            opts = opts.backend(b);
        }
        let store = self.store(py)?;
        let report = write_to(py, target, |w| store.export(w, &opts))?;
        export_dict(py, &report)
    }

    /// Imports an archive written by ``export`` (a path or a binary file
    /// object), all or nothing. ``merge``: ``"newer"`` (default), ``"keep"``
    /// or ``"replace"``.
    #[pyo3(signature = (source, *, merge="newer", ttl_shift=false, skip_damaged=false))]
    fn import_<'py>(
        &self,
        py: Python<'py>,
        source: &Bound<'py, PyAny>,
        merge: &str,
        ttl_shift: bool,
        skip_damaged: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let policy = MergePolicy::from_str(merge).map_err(PyValueError::new_err)?;
        let opts = ImportOptions::default()
            .merge(policy)
            .ttl_shift(ttl_shift)
            .skip_damaged(skip_damaged);
        let store = self.store(py)?;
        let report = read_from(py, source, |r| store.import(r, &opts))?;
        import_dict(py, &report)
    }

    /// Streams a payload from a path or a binary file object into the
    /// cache in bounded memory (for multi-GB dumps); returns what was
    /// stored. The default category is ``offline_dump`` (30 days).
    #[pyo3(signature = (backend, signature, source, *, ttl_seconds=None, category="offline_dump",
        response_headers=None, content_type=None, pinned=false))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn put_file<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
        source: &Bound<'py, PyAny>,
        ttl_seconds: Option<f64>,
        category: Option<&str>,
        response_headers: Option<&Bound<'py, PyAny>>,
        content_type: Option<String>,
        pinned: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let sig = signature_arg(signature)?;
        let args = PutArgs {
            ttl_seconds,
            category,
            headers: response_headers,
            content_type,
            fetched_at: None,
            pinned,
        };
        let opts = args.build()?;
        let store = self.store(py)?;
        let report = read_from(py, source, |r| store.put_reader(&backend, &sig, r, &opts))?;
        put_report_dict(py, &report)
    }

    /// Opens the payload as a stream (``None`` when absent or expired,
    /// unless ``allow_stale``).
    #[pyo3(signature = (backend, signature, *, allow_stale=false))]
    fn _open_reader(
        &self,
        py: Python<'_>,
        backend: String,
        signature: &Bound<'_, PyAny>,
        allow_stale: bool,
    ) -> PyResult<Option<NativeReader>> {
        let opened = self.on_key(py, signature, |s, sig| match allow_stale {
            true => s.get_reader_stale(&backend, sig),
            false => s.get_reader(&backend, sig),
        })?;
        let Some(reader) = opened else {
            return Ok(None);
        };
        let meta = meta_dict(py, &reader.meta, Self::now_ms())?.unbind();
        Ok(Some(NativeReader::new(reader, meta)))
    }

    /// Serves the live entry, or calls ``fetch()`` once (single-flight
    /// across this process's threads) and stores what it returns; when
    /// ``fetch`` raises and an entry expired within the stale-if-error
    /// grace exists, serves that instead. Returns
    /// ``(payload, headers, status, fetched_at, expires_at, error)``.
    #[pyo3(signature = (backend, signature, fetch, *, ttl_seconds=None, category=None,
        honor_cache_control=false))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn _get_or_fetch<'py>(
        &self,
        py: Python<'py>,
        backend: String,
        signature: &Bound<'py, PyAny>,
        fetch: Py<PyAny>,
        ttl_seconds: Option<f64>,
        category: Option<&str>,
        honor_cache_control: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let sig: Cow<'_, [u8]> = signature_arg(signature)?;
        let opts = PutArgs::simple(ttl_seconds, category).build()?;
        let store = self.store(py)?;
        let call = || Python::attach(|py| fetched(&fetch.bind(py).call0()?, honor_cache_control));
        let answer = match py.detach(|| store.get_or_fetch(&backend, &sig, &opts, call)) {
            Ok(a) => a,
            Err(FetchError::Upstream(e)) => return Err(e),
            Err(FetchError::Store(e)) => return Err(to_py(py, e)),
        };
        let error = answer.error.map(|e| e.into_value(py).into_any());
        let items: [Bound<'py, PyAny>; 6] = [
            PyBytes::new(py, &answer.data).into_any(),
            headers_dict(py, &answer.headers)?.into_any(),
            status_name(answer.status).into_pyobject(py)?.into_any(),
            epoch_s(answer.fetched_at).into_pyobject(py)?.into_any(),
            answer.expires_at.map(epoch_s).into_pyobject(py)?.into_any(),
            error
                .map(|e| e.into_bound(py))
                .into_pyobject(py)?
                .into_any(),
        ];
        PyTuple::new(py, items)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { " (closed)" } else { "" };
        format!(
            "<blobcache.Cache {:?}{state}>",
            self.path.display().to_string()
        )
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            return;
        }
        // Inherited through fork: the index, its journal and the owner
        // socket are the parent's, so this copy must not flush or clean up.
        if let Ok(mut g) = self.store.write() {
            std::mem::forget(g.take());
        }
    }
}
