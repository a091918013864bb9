//! `godwit serve`: the dashboard and the JSON API on a ledger, with workers in-process.
//!
//! `app` builds the whole router from an [`AppState`], so the tests drive every route without
//! a socket; `run` adds what a process needs around it: the token, the ledger, the sampler that
//! keeps throughput history, the in-process workers, the listener and a clean stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use godwit_state::Store;
use godwit_storage::StaticCredentials;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::exit;
use crate::ledger::{Place, state_dir};
use crate::shutdown::Shutdown;

mod api;
mod auth;
mod dashboard;
mod error;
mod events;
mod format;
mod model;
mod openapi;
mod runner;
mod samples;
mod token;

pub use samples::Sample;

/// What every request handler shares: the ledger, the token's keys, the throughput history,
/// and notes from this server's workers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    auth: auth::Auth,
    samples: samples::Samples,
    notes: Mutex<HashMap<i64, String>>,
    metrics_public: bool,
    /// Whether `/metrics` answers (this process's Prometheus recorder is installed).
    metrics: bool,
    /// Whether this server speaks TLS itself (`--tls-cert`): its session cookie is `Secure`.
    https: bool,
    wake: Notify,
    stop: CancellationToken,
    credentials: Option<StaticCredentials>,
}

impl AppState {
    /// A state over `store`, opened to requests that carry `token`.
    pub fn new(store: Arc<dyn Store>, token: &str) -> Self {
        Self::build(store, token, false, CancellationToken::new())
    }

    fn build(
        store: Arc<dyn Store>,
        token: &str,
        metrics_public: bool,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                auth: auth::Auth::new(token),
                samples: samples::Samples::default(),
                notes: Mutex::new(HashMap::new()),
                metrics_public,
                metrics: false,
                https: false,
                wake: Notify::new(),
                stop,
                credentials: None,
            }),
        }
    }

    /// This state, its API and workers opening both S3 sides of every migration with
    /// `credentials` instead of the standard chain (an in-process S3 server's, in a demo or a
    /// test). Call before the state is shared.
    pub fn with_credentials(mut self, credentials: StaticCredentials) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.credentials = Some(credentials);
        }
        self
    }

    /// This state answering `/metrics` from this process's Prometheus recorder (installed now if
    /// it was not). Call before the state is shared.
    pub fn with_metrics(mut self) -> Self {
        crate::metrics::recorder();
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = true;
        }
        self
    }

    /// This state behind this server's own TLS. Call before the state is shared.
    pub fn with_https(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.https = true;
        }
        self
    }

    /// Whether the browser reached this server over HTTPS: its own, or a proxy's that says so
    /// (`X-Forwarded-Proto: https`).
    fn over_https(&self, headers: &axum::http::HeaderMap) -> bool {
        self.inner.https
            || headers
                .get("x-forwarded-proto")
                .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    fn credentials(&self) -> Option<StaticCredentials> {
        self.inner.credentials.clone()
    }

    /// The ledger.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner.store)
    }

    fn auth(&self) -> &auth::Auth {
        &self.inner.auth
    }

    fn samples(&self) -> &samples::Samples {
        &self.inner.samples
    }

    fn metrics_public(&self) -> bool {
        self.inner.metrics_public
    }

    /// What this server's workers last said of migration `id` (why they cannot run it).
    fn note(&self, id: i64) -> Option<String> {
        let notes = self.inner.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.get(&id).cloned()
    }

    fn set_note(&self, id: i64, note: Option<String>) {
        let mut notes = self.inner.notes.lock().unwrap_or_else(|e| e.into_inner());
        match note {
            Some(note) => notes.insert(id, note),
            None => notes.remove(&id),
        };
    }

    /// Tells the in-process workers to look at the ledger now (a migration was created,
    /// resumed or retried).
    fn wake_workers(&self) {
        self.inner.wake.notify_one();
    }

    /// Samples every migration's progress now (the server does every two seconds).
    pub async fn sample(&self) -> Result<(), godwit_state::StoreError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for migration in self.inner.store.migrations().await? {
            let tally = self.inner.store.tally(migration.id).await?;
            godwit_engine::metrics::observe_tally(&migration.spec.name, &tally);
            self.samples()
                .record(migration.id.0, samples::Sample::of(&tally, at));
        }
        godwit_engine::metrics::observe_workers(&self.inner.store.workers().await?);
        Ok(())
    }

    /// Ends the server's live streams (server-sent events), so a stop does not wait on them.
    fn stopping(&self) -> CancellationToken {
        self.inner.stop.clone()
    }
}

