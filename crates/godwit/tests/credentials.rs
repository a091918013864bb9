//! Where each side's credentials come from, end to end: the real binary against in-process S3
//! servers that accept only the keys a test grants them, with HOME pointed at a directory holding
//! the `~/.aws` files the test writes, and (for Secrets Manager) the moto server `scripts/test.sh`
//! starts. Every key here is an obviously fake test value.

mod support;

use std::path::{Path, PathBuf};

use support::secrets::{Secrets, keys, moto};
use support::{Run, Target, bytes, path_str, write_tree};

/// A key pair the environment names and no server here accepts.
const ENV_KEY: &str = "env-key-never-granted";
const ENV_SECRET: &str = "env-secret-never-granted";

/// A test's working directory: a HOME for `~/.aws`, a source tree and the ledger.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new(n_files: u64) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..n_files)
            .map(|i| (format!("d{}/f{i}", i % 3), bytes(i, 300 + i as usize)))
            .collect();
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        write_tree(&dir.path().join("src"), &files);
        Work { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn source(&self) -> String {
        path_str(&self.dir.path().join("src"))
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// Writes `~/.aws/NAME` in this test's HOME.
    fn aws_file(&self, name: &str, text: &str) {
        let dir = self.home().join(".aws");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// `godwit ARGS --state LEDGER`, with this test's HOME, the environment's keys set to a pair
    /// no server accepts, and no AWS file or profile from the machine running the tests.
    fn godwit(&self, args: &[&str]) -> tokio::process::Command {
        self.godwit_on(&path_str(&self.state()), args)
    }

    /// [`Work::godwit`] with the ledger at `state` (a path or a PostgreSQL URL).
    fn godwit_on(&self, state: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = support::godwit();
        command
            .args(args)
            .arg("--state")
            .arg(state)
            .env("HOME", self.home())
            .env("AWS_ACCESS_KEY_ID", ENV_KEY)
            .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        for side in ["SOURCE", "DEST"] {
            for name in ["ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN"] {
                command.env_remove(format!("GODWIT_{side}_AWS_{name}"));
            }
        }
        command
    }

    /// The ledger file's bytes (SQLite: the main file and its write-ahead log).
    fn ledger_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.state().into_os_string();
            path.push(suffix);
            if let Ok(bytes) = std::fs::read(Path::new(&path)) {
                all.extend(bytes);
            }
        }
        all
    }
}

/// Fails the test when `secret` appears in the run's output or the ledger's bytes.
fn assert_kept_secret(secret: &str, runs: &[&Run], work: &Work) {
    for run in runs {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the secret {secret} appears in a run's output:\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
    }
    let ledger = work.ledger_bytes();
    assert!(
        !ledger.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret {secret} is in the ledger's bytes"
    );
}

fn copied_all(run: &Run, n_files: u64) {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.n("copied"), n_files, "{}", run.stdout);
}

