//! The fleet end to end: the real binary on a shared PostgreSQL ledger (and the SQLite one), with
//! workers that share a migration, stall past their leases, lose the ledger; the fail queue.

mod support;

use support::{bytes, ledger, migrate, path_str, write_tree};

/// Issue 10, point 1: `--state postgres://...` (and `GODWIT_STATE`) puts the ledger in
/// PostgreSQL (here in a schema of this test's own): a re-run resumes from it, `status` reads it,
/// and nothing is written to a local path named after the URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_ledger_is_used_as_the_sqlite_one() {
    let Some(url) = support::postgres_schema("cli").await else {
        return;
    };
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(
        &source,
        &[("a.txt", bytes(1, 10)), ("b/c.txt", bytes(2, 20))],
    );
    let bucket = target.bucket("pg").await;
    let dest = format!("s3://{bucket}");

    let mut first = support::godwit();
    first
        .current_dir(work.path())
        .args([
            "migrate",
            &path_str(&source),
            &dest,
            "--json",
            "--no-progress",
        ])
        .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
    let first = support::run(first).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(first.n("copied"), 2);
    assert!(
        !first.json()["ledger"]
            .as_str()
            .unwrap()
            .contains("password"),
        "{first:?}"
    );

    let mut second = support::godwit();
    second
        .current_dir(work.path())
        .args([
            "migrate",
            &path_str(&source),
            &dest,
            "--json",
            "--no-progress",
        ])
        .args(["--dest-endpoint", &target.endpoint])
        .env("GODWIT_STATE", &url);
    let second = support::run(second).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(
        (second.n("copied"), second.n("copied_this_run")),
        (2, 0),
        "{second:?}"
    );

    let mut status = support::godwit();
    status.args(["status", "--json", "--state", &url]);
    let status = support::run(status).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert_eq!(status.json()["migrations"][0]["objects"]["copied"], 2);
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("postgres"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a local path was made of the URL: {leftovers:?}"
    );
}

/// Issue 10, point 2: `godwit worker` processes join a migration a `migrate` started on a shared
/// PostgreSQL ledger: each takes a share, every object is written exactly once, and `migrate`
/// exits only when every object has ended. SIGTERM stops a worker cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn workers_share_a_migration_and_each_object_is_written_once() {
    let Some(url) = support::postgres_schema("fleet").await else {
        return;
    };
    let target = support::Target::s3s_fs().await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("d{}/f{i}", i % 11), bytes(i, 300)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("fleet").await;

    let worker = || {
        let mut command = support::godwit();
        command
            .args(["worker", "--json", "--state", &url])
            .kill_on_drop(true);
        command.spawn().unwrap()
    };
    let workers = [worker(), worker()];
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = requests.get("PutObject");

    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args(["--json", "--no-progress", "--concurrency", "2"])
        .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
    let run = support::run(migrate).await;

    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), 3000, "{run:?}");
    assert_eq!(target.keys(&bucket).await.len(), 3000);
    assert_eq!(
        requests.get("PutObject") - before,
        3000,
        "an object was written more than once"
    );
    let mut copied_by_workers = Vec::new();
    for child in workers {
        let pid = child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(
            output.status.code(),
            Some(130),
            "a worker did not stop cleanly"
        );
        let copied: u64 = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|summary| summary["copied_this_run"].as_u64())
            .sum();
        copied_by_workers.push(copied);
    }
    assert!(
        copied_by_workers.iter().all(|&n| n > 0),
        "a worker took no share: {copied_by_workers:?}"
    );
    assert_eq!(
        run.n("copied_this_run") + copied_by_workers.iter().sum::<u64>(),
        3000,
        "the shares do not add up: migrate {}, workers {copied_by_workers:?}",
        run.n("copied_this_run")
    );
}

/// Issue 10, point 2 (fencing): a worker stopped (SIGSTOP) past its lease loses its packet to
/// the others; resumed (SIGCONT), it records nothing over the new owner, and every object ends
/// once, copied.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_paused_past_its_lease_records_nothing_over_the_new_owner() {
    let Some(url) = support::postgres_schema("fencing").await else {
        return;
    };
    // Every PUT takes 50 ms: packets stay in flight long enough to be caught.
    let target = support::Target::slow(std::time::Duration::from_millis(50)).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i:03}"), bytes(i, 200)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("fencing").await;

    let mut paused = support::godwit();
    paused
        .args(["worker", "--json", "--lease", "2", "--state", &url])
        .kill_on_drop(true);
    let paused = paused.spawn().unwrap();
    let pid = paused.id().unwrap().to_string();
    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args([
            "--json",
            "--no-progress",
            "--concurrency",
            "2",
            "--lease",
            "2",
        ])
        .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
    let migrate = tokio::spawn(support::run(migrate));

    // Stop the worker once it holds objects.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // (Until a godwit process has made the tables, there is nothing to count.)
    let held_by_worker = || held_by(&client, &pid);
    until_held(&client, &pid).await;
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let stolen = held_by_worker().await;
    assert!(stolen > 0);
    // Its lease runs out; the migrate's heartbeat hands its packet back, and migrate finishes it.
    let run = migrate.await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), 300, "{run:?}");
    assert_eq!(held_by_worker().await, 0);

    // Resumed, the worker finishes what it had in flight, and the ledger takes none of it.
    assert!(signal("-CONT").success());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(signal("-TERM").success());
    let output = paused.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another worker took") || stderr.contains("another worker took over"),
        "the paused worker wrote nothing it was refused: {stderr}"
    );
    let counts = client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE state = 2), COUNT(*) FROM objects",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i64>(1)),
        (300, 300)
    );
    assert_eq!(target.keys(&bucket).await.len(), 300);
    for (key, content) in files.iter().step_by(37) {
        assert_eq!(&target.get(&bucket, key).await, content, "{key}");
    }
}

