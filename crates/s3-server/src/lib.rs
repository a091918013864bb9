//! A local S3 endpoint that stores buckets as directories, built on the `s3s-fs` crate.
//!
//! godwit uses it for three things: `godwit serve-s3 DIR` (try godwit with nothing else installed),
//! the README's demo, and the test suites, which talk to it over real HTTP on loopback.
//! It is not a production S3 server: its `If-None-Match` is a check-then-write inside the server.
//!
//! Four additions to s3s-fs, each something AWS S3 does and s3s-fs 0.14.1 does not; without them,
//! no server that runs here would let the suite exercise godwit's server-side copies, its
//! conditional deletes and its clean-up of uploads a stopped run began:
//! - a CopyObject with `If-None-Match: *` onto an existing key is refused with 412 (s3s-fs ignores
//!   the header; see [`Access`]);
//! - a DeleteObject with `If-Match` on another ETag is refused with 412 (s3s-fs ignores it);
//! - a HEAD with `partNumber=N` answers with that part's length and the object's part count
//!   (s3s-fs answers with the whole object). s3s-fs forgets how an object was cut once its
//!   multipart upload completes, so the hook notes the part sizes of each upload as its requests
//!   pass, and `PartHeads` (`routes.rs`) answers from those notes. It does not check `If-Match` there;
//! - ListMultipartUploads answers with the open uploads, their keys and start times (s3s-fs
//!   answers 501).
//!
//! And, asked ([`ServerOptions::listing_etags`]; `godwit serve-s3` asks), ListObjectsV2 lists each
//! object with its ETag, as AWS S3 does: then a conditional server-side copy needs no HEAD of its
//! source first (see `listing.rs`).
//!
//! And one mode for tests of godwit's fallbacks, [`Conditions::Ignored`]: every conditional
//! header is dropped and every write goes ahead, as on the S3-compatible servers that accept the
//! headers and ignore them (none of which runs here). Requests on godwit's probe objects are
//! counted apart ([`RequestCounts`]).
//!
//! The keys it accepts are a [`Keys`] set that can change while it runs ([`LocalS3::keys`]:
//! grant a new pair, revoke an old one), as a real account's keys do when they are rotated; it
//! counts the requests signed with each.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

mod listing;
mod routes;

use routes::PartHeads;

/// Which conditional requests the endpoint enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conditions {
    /// As AWS S3 does: `If-None-Match: *` and `If-Match` on PutObject and
    /// CompleteMultipartUpload, `If-None-Match: *` on CopyObject, `If-Match` on DeleteObject.
    #[default]
    Enforced,
    /// None of them: the headers are dropped before s3s-fs sees them and every write goes
    /// ahead, as on the S3-compatible servers that accept the headers and ignore them. For
    /// tests of godwit's fallbacks only.
    Ignored,
    /// As s3s-fs alone: enforced on PutObject and CompleteMultipartUpload, but a CopyObject
    /// with `If-None-Match: *` copies over an existing key all the same.
    CopiesUnconditional,
}

/// How the endpoint behaves beside storing objects: test knobs, each standing in for a kind of
/// server that does not run here.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOptions {
    /// Which conditional requests it enforces.
    pub conditions: Conditions,
    /// Each PutObject waits this long first, as a distant or busy server would.
    pub put_delay: std::time::Duration,
    /// Bytes a second one PutObject request carries at most (it takes at least its size at this
    /// rate), as on AWS, where a request's throughput is capped and parallel parts carry more.
    /// Parts are not slowed. `None`: as fast as it goes.
    pub put_rate: Option<u64>,
    /// Each ListObjectsV2 waits this long first (a listing slow enough to be stopped half-way).
    pub list_delay: std::time::Duration,
    /// Each DeleteObject waits this long first (a rollback slow enough to be stopped half-way).
    pub delete_delay: std::time::Duration,
    /// GetObject and HeadObject of a key that ends with this answer 403 AccessDenied, as a
    /// source object the reader may not read.
    pub unreadable_suffix: Option<&'static str>,
    /// ListObjectsV2 gives each object its ETag, as AWS S3 does (s3s-fs lists none: a client
    /// must HEAD an object to learn it).
    pub listing_etags: bool,
}

