//! `godwit serve` as a process: its token (generated once, owner-only, never printed; a short
//! one refused), its address (taken: a clear error; beyond loopback: a warning), and a clean stop.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::path_str;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `godwit serve` with `args` in `home`, and returns it with the first line it says.
async fn start(
    home: &std::path::Path,
    args: &[&str],
    token: Option<&str>,
) -> (tokio::process::Child, String) {
    let mut command = support::godwit();
    command
        .arg("serve")
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("GODWIT_STATE");
    match token {
        Some(token) => command.env("GODWIT_TOKEN", token),
        None => command.env_remove("GODWIT_TOKEN"),
    };
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
            if line.contains("dashboard at") {
                break;
            }
        }
    })
    .await;
    (child, said)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_makes_an_owner_only_token_and_says_where_not_what() {
    let home = tempfile::tempdir().unwrap();
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], None).await;
    let file = home.path().join(".local/state/godwit/token");
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    assert!(token.len() >= 43, "{token}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(said.contains(&path_str(&file)), "{said}");
    assert!(said.contains("made now"), "{said}");
    assert!(
        !said.contains(token),
        "the token itself was printed: {said}"
    );
    // The default ledger beside it.
    assert!(said.contains(".local/state/godwit/ledger.db"), "{said}");
    serve.start_kill().unwrap();
    let _ = serve.wait().await;

    // A second start keeps it.
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], None).await;
    assert!(!said.contains("made now"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_are_refused_with_exit_2_before_anything_is_served() {
    let home = tempfile::tempdir().unwrap();
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], Some("short")).await;
    let status = serve.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("GODWIT_TOKEN") && said.contains("16"),
        "{said}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let token = Some("a-long-enough-test-token");
    let (mut serve, said) = start(home.path(), &["--listen", &address], token).await;
    let status = serve.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("cannot listen on {address}")),
        "{said}"
    );
    assert!(said.contains("--listen"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_is_warned_about() {
    let home = tempfile::tempdir().unwrap();
    let token = Some("a-long-enough-test-token");
    let (mut serve, said) = start(home.path(), &["--listen", "0.0.0.0:0"], token).await;
    assert!(
        said.contains("warning") && said.contains("without TLS"),
        "{said}"
    );
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], token).await;
    assert!(!said.contains("without TLS"), "{said}");
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
}

