//! The dashboard's pages, rendered on the server (maud). Each page is whole on first load; then
//! its live sections are rendered again here once a second and sent as server-sent events
//! (`events.rs`), which the page's script swaps in. The only drawing in the browser is the chart.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use super::AppState;
use super::auth::{self, session_of};
use super::error::{Params, Segments};
use super::model::{FailedView, MigrationView, PartitionView, Update, WorkerView};
use super::{api, format::*};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The page frame: head, top bar, the CSRF token for the page's scripts.
fn page(title: &str, headers: &HeaderMap, state: &AppState, body: Markup) -> Html<String> {
    let csrf = session_of(headers).map(|s| state.auth().csrf(s));
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    @if let Some(csrf) = &csrf { meta name="csrf" content=(csrf); }
                    title { (title) " · godwit" }
                    link rel="stylesheet" href="/assets/style.css";
                    script src="/assets/app.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" { span.mark { "◆" } " godwit" }
                        nav {
                            a href="/" { "Migrations" }
                            a href="/migrations/new" { "New migration" }
                        }
                        @if csrf.is_some() {
                            form.logout method="post" action="/logout" {
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// `GET /`: every migration, live.
pub async fn migrations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let views = match api::views(&state).await {
        Ok(views) => views,
        Err(failure) => return failure.into_response(),
    };
    page(
        "Migrations",
        &headers,
        &state,
        html! {
            div.heading {
                h1 { "Migrations" }
                a.button.primary href="/migrations/new" { "New migration" }
            }
            section #list data-live="/live" { (migration_list(&views)) }
        },
    )
    .into_response()
}

/// The migrations table.
pub fn migration_list(views: &[MigrationView]) -> Markup {
    html! {
        @if views.is_empty() {
            p.empty { "No migrations yet. " a href="/migrations/new" { "Start one" } "." }
        } @else {
            table.list {
                thead { tr {
                    th { "Migration" } th { "Status" } th.wide { "Progress" }
                    th.num { "Objects" } th.num { "Bytes" } th.num { "Rate" } th.num { "ETA" }
                } }
                tbody {
                    @for view in views {
                        tr {
                            td { a href={ "/migrations/" (view.id) } { (view.name) }
                                 div.sub { (view.source) " → " (view.destination) } }
                            td { (status_badge(view)) }
                            td.wide { (bar(view.progress.percent, &view.progress.objects)) }
                            td.num { (count(view.progress.done_objects)) " / " (count(view.progress.total_objects)) }
                            td.num { (bytes(view.progress.done_bytes)) " / " (bytes(view.progress.total_bytes)) }
                            td.num { (rate(view.rate.map(|r| r.bytes_per_second))) }
                            td.num { (eta(view.eta_seconds)) }
                        }
                    }
                }
            }
        }
    }
}

fn status_badge(view: &MigrationView) -> Markup {
    let (class, text) = match (view.status.as_str(), view.phase.as_str()) {
        ("paused", _) => ("paused", "paused"),
        ("cancelled", _) => ("cancelled", "cancelled"),
        (_, "queued") => ("queued", "queued"),
        (_, "scanning") => ("running", "scanning"),
        (_, "copying") => ("running", "copying"),
        (_, "finished") => ("done", "finished"),
        _ => ("problems", "finished with problems"),
    };
    html! { span class={ "badge " (class) } data-status=(text) { (text) } }
}

/// A progress bar, its segments the states objects ended in.
fn bar(percent: f64, objects: &super::model::StateCounts) -> Markup {
    let total = (objects.pending
        + objects.in_progress
        + objects.copied
        + objects.already_present
        + objects.conflict
        + objects.source_vanished
        + objects.failed)
        .max(1) as f64;
    let share = |n: u64| format!("width:{:.3}%", n as f64 * 100.0 / total);
    html! {
        div.bar title={ (format!("{percent:.1}")) "% done" } {
            span.seg.copied style=(share(objects.copied)) {}
            span.seg.present style=(share(objects.already_present)) {}
            span.seg.vanished style=(share(objects.source_vanished)) {}
            span.seg.conflict style=(share(objects.conflict)) {}
            span.seg.failed style=(share(objects.failed)) {}
            span.seg.flight style=(share(objects.in_progress)) {}
        }
        span.percent { (format!("{percent:.1}")) "%" }
    }
}

/// `GET /migrations/{id}`: one migration, live.
pub async fn migration(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segments(id): Segments<i64>,
) -> Response {
    let update = match api::update(&state, id).await {
        Ok(update) => update,
        Err(failure) if failure.status() == StatusCode::NOT_FOUND => {
            return not_found_page(&headers, &state, "No such migration.");
        }
        Err(failure) => return failure.into_response(),
    };
    let view = &update.migration;
    page(
        &view.name,
        &headers,
        &state,
        html! {
            div.heading {
                div {
                    h1 #name { (view.name) }
                    div.sub { (view.source) (endpoint(&view.source_endpoint)) " → "
                              (view.destination) (endpoint(&view.destination_endpoint)) }
                }
                div.actions {
                    a.button href={ "/migrations/" (id) "/objects" } { "Browse objects" }
                    span #controls { (controls(view)) }
                }
            }
            div #live data-live={ "/migrations/" (id) "/live" } data-id=(id) {
                (summary(&update))
            }
            section.card {
                div.card-head { h2 { "Throughput" } span.sub { "objects and bytes finished per second, this server's last hour" } }
                canvas #chart width="960" height="240" data-id=(id) {}
            }
            div #details { (details(&update)) }
        },
    )
    .into_response()
}

fn endpoint(endpoint: &Option<String>) -> Markup {
    html! { @if let Some(e) = endpoint { span.endpoint { " at " (e) } } }
}

/// Pause, resume and cancel, as the migration's status allows.
pub fn controls(view: &MigrationView) -> Markup {
    let call = |action: &str| format!("POST /api/migrations/{}/{action}", view.id);
    html! {
        @if view.status == "running" {
            button.button #pause data-action=(call("pause")) { "Pause" }
        } @else {
            button.button.primary #resume data-action=(call("resume")) { "Resume" }
        }
        @if view.status != "cancelled" {
            button.button.danger #cancel data-action=(call("cancel"))
                data-confirm="Cancel this migration? Objects in flight finish; nothing more is taken until it is resumed." { "Cancel" }
        }
    }
}

/// The parts of a migration's page that change, above the chart: the numbers. Each live part is
/// an element the live stream replaces by id (`live`, `details`, `controls`).
pub fn summary(update: &Update) -> Markup {
    let view = &update.migration;
    let progress = &view.progress;
    html! {
        section #summary.cards {
            div.card.big {
                div.label { "Progress" }
                div.value #percent { (format!("{:.1}", progress.percent)) "%" }
                (bar(progress.percent, &progress.objects))
                div.sub { (status_badge(view)) " pass " (view.pass) }
            }
            div.card {
                div.label { "Objects" }
                div.value #objects { (count(progress.done_objects)) }
                div.sub { "of " (count(progress.total_objects)) }
            }
            div.card {
                div.label { "Bytes" }
                div.value #bytes { (bytes(progress.done_bytes)) }
                div.sub { "of " (bytes(progress.total_bytes)) }
            }
            div.card {
                div.label { "Throughput" }
                div.value #rate { (rate(view.rate.map(|r| r.bytes_per_second))) }
                div.sub { (per_second(view.rate.map(|r| r.objects_per_second))) " objects/s" }
            }
            div.card {
                div.label { "Time left" }
                div.value #eta { (eta(view.eta_seconds)) }
                div.sub { @if view.phase == "scanning" { "still listing the source" } @else { "at this rate" } }
            }
            div.card.problems[progress.objects.failed + progress.objects.conflict > 0] {
                div.label { "Failed · conflicts" }
                div.value #failed-count { (count(progress.objects.failed)) " · " (count(progress.objects.conflict)) }
                div.sub { "conflicts are left alone, never overwritten" }
            }
        }
        @if let Some(note) = &view.note {
            div.notice.error #note { strong { "This server's workers cannot run it: " } (note) }
        }
    }
}

