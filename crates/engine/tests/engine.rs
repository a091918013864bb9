//! The engine against a real S3 server (in-process s3s-fs; moto too when `scripts/test.sh` names it
//! in `GODWIT_TEST_MOTO_ENDPOINT`), with faults injected by wrapping the real destination: a
//! crash in the middle of a multipart upload or of a server-side copy in parts, bytes damaged on
//! the way, a source that changes or vanishes after the scan.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use godwit_engine::{MigrateOptions, Migrator, TransferOptions};
use godwit_s3_server::LocalS3;
use godwit_state::{
    Claim, ClaimedObject, MigrationId, MigrationSpec, ObjectId, ObjectState, Outcome, PacketLimits,
    PartRecord, Scanned, ScannedObject, SqliteStore, Store, StoreError,
};
use godwit_storage::{
    Conditions, CopyOrigin, CopySupport, Crc64Nvme, DestObject, Destination,
    DestinationCapabilities, Location, Metadata, ObjectMeta, OpenUpload, Precondition, S3Settings,
    Source, StaticCredentials, StorageError, UploadedPart, WriteSettings, Written,
};
use tokio_util::sync::CancellationToken;

const KEY: &str = "engine-test-key";
const SECRET: &str = "engine-test-secret";

struct Server {
    endpoint: String,
    local: Option<LocalS3>,
    _dir: Option<tempfile::TempDir>,
}

async fn servers() -> Vec<Server> {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalS3::start(dir.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET)
        .await
        .unwrap();
    let mut servers = vec![Server {
        endpoint: local.endpoint(),
        local: Some(local),
        _dir: Some(dir),
    }];
    if let Some(endpoint) = std::env::var("GODWIT_TEST_MOTO_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    {
        servers.push(Server {
            endpoint,
            local: None,
            _dir: None,
        });
    }
    servers
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

impl Server {
    fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: KEY.into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            }),
            ..S3Settings::default()
        }
    }

    fn is_moto(&self) -> bool {
        self.local.is_none()
    }

    /// A plain SDK client, to set the scene.
    fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new(KEY, SECRET, None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    async fn destination(&self) -> (Arc<dyn Destination>, String) {
        let bucket = format!(
            "engine-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        self.client()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        let location = Location::S3 {
            bucket: bucket.clone(),
            prefix: String::new(),
        };
        (
            godwit_storage::open_destination(
                &location,
                &self.settings(),
                &WriteSettings::default(),
            )
            .await
            .unwrap(),
            bucket,
        )
    }
}

/// Wraps a real destination and injects faults.
struct Faulty {
    inner: Arc<dyn Destination>,
    /// Damage the body of the next PutObject (the checksum still describes the good bytes).
    damage_next_put: AtomicBool,
    /// Let this many UploadPart calls through, then hang the rest forever (a crash, seen from S3).
    parts_before_hang: Option<usize>,
    parts_started: AtomicUsize,
    parts_done: AtomicUsize,
    creates: AtomicUsize,
    /// Upload ids godwit aborted.
    aborted: Mutex<Vec<String>>,
    /// Runs once, after the first part is uploaded (to change the source mid-upload).
    after_first_part: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Added to every PutObject, as a distant server's latency.
    put_latency: Duration,
    puts_in_flight: AtomicUsize,
    most_puts_in_flight: AtomicUsize,
    /// PutObject calls made.
    puts: AtomicUsize,
    /// Make the next PutObject, then answer as if the reply was lost on the way.
    lose_next_put_reply: AtomicBool,
    /// Refuse every delete (credentials that may write but not delete).
    deny_deletes: bool,
    /// Start each multipart upload, note its id, then hang before answering (a process that dies
    /// between starting an upload and recording it).
    hang_after_create: bool,
    /// Upload ids created, in order.
    created: Mutex<Vec<String>>,
    /// Show ETags that are not MD5s (as SSE-KMS makes them), and no checksums when also
    /// `hide_checksums`: a stand-in for AWS with KMS keys, which cannot run here.
    opaque_etags: bool,
    hide_checksums: bool,
}

impl Faulty {
    /// The ETag shown for `real`: not an MD5, one to one.
    fn opaque(&self, real: Option<String>) -> Option<String> {
        real.map(|etag| {
            if self.opaque_etags {
                format!("\"kms{}\"", etag.trim_matches('"'))
            } else {
                etag
            }
        })
    }

    /// The real ETag behind one shown.
    fn real(&self, shown: &str) -> String {
        match shown.trim_matches('"').strip_prefix("kms") {
            Some(real) if self.opaque_etags => format!("\"{real}\""),
            _ => shown.to_owned(),
        }
    }

    fn shown(&self, written: Written) -> Written {
        match written {
            Written::Created(receipt) => Written::Created(godwit_storage::WriteReceipt {
                etag: self.opaque(receipt.etag),
                crc64nvme: receipt.crc64nvme.filter(|_| !self.hide_checksums),
                version_id: receipt.version_id,
            }),
            refused => refused,
        }
    }

    fn condition(&self, condition: &Precondition) -> Precondition {
        match condition {
            Precondition::Etag(etag) => Precondition::Etag(self.real(etag)),
            absent => absent.clone(),
        }
    }
}

impl Faulty {
    fn new(inner: Arc<dyn Destination>) -> Self {
        Self {
            inner,
            damage_next_put: AtomicBool::new(false),
            parts_before_hang: None,
            parts_started: AtomicUsize::new(0),
            parts_done: AtomicUsize::new(0),
            creates: AtomicUsize::new(0),
            aborted: Mutex::new(Vec::new()),
            after_first_part: Mutex::new(None),
            put_latency: Duration::ZERO,
            puts_in_flight: AtomicUsize::new(0),
            most_puts_in_flight: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            lose_next_put_reply: AtomicBool::new(false),
            deny_deletes: false,
            hang_after_create: false,
            created: Mutex::new(Vec::new()),
            opaque_etags: false,
            hide_checksums: false,
        }
    }
}

