//! The objects of a migration a page at a time, in key order, for the dashboard: each call reads a
//! bounded stretch of the `(migration_id, key)` index, however few of its rows match.

use serde::Serialize;

use crate::ObjectState;

/// Which objects [`Store::objects_page`](crate::Store::objects_page) lists, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectQuery {
    /// Only keys that start with this (compared byte by byte; `%` and `_` are plain characters).
    pub prefix: Option<String>,
    /// Only objects in this state.
    pub state: Option<ObjectState>,
    /// Only keys after this one: the [`ObjectPage::next`] of the page before.
    pub after: Option<String>,
    /// At most this many objects (0 is taken as 1, more than [`ObjectQuery::MAX_LIMIT`] as that).
    pub limit: u32,
}

impl ObjectQuery {
    /// The most objects one page holds.
    pub const MAX_LIMIT: u32 = 1000;

    /// The objects a page holds at most: `limit`, within 1 and [`ObjectQuery::MAX_LIMIT`].
    pub fn page_size(&self) -> u32 {
        self.limit.clamp(1, Self::MAX_LIMIT)
    }

    /// How many objects one call reads at most, matching or not: ten times the page, and at
    /// least 5,000, so a state few objects are in still comes a bounded step at a time.
    pub fn budget(&self) -> u32 {
        (10 * self.page_size()).max(5000)
    }

    /// The range of keys to read, in byte order: from `lower` (inclusive) but not `excluded`
    /// (the cursor), up to `upper` (exclusive; `None`: to the end).
    pub(crate) fn range(&self) -> KeyRange {
        let prefix = self.prefix.clone().unwrap_or_default();
        let upper = successor(&prefix);
        let lower = match &self.after {
            Some(after) if after.as_str() >= prefix.as_str() => after.clone(),
            _ => prefix,
        };
        KeyRange {
            lower,
            excluded: self.after.clone(),
            upper,
        }
    }
}

/// A range of keys (see [`ObjectQuery::range`]).
pub(crate) struct KeyRange {
    pub lower: String,
    pub excluded: Option<String>,
    pub upper: Option<String>,
}

/// One page of a migration's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectPage {
    /// The objects, in byte order of their keys.
    pub objects: Vec<ObjectRow>,
    /// Where the next page starts (its [`ObjectQuery::after`]); `None` when the listing is
    /// through. A page may be short, even empty, and still have a next one: each call reads a
    /// bounded number of objects (see [`ObjectQuery::budget`]).
    pub next: Option<String>,
}

/// An object as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRow {
    /// Relative key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Its state.
    pub state: ObjectState,
    /// Attempts made.
    pub attempts: u32,
    /// The last error's kind (`unreachable`, `access_denied`, ...), if an attempt failed.
    pub error_kind: Option<String>,
    /// The last error's message.
    pub error_message: Option<String>,
    /// The destination's ETag, as recorded when it was copied or found.
    pub dest_etag: Option<String>,
    /// Its partition (`None`: the default one).
    pub partition: Option<String>,
    /// Its group (`None`: a group of its own).
    pub group: Option<String>,
    /// When it last became work (new, changed, requeued), in milliseconds since the Unix epoch;
    /// `None` in ledgers from before godwit recorded it.
    pub changed_at: Option<i64>,
}

/// The page a call makes of what it read: `matched`, the rows that match the query in key order
/// (at most one more than the page holds), of `n_read` rows read in all, the last of them
/// `last_read`. The next page starts after this page's last object when more matched; after
/// the last row read when the budget ran out first; nowhere when the range ran out.
pub(crate) fn settle(
    query: &ObjectQuery,
    mut matched: Vec<ObjectRow>,
    n_read: u64,
    last_read: Option<String>,
) -> ObjectPage {
    let limit = query.page_size() as usize;
    let next = if matched.len() > limit {
        matched.truncate(limit);
        matched.last().map(|o| o.key.clone())
    } else if n_read >= u64::from(query.budget()) {
        last_read
    } else {
        None
    };
    ObjectPage {
        objects: matched,
        next,
    }
}