/// One API call to a running server: its status and JSON body.
async fn call(
    address: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let host = address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &host)
        .header("authorization", format!("Bearer {FLEET_TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// `GET` of `url` (`host:port/path`, or `http://host:port/path`), with the bearer token if
/// given: the status and the text.
async fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let url = url.trim_start_matches("http://");
    let (host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    let path = if path.is_empty() { "/metrics" } else { path };
    let stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = axum::http::Request::get(path).header("host", host);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const FLEET_TOKEN: &str = "a-fleet-token-shared-by-servers";

/// Starts `godwit serve` on `ledger` and returns it with its address.
async fn serve_on(
    ledger: &str,
    home: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--state", ledger];
    args.extend_from_slice(extra);
    let (child, said) = start(home, &args, Some(FLEET_TOKEN)).await;
    let address = said
        .split("dashboard at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in: {said}"))
        .trim_end_matches('/')
        .to_owned();
    (child, address)
}

/// Several servers and a fleet's workers on one PostgreSQL ledger: a migration created through
/// one server (serving only) is led by a `godwit worker` elsewhere, and watched to its end
/// through another server.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_queued_through_one_server_is_run_by_the_fleet_and_seen_by_another() {
    let Some(ledger) = support::postgres_schema("serve_fleet").await else {
        return;
    };
    let dest = support::Target::s3s_fs().await;
    let bucket = dest.bucket("fleet-serve").await;
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("source");
    let files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("part-{}/f{i}.bin", i % 3),
                support::bytes(i, 3000 + i as usize),
            )
        })
        .collect();
    support::write_tree(
        &source,
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    );

    let (mut first, first_address) =
        serve_on(&ledger, home.path(), &["--no-workers", "--metrics-public"]).await;
    let (mut second, second_address) = serve_on(&ledger, home.path(), &["--no-workers"]).await;
    let (status, created) = call(
        &first_address,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({
            "source": path_str(&source),
            "dest": format!("s3://{bucket}/fleet"),
            "dest_endpoint": dest.endpoint,
            "name": "fleet through the API",
            "partition_by": "prefix:1",
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["phase"], "queued");
    // Nobody works on it yet: both servers only serve.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, seen) = call(
        &second_address,
        "GET",
        &format!("/api/migrations/{id}"),
        None,
    )
    .await;
    assert_eq!(seen["phase"], "queued", "{seen}");

    let mut worker = support::godwit();
    worker.args([
        "worker",
        "--state",
        &ledger,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut worker = worker.spawn().unwrap();
    let mut said = BufReader::new(worker.stderr.take().unwrap()).lines();
    let worker_metrics = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = said.next_line().await.unwrap() {
            if let Some(address) = line.split("metrics at http://").nth(1) {
                return address.to_owned();
            }
        }
        panic!("the worker ended without saying where its metrics are");
    })
    .await
    .expect("the worker says where its metrics are");
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let (_, seen) = call(
                &second_address,
                "GET",
                &format!("/api/migrations/{id}"),
                None,
            )
            .await;
            if seen["phase"] == "finished" {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the fleet's worker finishes the migration");
    assert_eq!(finished["progress"]["objects"]["copied"], 30, "{finished}");
    assert_eq!(dest.keys(&bucket).await.len(), 30);
    let (_, partitions) = call(
        &first_address,
        "GET",
        &format!("/api/migrations/{id}/partitions"),
        None,
    )
    .await;
    assert_eq!(partitions.as_array().unwrap().len(), 3, "{partitions}");

    // The worker that copied the objects counts them; the servers see the ledger's gauges
    // (the first without a token: `--metrics-public`).
    let (status, text) = scrape(&worker_metrics, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("godwit_objects_finished_total{state=\"copied\"} 30\n"),
        "{text}"
    );
    assert!(
        text.contains("godwit_transfer_duration_seconds_count 30\n"),
        "{text}"
    );
    let gauge = "godwit_objects{migration=\"fleet through the API\",state=\"copied\"} 30\n";
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, text) = scrape(&format!("{first_address}/metrics"), None).await;
            assert_eq!(status, 200, "{text}");
            if text.contains(gauge) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the first server's gauges see the fleet's work");
    assert!(seen.contains("godwit_active_workers "), "{seen}");
    let (status, _) = scrape(&format!("{second_address}/metrics"), None).await;
    assert_eq!(
        status, 401,
        "the second server keeps /metrics behind the token"
    );
    let (status, text) = scrape(&format!("{second_address}/metrics"), Some(FLEET_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    for child in [&mut first, &mut second, &mut worker] {
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
}

/// `curl` with `args`: its exit code and what it printed.
async fn curl(args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl (Debian's curl package)");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), said)
}

/// `--tls-cert` and `--tls-key`: the API and the dashboard over HTTPS with that certificate (a
/// client trusting its CA is answered, one that does not refuses it, plain HTTP gets no answer),
/// no warning beyond loopback; a key that is not one is refused with exit 2, naming the flag.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_certificate_it_serves_https() {
    let home = tempfile::tempdir().unwrap();
    let certificates = support::tls::Certificates::make(home.path());
    let (ca, cert, key) = (
        path_str(&certificates.ca),
        path_str(&certificates.cert),
        path_str(&certificates.key),
    );
    let token = "a-long-enough-test-token";
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let (mut serve, said) = start(home.path(), &args, Some(token)).await;
    assert!(!said.contains("without TLS"), "{said}");
    let port = said
        .split("dashboard at https://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|address| address.rsplit(':').next())
        .unwrap_or_else(|| panic!("no https address in: {said}"))
        .to_owned();
    let url = format!("https://127.0.0.1:{port}/api/migrations");
    let bearer = format!("Authorization: Bearer {token}");
    let status = ["-o", "/dev/null", "-w", "%{http_code}"];
    let mut trusted = vec!["--cacert", &ca, "-H", &bearer];
    trusted.extend(status);
    trusted.push(&url);
    assert_eq!(curl(&trusted).await, (Some(0), "200".to_owned()));
    let login = format!("https://127.0.0.1:{port}/login");
    let (code, page) = curl(&["--cacert", &ca, &login]).await;
    assert_eq!(code, Some(0), "{page}");
    assert!(page.contains("<form"), "{page}");
    // Without the CA, curl refuses the certificate (its exit 60).
    let (code, said) = curl(&[&url]).await;
    assert_eq!(code, Some(60), "{said}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (code, said) = curl(&[&format!("http://127.0.0.1:{port}/api/migrations")]).await;
    assert_ne!(code, Some(0), "{said}");
    serve.start_kill().unwrap();
    let _ = serve.wait().await;

    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &ca,
    ];
    let (mut serve, said) = start(home.path(), &args, Some(token)).await;
    let status = serve.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("--tls-key {ca}")) && said.contains("no private key"),
        "{said}"
    );
}
