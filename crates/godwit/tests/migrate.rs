//! `godwit migrate` end to end: the real binary against real S3 servers.

mod support;

use support::{Kind, bytes, ledger, migrate, path_str, targets, write_tree};

/// Keys users' trees really hold, including the characters URLs and signatures trip on.
const ODD_KEYS: [&str; 12] = [
    "top.txt",
    "a/b/c/deep.txt",
    "with space.txt",
    "ünïcødé/日本語.txt",
    "plus+sign.txt",
    "percent%20.txt",
    "hash#.txt",
    "question?.txt",
    "equals=and&amp.txt",
    "empty.bin",
    "dir with space/file (1).txt",
    "tilde~quote'.txt",
];

#[tokio::test(flavor = "multi_thread")]
async fn copies_a_tree_with_odd_keys_exactly() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let files: Vec<(&str, Vec<u8>)> = ODD_KEYS
            .iter()
            .enumerate()
            .map(|(i, key)| {
                (
                    *key,
                    if key.ends_with("empty.bin") {
                        Vec::new()
                    } else {
                        bytes(i as u64, 100 + i * 1000)
                    },
                )
            })
            .collect();
        write_tree(&source, &files);
        let bucket = target.bucket("tree").await;

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}/pre/fix"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(run.code, Some(0), "{:?}: {run:?}", target.kind);
        assert_eq!(run.n("scanned"), ODD_KEYS.len() as u64);
        assert_eq!(run.n("copied"), ODD_KEYS.len() as u64);
        let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(run.n("bytes_copied"), total);
        let mut expected: Vec<String> = ODD_KEYS.iter().map(|k| format!("pre/fix/{k}")).collect();
        expected.sort();
        assert_eq!(target.keys(&bucket).await, expected, "{:?}", target.kind);
        for (key, content) in &files {
            assert_eq!(
                &target.get(&bucket, &format!("pre/fix/{key}")).await,
                content,
                "{:?} {key}",
                target.kind
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_objects_arrive_byte_for_byte() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        // 5 MiB parts (the S3 minimum): 12 MiB + 1 byte is three parts, the last one byte long... plus one.
        let big = bytes(42, (12 << 20) + 1);
        let small = bytes(43, 1000);
        write_tree(
            &source,
            &[("video/big.bin", big.clone()), ("small.txt", small.clone())],
        );
        let bucket = target.bucket("multipart").await;
        let before = target.requests().map(|r| r.get("UploadPart"));

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &ledger(&work),
            &["--multipart-threshold", "6MiB", "--part-size", "5MiB"],
        )
        .await;

        assert_eq!(run.code, Some(0), "{:?}: {run:?}", target.kind);
        assert_eq!(run.n("copied"), 2);
        assert!(
            target.get(&bucket, "video/big.bin").await == big,
            "{:?}: multipart object differs",
            target.kind
        );
        assert_eq!(target.get(&bucket, "small.txt").await, small);
        if let (Some(before), Some(requests)) = (before, target.requests()) {
            assert_eq!(
                requests.get("UploadPart") - before,
                3,
                "three parts of 5 MiB"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_migration_rerun_sends_nothing() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("a.txt", bytes(1, 10)),
                ("b/c.txt", bytes(2, 20)),
                ("big.bin", bytes(3, 7 << 20)),
            ],
        );
        let bucket = target.bucket("rerun").await;
        let dest = format!("s3://{bucket}/x");
        let args = ["--multipart-threshold", "6MiB", "--part-size", "5MiB"];
        let first = migrate(&target, &path_str(&source), &dest, &ledger(&work), &args).await;
        assert_eq!(first.code, Some(0), "{first:?}");
        assert_eq!(first.n("copied_this_run"), 3);
        let writes = |t: &support::Target| {
            t.requests().map(|r| {
                [
                    "PutObject",
                    "UploadPart",
                    "CreateMultipartUpload",
                    "CompleteMultipartUpload",
                    "CopyObject",
                ]
                .iter()
                .map(|op| r.get(op))
                .sum::<u64>()
            })
        };
        let writes_before = writes(&target);

        let second = migrate(&target, &path_str(&source), &dest, &ledger(&work), &args).await;

        assert_eq!(second.code, Some(0), "{second:?}");
        assert_eq!(second.n("copied_this_run"), 0);
        assert_eq!(second.n("copied"), 3, "the ledger still knows all three");
        assert_eq!(
            second.n("pass"),
            2,
            "a finished migration re-run is a delta pass"
        );
        if let Some(before) = writes_before {
            assert_eq!(
                writes(&target),
                Some(before),
                "a re-run sent a write request"
            );
        }

        // A new file in the source is picked up by the next run, and only it is sent.
        write_tree(&source, &[("new.txt", bytes(4, 5))]);
        let third = migrate(&target, &path_str(&source), &dest, &ledger(&work), &args).await;
        assert_eq!(third.code, Some(0), "{third:?}");
        assert_eq!(third.n("copied_this_run"), 1);
        assert_eq!(target.get(&bucket, "x/new.txt").await, bytes(4, 5));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_objects_are_already_present_or_conflict_and_never_replaced() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("same.txt", bytes(1, 100)),
                ("different.txt", bytes(2, 100)),
                ("longer.txt", bytes(3, 10)),
                ("new.txt", bytes(4, 10)),
            ],
        );
        let bucket = target.bucket("exists").await;
        target.put(&bucket, "same.txt", &bytes(1, 100)).await;
        let theirs = bytes(99, 100);
        target.put(&bucket, "different.txt", &theirs).await;
        target.put(&bucket, "longer.txt", &bytes(3, 11)).await;

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(
            run.code,
            Some(1),
            "{:?}: conflicts exit 1: {run:?}",
            target.kind
        );
        assert_eq!(run.n("scanned"), 4);
        assert_eq!(run.n("copied"), 1);
        assert_eq!(run.n("already_present"), 1);
        assert_eq!(run.n("conflict"), 2);
        assert_eq!(
            target.get(&bucket, "different.txt").await,
            theirs,
            "a conflict was overwritten"
        );
        assert_eq!(
            target.get(&bucket, "longer.txt").await,
            bytes(3, 11),
            "a conflict was overwritten"
        );
        assert!(
            run.stderr.contains("different.txt") && run.stderr.contains("conflict"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("left alone"), "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_writes_nothing() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("a.txt", bytes(1, 10)),
                ("b.log", bytes(2, 20)),
                ("c/d.txt", bytes(3, 30)),
            ],
        );
        let bucket = target.bucket("dry").await;
        let state = ledger(&work);

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &state,
            &["--dry-run", "--exclude", "*.log"],
        )
        .await;

        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.n("scanned"), 3);
        assert_eq!(run.n("to_copy"), 2);
        assert_eq!(run.n("bytes_to_copy"), 40);
        assert_eq!(run.n("excluded"), 1);
        assert_eq!(target.keys(&bucket).await, Vec::<String>::new());
        assert!(!state.exists(), "a dry run created the ledger");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_exclude_objects_and_count_them() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("keep/a.txt", bytes(1, 10)),
                ("keep/b.tmp", bytes(2, 10)),
                ("skip/c.txt", bytes(3, 10)),
            ],
        );
        let bucket = target.bucket("filter").await;

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &ledger(&work),
            &["--include", "keep/**", "--exclude", "*.tmp"],
        )
        .await;

        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(
            (run.n("scanned"), run.n("copied"), run.n("excluded")),
            (3, 1, 2)
        );
        assert_eq!(target.keys(&bucket).await, vec!["keep/a.txt".to_owned()]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bucket_to_bucket() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let from = target.bucket("from").await;
        let to = target.bucket("to").await;
        let objects: Vec<(String, Vec<u8>)> = (0..30)
            .map(|i| (format!("photos/{i:02} é+%.jpg"), bytes(i, 500 + i as usize)))
            .collect();
        for (key, content) in &objects {
            target.put(&from, key, content).await;
        }
        target.put(&from, "other/outside-prefix.txt", b"no").await;

        let run = migrate(
            &target,
            &format!("s3://{from}/photos"),
            &format!("s3://{to}/archive"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(run.code, Some(0), "{:?}: {run:?}", target.kind);
        assert_eq!(run.n("copied"), 30);
        for (key, content) in &objects {
            let relative = key.strip_prefix("photos/").unwrap();
            assert_eq!(
                &target.get(&to, &format!("archive/{relative}")).await,
                content
            );
        }
        assert_eq!(target.keys(&to).await.len(), 30, "probe objects were left");
        // s3s-fs (as this suite runs it) refuses a copy onto an existing key, so the copies are
        // server-side; moto ignores that condition, so godwit streams instead of risking a
        // replaced object.
        let server_side = target.kind == Kind::S3sFs;
        assert_eq!(
            run.json()["server_side_copy"],
            server_side,
            "{:?}",
            target.kind
        );
        assert_eq!(
            run.n("copied_server_side_this_run"),
            if server_side { 30 } else { 0 }
        );
        let verified = verified_by(&ledger(&work));
        assert_eq!(verified.len(), 30);
        assert_eq!(
            verified.iter().all(|how| how == "copy_etag"),
            server_side,
            "{:?}: {verified:?}",
            target.kind
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_copies_send_no_bytes_and_never_replace() {
    let target = support::Target::s3s_fs().await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let from = target.bucket("from").await;
    let to = target.bucket("to").await;
    for i in 0..20u64 {
        target
            .put(&from, &format!("k/{i:02} ü+%#.bin"), &bytes(i, 3000))
            .await;
    }
    target.put(&to, "k/00 ü+%#.bin", &bytes(0, 3000)).await;
    let theirs = bytes(99, 3000);
    target.put(&to, "k/01 ü+%#.bin", &theirs).await;
    // What probes of earlier runs left: one that stopped two hours ago (removed), one another
    // process may be running now (kept), and an old object that only has a probe's name (kept);
    // the same for the 16 MiB of zeros of the timed PUT (`large_objects`): one left two hours ago
    // (removed), an old one of that name and size holding other bytes (kept).
    let probe = b"godwit: probe for conditional copies";
    let rate_probe = vec![0u8; 16 << 20];
    let mut not_rate_probe = rate_probe.clone();
    not_rate_probe[12345] = 1;
    let two_hours = std::time::Duration::from_secs(7200);
    for (key, body) in [
        (".godwit-probe-1-1-a", &probe[..]),
        (".godwit-probe-2-2-a", &probe[..]),
        (
            ".godwit-probe-3-3-a",
            &b"godwit: probe for conditional copier"[..],
        ),
        (".godwit-probe-4-4-rate", &rate_probe[..]),
        (".godwit-probe-5-5-rate", &not_rate_probe[..]),
    ] {
        target.put(&to, key, body).await;
    }
    for key in [
        ".godwit-probe-1-1-a",
        ".godwit-probe-3-3-a",
        ".godwit-probe-4-4-rate",
        ".godwit-probe-5-5-rate",
    ] {
        target.age(&to, key, two_hours);
    }
    let before = requests.all();

    let run = migrate(
        &target,
        &format!("s3://{from}"),
        &format!("s3://{to}"),
        &ledger(&work),
        &[],
    )
    .await;

    assert_eq!(run.code, Some(1), "the conflict exits 1: {run:?}");
    assert_eq!(
        run.json()["guarantees"]["no_overwrite"],
        "enforced by server",
        "{run:?}"
    );
    let sent = |op: &str| requests.since(&before, op);
    // One copy per object, and none of their bytes PUT through godwit (the probe's requests
    // are counted apart). Only the conflict was read through godwit, both sides, to compare
    // contents (ETags that differ prove nothing: encrypted objects have ETags that are not their
    // MD5).
    assert_eq!(sent("CopyObject"), 20);
    assert_eq!(sent("PutObject"), 0);
    assert_eq!(sent("GetObject"), 2);
    assert_eq!(
        sent("CopyObject (probe)"),
        1,
        "the destination was probed once"
    );
    assert_eq!(run.json()["server_side_copy"], true);
    assert_eq!(run.n("copied"), 18);
    assert_eq!(run.n("copied_server_side_this_run"), 18);
    assert_eq!(run.n("already_present"), 1);
    assert_eq!(run.n("conflict"), 1);
    assert_eq!(
        target.get(&to, "k/01 ü+%#.bin").await,
        theirs,
        "a conflict was replaced"
    );
    for i in 2..20u64 {
        assert_eq!(
            target.get(&to, &format!("k/{i:02} ü+%#.bin")).await,
            bytes(i, 3000)
        );
    }
    let probes: Vec<String> = target
        .keys(&to)
        .await
        .into_iter()
        .filter(|key| key.starts_with(".godwit-probe-"))
        .collect();
    assert_eq!(
        probes,
        [
            ".godwit-probe-2-2-a",
            ".godwit-probe-3-3-a",
            ".godwit-probe-5-5-rate"
        ],
        "probe objects were left, or others taken"
    );
    assert_eq!(target.keys(&to).await.len(), 23);

    // Asked not to, godwit reads the objects itself.
    let again = target.bucket("streamed").await;
    let second = work.path().join("second.db");
    let run = migrate(
        &target,
        &format!("s3://{from}"),
        &format!("s3://{again}"),
        &second,
        &["--no-server-side-copy"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["server_side_copy"], false);
    assert_eq!(run.n("copied_server_side_this_run"), 0);
    let verified = verified_by(&second);
    assert_eq!(verified.len(), 20);
    assert!(verified.iter().all(|how| how == "checksum"), "{verified:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_objects_are_copied_server_side_in_their_own_parts() {
    const MIB: usize = 1 << 20;
    let target = support::Target::s3s_fs().await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let from = target.bucket("from").await;
    let to = target.bucket("to").await;
    // Cut 5 + 5 + 1 MiB and 6 + 6 MiB; a third with a plain MD5 ETag goes by one CopyObject.
    let first = bytes(1, 11 * MIB);
    let first_etag = target
        .put_in_parts(&from, "parts/first ü+%.bin", &first, 5 * MIB)
        .await;
    let second = bytes(2, 12 * MIB);
    let second_etag = target
        .put_in_parts(&from, "parts/second.bin", &second, 6 * MIB)
        .await;
    target.put(&from, "plain.bin", &bytes(3, 1000)).await;
    // Already at the destination: other bytes, and the same bytes cut otherwise (ETags that
    // differ prove nothing, so both sides are read to tell these two apart).
    let theirs = bytes(4, 12 * MIB);
    target
        .put_in_parts(&to, "parts/conflict.bin", &theirs, 5 * MIB)
        .await;
    target
        .put_in_parts(&from, "parts/conflict.bin", &bytes(5, 12 * MIB), 6 * MIB)
        .await;
    let same = bytes(6, 11 * MIB);
    target
        .put_in_parts(&to, "parts/same.bin", &same, 6 * MIB)
        .await;
    target
        .put_in_parts(&from, "parts/same.bin", &same, 5 * MIB)
        .await;
    let before = requests.all();

    let run = migrate(
        &target,
        &format!("s3://{from}"),
        &format!("s3://{to}"),
        &ledger(&work),
        &[],
    )
    .await;

    assert_eq!(run.code, Some(1), "the conflict exits 1: {run:?}");
    let sent = |op: &str| requests.since(&before, op);
    // 3 + 2 parts copied; those of the two taken keys (2 + 3) too, then their completions refused.
    assert_eq!(sent("UploadPartCopy"), 10);
    assert_eq!(sent("UploadPart"), 0, "no part went through godwit");
    // No PUTs (the probe's requests are counted apart); the plain object is the one copy.
    assert_eq!(sent("PutObject"), 0);
    assert_eq!(sent("CopyObject"), 1);
    assert_eq!(run.n("copied"), 3);
    assert_eq!(run.n("copied_server_side_this_run"), 3);
    assert_eq!(run.n("already_present"), 1);
    assert_eq!(run.n("conflict"), 1);
    assert_eq!(
        target.get(&to, "parts/conflict.bin").await,
        theirs,
        "a conflict was replaced"
    );
    assert_eq!(target.get(&to, "parts/first ü+%.bin").await, first);
    assert_eq!(target.get(&to, "parts/second.bin").await, second);
    // Cut as the source's, the copies have the source's ETags: that is the proof.
    assert_eq!(target.etag(&to, "parts/first ü+%.bin").await, first_etag);
    assert_eq!(target.etag(&to, "parts/second.bin").await, second_etag);
    // By key: first, same, second, plain.
    let verified = verified_by(&ledger(&work));
    assert_eq!(
        verified,
        ["copy_etag", "read_back", "copy_etag", "copy_etag"],
        "{verified:?}"
    );
    // The refused uploads were aborted, not left behind.
    assert_eq!(sent("AbortMultipartUpload"), 2);
}

/// How the ledger says each object was verified, by key.
fn verified_by(state: &std::path::Path) -> Vec<String> {
    let db = rusqlite::Connection::open(state).unwrap();
    db.prepare("SELECT verified_by FROM objects WHERE verified_by IS NOT NULL ORDER BY key")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_entry_fails_with_its_name_and_the_rest_is_copied() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(&source, &[("good.txt", bytes(1, 10))]);
        std::os::unix::fs::symlink(work.path().join("nowhere"), source.join("dangling-link"))
            .unwrap();
        let bucket = target.bucket("unreadable").await;

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(
            (run.n("scanned"), run.n("copied"), run.n("failed")),
            (2, 1, 1)
        );
        assert!(run.stderr.contains("dangling-link"), "{}", run.stderr);
        assert!(run.stderr.contains("retry-failed"), "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_midway_resumes_to_the_same_end() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let mut files: Vec<(String, Vec<u8>)> = (0..1500)
            .map(|i| (format!("d{}/f{i}.txt", i % 17), bytes(i, 2000)))
            .collect();
        files.push(("big/one.bin".to_owned(), bytes(7, 26 << 20)));
        let borrowed: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        write_tree(&source, &borrowed);
        let bucket = target.bucket("killed").await;
        let dest = format!("s3://{bucket}");
        let state = ledger(&work);
        let args = [
            "--multipart-threshold",
            "6MiB",
            "--part-size",
            "5MiB",
            "--concurrency",
            "8",
        ];

        let mut child = support::migrate_command(&target, &path_str(&source), &dest, &state, &args)
            .spawn()
            .unwrap();
        // Kill once the ledger shows work under way.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let copied = rusqlite::Connection::open_with_flags(
                &state,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .and_then(|db| {
                db.query_row("SELECT COUNT(*) FROM objects WHERE state = 2", [], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .unwrap_or(0);
            if copied >= 100 || std::time::Instant::now() > deadline {
                break;
            }
        }
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(
            status.code(),
            None,
            "the first run ended before it was killed; the test proves nothing"
        );

        let second = migrate(&target, &path_str(&source), &dest, &state, &args).await;

        assert_eq!(second.code, Some(0), "{:?}: {second:?}", target.kind);
        assert_eq!(second.n("scanned"), files.len() as u64);
        assert_eq!(second.n("copied"), files.len() as u64, "{second:?}");
        assert!(
            second.n("copied_this_run") < files.len() as u64,
            "the re-run started over"
        );
        assert_eq!(target.keys(&bucket).await.len(), files.len());
        assert!(target.get(&bucket, "big/one.bin").await == files.last().unwrap().1);
        for (key, content) in files.iter().step_by(97) {
            assert_eq!(&target.get(&bucket, key).await, content, "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_exit_2_with_a_message_that_says_what_to_fix() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(&source, &[("a.txt", bytes(1, 10))]);
        let src = path_str(&source);
        let state = ledger(&work);

        let check = |run: support::Run, needles: &[&str]| {
            assert_eq!(run.code, Some(2), "{:?}: {run:?}", target.kind);
            for needle in needles {
                assert!(
                    run.stderr.contains(needle),
                    "{:?}: '{needle}' not in: {}",
                    target.kind,
                    run.stderr
                );
            }
        };
        check(
            migrate(&target, &src, "s3://no-such-bucket-godwit", &state, &[]).await,
            &["no-such-bucket-godwit", "does not exist"],
        );
        check(
            migrate(&target, &src, "gs://bucket", &state, &[]).await,
            &["unsupported scheme"],
        );
        check(
            migrate(&target, &src, "/tmp/local-dest", &state, &[]).await,
            &["godwit writes to S3"],
        );
        check(
            migrate(&target, "/no/such/dir", "s3://x", &state, &[]).await,
            &["/no/such/dir", "does not exist"],
        );
        check(
            migrate(&target, &src, "s3://x", &state, &["--exclude", "a["]).await,
            &["bad pattern 'a['"],
        );
        check(
            migrate(
                &target,
                &src,
                "s3://x",
                &state,
                &["--part-size", "12 parsecs"],
            )
            .await,
            &["unknown unit"],
        );

        let mut unreachable = support::godwit();
        unreachable
            .args([
                "migrate",
                &src,
                "s3://x",
                "--json",
                "--dest-endpoint",
                "http://127.0.0.1:9",
            ])
            .arg("--state")
            .arg(&state);
        check(
            support::run(unreachable).await,
            &["could not be reached", "127.0.0.1:9"],
        );

        if target.kind == Kind::S3sFs {
            // moto accepts any credentials; s3s-fs checks them.
            let bucket = target.bucket("creds").await;
            let mut wrong = support::godwit();
            wrong
                .args([
                    "migrate",
                    &src,
                    &format!("s3://{bucket}"),
                    "--dest-endpoint",
                    &target.endpoint,
                ])
                .arg("--state")
                .arg(&state)
                .env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
            let run = support::run(wrong).await;
            check(run, &["credentials"]);
            assert!(target.keys(&bucket).await.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_cleanly_with_exit_130_and_a_rerun_finishes() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("d{}/f{i}", i % 13), bytes(i, 500)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("ctrlc").await;
    let dest = format!("s3://{bucket}");
    let state = ledger(&work);

    let child = support::migrate_command(
        &target,
        &path_str(&source),
        &dest,
        &state,
        &["--concurrency", "4"],
    )
    .spawn()
    .unwrap();
    let pid = child.id().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().await.unwrap();
    let stopped = support::Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(stopped.code, Some(130), "{stopped:?}");
    assert!(stopped.json()["interrupted"].as_bool().unwrap());
    assert!(stopped.n("pending") > 0, "{stopped:?}");
    assert!(stopped.stderr.contains("stopping"), "{}", stopped.stderr);

    let second = migrate(&target, &path_str(&source), &dest, &state, &[]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(second.n("copied"), 3000);
    assert_eq!(
        second.n("copied") - second.n("copied_this_run"),
        stopped.n("copied")
    );
    assert_eq!(target.keys(&bucket).await.len(), 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_copies_are_verified_by_what_each_server_offers() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let (first, second) = (bytes(50, 11 << 20), bytes(51, 13 << 20));
        write_tree(
            &source,
            &[("a.bin", first.clone()), ("b.bin", second.clone())],
        );
        let bucket = target.bucket("verify").await;
        let state = ledger(&work);

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &state,
            &[
                "--multipart-threshold",
                "6MiB",
                "--part-size",
                "5MiB",
                "--concurrency",
                "1",
            ],
        )
        .await;

        assert_eq!(run.code, Some(0), "{run:?}");
        let db = rusqlite::Connection::open(&state).unwrap();
        let verified: Vec<String> = db
            .prepare("SELECT verified_by FROM objects ORDER BY key")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Neither server reports a CRC-64/NVME for these multipart objects (s3s-fs keeps none;
        // moto's reply to CompleteMultipartUpload cannot be parsed by the SDK and its HEAD shows
        // none), so godwit proves both by their multipart ETag, made of the parts' MD5s, which it
        // computes until the destination shows it keeps checksums.
        assert_eq!(verified, ["etag_md5", "etag_md5"], "{:?}", target.kind);
        assert!(target.get(&bucket, "a.bin").await == first);
        assert!(target.get(&bucket, "b.bin").await == second);
    }
}

/// Issue 9, point 9: reading the ledger never needs the writer's lock, so `godwit status` works
/// while a migration runs (here: while the lock a running `migrate` holds is held).
#[tokio::test(flavor = "multi_thread")]
async fn status_reads_a_ledger_while_a_migration_holds_it() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("a.txt", bytes(1, 10)), ("b.txt", bytes(2, 20))]);
    let bucket = target.bucket("status").await;
    let state = ledger(&work);
    let run = migrate(
        &target,
        &path_str(&source),
        &format!("s3://{bucket}"),
        &state,
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    // What a running `godwit migrate` holds: the ledger's lock file.
    let lock = std::fs::File::options()
        .write(true)
        .open(format!("{}.lock", state.display()))
        .unwrap();
    lock.try_lock().unwrap();

    let mut command = support::godwit();
    command.args(["status", "--json", "--state"]).arg(&state);
    let status = support::run(command).await;

    assert_eq!(status.code, Some(0), "{status:?}");
    let migrations = &status.json()["migrations"];
    assert_eq!(migrations[0]["objects"]["copied"], 2, "{status:?}");
    // A command that writes still waits its turn, and says why.
    let mut command = support::godwit();
    command.args(["retry-failed", "any", "--state"]).arg(&state);
    let retry = support::run(command).await;
    assert_eq!(retry.code, Some(2), "{retry:?}");
    assert!(retry.stderr.contains("in use"), "{}", retry.stderr);
    drop(lock);
}

/// Issue 9, point 10: file names that are not UTF-8 cannot be S3 keys; two such names that look
/// alike once made printable are still two objects in the ledger, each failed with its name.
#[tokio::test(flavor = "multi_thread")]
async fn file_names_that_are_not_utf8_are_each_counted_and_failed() {
    use std::os::unix::ffi::OsStrExt;
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("good.txt", bytes(1, 10))]);
    for name in [&b"bad\xff.txt"[..], &b"bad\xfe.txt"[..]] {
        std::fs::write(source.join(std::ffi::OsStr::from_bytes(name)), bytes(2, 10)).unwrap();
    }
    let bucket = target.bucket("utf8").await;

    let run = migrate(
        &target,
        &path_str(&source),
        &format!("s3://{bucket}"),
        &ledger(&work),
        &[],
    )
    .await;

    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        (run.n("scanned"), run.n("copied"), run.n("failed")),
        (3, 1, 2),
        "{run:?}"
    );
    assert!(run.stderr.contains("not valid UTF-8"), "{}", run.stderr);
    assert_eq!(target.keys(&bucket).await, ["good.txt"]);
}

/// Issue 9, point 5: godwit's own probe objects (named `.godwit-probe-*`, holding the probe's
/// bytes), left in a bucket by a run that stopped mid-probe, are never migrated out of it, so no
/// later run can take a migrated one for its own leftover and delete it. A user's object that only
/// shares the name is migrated as any other.
#[tokio::test(flavor = "multi_thread")]
async fn probe_objects_are_never_migrated() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let from = target.bucket("from").await;
        let to = target.bucket("to").await;
        let probe = b"godwit: probe for conditional copies";
        target.put(&from, "photos/a.jpg", &bytes(1, 100)).await;
        target.put(&from, ".godwit-probe-1-1-a", probe).await;
        target.put(&from, "photos/.godwit-probe-2-2-b", probe).await;
        target
            .put(&from, "photos/.godwit-probe-notes.txt", b"mine")
            .await;

        let run = migrate(
            &target,
            &format!("s3://{from}"),
            &format!("s3://{to}"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(run.code, Some(0), "{:?}: {run:?}", target.kind);
        assert_eq!(run.n("scanned"), 2, "{run:?}");
        assert_eq!(
            target.keys(&to).await,
            ["photos/.godwit-probe-notes.txt", "photos/a.jpg"],
            "{:?}",
            target.kind
        );
    }
}

/// Issue 9, point 6: a destination inside the source is refused whichever way each side names
/// the one server: one from `AWS_ENDPOINT_URL` and the other by flag, or `localhost` for one and
/// `127.0.0.1` for the other. Otherwise each pass would copy its own copies again.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_inside_the_source_is_refused_however_the_server_is_named() {
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let bucket = target.bucket("overlap").await;
    target.put(&bucket, "a.txt", &bytes(1, 10)).await;
    let port = target.endpoint.rsplit(':').next().unwrap().to_owned();
    let by_name = format!("http://localhost:{port}");
    let cases: [(&str, Option<&str>, Option<&str>); 2] = [
        // One side from the environment, the other by flag.
        (
            target.endpoint.as_str(),
            None,
            Some(target.endpoint.as_str()),
        ),
        // Two names of one server.
        ("", Some(by_name.as_str()), Some(target.endpoint.as_str())),
    ];
    for (from_env, source_flag, dest_flag) in cases {
        let mut command = support::godwit();
        command
            .args([
                "migrate",
                &format!("s3://{bucket}"),
                &format!("s3://{bucket}/copy"),
            ])
            .arg("--state")
            .arg(ledger(&work))
            .args(["--json", "--no-progress"])
            .env("AWS_ENDPOINT_URL", from_env);
        if let Some(endpoint) = source_flag {
            command.args(["--source-endpoint", endpoint]);
        }
        if let Some(endpoint) = dest_flag {
            command.args(["--dest-endpoint", endpoint]);
        }
        let run = support::run(command).await;
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains("overlaps the source"), "{}", run.stderr);
        assert_eq!(
            target.keys(&bucket).await,
            ["a.txt"],
            "something was copied"
        );
    }
}

/// Issue 9, point 6: when the two sides may be one server under names that do not resolve alike
/// (here: one server listening on every loopback address, reached as 127.0.0.1 and 127.0.0.2),
/// the destination prefix is left out of the scan, so no pass copies its own copies.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_prefix_that_may_be_inside_the_source_is_left_out_of_the_scan() {
    let storage = tempfile::tempdir().unwrap();
    let server = godwit_s3_server::LocalS3::start(
        storage.path(),
        "0.0.0.0:0".parse().unwrap(),
        support::ACCESS_KEY,
        support::SECRET_KEY,
    )
    .await
    .unwrap();
    let port = server.addr().port();
    let (one, two) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.2:{port}"),
    );
    let client = support::client(&one, support::ACCESS_KEY, support::SECRET_KEY).await;
    client.create_bucket().bucket("same").send().await.unwrap();
    client
        .put_object()
        .bucket("same")
        .key("a.txt")
        .body(bytes(1, 10).into())
        .send()
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    for pass in 1..=2 {
        let mut command = support::godwit();
        command
            .args(["migrate", "s3://same", "s3://same/copy"])
            .arg("--state")
            .arg(ledger(&work))
            .args(["--json", "--no-progress", "--source-endpoint", &one])
            .args(["--dest-endpoint", &two]);
        let run = support::run(command).await;
        assert_eq!(run.code, Some(0), "pass {pass}: {run:?}");
        assert!(
            run.stderr.contains("left out of the scan"),
            "{}",
            run.stderr
        );
    }
    let listed = client
        .list_objects_v2()
        .bucket("same")
        .send()
        .await
        .unwrap();
    let mut keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["a.txt", "copy/a.txt"],
        "a pass copied its own copies"
    );
}

/// Issue 9, point 2: on every server, objects already at the destination are never replaced,
/// single PUT and multipart alike; where the server ignores `If-None-Match`, godwit looks before
/// writing instead, warns, and the summary says which guarantee held how.
#[tokio::test(flavor = "multi_thread")]
async fn objects_at_the_destination_are_never_replaced_whatever_the_server_enforces() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("small.txt", bytes(1, 100)),
                ("big.bin", bytes(2, 7 << 20)),
                ("new.txt", bytes(3, 10)),
                ("new.bin", bytes(4, 7 << 20)),
            ],
        );
        let bucket = target.bucket("keep").await;
        let theirs_small = bytes(91, 100);
        let theirs_big = bytes(92, 7 << 20);
        target.put(&bucket, "small.txt", &theirs_small).await;
        target.put(&bucket, "big.bin", &theirs_big).await;

        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &ledger(&work),
            &["--multipart-threshold", "6MiB", "--part-size", "5MiB"],
        )
        .await;

        assert_eq!(run.code, Some(1), "{:?}: {run:?}", target.kind);
        assert_eq!(
            (run.n("copied"), run.n("conflict")),
            (2, 2),
            "{:?}: {run:?}",
            target.kind
        );
        assert_eq!(
            target.get(&bucket, "small.txt").await,
            theirs_small,
            "{:?}",
            target.kind
        );
        assert!(
            target.get(&bucket, "big.bin").await == theirs_big,
            "{:?}: a multipart upload replaced an object",
            target.kind
        );
        let guarantees = &run.json()["guarantees"];
        let (no_overwrite, warned) = match target.kind {
            Kind::Lax => ("checked before write (racy)", true),
            Kind::S3sFs | Kind::Moto => ("enforced by server", false),
        };
        assert_eq!(
            guarantees["no_overwrite"], no_overwrite,
            "{:?}: {run:?}",
            target.kind
        );
        assert_eq!(
            run.stderr.contains("does not enforce If-None-Match"),
            warned,
            "{:?}: {}",
            target.kind,
            run.stderr
        );
        if target.kind == Kind::Lax {
            assert_eq!(guarantees["conditions"]["put_if_none_match"], "ignored");
            assert!(
                guarantees["take_back"]
                    .as_str()
                    .unwrap()
                    .starts_with("never deletes"),
                "{guarantees}"
            );
        }
    }
}