impl Faulty {
    /// Counts a part started, and hangs it forever once `parts_before_hang` have started.
    async fn part_turn(&self) {
        let n = self.parts_started.fetch_add(1, Ordering::SeqCst);
        if self.parts_before_hang.is_some_and(|limit| n >= limit) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Destination for Faulty {
    fn location(&self) -> &Location {
        self.inner.location()
    }
    fn capabilities(&self) -> DestinationCapabilities {
        self.inner.capabilities()
    }
    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }
    async fn head(&self, key: &str) -> Result<Option<DestObject>, StorageError> {
        Ok(self.inner.head(key).await?.map(|found| DestObject {
            etag: self.opaque(found.etag),
            crc64nvme: found.crc64nvme.filter(|_| !self.hide_checksums),
            ..found
        }))
    }
    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StorageError> {
        self.inner.read(key, offset, len).await
    }
    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
    async fn conditions(&self) -> Conditions {
        self.inner.conditions().await
    }
    async fn list_uploads(&self, key: &str) -> Result<Vec<OpenUpload>, StorageError> {
        self.inner.list_uploads(key).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        crc: Crc64Nvme,
        metadata: &Metadata,
        condition: &Precondition,
    ) -> Result<Written, StorageError> {
        let body = if self.damage_next_put.swap(false, Ordering::SeqCst) {
            let mut damaged = body.to_vec();
            damaged[0] ^= 0xff;
            Bytes::from(damaged)
        } else {
            body
        };
        self.puts.fetch_add(1, Ordering::SeqCst);
        let now = self.puts_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_puts_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.put_latency.is_zero() {
            tokio::time::sleep(self.put_latency).await;
        }
        let written = self
            .inner
            .put(key, body, crc, metadata, &self.condition(condition))
            .await
            .map(|written| self.shown(written));
        self.puts_in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.lose_next_put_reply.swap(false, Ordering::SeqCst) {
            return Err(StorageError::new(
                godwit_storage::ErrorKind::Unreachable,
                format!("{key}: the reply was lost on the way (injected)"),
            ));
        }
        written
    }
    async fn create_upload(
        &self,
        key: &str,
        checksummed: bool,
        metadata: &Metadata,
    ) -> Result<String, StorageError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let id = self.inner.create_upload(key, checksummed, metadata).await?;
        self.created.lock().unwrap().push(id.clone());
        if self.hang_after_create {
            std::future::pending::<()>().await;
        }
        Ok(id)
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc: Crc64Nvme,
    ) -> Result<String, StorageError> {
        self.part_turn().await;
        let etag = self
            .inner
            .upload_part(key, upload_id, part_number, body, crc)
            .await?;
        self.parts_done.fetch_add(1, Ordering::SeqCst);
        let hook = self.after_first_part.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        Ok(etag)
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc: Option<Crc64Nvme>,
        condition: &Precondition,
    ) -> Result<Written, StorageError> {
        self.inner
            .complete_upload(key, upload_id, parts, crc, &self.condition(condition))
            .await
            .map(|written| self.shown(written))
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.aborted.lock().unwrap().push(upload_id.to_owned());
        self.inner.abort_upload(key, upload_id).await
    }
    async fn copy_support(&self, origin: &CopyOrigin) -> CopySupport {
        self.inner.copy_support(origin).await
    }
    async fn copy_new(
        &self,
        key: &str,
        origin: &CopyOrigin,
        source: &ObjectMeta,
        metadata: Option<&Metadata>,
        tags: bool,
    ) -> Result<Written, StorageError> {
        self.inner
            .copy_new(key, origin, source, metadata, tags)
            .await
    }
    /// Counted and hung like `upload_part`.
    async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        origin: &CopyOrigin,
        source: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<String, StorageError> {
        self.part_turn().await;
        let etag = self
            .inner
            .copy_part(key, upload_id, part_number, origin, source, offset, len)
            .await?;
        self.parts_done.fetch_add(1, Ordering::SeqCst);
        Ok(etag)
    }
    async fn delete_if_etag(&self, key: &str, etag: &str) -> Result<(), StorageError> {
        if self.deny_deletes {
            return Err(StorageError::new(
                godwit_storage::ErrorKind::AccessDenied,
                format!("deleting {key}: AccessDenied (HTTP 403) (injected)"),
            ));
        }
        self.inner.delete_if_etag(key, &self.real(etag)).await
    }
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
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

fn spec() -> MigrationSpec {
    MigrationSpec {
        name: "test".into(),
        source_url: "src".into(),
        dest_url: "dst".into(),
        source_endpoint: None,
        dest_endpoint: None,
    }
}

fn options() -> MigrateOptions {
    MigrateOptions {
        concurrency: 4,
        transfer: TransferOptions {
            multipart_threshold: Some(6 << 20),
            part_size: 5 << 20,
            part_concurrency: 2,
            max_attempts: 3,
            ..TransferOptions::default()
        },
        ..MigrateOptions::default()
    }
}

/// Opens the ledger once the dropped run's aborted tasks have let go of it.
async fn open_when_released(path: &Path) -> SqliteStore {
    for _ in 0..100 {
        match SqliteStore::open(path) {
            Ok(store) => return store,
            Err(godwit_state::StoreError::Busy { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("{other}"),
        }
    }
    panic!("the ledger was never released");
}

/// A work directory whose `src` holds `big.bin` with `content`: the directory (kept while it
/// lives), the source directory and where the ledger goes.
fn work_with_big(content: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let source_dir = work.path().join("src");
    std::fs::create_dir_all(&source_dir).unwrap();
    std::fs::write(source_dir.join("big.bin"), content).unwrap();
    let ledger = work.path().join("ledger.db");
    (work, source_dir, ledger)
}

fn local_source(dir: &Path) -> Arc<dyn Source> {
    Arc::new(godwit_storage::fs::LocalSource::new(dir.to_owned()))
}

/// Runs a migration into `real` whose parts (sent or copied) hang after the first two, as a
/// process that stops would: once both are done and recorded, the run is dropped.
async fn crash_after_two_parts(
    source: Arc<dyn Source>,
    real: &Arc<dyn Destination>,
    ledger: &Path,
) {
    let faulty = Arc::new(Faulty {
        parts_before_hang: Some(2),
        ..Faulty::new(Arc::clone(real))
    });
    let store = Arc::new(SqliteStore::open(ledger).unwrap());
    let migrator = Migrator::new(
        source,
        faulty.clone(),
        store,
        options(),
        CancellationToken::new(),
    );
    let spec = spec();
    let run = migrator.run(&spec);
    tokio::select! {
        result = run => panic!("the run should hang, it ended: {result:?}"),
        () = async {
            while faulty.parts_done.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Let the ledger record the finished parts.
            tokio::time::sleep(Duration::from_millis(300)).await;
        } => {}
    }
    assert_eq!(faulty.creates.load(Ordering::SeqCst), 1, "one upload");
}

async fn read_all(dest: &dyn Destination, key: &str) -> Vec<u8> {
    let size = dest.head(key).await.unwrap().unwrap().size;
    dest.read(key, 0, size).await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_multipart_upload_resumes_from_its_finished_parts() {
    for server in servers().await {
        let content = bytes(5, (5 << 20) * 5 + 123); // six parts of 5 MiB, the last one short
        let (_work, source_dir, ledger) = work_with_big(&content);
        let (real, _bucket) = server.destination().await;

        // First run: two parts go through, then the "process" hangs and is dropped mid-upload.
        crash_after_two_parts(local_source(&source_dir), &real, &ledger).await;

        // Second run: same ledger, a healthy destination. Only the four missing parts are sent.
        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let store = Arc::new(open_when_released(&ledger).await);
        let migrator = Migrator::new(
            local_source(&source_dir),
            counting.clone(),
            store,
            options(),
            CancellationToken::new(),
        );
        let summary = migrator.run(&spec()).await.unwrap();

        assert_eq!(summary.copied, 1, "{summary:?}");
        assert_eq!(
            counting.creates.load(Ordering::SeqCst),
            0,
            "the upload started over"
        );
        assert_eq!(
            counting.parts_started.load(Ordering::SeqCst),
            4,
            "finished parts were sent again"
        );
        assert!(
            read_all(real.as_ref(), "big.bin").await == content,
            "the resumed object differs"
        );
    }
}

/// A re-run whose route would send the object in one PUT (no threshold given, and it is small
/// enough) still finishes the upload the crashed run left: its parts are not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_upload_goes_on_in_parts_whatever_the_route_says() {
    for server in servers().await {
        let content = bytes(6, (5 << 20) * 5 + 77);
        let (_work, source_dir, ledger) = work_with_big(&content);
        let (real, _bucket) = server.destination().await;
        crash_after_two_parts(local_source(&source_dir), &real, &ledger).await;

        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let store = Arc::new(open_when_released(&ledger).await);
        let mut adaptive = options();
        adaptive.transfer.multipart_threshold = None;
        let migrator = Migrator::new(
            local_source(&source_dir),
            counting.clone(),
            store,
            adaptive,
            CancellationToken::new(),
        );
        let summary = migrator.run(&spec()).await.unwrap();

        assert_eq!(summary.copied, 1, "{summary:?}");
        assert_eq!(counting.puts.load(Ordering::SeqCst), 0, "sent whole again");
        assert_eq!(counting.creates.load(Ordering::SeqCst), 0, "a new upload");
        assert_eq!(counting.parts_started.load(Ordering::SeqCst), 4);
        assert!(read_all(real.as_ref(), "big.bin").await == content);
    }
}

/// A source says how an object uploaded in parts was cut (both servers here answer
/// `HEAD ?partNumber=1`; moto with the part's ETag), and nothing for an object in one part.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_tells_how_an_object_was_cut_or_nothing() {
    for server in servers().await {
        let (_, bucket) = server.destination().await;
        let client = server.client();
        let content = bytes(9, (5 << 20) * 2 + 77);
        let etag = put_in_parts(&client, &bucket, "cut.bin", &content, 5 << 20).await;
        client
            .put_object()
            .bucket(&bucket)
            .key("whole.bin")
            .body(bytes(10, 1000).into())
            .send()
            .await
            .unwrap();
        let location = Location::S3 {
            bucket: bucket.clone(),
            prefix: String::new(),
        };
        let source = godwit_storage::open_source(&location, &server.settings())
            .await
            .unwrap();
        let cut = ObjectMeta {
            key: "cut.bin".into(),
            size: content.len() as u64,
            version: etag,
            group: None,
            partition: None,
        };
        let layout = source.part_layout(&cut).await.unwrap();
        let expected = godwit_storage::PartLayout {
            part_size: 5 << 20,
            parts: 3,
        };
        assert_eq!(layout, Some(expected), "moto: {}", server.is_moto());
        let whole = source.stat("whole.bin").await.unwrap().unwrap();
        assert_eq!(source.part_layout(&whole).await.unwrap(), None, "one part");
    }
}

/// Uploads `content` in parts of `part_size` bytes; returns the object's ETag.
async fn put_in_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    content: &[u8],
    part_size: usize,
) -> String {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (i, chunk) in content.chunks(part_size).enumerate() {
        let number = i as i32 + 1;
        let part = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(chunk.to_vec().into())
            .send()
            .await
            .unwrap();
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    let completed = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    match completed {
        Ok(out) => out.e_tag().unwrap().to_owned(),
        // moto's reply cannot be parsed by the SDK (S3-SERVERS.md), though it completed.
        Err(_) => client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .to_owned(),
    }
}

/// Only the in-process server answers `HEAD ?partNumber` and refuses a copy onto a taken key, so
/// only it copies server-side; moto streams (covered by the test above).
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_server_side_copy_in_parts_resumes_from_its_copied_parts() {
    let server = Server::s3s_fs_only().await;
    let work = tempfile::tempdir().unwrap();
    let ledger = work.path().join("ledger.db");
    let (real, _bucket) = server.destination().await;
    let (_, from) = server.destination().await;
    // Six parts of 5 MiB, the last one short, uploaded as any tool would.
    let content = bytes(8, (5 << 20) * 5 + 321);
    let source_etag = put_in_parts(&server.client(), &from, "big.bin", &content, 5 << 20).await;
    let source = || async {
        let location = Location::S3 {
            bucket: from.clone(),
            prefix: String::new(),
        };
        godwit_storage::open_source(&location, &server.settings())
            .await
            .unwrap()
    };

    // First run: two parts are copied, then the "process" hangs and is dropped mid-copy.
    crash_after_two_parts(source().await, &real, &ledger).await;

    // Second run: only the four missing parts are copied, into the same upload.
    let counting = Arc::new(Faulty::new(Arc::clone(&real)));
    let store = Arc::new(open_when_released(&ledger).await);
    let migrator = Migrator::new(
        source().await,
        counting.clone(),
        store,
        options(),
        CancellationToken::new(),
    );
    let summary = migrator.run(&spec()).await.unwrap();

    assert_eq!(summary.copied, 1, "{summary:?}");
    assert!(summary.server_side_copy, "{summary:?}");
    assert_eq!(
        counting.creates.load(Ordering::SeqCst),
        0,
        "the copy started over"
    );
    assert_eq!(
        counting.parts_started.load(Ordering::SeqCst),
        4,
        "copied parts were copied again"
    );
    let copied = real.head("big.bin").await.unwrap().unwrap();
    assert_eq!(copied.etag.as_deref(), Some(source_etag.as_str()));
    assert!(read_all(real.as_ref(), "big.bin").await == content);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_bytes_never_count_as_copied() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        let content = bytes(9, 5000);
        std::fs::write(source_dir.join("file.txt"), &content).unwrap();
        let (real, _bucket) = server.destination().await;
        let faulty = Arc::new(Faulty::new(Arc::clone(&real)));
        faulty.damage_next_put.store(true, Ordering::SeqCst);
        let store = Arc::new(SqliteStore::open(&work.path().join("ledger.db")).unwrap());
        let migrator = Migrator::new(
            local_source(&source_dir),
            faulty,
            store,
            options(),
            CancellationToken::new(),
        );

        let summary = migrator.run(&spec()).await.unwrap();

        if server.is_moto() {
            // moto stores the damaged bytes without checking; verification after the write
            // catches it, takes our write back and the retry copies the right bytes.
            assert_eq!(summary.copied, 1, "{summary:?}");
            assert_eq!(read_all(real.as_ref(), "file.txt").await, content);
        } else {
            // s3s-fs answers BadDigest but keeps the damaged object: godwit cannot prove it its
            // own, so it leaves it and fails the object with a message saying so.
            assert_eq!(summary.copied, 0, "{summary:?}");
            assert_eq!(summary.failed, 1, "{summary:?}");
            let problem = &summary.problems[0];
            assert_eq!(problem.kind.as_deref(), Some("unverifiable"));
            assert!(
                problem
                    .message
                    .as_deref()
                    .unwrap()
                    .contains("some servers keep rejected uploads"),
                "{problem:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_changed_or_vanished_after_the_scan_is_settled() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        std::fs::write(source_dir.join("changed.txt"), b"old").unwrap();
        let (dest, _bucket) = server.destination().await;
        let store = Arc::new(SqliteStore::open(&work.path().join("ledger.db")).unwrap());

        // The scan saw two objects; then one changed and the other was deleted.
        let migration = store.open_migration(&spec()).await.unwrap();
        let pass = store.start_pass(migration.id, "").await.unwrap();
        let source = local_source(&source_dir);
        let seen = source.stat("changed.txt").await.unwrap().unwrap();
        let scanned = vec![
            ScannedObject {
                key: seen.key,
                size: seen.size,
                version: seen.version,
                scanned: Scanned::Wanted,
                group: None,
                partition: None,
            },
            ScannedObject {
                key: "gone.txt".into(),
                size: 3,
                version: "1".into(),
                scanned: Scanned::Wanted,
                group: None,
                partition: None,
            },
        ];
        store
            .record_scanned(migration.id, pass.number, scanned, None)
            .await
            .unwrap();
        store.finish_scan(migration.id, pass.number).await.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(source_dir.join("changed.txt"), b"new and longer").unwrap();

        let migrator = Migrator::new(
            source,
            Arc::clone(&dest),
            store.clone(),
            options(),
            CancellationToken::new(),
        );
        let summary = migrator.run(&spec()).await.unwrap();

        assert_eq!(
            (summary.copied, summary.source_vanished, summary.scanned),
            (1, 1, 2),
            "{summary:?}"
        );
        assert!(summary.all_good());
        assert_eq!(
            read_all(dest.as_ref(), "changed.txt").await,
            b"new and longer"
        );
        assert_eq!(summary.bytes_copied, 14, "the ledger holds the new size");
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(tally.n(ObjectState::SourceVanished), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_changes_mid_upload_is_copied_anew_and_its_old_upload_aborted() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        let path = source_dir.join("big.bin");
        std::fs::write(&path, bytes(7, (5 << 20) * 3)).unwrap();
        let newer = bytes(8, (5 << 20) * 3 + 10);
        let (real, _bucket) = server.destination().await;
        let faulty = Arc::new(Faulty::new(Arc::clone(&real)));
        let rewrite = (path.clone(), newer.clone());
        *faulty.after_first_part.lock().unwrap() = Some(Box::new(move || {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&rewrite.0, &rewrite.1).unwrap();
        }));
        let store = Arc::new(SqliteStore::open(&work.path().join("ledger.db")).unwrap());
        let options = MigrateOptions {
            transfer: TransferOptions {
                part_concurrency: 1,
                ..options().transfer
            },
            ..options()
        };
        let migrator = Migrator::new(
            local_source(&source_dir),
            faulty.clone(),
            store,
            options,
            CancellationToken::new(),
        );

        let summary = migrator.run(&spec()).await.unwrap();

        assert_eq!(summary.copied, 1, "{summary:?}");
        assert!(read_all(real.as_ref(), "big.bin").await == newer);
        assert_eq!(
            faulty.creates.load(Ordering::SeqCst),
            2,
            "one upload per version"
        );
        assert_eq!(
            faulty.aborted.lock().unwrap().len(),
            1,
            "the old version's upload was left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_distant_destination_gets_more_objects_in_flight() {
    let server = Server::s3s_fs_only().await;
    let work = tempfile::tempdir().unwrap();
    let source_dir = work.path().join("src");
    std::fs::create_dir_all(&source_dir).unwrap();
    for i in 0..3000u64 {
        std::fs::write(source_dir.join(format!("{i:04}")), bytes(i, 100)).unwrap();
    }
    let (real, _bucket) = server.destination().await;
    // Every write waits 25 ms first: at the 16 objects a run starts with, throughput is bound
    // by that latency, and more in flight pays.
    let distant = Arc::new(Faulty {
        put_latency: Duration::from_millis(25),
        ..Faulty::new(Arc::clone(&real))
    });
    let store = Arc::new(SqliteStore::open(&work.path().join("ledger.db")).unwrap());
    let migrator = Migrator::new(
        local_source(&source_dir),
        distant.clone(),
        store,
        MigrateOptions {
            concurrency: 256,
            ..options()
        },
        CancellationToken::new(),
    );

    let summary = migrator.run(&spec()).await.unwrap();

    assert_eq!(summary.copied, 3000, "{summary:?}");
    let most = distant.most_puts_in_flight.load(Ordering::SeqCst);
    assert!(
        most > 16,
        "the limit never rose above its start: {most} in flight at most"
    );
    assert!(most <= 256, "the limit passed its ceiling: {most}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_leaves_the_rest_queued_and_a_rerun_finishes() {
    let server = Server::s3s_fs_only().await;
    let work = tempfile::tempdir().unwrap();
    let source_dir = work.path().join("src");
    for i in 0..300 {
        let path = source_dir.join(format!("d{}/f{i}", i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes(i, 100)).unwrap();
    }
    let (dest, _bucket) = server.destination().await;
    let ledger = work.path().join("ledger.db");
    let stop = CancellationToken::new();
    stop.cancel();
    {
        let store = Arc::new(SqliteStore::open(&ledger).unwrap());
        let migrator = Migrator::new(
            local_source(&source_dir),
            Arc::clone(&dest),
            store,
            options(),
            stop,
        );
        let summary = migrator.run(&spec()).await.unwrap();
        assert!(summary.interrupted);
        assert_eq!(summary.copied, 0, "{summary:?}");
    }
    let store = Arc::new(SqliteStore::open(&ledger).unwrap());
    let migrator = Migrator::new(
        local_source(&source_dir),
        dest,
        store,
        options(),
        CancellationToken::new(),
    );
    let summary = migrator.run(&spec()).await.unwrap();
    assert_eq!(
        (summary.scanned, summary.copied, summary.pending),
        (300, 300, 0),
        "{summary:?}"
    );
}

impl Server {
    async fn s3s_fs_only() -> Server {
        servers().await.remove(0)
    }
}

/// A real ledger whose outcome writes start failing after the first `healthy` batches, as a
/// full disk or a lost database would.
struct FailingLedger {
    inner: SqliteStore,
    healthy: usize,
    batches: AtomicUsize,
    /// Hang instead of failing, as a process that is about to die, until this is cancelled.
    hang: Option<CancellationToken>,
}

#[async_trait]
impl Store for FailingLedger {
    async fn open_migration(
        &self,
        spec: &MigrationSpec,
    ) -> Result<godwit_state::Migration, StoreError> {
        self.inner.open_migration(spec).await
    }
    async fn find_migration(
        &self,
        name: &str,
    ) -> Result<Option<godwit_state::Migration>, StoreError> {
        self.inner.find_migration(name).await
    }
    async fn save_options(&self, migration: MigrationId, options: &str) -> Result<(), StoreError> {
        self.inner.save_options(migration, options).await
    }
    async fn set_status(
        &self,
        migration: MigrationId,
        status: godwit_state::MigrationStatus,
    ) -> Result<(), StoreError> {
        self.inner.set_status(migration, status).await
    }
    async fn control_of(
        &self,
        migration: MigrationId,
    ) -> Result<godwit_state::ControlState, StoreError> {
        self.inner.control_of(migration).await
    }
    async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.inner.note_throttled(migration, at).await
    }
    async fn beat(&self, beat: &godwit_state::WorkerBeat) -> Result<(), StoreError> {
        self.inner.beat(beat).await
    }
    async fn workers(&self) -> Result<Vec<godwit_state::WorkerRecord>, StoreError> {
        self.inner.workers().await
    }
    async fn migrations(&self) -> Result<Vec<godwit_state::Migration>, StoreError> {
        self.inner.migrations().await
    }
    async fn start_pass(
        &self,
        migration: MigrationId,
        filter: &str,
    ) -> Result<godwit_state::Pass, StoreError> {
        self.inner.start_pass(migration, filter).await
    }
    async fn restart_scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &str,
    ) -> Result<(), StoreError> {
        self.inner.restart_scan(migration, pass, filter).await
    }
    async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<godwit_state::ShardMark>,
    ) -> Result<(), StoreError> {
        self.inner
            .record_scanned(migration, pass, batch, mark)
            .await
    }
    async fn plan_shards(
        &self,
        migration: MigrationId,
        pass: u32,
        names: Vec<String>,
    ) -> Result<u64, StoreError> {
        self.inner.plan_shards(migration, pass, names).await
    }
    async fn shards_left(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.shards_left(migration, pass).await
    }
    async fn claim_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<godwit_state::ShardClaim>, StoreError> {
        self.inner.claim_shard(migration, pass, worker, lease).await
    }
    async fn finish_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        shard: &godwit_state::ShardClaim,
    ) -> Result<u64, StoreError> {
        self.inner.finish_shard(migration, pass, shard).await
    }
    async fn finish_scan(&self, migration: MigrationId, pass: u32) -> Result<(), StoreError> {
        self.inner.finish_scan(migration, pass).await
    }
    async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        self.inner.claim(migration, worker, limits).await
    }
    async fn recover_abandoned(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.inner.recover_abandoned(migration).await
    }
    async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.inner.recover_expired(migration).await
    }
    async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        self.inner.held_by_others(migration, worker).await
    }
    async fn renew_leases(&self, worker: &str, lease: Duration) -> Result<u64, StoreError> {
        self.inner.renew_leases(worker, lease).await
    }
    async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        self.inner.release_claims(worker).await
    }
    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        if self.batches.fetch_add(1, Ordering::SeqCst) >= self.healthy {
            if let Some(until) = &self.hang {
                until.cancelled().await;
            }
            return Err(StoreError::Database {
                path: "test".into(),
                message: "disk full (injected)".into(),
            });
        }
        self.inner.record_outcomes(outcomes).await
    }
    async fn record_upload_intent(
        &self,
        claim: Claim,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.inner.record_upload_intent(claim, at).await
    }
    async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &godwit_state::SourceVersion,
    ) -> Result<(), StoreError> {
        self.inner
            .record_upload(claim, upload_id, part_size, source)
            .await
    }
    async fn record_part(&self, claim: Claim, part: PartRecord) -> Result<(), StoreError> {
        self.inner.record_part(claim, part).await
    }
    async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        self.inner.clear_upload(claim).await
    }
    async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        self.inner.forget_stale_upload(object).await
    }
    async fn stale_uploads(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<godwit_state::StaleUpload>, StoreError> {
        self.inner.stale_uploads(migration).await
    }
    async fn tally(&self, migration: MigrationId) -> Result<godwit_state::Tally, StoreError> {
        self.inner.tally(migration).await
    }
    async fn partitions(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<godwit_state::PartitionTally>, StoreError> {
        self.inner.partitions(migration).await
    }
    async fn objects_page(
        &self,
        migration: MigrationId,
        query: godwit_state::ObjectQuery,
    ) -> Result<godwit_state::ObjectPage, StoreError> {
        self.inner.objects_page(migration, query).await
    }
    async fn problems(
        &self,
        migration: MigrationId,
        limit: u32,
    ) -> Result<Vec<godwit_state::Problem>, StoreError> {
        self.inner.problems(migration, limit).await
    }
    async fn group_problem(
        &self,
        migration: MigrationId,
        group: &str,
    ) -> Result<Option<String>, StoreError> {
        self.inner.group_problem(migration, group).await
    }
    async fn record_validation(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        started: i64,
        passed: bool,
        report: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .record_validation(migration, partition, started, passed, report)
            .await
    }
    async fn cut_over(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        at: i64,
    ) -> Result<godwit_state::Cutover, StoreError> {
        self.inner.cut_over(migration, partition, at).await
    }
    async fn record_notice(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        notice: &godwit_state::Notice,
    ) -> Result<(), StoreError> {
        self.inner.record_notice(migration, partition, notice).await
    }
    async fn objects_after(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<godwit_state::LedgerObject>, StoreError> {
        self.inner.objects_after(migration, after, limit).await
    }
    async fn pass_counts(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<godwit_state::PassCounts, StoreError> {
        self.inner.pass_counts(migration, pass).await
    }
    async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.inner.requeue_failed(migration, class).await
    }
    async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<godwit_state::FailedObject>, StoreError> {
        self.inner.failed(migration, class, after, limit).await
    }
    async fn done_objects(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<godwit_state::DoneObject>, StoreError> {
        self.inner.done_objects(migration, after, limit).await
    }
    async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        self.inner.requeue(objects).await
    }
    async fn lookup(
        &self,
        migration: MigrationId,
        keys: Vec<String>,
    ) -> Result<Vec<godwit_state::KnownObject>, StoreError> {
        self.inner.lookup(migration, keys).await
    }
}

/// Issue 9, point 8: once outcomes cannot be recorded, the run stops taking work at once and
/// says why, instead of copying on with nothing recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_that_stops_recording_stops_the_run() {
    let server = Server::s3s_fs_only().await;
    let work = tempfile::tempdir().unwrap();
    let source_dir = work.path().join("src");
    std::fs::create_dir_all(&source_dir).unwrap();
    for i in 0..2000u64 {
        std::fs::write(source_dir.join(format!("{i:04}")), bytes(i, 100)).unwrap();
    }
    let (real, _bucket) = server.destination().await;
    let counting = Arc::new(Faulty::new(Arc::clone(&real)));
    let store = Arc::new(FailingLedger {
        inner: SqliteStore::open(&work.path().join("ledger.db")).unwrap(),
        healthy: 1,
        batches: AtomicUsize::new(0),
        hang: None,
    });
    let migrator = Migrator::new(
        local_source(&source_dir),
        counting.clone(),
        store,
        options(),
        CancellationToken::new(),
    );

    let result = migrator.run(&spec()).await;

    let error = result.expect_err("the run must fail when its ledger does");
    assert!(
        error.to_string().contains("disk full (injected)"),
        "the reason was lost: {error}"
    );
    let puts = counting.puts.load(Ordering::SeqCst);
    assert!(
        puts < 500,
        "{puts} of 2000 objects were written after the ledger stopped recording"
    );
}

impl Server {
    /// Makes an object of the in-process server look `age` old (s3s-fs dates an object by its
    /// file's modification time); on moto, waits instead until the object is older than the
    /// slack godwit allows the server's clock.
    async fn age(&self, bucket: &str, key: &str, age: Duration) {
        match &self._dir {
            Some(dir) => {
                let file = std::fs::File::options()
                    .write(true)
                    .open(dir.path().join(bucket).join(key))
                    .unwrap();
                file.set_modified(std::time::SystemTime::now() - age)
                    .unwrap();
            }
            None => tokio::time::sleep(Duration::from_secs(3)).await,
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .unwrap();
    }

    /// The uploads open in `bucket`, where the server can list them (moto).
    async fn open_uploads(&self, bucket: &str) -> Option<Vec<String>> {
        let listed = self
            .client()
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .ok()?;
        Some(
            listed
                .uploads()
                .iter()
                .filter_map(|u| u.upload_id().map(str::to_owned))
                .collect(),
        )
    }
}

fn migrator(
    source: Arc<dyn Source>,
    dest: Arc<dyn Destination>,
    store: Arc<dyn Store>,
    options: MigrateOptions,
) -> Migrator {
    Migrator::new(source, dest, store, options, CancellationToken::new())
}

/// Issue 9, point 3: a PUT whose reply is lost, retried within the claim, finds its own write at
/// the key: that is `copied`, not `already_present`.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_reply_was_lost_is_known_as_ours() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        std::fs::write(source_dir.join("a.txt"), bytes(1, 500)).unwrap();
        let (real, _bucket) = server.destination().await;
        let faulty = Arc::new(Faulty::new(Arc::clone(&real)));
        faulty.lose_next_put_reply.store(true, Ordering::SeqCst);
        let store = Arc::new(SqliteStore::open(&work.path().join("ledger.db")).unwrap());

        let summary = migrator(local_source(&source_dir), faulty.clone(), store, options())
            .run(&spec())
            .await
            .unwrap();

        assert_eq!(
            (summary.copied, summary.already_present),
            (1, 0),
            "moto: {}: {summary:?}",
            server.is_moto()
        );
        assert_eq!(
            faulty.puts.load(Ordering::SeqCst),
            2,
            "written, then refused"
        );
    }
}

