//! Which zstd dictionary each backend's new needles use, and the samples
//! a dictionary is trained from.
//!
//! The sled tree `dicts` maps a backend name to the id of its current
//! dictionary (u16 LE); the dictionaries themselves are files under
//! `dicts/` ([`crate::pack::dict`]), written and fsynced before any
//! needle names them. Losing a mapping (it is written behind the packs,
//! like every index change) costs only a retraining: needles keep naming
//! the file they were written with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::pack::{DictDir, Dictionary, dict};

/// Payloads larger than this are not used as training samples (they
/// gain little from a dictionary and would dominate the sample set).
const MAX_SAMPLE: usize = 16 * 1024;

#[derive(Default)]
struct Sampler {
    samples: Vec<Vec<u8>>,
    training: bool,
}

/// The current dictionary of every backend, and the samplers of those
/// that have none yet.
pub(super) struct Dictionaries {
    dir: Arc<DictDir>,
    tree: sled::Tree,
    index_path: PathBuf,
    current: RwLock<HashMap<String, Arc<Dictionary>>>,
    samplers: Mutex<HashMap<String, Sampler>>,
    trainers: Mutex<Vec<JoinHandle<()>>>,
}

impl Dictionaries {
    /// Loads every backend's current dictionary. One that cannot be read
    /// is skipped with a warning: that backend trains a new one.
    pub(super) fn open(dir: Arc<DictDir>, tree: sled::Tree, index: &Path) -> Result<Dictionaries> {
        let mut current = HashMap::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| Error::index(index, e))?;
            let (Ok(backend), Ok(id)) = (std::str::from_utf8(&k), <[u8; 2]>::try_from(&v[..]))
            else {
                log::warn!(
                    "skipping a malformed dictionary mapping in {}",
                    index.display()
                );
                continue;
            };
            match dir.get(u16::from_le_bytes(id)) {
                Ok(d) => {
                    current.insert(backend.to_owned(), d);
                }
                Err(reason) => {
                    log::warn!("backend {backend} will train a new dictionary: {reason}")
                }
            }
        }
        Ok(Dictionaries {
            dir,
            tree,
            index_path: index.to_path_buf(),
            current: RwLock::new(current),
            samplers: Mutex::new(HashMap::new()),
            trainers: Mutex::new(Vec::new()),
        })
    }

    /// The dictionary new needles of `backend` use, if it has one.
    pub(super) fn current(&self, backend: &str) -> Option<Arc<Dictionary>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.get(backend).cloned()
    }

    /// Dictionary files stored.
    pub(super) fn stored(&self) -> Result<u64> {
        let ids = self.dir.ids().map_err(super::pack_error)?;
        Ok(ids.len() as u64)
    }

    /// Keeps `payload` as a training sample of `backend`; the put that
    /// completes `wanted` samples starts a thread that trains and installs
    /// the dictionary (about 0.1 s for 1,000 samples; a failure is logged
    /// and sampling starts over). Never fails or delays the put.
    pub(super) fn sample(
        self: &Arc<Self>,
        backend: &str,
        payload: &[u8],
        wanted: usize,
        max_bytes: usize,
    ) {
        if wanted == 0 || payload.len() > MAX_SAMPLE || payload.is_empty() {
            return;
        }
        let Some(samples) = self.collect(backend, payload, wanted) else {
            return;
        };
        let (me, name) = (self.clone(), backend.to_owned());
        let spawned = std::thread::Builder::new()
            .name("blobcache-dict".into())
            .spawn(move || me.train(&name, &samples, max_bytes));
        let mut trainers = self.trainers.lock().unwrap_or_else(PoisonError::into_inner);
        trainers.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => trainers.push(h),
            Err(e) => {
                log::warn!("backend {backend}: no thread to train a dictionary ({e})");
                self.samplers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(backend.to_owned(), Sampler::default());
            }
        }
    }

    /// Waits for the trainings in progress.
    pub(super) fn settle(&self) {
        let handles =
            std::mem::take(&mut *self.trainers.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            if h.join().is_err() {
                log::warn!("a dictionary training thread panicked");
            }
        }
    }

    fn train(&self, backend: &str, samples: &[Vec<u8>], max_bytes: usize) {
        let outcome = self.train_and_install(backend, samples, max_bytes);
        let mut samplers = self.samplers.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(id) => {
                samplers.remove(backend);
                log::info!(
                    "backend {backend}: zstd dictionary {id} trained from {} payloads",
                    samples.len()
                );
            }
            Err(reason) => {
                samplers.insert(backend.to_owned(), Sampler::default());
                log::warn!("backend {backend}: no dictionary yet ({reason})");
            }
        }
    }

    /// Adds the sample; returns the full set when this one completes it
    /// (and marks the backend as training, so only one thread trains).
    fn collect(&self, backend: &str, payload: &[u8], wanted: usize) -> Option<Vec<Vec<u8>>> {
        let mut samplers = self.samplers.lock().unwrap_or_else(PoisonError::into_inner);
        let s = samplers.entry(backend.to_owned()).or_default();
        if s.training {
            return None;
        }
        s.samples.push(payload.to_vec());
        if s.samples.len() < wanted {
            return None;
        }
        s.training = true;
        Some(std::mem::take(&mut s.samples))
    }

    fn train_and_install(
        &self,
        backend: &str,
        samples: &[Vec<u8>],
        max: usize,
    ) -> Result<u16, String> {
        let bytes = dict::train(samples, max)?;
        let d = self.dir.create(&bytes).map_err(|e| e.to_string())?;
        self.tree
            .insert(backend.as_bytes(), &d.id().to_le_bytes())
            .map_err(|e| Error::index(&self.index_path, e).to_string())?;
        let id = d.id();
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        current.insert(backend.to_owned(), d);
        Ok(id)
    }
}
