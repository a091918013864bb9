//! The fleet end to end: the real binary on a shared PostgreSQL ledger (and the SQLite one), with
//! workers that share a migration, stop, stall past their leases, lose their endpoint; the fail
//! queue.

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
    let held_by_worker = || async {
        client
            .query_one(
                "SELECT COUNT(*) FROM objects WHERE state = 1 AND lease_owner LIKE '%:' || $1 || ':%'",
                &[&pid],
            )
            .await
            .map_or(0, |row| row.get::<_, i64>(0))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held_by_worker().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never took a packet"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// A `godwit serve-s3` in a process of its own, on a port of its own, to stop and start again.
struct ServedS3 {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl ServedS3 {
    async fn start(dir: &std::path::Path, port: u16) -> Self {
        let mut served = Self {
            dir: dir.to_owned(),
            port,
            child: None,
        };
        served.restart().await;
        served
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let mut command = support::godwit();
        command.arg("serve-s3").arg(&self.dir).args([
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--bucket",
            "served",
        ]);
        self.child = Some(command.spawn().unwrap());
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("serve-s3 did not start");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Issue 10, point 4: a destination that stops answering mid-run is one outage, not thousands of
/// failures: no new objects are taken while it is down, none is charged an attempt, and the run
/// goes on when it answers again. One that stays down past `--endpoint-timeout` stops the run
/// with exit 2 and nothing failed.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_outage_is_waited_out_and_charges_no_attempt() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("d{}/f{i}", i % 7), bytes(i, 300)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let mut served = ServedS3::start(&work.path().join("s3"), free_port()).await;
    let state = ledger(&work);
    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), "s3://served"])
        .args(["--json", "--no-progress", "--concurrency", "4"])
        .args(["--dest-endpoint", &served.endpoint()])
        .arg("--state")
        .arg(&state);
    let running = tokio::spawn(support::run(migrate));
    let copied = || {
        rusqlite::Connection::open_with_flags(&state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|db| {
                db.query_row("SELECT COUNT(*) FROM objects WHERE state = 2", [], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .unwrap_or(0)
    };
    while copied() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    served.kill().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        copied() < 1500,
        "the run finished before the outage; the test proves nothing"
    );
    served.restart().await;

    let run = running.await.unwrap();

    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!((run.n("copied"), run.n("failed")), (1500, 0), "{run:?}");
    assert!(run.stderr.contains("stopped answering"), "{}", run.stderr);
    let charged: i64 = rusqlite::Connection::open(&state)
        .unwrap()
        .query_row("SELECT MAX(attempts) FROM objects", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        charged, 1,
        "an object was charged an attempt for the outage"
    );

    // Down for good mid-run: the run gives up after --endpoint-timeout, with nothing failed.
    served.restart().await;
    let second_state = work.path().join("second.db");
    let mut again = support::godwit();
    again
        .args(["migrate", &path_str(&source), "s3://served/second"])
        .args(["--json", "--no-progress", "--concurrency", "4"])
        .args([
            "--endpoint-timeout",
            "2s",
            "--dest-endpoint",
            &served.endpoint(),
        ])
        .arg("--state")
        .arg(&second_state);
    let running = tokio::spawn(support::run(again));
    let copied_second = || {
        rusqlite::Connection::open_with_flags(
            &second_state,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|db| {
            db.query_row("SELECT COUNT(*) FROM objects WHERE state = 2", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .unwrap_or(0)
    };
    while copied_second() < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    served.kill().await;
    let down = running.await.unwrap();
    assert_eq!(down.code, Some(2), "{down:?}");
    assert!(down.stderr.contains("has not answered"), "{}", down.stderr);
    let (failed, pending): (i64, i64) = rusqlite::Connection::open(&second_state)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FILTER (WHERE state = 7), COUNT(*) FILTER (WHERE state IN (0, 1)) FROM objects",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(failed, 0, "objects failed for the outage");
    assert!(
        pending > 0,
        "nothing left for the next run: the test proves nothing"
    );
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

/// Runs `godwit ARGS --state STATE` to its end.
async fn godwit_on(state: &str, args: &[&str]) -> support::Run {
    let mut command = support::godwit();
    command.args(args).args(["--state", state]);
    support::run(command).await
}

/// Waits (up to a minute) until `ready` holds.
async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Issue 10, point 6: `godwit pause` reaches a running `migrate` and a `worker` within seconds:
/// what they had in flight finishes, nothing more is taken, and `godwit status` shows both
/// workers (host, pid, heartbeat, objects in flight, bytes/s). `resume` lets them go on.
#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_reach_every_worker_within_seconds() {
    let Some(url) = support::postgres_schema("control").await else {
        return;
    };
    // Every PUT takes 40 ms: at two objects in flight a process, the run lasts long enough to
    // be paused in the middle.
    let target = support::Target::slow(std::time::Duration::from_millis(40)).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..800)
        .map(|i| (format!("f{i:03}"), bytes(i, 100)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("control").await;

    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args(["--json", "--no-progress", "--concurrency", "2"])
        .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
    let migrate = tokio::spawn(support::run(migrate));
    let mut worker = support::godwit();
    worker.args(["worker", "--state", &url]);
    let worker = worker.spawn().unwrap();

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Copied and claimed objects (nothing until a godwit process has made the tables).
    let counts = || async {
        client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 2), COUNT(*) FILTER (WHERE state = 1) FROM objects",
                &[],
            )
            .await
            .map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
    };
    let status = || async { godwit_on(&url, &["status", "--json"]).await.json() };
    // Both processes at work, as the ledger shows them.
    wait_until("two workers with objects in flight", || async {
        let status = status().await;
        let busy = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["alive"] == true && w["objects_in_flight"].as_u64().unwrap() > 0)
            .count();
        busy == 2 && counts().await.0 >= 100
    })
    .await;
    let busy = status().await;
    let worker_rows = busy["workers"].as_array().unwrap();
    assert!(
        worker_rows
            .iter()
            .any(|w| w["bytes_per_second"].as_u64().unwrap() > 0),
        "{busy}"
    );
    let pids: std::collections::HashSet<u64> = worker_rows
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.contains(&u64::from(worker.id().unwrap())), "{busy}");

    let paused = godwit_on(&url, &["pause"]).await;
    assert_eq!(paused.code, Some(0), "{paused:?}");
    assert!(paused.stdout.contains("paused"), "{paused:?}");
    // Within seconds nobody holds an object, and nothing more is copied.
    wait_until("no object claimed after the pause", || async {
        counts().await.1 == 0
    })
    .await;
    let (copied, _) = counts().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        counts().await,
        (copied, 0),
        "objects were taken while paused"
    );
    assert!(
        copied < files.len() as i64,
        "the run ended before the pause"
    );
    let quiet = status().await;
    assert_eq!(quiet["migrations"][0]["status"], "paused", "{quiet}");
    let alive: Vec<&serde_json::Value> = quiet["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["alive"] == true)
        .collect();
    assert_eq!(alive.len(), 2, "{quiet}");
    assert!(
        alive
            .iter()
            .all(|w| w["objects_in_flight"] == 0 && w["packets_in_flight"] == 0),
        "{quiet}"
    );
    let shown = godwit_on(&url, &["status"]).await;
    assert!(shown.stdout.contains("[PAUSED]"), "{shown:?}");
    assert!(shown.stdout.contains("workers"), "{shown:?}");

    let resumed = godwit_on(&url, &["resume"]).await;
    assert_eq!(resumed.code, Some(0), "{resumed:?}");
    let run = migrate.await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), files.len() as u64, "{run:?}");
    assert!(run.stderr.contains("is paused"), "{run:?}");
    assert_eq!(target.keys(&bucket).await.len(), files.len());
    for (key, content) in files.iter().step_by(53) {
        assert_eq!(&target.get(&bucket, key).await, content, "{key}");
    }
    let pid = worker.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = worker.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(130));
}