/// Issue 9, point 4: an object that changed at the source replaces godwit's own earlier copy of
/// it (conditionally on that copy's ETag), single PUT and multipart alike; an object someone
/// else wrote over godwit's copy meanwhile is a conflict, left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_source_replaces_godwits_own_copy_and_nothing_else() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("small.txt", bytes(1, 100)),
                ("big.bin", bytes(2, 7 << 20)),
                ("taken.txt", bytes(3, 100)),
                ("same.txt", bytes(4, 100)),
            ],
        );
        let bucket = target.bucket("changed").await;
        let dest = format!("s3://{bucket}");
        let args = ["--multipart-threshold", "6MiB", "--part-size", "5MiB"];
        let first = migrate(&target, &path_str(&source), &dest, &ledger(&work), &args).await;
        assert_eq!(first.n("copied"), 4, "{:?}: {first:?}", target.kind);

        // Someone else writes over one copy; then three source objects change.
        let theirs = bytes(93, 100);
        target.put(&bucket, "taken.txt", &theirs).await;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (small, big) = (bytes(11, 150), bytes(12, (7 << 20) + 5));
        write_tree(
            &source,
            &[
                ("small.txt", small.clone()),
                ("big.bin", big.clone()),
                ("taken.txt", bytes(13, 100)),
            ],
        );

        let second = migrate(&target, &path_str(&source), &dest, &ledger(&work), &args).await;

        assert_eq!(second.code, Some(1), "{:?}: {second:?}", target.kind);
        assert_eq!(
            (
                second.n("copied_this_run"),
                second.n("replaced_this_run"),
                second.n("conflict"),
                second.n("copied")
            ),
            (2, 2, 1, 3),
            "{:?}: {second:?}",
            target.kind
        );
        assert_eq!(
            target.get(&bucket, "small.txt").await,
            small,
            "{:?}",
            target.kind
        );
        assert!(
            target.get(&bucket, "big.bin").await == big,
            "{:?}",
            target.kind
        );
        assert_eq!(
            target.get(&bucket, "taken.txt").await,
            theirs,
            "{:?}",
            target.kind
        );
        assert_eq!(target.get(&bucket, "same.txt").await, bytes(4, 100));
    }
}

