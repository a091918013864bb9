//! Prometheus metrics of `godwit migrate --metrics-listen`: scraped over a real socket while a
//! real run (SQLite ledger, in-process S3 server) goes on, with the figures checked against what
//! the run did; and an address that cannot be bound refused with exit 2 before anything is copied.

mod support;

use std::time::Duration;

use support::path_str;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `GET /metrics` at `address` (`host:port`): the status and the text.
async fn scrape(address: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::get("/metrics")
        .header("host", address)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `series` (its name and labels exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_serves_its_figures_while_it_goes() {
    let target = support::Target::s3s_fs().await;
    let bucket = target.bucket("metrics").await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 4),
                support::bytes(i, 1000 + i as usize),
            )
        })
        .collect();
    let total_bytes: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    support::write_tree(
        &source,
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    );
    let ledger = support::ledger(&work);
    // `--watch` keeps the run going after its pass, so it can be scraped at leisure.
    let mut command = support::migrate_command(
        &target,
        &path_str(&source),
        &format!("s3://{bucket}"),
        &ledger,
        &[
            "--name",
            "watched",
            "--watch",
            "1h",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let mut run = command.spawn().unwrap();
    let mut stderr = BufReader::new(run.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("metrics at") {
                return line;
            }
        }
        panic!("the run ended without saying where its metrics are");
    })
    .await
    .expect("the run says where its metrics are");
    let address = said
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in: {said}"))
        .to_owned();

    // Until the pass has ended and the gauges (set every few seconds) have seen it.
    let text = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (status, text) = scrape(&address).await;
            assert_eq!(status, 200, "{text}");
            let gauge = sample(
                &text,
                r#"godwit_objects{migration="watched",state="copied"}"#,
            );
            if gauge == Some(40.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the gauges reach the run's end");

    assert_eq!(
        sample(&text, r#"godwit_objects_finished_total{state="copied"}"#),
        Some(40.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "godwit_bytes_copied_total"),
        Some(total_bytes as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"godwit_bytes{migration="watched",state="copied"}"#),
        Some(total_bytes as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"godwit_objects{migration="watched",state="failed"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"godwit_queue_depth{migration="watched"}"#),
        Some(0.0),
        "{text}"
    );
    // Every object's transfer went into the histogram, in buckets.
    assert_eq!(
        sample(&text, "godwit_transfer_duration_seconds_count"),
        Some(40.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"godwit_transfer_duration_seconds_bucket{le="+Inf"}"#
        ),
        Some(40.0),
        "{text}"
    );
    let commits = sample(&text, "godwit_ledger_commit_duration_seconds_count").unwrap_or(0.0);
    assert!(commits >= 1.0, "{text}");
    assert!(
        text.contains("# TYPE godwit_transfer_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# HELP godwit_transfer_duration_seconds Time from taking an object"),
        "{text}"
    );
    // The run beats as a worker while it works; it is idle between passes now, but recent.
    let workers = sample(&text, "godwit_active_workers").expect("the active workers' gauge");
    assert!(workers >= 1.0, "{text}");

    run.start_kill().unwrap();
    let _ = run.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_cannot_be_bound_is_refused_before_anything_is_copied() {
    let target = support::Target::s3s_fs().await;
    let bucket = target.bucket("metrics-taken").await;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    support::write_tree(&source, &[("a", b"a".to_vec())]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let ledger = support::ledger(&work);
    let run = support::migrate(
        &target,
        &path_str(&source),
        &format!("s3://{bucket}"),
        &ledger,
        &["--metrics-listen", &address],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&address), "{}", run.stderr);
    assert!(run.stderr.contains("--metrics-listen"), "{}", run.stderr);
    assert!(target.keys(&bucket).await.is_empty());
    assert!(!ledger.exists(), "the ledger was not even created");
}