/// An explicit `--dest-profile` wins over `AWS_ACCESS_KEY_ID` in the environment, as `aws
/// --profile` does: for static keys in `~/.aws/credentials`, static keys in `~/.aws/config`,
/// and a `credential_process` (issue 13). Before, the environment's keys were used and the
/// server answered 403.
#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_profile_wins_over_the_environment_keys() {
    struct Case {
        profile: &'static str,
        key: &'static str,
        secret: &'static str,
        files: fn(&Work, &str),
    }
    let cases = [
        Case {
            profile: "archive",
            key: "profile-key-credentials-file",
            secret: "profile-secret-credentials-file-7f3a",
            files: |work, script| {
                let _ = script;
                work.aws_file(
                    "credentials",
                    "[default]\naws_access_key_id = default-key-never-granted\naws_secret_access_key = x\n\n\
                     [archive]\naws_access_key_id = profile-key-credentials-file\n\
                     aws_secret_access_key = profile-secret-credentials-file-7f3a\n",
                );
            },
        },
        Case {
            profile: "archive",
            key: "profile-key-config-file",
            secret: "profile-secret-config-file-91c2",
            files: |work, script| {
                let _ = script;
                work.aws_file(
                    "config",
                    "[profile archive]\naws_access_key_id = profile-key-config-file\n\
                     aws_secret_access_key = profile-secret-config-file-91c2\n",
                );
            },
        },
        Case {
            profile: "by-process",
            key: "process-key",
            secret: "process-secret-5be0",
            files: |work, script| {
                work.aws_file(
                    "config",
                    &format!("[profile by-process]\ncredential_process = {script}\n"),
                );
            },
        },
    ];
    for case in cases {
        let target = Target::s3s_fs().await;
        target.server_keys().grant(case.key, case.secret);
        let work = Work::new(4);
        let script = work.dir.path().join("credentials.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"process-key\", \"SecretAccessKey\": \"process-secret-5be0\"}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (case.files)(&work, &path_str(&script));
        let bucket = target.bucket("profile").await;
        let run = support::run(work.godwit(&[
            "migrate",
            &work.source(),
            &format!("s3://{bucket}"),
            "--dest-endpoint",
            &target.endpoint,
            "--dest-profile",
            case.profile,
            "--json",
            "--no-progress",
        ]))
        .await;
        copied_all(&run, 4);
        let keys = target.server_keys();
        assert!(
            keys.uses(case.key) > 0,
            "{}: the profile's key was not used",
            case.key
        );
        assert_eq!(
            keys.uses(ENV_KEY),
            0,
            "{}: the environment's key was used",
            case.key
        );
        assert_kept_secret(case.secret, &[&run], &work);
    }
}

/// A side with no credentials anywhere is told so, not that its endpoint could not be reached
/// (issue 13); nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_are_reported_as_missing() {
    let target = Target::s3s_fs().await;
    let work = Work::new(2);
    let bucket = target.bucket("nocreds").await;
    let mut command = work.godwit(&[
        "migrate",
        &work.source(),
        &format!("s3://{bucket}"),
        "--dest-endpoint",
        &target.endpoint,
    ]);
    command
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE");
    let run = support::run(command).await;
    assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("no AWS credentials"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("could not be reached") && !run.stderr.contains("endpoint URL"),
        "missing credentials blamed on the endpoint:\n{}",
        run.stderr
    );
    assert!(target.keys(&bucket).await.is_empty());
}

/// A profile that no AWS file defines is named, for either side (issue 13).
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_profile_is_named() {
    let target = Target::s3s_fs().await;
    let work = Work::new(1);
    work.aws_file(
        "credentials",
        "[other]\naws_access_key_id = k\naws_secret_access_key = s\n",
    );
    let bucket = target.bucket("noprofile").await;
    let dest = format!("s3://{bucket}");
    let source = format!("s3://{bucket}/in");
    let dest_side = [
        "migrate",
        &work.source(),
        &dest,
        "--dest-endpoint",
        &target.endpoint,
        "--dest-profile",
        "nosuch",
    ];
    let source_side = [
        "migrate",
        &source,
        &dest,
        "--source-endpoint",
        &target.endpoint,
        "--dest-endpoint",
        &target.endpoint,
        "--source-profile",
        "nosuch",
    ];
    for (args, side) in [
        (&dest_side[..], "destination"),
        (&source_side[..], "source"),
    ] {
        let run = support::run(work.godwit(args)).await;
        assert_eq!(run.code, Some(2), "stderr:\n{}", run.stderr);
        let wanted = "profile 'nosuch' is not in ~/.aws/config or ~/.aws/credentials";
        assert!(
            run.stderr.contains(side) && run.stderr.contains(wanted),
            "{side}: stderr:\n{}",
            run.stderr
        );
    }
}

