//! The JSON API under `/api/`. Each handler reads or changes the ledger through the `Store`,
//! as the CLI's commands do, and answers a view (`model.rs`) or a [`Failure`]. The OpenAPI
//! document is generated from these handlers' annotations (`openapi.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use godwit_engine::Notify;
use godwit_state::{
    Cutover, Migration, MigrationId, MigrationStatus, ObjectId, ObjectQuery, ObjectState, Store,
};

use super::AppState;
use super::error::{ApiError, Body, Failure, Params, Segments};
use super::model::{
    CutoverView, FailedPage, FailedQuery, FailedView, MigrationView, NewMigration, ObjectView,
    ObjectsPage, ObjectsQuery, PartitionView, Retried, RetryQuery, Update, ValidationView,
    WorkerView,
};
use super::samples::Sample;
use crate::cli::{Cli, Command, MigrateArgs};
use crate::migrate::{NOTICE_ATTEMPTS, Prepared, open_with, partition_name, recorded_options};

/// The migration of this id, or 404.
pub async fn migration(store: &dyn Store, id: i64) -> Result<Migration, Failure> {
    store
        .migrations()
        .await?
        .into_iter()
        .find(|m| m.id == MigrationId(id))
        .ok_or_else(|| Failure::not_found(format!("no migration has id {id}")))
}

/// The view of a migration now.
pub async fn view(state: &AppState, migration: &Migration) -> Result<MigrationView, Failure> {
    let tally = state.store().tally(migration.id).await?;
    Ok(MigrationView::of(
        migration,
        &tally,
        state.samples().rate(migration.id.0),
        state.note(migration.id.0),
    ))
}

