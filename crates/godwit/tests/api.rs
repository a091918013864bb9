//! The API and the pages of `godwit serve`, through `godwit::serve::app` without a socket: every
//! endpoint, its errors, and the token guard (bearer, session cookie, CSRF, cross-site). The
//! ledger is real (SQLite, seeded by a real `godwit migrate` against the in-process S3 server).

mod support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use godwit::serve::{AppState, app};
use godwit_s3_server::ServerOptions;
use godwit_state::{SqliteStore, Store};
use godwit_storage::StaticCredentials;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{ACCESS_KEY, SECRET_KEY, Target, path_str};
use tower::ServiceExt;

const TOKEN: &str = "a-test-token-long-enough";
const UNREADABLE: &str = ".bad";

/// A ledger with one finished migration: partitions p1 (two objects, copied) and p2 (one copied,
/// one the source refuses to serve: failed, `access_denied`).
struct Seeded {
    source: Target,
    dest: Target,
    dest_bucket: String,
    _work: tempfile::TempDir,
    state: AppState,
    app: Router,
    id: i64,
}

async fn seeded() -> Seeded {
    let source = Target::with_options(ServerOptions {
        unreadable_suffix: Some(UNREADABLE),
        ..ServerOptions::default()
    })
    .await;
    let dest = Target::s3s_fs().await;
    let source_bucket = source.bucket("api-src").await;
    let dest_bucket = dest.bucket("api-dst").await;
    for (key, size) in [("p1/a.txt", 100), ("p1/b.txt", 200), ("p2/c.txt", 300)] {
        source
            .put(&source_bucket, key, &support::bytes(size, size as usize))
            .await;
    }
    source
        .put(&source_bucket, &format!("p2/d{UNREADABLE}"), b"refused")
        .await;
    let work = tempfile::tempdir().unwrap();
    let ledger = support::ledger(&work);
    let mut command = support::godwit();
    command
        .args(["migrate", &format!("s3://{source_bucket}")])
        .arg(format!("s3://{dest_bucket}"))
        .args(["--json", "--no-progress", "--state", &path_str(&ledger)])
        .args(["--name", "seeded", "--partition-by", "prefix:1"])
        .args(["--max-attempts", "1"])
        .args(["--source-endpoint", &source.endpoint])
        .args(["--dest-endpoint", &dest.endpoint]);
    let run = support::run(command).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&ledger).unwrap());
    let id = store.migrations().await.unwrap()[0].id.0;
    let state = AppState::new(store, TOKEN).with_credentials(StaticCredentials {
        access_key_id: ACCESS_KEY.to_owned(),
        secret_access_key: SECRET_KEY.to_owned(),
        session_token: None,
    });
    Seeded {
        app: app(state.clone()),
        state,
        source,
        dest,
        dest_bucket,
        _work: work,
        id,
    }
}

