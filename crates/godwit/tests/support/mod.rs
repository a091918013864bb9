//! Test harness: real S3 servers and the real `godwit` binary.
//!
//! Every end-to-end test runs against each target: the in-process s3s-fs server (always), the
//! moto server that `scripts/test.sh` starts and names in `GODWIT_TEST_MOTO_ENDPOINT`, and the
//! in-process server again in a mode that ignores every conditional header (`If-None-Match`,
//! `If-Match`), as some S3-compatible servers do: a stand-in for those servers, which do not run
//! here. Under CI (`CI` set) a missing moto endpoint fails the test instead of narrowing it to
//! fewer servers.

#![allow(dead_code)]

pub mod keys;
pub mod proxy;
pub mod relay;
pub mod secrets;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use godwit_s3_server::{Conditions, Keys, LocalS3, RequestCounts, ServerOptions};

/// Test-only credentials of the in-process server (moto accepts any). Not secrets.
pub const ACCESS_KEY: &str = "godwit-test-key";
pub const SECRET_KEY: &str = "godwit-test-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
    /// The in-process server ignoring conditional requests (see the module docs).
    Lax,
}

pub struct Target {
    pub kind: Kind,
    pub endpoint: String,
    pub client: Client,
    server: Option<LocalS3>,
    _storage: Option<tempfile::TempDir>,
}

pub async fn client(endpoint: &str, access_key: &str, secret_key: &str) -> Client {
    let credentials =
        aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "test");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// Every S3 server the suite runs against.
pub async fn targets() -> Vec<Target> {
    let mut targets = vec![Target::s3s_fs().await];
    match std::env::var("GODWIT_TEST_MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            targets.push(Target {
                kind: Kind::Moto,
                client: client(&endpoint, ACCESS_KEY, SECRET_KEY).await,
                endpoint,
                server: None,
                _storage: None,
            });
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "GODWIT_TEST_MOTO_ENDPOINT is not set: run the tests with scripts/test.sh, which starts moto"
            )
        }
        _ => eprintln!(
            "note: GODWIT_TEST_MOTO_ENDPOINT unset; testing against s3s-fs only (scripts/test.sh adds moto)"
        ),
    }
    targets.push(Target::lax().await);
    targets
}

static BUCKETS: AtomicU32 = AtomicU32::new(0);

impl Target {
    pub async fn s3s_fs() -> Target {
        Self::local(Kind::S3sFs, ServerOptions::default()).await
    }

    /// The in-process server, ignoring conditional requests.
    pub async fn lax() -> Target {
        let options = ServerOptions {
            conditions: Conditions::Ignored,
            ..ServerOptions::default()
        };
        Self::local(Kind::Lax, options).await
    }

    /// The in-process server, every PutObject answered after `delay`.
    pub async fn slow(delay: std::time::Duration) -> Target {
        let options = ServerOptions {
            put_delay: delay,
            ..ServerOptions::default()
        };
        Self::local(Kind::S3sFs, options).await
    }

    /// The in-process server, every ListObjectsV2 answered after `delay`.
    pub async fn slow_listing(delay: std::time::Duration) -> Target {
        let options = ServerOptions {
            list_delay: delay,
            ..ServerOptions::default()
        };
        Self::local(Kind::S3sFs, options).await
    }

    /// The in-process server with these test knobs.
    pub async fn with_options(options: ServerOptions) -> Target {
        Self::local(Kind::S3sFs, options).await
    }

    async fn local(kind: Kind, options: ServerOptions) -> Target {
        let storage = tempfile::tempdir().unwrap();
        let server = LocalS3::start_with(
            storage.path(),
            "127.0.0.1:0".parse().unwrap(),
            ACCESS_KEY,
            SECRET_KEY,
            options,
        )
        .await
        .unwrap();
        let endpoint = server.endpoint();
        Target {
            kind,
            client: client(&endpoint, ACCESS_KEY, SECRET_KEY).await,
            endpoint,
            server: Some(server),
            _storage: Some(storage),
        }
    }

