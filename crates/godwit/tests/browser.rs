//! The dashboard end to end, in a real headless Chromium: `godwit serve` (the real binary, its
//! workers in-process, an SQLite ledger) against in-process S3 servers, driven by
//! `tests/browser/dashboard.mjs` (playwright-core). `scripts/test.sh` installs Debian's chromium
//! and the script's npm package; without them the test is skipped, unless under CI, where it
//! fails. Screenshots of the pages are kept in `target/tmp/screenshots/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use godwit_s3_server::ServerOptions;
use support::{Target, path_str, write_tree};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "browser-test-token-0123456789";

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium and the script's package, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    if !script_dir().join("node_modules/playwright-core").exists() {
        return Err(
            "playwright-core is not installed (npm ci in crates/godwit/tests/browser)".into(),
        );
    }
    Ok(chromium)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser() {
    let chromium = match prerequisites() {
        Ok(chromium) => chromium,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{why}: run the tests with scripts/test.sh, which installs them")
        }
        Err(why) => {
            eprintln!("note: skipping the browser test: {why} (scripts/test.sh installs it)");
            return;
        }
    };
    // A source that refuses one key (the planted failure), and a destination that takes 150 ms a
    // PUT, so a migration runs long enough to be watched, paused and resumed.
    let source = Target::with_options(ServerOptions {
        unreadable_suffix: Some(".bad"),
        ..ServerOptions::default()
    })
    .await;
    let dest = Target::slow(Duration::from_millis(150)).await;
    let fail_bucket = source.bucket("planted").await;
    source.put(&fail_bucket, "p1/a.txt", b"fine").await;
    source.put(&fail_bucket, "p2/d.bad", b"refused").await;
    let dest_bucket = dest.bucket("dashboard").await;
    let work = tempfile::tempdir().unwrap();
    let form_source = work.path().join("form");
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("part-{}/file-{i:03}.bin", i % 4),
                support::bytes(i, 20_000 + i as usize * 1000),
            )
        })
        .collect();
    write_tree(
        &form_source,
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    );
    let slow_source = work.path().join("slow");
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("day-{}/clip-{i:03}.bin", i / 60),
                support::bytes(1000 + i, 50_000 + (i as usize % 7) * 30_000),
            )
        })
        .collect();
    write_tree(
        &slow_source,
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    );

    let mut serve = support::godwit();
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(work.path().join("ledger.db"))
        .env("GODWIT_TOKEN", TOKEN)
        .env("XDG_STATE_HOME", work.path().join("state"));
    let mut serve = serve.spawn().unwrap();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            eprintln!("serve: {line}");
            if let Some(rest) = line.split("dashboard at ").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_owned();
            }
        }
        panic!("godwit serve ended before saying where it listens")
    })
    .await
    .expect("godwit serve says where it listens");
    assert!(!address.contains(TOKEN));
    // The rest of what it says, shown with the test's output.
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("serve: {line}");
        }
    });

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = tokio::process::Command::new("node");
    node.arg(script_dir().join("dashboard.mjs"))
        .current_dir(script_dir())
        .env("CHROMIUM", &chromium)
        .env("GODWIT_URL", &address)
        .env("GODWIT_TOKEN", TOKEN)
        .env("SCREENSHOTS", &shots)
        .env("FAIL_BUCKET", &fail_bucket)
        .env("SOURCE_ENDPOINT", &source.endpoint)
        .env("DEST_BUCKET", &dest_bucket)
        .env("DEST_ENDPOINT", &dest.endpoint)
        .env("FORM_SOURCE", path_str(&form_source))
        .env("SLOW_SOURCE", path_str(&slow_source))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut node = node.spawn().unwrap();
    let mut answer = Some(node.stdin.take().unwrap());
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(300), async {
        let mut said = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("browser: {line}");
            if line == "HEAL" {
                // The planted failure's object becomes readable; the browser then retries it.
                source.serve_all();
                if let Some(mut answer) = answer.take() {
                    answer.write_all(b"healed\n").await.unwrap();
                }
            }
            said.push_str(&line);
            said.push('\n');
        }
        said
    })
    .await
    .expect("the browser test ends within 5 minutes");
    let status = node.wait().await.unwrap();
    assert!(status.success(), "the browser test failed:\n{said}");
    assert!(
        said.contains("ok   the progress reaches 100% without a reload"),
        "{said}"
    );
    for shot in [
        "migration-running.png",
        "migration-failed.png",
        "migration-finished.png",
    ] {
        let size = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{shot} is missing or empty ({size} bytes)");
    }
    // The destination holds what the browser watched finish: the form's 40 objects and the
    // long haul's 300.
    let keys = dest.keys(&dest_bucket).await;
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("from-the-form/"))
            .count(),
        40
    );
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("long-haul/")).count(),
        300
    );
    let _ = serve.start_kill();
}
