//! A fault-injecting HTTP proxy between godwit and an S3 server: on a share of the requests it
//! answers 503 SlowDown (with `Retry-After`) or 500 InternalError itself, drops the connection
//! without an answer, or passes the request on and cuts the answer short (a body cut in the
//! middle; an answer without a body is dropped whole, so the server did the work and the client
//! never hears it). Everything else passes through untouched (the `Host` header kept, so
//! signatures hold).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the proxy did, by kind.
#[derive(Debug, Default)]
pub struct Injected {
    pub passed: AtomicU64,
    pub slow_down: AtomicU64,
    pub internal_error: AtomicU64,
    pub reset: AtomicU64,
    pub cut_short: AtomicU64,
}

impl Injected {
    pub fn faults(&self) -> u64 {
        self.slow_down.load(Ordering::Relaxed)
            + self.internal_error.load(Ordering::Relaxed)
            + self.reset.load(Ordering::Relaxed)
            + self.cut_short.load(Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} passed; 503 SlowDown {}, 500 InternalError {}, reset {}, cut short {}",
            self.passed.load(Ordering::Relaxed),
            self.slow_down.load(Ordering::Relaxed),
            self.internal_error.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
            self.cut_short.load(Ordering::Relaxed)
        )
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub injected: Arc<Injected>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Which requests the proxy meddles with, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The share of requests it meddles with.
    pub rate: f64,
    /// Only 503 SlowDown answers (else every kind of fault).
    pub slow_down_only: bool,
    /// Only requests whose User-Agent holds this (`app/NAME` for a process run with
    /// `AWS_SDK_UA_APP_ID=NAME`).
    pub user_agent: Option<String>,
    /// At most this many faults in all.
    pub most: Option<u64>,
    /// Only requests whose query holds this (`partNumber=` for UploadPart).
    pub query: Option<String>,
}

impl Plan {
    /// Every kind of fault on about `rate` of all requests.
    pub fn all_kinds(rate: f64) -> Self {
        Self {
            rate,
            slow_down_only: false,
            user_agent: None,
            most: None,
            query: None,
        }
    }
}

struct Shared {
    upstream: String,
    plan: Plan,
    client: Client<HttpConnector, Incoming>,
    injected: Arc<Injected>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://HOST:PORT`) that meddles with about `rate` of the requests.
    pub async fn start(upstream: &str, rate: f64) -> FaultProxy {
        Self::start_with(upstream, Plan::all_kinds(rate)).await
    }

    /// A proxy to `upstream` that meddles as `plan` says.
    pub async fn start_with(upstream: &str, plan: Plan) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let injected = Arc::new(Injected::default());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            plan,
            client: Client::builder(TokioExecutor::new()).build_http(),
            injected: Arc::clone(&injected),
        });
        let accept_loop = tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                let service = hyper::service::service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { shared.handle(request).await }
                });
                let connection = http
                    .serve_connection(TokioIo::new(socket), service)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        FaultProxy {
            endpoint: format!("http://{addr}"),
            injected,
            accept_loop,
        }
    }
}

/// Why the proxy dropped a connection (an error from the service makes hyper close it).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

enum Fault {
    SlowDown,
    InternalError,
    Reset,
    CutShort,
}

impl Shared {
    fn draw(&self, request: &Request<Incoming>) -> Option<Fault> {
        let plan = &self.plan;
        if let Some(wanted) = &plan.user_agent {
            let agent = request
                .headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !agent.contains(wanted.as_str()) {
                return None;
            }
        }
        if let Some(wanted) = &plan.query
            && !request
                .uri()
                .query()
                .unwrap_or("")
                .contains(wanted.as_str())
        {
            return None;
        }
        if plan.most.is_some_and(|most| self.injected.faults() >= most)
            || fastrand::f64() >= plan.rate
        {
            return None;
        }
        if plan.slow_down_only {
            return Some(Fault::SlowDown);
        }
        Some(match fastrand::u8(0..4) {
            0 => Fault::SlowDown,
            1 => Fault::InternalError,
            2 => Fault::Reset,
            _ => Fault::CutShort,
        })
    }

    async fn handle(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, Dropped> {
        let count = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        match self.draw(&request) {
            Some(Fault::SlowDown) => {
                count(&self.injected.slow_down);
                // The request is read whole first, so the answer is what the client sees.
                let _ = request.into_body().collect().await;
                Ok(error_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                ))
            }
            Some(Fault::InternalError) => {
                count(&self.injected.internal_error);
                let _ = request.into_body().collect().await;
                Ok(error_answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ))
            }
            Some(Fault::Reset) => {
                count(&self.injected.reset);
                Err(Dropped)
            }
            Some(Fault::CutShort) => {
                count(&self.injected.cut_short);
                let answer = self.forward(request).await?;
                let (parts, body) = answer.into_parts();
                let whole = body.collect().await.map_err(|_| Dropped)?.to_bytes();
                if whole.len() < 2 {
                    // Nothing to cut: the work is done upstream, and the answer is lost.
                    return Err(Dropped);
                }
                let half = whole.slice(..whole.len() / 2);
                Ok(Response::from_parts(
                    parts,
                    BoxBody::new(Truncated { half: Some(half) }),
                ))
            }
            None => {
                count(&self.injected.passed);
                let answer = self.forward(request).await?;
                Ok(answer.map(|body| body.map_err(|e| Box::new(e) as _).boxed()))
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Incoming>, Dropped> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = format!("{}{path}", self.upstream)
            .parse()
            .map_err(|_| Dropped)?;
        self.client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|_| Dropped)
    }
}

fn error_answer(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("retry-after", "1")
        .body(
            http_body_util::Full::new(Bytes::from(xml))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

/// The first half of an answer's body, then an error: hyper aborts the connection with the
/// promised length unmet.
struct Truncated {
    half: Option<Bytes>,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(match self.half.take() {
            Some(half) => Ok(Frame::data(half)),
            None => Err(Box::new(Dropped)),
        }))
    }
}
