//! Shards: parts of a source's listing that can be listed on their own, in parallel, and
//! resumed after the last key listed.
//!
//! A shard is named by what it holds: [`TOP`] the keys at the source's root (no `/` in them),
//! `"DIR/"` the keys below one top-level directory or prefix, [`WHOLE`] everything (a source that
//! cannot be cut, or a bucket whose top level is too large to cut). The names are opaque to the
//! ledger, which records, for each, the last key listed.

use std::cmp::Ordering;

/// The keys at the source's root.
pub const TOP: &str = "";

/// The whole listing, in one shard.
pub const WHOLE: &str = "*";

/// The order a directory walk sorted by name lists keys in: component by component, each
/// compared as bytes (so `a/b` comes before `a-b`, unlike the byte order S3 lists keys in).
pub fn walk_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Whether every key below directory `dir` (a key without the trailing `/`) comes before
/// `after` in walk order: then a resumed walk may skip the directory whole.
pub fn walked_past(dir: &str, after: &str) -> bool {
    walk_order(dir, after) == Ordering::Less
        && !(after.len() > dir.len()
            && after.starts_with(dir)
            && after.as_bytes()[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_goes_component_by_component() {
        let mut keys = vec!["a-b", "a/b", "a/a/z", "a", "b", "a/b/c", "\u{e9}"];
        keys.sort_by(|a, b| walk_order(a, b));
        assert_eq!(keys, ["a", "a/a/z", "a/b", "a/b/c", "a-b", "b", "\u{e9}"]);
    }

    #[test]
    fn a_directory_is_walked_past_only_when_after_is_beyond_it() {
        assert!(walked_past("a", "b/c"));
        assert!(walked_past("a", "a-b"));
        assert!(!walked_past("a", "a/b"));
        assert!(!walked_past("a", "a"));
        assert!(!walked_past("b", "a/z"));
        assert!(!walked_past("a/b", "a/b/c"));
        assert!(walked_past("a/b", "a/c"));
    }
}
