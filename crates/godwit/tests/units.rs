//! Groups and partitions end to end (issue 11): the rules that place each object, what the
//! ledger and `godwit status` show of them.

mod support;

use support::{bytes, ledger, path_str, write_tree};

/// `--partition-by` and `--group-by` place each object as the scan records it; `status --json`
/// counts each partition (the objects no partition takes apart); a re-run under another rule
/// places them again without copying anything twice.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_recorded_counted_and_follow_a_new_rule() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(
        &source,
        &[
            ("c1/v1/a.ts", bytes(1, 10)),
            ("c1/v1/b.ts", bytes(2, 20)),
            ("c1/v2/a.ts", bytes(3, 30)),
            ("c2/v1/a.ts", bytes(4, 40)),
            ("top.txt", bytes(5, 50)),
        ],
    );
    // Twenty more groups of three, for packets (16 objects at --concurrency 1) to cut.
    let more: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("c3/v{:02}/{i:02}.ts", i / 3), bytes(100 + i, 5)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        more.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("units").await;
    let state = ledger(&work);
    let migrate = |partition_by: &'static str| {
        let mut command = support::godwit();
        command
            .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
            .args(["--json", "--no-progress", "--state", &path_str(&state)])
            .args(["--group-by", "prefix:2", "--partition-by", partition_by])
            .args(["--concurrency", "1"])
            .args(["--dest-endpoint", &target.endpoint]);
        command
    };
    let status = || async {
        let mut command = support::godwit();
        command.args(["status", "--json", "--state", &path_str(&state)]);
        let run = support::run(command).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        run.json()["migrations"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().map(str::to_owned),
                    p["objects"]["copied"].as_u64().unwrap(),
                    p["bytes"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };

    let first = support::run(migrate("prefix:1")).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    let mut command = support::godwit();
    command.args(["status", "--json", "--state", &path_str(&state)]);
    let shown = support::run(command).await.json();
    assert!(
        shown["migrations"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "migrated"),
        "{shown}"
    );
    assert_eq!(first.n("copied"), 65, "{first:?}");
    assert_eq!(
        status().await,
        [
            (None, 1, 50),
            (Some("c1".to_owned()), 3, 60),
            (Some("c2".to_owned()), 1, 40),
            (Some("c3".to_owned()), 60, 300),
        ]
    );
    let db = rusqlite::Connection::open(&state).unwrap();
    let group: Option<String> = db
        .query_row(
            "SELECT group_key FROM objects WHERE key = 'c1/v1/b.ts'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(group.as_deref(), Some("c1/v1"));
    // Each group was claimed whole: one packet (one fencing token) for all its objects.
    let split: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM (SELECT group_key FROM objects WHERE group_key IS NOT NULL
               GROUP BY group_key HAVING COUNT(DISTINCT lease_token) > 1)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(split, 0, "a group was split between packets");
    drop(db);

    // Another rule: the objects are placed again; none is copied again.
    let second = support::run(migrate("prefix:2")).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(
        (second.n("copied"), second.n("copied_this_run")),
        (65, 0),
        "{second:?}"
    );
    let placed = status().await;
    assert_eq!(
        placed[..4],
        [
            (None, 1, 50),
            (Some("c1/v1".to_owned()), 2, 30),
            (Some("c1/v2".to_owned()), 1, 30),
            (Some("c2/v1".to_owned()), 1, 40),
        ]
    );
    assert_eq!(placed.len(), 4 + 20, "{placed:?}");
}

/// A rule that does not parse stops the run before anything is written (exit 2), naming the
/// option and how to write it.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_rule_is_refused_with_how_to_write_it() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("a/b.txt", bytes(1, 10))]);
    let bucket = target.bucket("bad-rule").await;
    for (option, rule, says) in [
        ("--group-by", "prefix:0", "prefix:N"),
        ("--partition-by", "regex:(", "does not parse"),
        ("--partition-by", "course", "regex:PATTERN"),
    ] {
        let mut command = support::godwit();
        command
            .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
            .args([
                "--json",
                "--no-progress",
                "--state",
                &path_str(&ledger(&work)),
            ])
            .args([option, rule, "--dest-endpoint", &target.endpoint]);
        let run = support::run(command).await;
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(
            run.stderr.contains(&format!("{option} '{rule}'")) && run.stderr.contains(says),
            "{run:?}"
        );
    }
    assert!(target.keys(&bucket).await.is_empty());
}

/// The dry run counts each partition: its objects and bytes, what a run would copy of them, and
/// its groups; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn the_dry_run_counts_each_partition_and_its_groups() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(
        &source,
        &[
            ("c1/v1/a.ts", bytes(1, 10)),
            ("c1/v1/b.ts", bytes(2, 20)),
            ("c1/v2/a.ts", bytes(3, 30)),
            ("c2/v1/a.ts", bytes(4, 40)),
            ("c2/v1/skip.tmp", bytes(6, 60)),
            ("top.txt", bytes(5, 50)),
        ],
    );
    let bucket = target.bucket("plan-units").await;
    let state = ledger(&work);
    let mut command = support::godwit();
    command
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args([
            "--dry-run",
            "--json",
            "--no-progress",
            "--state",
            &path_str(&state),
        ])
        .args(["--group-by", "prefix:2", "--partition-by", "prefix:1"])
        .args(["--exclude", "*.tmp", "--dest-endpoint", &target.endpoint]);
    let run = support::run(command).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let partitions: Vec<(Option<String>, u64, u64, u64, u64)> = run.json()["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().map(str::to_owned),
                p["scanned"].as_u64().unwrap(),
                p["to_copy"].as_u64().unwrap(),
                p["bytes_to_copy"].as_u64().unwrap(),
                p["groups"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        [
            (None, 1, 1, 50, 0),
            (Some("c1".to_owned()), 3, 3, 60, 2),
            (Some("c2".to_owned()), 1, 1, 40, 1),
        ]
    );
    assert!(target.keys(&bucket).await.is_empty());
    assert!(!state.exists(), "a dry run made a ledger");
}