/// The parts below the chart: objects by state, workers, the fail queue, partitions.
pub fn details(update: &Update) -> Markup {
    let view = &update.migration;
    html! {
        div.columns {
            section.card #states { (states(view)) }
            section.card #workers { (workers(&update.workers)) }
        }
        section.card #failures { (failures(view, &update.failed)) }
        section.card #partitions { (partitions(view.id, &update.partitions, update.partition_count)) }
    }
}

fn states(view: &MigrationView) -> Markup {
    let p = &view.progress;
    let rows = [
        (
            "copied",
            "Copied and verified",
            p.objects.copied,
            p.bytes.copied,
        ),
        (
            "present",
            "Already at the destination",
            p.objects.already_present,
            p.bytes.already_present,
        ),
        (
            "flight",
            "In progress",
            p.objects.in_progress,
            p.bytes.in_progress,
        ),
        ("pending", "Waiting", p.objects.pending, p.bytes.pending),
        (
            "conflict",
            "Conflict (left alone)",
            p.objects.conflict,
            p.bytes.conflict,
        ),
        ("failed", "Failed", p.objects.failed, p.bytes.failed),
        (
            "vanished",
            "Gone from the source",
            p.objects.source_vanished,
            p.bytes.source_vanished,
        ),
        (
            "excluded",
            "Left out by filters",
            p.objects.excluded,
            p.bytes.excluded,
        ),
    ];
    html! {
        div.card-head { h2 { "Objects by state" } }
        table.states {
            tbody {
                @for (class, label, n, size) in rows {
                    tr { td { span class={ "dot " (class) } {} (label) } td.num { (count(n)) } td.num { (bytes(size)) } }
                }
            }
        }
    }
}