/// Issue 9, point 3: after a run dies with its outcomes unrecorded, the next run re-claims its
/// packet: objects godwit wrote are `copied`, and objects that were at the destination before
/// godwit ever claimed them stay `already_present`.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_objects_that_were_there_before_stay_already_present() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        for (key, seed) in [("before.txt", 1), ("ours-1.txt", 2), ("ours-2.txt", 3)] {
            std::fs::write(source_dir.join(key), bytes(seed, 300)).unwrap();
        }
        let (real, bucket) = server.destination().await;
        server.put(&bucket, "before.txt", &bytes(1, 300)).await;
        server
            .age(&bucket, "before.txt", Duration::from_secs(3600))
            .await;
        let ledger = work.path().join("ledger.db");

        // First run: everything is written or settled, but no outcome is ever recorded.
        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let death = CancellationToken::new();
        let dying = Arc::new(FailingLedger {
            inner: SqliteStore::open(&ledger).unwrap(),
            healthy: 0,
            batches: AtomicUsize::new(0),
            hang: Some(death.clone()),
        });
        let first = migrator(
            local_source(&source_dir),
            counting.clone(),
            dying,
            options(),
        );
        let first_spec = spec();
        tokio::select! {
            result = first.run(&first_spec) => panic!("the run should hang, it ended: {result:?}"),
            () = async {
                while counting.puts.load(Ordering::SeqCst) < 3 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            } => {}
        }
        drop(first);
        // The process is gone: its ledger writes never happened.
        death.cancel();

        let store = Arc::new(open_when_released(&ledger).await);
        let summary = migrator(
            local_source(&source_dir),
            Arc::clone(&real),
            store,
            options(),
        )
        .run(&spec())
        .await
        .unwrap();

        assert_eq!(
            (summary.copied, summary.already_present),
            (2, 1),
            "moto: {}: {summary:?}",
            server.is_moto()
        );
    }
}

