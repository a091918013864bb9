//! Control end to end: pause, resume and cancel reaching every process of a migration, and a
//! second signal handing the claims back at once.

mod support;

use support::{bytes, ledger, path_str, write_tree};

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