/// Issue 9, point 12: where the bytes go includes the endpoint. The same command with another
/// `--dest-endpoint` (staging, then production, one bucket name) is another migration, and its
/// objects are copied there; a `--name` reused for another endpoint is refused.
#[tokio::test(flavor = "multi_thread")]
async fn another_endpoint_is_another_migration() {
    let (staging, production) = (
        support::Target::s3s_fs().await,
        support::Target::s3s_fs().await,
    );
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("a.txt", bytes(1, 10)), ("b.txt", bytes(2, 20))]);
    for target in [&staging, &production] {
        target
            .client
            .create_bucket()
            .bucket("same")
            .send()
            .await
            .unwrap();
    }
    let state = ledger(&work);
    let first = migrate(&staging, &path_str(&source), "s3://same", &state, &[]).await;
    assert_eq!(first.n("copied_this_run"), 2, "{first:?}");

    let second = migrate(&production, &path_str(&source), "s3://same", &state, &[]).await;

    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(second.n("copied_this_run"), 2, "{second:?}");
    assert_eq!(production.keys("same").await, ["a.txt", "b.txt"]);
    assert_ne!(first.json()["migration"], second.json()["migration"]);
    let source = path_str(&source);
    let named = ["--name", "release"];
    let first_named = migrate(&staging, &source, "s3://same", &state, &named).await;
    assert_eq!(first_named.code, Some(0), "{first_named:?}");
    let refused = migrate(&production, &source, "s3://same", &state, &named).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("already exists") && refused.stderr.contains(&staging.endpoint),
        "{}",
        refused.stderr
    );
}