/// A running local S3 endpoint. Dropping it stops accepting connections.
pub struct LocalS3 {
    addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
    requests: RequestCounts,
    refusing: Refusing,
    keys: Keys,
}

/// The access keys an endpoint accepts, changeable while it runs (a rotation: grant the new
/// pair, then revoke the old one). A request signed with a key it does not hold is refused
/// with 403 InvalidAccessKeyId, as AWS S3 does; one signed with a wrong secret, with 403
/// SignatureDoesNotMatch.
#[derive(Clone, Default)]
pub struct Keys(Arc<Mutex<KeysInner>>);

#[derive(Default)]
struct KeysInner {
    secrets: HashMap<String, String>,
    /// Requests whose signature named each access key id, accepted or not.
    uses: HashMap<String, u64>,
}

impl Keys {
    /// Accepts requests signed with `access_key`/`secret_key` from now on.
    pub fn grant(&self, access_key: &str, secret_key: &str) {
        if let Ok(mut keys) = self.0.lock() {
            keys.secrets
                .insert(access_key.to_owned(), secret_key.to_owned());
        }
    }

    /// Refuses requests signed with `access_key` from now on.
    pub fn revoke(&self, access_key: &str) {
        if let Ok(mut keys) = self.0.lock() {
            keys.secrets.remove(access_key);
        }
    }

    /// How many requests named `access_key` in their signature so far.
    pub fn uses(&self, access_key: &str) -> u64 {
        self.0
            .lock()
            .map_or(0, |keys| keys.uses.get(access_key).copied().unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<SecretKey> {
        let mut keys = self
            .0
            .lock()
            .map_err(|_| s3s::s3_error!(InternalError, "the key set is poisoned"))?;
        *keys.uses.entry(access_key.to_owned()).or_default() += 1;
        match keys.secrets.get(access_key) {
            Some(secret) => Ok(SecretKey::from(secret.as_str())),
            None => Err(s3s::s3_error!(
                InvalidAccessKeyId,
                "The AWS access key Id you provided does not exist in our records."
            )),
        }
    }
}

/// How many requests of each S3 operation (`PutObject`, `UploadPart`, ...) the endpoint received.
/// Requests on godwit's probe objects (named `.godwit-probe-*`) count as `OPERATION (probe)`.
#[derive(Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl RequestCounts {
    /// Requests of operation `name` so far.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .map_or(0, |counts| counts.get(name).copied().unwrap_or(0))
    }

    /// Every operation and its count.
    pub fn all(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }

    /// Requests of operation `name` since `earlier` (what [`RequestCounts::all`] gave then).
    pub fn since(&self, earlier: &BTreeMap<String, u64>, name: &str) -> u64 {
        self.get(name) - earlier.get(name).copied().unwrap_or(0)
    }
}

/// The access hook: counts each request, lets signed requests through (what s3s does by
/// default), enforces `If-None-Match: *` on CopyObject, and notes how multipart objects are cut.
struct Access {
    counts: RequestCounts,
    root: PathBuf,
    cuts: Cuts,
    conditions: Conditions,
    put_delay: std::time::Duration,
    put_rate: Option<u64>,
    list_delay: std::time::Duration,
    delete_delay: std::time::Duration,
    /// Keys ending with this are refused while `unreadable_suffix` holds.
    unreadable_suffix_name: Option<&'static str>,
    unreadable_suffix: Refusing,
}

/// Whether the keys `ServerOptions::unreadable_suffix` names are still refused; shared with
/// [`LocalS3::serve_all`].
type Refusing = Arc<std::sync::atomic::AtomicBool>;

impl Access {
    /// Refuses to serve `key` when the options make it unreadable.
    fn refuse_read(&self, key: &str) -> s3s::S3Result<()> {
        let refusing = self
            .unreadable_suffix
            .load(std::sync::atomic::Ordering::Relaxed);
        match self.unreadable_suffix_name {
            Some(suffix) if refusing && key.ends_with(suffix) => Err(s3s::s3_error!(
                AccessDenied,
                "this test server refuses to serve this key"
            )),
            _ => Ok(()),
        }
    }

    /// The ETag s3s-fs gives the object at `bucket`/`key`, or `None` when there is no object.
    fn etag_of(&self, bucket: &str, key: &str) -> Option<String> {
        listing::etag_of(&self.root, bucket, key)
    }
}