/// List migrations.
///
/// Every migration in the ledger with its progress, rates and ETA.
#[utoipa::path(get, path = "/api/migrations", operation_id = "list_migrations", tag = "migrations",
    responses(
        (status = 200, description = "The migrations", body = [MigrationView]),
        (status = 401, description = "No token", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<MigrationView>>, Failure> {
    Ok(Json(views(&state).await?))
}

/// The view of every migration in the ledger now.
pub async fn views(state: &AppState) -> Result<Vec<MigrationView>, Failure> {
    let mut views = Vec::new();
    for migration in state.store().migrations().await? {
        views.push(view(state, &migration).await?);
    }
    Ok(views)
}

/// Create a migration.
///
/// Checks every setting and both sides (with the server's own credentials), records the
/// migration and queues it: the server's workers (or the fleet's) scan and copy it. Creating one
/// that exists with the same places and options answers it again.
#[utoipa::path(post, path = "/api/migrations", operation_id = "create_migration", tag = "migrations",
    request_body = NewMigration,
    responses(
        (status = 201, description = "Created and queued", body = MigrationView),
        (status = 400, description = "The body is not well-formed JSON", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 409, description = "The name is taken by a migration between other places", body = ApiError),
        (status = 413, description = "The body is larger than 64 KiB", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 422, description = "A setting cannot be used (out of range, unknown, a password in a URL), a side cannot be opened or checked, or the body has unknown or mistyped fields", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Body(new): Body<NewMigration>,
) -> Result<(StatusCode, Json<MigrationView>), Failure> {
    let args = migrate_args(&new)?;
    let Prepared {
        source,
        dest,
        options,
        spec,
    } = open_with(&args, state.credentials().as_ref())
        .await
        .map_err(Failure::unprocessable)?;
    godwit_engine::check(source.as_ref(), dest.as_ref(), &options.filter)
        .await
        .map_err(|error| Failure::unprocessable(error.to_string()))?;
    let store = state.store();
    let migration = store.open_migration(&spec).await?;
    let recorded = recorded_options(&args).map_err(|error| {
        Failure::bad_request(format!("the options cannot be recorded: {error}"))
    })?;
    store.save_options(migration.id, &recorded).await?;
    let migration = self::migration(store.as_ref(), migration.id.0).await?;
    state.wake_workers();
    Ok((StatusCode::CREATED, Json(view(&state, &migration).await?)))
}

/// The `migrate` arguments a new migration stands for, parsed by the CLI's own parser so both
/// check every setting alike.
pub(super) fn migrate_args(new: &NewMigration) -> Result<MigrateArgs, Failure> {
    for (what, url) in [("source", &new.source), ("dest", &new.dest)] {
        // A table URL's own reading too (it ends the credentials at the last '@' before the
        // database), as well as `without_password`'s.
        let table_password = matches!(
            godwit_storage::Location::parse(url),
            Ok(godwit_storage::Location::Table(table)) if table.password.is_some()
        );
        if table_password || godwit_state::without_password(url) != *url {
            return Err(Failure::unprocessable(format!(
                "{what}: credentials are never sent to the server; drop the password from the URL and set it in the server's environment (PGPASSWORD, MYSQL_PWD) or name a profile"
            )));
        }
    }
    let mut argv: Vec<String> = vec!["godwit".into(), "migrate".into()];
    let mut flag = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            argv.push(format!("--{name}={value}"));
        }
    };
    flag("name", &new.name);
    flag("source-endpoint", &new.source_endpoint);
    flag("dest-endpoint", &new.dest_endpoint);
    flag("source-profile", &new.source_profile);
    flag("dest-profile", &new.dest_profile);
    flag("source-secret", &new.source_secret);
    flag("dest-secret", &new.dest_secret);
    flag("source-region", &new.source_region);
    flag("dest-region", &new.dest_region);
    flag("addressing", &new.addressing);
    flag("group-by", &new.group_by);
    flag("partition-by", &new.partition_by);
    flag("concurrency", &new.concurrency.map(|n| n.to_string()));
    flag("max-attempts", &new.max_attempts.map(|n| n.to_string()));
    flag("multipart-threshold", &new.multipart_threshold);
    flag("part-size", &new.part_size);
    flag("content-type", &new.content_type);
    flag("storage-class", &new.storage_class);
    flag("cutover-webhook", &new.cutover_webhook);
    for glob in &new.include {
        argv.push(format!("--include={glob}"));
    }
    for glob in &new.exclude {
        argv.push(format!("--exclude={glob}"));
    }
    if new.preserve_tags {
        argv.push("--preserve-tags".into());
    }
    if new.no_server_side_copy {
        argv.push("--no-server-side-copy".into());
    }
    if new.racy_server_side_copy {
        argv.push("--racy-server-side-copy".into());
    }
    argv.extend(["--".into(), new.source.clone(), new.dest.clone()]);
    let parsed = <Cli as clap::Parser>::try_parse_from(argv).map_err(|error| {
        // clap's first line says what is wrong; the usage after it is the CLI's.
        let text = error.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        Failure::unprocessable(field_names(first))
    })?;
    let Command::Migrate(mut args) = parsed.command else {
        unreachable!("the arguments name the migrate command")
    };
    args.queued = true;
    Ok(*args)
}

/// A CLI message in the API's words: `'--part-size <SIZE>'` becomes `'part_size'`.
fn field_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let flag = &rest[at + 2..];
        let end = flag
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(flag.len());
        out.push_str(&flag[..end].replace('-', "_"));
        rest = &flag[end..];
        // The value's placeholder after the flag (` <SIZE>`) says nothing to an API client.
        if let Some(placeholder) = rest.strip_prefix(" <")
            && let Some(close) = placeholder.find('>')
        {
            rest = &placeholder[close + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Get a migration.
#[utoipa::path(get, path = "/api/migrations/{id}", operation_id = "get_migration", tag = "migrations",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "The migration", body = MigrationView),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<MigrationView>, Failure> {
    let migration = migration(state.store().as_ref(), id).await?;
    Ok(Json(view(&state, &migration).await?))
}

async fn set_status(
    state: &AppState,
    id: i64,
    status: MigrationStatus,
) -> Result<Json<MigrationView>, Failure> {
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    store.set_status(migration.id, status).await?;
    state.wake_workers();
    let migration = self::migration(store.as_ref(), id).await?;
    Ok(Json(view(state, &migration).await?))
}

/// Pause a migration.
///
/// Every worker stops taking its objects within seconds; objects in flight finish.
#[utoipa::path(post, path = "/api/migrations/{id}/pause", tag = "control",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "Paused", body = MigrationView),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<MigrationView>, Failure> {
    set_status(&state, id, MigrationStatus::Paused).await
}

/// Resume a paused or cancelled migration.
#[utoipa::path(post, path = "/api/migrations/{id}/resume", tag = "control",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "Running", body = MigrationView),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<MigrationView>, Failure> {
    set_status(&state, id, MigrationStatus::Running).await
}

