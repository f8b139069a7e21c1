//! Typed values: cache response structs without hand-written
//! serialisation, as CBOR (compact, the default) or JSON (readable with
//! `blobcache get`).
//!
//! A stored value that no longer decodes as the type asked for (the struct
//! changed since it was cached) is a miss, logged with `log::warn!`: the
//! caller fetches again and overwrites it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::options::PutOptions;
use crate::store::{PutReport, Store};

/// A serialisation format for typed values.
#[derive(Clone, Copy)]
enum Format {
    Cbor,
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Cbor => "CBOR",
            Format::Json => "JSON",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Cbor => "application/cbor",
            Format::Json => "application/json",
        }
    }

    fn encode<T: Serialize + ?Sized>(self, value: &T) -> std::result::Result<Vec<u8>, String> {
        match self {
            Format::Cbor => {
                let mut out = Vec::new();
                ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
                Ok(out)
            }
            Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        }
    }

    fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> std::result::Result<T, String> {
        match self {
            Format::Cbor => ciborium::from_reader(bytes).map_err(|e| e.to_string()),
            Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

impl Store {
    /// Stores `value` as CBOR under `(backend, signature)`; the content type
    /// is `application/cbor` unless `opts` names one. Read it back with
    /// [`Store::get_value`].
    ///
    /// ```
    /// use blobcache::{PutOptions, Store, StoreOptions};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, PartialEq, Debug)]
    /// struct Movie { id: u32, title: String }
    ///
    /// # fn main() -> blobcache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let movie = Movie { id: 603, title: "The Matrix".into() };
    /// store.put_value("tmdb", "movie/603", &movie, &PutOptions::new())?;
    /// assert_eq!(store.get_value::<Movie>("tmdb", "movie/603")?, Some(movie));
    ///
    /// // A type the stored value does not fit is a miss, not an error.
    /// assert_eq!(store.get_value::<Vec<u64>>("tmdb", "movie/603")?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_value<T: Serialize + ?Sized>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        value: &T,
        opts: &PutOptions,
    ) -> Result<PutReport> {
        self.put_typed(Format::Cbor, backend, signature.as_ref(), value, opts)
    }

    /// The live CBOR value at `(backend, signature)` decoded as `T`, or
    /// `None` on a miss. A value that does not decode as `T` (written by an
    /// older version of the type, or not CBOR) is a miss too, logged with
    /// `log::warn!`.
    pub fn get_value<T: DeserializeOwned>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
    ) -> Result<Option<T>> {
        self.get_typed(Format::Cbor, backend, signature.as_ref())
    }

    /// Like [`Store::put_value`], as JSON (content type `application/json`).
    ///
    /// ```
    /// use blobcache::{PutOptions, Store, StoreOptions};
    ///
    /// # fn main() -> blobcache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// store.put_json("anilist", "trending", &vec!["Frieren", "Dandadan"], &PutOptions::new())?;
    /// assert_eq!(store.get("anilist", "trending")?.unwrap().data, br#"["Frieren","Dandadan"]"#);
    /// let titles: Option<Vec<String>> = store.get_json("anilist", "trending")?;
    /// assert_eq!(titles.unwrap().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_json<T: Serialize + ?Sized>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        value: &T,
        opts: &PutOptions,
    ) -> Result<PutReport> {
        self.put_typed(Format::Json, backend, signature.as_ref(), value, opts)
    }

    /// Like [`Store::get_value`], for JSON values.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
    ) -> Result<Option<T>> {
        self.get_typed(Format::Json, backend, signature.as_ref())
    }

    fn put_typed<T: Serialize + ?Sized>(
        &self,
        format: Format,
        backend: &str,
        signature: &[u8],
        value: &T,
        opts: &PutOptions,
    ) -> Result<PutReport> {
        let bytes = format.encode(value).map_err(|reason| Error::Encode {
            key: format!("{backend}/{}", String::from_utf8_lossy(signature)),
            format: format.name(),
            reason,
        })?;
        let mut opts = opts.clone();
        opts.content_type
            .get_or_insert_with(|| format.content_type().to_string());
        self.put(backend, signature, &bytes, &opts)
    }

    fn get_typed<T: DeserializeOwned>(
        &self,
        format: Format,
        backend: &str,
        signature: &[u8],
    ) -> Result<Option<T>> {
        let Some(hit) = self.get(backend, signature)? else {
            return Ok(None);
        };
        match format.decode(&hit.data) {
            Ok(value) => Ok(Some(value)),
            Err(reason) => {
                log::warn!(
                    "cached value {backend}/{} does not decode as {} {}; treating it as a miss: {reason}",
                    String::from_utf8_lossy(signature),
                    format.name(),
                    std::any::type_name::<T>(),
                );
                Ok(None)
            }
        }
    }
}