/// Issue 9, point 1: an upload belongs to one version of its source. A run dies mid-upload while
/// its scan is still going, the file is rewritten with the same size, and the next run (which
/// scans again, and so records the new version) aborts the old version's upload and starts
/// afresh: the object is the new version, never old parts and new ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_upload_never_mixes_two_versions_of_its_source() {
    for server in servers().await {
        let size = (5 << 20) * 5 + 123;
        let (_work, source_dir, ledger) = work_with_big(&bytes(5, size));
        let (real, _bucket) = server.destination().await;
        crash_after_two_parts(local_source(&source_dir), &real, &ledger).await;
        // The scan of a large source takes a while: the run died before it ended.
        rusqlite::Connection::open(&ledger)
            .unwrap()
            .execute("UPDATE passes SET scan_completed_at = NULL", [])
            .unwrap();

        let newer = bytes(6, size);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(source_dir.join("big.bin"), &newer).unwrap();
        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let store = Arc::new(open_when_released(&ledger).await);
        let summary = migrator(
            local_source(&source_dir),
            counting.clone(),
            store,
            options(),
        )
        .run(&spec())
        .await
        .unwrap();

        assert_eq!(summary.copied, 1, "{summary:?}");
        assert!(
            read_all(real.as_ref(), "big.bin").await == newer,
            "moto: {}: the object mixes two versions",
            server.is_moto()
        );
        assert_eq!(counting.creates.load(Ordering::SeqCst), 1, "a new upload");
        assert_eq!(
            counting.aborted.lock().unwrap().len(),
            1,
            "the old version's upload was left open"
        );
    }
}