/// Cancel a migration.
///
/// Every worker stops it within seconds; nothing more is taken until it is resumed.
#[utoipa::path(post, path = "/api/migrations/{id}/cancel", tag = "control",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "Cancelled", body = MigrationView),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<MigrationView>, Failure> {
    set_status(&state, id, MigrationStatus::Cancelled).await
}

/// The most failures a page holds.
const MOST_FAILED: u32 = 1000;

/// List the fail queue.
///
/// A page of failed objects with their error class, attempts and last error.
#[utoipa::path(get, path = "/api/migrations/{id}/failed", tag = "failures",
    params(("id" = i64, Path, description = "The migration's id"), FailedQuery),
    responses(
        (status = 200, description = "A page of the fail queue", body = FailedPage),
        (status = 400, description = "A parameter is malformed", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn failed(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
    Params(query): Params<FailedQuery>,
) -> Result<Json<FailedPage>, Failure> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MOST_FAILED).contains(&limit) {
        return Err(Failure::bad_request(format!(
            "limit: {limit} is not between 1 and {MOST_FAILED}"
        )));
    }
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let objects = store
        .failed(
            migration.id,
            query.class.as_deref(),
            query.after.map(ObjectId),
            limit,
        )
        .await?;
    let next = (objects.len() == limit as usize)
        .then(|| objects.last().map(|o| o.id))
        .flatten();
    Ok(Json(FailedPage {
        objects: objects.into_iter().map(FailedView::from).collect(),
        next,
    }))
}

/// Retry the fail queue.
///
/// Puts failed objects (of one class, or all) back in the queue, whole groups with them; the
/// workers take them again.
#[utoipa::path(post, path = "/api/migrations/{id}/retry-failed", tag = "failures",
    params(("id" = i64, Path, description = "The migration's id"), RetryQuery),
    responses(
        (status = 200, description = "Requeued", body = Retried),
        (status = 400, description = "A parameter is malformed", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn retry_failed(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
    Params(query): Params<RetryQuery>,
) -> Result<Json<Retried>, Failure> {
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let requeued = store
        .requeue_failed(migration.id, query.class.as_deref())
        .await?;
    state.wake_workers();
    Ok(Json(Retried { requeued }))
}

/// List objects.
///
/// A page of the migration's objects by key prefix and state, in byte order of their keys. Each
/// call reads at most ten times its page of the ledger (at least 5,000 objects), so a filter few
/// objects match comes a bounded step at a time: a short or empty page with a `next` goes on.
#[utoipa::path(get, path = "/api/migrations/{id}/objects", tag = "migrations",
    params(("id" = i64, Path, description = "The migration's id"), ObjectsQuery),
    responses(
        (status = 200, description = "A page of objects", body = ObjectsPage),
        (status = 400, description = "A parameter is malformed", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn objects(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
    Params(query): Params<ObjectsQuery>,
) -> Result<Json<ObjectsPage>, Failure> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=ObjectQuery::MAX_LIMIT).contains(&limit) {
        return Err(Failure::bad_request(format!(
            "limit: {limit} is not between 1 and {}",
            ObjectQuery::MAX_LIMIT
        )));
    }
    let wanted = match query.state.as_deref() {
        None => None,
        Some(name) => Some(
            ObjectState::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| {
                    Failure::bad_request(format!(
                        "state: '{name}' is not a state; use one of {}",
                        ObjectState::ALL.map(|s| s.as_str()).join(", ")
                    ))
                })?,
        ),
    };
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let page = store
        .objects_page(
            migration.id,
            ObjectQuery {
                prefix: query.prefix,
                state: wanted,
                after: query.after,
                limit,
            },
        )
        .await?;
    Ok(Json(ObjectsPage {
        objects: page.objects.into_iter().map(ObjectView::from).collect(),
        next: page.next,
    }))
}

/// List partitions.
///
/// Each partition's objects by state, its latest validation and its cutover.
#[utoipa::path(get, path = "/api/migrations/{id}/partitions", tag = "partitions",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "The partitions, by name", body = [PartitionView]),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn partitions(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<Vec<PartitionView>>, Failure> {
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let partitions = store.partitions(migration.id).await?;
    Ok(Json(partitions.iter().map(PartitionView::from).collect()))
}

/// The migration's recorded arguments, or a 409 saying why there are none.
fn recorded(migration: &Migration) -> Result<MigrateArgs, Failure> {
    let options = migration.options.as_deref().ok_or_else(|| {
        Failure::conflict("this migration records no options: run its migrate command once")
    })?;
    serde_json::from_str(options).map_err(|error| {
        Failure::conflict(format!(
            "its options cannot be read ({error}); a newer godwit may have written them"
        ))
    })
}