/// Issue 10, point 6, on the embedded ledger: `godwit cancel` reaches a running `migrate` (no
/// lock needed), which ends with exit 130 and the rest pending; `migrate` refuses a cancelled
/// migration until `godwit resume`, and then finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_migration_ends_and_waits_for_resume() {
    let target = support::Target::slow(std::time::Duration::from_millis(40)).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| (format!("d{}/f{i}", i % 5), bytes(i, 150)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("cancel").await;
    let dest = format!("s3://{bucket}");
    let state = ledger(&work);
    let state_text = path_str(&state);
    let migrate_args = |extra: &[&str]| {
        let mut command = support::godwit();
        command
            .args(["migrate", &path_str(&source), &dest])
            .args(["--json", "--no-progress", "--concurrency", "2"])
            .args(["--dest-endpoint", &target.endpoint, "--state", &state_text])
            .args(extra);
        command
    };

    let running = tokio::spawn(support::run(migrate_args(&[])));
    wait_until("50 objects copied", || async {
        if !state.exists() {
            return false;
        }
        let status = godwit_on(&state_text, &["status", "--json"]).await;
        status.code == Some(0)
            && status.json()["migrations"][0]["objects"]["copied"].as_u64() >= Some(50)
    })
    .await;
    let cancelled = godwit_on(&state_text, &["cancel"]).await;
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");

    let run = running.await.unwrap();
    assert_eq!(run.code, Some(130), "{run:?}");
    assert_eq!(run.json()["status"], "cancelled", "{run:?}");
    let (copied, pending) = (run.n("copied"), run.n("pending"));
    assert!(pending > 0, "{run:?}");
    assert_eq!(copied + pending, files.len() as u64, "{run:?}");
    assert_eq!(target.keys(&bucket).await.len() as u64, copied);

    let refused = support::run(migrate_args(&[])).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("is cancelled") && refused.stderr.contains("godwit resume"),
        "{refused:?}"
    );
    let resumed = godwit_on(&state_text, &["resume"]).await;
    assert_eq!(resumed.code, Some(0), "{resumed:?}");
    let finished = support::run(migrate_args(&[])).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        (finished.n("copied"), finished.n("copied_this_run")),
        (files.len() as u64, pending),
        "{finished:?}"
    );
    for (key, content) in files.iter().step_by(41) {
        assert_eq!(&target.get(&bucket, key).await, content, "{key}");
    }
}