/// Issue 9, point 7: a write that fails verification and cannot be taken back (the credentials
/// may not delete) keeps its reason, stays godwit's own, and the next attempt replaces it.
/// moto stores damaged bytes without checking them; s3s-fs refuses them (covered by
/// `damaged_bytes_never_count_as_copied`).
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_write_that_cannot_be_deleted_stays_ours_and_is_replaced() {
    let Some(server) = servers().await.into_iter().find(Server::is_moto) else {
        return;
    };
    for max_attempts in [1, 3] {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        let content = bytes(9, 5000);
        std::fs::write(source_dir.join("file.txt"), &content).unwrap();
        let (real, _bucket) = server.destination().await;
        let faulty = Arc::new(Faulty {
            deny_deletes: true,
            ..Faulty::new(Arc::clone(&real))
        });
        faulty.damage_next_put.store(true, Ordering::SeqCst);
        let ledger = work.path().join("ledger.db");
        let store = Arc::new(SqliteStore::open(&ledger).unwrap());
        let options = MigrateOptions {
            transfer: TransferOptions {
                max_attempts,
                ..options().transfer
            },
            ..options()
        };

        let summary = migrator(local_source(&source_dir), faulty, store, options)
            .run(&spec())
            .await
            .unwrap();

        if max_attempts == 1 {
            assert_eq!(summary.failed, 1, "{summary:?}");
            let problem = &summary.problems[0];
            assert_eq!(
                problem.kind.as_deref(),
                Some("checksum_mismatch"),
                "{problem:?}"
            );
            let message = problem.message.as_deref().unwrap();
            assert!(
                message.contains("verification after writing failed"),
                "{message}"
            );
            assert!(
                message.contains("could not take its write back"),
                "{message}"
            );
            assert!(
                written_etag(&ledger).is_some(),
                "the corrupt write is not recorded as godwit's own"
            );
        } else {
            assert_eq!(summary.copied, 1, "{summary:?}");
            assert_eq!(summary.replaced_this_run, 1, "{summary:?}");
            assert_eq!(read_all(real.as_ref(), "file.txt").await, content);
        }
    }
}

