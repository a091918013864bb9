//! Prometheus metrics: the recorder this process installs, the gauges it keeps set from the
//! ledger, and the small listener of `migrate --metrics-listen` / `worker --metrics-listen`
//! (`godwit serve` answers `/metrics` on its own listener).
//!
//! What is measured and why lives in `godwit_engine::metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use godwit_engine::metrics as figures;
use godwit_state::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// How often the gauges are set from the ledger.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// This process's recorder, installed on first use (a process has one global recorder).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(figures::TRANSFER_SECONDS.to_owned()),
                figures::TRANSFER_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(figures::LEDGER_COMMIT_SECONDS.to_owned()),
                    figures::LEDGER_BUCKETS,
                )
            })
            .expect("the buckets are fixed and not empty")
            .install_recorder()
            .expect("only this function installs a recorder, once");
        figures::describe();
        handle
    })
}

/// The figures as Prometheus text.
pub fn render() -> String {
    let handle = recorder();
    handle.run_upkeep();
    handle.render()
}

/// Sets the ledger's gauges now, and every [`OBSERVE_EVERY`] until `stop`.
pub async fn observe_every(store: Arc<dyn Store>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(OBSERVE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = figures::observe_ledger(store.as_ref()).await {
            tracing::warn!("could not read the ledger for the metrics' gauges: {error}");
        }
    }
}

/// Binds `address` for `--metrics-listen`; the message to print when it cannot.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(address).await.map_err(|error| {
        format!(
            "cannot listen on {address} for --metrics-listen: {error}; choose another address (port 0 picks a free one)"
        )
    })
}

/// Serves `GET /metrics` on `listener` and keeps the ledger's gauges set, until `stop`. Prints
/// where it listens.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    use axum::routing::get;
    recorder();
    if let Ok(address) = listener.local_addr() {
        eprintln!("godwit: metrics at http://{address}/metrics");
        if !address.ip().is_loopback() {
            eprintln!(
                "godwit: warning: metrics on {address} can be read from beyond this machine, without a token"
            );
        }
    }
    let observer = tokio::spawn(observe_every(store, stop.clone()));
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await
    {
        tracing::warn!("the metrics listener stopped: {error}");
    }
    let _ = observer.await;
}