/// How multipart uploads are cut, as their requests pass: part sizes by upload id while an upload
/// is open, then by (bucket, key) once it completes.
#[derive(Clone, Default)]
struct Cuts(Arc<Mutex<CutsInner>>);

#[derive(Default)]
struct CutsInner {
    uploads: HashMap<String, BTreeMap<i32, u64>>,
    objects: HashMap<(String, String), Vec<u64>>,
}

impl Cuts {
    fn part(&self, upload_id: &str, part_number: i32, size: u64) {
        if let Ok(mut cuts) = self.0.lock() {
            cuts.uploads
                .entry(upload_id.to_owned())
                .or_default()
                .insert(part_number, size);
        }
    }

    fn complete(&self, upload_id: &str, bucket: &str, key: &str, parts: &[i32]) {
        if let Ok(mut cuts) = self.0.lock() {
            let Some(sizes) = cuts.uploads.get(upload_id) else {
                return;
            };
            let cut: Option<Vec<u64>> = parts.iter().map(|n| sizes.get(n).copied()).collect();
            if let Some(cut) = cut {
                cuts.objects
                    .insert((bucket.to_owned(), key.to_owned()), cut);
            }
        }
    }

    fn of(&self, bucket: &str, key: &str) -> Option<Vec<u64>> {
        let cuts = self.0.lock().ok()?;
        cuts.objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> s3s::S3Result<()> {
        // Requests on godwit's probe objects are counted apart, so that tests can count the
        // requests a migration made for the objects it moves.
        let probe = match cx.s3_path() {
            s3s::path::S3Path::Object { key, .. } => key
                .rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with(".godwit-probe-")),
            _ => false,
        };
        if let Ok(mut counts) = self.counts.0.lock() {
            let name = cx.s3_op().name();
            let name = if probe {
                format!("{name} (probe)")
            } else {
                name.to_owned()
            };
            *counts.entry(name).or_default() += 1;
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }

    async fn put_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<()> {
        if self.conditions == Conditions::Ignored {
            req.input.if_none_match = None;
            req.input.if_match = None;
        }
        if !self.put_delay.is_zero() {
            tokio::time::sleep(self.put_delay).await;
        }
        if let (Some(rate), Some(len)) = (self.put_rate, req.input.content_length) {
            let seconds = len.max(0) as f64 / rate.max(1) as f64;
            tokio::time::sleep(std::time::Duration::from_secs_f64(seconds)).await;
        }
        Ok(())
    }

    async fn list_objects_v2(
        &self,
        _req: &mut s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<()> {
        if !self.list_delay.is_zero() {
            tokio::time::sleep(self.list_delay).await;
        }
        Ok(())
    }

    async fn get_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<()> {
        self.refuse_read(&req.input.key)
    }

    async fn head_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<()> {
        self.refuse_read(&req.input.key)
    }

    async fn delete_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<()> {
        if !self.delete_delay.is_zero() {
            tokio::time::sleep(self.delete_delay).await;
        }
        let condition = req.input.if_match.take();
        if self.conditions == Conditions::Ignored {
            return Ok(());
        }
        if let Some(expected) = condition.as_ref().and_then(|c| c.as_etag()) {
            let current = self.etag_of(&req.input.bucket, &req.input.key);
            let matches = current.is_some_and(|etag| etag == expected.value());
            if !matches {
                return Err(s3s::s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                ));
            }
        }
        Ok(())
    }

    async fn copy_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<()> {
        if matches!(
            self.conditions,
            Conditions::Ignored | Conditions::CopiesUnconditional
        ) {
            return Ok(());
        }
        let wants_new = req
            .headers
            .get("if-none-match")
            .is_some_and(|value| value.as_bytes() == b"*");
        // s3s-fs keeps an object at ROOT/BUCKET/KEY.
        let target = self.root.join(&req.input.bucket).join(&req.input.key);
        if wants_new && target.is_file() {
            return Err(s3s::s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        Ok(())
    }

    async fn upload_part(
        &self,
        req: &mut s3s::S3Request<s3s::dto::UploadPartInput>,
    ) -> s3s::S3Result<()> {
        let input = &req.input;
        if let Some(size) = input.content_length.and_then(|n| u64::try_from(n).ok()) {
            self.cuts.part(&input.upload_id, input.part_number, size);
        }
        Ok(())
    }

    async fn upload_part_copy(
        &self,
        req: &mut s3s::S3Request<s3s::dto::UploadPartCopyInput>,
    ) -> s3s::S3Result<()> {
        let input = &req.input;
        let size = match &input.copy_source_range {
            Some(range) => range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)),
            None => match &input.copy_source {
                s3s::dto::CopySource::Bucket { bucket, key, .. } => {
                    std::fs::metadata(self.root.join(&**bucket).join(&**key))
                        .ok()
                        .map(|m| m.len())
                }
                _ => None,
            },
        };
        if let Some(size) = size {
            self.cuts.part(&input.upload_id, input.part_number, size);
        }
        Ok(())
    }

    async fn complete_multipart_upload(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> s3s::S3Result<()> {
        if self.conditions == Conditions::Ignored {
            req.input.if_none_match = None;
            req.input.if_match = None;
        }
        let input = &req.input;
        let parts: Vec<i32> = input
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.as_ref())
            .map(|parts| parts.iter().filter_map(|p| p.part_number).collect())
            .unwrap_or_default();
        // Noted before the server decides: should it refuse the completion, the object keeps its
        // size, and `PartHeads` answers only while the noted cut adds up to that size.
        self.cuts
            .complete(&input.upload_id, &input.bucket, &input.key, &parts);
        Ok(())
    }
}

/// Why a local S3 endpoint could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl LocalS3 {
    /// Serves `root` (each sub-directory is a bucket) on `bind` (use port 0 for any free port),
    /// accepting only requests signed with `access_key`/`secret_key`.
    pub async fn start(
        root: &Path,
        bind: SocketAddr,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Self, StartError> {
        Self::start_with(root, bind, access_key, secret_key, ServerOptions::default()).await
    }

    /// Like [`LocalS3::start`], with test knobs (see [`ServerOptions`]).
    pub async fn start_with(
        root: &Path,
        bind: SocketAddr,
        access_key: &str,
        secret_key: &str,
        options: ServerOptions,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StartError(format!("cannot create {}: {e}", root.display())))?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| StartError(format!("cannot serve {}: {e:?}", root.display())))?;
        let mut builder = S3ServiceBuilder::new(listing::Listing {
            fs,
            root: root.to_path_buf(),
            etags: options.listing_etags,
        });
        let keys = Keys::default();
        keys.grant(access_key, secret_key);
        builder.set_auth(keys.clone());
        let requests = RequestCounts::default();
        let cuts = Cuts::default();
        let refusing: Refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        builder.set_access(Access {
            counts: requests.clone(),
            root: root.to_path_buf(),
            cuts: cuts.clone(),
            conditions: options.conditions,
            put_delay: options.put_delay,
            put_rate: options.put_rate,
            list_delay: options.list_delay,
            delete_delay: options.delete_delay,
            unreadable_suffix: Arc::clone(&refusing),
            unreadable_suffix_name: options.unreadable_suffix,
        });
        builder.set_route(PartHeads {
            root: root.to_path_buf(),
            cuts,
        });
        let service = builder.build();

        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| StartError(format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError(format!("cannot read the listening address: {e}")))?;

        let accept_loop = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let socket = match listener.accept().await {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!("local S3: accept failed: {e}");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(Self {
            addr,
            accept_loop,
            requests,
            refusing,
            keys,
        })
    }

    /// The keys it accepts: grant and revoke pairs while it runs.
    pub fn keys(&self) -> Keys {
        self.keys.clone()
    }

    /// The address the endpoint listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL to give an S3 client, e.g. `http://127.0.0.1:39411`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, serves the keys `ServerOptions::unreadable_suffix` named (a source object
    /// made readable again, say by fixing its permissions).
    pub fn serve_all(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The requests received so far, by operation.
    pub fn requests(&self) -> RequestCounts {
        self.requests.clone()
    }

    /// Runs until the accept loop ends (it only ends when the task is aborted).
    pub async fn wait(self) {
        let _ = (&mut { self }.accept_loop).await;
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}
