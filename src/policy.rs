//! Plain choices that layers below the store core act on, so that they
//! need not import the feature or the options that offer them: when a
//! write counts as done ([`Durability`], for blob files, packs and the
//! journal), how a cache is shared ([`Sharing`], for `share`), what an
//! import does with a key both sides hold ([`MergePolicy`], applied by the
//! index).
//!
//! Format layer: it uses `record` only; `options`, `archive` and the
//! crate root re-export its types.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// When a write counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the operating system has the data: survives the
    /// process being killed (`kill -9`), not a power loss in the next few
    /// seconds.
    #[default]
    Buffered,
    /// Blob files, their directories and the index journal are fsynced
    /// before a write returns: survives power loss, at the cost of a few
    /// milliseconds per write.
    Synced,
}

/// How a store shares its cache directory with other processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// The first process to open the cache owns the index and serves the
    /// others over `owner.sock`; every other process is a guest with the
    /// same API. When the owner goes away a guest takes over.
    #[default]
    Shared,
    /// This process wants the cache to itself: it neither serves nor joins
    /// an owner. While another process holds the cache, opening waits up to
    /// the owner timeout for it to let go, then fails with
    /// [`crate::Error::Locked`]; shared processes likewise wait for an
    /// exclusive one.
    Exclusive,
}

/// What to do when an archived entry's key already holds an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergePolicy {
    /// Take the archived entry if it was written later than the one held
    /// (by `created_at`, then `fetched_at`); the default.
    #[default]
    #[serde(rename = "n")]
    Newer,
    /// Keep the entry held; import only keys that are absent.
    #[serde(rename = "k")]
    Keep,
    /// Always take the archived entry.
    #[serde(rename = "r")]
    Replace,
}

impl MergePolicy {
    /// True when an archived record should replace `held` (the record the
    /// key holds, `None` when absent or undecodable).
    pub(crate) fn takes(self, incoming: &Record, held: Option<&Record>) -> bool {
        let times = |r: &Record| (r.created_at, r.fetched_at);
        self.takes_times(times(incoming), held.map(times))
    }

    /// [`MergePolicy::takes`] on the entries' `(created_at, fetched_at)`
    /// alone (all it looks at).
    pub(crate) fn takes_times(self, incoming: (u64, u64), held: Option<(u64, u64)>) -> bool {
        match (held, self) {
            (None, _) | (Some(_), MergePolicy::Replace) => true,
            (Some(_), MergePolicy::Keep) => false,
            (Some(o), MergePolicy::Newer) => incoming > o,
        }
    }
}

impl FromStr for MergePolicy {
    type Err = String;

    /// Parses `newer`, `keep` or `replace` (as on the command line).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "newer" => Ok(MergePolicy::Newer),
            "keep" => Ok(MergePolicy::Keep),
            "replace" => Ok(MergePolicy::Replace),
            other => Err(format!(
                "unknown merge policy {other:?}; use newer, keep or replace"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_policy_parses() {
        assert_eq!("keep".parse::<MergePolicy>(), Ok(MergePolicy::Keep));
        assert!("newest".parse::<MergePolicy>().is_err());
    }
}