/// The least string above every string that starts with `prefix`, in byte order (UTF-8 orders
/// as code points do): `prefix` with its last character that can grow grown by one, what
/// follows it dropped. `None` when there is none (an empty prefix, or one of `char::MAX` only).
pub(crate) fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut code = last as u32 + 1;
        // Past the surrogates, which no string holds.
        if (0xD800..=0xDFFF).contains(&code) {
            code = 0xE000;
        }
        if let Some(next) = char::from_u32(code) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_successor_begins() {
        let cases = [
            ("", None),
            ("a", Some("b")),
            ("a%", Some("a&")),
            ("a_", Some("a`")),
            ("a/", Some("a0")),
            ("\u{d7ff}", Some("\u{e000}")),
            ("a\u{10ffff}", Some("b")),
            ("\u{10ffff}\u{10ffff}", None),
            ("\u{7f}", Some("\u{80}")),
        ];
        for (prefix, expected) in cases {
            assert_eq!(successor(prefix).as_deref(), expected, "{prefix:?}");
            if let Some(upper) = successor(prefix) {
                assert!(prefix.as_bytes() < upper.as_bytes());
                let inside = format!("{prefix}\u{10ffff}\u{10ffff}");
                assert!(inside.as_bytes() < upper.as_bytes(), "{prefix:?}");
            }
        }
    }

    fn row(key: &str) -> ObjectRow {
        ObjectRow {
            key: key.into(),
            size: 0,
            state: ObjectState::Pending,
            attempts: 0,
            error_kind: None,
            error_message: None,
            dest_etag: None,
            partition: None,
            group: None,
            changed_at: None,
        }
    }

    /// Reads `rows` (key, matches) as the SQLite ledger does, up to the budget and one match
    /// more than the page; the page's keys and its next cursor.
    fn page(limit: u32, rows: &[(&str, bool)]) -> (Vec<String>, Option<String>) {
        let query = ObjectQuery {
            limit,
            ..ObjectQuery::default()
        };
        let (mut matched, mut n_read, mut last_read) = (Vec::new(), 0, None);
        for (key, matches) in rows.iter().take(query.budget() as usize) {
            n_read += 1;
            last_read = Some(key.to_string());
            if *matches {
                matched.push(row(key));
                if matched.len() > query.page_size() as usize {
                    break;
                }
            }
        }
        let page = settle(&query, matched, n_read, last_read);
        (page.objects.into_iter().map(|o| o.key).collect(), page.next)
    }

    #[test]
    fn a_page_says_where_the_next_begins() {
        let keys = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        // More matches than the page holds: the next page starts after its last.
        assert_eq!(
            page(2, &[("a", true), ("b", false), ("c", true), ("d", true)]),
            (keys(&["a", "c"]), Some("c".into()))
        );
        // Exactly the page, then the range ends: no next page.
        assert_eq!(
            page(2, &[("a", true), ("b", true), ("c", false)]),
            (keys(&["a", "b"]), None)
        );
        assert_eq!(page(2, &[]), (keys(&[]), None));
        // The budget runs out first: the next page starts after the last row read.
        let many: Vec<String> = (0..6000).map(|i| format!("k{i:05}")).collect();
        let rows: Vec<(&str, bool)> = many.iter().map(|k| (k.as_str(), k == "k00007")).collect();
        assert_eq!(page(3, &rows), (keys(&["k00007"]), Some("k04999".into())));
        let rows: Vec<(&str, bool)> = many.iter().map(|k| (k.as_str(), k == "k04999")).collect();
        assert_eq!(page(3, &rows), (keys(&["k04999"]), Some("k04999".into())));
    }

    #[test]
    fn the_cursor_and_the_prefix_make_one_range() {
        let range = |prefix: Option<&str>, after: Option<&str>| {
            let query = ObjectQuery {
                prefix: prefix.map(str::to_owned),
                after: after.map(str::to_owned),
                ..ObjectQuery::default()
            };
            let range = query.range();
            (range.lower, range.excluded, range.upper)
        };
        let s = |s: &str| Some(s.to_owned());
        assert_eq!(range(None, None), (String::new(), None, None));
        assert_eq!(range(Some("a/"), None), ("a/".into(), None, s("a0")));
        assert_eq!(
            range(Some("a/"), Some("a/x")),
            ("a/x".into(), s("a/x"), s("a0"))
        );
        // A cursor before the prefix: the prefix is the start.
        assert_eq!(range(Some("b"), Some("a")), ("b".into(), s("a"), s("c")));
        assert_eq!(range(None, Some("k")), ("k".into(), s("k"), None));
    }
}