/// Validate partitions.
///
/// Reads the destination itself against the ledger (every object there with the size and ETag
/// godwit verified, every group whole), partition by partition, and records each result. A
/// partition that passes may be cut over.
#[utoipa::path(post, path = "/api/migrations/{id}/partitions/{partition}/validate", tag = "partitions",
    params(
        ("id" = i64, Path, description = "The migration's id"),
        ("partition" = String, Path, description = "The partition; `-` for the objects no rule places, `*` for every partition"),
    ),
    responses(
        (status = 200, description = "The validation, passed or not", body = ValidationView),
        (status = 400, description = "A parameter is malformed", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration or partition", body = ApiError),
        (status = 409, description = "The migration records no options to open its destination with", body = ApiError),
        (status = 422, description = "The destination cannot be opened or read", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn validate(
    State(state): State<AppState>,
    Segments((id, partition)): Segments<(i64, String)>,
) -> Result<Json<ValidationView>, Failure> {
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let args = recorded(&migration)?;
    let Prepared { dest, .. } = open_with(&args, state.credentials().as_ref())
        .await
        .map_err(Failure::unprocessable)?;
    let name = partition_name(&partition);
    let only = (partition != "*").then(|| (!name.is_empty()).then_some(name.as_str()));
    let validation = godwit_engine::validate(dest.as_ref(), store.as_ref(), &migration, only)
        .await
        .map_err(|error| match error {
            godwit_engine::EngineError::Ledger(error) => Failure::from(error),
            other => Failure::unprocessable(other.to_string()),
        })?;
    if validation.partitions.is_empty() {
        return Err(Failure::not_found(format!(
            "migration {id} has no objects in partition '{partition}'"
        )));
    }
    state.wake_workers();
    Ok(Json(ValidationView::from(&validation)))
}

/// Cut a partition over.
///
/// Sets the partition's cutover flag, only if its latest validation passed and nothing in it
/// changed since, then sends the migration's notice (webhook, command). Cutting over a partition
/// cut over before answers it again.
#[utoipa::path(post, path = "/api/migrations/{id}/partitions/{partition}/cutover", tag = "partitions",
    params(
        ("id" = i64, Path, description = "The migration's id"),
        ("partition" = String, Path, description = "The partition; `-` for the objects no rule places"),
    ),
    responses(
        (status = 200, description = "Cut over, now or before", body = CutoverView),
        (status = 400, description = "A parameter is malformed", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 403, description = "Cross-site, or no CSRF token with a session", body = ApiError),
        (status = 404, description = "No such migration or partition", body = ApiError),
        (status = 409, description = "Refused: not validated, validation failed, or changed since", body = ApiError),
        (status = 503, description = "The ledger cannot be written now", body = ApiError),
    ))]
pub async fn cutover(
    State(state): State<AppState>,
    Segments((id, partition)): Segments<(i64, String)>,
) -> Result<Json<CutoverView>, Failure> {
    let store = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let args = recorded(&migration).ok();
    let notify = Notify {
        webhook: args.as_ref().and_then(|a| a.cutover_webhook.clone()),
        command: args.as_ref().and_then(|a| a.cutover_command.clone()),
        attempts: NOTICE_ATTEMPTS,
    };
    let name = partition_name(&partition);
    let which = (!name.is_empty()).then_some(name.as_str());
    let done = godwit_engine::cut_over(store.as_ref(), &migration, which, &notify)
        .await
        .map_err(|error| match error {
            godwit_engine::EngineError::Ledger(error) => Failure::from(error),
            other => Failure::unprocessable(other.to_string()),
        })?;
    let refused = |why: &str| {
        Err(Failure::conflict(format!(
            "partition '{partition}' cannot be cut over: {why}"
        )))
    };
    let cut_over_at = match done.cutover {
        Cutover::Done => None,
        Cutover::AlreadyCutOver(at) => Some(at),
        Cutover::NotValidated => return refused("it was never validated; validate it first"),
        Cutover::ValidationFailed => {
            return refused("its latest validation failed; fix what it found and validate again");
        }
        Cutover::ChangedSince => {
            return refused("objects of it changed since its latest validation; validate again");
        }
        Cutover::Unknown => {
            return Err(Failure::not_found(format!(
                "migration {id} has no partition '{partition}'"
            )));
        }
    };
    let cut_over_at = match cut_over_at {
        Some(at) => Some(at),
        None => store
            .partitions(migration.id)
            .await?
            .iter()
            .find(|p| p.row_name() == name)
            .and_then(|p| p.checkpoints.cut_over_at),
    };
    Ok(Json(CutoverView {
        partition,
        state: "cut_over".to_owned(),
        cut_over_at,
        notice: done
            .notice
            .map(|notice| match (notice.delivered_at, notice.error) {
                (Some(_), _) => format!("delivered after {} attempts", notice.attempts),
                (None, Some(error)) => {
                    format!("not delivered after {} attempts: {error}", notice.attempts)
                }
                (None, None) => "not delivered".to_owned(),
            }),
    }))
}

/// Throughput history.
///
/// The samples this server took of the migration's progress (every two seconds, the last hour).
#[utoipa::path(get, path = "/api/migrations/{id}/throughput", tag = "migrations",
    params(("id" = i64, Path, description = "The migration's id")),
    responses(
        (status = 200, description = "Samples, oldest first", body = [Sample]),
        (status = 400, description = "The id is not a number", body = ApiError),
        (status = 401, description = "No token", body = ApiError),
        (status = 404, description = "No such migration", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn throughput(
    State(state): State<AppState>,
    Segments(id): Segments<i64>,
) -> Result<Json<Vec<Sample>>, Failure> {
    let migration = migration(state.store().as_ref(), id).await?;
    Ok(Json(state.samples().history(migration.id.0)))
}

/// List workers.
///
/// Every worker process the ledger has heard of, with its last heartbeat.
#[utoipa::path(get, path = "/api/workers", operation_id = "list_workers", tag = "workers",
    responses(
        (status = 200, description = "The workers", body = [WorkerView]),
        (status = 401, description = "No token", body = ApiError),
        (status = 503, description = "The ledger cannot be read now", body = ApiError),
    ))]
pub async fn workers(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, Failure> {
    let now = super::auth::now();
    let workers = state.store().workers().await?;
    Ok(Json(
        workers.iter().map(|w| WorkerView::of(w, now)).collect(),
    ))
}

/// Everything a migration's page shows now.
pub async fn update(state: &AppState, id: i64) -> Result<Update, Failure> {
    let store: Arc<dyn Store> = state.store();
    let migration = migration(store.as_ref(), id).await?;
    let view = view(state, &migration).await?;
    let partitions = store.partitions(migration.id).await?;
    let failed = store.failed(migration.id, None, None, 20).await?;
    let now = super::auth::now();
    let workers = store
        .workers()
        .await?
        .iter()
        .map(|w| WorkerView::of(w, now))
        .filter(|w| w.migration.as_deref() == Some(migration.spec.name.as_str()))
        .collect();
    Ok(Update {
        migration: view,
        partition_count: partitions.len() as u64,
        partitions: partitions
            .iter()
            .take(200)
            .map(PartitionView::from)
            .collect(),
        failed: failed.into_iter().map(FailedView::from).collect(),
        workers,
        sample: state.samples().history(id).last().copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/run.sh` (target `api_body`): a table URL with an '@' in its user name
    /// passed the password check, which ended the credentials at the first '@', while the table
    /// source reads `//app` as the password (the credentials end at the last '@').
    #[test]
    fn fuzz_a_password_after_an_at_sign_is_refused() {
        let found = r#"{"source": "postgres://app@dbdesp_gres://app@dbdesp_profile/sxhopr\\\"}?table=filesprofile/sxhopr\\\"}?table=files&key=path&blob=data", "dest": "s3://b","addressing": "path"}"#;
        let plain = r#"{"source": "postgres://app@ops:hunter2@db/shop?table=files&key=path&blob=data", "dest": "s3://b"}"#;
        for body in [found, plain] {
            let new: NewMigration = serde_json::from_str(body).unwrap();
            let failure = migrate_args(&new).unwrap_err();
            assert_eq!(failure.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(
                failure.message().contains("credentials are never sent"),
                "{}",
                failure.message()
            );
            assert!(
                !failure.message().contains("hunter2"),
                "{}",
                failure.message()
            );
        }
        let without = r#"{"source": "postgres://app@db/shop?table=files&key=path&blob=data", "dest": "s3://b"}"#;
        let new: NewMigration = serde_json::from_str(without).unwrap();
        assert!(migrate_args(&new).is_ok());
    }
}
