//! A migration's objects a page at a time (the dashboard's listing): by prefix, by state, in
//! key byte order, each call reading a bounded stretch.

use godwit_state::{ObjectPage, ObjectQuery};

use super::*;

fn query(
    prefix: Option<&str>,
    state: Option<ObjectState>,
    after: Option<&str>,
    limit: u32,
) -> ObjectQuery {
    ObjectQuery {
        prefix: prefix.map(str::to_owned),
        state,
        after: after.map(str::to_owned),
        limit,
    }
}

fn keys(page: &ObjectPage) -> Vec<&str> {
    page.objects.iter().map(|o| o.key.as_str()).collect()
}

/// A migration of `keys`, all pending but those whose key holds `x`, which failed at the scan.
async fn migration_of(store: &dyn Store, keys: &[&str]) -> MigrationId {
    let migration = store.open_migration(&spec()).await.unwrap().id;
    store.start_pass(migration, "").await.unwrap();
    let batch = keys
        .iter()
        .map(|key| ScannedObject {
            scanned: if key.contains('x') {
                Scanned::Unreadable {
                    kind: "access_denied".into(),
                    message: format!("{key} denied"),
                }
            } else {
                Scanned::Wanted
            },
            group: Some("g".into()),
            partition: key.split_once('/').map(|(p, _)| p.to_owned()),
            ..object(key, key.len() as u64, "1")
        })
        .collect();
    store
        .record_scanned(migration, 1, batch, None)
        .await
        .unwrap();
    migration
}

/// A prefix is taken byte for byte: `%` and `_` are characters like any other, not patterns;
/// keys come in byte order (UTF-8's); a state filter keeps only its objects, each with what
/// the dashboard shows of it.
pub(super) async fn a_page_holds_the_keys_under_a_prefix_taken_byte_for_byte(store: &dyn Store) {
    let all = [
        "a",
        "a%",
        "a%b",
        "a%c",
        "a&",
        "a_",
        "a_b",
        "aXb",
        "a/1",
        "a/x2",
        "ab",
        "b",
        "\u{e9}",
        "a\u{10ffff}",
        "b\u{10ffff}x",
    ];
    let migration = migration_of(store, &all).await;
    let page = |prefix: Option<&'static str>, state| async move {
        store
            .objects_page(migration, query(prefix, state, None, 100))
            .await
            .unwrap()
    };
    let everything = page(None, None).await;
    assert_eq!(
        keys(&everything),
        [
            "a",
            "a%",
            "a%b",
            "a%c",
            "a&",
            "a/1",
            "a/x2",
            "aXb",
            "a_",
            "a_b",
            "ab",
            "a\u{10ffff}",
            "b",
            "b\u{10ffff}x",
            "\u{e9}"
        ]
    );
    assert_eq!(everything.next, None);
    let under_a = keys(&everything)[..12].to_vec();
    let cases: [(&str, &[&str]); 7] = [
        ("a%", &["a%", "a%b", "a%c"]),
        ("a_", &["a_", "a_b"]),
        ("a/", &["a/1", "a/x2"]),
        ("a", &under_a),
        ("a\u{10ffff}", &["a\u{10ffff}"]),
        ("\u{e9}", &["\u{e9}"]),
        ("zz", &[]),
    ];
    for (prefix, expected) in cases {
        let found = page(Some(prefix), None).await;
        assert_eq!(keys(&found), expected, "prefix {prefix:?}");
        assert_eq!(found.next, None, "prefix {prefix:?}");
    }
    let failed = page(Some("a"), Some(ObjectState::Failed)).await;
    assert_eq!(keys(&failed), ["a/x2"]);
    let row = &failed.objects[0];
    assert_eq!(row.state, ObjectState::Failed);
    assert_eq!(row.size, 4);
    assert_eq!(row.error_kind.as_deref(), Some("access_denied"));
    assert_eq!(row.error_message.as_deref(), Some("a/x2 denied"));
    assert_eq!(row.partition.as_deref(), Some("a"));
    assert_eq!(row.group.as_deref(), Some("g"));
    assert_eq!(row.attempts, 0);
    assert!(row.changed_at.is_some());
    assert_eq!(row.dest_etag, None);
    let pending = page(None, Some(ObjectState::Pending)).await;
    assert_eq!(pending.objects.len(), all.len() - 2);
    assert!(
        page(None, Some(ObjectState::Copied))
            .await
            .objects
            .is_empty()
    );
}