/// Issue 9, point 12: a re-run of a finished migration trusts the destination over the ledger:
/// an object deleted there since is copied again, one someone else replaced is a conflict, and
/// the summary (and the dry run before it) says how many; `--trust-ledger` skips the check.
#[tokio::test(flavor = "multi_thread")]
async fn objects_lost_at_the_destination_are_copied_again() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("deleted.txt", bytes(1, 10)),
                ("replaced.txt", bytes(2, 20)),
                ("kept.txt", bytes(3, 30)),
            ],
        );
        let bucket = target.bucket("lost").await;
        let dest = format!("s3://{bucket}");
        let state = ledger(&work);
        let first = migrate(&target, &path_str(&source), &dest, &state, &[]).await;
        assert_eq!(first.n("copied"), 3, "{:?}: {first:?}", target.kind);
        target
            .client
            .delete_object()
            .bucket(&bucket)
            .key("deleted.txt")
            .send()
            .await
            .unwrap();
        let theirs = bytes(99, 25);
        target.put(&bucket, "replaced.txt", &theirs).await;

        let trusting = migrate(
            &target,
            &path_str(&source),
            &dest,
            &state,
            &["--trust-ledger"],
        )
        .await;
        assert_eq!(
            (
                trusting.n("copied_this_run"),
                trusting.n("missing_at_destination")
            ),
            (0, 0),
            "{:?}: {trusting:?}",
            target.kind
        );
        let dry = migrate(&target, &path_str(&source), &dest, &state, &["--dry-run"]).await;
        assert_eq!(
            (
                dry.n("to_copy"),
                dry.n("missing_at_destination"),
                dry.n("up_to_date")
            ),
            (2, 2, 1),
            "{:?}: {dry:?}",
            target.kind
        );

        let checked = migrate(&target, &path_str(&source), &dest, &state, &[]).await;

        assert_eq!(checked.code, Some(1), "{:?}: {checked:?}", target.kind);
        assert_eq!(
            (
                checked.n("missing_at_destination"),
                checked.n("changed_at_destination"),
                checked.n("copied_this_run"),
                checked.n("conflict"),
                checked.n("copied")
            ),
            (2, 1, 1, 1, 2),
            "{:?}: {checked:?}",
            target.kind
        );
        assert_eq!(target.get(&bucket, "deleted.txt").await, bytes(1, 10));
        assert_eq!(
            target.get(&bucket, "replaced.txt").await,
            theirs,
            "a conflict was replaced"
        );
    }
}