fn workers(workers: &[WorkerView]) -> Markup {
    html! {
        div.card-head { h2 { "Workers" } span.sub { (workers.len()) " on this migration" } }
        @if workers.is_empty() {
            p.empty { "No worker is on it now." }
        } @else {
            table {
                thead { tr { th { "Worker" } th.num { "In flight" } th.num { "Sending" } th.num { "Heartbeat" } } }
                tbody { @for w in workers {
                    tr {
                        td { span class={ "dot " (if w.alive { "copied" } else { "failed" }) } {} (w.host) " · pid " (w.pid) }
                        td.num { (count(w.objects_in_flight)) }
                        td.num { (rate(Some(w.bytes_per_second as f64))) }
                        td.num { (w.seconds_since_heartbeat) " s ago" }
                    }
                } }
            }
        }
    }
}

fn failures(view: &MigrationView, failed: &[FailedView]) -> Markup {
    let n = view.progress.objects.failed;
    html! {
        div.card-head {
            h2 { "Fail queue" }
            span.sub { (count(n)) " failed" }
            @if n > 0 {
                button.button.primary #retry data-action={ "POST /api/migrations/" (view.id) "/retry-failed" } { "Retry failed" }
            }
        }
        @if failed.is_empty() {
            p.empty { "Nothing failed." }
        } @else {
            table.failed {
                thead { tr { th { "Object" } th { "Class" } th.num { "Attempts" } th { "Last error" } } }
                tbody { @for f in failed {
                    tr { td.key { (f.key) } td { span.badge.problems { (f.class.as_deref().unwrap_or("-")) } }
                         td.num { (f.attempts) } td.error { (f.error.as_deref().unwrap_or("")) } }
                } }
            }
            @if n > failed.len() as u64 { p.sub { "The first " (failed.len()) "; " code { "godwit failed" } " or the API lists them all." } }
        }
    }
}

fn partitions(id: i64, partitions: &[PartitionView], total: u64) -> Markup {
    html! {
        div.card-head { h2 { "Partitions" } span.sub { (count(total)) " in all" } }
        table.partitions {
            thead { tr { th { "Partition" } th { "State" } th.wide { "Progress" } th { "Validation" } th { "Cutover" } } }
            tbody { @for p in partitions {
                tr {
                    td.key { (p.name) }
                    td { span class={ "badge " (p.state) } { (p.state.replace('_', " ")) } }
                    td.wide { (bar(p.progress.percent, &p.progress.objects)) }
                    td {
                        @match p.validation_passed {
                            Some(true) if !p.changed_since_validation => span.ok { "passed" },
                            Some(true) => span.sub { "passed, changed since" },
                            Some(false) => span.bad { "failed" },
                            None => span.sub { "not yet" },
                        }
                        @if p.state == "migrated" || p.state == "validated" || p.validation_passed == Some(false) {
                            " " button.link data-action={ "POST /api/migrations/" (id) "/partitions/" (segment(&p.name)) "/validate" } { "validate" }
                        }
                    }
                    td {
                        @if p.cut_over_at.is_some() {
                            label.switch.on { input type="checkbox" checked disabled; span {} } " cut over"
                        } @else if p.can_cut_over {
                            label.switch { input type="checkbox"
                                data-action={ "POST /api/migrations/" (id) "/partitions/" (segment(&p.name)) "/cutover" }
                                data-confirm={ "Cut partition " (p.name) " over? The application reads it from the destination from then on." }; span {} } " cut over"
                        } @else {
                            label.switch.off title="validate it first" { input type="checkbox" disabled; span {} }
                        }
                    }
                }
            } }
        }
    }
}

