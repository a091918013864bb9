//! The live parts: server-sent event streams the pages listen to (one `update` a second), and the
//! sampler that keeps throughput history.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, Failure, Segments};

use super::{AppState, api, dashboard, samples};

/// One server-sent event, as a `text/event-stream` carries it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StreamEvent {
    /// `update`, or `error` when the ledger could not be read this second (its data then
    /// `{"status": 503}`; the stream goes on).
    #[schema(example = "update")]
    pub event: String,
    /// JSON: on a migration's stream an `Update`; on the stream of every migration, a list of
    /// `MigrationView`s.
    pub data: String,
}

/// How often a stream sends.
const EVERY: Duration = Duration::from_secs(1);

/// A stream of `update` events, each `next`'s answer as JSON, until the server stops. An error
/// answer is sent as an `error` event (its JSON body) and the stream goes on.
fn stream<F, Fut, T>(state: AppState, next: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Failure>> + Send,
    T: serde::Serialize,
{
    let stop = state.stopping();
    futures::stream::unfold((state, next, true), move |(state, next, first)| {
        let stop = stop.clone();
        async move {
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = stop.cancelled() => return None,
                }
            }
            let event = match next(state.clone()).await {
                Ok(update) => Event::default().event("update").json_data(&update),
                Err(failure) => Event::default()
                    .event("error")
                    .json_data(serde_json::json!({"status": failure.status().as_u16()})),
            };
            let event = event.unwrap_or_else(|_| Event::default().event("error"));
            Some((Ok(event), (state, next, false)))
        }
    })
}

/// Live updates of a migration.
///
/// A `text/event-stream` of `update` events, one a second, each an `Update` in JSON: the
/// migration, its partitions, the first page of its fail queue, its workers and its latest
/// sample.
#[utoipa::path(get, path = "/api/migrations/{id}/events", operation_id = "migration_events", tag = "live",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "Server-sent events: `update`, its data an Update in JSON, once a second", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn migration(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    // A missing migration is a 404 now, not an endless stream of errors.
    api::migration(state.store().as_ref(), id).await?;
    let events = stream(
        state,
        move |state| async move { api::update(&state, id).await },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Live updates of every migration.
///
/// A `text/event-stream` of `update` events, one a second, each the list of migrations in JSON.
#[utoipa::path(get, path = "/api/events", operation_id = "migrations_events", tag = "live",
    responses(
        (status = 200, description = "Server-sent events: `update`, its data the migrations (MigrationView) in JSON, once a second", content_type = "text/event-stream", body = StreamEvent),
        (status = 401, description = "No token", body = ApiError),
    ))]
pub async fn migrations(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream(state, |state| async move { api::views(&state).await });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `GET /live`: the migrations list's live sections (HTML), once a second.
pub async fn live_list(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream(state, |state| async move {
        dashboard::live_sections(&state, None).await
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `GET /migrations/{id}/live`: a migration page's live sections (HTML) and its latest sample,
/// once a second.
pub async fn live_migration(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    api::migration(state.store().as_ref(), id).await?;
    let events = stream(state, move |state| async move {
        dashboard::live_sections(&state, Some(id)).await
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Samples every migration's progress every two seconds until `stop`.
pub async fn sample_every(state: AppState, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(samples::EVERY_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = state.sample().await {
            tracing::warn!("could not sample the migrations' progress: {error}");
        }
    }
}