/// The headers an object is served with, as a HEAD shows them.
async fn served(target: &support::Target, bucket: &str, key: &str) -> serde_json::Value {
    let head = target
        .client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let user: std::collections::BTreeMap<String, String> = head
        .metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    serde_json::json!({
        "content_type": head.content_type(),
        "cache_control": head.cache_control(),
        "content_disposition": head.content_disposition(),
        "content_encoding": head.content_encoding(),
        "content_language": head.content_language(),
        "expires": head.expires_string(),
        "user": user,
    })
}

/// Issue 9, point 11: what arrives is what the source served. An S3 → S3 migration keeps each
/// object's Content-Type, Cache-Control, Content-Disposition, Content-Encoding,
/// Content-Language, Expires and user metadata on every route: a server-side copy in one request
/// or in parts (where the server allows them), a single PUT and a multipart upload.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_arrives_on_every_route() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let from = target.bucket("meta").await;
        let expires = "Wed, 21 Oct 2026 07:28:00 GMT";
        target
            .client
            .put_object()
            .bucket(&from)
            .key("page.html")
            .body(bytes(1, 3000).into())
            .content_type("text/html; charset=utf-8")
            .cache_control("max-age=60")
            .content_disposition("inline; filename=\"page.html\"")
            .content_encoding("identity")
            .content_language("fr")
            .expires(
                aws_smithy_types::DateTime::from_str(
                    expires,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .unwrap(),
            )
            .metadata("owner", "alice")
            .metadata("course", "42")
            .send()
            .await
            .unwrap();
        let video = bytes(2, (11 << 20) + 5);
        let upload = target
            .client
            .create_multipart_upload()
            .bucket(&from)
            .key("video.mp4")
            .content_type("video/mp4")
            .cache_control("public, max-age=31536000")
            .metadata("lecture", "1")
            .send()
            .await
            .unwrap();
        let upload_id = upload.upload_id().unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in video.chunks(5 << 20).enumerate() {
            let number = i as i32 + 1;
            let part = target
                .client
                .upload_part()
                .bucket(&from)
                .key("video.mp4")
                .upload_id(upload_id)
                .part_number(number)
                .body(chunk.to_vec().into())
                .send()
                .await
                .unwrap();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .e_tag(part.e_tag().unwrap())
                    .build(),
            );
        }
        // moto's reply to a completion cannot be parsed by the SDK, though it completes.
        let _ = target
            .client
            .complete_multipart_upload()
            .bucket(&from)
            .key("video.mp4")
            .upload_id(upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        let expected_page = served(&target, &from, "page.html").await;
        let expected_video = served(&target, &from, "video.mp4").await;
        assert_eq!(expected_page["user"]["owner"], "alice", "{expected_page}");
        assert_eq!(expected_page["expires"], expires, "{expected_page}");

        for (route, extra) in [
            ("default", &[][..]),
            ("streamed", &["--no-server-side-copy"][..]),
        ] {
            let to = target.bucket("meta-to").await;
            let mut args = vec!["--multipart-threshold", "6MiB", "--part-size", "5MiB"];
            args.extend_from_slice(extra);
            let state = work.path().join(format!("{route}.db"));
            let run = migrate(
                &target,
                &format!("s3://{from}"),
                &format!("s3://{to}"),
                &state,
                &args,
            )
            .await;
            assert_eq!(run.code, Some(0), "{:?} {route}: {run:?}", target.kind);
            assert_eq!(
                served(&target, &to, "page.html").await,
                expected_page,
                "{:?} {route}: page.html",
                target.kind
            );
            assert_eq!(
                served(&target, &to, "video.mp4").await,
                expected_video,
                "{:?} {route}: video.mp4",
                target.kind
            );
            assert!(target.get(&to, "video.mp4").await == video);
            let server_side = target.kind == Kind::S3sFs && route == "default";
            assert_eq!(
                run.n("copied_server_side_this_run"),
                if server_side { 2 } else { 0 },
                "{:?} {route}",
                target.kind
            );
        }
    }
}

