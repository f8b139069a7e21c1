//! `std::io` adapters over Python binary file objects, for archives and
//! streamed payloads. The GIL is taken only for each `read`/`write` call;
//! the first Python exception is kept so it can be raised as it was,
//! instead of a translated I/O error.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::convert::type_name;
use crate::errors::{IntoPy, to_py};

/// Where an archive goes or a payload comes from: a filesystem path or a
/// Python file object.
enum Target {
    /// A `str` or `os.PathLike`.
    Path(PathBuf),
    /// An object with the needed `read` or `write` method.
    File(Py<PyAny>),
}

impl Target {
    /// Classifies `obj`; `method` is `"read"` or `"write"`.
    fn from_arg(obj: &Bound<'_, PyAny>, method: &str) -> PyResult<Target> {
        let is_path = obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")?;
        if is_path {
            return Ok(Target::Path(obj.extract()?));
        }
        if obj.hasattr(method)? {
            return Ok(Target::File(obj.clone().unbind()));
        }
        Err(PyTypeError::new_err(format!(
            "expected a path or a binary file object with a {method}() method, not {}",
            type_name(obj)
        )))
    }
}

/// A Python file object seen as a [`Read`] or a [`Write`].
pub struct PyFile {
    file: Py<PyAny>,
    /// The first exception the object raised (or a type error about what
    /// its `read` returned).
    pub error: Option<PyErr>,
}

impl PyFile {
    /// Wraps a file object.
    pub fn new(file: Py<PyAny>) -> PyFile {
        PyFile { file, error: None }
    }

    /// Runs `f` on the object with the GIL held, keeping its exception.
    fn call<T>(
        &mut self,
        f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<T>,
    ) -> io::Result<T> {
        let got = Python::attach(|py| f(py, self.file.bind(py)));
        got.map_err(|e| {
            let msg = e.to_string();
            self.error.get_or_insert(e);
            io::Error::other(msg)
        })
    }
}

impl Read for PyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.call(|_, f| read_chunk(f, buf))
    }
}

fn read_chunk(file: &Bound<'_, PyAny>, buf: &mut [u8]) -> PyResult<usize> {
    let chunk = file.call_method1("read", (buf.len(),))?;
    let owned;
    let bytes: &[u8] = if let Ok(b) = chunk.cast::<PyBytes>() {
        b.as_bytes()
    } else if let Ok(b) = chunk.cast::<PyByteArray>() {
        owned = b.to_vec();
        &owned
    } else {
        return Err(PyTypeError::new_err(format!(
            "read() returned {}, not bytes: open the file in binary mode ('rb')",
            type_name(&chunk)
        )));
    };
    if bytes.len() > buf.len() {
        return Err(PyTypeError::new_err(format!(
            "read({}) returned {} bytes",
            buf.len(),
            bytes.len()
        )));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(bytes.len())
}

impl Write for PyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.call(|py, f| {
            let n = f.call_method1("write", (PyBytes::new(py, buf),))?;
            // Raw files may write less and say so; buffered ones return None or len.
            Ok(n.extract::<usize>().unwrap_or(buf.len()).min(buf.len()))
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.call(|_, f| {
            if f.hasattr("flush")? {
                f.call_method0("flush")?;
            }
            Ok(())
        })
    }
}

/// Runs `f` (GIL released) on what `source` names: a file opened at a
/// path, or a Python file object. An exception the object raised is
/// re-raised as it was.
pub fn read_from<T: Send>(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    f: impl FnOnce(&mut dyn Read) -> blobcache::Result<T> + Send,
) -> PyResult<T> {
    match Target::from_arg(source, "read")? {
        Target::Path(p) => {
            let file = std::fs::File::open(&p)?;
            py.detach(|| f(&mut BufReader::new(file))).py_err(py)
        }
        Target::File(obj) => {
            let mut r = PyFile::new(obj);
            let res = py.detach(|| f(&mut r));
            raise_kept(py, res, r.error)
        }
    }
}

/// Like [`read_from`], for a destination (a path is created or truncated).
pub fn write_to<T: Send>(
    py: Python<'_>,
    target: &Bound<'_, PyAny>,
    f: impl FnOnce(&mut dyn Write) -> blobcache::Result<T> + Send,
) -> PyResult<T> {
    match Target::from_arg(target, "write")? {
        Target::Path(p) => {
            let mut w = BufWriter::new(std::fs::File::create(&p)?);
            let v = py.detach(|| f(&mut w)).py_err(py)?;
            w.flush()?;
            Ok(v)
        }
        Target::File(obj) => {
            let mut w = PyFile::new(obj);
            let res = py.detach(|| f(&mut w));
            raise_kept(py, res, w.error)
        }
    }
}

/// A result whose I/O error may stand for a Python exception raised by a
/// file object: that exception is raised as it was.
fn raise_kept<T>(py: Python<'_>, r: blobcache::Result<T>, kept: Option<PyErr>) -> PyResult<T> {
    match (r, kept) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(to_py(py, e)),
    }
}