/// The ETag the ledger keeps as godwit's own write at the only object's key.
fn written_etag(ledger: &Path) -> Option<String> {
    rusqlite::Connection::open(ledger)
        .unwrap()
        .query_row("SELECT written_etag FROM objects", [], |row| row.get(0))
        .unwrap()
}

/// Issue 9, point 10: a run that dies between starting a multipart upload and recording its id
/// leaves no upload open: the next run lists the key's uploads and aborts the one it began (by
/// when the server says it began). The in-process server lists uploads with their real start;
/// moto dates every upload 2010-11-10, so there godwit cannot tell the upload its own and leaves
/// it, which is what the test expects of it.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_begun_but_never_recorded_is_aborted_by_the_next_run() {
    for server in servers().await {
        let content = bytes(5, (5 << 20) * 2 + 7);
        let (_work, source_dir, ledger) = work_with_big(&content);
        let (real, bucket) = server.destination().await;
        let dying = Arc::new(Faulty {
            hang_after_create: true,
            ..Faulty::new(Arc::clone(&real))
        });
        let first = migrator(
            local_source(&source_dir),
            dying.clone(),
            Arc::new(SqliteStore::open(&ledger).unwrap()),
            options(),
        );
        let first_spec = spec();
        tokio::select! {
            result = first.run(&first_spec) => panic!("the run should hang, it ended: {result:?}"),
            () = async {
                while dying.created.lock().unwrap().is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => {}
        }
        drop(first);
        let lost = dying.created.lock().unwrap()[0].clone();

        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let store = Arc::new(open_when_released(&ledger).await);
        let summary = migrator(
            local_source(&source_dir),
            counting.clone(),
            store,
            options(),
        )
        .run(&spec())
        .await
        .unwrap();

        assert_eq!(summary.copied, 1, "{summary:?}");
        assert!(read_all(real.as_ref(), "big.bin").await == content);
        let open = server.open_uploads(&bucket).await.unwrap();
        if server.is_moto() {
            assert_eq!(
                open,
                std::slice::from_ref(&lost),
                "moto: an upload of unknown start was taken"
            );
        } else {
            assert!(
                !open.contains(&lost),
                "the upload the dead run began is still open: {open:?}"
            );
            assert!(counting.aborted.lock().unwrap().contains(&lost));
        }
    }
}