/// Issue 10, point 7: a first Ctrl-C lets the objects in flight finish; a second quits at once
/// and hands every claim back first, so nothing waits for a lease to run out (60 s here).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_quits_at_once_and_hands_the_claims_back() {
    let Some(url) = support::postgres_schema("second_signal").await else {
        return;
    };
    // Every PUT takes a second: objects are in flight when the signals come.
    let target = support::Target::slow(std::time::Duration::from_secs(1)).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("f{i:02}"), bytes(i, 100)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("second").await;
    let dest = format!("s3://{bucket}");
    let migrate_command = || {
        let mut command = support::godwit();
        command
            .args(["migrate", &path_str(&source), &dest])
            .args(["--json", "--no-progress", "--concurrency", "4"])
            .args(["--dest-endpoint", &target.endpoint, "--state", &url]);
        command
    };
    let child = migrate_command().spawn().unwrap();
    let pid = child.id().unwrap().to_string();

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let claimed = || async {
        client
            .query_one("SELECT COUNT(*) FROM objects WHERE state = 1", &[])
            .await
            .map_or(0, |row| row.get::<_, i64>(0))
    };
    wait_until("objects claimed", || async { claimed().await > 0 }).await;
    let interrupt = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    interrupt();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    interrupt();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_eq!(
        claimed().await,
        0,
        "claims were left to their lease: {stderr}"
    );
    assert!(stderr.contains("handed back"), "{stderr}");
    let charged = client
        .query_one(
            "SELECT COALESCE(MAX(attempts), 0) FROM objects WHERE state = 0",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(charged, 0, "released objects were charged an attempt");

    // The next run takes them at once and finishes.
    let finished = support::run(migrate_command()).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.n("copied"), files.len() as u64, "{finished:?}");
    for (key, content) in files.iter().step_by(7) {
        assert_eq!(&target.get(&bucket, key).await, content, "{key}");
    }
}

/// Issue 10, point 4: a proxy between godwit and the S3 server answers 503 SlowDown, 500,
/// resets connections and cuts answers short on about 5% of requests. The migration completes;
/// an independent reader finds every object whole; no upload is left open; and the ledger's
/// retry counts and classes show the faults were met.
#[tokio::test(flavor = "multi_thread")]
async fn injected_faults_are_retried_to_a_verified_end() {
    let target = support::Target::s3s_fs().await;
    let proxy = support::proxy::FaultProxy::start(&target.endpoint, 0.05).await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let mut files: Vec<(String, Vec<u8>)> = (0..800)
        .map(|i| {
            (
                format!("d{}/f{i:03}", i % 9),
                bytes(i, 100 + (i as usize % 7) * 900),
            )
        })
        .collect();
    for i in 0..4 {
        files.push((format!("big/{i}.bin"), bytes(10_000 + i, (13 << 20) + 77)));
    }
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("faults").await;
    let state = ledger(&work);

    let mut command = support::godwit();
    command
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args(["--json", "--no-progress", "--state", &path_str(&state)])
        .args(["--multipart-threshold", "6MiB", "--part-size", "5MiB"])
        .args(["--dest-endpoint", &proxy.endpoint]);
    let run = support::run(command).await;
    eprintln!("fault proxy: {}", proxy.injected.describe());

    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), files.len() as u64, "{run:?}");
    assert!(
        proxy.injected.faults() >= 20,
        "too few faults to prove anything: {}",
        proxy.injected.describe()
    );
    // Read back past the proxy, straight from the server.
    let keys = target.keys(&bucket).await;
    assert_eq!(keys.len(), files.len(), "{keys:?}");
    for (key, content) in &files {
        let served = target.get(&bucket, key).await;
        assert!(served == *content, "{key}: {} bytes served", served.len());
    }
    let open = target
        .client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());

    let db = rusqlite::Connection::open(&state).unwrap();
    let mut by_class = db
        .prepare(
            "SELECT error_kind, COUNT(*), SUM(attempts - 1) FROM objects
             WHERE state = 2 AND attempts > 1 GROUP BY error_kind ORDER BY error_kind",
        )
        .unwrap();
    let retries: Vec<(String, i64, i64)> = by_class
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    eprintln!("retried objects by class (class, objects, retries): {retries:?}");
    assert!(!retries.is_empty(), "the ledger shows no retry");
    let known = ["busy", "unreachable", "unclear"];
    assert!(
        retries
            .iter()
            .all(|(class, _, _)| known.contains(&class.as_str())),
        "{retries:?}"
    );
    assert!(
        retries.iter().any(|(class, _, _)| class == "busy"),
        "no throttling answer reached the ledger: {retries:?}"
    );
}

