//! A local S3 endpoint that stores buckets as directories, built on the `s3s-fs` crate.
//!
//! godwit uses it for three things: `godwit serve-s3 DIR` (try godwit with nothing else installed),
//! the README's demo, and the test suites, which talk to it over real HTTP on loopback.
//! It is not a production S3 server: its `If-None-Match` is a check-then-write inside the server.
//!
//! One addition to s3s-fs: a CopyObject with `If-None-Match: *` onto an existing key is refused
//! (412), as AWS S3 does; s3s-fs 0.14.1 ignores that header. Without it, no server that runs here
//! would let the suite exercise godwit's server-side copies (see [`Access`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// A running local S3 endpoint. Dropping it stops accepting connections.
pub struct LocalS3 {
    addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
    requests: RequestCounts,
}

/// How many requests of each S3 operation (`PutObject`, `UploadPart`, ...) the endpoint received.
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
}

/// The access hook: counts each request, lets signed requests through (what s3s does by
/// default), and enforces `If-None-Match: *` on CopyObject.
struct Access {
    counts: RequestCounts,
    root: PathBuf,
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> s3s::S3Result<()> {
        if let Ok(mut counts) = self.counts.0.lock() {
            *counts.entry(cx.s3_op().name().to_owned()).or_default() += 1;
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }

    async fn copy_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<()> {
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
        std::fs::create_dir_all(root)
            .map_err(|e| StartError(format!("cannot create {}: {e}", root.display())))?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| StartError(format!("cannot serve {}: {e:?}", root.display())))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let requests = RequestCounts::default();
        builder.set_access(Access {
            counts: requests.clone(),
            root: root.to_path_buf(),
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
        })
    }

    /// The address the endpoint listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL to give an S3 client, e.g. `http://127.0.0.1:39411`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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