/// Issue 9, point 10: an object a new filter leaves out keeps no open upload: the upload a dead
/// run left for it is aborted, and the object is `excluded`.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_a_new_filter_leaves_out_keeps_no_open_upload() {
    for server in servers().await {
        let work = tempfile::tempdir().unwrap();
        let source_dir = work.path().join("src");
        std::fs::create_dir_all(&source_dir).unwrap();
        std::fs::write(source_dir.join("big.bin"), bytes(5, (5 << 20) * 5 + 1)).unwrap();
        std::fs::write(source_dir.join("small.txt"), bytes(6, 10)).unwrap();
        let ledger = work.path().join("ledger.db");
        let (real, bucket) = server.destination().await;
        crash_after_two_parts(local_source(&source_dir), &real, &ledger).await;

        let counting = Arc::new(Faulty::new(Arc::clone(&real)));
        let store = Arc::new(open_when_released(&ledger).await);
        let filtered = MigrateOptions {
            filter: godwit_engine::Filter::new(&[], &["*.bin".to_owned()]).unwrap(),
            ..options()
        };
        let summary = migrator(local_source(&source_dir), counting.clone(), store, filtered)
            .run(&spec())
            .await
            .unwrap();

        assert_eq!(
            (summary.excluded, summary.copied),
            (1, 1),
            "moto: {}: {summary:?}",
            server.is_moto()
        );
        assert_eq!(
            counting.aborted.lock().unwrap().len(),
            1,
            "the upload was left open"
        );
        assert!(real.head("big.bin").await.unwrap().is_none());
        if let Some(open) = server.open_uploads(&bucket).await {
            assert!(open.is_empty(), "{open:?}");
        }
    }
}