/// Issue 10, point 4: throttling one worker meets slows the whole fleet. A worker whose requests
/// are answered 503 SlowDown halves its objects in flight and says so in the ledger; the
/// `migrate` beside it, never throttled itself, lowers its own too.
#[tokio::test(flavor = "multi_thread")]
async fn throttling_one_worker_meets_slows_the_fleet() {
    let Some(url) = support::postgres_schema("throttle").await else {
        return;
    };
    let target = support::Target::slow(std::time::Duration::from_millis(30)).await;
    // Only the worker's requests (its User-Agent says `app/throttled`) are throttled, half of
    // them, until 40 have been.
    let proxy = support::proxy::FaultProxy::start_with(
        &target.endpoint,
        support::proxy::Plan {
            rate: 0.5,
            slow_down_only: true,
            user_agent: Some("app/throttled".into()),
            most: Some(40),
            query: None,
        },
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    // At 4 objects in flight a process and 30 ms a PUT, the run lasts long enough for the
    // worker (which looks for work every 2 s) to join it.
    let files: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("f{i:04}"), bytes(i, 50)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    let bucket = target.bucket("throttle").await;

    let mut worker = support::godwit();
    worker
        .args(["worker", "--json", "--state", &url])
        .env("AWS_SDK_UA_APP_ID", "throttled");
    let worker = worker.spawn().unwrap();
    let mut migrate = support::godwit();
    migrate
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args(["--json", "--no-progress", "--concurrency", "4"])
        .args(["--dest-endpoint", &proxy.endpoint, "--state", &url]);
    let run = support::run(migrate).await;
    eprintln!("fault proxy: {}", proxy.injected.describe());

    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), files.len() as u64, "{run:?}");
    assert!(
        proxy
            .injected
            .slow_down
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the worker never took part"
    );
    assert_eq!(run.n("throttled"), 0, "{run:?}");
    assert!(
        run.n("backoffs") >= 1,
        "migrate did not slow down when the worker was throttled: {run:?}"
    );

    let pid = worker.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = worker.wait_with_output().await.unwrap();
    let rounds: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let throttled: u64 = rounds
        .iter()
        .map(|r| r["throttled"].as_u64().unwrap())
        .sum();
    let backoffs: u64 = rounds.iter().map(|r| r["backoffs"].as_u64().unwrap()).sum();
    assert!(throttled >= 2 && backoffs >= 1, "{rounds:?}");
}

/// The probe of the destination's conditions opens multipart uploads of its own: one whose part
/// cannot be sent is aborted all the same, not left open (seen under injected faults: an
/// upload of `.godwit-probe-…-a` outlived the run).
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_that_fails_half_way_leaves_no_upload_open() {
    let target = support::Target::s3s_fs().await;
    let proxy = support::proxy::FaultProxy::start_with(
        &target.endpoint,
        support::proxy::Plan {
            rate: 1.0,
            slow_down_only: true,
            user_agent: None,
            most: None,
            query: Some("partNumber=".into()),
        },
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write_tree(&source, &[("a.txt", bytes(1, 10)), ("b.txt", bytes(2, 20))]);
    let bucket = target.bucket("probe").await;
    let mut command = support::godwit();
    command
        .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
        .args([
            "--json",
            "--no-progress",
            "--state",
            &path_str(&ledger(&work)),
        ])
        .args(["--dest-endpoint", &proxy.endpoint]);
    let run = support::run(command).await;

    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("copied"), 2, "{run:?}");
    assert!(
        run.json()["guarantees"]["conditions"]["complete_if_none_match"]
            .as_str()
            .unwrap()
            .starts_with("unknown"),
        "{run:?}"
    );
    assert!(proxy.injected.faults() > 0);
    let open = target
        .client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
}
