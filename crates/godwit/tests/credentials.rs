//! Where each side's credentials come from, end to end: the real binary against in-process S3
//! servers that accept only the keys a test grants them, with HOME pointed at a directory holding
//! the `~/.aws` files the test writes, and (for Secrets Manager) the moto server `scripts/test.sh`
//! starts. Every key here is an obviously fake test value.

mod support;

use std::path::{Path, PathBuf};

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
        let mut command = support::godwit();
        command
            .args(args)
            .arg("--state")
            .arg(self.state())
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