/// Issue 10, point 5: `godwit failed` lists the fail queue with each failure's class, attempts
/// and last error, a page at a time, by class if asked; `retry-failed --class` requeues one class.
/// The migration's name may be left out when the ledger holds one.
#[tokio::test(flavor = "multi_thread")]
async fn the_fail_queue_is_listed_by_class_and_requeued_by_class() {
    use std::os::unix::ffi::OsStrExt;
    let target = support::Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("good.txt", bytes(1, 10))]);
    std::os::unix::fs::symlink(work.path().join("nowhere"), source.join("dangling")).unwrap();
    std::fs::write(source.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
    let bucket = target.bucket("failq").await;
    let state = ledger(&work);
    let run = migrate(
        &target,
        &path_str(&source),
        &format!("s3://{bucket}"),
        &state,
        &[],
    )
    .await;
    assert_eq!((run.n("failed"), run.n("copied")), (2, 1), "{run:?}");

    let failed = |extra: &[&str]| {
        let mut command = support::godwit();
        command
            .args(["failed", "--json", "--state"])
            .arg(&state)
            .args(extra);
        support::run(command)
    };
    let all = failed(&[]).await;
    assert_eq!(all.code, Some(0), "{all:?}");
    let listed = all.json()["failed"].as_array().unwrap().clone();
    let mut classes: Vec<&str> = listed
        .iter()
        .map(|f| f["class"].as_str().unwrap())
        .collect();
    classes.sort();
    assert_eq!(classes, ["invalid_input", "io"], "{all:?}");
    assert!(
        listed
            .iter()
            .all(|f| f["attempts"].as_u64().is_some() && f["error"].is_string())
    );
    let io = failed(&["--class", "io"]).await.json();
    assert_eq!(io["failed"].as_array().unwrap().len(), 1);
    assert!(
        io["failed"][0]["key"]
            .as_str()
            .unwrap()
            .contains("dangling")
    );
    let first = failed(&["--limit", "1"]).await.json();
    let next = first["next"].as_i64().expect("a next page");
    let second = failed(&["--limit", "1", "--after", &next.to_string()])
        .await
        .json();
    assert_eq!(second["failed"].as_array().unwrap().len(), 1);
    assert_ne!(first["failed"][0]["key"], second["failed"][0]["key"]);

    let mut retry = support::godwit();
    retry
        .args(["retry-failed", "--class", "invalid_input", "--state"])
        .arg(&state);
    let retried = support::run(retry).await;
    assert_eq!(retried.code, Some(0), "{retried:?}");
    assert!(
        retried.stdout.starts_with("1 failed objects queued again"),
        "{retried:?}"
    );
    let left = failed(&[]).await.json();
    assert_eq!(left["failed"].as_array().unwrap().len(), 1);
    assert_eq!(left["failed"][0]["class"], "io");
}

/// A worker whose ledger goes away (its connection to PostgreSQL cut, here by a relay between
/// them) waits for it instead of exiting: its claims go back to the fleet when their lease runs
/// out, and once the ledger answers again it takes its share of what is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_waits_out_a_ledger_outage() {
    let Some(url) = support::postgres_schema("outage").await else {
        return;
    };
    // Every PUT takes 50 ms: the migration outlasts the outage.
    let target = support::Target::slow(std::time::Duration::from_millis(50)).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("f{i:04}"), bytes(i, 100)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("ledger-outage").await;

    // The worker reaches PostgreSQL through the relay; `migrate` directly.
    let mut relay = support::relay::Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let relayed = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port), 1);
    assert_ne!(
        relayed, url,
        "the test database is not at 127.0.0.1:5432: {url}"
    );
    let mut worker = support::godwit();
    worker.args(["worker", "--json", "--lease", "3", "--state", &relayed]);
    let worker = worker.spawn().unwrap();
    let pid = worker.id().unwrap().to_string();
    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args([
            "--json",
            "--no-progress",
            "--concurrency",
            "2",
            "--lease",
            "3",
        ])
        .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
    let migrate = tokio::spawn(support::run(migrate));

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let held_by_worker = || held_by(&client, &pid);
    until_held(&client, &pid).await;

    // The ledger goes away for longer than a lease.
    relay.cut().await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        held_by_worker().await,
        0,
        "the worker's claims did not go back when their lease ran out"
    );
    relay.restore().await;

    let run = migrate.await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), 1500, "{run:?}");
    // The worker is still there; stopped, it says what it met.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = worker.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("the ledger cannot be reached"), "{stderr}");
    assert!(stderr.contains("the ledger answers again"), "{stderr}");
    // It worked after the outage: a round ended (the one the outage broke printed nothing).
    let copied_after: u64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|summary| summary["copied_this_run"].as_u64())
        .sum();
    assert!(
        copied_after > 0,
        "the worker copied nothing once the ledger was back: {stderr}"
    );
    let counts = client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE state = 2), COUNT(*) FROM objects",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i64>(1)),
        (1500, 1500)
    );
    assert_eq!(target.keys(&bucket).await.len(), 1500);
}

/// Objects the process `pid` holds (its worker name is `host:pid:start`); 0 until a godwit
/// process has made the tables.
async fn held_by(client: &tokio_postgres::Client, pid: &str) -> i64 {
    client
        .query_one(
            "SELECT COUNT(*) FROM objects WHERE state = 1 AND lease_owner LIKE '%:' || $1 || ':%'",
            &[&pid],
        )
        .await
        .map_or(0, |row| row.get::<_, i64>(0))
}

/// Waits (30 s at most) until the process `pid` holds objects.
async fn until_held(client: &tokio_postgres::Client, pid: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held_by(client, pid).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never took a packet"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