/// Each side from its own place: the source's keys from `GODWIT_SOURCE_AWS_*`, the
/// destination's keys, endpoint and region from a secret in Secrets Manager (read with the
/// environment's keys, which neither S3 server accepts). The ledger records the secret's name,
/// never its keys; no output holds a key, at trace level either. Then the failures: keys the
/// server refuses, a secret that does not exist, per-side variables half set.
#[tokio::test(flavor = "multi_thread")]
async fn each_side_from_its_own_place_and_secrets_stay_secret() {
    let Some(moto) = moto() else { return };
    let secrets = Secrets::new(&moto);
    let source = Target::s3s_fs().await;
    let dest = Target::s3s_fs().await;
    const SOURCE_KEY: &str = "source-key-from-variables";
    const SOURCE_SECRET: &str = "source-secret-planted-4e1f9a";
    const DEST_KEY: &str = "dest-key-from-secret";
    const DEST_SECRET: &str = "dest-secret-planted-c27d05";
    source.server_keys().grant(SOURCE_KEY, SOURCE_SECRET);
    dest.server_keys().grant(DEST_KEY, DEST_SECRET);
    let source_bucket = source.bucket("sides-src").await;
    for i in 0..5 {
        source
            .put(&source_bucket, &format!("k{i}"), &bytes(i, 700))
            .await;
    }
    let dest_bucket = dest.bucket("sides-dst").await;
    const DEST_TOKEN: &str = "dest-session-token-planted-88e6";
    let mut with_token = keys(DEST_KEY, DEST_SECRET, &dest.endpoint);
    with_token["aws_session_token"] = DEST_TOKEN.into();
    let name = secrets.create("sides", &with_token).await;
    let work = Work::new(0);
    let from = format!("s3://{source_bucket}");
    let to = format!("s3://{dest_bucket}");
    let migrate = |secret: &str| {
        let mut command = work.godwit(&[
            "migrate",
            &from,
            &to,
            "--source-endpoint",
            &source.endpoint,
            "--dest-secret",
            secret,
            "--json",
            "--no-progress",
        ]);
        command
            .env("GODWIT_SOURCE_AWS_ACCESS_KEY_ID", SOURCE_KEY)
            .env("GODWIT_SOURCE_AWS_SECRET_ACCESS_KEY", SOURCE_SECRET);
        secrets.point(&mut command);
        command
    };

    let run = support::run(migrate(&name)).await;
    copied_all(&run, 5);
    assert_eq!(dest.keys(&dest_bucket).await.len(), 5);
    assert!(source.server_keys().uses(SOURCE_KEY) > 0);
    assert!(dest.server_keys().uses(DEST_KEY) > 0);
    for server in [&source, &dest] {
        assert_eq!(server.server_keys().uses(ENV_KEY), 0);
    }
    assert!(
        run.stderr.contains("TRACE"),
        "the run did not log at trace level:\n{}",
        run.stderr
    );
    let ledger = work.ledger_bytes();
    assert!(
        ledger.windows(name.len()).any(|w| w == name.as_bytes()),
        "the ledger does not record the secret's name for workers elsewhere"
    );

    // Keys the server refuses: exit 2, the secret named, nothing written.
    let refused = secrets
        .create(
            "refused",
            &keys(DEST_KEY, "dest-secret-planted-wrong-93be", &dest.endpoint),
        )
        .await;
    let empty = dest.bucket("sides-empty").await;
    let to_empty = format!("s3://{empty}");
    let mut command = work.godwit(&[
        "migrate",
        &from,
        &to_empty,
        "--source-endpoint",
        &source.endpoint,
        "--dest-secret",
        &refused,
    ]);
    command
        .env("GODWIT_SOURCE_AWS_ACCESS_KEY_ID", SOURCE_KEY)
        .env("GODWIT_SOURCE_AWS_SECRET_ACCESS_KEY", SOURCE_SECRET);
    secrets.point(&mut command);
    let wrong = support::run(command).await;
    assert_eq!(wrong.code, Some(2), "stderr:\n{}", wrong.stderr);
    assert!(
        wrong.stderr.contains(&refused) && wrong.stderr.contains("destination"),
        "{}",
        wrong.stderr
    );
    assert!(dest.keys(&empty).await.is_empty());

    // A secret that is not there.
    let missing = support::run(migrate("godwit-test/no-such-secret")).await;
    assert_eq!(missing.code, Some(2), "stderr:\n{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains("secret 'godwit-test/no-such-secret' is not in Secrets Manager"),
        "{}",
        missing.stderr
    );

    // Half a pair of per-side variables.
    let mut half = migrate(&name);
    half.env_remove("GODWIT_SOURCE_AWS_SECRET_ACCESS_KEY");
    let half = support::run(half).await;
    assert_eq!(half.code, Some(2), "stderr:\n{}", half.stderr);
    assert!(
        half.stderr.contains(
            "GODWIT_SOURCE_AWS_ACCESS_KEY_ID is set without GODWIT_SOURCE_AWS_SECRET_ACCESS_KEY"
        ),
        "{}",
        half.stderr
    );

    for secret in [
        SOURCE_SECRET,
        DEST_SECRET,
        DEST_TOKEN,
        "dest-secret-planted-wrong-93be",
    ] {
        assert_kept_secret(secret, &[&run, &wrong, &missing, &half], &work);
    }
}