/// An answer: status, headers and body (JSON when it is JSON).
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// The error code of a JSON error answer.
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn bearer(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

async fn get(app: &Router, uri: &str) -> Answer {
    send(app, bearer("GET", uri).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, uri: &str) -> Answer {
    send(app, bearer("POST", uri).body(Body::empty()).unwrap()).await
}

async fn post_json(app: &Router, uri: &str, body: Value) -> Answer {
    let request = bearer("POST", uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_and_call_needs_the_token() {
    let seeded = seeded().await;
    let app = &seeded.app;
    let anonymous = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();

    let answer = send(app, anonymous("/api/migrations")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error(), "unauthorized");
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    let wrong = Request::get("/api/migrations")
        .header(header::AUTHORIZATION, "Bearer not-the-token-at-all")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app, wrong).await.status, StatusCode::UNAUTHORIZED);
    let answer = send(app, anonymous("/api/openapi.json")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(app, anonymous("/metrics")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error(), "unauthorized");

    // A page sends the browser to log in, and back afterwards.
    let answer = send(app, anonymous(&format!("/migrations/{}", seeded.id))).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        answer.headers[header::LOCATION],
        format!("/login?next=/migrations/{}", seeded.id)
    );
    let answer = send(app, anonymous("/login")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text.contains("name=\"token\""), "{}", answer.text);
    let answer = send(app, anonymous("/assets/app.js")).await;
    assert_eq!(answer.status, StatusCode::OK);
    // A change without the token is refused before anything is read.
    let pause = Request::post(format!("/api/migrations/{}/pause", seeded.id))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app, pause).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(app, "/api/migrations").await.json()[0]["status"],
        "running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_logs_in_once_and_its_changes_carry_the_csrf_token() {
    let seeded = seeded().await;
    let app = &seeded.app;
    let login = |token: &str, origin: Option<&str>| {
        let mut request = Request::post("/login")
            .header(header::HOST, "dash.test")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request
            .body(Body::from(format!("token={token}&next=%2Fmigrations%2F1")))
            .unwrap()
    };
    let answer = send(app, login("wrong-token-but-long", Some("http://dash.test"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.text.contains("not this server"), "{}", answer.text);
    assert!(!answer.headers.contains_key(header::SET_COOKIE));
    // A login posted from another site is refused too.
    let answer = send(app, login(TOKEN, Some("http://evil.example"))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    let answer = send(app, login(TOKEN, Some("http://dash.test"))).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.headers[header::LOCATION], "/migrations/1");
    let cookie = answer.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    // Plain HTTP: a `Secure` cookie would never come back.
    assert!(!cookie.contains("Secure"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    // Behind a TLS proxy that says so, the cookie is for HTTPS only.
    let mut behind_proxy = login(TOKEN, Some("https://dash.test"));
    behind_proxy
        .headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let answer = send(app, behind_proxy).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    let page = Request::get("/")
        .header(header::COOKIE, &session)
        .body(Body::empty())
        .unwrap();
    let answer = send(app, page).await;
    assert_eq!(answer.status, StatusCode::OK);
    let csrf = answer
        .text
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    assert!(answer.text.contains("seeded"), "{}", answer.text);

    let pause = |csrf: Option<&str>, origin: &str| {
        let mut request = Request::post(format!("/api/migrations/{}/pause", seeded.id))
            .header(header::HOST, "dash.test")
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, &session);
        if let Some(csrf) = csrf {
            request = request.header("X-CSRF-Token", csrf);
        }
        request.body(Body::empty()).unwrap()
    };
    let answer = send(app, pause(None, "http://dash.test")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.error(), "csrf");
    let answer = send(app, pause(Some(&csrf), "http://evil.example")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.error(), "cross_site");
    assert_eq!(
        get(app, "/api/migrations").await.json()[0]["status"],
        "running"
    );
    let answer = send(app, pause(Some(&csrf), "http://dash.test")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.json()["status"], "paused");

    // Logging out ends the cookie.
    let out = Request::post("/logout")
        .header(header::COOKIE, &session)
        .header("X-CSRF-Token", &csrf)
        .body(Body::empty())
        .unwrap();
    let answer = send(app, out).await;
    assert!(
        answer.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_are_read_and_controlled() {
    let seeded = seeded().await;
    let (app, id) = (&seeded.app, seeded.id);
    seeded.state.sample().await.unwrap();

    let list = get(app, "/api/migrations").await;
    assert_eq!(list.status, StatusCode::OK);
    let migration = &list.json()[0];
    assert_eq!(migration["name"], "seeded");
    assert_eq!(migration["phase"], "finished_with_problems");
    assert_eq!(migration["progress"]["objects"]["copied"], 3);
    assert_eq!(migration["progress"]["objects"]["failed"], 1);
    assert_eq!(migration["progress"]["total_objects"], 4);
    assert_eq!(migration["progress"]["done_objects"], 4);
    assert_eq!(migration["progress"]["bytes"]["copied"], 600);
    assert_eq!(migration["progress"]["percent"], 100.0);

    let one = get(app, &format!("/api/migrations/{id}")).await;
    assert_eq!(one.json()["id"], id);
    let missing = get(app, "/api/migrations/999").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error(), "not_found");
    assert!(missing.json()["message"].as_str().unwrap().contains("999"));
    let malformed = get(app, "/api/migrations/abc").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error(), "bad_request");
    let nowhere = get(app, "/api/nowhere").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.error(), "not_found");

    for (action, status) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
        ("resume", "running"),
    ] {
        let answer = post(app, &format!("/api/migrations/{id}/{action}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{action}: {}", answer.text);
        assert_eq!(answer.json()["status"], status, "{action}");
    }
    assert_eq!(
        post(app, "/api/migrations/999/pause").await.status,
        StatusCode::NOT_FOUND
    );

    let samples = get(app, &format!("/api/migrations/{id}/throughput")).await;
    assert_eq!(samples.json().as_array().unwrap().len(), 1);
    assert_eq!(samples.json()[0]["done_objects"], 4);
    let workers = get(app, "/api/workers").await;
    assert_eq!(workers.status, StatusCode::OK);
    assert!(workers.json().is_array());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fail_queue_is_paged_and_retried() {
    let seeded = seeded().await;
    let (app, id) = (&seeded.app, seeded.id);
    let failed = get(app, &format!("/api/migrations/{id}/failed")).await;
    assert_eq!(failed.status, StatusCode::OK);
    let page = failed.json();
    assert_eq!(page["objects"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["objects"][0]["key"], "p2/d.bad");
    assert_eq!(page["objects"][0]["class"], "access_denied");
    assert!(
        page["objects"][0]["error"]
            .as_str()
            .unwrap()
            .contains("403")
            || page["objects"][0]["error"]
                .as_str()
                .unwrap()
                .contains("refus"),
        "{page}"
    );
    assert_eq!(page["next"], Value::Null);
    let one = get(app, &format!("/api/migrations/{id}/failed?limit=1")).await;
    assert_eq!(one.json()["next"], page["objects"][0]["id"]);
    let after = get(
        app,
        &format!(
            "/api/migrations/{id}/failed?limit=1&after={}",
            page["objects"][0]["id"]
        ),
    )
    .await;
    assert_eq!(after.json()["objects"].as_array().unwrap().len(), 0);
    let other = get(
        app,
        &format!("/api/migrations/{id}/failed?class=unreachable"),
    )
    .await;
    assert_eq!(other.json()["objects"].as_array().unwrap().len(), 0);
    for bad in ["limit=0", "limit=5000", "limit=many", "after=x"] {
        let answer = get(app, &format!("/api/migrations/{id}/failed?{bad}")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.text
        );
        assert_eq!(answer.error(), "bad_request");
    }

    let retried = post(app, &format!("/api/migrations/{id}/retry-failed")).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.json()["requeued"], 1);
    let again = get(app, &format!("/api/migrations/{id}/failed")).await;
    assert_eq!(again.json()["objects"].as_array().unwrap().len(), 0);
    let view = get(app, &format!("/api/migrations/{id}")).await.json();
    assert_eq!(view["progress"]["objects"]["pending"], 1);
    // A retry opens the listing again (the next worker lists the whole source, so what was
    // fixed by a rename is found too): the migration is listing, then copying.
    assert_eq!(view["phase"], "scanning");
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_validated_and_cut_over() {
    let seeded = seeded().await;
    let (app, id) = (&seeded.app, seeded.id);
    let partitions = get(app, &format!("/api/migrations/{id}/partitions"))
        .await
        .json();
    let states: Vec<(String, String)> = partitions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("p1".into(), "migrated".into()),
            ("p2".into(), "failed".into())
        ]
    );

    let refused = post(app, &format!("/api/migrations/{id}/partitions/p1/cutover")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("never validated")
    );
    let validated = post(app, &format!("/api/migrations/{id}/partitions/p1/validate")).await;
    assert_eq!(validated.status, StatusCode::OK, "{}", validated.text);
    assert_eq!(validated.json()["passed"], true);
    assert_eq!(validated.json()["partitions"][0]["verified"], 2);
    let failing = post(app, &format!("/api/migrations/{id}/partitions/p2/validate")).await;
    assert_eq!(failing.json()["passed"], false, "{}", failing.text);
    let cut = post(app, &format!("/api/migrations/{id}/partitions/p1/cutover")).await;
    assert_eq!(cut.status, StatusCode::OK, "{}", cut.text);
    assert_eq!(cut.json()["state"], "cut_over");
    assert!(cut.json()["cut_over_at"].is_i64());
    let p1 = &get(app, &format!("/api/migrations/{id}/partitions"))
        .await
        .json()[0];
    assert_eq!(p1["state"], "cut_over");
    let refused = post(app, &format!("/api/migrations/{id}/partitions/p2/cutover")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("failed")
    );
    let unknown = post(app, &format!("/api/migrations/{id}/partitions/p9/cutover")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    let unknown = post(app, &format!("/api/migrations/{id}/partitions/p9/validate")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_is_created_and_queued_and_bad_ones_say_why() {
    let seeded = seeded().await;
    let app = &seeded.app;
    let source = tempfile::tempdir().unwrap();
    support::write_tree(source.path(), &[("x/1.txt", b"one".to_vec())]);
    let good = json!({
        "source": path_str(source.path()),
        "dest": format!("s3://{}/copy", seeded.dest_bucket),
        "dest_endpoint": seeded.dest.endpoint,
        "name": "from the form",
        "partition_by": "prefix:1",
        "concurrency": 8,
    });
    let created = post_json(app, "/api/migrations", good.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let view = created.json();
    assert_eq!(view["name"], "from the form");
    assert_eq!(view["phase"], "queued");
    assert_eq!(view["status"], "running");
    let store = seeded.state.store();
    let recorded = store
        .find_migration("from the form")
        .await
        .unwrap()
        .unwrap();
    let options: Value = serde_json::from_str(recorded.options.as_deref().unwrap()).unwrap();
    assert_eq!(options["queued"], true, "{options}");
    assert_eq!(options["concurrency"], 8, "{options}");
    assert!(!recorded.options.unwrap().contains(SECRET_KEY));
    // The same again answers the same migration.
    let again = post_json(app, "/api/migrations", good.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.json()["id"], view["id"]);

    let mut cases = vec![
        (
            json!({"source": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "dest",
        ),
        (
            json!({"source": "/x", "dest": "s3://b", "secret_access_key": "no"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret_access_key",
        ),
        (
            json!({"source": "postgres://u:hunter2@127.0.0.1/db?table=t&key=k&blob=b", "dest": "s3://b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "credentials are never sent",
        ),
        (
            json!({"source": "/x", "dest": "s3://b", "concurrency": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "concurrency",
        ),
        (
            json!({"source": "/x", "dest": "s3://b", "part_size": "lots"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "part_size",
        ),
        (
            json!({"source": "/x", "dest": "s3://b", "group_by": "nonsense"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nonsense",
        ),
        (
            json!({"source": "/does/not/exist", "dest": format!("s3://{}", seeded.dest_bucket), "dest_endpoint": seeded.dest.endpoint}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/does/not/exist",
        ),
        (
            json!({"source": path_str(source.path()), "dest": "s3://no-such-bucket-here", "dest_endpoint": seeded.dest.endpoint}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-such-bucket-here",
        ),
    ];
    // The name is taken by a migration between other places.
    let mut taken = good.clone();
    taken["source"] = json!(path_str(seeded._work.path()));
    cases.push((taken, StatusCode::CONFLICT, "from the form"));
    for (body, status, named) in cases {
        let answer = post_json(app, "/api/migrations", body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text);
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(named), "{body}: {message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
    let not_json = bearer("POST", "/api/migrations")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("source=/x"))
        .unwrap();
    let answer = send(app, not_json).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.error(), "unsupported_media_type");
    let broken = bearer("POST", "/api/migrations")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"source\": "))
        .unwrap();
    assert_eq!(send(app, broken).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(store.migrations().await.unwrap().len(), 2);
    drop(seeded.source);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_and_streams_show_the_migration() {
    let seeded = seeded().await;
    let (app, id) = (&seeded.app, seeded.id);
    let page = get(app, &format!("/migrations/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for shown in [
        "seeded",
        "Fail queue",
        "p2/d.bad",
        "access_denied",
        "Partitions",
        "Retry failed",
        "canvas",
    ] {
        assert!(page.text.contains(shown), "{shown} not on the page");
    }
    assert!(!page.text.contains("{\""), "raw JSON on the page");
    assert_eq!(
        get(app, "/migrations/999").await.status,
        StatusCode::NOT_FOUND
    );
    let form = get(app, "/migrations/new").await;
    assert_eq!(form.status, StatusCode::OK);
    // Each side's credentials by name: a profile or a secret, never keys.
    for field in [
        "source_profile",
        "source_secret",
        "dest_profile",
        "dest_secret",
    ] {
        assert!(form.text.contains(&format!("name=\"{field}\"")), "{field}");
    }
    assert!(!form.text.contains("secret_access_key"));

    let events = app
        .clone()
        .oneshot(
            bearer("GET", &format!("/api/migrations/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = events.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8_lossy(&frame);
    assert!(text.starts_with("event: update\ndata: "), "{text}");
    let data: Value =
        serde_json::from_str(text.trim_start_matches("event: update\ndata: ").trim()).unwrap();
    assert_eq!(data["migration"]["name"], "seeded");
    assert_eq!(data["failed"][0]["key"], "p2/d.bad");
    assert_eq!(data["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(app, "/api/migrations/999/events").await.status,
        StatusCode::NOT_FOUND
    );

    let document = get(app, "/api/openapi.json").await.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/migrations",
        "/api/migrations/{id}",
        "/api/migrations/{id}/pause",
        "/api/migrations/{id}/failed",
        "/api/migrations/{id}/retry-failed",
        "/api/migrations/{id}/partitions",
        "/api/migrations/{id}/partitions/{partition}/cutover",
        "/api/migrations/{id}/events",
        "/api/workers",
    ] {
        assert!(
            document["paths"][path].is_object(),
            "{path} not in the document"
        );
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_listed_by_prefix_and_state_a_page_at_a_time() {
    let seeded = seeded().await;
    let (app, id) = (&seeded.app, seeded.id);
    let keys = |answer: &Answer| -> Vec<String> {
        answer.json()["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = get(app, &format!("/api/migrations/{id}/objects")).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(keys(&all), ["p1/a.txt", "p1/b.txt", "p2/c.txt", "p2/d.bad"]);
    assert_eq!(all.json()["next"], Value::Null);
    assert_eq!(all.json()["objects"][0]["state"], "copied");
    assert_eq!(all.json()["objects"][0]["partition"], "p1");
    assert_eq!(all.json()["objects"][0]["size"], 100);

    let p2 = get(app, &format!("/api/migrations/{id}/objects?prefix=p2/")).await;
    assert_eq!(keys(&p2), ["p2/c.txt", "p2/d.bad"]);
    let failed = get(app, &format!("/api/migrations/{id}/objects?state=failed")).await;
    assert_eq!(keys(&failed), ["p2/d.bad"]);
    assert_eq!(failed.json()["objects"][0]["error_class"], "access_denied");

    // Two at a time, each page going on from the last.
    let first = get(app, &format!("/api/migrations/{id}/objects?limit=2")).await;
    assert_eq!(keys(&first), ["p1/a.txt", "p1/b.txt"]);
    let next = first.json()["next"].as_str().unwrap().to_owned();
    let second = get(
        app,
        &format!(
            "/api/migrations/{id}/objects?limit=2&after={}",
            next.replace('/', "%2F")
        ),
    )
    .await;
    assert_eq!(keys(&second), ["p2/c.txt", "p2/d.bad"]);

    for bad in ["state=lost", "limit=0", "limit=1001", "limit=x"] {
        let answer = get(app, &format!("/api/migrations/{id}/objects?{bad}")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.text
        );
        assert_eq!(answer.error(), "bad_request");
    }
    assert_eq!(
        get(app, "/api/migrations/999/objects").await.status,
        StatusCode::NOT_FOUND
    );
    let page = get(app, &format!("/migrations/{id}/objects?state=failed")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text.contains("p2/d.bad") && !page.text.contains("p1/a.txt"),
        "{}",
        page.text
    );
}

/// `/metrics` of a server: the ledger's gauges by migration and state (set by the sampler), in
/// Prometheus text, behind the token like every call.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_ledger_by_migration_and_state() {
    let seeded = seeded().await;
    // A state without metrics says so.
    let answer = get(&seeded.app, "/metrics").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error(), "not_found");

    let state = AppState::new(seeded.state.store(), TOKEN).with_metrics();
    state.sample().await.unwrap();
    let app = app(state);
    let answer = get(&app, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(
        answer.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    let line = |series: &str| {
        answer
            .text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{}", answer.text))
            .to_owned()
    };
    assert_eq!(
        line(r#"godwit_objects{migration="seeded",state="copied"}"#),
        "3"
    );
    assert_eq!(
        line(r#"godwit_objects{migration="seeded",state="failed"}"#),
        "1"
    );
    assert_eq!(
        line(r#"godwit_bytes{migration="seeded",state="copied"}"#),
        "600"
    );
    assert_eq!(line(r#"godwit_queue_depth{migration="seeded"}"#), "0");
    // Set from the workers' heartbeat rows (the seeding run's among them).
    assert!(
        answer.text.contains("godwit_active_workers "),
        "{}",
        answer.text
    );
    assert!(
        answer
            .text
            .contains("# HELP godwit_objects Objects in the ledger"),
        "{}",
        answer.text
    );
    let anonymous = Request::get("/metrics").body(Body::empty()).unwrap();
    assert_eq!(send(&app, anonymous).await.status, StatusCode::UNAUTHORIZED);
}

/// The rows of docs/errors.md that are API requests: a body that is not JSON, too large, or
/// holds an unknown field or a password; no token or a wrong one. Each answer is a JSON error
/// with its status, and the ledger holds only what good requests made.
#[tokio::test(flavor = "multi_thread")]
async fn bad_request_bodies_get_json_errors_and_change_nothing() {
    let seeded = seeded().await;
    let app = &seeded.app;
    let store = seeded.state.store();
    let before = store.migrations().await.unwrap().len();
    let raw = |body: Vec<u8>| {
        bearer("POST", "/api/migrations")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };

    let answer = send(app, raw(b"{\"source\": \"/x\", \"dest\": ".to_vec())).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    assert_eq!(answer.error(), "bad_request");

    // Far beyond any real request: refused before it is read whole.
    let mut huge = b"{\"source\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 8 << 20));
    huge.extend(b"\", \"dest\": \"s3://b\"}");
    let answer = send(app, raw(huge)).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );
    assert_eq!(answer.error(), "payload_too_large");
    assert!(answer.json()["message"].as_str().unwrap().contains("bytes"));

    let answer = post_json(
        app,
        "/api/migrations",
        json!({"source": "/x", "dest": "s3://b", "aws_secret_access_key": "no"}),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.text
    );
    assert!(
        answer.text.contains("aws_secret_access_key"),
        "{}",
        answer.text
    );

    for token in [None, Some("a-wrong-token-of-some-length")] {
        let mut request =
            Request::post("/api/migrations").header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let answer = send(app, request.body(Body::from("{}")).unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
        assert_eq!(answer.error(), "unauthorized");
    }
    assert_eq!(store.migrations().await.unwrap().len(), before);

    // A good request after all of them is taken.
    let source = tempfile::tempdir().unwrap();
    support::write_tree(source.path(), &[("one.txt", b"1".to_vec())]);
    let good = json!({
        "source": path_str(source.path()),
        "dest": format!("s3://{}/after", seeded.dest_bucket),
        "dest_endpoint": seeded.dest.endpoint,
    });
    let answer = post_json(app, "/api/migrations", good).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    assert_eq!(store.migrations().await.unwrap().len(), before + 1);
}