/// The live sections of the migrations list or a migration's page, as the stream sends them.
pub async fn live_sections(
    state: &AppState,
    id: Option<i64>,
) -> Result<serde_json::Value, super::error::Failure> {
    Ok(match id {
        None => {
            serde_json::json!({ "list": migration_list(&api::views(state).await?).into_string() })
        }
        Some(id) => {
            let update = api::update(state, id).await?;
            serde_json::json!({
                "live": summary(&update).into_string(),
                "details": details(&update).into_string(),
                "controls": controls(&update.migration).into_string(),
                "sample": update.sample,
            })
        }
    })
}

/// `GET /migrations/{id}/objects`: a migration's objects by prefix and state, a page at a time.
pub async fn objects(
    State(state): State<AppState>,
    headers: HeaderMap,
    Segments(id): Segments<i64>,
    Params(query): Params<super::model::ObjectsQuery>,
) -> Response {
    let migration = match api::migration(state.store().as_ref(), id).await {
        Ok(migration) => migration,
        Err(failure) if failure.status() == StatusCode::NOT_FOUND => {
            return not_found_page(&headers, &state, "No such migration.");
        }
        Err(failure) => return failure.into_response(),
    };
    let prefix = query.prefix.clone().unwrap_or_default();
    let wanted = query.state.clone().unwrap_or_default();
    let listed = match api::objects(
        State(state.clone()),
        Segments(id),
        Params(super::model::ObjectsQuery {
            limit: Some(100),
            ..query
        }),
    )
    .await
    {
        Ok(axum::Json(page)) => page,
        Err(failure) => return failure.into_response(),
    };
    let next = listed.next.as_ref().map(|after| {
        format!(
            "/migrations/{id}/objects?prefix={}&state={}&after={}",
            segment(&prefix),
            segment(&wanted),
            segment(after)
        )
    });
    page(
        &format!("Objects of {}", migration.spec.name),
        &headers,
        &state,
        html! {
            div.heading {
                div {
                    h1 { "Objects" }
                    div.sub { a href={ "/migrations/" (id) } { (migration.spec.name) } }
                }
            }
            form.card.filter method="get" {
                label { "Key prefix" input name="prefix" value=(prefix) placeholder="e.g. 2024/03/"; }
                label { "State" select name="state" {
                    option value="" selected[wanted.is_empty()] { "any" }
                    @for s in godwit_state::ObjectState::ALL {
                        option value=(s.as_str()) selected[wanted == s.as_str()] { (s.as_str().replace('_', " ")) }
                    }
                } }
                button.button.primary type="submit" { "Show" }
            }
            section.card {
                @if listed.objects.is_empty() {
                    p.empty { "No object here" @if next.is_some() { " in this stretch of keys; the next page goes on" } "." }
                } @else {
                    table.objects {
                        thead { tr { th { "Key" } th { "State" } th.num { "Size" } th.num { "Attempts" } th { "Partition" } th { "Last error" } } }
                        tbody { @for o in &listed.objects {
                            tr {
                                td.key { (o.key) }
                                td { span class={ "badge " (o.state) } { (o.state.replace('_', " ")) } }
                                td.num { (bytes(o.size)) }
                                td.num { (o.attempts) }
                                td { (o.partition.as_deref().unwrap_or("-")) }
                                td.error { (o.error.as_deref().unwrap_or("")) }
                            }
                        } }
                    }
                }
                @if let Some(next) = &next { p { a.button href=(next) { "Next page →" } } }
            }
        },
    )
    .into_response()
}