/// The secret is rotated in the middle of a run: the new keys are granted, the secret updated,
/// the old keys revoked. Requests refused with the old keys read the secret again and go on
/// with the new ones; the run finishes without a restart and with nothing failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_rotated_mid_run_is_read_again_and_the_run_finishes() {
    let Some(moto) = moto() else { return };
    let secrets = Secrets::new(&moto);
    const N_FILES: u64 = 40;
    const OLD_KEY: &str = "rotation-key-old";
    const OLD_SECRET: &str = "rotation-secret-old-planted-61aa";
    const NEW_KEY: &str = "rotation-key-new";
    const NEW_SECRET: &str = "rotation-secret-new-planted-d0c4";
    let dest = Target::slow(std::time::Duration::from_millis(100)).await;
    let server_keys = dest.server_keys();
    server_keys.grant(OLD_KEY, OLD_SECRET);
    let bucket = dest.bucket("rotation").await;
    let name = secrets
        .create("rotation", &keys(OLD_KEY, OLD_SECRET, &dest.endpoint))
        .await;
    let work = Work::new(N_FILES);
    let mut command = work.godwit(&[
        "migrate",
        &work.source(),
        &format!("s3://{bucket}"),
        "--dest-secret",
        &name,
        "--concurrency",
        "2",
        "--json",
        "--no-progress",
    ]);
    secrets.point(&mut command);
    // The trace log is long: to files, so a full pipe never holds the run up.
    let stdout_path = work.dir.path().join("stdout");
    let stderr_path = work.dir.path().join("stderr");
    command
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let read_run = |code: Option<i32>| Run {
        code,
        stdout: String::from_utf8_lossy(&std::fs::read(&stdout_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap()).into_owned(),
    };
    let mut child = command.spawn().unwrap();

    let started = std::time::Instant::now();
    while dest.keys(&bucket).await.len() < 8 {
        if let Some(status) = child.try_wait().unwrap() {
            let run = read_run(status.code());
            panic!(
                "the run ended before the rotation:\n{}\n{}",
                run.stdout, run.stderr
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the run did not get going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server_keys.grant(NEW_KEY, NEW_SECRET);
    secrets
        .put(&name, &keys(NEW_KEY, NEW_SECRET, &dest.endpoint))
        .await;
    server_keys.revoke(OLD_KEY);
    let old_uses_at_revocation = server_keys.uses(OLD_KEY);
    let copied_at_revocation = dest.keys(&bucket).await.len() as u64;

    let status = child.wait().await.unwrap();
    let run = read_run(status.code());
    copied_all(&run, N_FILES);
    assert!(
        copied_at_revocation < N_FILES,
        "the rotation came after the run had copied everything"
    );
    assert_eq!(
        run.json()["failed"].as_u64().unwrap_or(0),
        0,
        "{}",
        run.stdout
    );
    assert_eq!(dest.keys(&bucket).await.len() as u64, N_FILES);
    assert!(
        server_keys.uses(OLD_KEY) > old_uses_at_revocation,
        "no request met the revoked keys: the rotation was not in the middle of the run"
    );
    assert!(
        server_keys.uses(NEW_KEY) > 0,
        "the new keys were never used"
    );
    for secret in [OLD_SECRET, NEW_SECRET] {
        assert_kept_secret(secret, &[&run], &work);
    }
}

/// One request to a running `godwit serve` with its token: the status and the text.
async fn request(address: &str, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", address)
        .header("authorization", format!("Bearer {SERVE_TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const SERVE_TOKEN: &str = "a-test-token-for-the-credentials-suite";

/// `godwit serve`'s API takes a secret by name (keys are never posted); the server checks the
/// side with the keys it reads itself, and its workers read the secret again from the
/// migration's recorded options to copy. No API answer, dashboard page, log line (at trace
/// level) or ledger byte holds the keys.
#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_a_secret_by_name_and_its_workers_read_it_themselves() {
    let Some(moto) = moto() else { return };
    let secrets = Secrets::new(&moto);
    const KEY: &str = "serve-key-from-secret";
    const SECRET: &str = "serve-secret-planted-3a7c41";
    let dest = Target::s3s_fs().await;
    dest.server_keys().grant(KEY, SECRET);
    let bucket = dest.bucket("serve-secret").await;
    let name = secrets
        .create("serve", &keys(KEY, SECRET, &dest.endpoint))
        .await;
    let work = Work::new(6);
    let mut command = work.godwit(&["serve", "--listen", "127.0.0.1:0"]);
    command.env("GODWIT_TOKEN", SERVE_TOKEN);
    secrets.point(&mut command);
    let stderr_path = work.dir.path().join("serve-stderr");
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut serve = command.spawn().unwrap();
    let stderr = || String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap()).into_owned();
    let address = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let said = stderr();
            if let Some(rest) = said.split("dashboard at http://").nth(1) {
                let address = rest.split(['/', ' ', '\n']).next().unwrap().to_owned();
                return address;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("serve did not start:\n{}", stderr()));

    let mut answers = Vec::new();
    let body = serde_json::json!({
        "source": work.source(),
        "dest": format!("s3://{bucket}"),
        "dest_secret": name,
    });
    let (status, created) =
        request(&address, "POST", "/api/migrations", Some(body.to_string())).await;
    assert_eq!(status, 201, "{created}\n{}", stderr());
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_i64()
        .unwrap();
    answers.push(created);
    let finished = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let (_, seen) = request(&address, "GET", &format!("/api/migrations/{id}"), None).await;
            let view: serde_json::Value = serde_json::from_str(&seen).unwrap_or_default();
            if view["phase"] == "finished" {
                return view;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server's workers did not finish it:\n{}", stderr()));
    assert_eq!(finished["progress"]["objects"]["copied"], 6, "{finished}");
    assert_eq!(dest.keys(&bucket).await.len(), 6);
    assert!(dest.server_keys().uses(KEY) > 0);
    assert_eq!(dest.server_keys().uses(ENV_KEY), 0);

    for path in [
        "/api/migrations".to_owned(),
        format!("/api/migrations/{id}"),
        format!("/api/migrations/{id}/objects"),
        "/".to_owned(),
        format!("/migrations/{id}"),
    ] {
        let (status, text) = request(&address, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push(text);
    }
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
    let said = stderr();
    assert!(said.contains("TRACE"), "not at trace level:\n{said}");
    let runs: Vec<Run> = answers
        .into_iter()
        .map(|stdout| Run {
            code: None,
            stdout,
            stderr: String::new(),
        })
        .chain([Run {
            code: None,
            stdout: String::new(),
            stderr: said,
        }])
        .collect();
    assert_kept_secret(SECRET, &runs.iter().collect::<Vec<_>>(), &work);
}

/// Every table of the PostgreSQL ledger at `url` (its own schema), each row as text.
async fn postgres_rows(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tables = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.len() >= 3, "no ledger tables in {url}");
    let mut all = String::new();
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM \"{name}\" t"), &[])
            .await
            .unwrap();
        for row in rows {
            all.push_str(&row.get::<_, String>(0));
            all.push('\n');
        }
    }
    all
}

/// The planting test: a unique secret planted in each place godwit reads keys from (the
/// environment's `AWS_SECRET_ACCESS_KEY`, a profile in `~/.aws/credentials`, a Secrets Manager
/// secret), runs that succeed, one whose objects fail and one whose keys are refused, all at
/// trace level, on a PostgreSQL ledger and a SQLite one; then `godwit serve` on the PostgreSQL
/// ledger, its API and dashboard pages. None of the secrets is in any output, log line, API
/// answer, page, ledger file byte or ledger table row.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_planted_in_each_place_is_found_nowhere_else() {
    let Some(ledger) = support::postgres_schema("planted").await else {
        return;
    };
    const ENV_KEY_PLANTED: &str = "env-key-planted";
    const ENV_SECRET_PLANTED: &str = "env-secret-planted-d81f4e";
    const PROFILE_KEY: &str = "profile-key-planted";
    const PROFILE_SECRET: &str = "profile-secret-planted-6b20ac";
    const WRONG_SECRET: &str = "profile-secret-planted-wrong-0e5d";
    const MANAGER_KEY: &str = "manager-key-planted";
    const MANAGER_SECRET: &str = "manager-secret-planted-f3392b";
    let source = Target::s3s_fs().await;
    let dest = Target::s3s_fs().await;
    source
        .server_keys()
        .grant(ENV_KEY_PLANTED, ENV_SECRET_PLANTED);
    dest.server_keys().grant(PROFILE_KEY, PROFILE_SECRET);
    dest.server_keys().grant(MANAGER_KEY, MANAGER_SECRET);
    let source_bucket = source.bucket("planted-src").await;
    for i in 0..4 {
        source
            .put(&source_bucket, &format!("p/k{i}"), &bytes(i, 900))
            .await;
    }
    let work = Work::new(0);
    work.aws_file(
        "credentials",
        &format!(
            "[archive]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {PROFILE_SECRET}\n\n\
             [wrong]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {WRONG_SECRET}\n"
        ),
    );
    let from = format!("s3://{source_bucket}");
    let sqlite = path_str(&work.state());
    let migrate = |state: &str, to: &str, dest_side: &[&str]| {
        let mut args = vec![
            "migrate",
            &from,
            to,
            "--source-endpoint",
            &source.endpoint,
            "--dest-endpoint",
            &dest.endpoint,
            "--json",
            "--no-progress",
        ];
        args.extend_from_slice(dest_side);
        let mut command = work.godwit_on(state, &args);
        command
            .env("AWS_ACCESS_KEY_ID", ENV_KEY_PLANTED)
            .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET_PLANTED)
            .env("GODWIT_LOG", "trace");
        command
    };
    let mut runs = Vec::new();

    // Succeeds: the source's keys from the environment, the destination's from a profile.
    let copied = dest.bucket("planted-a").await;
    let to = format!("s3://{copied}");
    for state in [ledger.as_str(), sqlite.as_str()] {
        let run = support::run(migrate(state, &to, &["--dest-profile", "archive"])).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stderr.contains("TRACE"), "not at trace level");
        runs.push(run);
    }
    assert_eq!(dest.keys(&copied).await.len(), 4);
    assert!(source.server_keys().uses(ENV_KEY_PLANTED) > 0);
    assert!(dest.server_keys().uses(PROFILE_KEY) > 0);

    // Objects fail: under this prefix every key is longer than S3 takes.
    let long = format!("{to}/{}/", "x".repeat(1020));
    let run = support::run(migrate(&ledger, &long, &["--dest-profile", "archive"])).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.n("failed"), 4, "{}", run.stdout);
    runs.push(run);

    // Refused: the profile's secret is wrong.
    let refused = dest.bucket("planted-b").await;
    let run = support::run(migrate(
        &ledger,
        &format!("s3://{refused}"),
        &["--dest-profile", "wrong"],
    ))
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("'wrong'"), "{}", run.stderr);
    runs.push(run);

    // The destination's keys from Secrets Manager.
    if let Some(moto) = moto() {
        let secrets = Secrets::new(&moto);
        let name = secrets
            .create(
                "planted",
                &keys(MANAGER_KEY, MANAGER_SECRET, &dest.endpoint),
            )
            .await;
        let managed = dest.bucket("planted-c").await;
        let mut command = migrate(
            &ledger,
            &format!("s3://{managed}"),
            &["--dest-secret", &name],
        );
        secrets.point(&mut command);
        let run = support::run(command).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        runs.push(run);
        assert!(dest.server_keys().uses(MANAGER_KEY) > 0);
    } else {
        assert!(std::env::var_os("CI").is_none(), "no moto under CI");
    }

    // What `godwit serve` shows of them all.
    let mut command = work.godwit_on(
        &ledger,
        &["serve", "--listen", "127.0.0.1:0", "--no-workers"],
    );
    let stderr_path = work.dir.path().join("serve-stderr");
    command
        .env("GODWIT_TOKEN", SERVE_TOKEN)
        .env("GODWIT_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut serve = command.spawn().unwrap();
    let stderr = || String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap()).into_owned();
    let address = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if let Some(rest) = stderr().split("dashboard at http://").nth(1) {
                return rest.split(['/', ' ', '\n']).next().unwrap().to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("serve did not start:\n{}", stderr()));
    let (status, list) = request(&address, "GET", "/api/migrations", None).await;
    assert_eq!(status, 200, "{list}");
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<i64> = listed
        .as_array()
        .or_else(|| listed["migrations"].as_array())
        .unwrap_or_else(|| panic!("no migrations in {list}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 3, "{list}");
    let mut answers = vec![list];
    let mut paths = vec![
        "/".to_owned(),
        "/migrations/new".to_owned(),
        "/api/workers".to_owned(),
        "/metrics".to_owned(),
    ];
    for id in ids {
        paths.extend([
            format!("/api/migrations/{id}"),
            format!("/api/migrations/{id}/objects"),
            format!("/api/migrations/{id}/objects?state=failed"),
            format!("/api/migrations/{id}/partitions"),
            format!("/migrations/{id}"),
            format!("/migrations/{id}/objects"),
        ]);
    }
    for path in paths {
        let (status, text) = request(&address, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push(text);
    }
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
    // Serving reads the ledger and logs little, at trace level too; what it logs is searched.
    let said = stderr();

    let tables = postgres_rows(&ledger).await;
    assert!(
        tables.contains("archive") || tables.contains(&from),
        "the tables hold no migration"
    );
    runs.extend(answers.into_iter().map(|stdout| Run {
        code: None,
        stdout,
        stderr: String::new(),
    }));
    runs.push(Run {
        code: None,
        stdout: tables,
        stderr: said,
    });
    for secret in [
        ENV_SECRET_PLANTED,
        PROFILE_SECRET,
        WRONG_SECRET,
        MANAGER_SECRET,
    ] {
        assert_kept_secret(secret, &runs.iter().collect::<Vec<_>>(), &work);
    }
}