/// Issue 9, point 11: with server-side encryption by KMS keys, ETags are not MD5s; every object
/// is still proven, by the checksum the destination reports or, where it keeps none, by reading
/// it back. (AWS KMS cannot run here: the destination is wrapped to show ETags as KMS makes them.)
#[tokio::test(flavor = "multi_thread")]
async fn objects_whose_etags_are_not_md5s_are_still_proven() {
    for server in servers().await {
        for hide_checksums in [false, true] {
            let work = tempfile::tempdir().unwrap();
            let source_dir = work.path().join("src");
            std::fs::create_dir_all(&source_dir).unwrap();
            let (small, big) = (bytes(1, 4000), bytes(2, (5 << 20) * 2 + 9));
            std::fs::write(source_dir.join("small.txt"), &small).unwrap();
            std::fs::write(source_dir.join("big.bin"), &big).unwrap();
            let (real, _bucket) = server.destination().await;
            let kms = Arc::new(Faulty {
                opaque_etags: true,
                hide_checksums,
                ..Faulty::new(Arc::clone(&real))
            });
            let ledger = work.path().join("ledger.db");
            let store = Arc::new(SqliteStore::open(&ledger).unwrap());

            let summary = migrator(local_source(&source_dir), kms, store, options())
                .run(&spec())
                .await
                .unwrap();

            assert_eq!(summary.copied, 2, "moto: {}: {summary:?}", server.is_moto());
            assert_eq!(read_all(real.as_ref(), "small.txt").await, small);
            assert!(read_all(real.as_ref(), "big.bin").await == big);
            let verified: Vec<String> = rusqlite::Connection::open(&ledger)
                .unwrap()
                .prepare("SELECT verified_by FROM objects ORDER BY key")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                verified
                    .iter()
                    .all(|how| how == "checksum" || how == "read_back"),
                "moto: {}, no checksums: {hide_checksums}: {verified:?}",
                server.is_moto()
            );
            if hide_checksums {
                assert_eq!(verified, ["read_back", "read_back"]);
            }
        }
    }
}