/// Issue 9, point 11: files get the Content-Type their names say (guessed by a MIME table);
/// `--content-type` and `--metadata` override for a whole run; the ledger says what was sent.
#[tokio::test(flavor = "multi_thread")]
async fn files_get_a_content_type_and_a_run_can_override_it() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        write_tree(
            &source,
            &[
                ("index.html", bytes(1, 10)),
                ("data/x.json", bytes(2, 10)),
                ("style.css", bytes(3, 10)),
                ("big.mp4", bytes(4, 7 << 20)),
                ("README", bytes(5, 10)),
            ],
        );
        let bucket = target.bucket("types").await;
        let state = ledger(&work);
        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{bucket}"),
            &state,
            &["--multipart-threshold", "6MiB", "--part-size", "5MiB"],
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        for (key, content_type) in [
            ("index.html", "text/html"),
            ("data/x.json", "application/json"),
            ("style.css", "text/css"),
            ("big.mp4", "video/mp4"),
        ] {
            assert_eq!(
                served(&target, &bucket, key).await["content_type"],
                content_type,
                "{:?} {key}",
                target.kind
            );
        }
        let db = rusqlite::Connection::open(&state).unwrap();
        let sent: String = db
            .query_row(
                "SELECT metadata FROM objects WHERE key = 'index.html'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(sent, r#"{"content_type":"text/html"}"#);

        let other = target.bucket("types-override").await;
        let run = migrate(
            &target,
            &path_str(&source),
            &format!("s3://{other}"),
            &work.path().join("override.db"),
            &[
                "--content-type",
                "text/plain",
                "--metadata",
                "Team=blue",
                "--metadata",
                "course=7",
            ],
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        for key in ["index.html", "README", "big.mp4"] {
            let headers = served(&target, &other, key).await;
            assert_eq!(
                headers["content_type"], "text/plain",
                "{:?} {key}",
                target.kind
            );
            assert_eq!(headers["user"]["team"], "blue", "{headers}");
            assert_eq!(headers["user"]["course"], "7", "{headers}");
        }
    }
}