/// Pages follow one another by their cursor until the listing is through, under a prefix and
/// a state as well; a page holds at least one object whatever the limit asked.
pub(super) async fn pages_follow_one_another_by_their_cursor(store: &dyn Store) {
    let all: Vec<String> = (0..25).map(|i| format!("k/{i:02}")).collect();
    let mut with_others: Vec<&str> = all.iter().map(String::as_str).collect();
    with_others.extend(["j", "k0", "l/1", "k/0x"]);
    let migration = migration_of(store, &with_others).await;
    for (state, limit) in [
        (None, 7),
        (Some(ObjectState::Pending), 5),
        (None, 25),
        (None, 0),
    ] {
        let mut listed = Vec::new();
        let mut after = None;
        let mut n_pages = 0;
        loop {
            let page = store
                .objects_page(migration, query(Some("k/"), state, after.as_deref(), limit))
                .await
                .unwrap();
            n_pages += 1;
            assert!(page.objects.len() <= limit.max(1) as usize);
            listed.extend(page.objects.iter().map(|o| o.key.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut expected = all.clone();
        if state.is_none() {
            expected.push("k/0x".into());
            expected.sort();
        }
        assert_eq!(listed, expected, "{state:?} by {limit}");
        let n_expected = expected.len().div_ceil(limit.max(1) as usize);
        assert_eq!(n_pages, n_expected, "{state:?} by {limit}");
    }
    // A cursor before the prefix starts at the prefix; one past it ends the listing.
    let page = store
        .objects_page(migration, query(Some("k/"), None, Some("a"), 2))
        .await
        .unwrap();
    assert_eq!(keys(&page), ["k/00", "k/01"]);
    let page = store
        .objects_page(migration, query(Some("k/"), None, Some("k0"), 2))
        .await
        .unwrap();
    assert_eq!(page, ObjectPage::default());
    let other = store
        .open_migration(&MigrationSpec {
            name: "empty".into(),
            ..spec()
        })
        .await
        .unwrap();
    let page = store
        .objects_page(other.id, query(None, None, None, 10))
        .await
        .unwrap();
    assert_eq!(page, ObjectPage::default());
}

/// A state few objects are in, among many: each call reads a bounded stretch of keys (its
/// budget) and says where to go on, even with nothing found yet.
pub(super) async fn a_page_reads_a_bounded_stretch_however_few_objects_match(store: &dyn Store) {
    let all: Vec<String> = (0..6100)
        .map(|i| match i {
            3 | 6050 => format!("k{i:05}x"),
            _ => format!("k{i:05}"),
        })
        .collect();
    let keys_of: Vec<&str> = all.iter().map(String::as_str).collect();
    let migration = migration_of(store, &keys_of).await;
    let failed = |after: Option<&str>| query(None, Some(ObjectState::Failed), after, 10);
    assert_eq!(failed(None).budget(), 5000);
    let first = store.objects_page(migration, failed(None)).await.unwrap();
    assert_eq!(keys(&first), ["k00003x"]);
    // The first 5,000 keys were read: the next call starts after the last of them.
    assert_eq!(first.next.as_deref(), Some("k04999"));
    let second = store
        .objects_page(migration, failed(first.next.as_deref()))
        .await
        .unwrap();
    assert_eq!(keys(&second), ["k06050x"]);
    assert_eq!(second.next, None);
    // Without a filter, a page stops at its limit.
    let page = store
        .objects_page(migration, query(None, None, Some("k06090"), 10))
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 9);
    assert_eq!(page.next, None);
}
