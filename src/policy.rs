//! Plain choices that layers below the store core act on, so that they
//! need not import the feature that offers them: what an import does with
//! a key both sides hold ([`MergePolicy`], applied by the index).
//!
//! Format layer: it uses `record` only; `archive` and the crate root
//! re-export its types.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::Record;

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
        match (held, self) {
            (None, _) | (Some(_), MergePolicy::Replace) => true,
            (Some(_), MergePolicy::Keep) => false,
            (Some(o), MergePolicy::Newer) => {
                (incoming.created_at, incoming.fetched_at) > (o.created_at, o.fetched_at)
            }
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