/// Issue 9, point 11: tags with `--preserve-tags` (moto keeps tags; s3s-fs keeps none, so the run
/// says it copies without them), and `--storage-class` and `--sse` for the objects written.
#[tokio::test(flavor = "multi_thread")]
async fn tags_storage_class_and_encryption_are_sent_as_asked() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let from = target.bucket("tags").await;
        target
            .client
            .put_object()
            .bucket(&from)
            .key("tagged.txt")
            .body(bytes(1, 100).into())
            .tagging("team=blue&year=2026")
            .send()
            .await
            .ok();
        if target.kind != Kind::Moto {
            // s3s-fs takes no tags: the object is there untagged.
            target.put(&from, "tagged.txt", &bytes(1, 100)).await;
        }
        let to = target.bucket("tags-to").await;
        // s3s-fs offers one storage class.
        let class = if target.kind == Kind::Moto {
            "STANDARD_IA"
        } else {
            "STANDARD"
        };
        let run = migrate(
            &target,
            &format!("s3://{from}"),
            &format!("s3://{to}"),
            &ledger(&work),
            &[
                "--preserve-tags",
                "--storage-class",
                class,
                "--sse",
                "AES256",
            ],
        )
        .await;
        assert_eq!(run.code, Some(0), "{:?}: {run:?}", target.kind);
        if target.kind == Kind::Moto {
            let tags = target
                .client
                .get_object_tagging()
                .bucket(&to)
                .key("tagged.txt")
                .send()
                .await
                .unwrap();
            let mut found: Vec<(String, String)> = tags
                .tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect();
            found.sort();
            assert_eq!(
                found,
                [
                    ("team".to_owned(), "blue".to_owned()),
                    ("year".to_owned(), "2026".to_owned())
                ]
            );
            let head = target
                .client
                .head_object()
                .bucket(&to)
                .key("tagged.txt")
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.storage_class().map(|c| c.as_str()),
                Some("STANDARD_IA")
            );
            assert_eq!(
                head.server_side_encryption().map(|e| e.as_str()),
                Some("AES256")
            );
        } else if target.kind == Kind::Lax {
            // Streamed (this server ignores the copy condition), godwit asks for the tags.
            assert!(
                run.stderr.contains("copied without tags"),
                "{:?}: {}",
                target.kind,
                run.stderr
            );
        }
    }
}