    /// Makes an object of the in-process server look `age` old (s3s-fs dates an object by its
    /// file's modification time).
    pub fn age(&self, bucket: &str, key: &str, age: std::time::Duration) {
        let storage = self
            ._storage
            .as_ref()
            .expect("only the in-process server has files");
        let file = std::fs::File::options()
            .write(true)
            .open(storage.path().join(bucket).join(key))
            .unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }

    /// Puts objects straight into the in-process server's files (s3s-fs serves a file as an
    /// object): thousands in a moment, where PUTs would take seconds.
    pub fn files(&self, bucket: &str, files: impl IntoIterator<Item = (String, Vec<u8>)>) {
        let storage = self
            ._storage
            .as_ref()
            .expect("only the in-process server has files");
        for (key, bytes) in files {
            let path = storage.path().join(bucket).join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// Request counts by operation; only the in-process server keeps them.
    /// The in-process server serves the keys it refused until now.
    pub fn serve_all(&self) {
        self.server
            .as_ref()
            .expect("an in-process server")
            .serve_all();
    }

    /// The keys the in-process server accepts (the harness's own pair at first).
    pub fn server_keys(&self) -> Keys {
        self.server.as_ref().expect("an in-process server").keys()
    }

    pub fn requests(&self) -> Option<RequestCounts> {
        self.server.as_ref().map(LocalS3::requests)
    }

    /// A new, empty bucket with a unique name.
    pub async fn bucket(&self, hint: &str) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{hint}-{}-{n}", std::process::id());
        self.client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap();
        name
    }

    pub async fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .unwrap();
    }

    /// Uploads `bytes` in parts of `part_size` bytes (the last one shorter); returns the ETag.
    pub async fn put_in_parts(
        &self,
        bucket: &str,
        key: &str,
        bytes: &[u8],
        part_size: usize,
    ) -> String {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let upload_id = upload.upload_id().unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in bytes.chunks(part_size).enumerate() {
            let number = i as i32 + 1;
            let part = self
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .unwrap();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(part.e_tag().unwrap())
                    .build(),
            );
        }
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        done.e_tag().unwrap().to_owned()
    }

    /// The object's ETag.
    pub async fn etag(&self, bucket: &str, key: &str) -> String {
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        head.e_tag().unwrap().to_owned()
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let object = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "GET {bucket}/{key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        object.body.collect().await.unwrap().into_bytes().to_vec()
    }

    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.unwrap()
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        keys
    }
}

/// What a run of the binary left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn n(&self, field: &str) -> u64 {
        self.json()[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no number '{field}' in {}", self.stdout))
    }
}

pub fn godwit() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_godwit"));
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub async fn run(mut command: tokio::process::Command) -> Run {
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The command `godwit migrate SOURCE DEST --json` against `target`, with the ledger at `state`,
/// for tests that start it themselves (to kill or interrupt it).
pub fn migrate_command(
    target: &Target,
    source: &str,
    dest: &str,
    state: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut command = godwit();
    command
        .arg("migrate")
        .arg(source)
        .arg(dest)
        .arg("--state")
        .arg(state)
        .arg("--json")
        .arg("--no-progress")
        .arg("--source-endpoint")
        .arg(&target.endpoint)
        .arg("--dest-endpoint")
        .arg(&target.endpoint)
        .args(extra);
    command
}

/// Runs `migrate_command` to its end.
pub async fn migrate(
    target: &Target,
    source: &str,
    dest: &str,
    state: &Path,
    extra: &[&str],
) -> Run {
    run(migrate_command(target, source, dest, state, extra)).await
}

/// Writes files below `root`.
pub fn write_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (relative, bytes) in files {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Deterministic bytes that differ by seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

pub fn ledger(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ledger.db")
}

/// A PostgreSQL URL whose connections work in a fresh schema of their own, from the database
/// `scripts/test.sh` names in `GODWIT_TEST_POSTGRES`; `None` (or, under CI, a failure) without it.
pub async fn postgres_schema(hint: &str) -> Option<String> {
    static SCHEMAS: AtomicU32 = AtomicU32::new(0);
    let url = match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!("note: GODWIT_TEST_POSTGRES unset; skipping the PostgreSQL ledger");
            return None;
        }
    };
    let schema = format!(
        "{hint}_{}_{}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}