/// `godwit plan` (the dry run) sees the conflicts a run would meet: a key the destination holds
/// with another size is counted in its partition and listed, one with the same size is counted
/// as already there; exit 1, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn the_plan_shows_the_conflicts_it_can_already_see() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(
        &source,
        &[
            ("c1/v1/a.ts", bytes(1, 10)),
            ("c1/v1/b.ts", bytes(2, 20)),
            ("c2/v1/a.ts", bytes(3, 30)),
        ],
    );
    let bucket = target.bucket("plan-conflicts").await;
    target.put(&bucket, "c1/v1/b.ts", b"someone else's").await;
    target.put(&bucket, "c2/v1/a.ts", &bytes(3, 30)).await;
    let state = ledger(&work);
    let mut command = support::godwit();
    command
        .args(["plan", &path_str(&source), &format!("s3://{bucket}")])
        .args(["--json", "--no-progress", "--state", &path_str(&state)])
        .args(["--group-by", "prefix:2", "--partition-by", "prefix:1"])
        .args(["--dest-endpoint", &target.endpoint]);
    let run = support::run(command).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let plan = run.json();
    assert_eq!(plan["conflicts"], 1, "{plan}");
    assert_eq!(plan["at_destination"], 1, "{plan}");
    assert_eq!(plan["problems"][0]["key"], "c1/v1/b.ts", "{plan}");
    assert_eq!(plan["partitions"][0]["conflicts"], 1, "{plan}");
    assert_eq!(plan["partitions"][1]["at_destination"], 1, "{plan}");
    assert!(
        run.stderr.contains("would be left as a conflict"),
        "{run:?}"
    );
    assert_eq!(target.keys(&bucket).await.len(), 2);
    assert!(!state.exists(), "a dry run made a ledger");
}