/// Issue 9, point 4, bucket to bucket: an object that changed in the source bucket replaces
/// godwit's own earlier copy whichever route the first copy took (server-side where the server
/// refuses copies onto taken keys, streamed elsewhere).
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_source_object_replaces_its_copy_bucket_to_bucket() {
    for target in targets().await {
        let work = tempfile::tempdir().unwrap();
        let from = target.bucket("from").await;
        let to = target.bucket("to").await;
        target.put(&from, "a.txt", &bytes(1, 100)).await;
        target.put(&from, "b.txt", &bytes(2, 100)).await;
        let (source, dest) = (format!("s3://{from}"), format!("s3://{to}"));
        let first = migrate(&target, &source, &dest, &ledger(&work), &[]).await;
        assert_eq!(first.n("copied"), 2, "{:?}: {first:?}", target.kind);
        target.put(&from, "a.txt", &bytes(3, 120)).await;

        let second = migrate(&target, &source, &dest, &ledger(&work), &[]).await;

        assert_eq!(second.code, Some(0), "{:?}: {second:?}", target.kind);
        assert_eq!(
            (second.n("copied_this_run"), second.n("replaced_this_run")),
            (1, 1),
            "{:?}: {second:?}",
            target.kind
        );
        assert_eq!(target.get(&to, "a.txt").await, bytes(3, 120));
    }
}
