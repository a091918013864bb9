//! The table of bad inputs in `docs/errors.md`, a test a row: each bad input gets a message that
//! names the object or setting and says what to do, its documented exit code, and leaves the
//! ledger so that a re-run with the input fixed goes on correctly (each test does that re-run).
//! Real parts throughout: the `godwit` binary, the in-process S3 server, SQLite ledgers, a tmpfs
//! for the full disk. `every_row_of_the_table_has_its_test` keeps the table and the tests equal.

mod support;

use std::path::PathBuf;

use support::{Run, Target, path_str, write_tree};

/// The source every case starts from.
const FILES: [(&str, usize); 3] = [("a.txt", 10), ("b/c.txt", 20), ("b/d.txt", 30)];

/// A source directory of [`FILES`], an empty bucket on the in-process server, and a ledger path.
struct Case {
    target: Target,
    work: tempfile::TempDir,
    source: PathBuf,
    bucket: String,
    state: PathBuf,
}

impl Case {
    async fn new(hint: &str) -> Self {
        let target = Target::s3s_fs().await;
        Self::on(target, hint).await
    }

    async fn on(target: Target, hint: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let files: Vec<(&str, Vec<u8>)> = FILES
            .iter()
            .map(|&(key, len)| (key, support::bytes(len as u64, len)))
            .collect();
        write_tree(&source, &files);
        let bucket = target.bucket(hint).await;
        let state = support::ledger(&work);
        Self {
            target,
            work,
            source,
            bucket,
            state,
        }
    }

    fn src(&self) -> String {
        path_str(&self.source)
    }

    fn dest(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// `godwit migrate SRC DEST` against the server, with `extra`.
    async fn migrate(&self, extra: &[&str]) -> Run {
        self.migrate_between(&self.src(), &self.dest(), extra).await
    }

    async fn migrate_between(&self, source: &str, dest: &str, extra: &[&str]) -> Run {
        support::migrate(&self.target, source, dest, &self.state, extra).await
    }

    /// `godwit ARGS --state LEDGER` exactly as given (no endpoints added).
    async fn godwit(&self, args: &[&str]) -> Run {
        let mut command = support::godwit();
        command.args(args).arg("--state").arg(&self.state);
        support::run(command).await
    }

    async fn keys(&self) -> Vec<String> {
        self.target.keys(&self.bucket).await
    }

    /// The documented way on after objects failed: `godwit retry-failed`, then the same command.
    async fn retried_goes_on(&self, extra: &[&str], more: &[&str]) {
        let retried = self.godwit(&["retry-failed"]).await;
        assert_eq!(retried.code, Some(0), "{retried:?}");
        self.goes_on(extra, more).await;
    }

    async fn nothing_written(&self) {
        assert_eq!(self.keys().await, Vec::<String>::new());
    }

    /// The re-run with the input fixed: exit 0, and the destination holds the source's files
    /// and `more`.
    async fn goes_on(&self, extra: &[&str], more: &[&str]) {
        let run = self.migrate(extra).await;
        assert_eq!(run.code, Some(0), "the re-run: {run:?}");
        let mut expected: Vec<String> = FILES.iter().map(|(k, _)| k.to_string()).collect();
        expected.extend(more.iter().map(|k| k.to_string()));
        expected.sort();
        assert_eq!(self.keys().await, expected);
    }
}

/// The run ended with `code` and said each of `needles` on stderr, in words: no debug dump,
/// panic, or colour codes.
fn says(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "{run:?}");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "'{needle}' not in:\n{}",
            run.stderr
        );
    }
    for dump in [
        "ConnectorError",
        "{ kind:",
        "Os {",
        "panicked",
        "RUST_BACKTRACE",
        "\u{1b}[",
    ] {
        assert!(!run.stderr.contains(dump), "'{dump}' in:\n{}", run.stderr);
    }
}

