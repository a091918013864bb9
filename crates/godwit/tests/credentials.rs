//! Where each side's credentials come from, end to end: the real binary against in-process S3
//! servers that accept only the keys a test grants them, with HOME pointed at a directory holding
//! the `~/.aws` files the test writes, and (for Secrets Manager) the moto server `scripts/test.sh`
//! starts. Every key here is an obviously fake test value.

mod support;

use support::keys::{ENV_KEY, Work, assert_kept_secret, copied_all};
use support::secrets::{Secrets, keys, moto};
use support::{Run, Target, bytes, path_str};

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
