//! All-or-nothing groups end to end (issue 11, point 2): a group whose member cannot be read is
//! rolled back, what was at the destination before survives, and a run killed in the middle of
//! a rollback is finished by the next one, never leaving a group half.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use godwit_s3_server::ServerOptions;
use support::{Target, bytes, ledger, path_str};

/// The source's objects of group `c1/v1`: six parts, of which the third cannot be read.
const UNREADABLE: &str = "c1/v1/3.ts";

fn group_keys() -> Vec<String> {
    (1..=6).map(|i| format!("c1/v1/{i}.ts")).collect()
}

/// Fills a source bucket: group c1/v1 (six objects, the third unreadable) and group c1/v2 (two).
async fn fill_source(source: &Target) -> (String, BTreeMap<String, Vec<u8>>) {
    let bucket = source.bucket("groups-src").await;
    let mut objects = BTreeMap::new();
    for (i, key) in group_keys().into_iter().enumerate() {
        objects.insert(key, bytes(i as u64 + 1, 1000 + i));
    }
    objects.insert("c1/v2/1.ts".to_owned(), bytes(21, 500));
    objects.insert("c1/v2/2.ts".to_owned(), bytes(22, 600));
    for (key, body) in &objects {
        source.put(&bucket, key, body).await;
    }
    (bucket, objects)
}

fn migrate(
    source: &Target,
    dest: &Target,
    source_bucket: &str,
    dest_bucket: &str,
    state: &std::path::Path,
) -> tokio::process::Command {
    let mut command = support::godwit();
    command
        .args([
            "migrate",
            &format!("s3://{source_bucket}"),
            &format!("s3://{dest_bucket}"),
        ])
        .args(["--json", "--no-progress", "--state", &path_str(state)])
        .args(["--group-by", "prefix:2", "--max-attempts", "1"])
        .args(["--source-endpoint", &source.endpoint])
        .args(["--dest-endpoint", &dest.endpoint]);
    command
}

/// The fail queue, key by key: (class, message).
async fn fail_queue(state: &std::path::Path) -> BTreeMap<String, (String, String)> {
    let mut command = support::godwit();
    command.args(["failed", "--json", "--state", &path_str(state)]);
    let run = support::run(command).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.json()["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_owned(),
                (
                    f["class"].as_str().unwrap_or_default().to_owned(),
                    f["error"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

/// A group whose third object cannot be read is rolled back: nothing this run wrote for it stays
/// at the destination, the object that was there before the run is untouched, the group's
/// members join the fail queue with the group's reason, and the other group commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_whose_third_object_cannot_be_read_is_rolled_back() {
    let source = Target::with_options(ServerOptions {
        unreadable_suffix: Some(UNREADABLE),
        ..ServerOptions::default()
    })
    .await;
    let dest = Target::s3s_fs().await;
    let (source_bucket, objects) = fill_source(&source).await;
    let dest_bucket = dest.bucket("groups-dst").await;
    // Already there before the run, the same bytes as the source's: it must survive.
    dest.put(&dest_bucket, "c1/v1/6.ts", &objects["c1/v1/6.ts"])
        .await;
    let before = dest.etag(&dest_bucket, "c1/v1/6.ts").await;
    let work = tempfile::tempdir().unwrap();
    let state = ledger(&work);

    let run = support::run(migrate(
        &source,
        &dest,
        &source_bucket,
        &dest_bucket,
        &state,
    ))
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let summary = run.json();
    assert_eq!(summary["groups_rolled_back_this_run"], 1, "{summary}");
    assert_eq!(summary["groups_committed_this_run"], 1, "{summary}");
    assert_eq!(summary["already_present"], 1, "{summary}");
    assert_eq!(summary["copied"], 2, "{summary}");
    assert_eq!(summary["failed"], 5, "{summary}");

    let keys = dest.keys(&dest_bucket).await;
    assert_eq!(keys, ["c1/v1/6.ts", "c1/v2/1.ts", "c1/v2/2.ts"], "{run:?}");
    assert_eq!(dest.etag(&dest_bucket, "c1/v1/6.ts").await, before);
    assert_eq!(
        dest.get(&dest_bucket, "c1/v2/2.ts").await,
        objects["c1/v2/2.ts"]
    );

    let failed = fail_queue(&state).await;
    assert_eq!(
        failed.keys().cloned().collect::<Vec<_>>(),
        [
            "c1/v1/1.ts",
            "c1/v1/2.ts",
            "c1/v1/3.ts",
            "c1/v1/4.ts",
            "c1/v1/5.ts"
        ],
        "{failed:?}"
    );
    assert_eq!(failed["c1/v1/3.ts"].0, "access_denied", "{failed:?}");
    for key in ["c1/v1/1.ts", "c1/v1/2.ts", "c1/v1/4.ts", "c1/v1/5.ts"] {
        let (class, message) = &failed[key];
        assert_eq!(class, "rolled_back", "{key}: {failed:?}");
        assert!(
            message.contains("group 'c1/v1' rolled back: c1/v1/3.ts ended failed"),
            "{key}: {message}"
        );
    }
}

/// `kill -9` in the middle of a rollback (deletes answered slowly, the run killed once some are
/// done and others are not): the next run finishes it, and the group ends rolled back whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_killed_half_way_is_finished_by_the_next_run() {
    let source = Target::with_options(ServerOptions {
        unreadable_suffix: Some(UNREADABLE),
        ..ServerOptions::default()
    })
    .await;
    let dest = Target::with_options(ServerOptions {
        delete_delay: Duration::from_millis(700),
        ..ServerOptions::default()
    })
    .await;
    let (source_bucket, _objects) = fill_source(&source).await;
    let dest_bucket = dest.bucket("groups-dst").await;
    let work = tempfile::tempdir().unwrap();
    let state = ledger(&work);
    let in_group = |keys: &[String]| keys.iter().filter(|k| k.starts_with("c1/v1/")).count();

    let mut first = migrate(&source, &dest, &source_bucket, &dest_bucket, &state)
        .spawn()
        .unwrap();
    let requests = dest.requests().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The group's five readable objects are written, then taken back one at a time: kill the
    // run while the third delete is under way.
    while requests.get("DeleteObject") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rollback began: {:?}",
            requests.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let left = in_group(&dest.keys(&dest_bucket).await);
    assert!(
        (1..5).contains(&left),
        "the kill should land half-way through the rollback: {left} of the group's 5 objects left"
    );

    let second = support::run(migrate(
        &source,
        &dest,
        &source_bucket,
        &dest_bucket,
        &state,
    ))
    .await;
    assert_eq!(second.code, Some(1), "{second:?}");
    assert_eq!(
        in_group(&dest.keys(&dest_bucket).await),
        0,
        "the group is rolled back whole: {second:?}"
    );
    // The group's six objects in the fail queue (the five readable ones rolled back), the other
    // group's two copied.
    let summary = second.json();
    assert_eq!(summary["failed"], 6, "{summary}");
    assert_eq!(summary["copied"], 2, "{summary}");
    assert_eq!(summary["pending"], 0, "{summary}");
    let failed = fail_queue(&state).await;
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert_eq!(
        failed
            .values()
            .filter(|(class, _)| class == "rolled_back")
            .count(),
        5,
        "{failed:?}"
    );
}
