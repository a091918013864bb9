//! The OpenAPI document checked by an independent tool against the running server: schemathesis
//! (from PyPI; `scripts/test.sh` installs it) generates requests for every operation from
//! `/api/openapi.json`, in a bounded run (`tests/schemathesis.toml`), and checks every answer: no
//! 5xx, statuses, content types, headers and bodies as documented, invalid data refused, valid
//! data accepted, every call refused without the token. Without schemathesis the test is skipped,
//! unless under CI, where it fails. Its JUnit report is kept in `target/tmp/schemathesis/`.

mod support;

use std::path::Path;
use std::time::Duration;

use godwit_s3_server::ServerOptions;
use support::{Target, path_str};
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "schemathesis-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn the_running_server_answers_as_its_openapi_document_says() {
    let installed = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed: run the tests with scripts/test.sh, which installs it"
        );
        eprintln!(
            "note: skipping the OpenAPI check: schemathesis is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    // A ledger with one migration: partitions p1 and p2, one object failed (the source refuses
    // it), so reads, retries, validations and cutovers meet real rows.
    let source = Target::with_options(ServerOptions {
        unreadable_suffix: Some(".bad"),
        ..ServerOptions::default()
    })
    .await;
    let dest = Target::s3s_fs().await;
    let source_bucket = source.bucket("openapi-src").await;
    for key in ["p1/a.txt", "p1/b.txt", "p2/c.txt", "p2/d.bad"] {
        source.put(&source_bucket, key, key.as_bytes()).await;
    }
    let dest_bucket = dest.bucket("openapi-dst").await;
    let work = tempfile::tempdir().unwrap();
    let ledger = work.path().join("ledger.db");
    let mut seed = support::godwit();
    seed.args(["migrate", &format!("s3://{source_bucket}")])
        .arg(format!("s3://{dest_bucket}"))
        .args(["--no-progress", "--state", &path_str(&ledger)])
        .args(["--partition-by", "prefix:1", "--max-attempts", "1"])
        .args(["--source-endpoint", &source.endpoint])
        .args(["--dest-endpoint", &dest.endpoint]);
    assert_eq!(support::run(seed).await.code, Some(1));

    // The server; a migration the fuzzer creates is checked against the destination server (a
    // bucket it names will not be there).
    let mut serve = support::godwit();
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &path_str(&ledger),
        ])
        .env("GODWIT_TOKEN", TOKEN)
        .env("AWS_ENDPOINT_URL", &dest.endpoint)
        .env("XDG_STATE_HOME", work.path().join("state"))
        .current_dir(work.path());
    let mut serve = serve.spawn().unwrap();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
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
    .unwrap();
    let errors = tokio::spawn(async move {
        let mut said = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            said.push(line);
        }
        said
    });

    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let output = tokio::process::Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &format!("{address}/api/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--workers", "1"])
        .args(["--report", "junit", "--report-dir", &path_str(&reports)])
        .current_dir(work.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    eprintln!("{said}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{said}"
    );
    // Every operation was tested, and cases were generated for them.
    assert!(said.contains("Tested: 16"), "{said}");
    assert!(said.contains(" passed"), "{said}");

    let _ = serve.start_kill();
    let _ = serve.wait().await;
    let said = errors.await.unwrap();
    // Nothing the fuzzer sent made the server fail inside.
    assert!(
        !said.iter().any(|line| line.contains("panicked")),
        "{}",
        said.join("\n")
    );
}