/// The largest request body taken (a new migration's settings are a few hundred bytes).
pub const MAX_BODY: usize = 64 << 10;

/// What `POST /api/migrations` makes of a request body before it opens either side: the JSON
/// read as a new migration, then every setting checked as the CLI checks it. `Err` holds the
/// message the API would answer. Public so that the fuzz target (`fuzz/`) reaches it without a
/// server.
pub fn check_new_migration(body: &[u8]) -> Result<(), String> {
    let new: model::NewMigration =
        serde_json::from_slice(body).map_err(|error| error.to_string())?;
    api::migrate_args(&new)
        .map(drop)
        .map_err(|failure| failure.message().to_owned())
}

/// The whole server: pages, assets, the API and its OpenAPI document, `/metrics`, all behind
/// the token guard.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/migrations", get(api::list).post(api::create))
        .route("/migrations/{id}", get(api::get))
        .route("/migrations/{id}/pause", post(api::pause))
        .route("/migrations/{id}/resume", post(api::resume))
        .route("/migrations/{id}/cancel", post(api::cancel))
        .route("/migrations/{id}/failed", get(api::failed))
        .route("/migrations/{id}/retry-failed", post(api::retry_failed))
        .route("/migrations/{id}/partitions", get(api::partitions))
        .route("/migrations/{id}/objects", get(api::objects))
        .route(
            "/migrations/{id}/partitions/{partition}/validate",
            post(api::validate),
        )
        .route(
            "/migrations/{id}/partitions/{partition}/cutover",
            post(api::cutover),
        )
        .route("/migrations/{id}/throughput", get(api::throughput))
        .route("/migrations/{id}/events", get(events::migration))
        .route("/events", get(events::migrations))
        .route("/workers", get(api::workers))
        .fallback(openapi::no_such_call);
    Router::new()
        .route("/", get(dashboard::migrations))
        .route("/migrations/new", get(dashboard::new_migration))
        .route("/migrations/{id}", get(dashboard::migration))
        .route("/migrations/{id}/objects", get(dashboard::objects))
        .route("/live", get(events::live_list))
        .route("/migrations/{id}/live", get(events::live_migration))
        .route("/login", get(dashboard::login_page).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .fallback(dashboard::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// `/metrics`: the Prometheus text of this process's registry.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !state.inner.metrics {
        return error::Failure::not_found("this server exports no metrics").into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// `godwit serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let place = Place::from_args(args.ledger.state.clone());
    let token = match token::load(args.token_file.as_deref(), &state_dir()) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("godwit: {error}");
            return Ok(exit::CONFIG);
        }
    };
    let store = match place.open().await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("godwit: {error}");
            return Ok(exit::CONFIG);
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(error) => return Ok(crate::render::fail(error)),
        },
        _ => None,
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "godwit: cannot listen on {}: {error}; choose another address with --listen",
                args.listen
            );
            return Ok(exit::CONFIG);
        }
    };
    let address: SocketAddr = listener.local_addr()?;
    if tls.is_none() && !address.ip().is_loopback() {
        eprintln!(
            "godwit: warning: listening on {address}, beyond this machine, without TLS: the token and the session cookie cross the network in clear unless a TLS proxy is in front"
        );
    }
    let shutdown = Shutdown::watch();
    let stop = shutdown.token();
    let state = AppState::build(
        Arc::clone(&store),
        &token.secret,
        args.metrics_public,
        stop.clone(),
    )
    .with_metrics();
    let state = if tls.is_some() {
        state.with_https()
    } else {
        state
    };
    let made = if token.generated { "made now, " } else { "" };
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "godwit: dashboard at {scheme}://{address}/ on the ledger {place}; the token is in {} ({made}owner-only)",
        token.origin
    );
    let sampler = tokio::spawn(events::sample_every(state.clone(), stop.clone()));
    let workers = (!args.no_workers).then(|| {
        tokio::spawn(runner::run(
            state.clone(),
            godwit_engine::worker_name(),
            std::time::Duration::from_secs(args.lease),
            stop.clone(),
        ))
    });
    let until = stop.clone().cancelled_owned();
    let served = match tls {
        Some(acceptor) => {
            let listener = crate::tls::TlsListener::new(listener, acceptor)?;
            axum::serve(listener, app(state))
                .with_graceful_shutdown(until)
                .await
        }
        None => {
            axum::serve(listener, app(state))
                .with_graceful_shutdown(until)
                .await
        }
    };
    stop.cancel();
    if let Some(workers) = workers {
        let _ = workers.await;
    }
    let _ = sampler.await;
    served?;
    Ok(exit::INTERRUPTED)
}
