//! The OpenAPI 3 document of the API, generated from the handlers' annotations and the views'
//! types (utoipa), served at `/api/openapi.json`.

use axum::Json;
use axum::http::StatusCode;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ApiError, Failure};
use super::{api, events, model, samples};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "godwit",
        description = "The API of `godwit serve`: migrations (create, progress, pause, resume, cancel), their fail queue and retries, partitions (validation, cutover), workers, and live updates. Every call needs the token: `Authorization: Bearer TOKEN`.",
    ),
    paths(
        api::list, api::create, api::get, api::pause, api::resume, api::cancel,
        api::failed, api::retry_failed, api::partitions, api::validate, api::cutover,
        api::throughput, api::workers, api::objects, events::migration, events::migrations,
    ),
    components(schemas(
        ApiError, model::MigrationView, model::NewMigration, model::Progress, model::StateCounts,
        model::FailedPage, model::FailedView, model::Retried, model::PartitionView,
        model::CutoverView, model::ValidationView, model::ValidationReport, model::WorkerView,
        model::Update, model::ObjectsPage, model::ObjectView, samples::Sample, samples::Rate, events::StreamEvent,
    )),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "migrations", description = "Migrations and their progress"),
        (name = "control", description = "Pause, resume, cancel"),
        (name = "failures", description = "The fail queue and retries"),
        (name = "partitions", description = "Checkpoints: validation and cutover"),
        (name = "workers", description = "The fleet's worker processes"),
        (name = "live", description = "Server-sent event streams"),
    ),
)]
struct Document;

/// Declares the bearer token scheme.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = Document::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Any other `/api/` path: a JSON 404.
pub async fn no_such_call() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API call; /api/openapi.json lists them",
    )
}