// ---- Locations and endpoints --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn row_url_without_bucket() {
    let case = Case::new("e-url").await;
    let run = case.migrate_between(&case.src(), "s3://", &[]).await;
    says(&run, 2, &["'s3://' names no bucket", "s3://BUCKET/PREFIX"]);
    case.nothing_written().await;
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_unknown_scheme() {
    let case = Case::new("e-scheme").await;
    let run = case.migrate_between(&case.src(), "gs://bucket", &[]).await;
    says(
        &run,
        2,
        &["'gs://bucket'", "unsupported scheme", "s3://BUCKET"],
    );
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_database_url_without_table() {
    let case = Case::new("e-dburl").await;
    let dest = case.dest();
    let run = case
        .migrate_between("postgres://someone@127.0.0.1/db", &dest, &[])
        .await;
    says(&run, 2, &["missing table=", "?table=TABLE"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_destination_not_s3() {
    let case = Case::new("e-nots3").await;
    let elsewhere = path_str(&case.work.path().join("elsewhere"));
    let run = case.migrate_between(&case.src(), &elsewhere, &[]).await;
    says(&run, 2, &["godwit writes to S3"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_endpoint_not_a_url() {
    let case = Case::new("e-endpoint").await;
    let dest = case.dest();
    let run = case
        .godwit(&[
            "migrate",
            &case.src(),
            &dest,
            "--dest-endpoint",
            "localhost-9000",
        ])
        .await;
    says(&run, 2, &["'localhost-9000'", "http:// or https://"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_endpoint_unreachable() {
    let case = Case::new("e-unreach").await;
    let dest = case.dest();
    let run = case
        .godwit(&[
            "migrate",
            &case.src(),
            &dest,
            "--dest-endpoint",
            "http://127.0.0.1:9",
        ])
        .await;
    says(
        &run,
        2,
        &[
            "http://127.0.0.1:9 could not be reached (connection refused)",
            "check the endpoint URL",
        ],
    );
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    case.goes_on(&[], &[]).await;
}

/// The source's keys, as the destination expects them after the migration.
fn file_keys() -> Vec<String> {
    FILES.iter().map(|(key, _)| key.to_string()).collect()
}

/// A destination behind TLS with a private CA: its certificate is refused, once, in one line
/// saying what to pass; nothing is written; the same command with `--ca-bundle` goes on.
#[tokio::test(flavor = "multi_thread")]
async fn row_endpoint_certificate_untrusted() {
    let case = Case::new("e-tls").await;
    let certificates = support::tls::Certificates::make(case.work.path());
    let front = support::tls::front(&case.target.endpoint, &certificates).await;
    let (source, dest) = (case.src(), case.dest());
    let command = ["migrate", &source, &dest, "--dest-endpoint", &front];
    let run = case.godwit(&command).await;
    says(
        &run,
        2,
        &[
            &format!("{front} presented a certificate godwit does not trust"),
            "--ca-bundle FILE",
        ],
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    case.nothing_written().await;
    let ca = path_str(&certificates.ca);
    let run = case
        .godwit(&[&command[..], &["--ca-bundle", &ca]].concat())
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.keys().await, file_keys());
}

/// `--ca-bundle` naming a file that holds no certificate: the file and what to give.
#[tokio::test(flavor = "multi_thread")]
async fn row_ca_bundle_not_pem() {
    let case = Case::new("e-cabundle").await;
    let not_pem = path_str(&case.source.join("a.txt"));
    let run = case.migrate(&["--ca-bundle", &not_pem]).await;
    says(
        &run,
        2,
        &[
            &format!("CA bundle {not_pem}: holds no certificate"),
            "PEM file of CA certificates",
        ],
    );
    case.nothing_written().await;
    case.goes_on(&[], &[]).await;
}

/// `--insecure-skip-verify` takes the untrusted certificate, and says loudly what that costs.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_skip_verify_copies_and_warns() {
    let case = Case::new("e-insecure").await;
    let certificates = support::tls::Certificates::make(case.work.path());
    let front = support::tls::front(&case.target.endpoint, &certificates).await;
    let (source, dest) = (case.src(), case.dest());
    let run = case
        .godwit(&[
            "migrate",
            &source,
            &dest,
            "--dest-endpoint",
            &front,
            "--insecure-skip-verify",
        ])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains("--insecure-skip-verify")
            && run
                .stderr
                .contains(&format!("the certificate of {front} is not checked")),
        "{}",
        run.stderr
    );
    assert_eq!(case.keys().await, file_keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn row_bucket_missing() {
    let case = Case::new("e-nobucket").await;
    let run = case
        .migrate_between(&case.src(), "s3://no-such-bucket-godwit", &[])
        .await;
    says(
        &run,
        2,
        &["bucket 'no-such-bucket-godwit' does not exist", "create it"],
    );
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_credentials_rejected() {
    let case = Case::new("e-creds").await;
    let dest = case.dest();
    let mut command = support::godwit();
    command
        .args(["migrate", &case.src(), &dest, "--dest-endpoint"])
        .arg(&case.target.endpoint)
        .arg("--state")
        .arg(&case.state)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let run = support::run(command).await;
    says(&run, 2, &[&case.bucket, "credentials"]);
    assert!(!run.stderr.contains("not-the-secret"), "{}", run.stderr);
    case.nothing_written().await;
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_source_path_missing() {
    let case = Case::new("e-nosrc").await;
    let missing = path_str(&case.work.path().join("no-such-dir"));
    let dest = case.dest();
    let run = case.migrate_between(&missing, &dest, &[]).await;
    says(&run, 2, &[&missing, "does not exist"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_destination_garbage_answers() {
    // A server that answers every request 200 with a body that is not XML (a proxy's error page,
    // say).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let _ = stream.read(&mut buffer).await;
                let body = "<html><body>Welcome to nginx!</body";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let case = Case::new("e-garbage").await;
    let dest = case.dest();
    let endpoint = format!("http://{address}");
    // As a source: its listing cannot be read.
    let run = case
        .godwit(&[
            "migrate",
            "s3://bucket",
            &dest,
            "--source-endpoint",
            &endpoint,
            "--dest-endpoint",
            &case.target.endpoint,
        ])
        .await;
    says(&run, 2, &[&endpoint, "could not be parsed"]);
    case.goes_on(&[], &[]).await;
}

// ---- Settings ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn row_part_size_out_of_range() {
    let case = Case::new("e-part").await;
    let run = case.migrate(&["--part-size", "1KiB"]).await;
    says(&run, 2, &["--part-size 1.0 KiB", "5 MiB to 5 GiB"]);
    let run = case.migrate(&["--part-size", "6GiB"]).await;
    says(&run, 2, &["--part-size 6.0 GiB", "5 MiB to 5 GiB"]);
    case.nothing_written().await;
    case.goes_on(&["--part-size", "5MiB"], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_size_not_a_size() {
    let case = Case::new("e-size").await;
    let run = case.migrate(&["--memory-budget", "12 parsecs"]).await;
    says(
        &run,
        2,
        &["--memory-budget", "'12 parsecs'", "unknown unit"],
    );
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_multipart_threshold_too_large() {
    let case = Case::new("e-threshold").await;
    let run = case.migrate(&["--multipart-threshold", "6GiB"]).await;
    says(&run, 2, &["--multipart-threshold", "at most 5 GiB"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_concurrency_zero() {
    let case = Case::new("e-conc").await;
    let run = case.migrate(&["--concurrency", "0"]).await;
    says(&run, 2, &["--concurrency", "0 is not in 1..=4096"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_duration_invalid() {
    let case = Case::new("e-lease").await;
    let run = case.migrate(&["--lease", "0"]).await;
    says(&run, 2, &["--lease", "not a duration", "minutes (2m)"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_glob_invalid() {
    let case = Case::new("e-glob").await;
    let run = case.migrate(&["--exclude", "b/[c"]).await;
    says(
        &run,
        2,
        &["--exclude", "bad pattern 'b/[c'", "write a glob"],
    );
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_rule_invalid() {
    let case = Case::new("e-rule").await;
    let run = case.migrate(&["--group-by", "by-folder"]).await;
    says(
        &run,
        2,
        &["--group-by 'by-folder'", "prefix:N", "regex:PATTERN"],
    );
    let run = case.migrate(&["--partition-by", "regex:("]).await;
    says(&run, 2, &["--partition-by 'regex:('", "does not parse"]);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_manifest_missing() {
    let case = Case::new("e-nomanifest").await;
    let manifest = path_str(&case.work.path().join("list.jsonl"));
    let run = case.migrate(&["--manifest", &manifest]).await;
    says(
        &run,
        2,
        &[&format!("--manifest {manifest}"), "cannot be read"],
    );
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_manifest_bad_line() {
    let case = Case::new("e-manifest").await;
    let manifest = case.work.path().join("list.jsonl");
    std::fs::write(&manifest, "{\"source\": \"a.txt\"}\nb/c.txt\n").unwrap();
    let run = case.migrate(&["--manifest", &path_str(&manifest)]).await;
    says(
        &run,
        2,
        &["line 2", "not a JSON object", "{\"source\": \"a/b.txt\"}"],
    );
    case.nothing_written().await;
    std::fs::write(
        &manifest,
        "{\"source\": \"a.txt\"}\n{\"source\": \"b/c.txt\"}\n{\"source\": \"b/d.txt\"}\n",
    )
    .unwrap();
    case.goes_on(&["--manifest", &path_str(&manifest)], &[])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_json_errors() {
    let case = Case::new("e-json").await;
    // `support::migrate` passes --json: a refused setting is a JSON object on stdout too.
    let run = case.migrate(&["--part-size", "1KiB"]).await;
    says(&run, 2, &["--part-size"]);
    let said = run.json();
    assert_eq!(said["error"], "config", "{said}");
    assert_eq!(said["exit_code"], 2, "{said}");
    assert!(said["message"].as_str().unwrap().contains("5 MiB to 5 GiB"));
    // So is a command line clap refuses.
    let run = case.migrate(&["--concurrency", "0"]).await;
    let said = run.json();
    assert_eq!(said["error"], "usage", "{said}");
    assert!(said["message"].as_str().unwrap().contains("--concurrency"));
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_metrics_address_taken() {
    let case = Case::new("e-metrics").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let run = case.migrate(&["--metrics-listen", &address]).await;
    says(
        &run,
        2,
        &["--metrics-listen", &address, "choose another address"],
    );
    assert!(!case.state.exists(), "refused before the ledger was made");
    case.goes_on(&[], &[]).await;
}

// ---- The ledger -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn row_ledger_not_a_ledger() {
    let case = Case::new("e-corrupt").await;
    let garbage = b"these are someone's notes, not a ledger\n".repeat(200);
    std::fs::write(&case.state, &garbage).unwrap();
    let run = case.migrate(&[]).await;
    says(
        &run,
        2,
        &[&path_str(&case.state), "not a godwit ledger", "--state"],
    );
    assert_eq!(
        std::fs::read(&case.state).unwrap(),
        garbage,
        "left as it was"
    );
    case.nothing_written().await;
    std::fs::remove_file(&case.state).unwrap();
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_ledger_from_a_newer_godwit() {
    let case = Case::new("e-newer").await;
    case.goes_on(&[], &[]).await;
    let version: i64 = {
        let db = rusqlite::Connection::open(&case.state).unwrap();
        let version = db
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        db.execute_batch("PRAGMA user_version = 999").unwrap();
        version
    };
    let run = case.migrate(&[]).await;
    says(&run, 2, &["newer godwit", "upgrade godwit"]);
    let db = rusqlite::Connection::open(&case.state).unwrap();
    let now: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(now, 999, "a newer ledger is not touched");
    db.execute_batch(&format!("PRAGMA user_version = {version}"))
        .unwrap();
    drop(db);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_ledger_in_use() {
    let case = Case::new("e-busy").await;
    // What a second `migrate` meets: the first one's lock on the ledger.
    let mut lock_path = case.state.as_os_str().to_owned();
    lock_path.push(".lock");
    std::fs::create_dir_all(case.state.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let run = case.migrate(&[]).await;
    says(
        &run,
        2,
        &["is in use by another godwit process", "wait for it"],
    );
    case.nothing_written().await;
    drop(lock);
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_ledger_disk_full() {
    let case = Case::new("e-full").await;
    let many: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("many/f{i:04}"), vec![b'x'; 8]))
        .collect();
    write_tree(
        &case.source,
        &many
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    );
    // A small filesystem of its own for the ledger. Needs root (CI and this machine run tests
    // as root); elsewhere the row cannot be shown, and says so.
    let disk = case.work.path().join("small-disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let state = disk.join("ledger.db");
    let dest = case.dest();
    let run = support::migrate(&case.target, &case.src(), &dest, &state, &[]).await;
    says(&run, 2, &[&path_str(&state), "disk is full", "free space"]);
    // Room again: the same command goes on and ends with everything copied once.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(grown.success());
    let run = support::migrate(&case.target, &case.src(), &dest, &state, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["copied"], 1503, "{}", run.stdout);
    assert_eq!(case.keys().await.len(), 1503);
}

#[tokio::test(flavor = "multi_thread")]
async fn row_ledger_postgres_unreachable() {
    let case = Case::new("e-pg").await;
    let dest = case.dest();
    let mut command = support::godwit();
    command
        .args(["migrate", &case.src(), &dest, "--dest-endpoint"])
        .arg(&case.target.endpoint)
        .args([
            "--state",
            "postgres://nobody:pw-not-shown@127.0.0.1:9/ledger",
        ]);
    let run = support::run(command).await;
    says(
        &run,
        2,
        &[
            "postgres://nobody@127.0.0.1:9/ledger",
            "cannot connect (error connecting to server: Connection refused)",
            "check that PostgreSQL runs there",
        ],
    );
    assert!(!run.stderr.contains("pw-not-shown"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("creating a new object"),
        "{}",
        run.stderr
    );
    case.nothing_written().await;
    case.goes_on(&[], &[]).await;
}

// ---- Objects ----------------------------------------------------------------------------------

/// A run that ended with `failed` objects failed (exit 1), the others copied.
fn failed(run: &Run, failed: u64, needles: &[&str]) {
    says(run, 1, needles);
    assert_eq!(run.n("failed"), failed, "{}", run.stdout);
    assert_eq!(run.n("copied"), FILES.len() as u64, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn row_file_name_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let case = Case::new("e-utf8").await;
    let bad = case
        .source
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&bad, b"latin-1 name").unwrap();
    let run = case.migrate(&[]).await;
    failed(&run, 1, &["caf\\xE9.txt", "not valid UTF-8", "rename it"]);
    std::fs::rename(&bad, case.source.join("café.txt")).unwrap();
    case.goes_on(&[], &["café.txt"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_key_too_long() {
    let case = Case::new("e-long").await;
    let mut deep = case.source.join("long");
    for _ in 0..5 {
        deep.push("d".repeat(220));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f.txt"), b"far down").unwrap();
    let run = case.migrate(&[]).await;
    failed(
        &run,
        1,
        &["bytes at the destination", "at most 1024", "--exclude"],
    );
    // Refused before any request: nothing of it reached the server.
    assert!(case.keys().await.iter().all(|k| !k.starts_with("long/")));
    case.retried_goes_on(&["--exclude", "long/**"], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_key_with_control_character() {
    let case = Case::new("e-control").await;
    let bad = case.source.join("bell\u{7}.txt");
    std::fs::write(&bad, b"ding").unwrap();
    let run = case.migrate(&[]).await;
    // Shown escaped, not rung.
    failed(
        &run,
        1,
        &["bell\\x07.txt", "control character (U+0007)", "rename it"],
    );
    std::fs::rename(&bad, case.source.join("bell.txt")).unwrap();
    // Before this row, the key was written, and every later listing of the bucket failed
    // ("the server's reply could not be parsed"): the re-run could not go on.
    case.goes_on(&[], &["bell.txt"]).await;
}

/// The documented way on, `retry-failed` then the same command, after the bad name was fixed
/// by a rename: the re-run lists the source again, so the new name is copied in that run and
/// the old one settles as gone. Before, the re-run resumed the retried objects without
/// listing: the old name vanished, the new one was left for a later run, and it exited 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_fixed_by_a_rename_is_copied_in_the_run_after_retry_failed() {
    let case = Case::new("e-renamed").await;
    let bad = case.source.join("bell\u{7}.txt");
    std::fs::write(&bad, b"ding").unwrap();
    let run = case.migrate(&[]).await;
    failed(&run, 1, &["bell\\x07.txt", "rename it"]);
    std::fs::rename(&bad, case.source.join("bell.txt")).unwrap();
    case.retried_goes_on(&[], &["bell.txt"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_symlink_loop() {
    let case = Case::new("e-loop").await;
    let link = case.source.join("self");
    std::os::unix::fs::symlink("self", &link).unwrap();
    let run = case.migrate(&[]).await;
    failed(
        &run,
        1,
        &[
            "self: cannot be listed",
            "symbolic link loop",
            "remove the link",
        ],
    );
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    std::fs::remove_file(&link).unwrap();
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_symlink_to_an_ancestor() {
    let case = Case::new("e-ancestor").await;
    let link = case.source.join("b/up");
    std::os::unix::fs::symlink("..", &link).unwrap();
    let run = case.migrate(&[]).await;
    failed(&run, 1, &["b/up", "a loop", "remove the link"]);
    // Before this row the walk went round once: a.txt was copied again as b/up/a.txt.
    assert!(case.keys().await.iter().all(|k| !k.starts_with("b/up/")));
    std::fs::remove_file(&link).unwrap();
    case.goes_on(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_special_file() {
    let case = Case::new("e-fifo").await;
    let fifo = case.source.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let run = case.migrate(&[]).await;
    failed(&run, 1, &["pipe", "not a regular file", "--exclude"]);
    case.retried_goes_on(&["--exclude", "pipe"], &[]).await;
}

/// A special file `--exclude` names from the first run is left out, as the hint says, not
/// failed. Before, a path the source could not read skipped the filter: it failed whatever
/// `--exclude` said (and after `retry-failed`, the re-run went on only when the retried object
/// was claimed before the listing reached it).
#[tokio::test(flavor = "multi_thread")]
async fn a_special_file_excluded_from_the_start_is_left_out() {
    let case = Case::new("e-fifo-out").await;
    let made = std::process::Command::new("mkfifo")
        .arg(case.source.join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let run = case.migrate(&["--exclude", "pipe"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.n("excluded"), 1, "{}", run.stdout);
    assert_eq!(case.keys().await, file_keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn row_source_object_forbidden() {
    let source = Target::with_options(godwit_s3_server::ServerOptions {
        unreadable_suffix: Some(".secret"),
        ..Default::default()
    })
    .await;
    let source_bucket = source.bucket("e-forbid-src").await;
    for (key, len) in FILES {
        source
            .put(&source_bucket, key, &support::bytes(len as u64, len))
            .await;
    }
    source.put(&source_bucket, "x.secret", b"not for us").await;
    let case = Case::on(Target::s3s_fs().await, "e-forbid").await;
    let from = format!("s3://{source_bucket}");
    let run = |extra: Vec<String>| {
        let mut command = support::godwit();
        command
            .args(["migrate", &from, &case.dest(), "--json", "--no-progress"])
            .args(["--source-endpoint", &source.endpoint])
            .args(["--dest-endpoint", &case.target.endpoint])
            .arg("--state")
            .arg(&case.state)
            .args(extra);
        support::run(command)
    };
    let first = run(vec!["--max-attempts".into(), "1".into()]).await;
    failed(&first, 1, &["x.secret", "AccessDenied"]);
    // The permission is granted: retry the failed, and the same command goes on.
    source.serve_all();
    let retried = case.godwit(&["retry-failed"]).await;
    assert_eq!(retried.code, Some(0), "{retried:?}");
    let second = run(vec![]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(second.n("copied"), 4, "{}", second.stdout);
    assert_eq!(case.keys().await.len(), 4);
}

// ---- Commands on the ledger -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn row_unknown_migration() {
    let case = Case::new("e-name").await;
    case.goes_on(&[], &[]).await;
    let run = case.godwit(&["failed", "no such migration"]).await;
    says(
        &run,
        2,
        &["no migration named 'no such migration'", "`godwit status`"],
    );
    // A unique beginning of the name is enough.
    let prefix = &case.src()[..case.src().len() - 1];
    let run = case.godwit(&["failed", prefix]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    // One that begins two names is not.
    let other = case.work.path().join("src2");
    write_tree(&other, &[("z.txt", b"z".to_vec())]);
    let dest = format!("{}/second", case.dest());
    let second = case.migrate_between(&path_str(&other), &dest, &[]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    let run = case.godwit(&["failed", prefix]).await;
    says(
        &run,
        2,
        &["begins the names of 2 migrations", "give more of the name"],
    );
    case.goes_on(&[], &["second/z.txt"]).await;
}

// ---- The table --------------------------------------------------------------------------------

/// Every row of `docs/errors.md` names a test that exists, and every `row_` test here is in the
/// table: the documentation and the tests cannot drift apart.
#[test]
fn every_row_of_the_table_has_its_test() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let table = std::fs::read_to_string(format!("{root}/docs/errors.md")).unwrap();
    let mut named = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| ")) {
        let Some(test) = line
            .rsplit('|')
            .map(str::trim)
            .find(|cell| cell.contains(".rs::"))
        else {
            continue;
        };
        let test = test.trim_matches('`');
        let (file, function) = test.split_once("::").unwrap();
        let source = std::fs::read_to_string(format!("{root}/crates/godwit/tests/{file}")).unwrap();
        assert!(
            source.contains(&format!("async fn {function}()"))
                || source.contains(&format!("fn {function}()")),
            "docs/errors.md names {test}, which does not exist"
        );
        named.push(test.to_owned());
    }
    assert!(named.len() >= 30, "the table has {} rows", named.len());
    let here = include_str!("errors.rs");
    for function in here
        .split("async fn row_")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        let test = format!("errors.rs::row_{function}");
        assert!(named.contains(&test), "{test} is not in docs/errors.md");
    }
}
