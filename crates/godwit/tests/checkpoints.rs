//! Partition checkpoints end to end (issue 11, points 3, 4, 5 and 8): a run takes the partitions
//! asked for, validation reads the destination itself, cutover needs a passed validation with
//! nothing changed since and tells a webhook, and delta passes pick up what changed at the
//! source, leaving cut-over partitions alone.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use support::{Target, bytes, ledger, path_str, write_tree};

/// Three courses of two videos' files each.
fn courses(source: &Path) {
    let mut files = Vec::new();
    for course in 1..=3 {
        for video in 1..=2 {
            for part in 1..=2 {
                files.push((
                    format!("c{course}/v{video}/{part}.ts"),
                    bytes(course * 100 + video * 10 + part, 200 + part as usize),
                ));
            }
        }
    }
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(source, &borrowed);
}

struct Setup {
    target: Target,
    _work: tempfile::TempDir,
    source: std::path::PathBuf,
    bucket: String,
    state: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let target = Target::s3s_fs().await;
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        courses(&source);
        let bucket = target.bucket("checkpoints").await;
        let state = ledger(&work);
        Self {
            target,
            source,
            bucket,
            state,
            _work: work,
        }
    }

    async fn godwit(&self, args: &[&str]) -> support::Run {
        let mut command = support::godwit();
        command.args(args).args(["--state", &path_str(&self.state)]);
        support::run(command).await
    }

    async fn migrate(&self, extra: &[&str]) -> support::Run {
        let mut command = support::godwit();
        command
            .args([
                "migrate",
                &path_str(&self.source),
                &format!("s3://{}", self.bucket),
            ])
            .args(["--json", "--no-progress", "--state", &path_str(&self.state)])
            .args(["--group-by", "prefix:2", "--partition-by", "prefix:1"])
            .args(["--dest-endpoint", &self.target.endpoint])
            .args(extra);
        support::run(command).await
    }

    /// Each partition's state, as `godwit status --json` says.
    async fn states(&self) -> Vec<(String, String)> {
        let run = self.godwit(&["status", "--json"]).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        run.json()["migrations"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("-").to_owned(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A webhook that records what is POSTed to it, refusing the first `refuse` requests with 503.
async fn webhook(refuse: usize) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kept = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let kept = Arc::clone(&kept);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let kept = Arc::clone(&kept);
                        let seen = Arc::clone(&seen);
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let status = if n < refuse {
                                503
                            } else {
                                kept.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// `--partition` takes one course; validation catches an object deleted at the destination
/// after it was copied; cutover refuses a partition never validated, one whose validation
/// failed and one changed since, accepts a validated one, and tells the webhook (retried past
/// a refusal, its delivery recorded).
#[tokio::test(flavor = "multi_thread")]
async fn validation_reads_the_destination_and_cutover_needs_it() {
    let setup = Setup::new().await;
    let first = setup.migrate(&["--partition", "c1"]).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(first.n("copied"), 4, "{first:?}");
    assert_eq!(first.n("pending"), 0, "{first:?}");
    assert_eq!(first.n("pending_elsewhere"), 8, "{first:?}");
    assert_eq!(
        setup.states().await,
        pairs(&[("c1", "migrated"), ("c2", "pending"), ("c3", "pending")])
    );

    // Never validated: refused.
    let refused = setup.godwit(&["cutover", "c1", "--json"]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(refused.json()["reason"], "never validated");

    let valid = setup
        .godwit(&["validate", "--partition", "c1", "--json"])
        .await;
    assert_eq!(valid.code, Some(0), "{valid:?}");
    let report = &valid.json()["partitions"][0];
    assert_eq!(report["verified"], 4, "{report}");
    assert_eq!(report["groups_passed"], 2, "{report}");

    // Deleted at the destination after it was copied: validation says so, cutover refuses.
    setup
        .target
        .client
        .delete_object()
        .bucket(&setup.bucket)
        .key("c1/v2/1.ts")
        .send()
        .await
        .unwrap();
    let caught = setup
        .godwit(&["validate", "--partition", "c1", "--json"])
        .await;
    assert_eq!(caught.code, Some(1), "{caught:?}");
    let report = &caught.json()["partitions"][0];
    assert_eq!(report["missing"], 1, "{report}");
    assert_eq!(report["groups_failed"], 1, "{report}");
    assert_eq!(report["differences"][0]["key"], "c1/v2/1.ts", "{report}");
    assert_eq!(
        report["differences"][0]["problem"], "missing at the destination",
        "{report}"
    );
    let refused = setup.godwit(&["cutover", "c1", "--json"]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(refused.json()["reason"], "its latest validation failed");

    // Validated (the whole migration: c2 and c3 fail, not migrated), then changed since: the
    // re-run finds the object missing and queues it again.
    let again = setup.migrate(&["--partition", "c1"]).await;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(again.n("missing_at_destination"), 1, "{again:?}");
    let all = setup.godwit(&["validate", "--json"]).await;
    assert_eq!(all.code, Some(1), "c2 and c3 are not migrated: {all:?}");
    let reports = all.json()["partitions"].as_array().unwrap().clone();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["passed"], true, "{reports:?}");
    assert_eq!(reports[1]["not_migrated"], 4, "{reports:?}");
    assert_eq!(
        setup.states().await,
        pairs(&[("c1", "validated"), ("c2", "pending"), ("c3", "pending")])
    );

    let (url, received) = webhook(1).await;
    let done = setup
        .godwit(&["cutover", "c1", "--json", "--webhook", &url])
        .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let said = done.json();
    assert_eq!(said["state"], "cut_over", "{said}");
    assert_eq!(
        said["notice"]["attempts"], 2,
        "one refusal, then delivered: {said}"
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event"], "cutover");
    assert_eq!(got[0]["partition"], "c1");
    let shown = setup.godwit(&["status", "--json"]).await.json();
    let c1 = &shown["migrations"][0]["partitions"][0];
    assert_eq!(c1["state"], "cut_over", "{c1}");
    assert_eq!(c1["cut_over"], true, "{c1}");
    assert_eq!(c1["checkpoints"]["notice"]["attempts"], 2, "{c1}");
    assert!(c1["checkpoints"]["notice"]["delivered_at"].is_i64(), "{c1}");
    let twice = setup.godwit(&["cutover", "c1"]).await;
    assert_eq!(twice.code, Some(0), "{twice:?}");
    assert!(twice.stderr.contains("was cut over before"), "{twice:?}");

    // --max-partitions 1 takes c2 alone; then everything else.
    let one = setup.migrate(&["--max-partitions", "1"]).await;
    assert_eq!(one.code, Some(0), "{one:?}");
    assert_eq!(one.json()["partitions_taken"], serde_json::json!(["c2"]));
    assert_eq!(one.n("copied_this_run"), 4, "{one:?}");
    let unknown = setup.godwit(&["cutover", "c9"]).await;
    assert_eq!(unknown.code, Some(2), "{unknown:?}");
    assert!(
        unknown.stderr.contains("no objects in partition c9"),
        "{unknown:?}"
    );
}

/// Delta passes: an added file is new, a changed one replaces godwit's own copy; a cut-over
/// partition is left alone (what changed in it is reported, the destination untouched); and
/// `--auto-cutover` validates and cuts over what is migrated, running the cutover command.
#[tokio::test(flavor = "multi_thread")]
async fn delta_passes_pick_up_changes_and_leave_cut_over_partitions_alone() {
    let setup = Setup::new().await;
    let marks = setup._work.path().join("cutovers");
    let command = format!("echo \"$GODWIT_PARTITION\" >> {}", path_str(&marks));
    let first = setup
        .migrate(&["--auto-cutover", "--cutover-command", &command])
        .await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(first.n("copied"), 12, "{first:?}");
    assert_eq!(
        first.json()["cut_over_this_run"],
        serde_json::json!(["c1", "c2", "c3"])
    );
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "c1\nc2\nc3\n",
        "the cutover command ran once a partition"
    );
    let this_pass = &first.json()["this_pass"];
    assert_eq!(this_pass["new"], 12, "{this_pass}");

    // Every partition is cut over now: a changed and a new file in c1 are the application's.
    std::fs::write(setup.source.join("c1/v1/1.ts"), b"changed in c1").unwrap();
    std::fs::write(setup.source.join("c1/v9.ts"), b"new in c1").unwrap();
    let before = setup.target.get(&setup.bucket, "c1/v1/1.ts").await;
    let delta = setup.migrate(&[]).await;
    assert_eq!(delta.code, Some(0), "{delta:?}");
    let this_pass = &delta.json()["this_pass"];
    assert_eq!(this_pass["new"], 1, "{this_pass}");
    assert_eq!(this_pass["changed"], 1, "{this_pass}");
    assert_eq!(this_pass["in_cut_over"], 2, "{this_pass}");
    assert_eq!(delta.n("copied_this_run"), 0, "{delta:?}");
    assert_eq!(
        setup.target.get(&setup.bucket, "c1/v1/1.ts").await,
        before,
        "a cut-over partition's objects are the application's"
    );
    assert!(
        !setup
            .target
            .keys(&setup.bucket)
            .await
            .contains(&"c1/v9.ts".to_owned()),
        "nothing new goes into a cut-over partition"
    );

    // A fresh migration without cutover: a new file and a changed one are picked up, the
    // changed one replacing godwit's own copy; a removed one is counted as vanished.
    let other = Setup::new().await;
    let first = other.migrate(&[]).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    std::fs::write(other.source.join("c2/v1/1.ts"), b"changed").unwrap();
    std::fs::write(other.source.join("c2/v3.ts"), b"added").unwrap();
    std::fs::remove_file(other.source.join("c3/v2/2.ts")).unwrap();
    let delta = other.migrate(&[]).await;
    assert_eq!(delta.code, Some(0), "{delta:?}");
    let this_pass = &delta.json()["this_pass"];
    assert_eq!(
        (
            &this_pass["new"],
            &this_pass["changed"],
            &this_pass["vanished"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{this_pass}"
    );
    assert_eq!(delta.n("copied_this_run"), 2, "{delta:?}");
    assert_eq!(delta.n("replaced_this_run"), 1, "{delta:?}");
    assert_eq!(
        other.target.get(&other.bucket, "c2/v1/1.ts").await,
        b"changed"
    );
    assert_eq!(other.target.get(&other.bucket, "c2/v3.ts").await, b"added");
}

/// `--watch`: a pass, then after each interval a delta pass that picks up what was added, one
/// summary a pass, until Ctrl-C (exit 0: nothing left to do).
#[tokio::test(flavor = "multi_thread")]
async fn watch_makes_a_delta_pass_after_each_interval_until_stopped() {
    use tokio::io::AsyncBufReadExt;

    let setup = Setup::new().await;
    let mut command = support::godwit();
    command
        .args([
            "migrate",
            &path_str(&setup.source),
            &format!("s3://{}", setup.bucket),
        ])
        .args([
            "--json",
            "--no-progress",
            "--state",
            &path_str(&setup.state),
        ])
        .args(["--watch", "1s", "--dest-endpoint", &setup.target.endpoint]);
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    async fn next(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    ) -> serde_json::Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("a summary within a minute")
            .unwrap()
            .expect("a summary line");
        serde_json::from_str(&line).unwrap()
    }
    let first = next(&mut lines).await;
    assert_eq!(first["copied_this_run"], 12, "{first}");
    std::fs::write(setup.source.join("c3/late.ts"), b"late").unwrap();
    // The pass after the file appeared copies it (a pass may have begun before it did).
    let mut found = false;
    for _ in 0..3 {
        let pass = next(&mut lines).await;
        if pass["copied_this_run"] == 1 {
            assert_eq!(pass["this_pass"]["new"], 1, "{pass}");
            found = true;
            break;
        }
        assert_eq!(pass["copied_this_run"], 0, "{pass}");
    }
    assert!(found, "no delta pass copied the new file");
    assert_eq!(setup.target.get(&setup.bucket, "c3/late.ts").await, b"late");
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "stopped between passes with nothing left"
    );
}
