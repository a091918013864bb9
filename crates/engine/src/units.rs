//! Groups and partitions: the all-or-nothing unit (a "video") and the checkpoint unit (a
//! "course") an object belongs to, each found by a rule on its key (`--group-by`,
//! `--partition-by`). Without a rule each object is a group of its own, and the migration one
//! partition.

use regex_lite::Regex;

/// How a unit is read from a key.
#[derive(Debug, Clone)]
pub enum KeyRule {
    /// `prefix:N`: the key's first N directories (`a/b/c.txt` by `prefix:2` is `a/b`). A key
    /// with fewer directories belongs to no unit.
    Prefix(usize),
    /// `regex:PATTERN`: the pattern's first capture group (the whole match if it has none). A key
    /// it does not match belongs to no unit.
    Regex(Regex),
}

/// A rule that does not parse; the message names the option and the way to write it.
#[derive(Debug, thiserror::Error)]
#[error("{option} '{rule}': {reason}")]
pub struct BadRule {
    option: &'static str,
    rule: String,
    reason: String,
}

impl KeyRule {
    /// Parses `prefix:N` or `regex:PATTERN`, as given to `option` (named in errors).
    pub fn parse(option: &'static str, rule: &str) -> Result<Self, BadRule> {
        let bad = |reason: String| BadRule {
            option,
            rule: rule.to_owned(),
            reason,
        };
        match rule.split_once(':') {
            Some(("prefix", depth)) => match depth.parse::<usize>() {
                Ok(depth) if depth >= 1 => Ok(Self::Prefix(depth)),
                _ => Err(bad(format!(
                    "'{depth}' is not a depth of 1 or more; write prefix:N, e.g. prefix:2 for a/b of a/b/c.txt"
                ))),
            },
            Some(("regex", pattern)) => Regex::new(pattern)
                .map(Self::Regex)
                .map_err(|e| bad(format!("the pattern does not parse: {e}"))),
            _ => Err(bad(
                "write prefix:N (the key's first N directories) or regex:PATTERN (its first capture group)"
                    .to_owned(),
            )),
        }
    }

    /// The rule as written.
    pub fn describe(&self) -> String {
        match self {
            Self::Prefix(depth) => format!("prefix:{depth}"),
            Self::Regex(regex) => format!("regex:{}", regex.as_str()),
        }
    }

    /// The unit `key` belongs to, if any.
    pub fn unit_of(&self, key: &str) -> Option<String> {
        match self {
            Self::Prefix(depth) => {
                let mut end = 0;
                for _ in 0..*depth {
                    // A directory ends at a '/'; the last segment is the file name.
                    let next = key[end..].find('/')?;
                    end += next + 1;
                }
                Some(key[..end - 1].to_owned())
            }
            Self::Regex(regex) => {
                let captures = regex.captures(key)?;
                let unit = captures.get(1).or_else(|| captures.get(0))?;
                Some(unit.as_str().to_owned())
            }
        }
    }
}

/// The group and partition rules of a migration.
#[derive(Debug, Clone, Default)]
pub struct Units {
    /// `--group-by`; without it each object is a group of its own.
    pub group: Option<KeyRule>,
    /// `--partition-by`; without it the migration is one partition.
    pub partition: Option<KeyRule>,
}

impl Units {
    /// The rules as given on the command line (`None`: the default).
    pub fn parse(group_by: Option<&str>, partition_by: Option<&str>) -> Result<Self, BadRule> {
        Ok(Self {
            group: group_by
                .map(|rule| KeyRule::parse("--group-by", rule))
                .transpose()?,
            partition: partition_by
                .map(|rule| KeyRule::parse("--partition-by", rule))
                .transpose()?,
        })
    }

    /// The rules in words, empty without any (part of the filter a scan records).
    pub fn describe(&self) -> String {
        let mut words = String::new();
        if let Some(rule) = &self.group {
            words.push_str(&format!(" grouped by {}", rule.describe()));
        }
        if let Some(rule) = &self.partition {
            words.push_str(&format!(" partitioned by {}", rule.describe()));
        }
        words
    }

    /// The group `key` belongs to (`None`: a group of its own).
    pub fn group_of(&self, key: &str) -> Option<String> {
        self.group.as_ref().and_then(|rule| rule.unit_of(key))
    }

    /// The partition `key` belongs to (`None`: the migration's default partition).
    pub fn partition_of(&self, key: &str) -> Option<String> {
        self.partition.as_ref().and_then(|rule| rule.unit_of(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_takes_whole_directories_and_never_the_file_name() {
        let rule = KeyRule::parse("--group-by", "prefix:2").unwrap();
        assert_eq!(
            rule.unit_of("course1/video7/part1.ts").as_deref(),
            Some("course1/video7")
        );
        assert_eq!(
            rule.unit_of("course1/video7/hd/part1.ts").as_deref(),
            Some("course1/video7")
        );
        assert_eq!(rule.unit_of("course1/readme.txt"), None);
        assert_eq!(rule.unit_of("top.txt"), None);
        let one = KeyRule::parse("--partition-by", "prefix:1").unwrap();
        assert_eq!(one.unit_of("c/v/x").as_deref(), Some("c"));
        assert_eq!(one.unit_of("/x").as_deref(), Some(""));
    }

    #[test]
    fn a_regex_takes_its_first_capture_or_its_match() {
        let rule = KeyRule::parse("--partition-by", r"regex:^courses/(\d+)-").unwrap();
        assert_eq!(
            rule.unit_of("courses/42-intro/v.mp4").as_deref(),
            Some("42")
        );
        assert_eq!(rule.unit_of("other/42-intro/v.mp4"), None);
        let whole = KeyRule::parse("--group-by", r"regex:^[a-z]+/[0-9]+").unwrap();
        assert_eq!(whole.unit_of("ab/12/x").as_deref(), Some("ab/12"));
    }

    #[test]
    fn bad_rules_say_which_option_and_how_to_write_it() {
        let cases = [
            ("prefix:0", "prefix:N"),
            ("prefix:two", "prefix:N"),
            ("regex:(", "does not parse"),
            (
                "column:course",
                "prefix:N (the key's first N directories) or regex:PATTERN",
            ),
            ("2", "prefix:N"),
        ];
        for (rule, says) in cases {
            let error = KeyRule::parse("--group-by", rule).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("--group-by '{rule}':")),
                "{error}"
            );
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn without_rules_each_object_is_its_own_group_in_the_one_partition() {
        let units = Units::parse(None, None).unwrap();
        assert_eq!(units.group_of("a/b/c"), None);
        assert_eq!(units.partition_of("a/b/c"), None);
        let units = Units::parse(Some("prefix:2"), Some("prefix:1")).unwrap();
        assert_eq!(units.group_of("a/b/c").as_deref(), Some("a/b"));
        assert_eq!(units.partition_of("a/b/c").as_deref(), Some("a"));
    }
}