/// `GET /migrations/new`: the form that starts a migration.
pub async fn new_migration(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    page(
        "New migration",
        &headers,
        &state,
        html! {
            div.heading { h1 { "New migration" } }
            form.card.form #new-migration {
                div.notice.error #form-error hidden {}
                fieldset {
                    legend { "From" }
                    label { "Source" input name="source" required placeholder="/srv/media, s3://bucket/prefix or postgres://user@host/db?table=…"; }
                    label { "Source endpoint" input name="source_endpoint" placeholder="default: AWS_ENDPOINT_URL, else AWS"; }
                    label { "Source profile" input name="source_profile" placeholder="an AWS profile of the server"; }
                    label { "Source secret" input name="source_secret" placeholder="or a Secrets Manager secret (name or ARN) holding its keys"; }
                }
                fieldset {
                    legend { "To" }
                    label { "Destination" input name="dest" required placeholder="s3://bucket/prefix"; }
                    label { "Destination endpoint" input name="dest_endpoint" placeholder="default: AWS_ENDPOINT_URL, else AWS"; }
                    label { "Destination profile" input name="dest_profile" placeholder="an AWS profile of the server"; }
                    label { "Destination secret" input name="dest_secret" placeholder="or a Secrets Manager secret (name or ARN) holding its keys"; }
                }
                fieldset {
                    legend { "How" }
                    label { "Name" input name="name" placeholder="default: SOURCE -> DEST"; }
                    label { "Include (globs, one per line)" textarea name="include" rows="2" {} }
                    label { "Exclude (globs, one per line)" textarea name="exclude" rows="2" {} }
                    label { "Group by" input name="group_by" placeholder="prefix:2 or regex:…"; }
                    label { "Partition by" input name="partition_by" placeholder="prefix:1 or regex:…"; }
                    label { "Concurrency" input name="concurrency" type="number" min="1" max="4096" placeholder="256"; }
                }
                p.sub { "Keys are never sent: the server reads them itself, from its environment, the profile or the secret named here." }
                button.button.primary #start type="submit" { "Start migration" }
            }
        },
    )
}

/// `GET /login`.
#[derive(serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// `GET /login`: the form that takes the token.
pub async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(next): Params<Next>,
) -> Html<String> {
    login_form(&state, &headers, next.next.as_deref(), None)
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    next: Option<&str>,
    error: Option<&str>,
) -> Html<String> {
    page(
        "Log in",
        headers,
        state,
        html! {
            form.card.login method="post" action="/login" {
                h1 { "Log in" }
                p.sub { "Paste the server's token: GODWIT_TOKEN, the --token-file, or the file `godwit serve` printed on its first start." }
                @if let Some(error) = error { div.notice.error { (error) } }
                input type="hidden" name="next" value=(auth::safe_next(next));
                label { "Token" input #token type="password" name="token" autocomplete="current-password" required autofocus; }
                button.button.primary #login type="submit" { "Log in" }
            }
        },
    )
}

/// The login form's fields.
#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
    next: Option<String>,
}

/// `POST /login`: a session cookie for the right token.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<axum::Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            login_form(&state, &headers, None, Some("Send the token in the form.")),
        )
            .into_response();
    };
    if !state.auth().is_token(form.token.trim()) {
        return (
            StatusCode::UNAUTHORIZED,
            login_form(
                &state,
                &headers,
                form.next.as_deref(),
                Some("That is not this server's token."),
            ),
        )
            .into_response();
    }
    let session = state.auth().new_session(auth::now());
    (
        [(
            header::SET_COOKIE,
            auth::session_cookie(&session, state.over_https(&headers)),
        )],
        Redirect::to(auth::safe_next(form.next.as_deref())),
    )
        .into_response()
}

/// `POST /logout`: ends the browser's session.
pub async fn logout() -> Response {
    (
        [(header::SET_COOKIE, auth::expired_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

/// `GET /assets/{name}`: the stylesheet and the script, built into the binary.
pub async fn asset(Segments(name): Segments<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Any other page.
pub async fn not_found(State(state): State<AppState>, headers: HeaderMap) -> Response {
    not_found_page(&headers, &state, "No such page.")
}

fn not_found_page(headers: &HeaderMap, state: &AppState, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            headers,
            state,
            html! { div.card { h1 { (message) } p { a href="/" { "All migrations" } } } },
        ),
    )
        .into_response()
}
