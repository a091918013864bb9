//! `--include` / `--exclude` globs over relative keys.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::units::Units;

/// Which keys a migration takes. A key is taken when it matches an include pattern (or there are
/// none) and no exclude pattern. `*` matches across `/`, as in `aws s3 cp --exclude`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// The patterns as given, to say which filter a scan applied.
    patterns: (Vec<String>, Vec<String>),
    /// The length in bytes of the prefix the destination puts before each key.
    dest_prefix_len: usize,
    /// Keys below these prefixes are left out whatever the patterns say (a destination that may
    /// lie inside the source).
    excluded_prefixes: Vec<String>,
    /// The group and partition each taken key is scanned into.
    units: Units,
    /// The manifest the source lists, if any: its path and the digest of its bytes.
    manifest: Option<String>,
}

/// A glob that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad pattern '{pattern}': {reason}; write a glob such as 'logs/*.gz' (quote it in the shell)"
)]
pub struct BadPattern {
    pattern: String,
    reason: String,
}

impl BadPattern {
    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

fn build(patterns: &[String]) -> Result<Option<GlobSet>, BadPattern> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| BadPattern {
            pattern: pattern.clone(),
            reason: e.kind().to_string(),
        })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| BadPattern {
        pattern: patterns.join(" "),
        reason: e.to_string(),
    })
}

impl Filter {
    /// A filter from include and exclude patterns.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, BadPattern> {
        Ok(Self {
            include: build(include)?,
            exclude: build(exclude)?,
            excluded_prefixes: Vec::new(),
            patterns: (include.to_vec(), exclude.to_vec()),
            dest_prefix_len: 0,
            units: Units::default(),
            manifest: None,
        })
    }

    /// The same filter, over a source that lists only the manifest at `path` whose bytes have
    /// `digest`: a changed manifest is a changed filter, so the next run lists again.
    pub fn with_manifest(mut self, path: &str, digest: &str) -> Self {
        self.manifest = Some(format!(" manifest {path:?} md5 {digest}"));
        self
    }

    /// The same filter, scanning keys into the groups and partitions of `units`.
    pub fn with_units(mut self, units: Units) -> Self {
        self.units = units;
        self
    }

    /// The groups and partitions keys are scanned into.
    pub(crate) fn units(&self) -> &Units {
        &self.units
    }

    /// What the filter takes, in words that are equal for equal filters (recorded with each
    /// scan, so a changed filter is noticed).
    pub(crate) fn describe(&self) -> String {
        let (include, exclude) = &self.patterns;
        format!(
            "include {include:?} exclude {exclude:?} below {:?}{}{}",
            self.excluded_prefixes,
            // (Said only when set: ledgers from before the rules keep their scans.)
            self.units.describe(),
            self.manifest.as_deref().unwrap_or_default()
        )
    }

    /// The same filter, leaving out every key below `prefix` too.
    pub(crate) fn without_prefix(mut self, prefix: String) -> Self {
        self.excluded_prefixes.push(prefix);
        self
    }

    /// The same filter, for a destination that writes each key below `prefix`.
    pub(crate) fn below_dest_prefix(mut self, prefix: &str) -> Self {
        self.dest_prefix_len = prefix.len();
        self
    }

    /// Why `key` cannot be written as an S3 key, if it cannot: too long with the destination's
    /// prefix, or holding a control character. S3 stores the latter, but its XML listings
    /// cannot carry it, so once written the bucket could no longer be listed (by godwit's
    /// re-runs among others).
    pub(crate) fn key_problem(&self, key: &str) -> Option<String> {
        const MOST: usize = 1024;
        let len = self.dest_prefix_len + key.len();
        if len > MOST {
            return Some(format!(
                "the key would be {len} bytes at the destination (its prefix included); S3 keys are at most {MOST}: shorten the path or the destination prefix, or leave it out with --exclude"
            ));
        }
        let control = key.chars().find(|c| c.is_control())?;
        Some(format!(
            "the key holds a control character (U+{:04X}), which S3's XML listings cannot carry: once written, the bucket could no longer be listed; rename it, or leave it out with --exclude",
            control as u32
        ))
    }

    /// Whether `key` is taken.
    pub fn takes(&self, key: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(key))
            && !self.exclude.as_ref().is_some_and(|set| set.is_match(key))
            && !self
                .excluded_prefixes
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_s3_cannot_hold_or_list_are_named() {
        let filter = Filter::new(&[], &[]).unwrap().below_dest_prefix("pre/");
        assert_eq!(filter.key_problem("a/b.txt"), None);
        assert_eq!(filter.key_problem(&"k".repeat(1020)), None);
        let long = filter.key_problem(&"k".repeat(1021)).unwrap();
        assert!(long.contains("1025 bytes"), "{long}");
        let control = filter.key_problem("a\u{1}b").unwrap();
        assert!(control.contains("U+0001"), "{control}");
        assert!(filter.key_problem("tab\there").is_some());
        assert_eq!(filter.key_problem("ünïcödé/日本"), None);
    }

    fn check(include: &[&str], exclude: &[&str], key: &str, expected: bool) {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let filter = Filter::new(&own(include), &own(exclude)).unwrap();
        assert_eq!(filter.takes(key), expected, "{include:?} {exclude:?} {key}");
    }

    #[test]
    fn include_then_exclude() {
        check(&[], &[], "a/b.txt", true);
        check(&["*.txt"], &[], "a/b.txt", true);
        check(&["*.txt"], &[], "a/b.jpg", false);
        check(&[], &["*.tmp"], "deep/x.tmp", false);
        check(&["logs/**"], &["**/*.gz"], "logs/a/b.log", true);
        check(&["logs/**"], &["**/*.gz"], "logs/a/b.gz", false);
    }

    #[test]
    fn a_changed_manifest_is_a_changed_filter() {
        let plain = Filter::new(&[], &[]).unwrap();
        let one = plain.clone().with_manifest("/m.jsonl", "aa");
        let other = plain.clone().with_manifest("/m.jsonl", "bb");
        assert_ne!(plain.describe(), one.describe());
        assert_ne!(one.describe(), other.describe());
        assert_eq!(
            one.describe(),
            plain.with_manifest("/m.jsonl", "aa").describe()
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Filter::new(&["a[".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("'a['"), "{err}");
    }
}
