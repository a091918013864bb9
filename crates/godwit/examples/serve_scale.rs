//! Measures how fast `godwit serve` answers with a big migration in the ledger: seeds one
//! migration of N objects (default 1,000,000) in 100 partitions (most copied, 1,000 failed, the
//! rest pending), then times each of the dashboard's and the API's reads through `app()` (no
//! socket), several times each. Prints a Markdown table: median and slowest milliseconds per
//! request. A measurement, not a test: bench/RESULTS.md records its figures with this command.
//!
//! ```text
//! cargo run --release -p godwit --example serve_scale -- [--state PATH|postgres://...] [--objects N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use godwit::serve::{AppState, app};
use godwit_state::{
    MigrationSpec, ObjectState, Outcome, OwnWriteChange, PacketLimits, PgStore, Scanned,
    ScannedObject, SqliteStore, Store,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TOKEN: &str = "serve-scale-token-0123456789";
const PAGE: u64 = 1000;
const FAILED: u64 = 1000;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mut state = "/tmp/godwit-serve-scale.db".to_owned();
    let mut objects: u64 = 1_000_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state" => state = args.next().ok_or("--state needs a value")?,
            "--objects" => objects = args.next().ok_or("--objects needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let store: Arc<dyn Store> = if state.starts_with("postgres://") {
        Arc::new(PgStore::connect(&state).await?)
    } else {
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("{state}{suffix}"));
        }
        Arc::new(SqliteStore::open(std::path::Path::new(&state))?)
    };
    let started = Instant::now();
    let id = seed(store.as_ref(), objects).await?;
    eprintln!(
        "seeded {objects} objects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let state = AppState::new(Arc::clone(&store), TOKEN);
    let app = app(state.clone());
    let calls = [
        (
            "GET /api/migrations".to_owned(),
            "/api/migrations".to_owned(),
        ),
        (
            "GET /api/migrations/{id}".to_owned(),
            format!("/api/migrations/{id}"),
        ),
        (
            "GET /api/migrations/{id}/failed".to_owned(),
            format!("/api/migrations/{id}/failed?limit=50"),
        ),
        (
            "GET /api/migrations/{id}/failed (last page)".to_owned(),
            format!("/api/migrations/{id}/failed?limit=50&after={}", objects),
        ),
        (
            "GET /api/migrations/{id}/partitions".to_owned(),
            format!("/api/migrations/{id}/partitions"),
        ),
        (
            "GET /migrations/{id} (page)".to_owned(),
            format!("/migrations/{id}"),
        ),
        ("GET / (page)".to_owned(), "/".to_owned()),
        (
            "first event of /api/migrations/{id}/events".to_owned(),
            format!("/api/migrations/{id}/events"),
        ),
    ];
    println!("| request ({objects} objects) | median ms | slowest ms |");
    println!("| --- | --- | --- |");
    for (name, uri) in calls {
        let mut times = Vec::new();
        for _ in 0..9 {
            let request = Request::get(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::empty())?;
            let started = Instant::now();
            let response = app.clone().oneshot(request).await?;
            if !response.status().is_success() {
                return Err(format!("{uri}: {}", response.status()).into());
            }
            // A stream's first frame; a page's whole body.
            let mut body = response.into_body();
            if uri.ends_with("/events") {
                body.frame().await.ok_or("no event")??;
            } else {
                body.collect().await?;
            }
            times.push(started.elapsed());
        }
        report(&name, &mut times);
    }
    let mut times = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        state.sample().await?;
        times.push(started.elapsed());
    }
    report("the sampler's read of every migration", &mut times);
    Ok(())
}

fn report(name: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {name} | {:.1} | {:.1} |",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}

/// One migration of `n` objects in 100 partitions: scanned in pages, then all but the last 10%
/// claimed and recorded (1,000 of them failed). Returns its id.
async fn seed(store: &dyn Store, n: u64) -> Result<i64, BoxError> {
    let spec = MigrationSpec {
        name: "a million objects".into(),
        source_url: "/srv/media".into(),
        dest_url: "s3://archive/".into(),
        source_endpoint: None,
        dest_endpoint: Some("http://127.0.0.1:9000".into()),
    };
    let migration = store.open_migration(&spec).await?.id;
    store.save_options(migration, "{}").await?;
    let pass = store.start_pass(migration, "").await?.number;
    for start in (0..n).step_by(PAGE as usize) {
        let page = (start..(start + PAGE).min(n))
            .map(|i| ScannedObject {
                key: format!("p{:02}/d{:04}/f{i:07}.bin", i % 100, i / 1000),
                size: 65_536 + i % 4096,
                version: format!("{i}"),
                scanned: Scanned::Wanted,
                group: None,
                partition: Some(format!("p{:02}", i % 100)),
            })
            .collect();
        store.record_scanned(migration, pass, page, None).await?;
    }
    store.finish_scan(migration, pass).await?;
    let limits = PacketLimits {
        max_objects: 1000,
        max_bytes: u64::MAX,
        lease: Duration::from_secs(3600),
        whole_groups: false,
        partitions: None,
    };
    let mut done = 0;
    while done < n * 9 / 10 {
        let claimed = store.claim(migration, "seed", limits.clone()).await?;
        if claimed.is_empty() {
            break;
        }
        let outcomes = claimed
            .iter()
            .map(|c| {
                let failed = (c.id.0 as u64).is_multiple_of((n / FAILED).max(1));
                Outcome {
                    id: c.id,
                    token: c.token,
                    state: if failed {
                        ObjectState::Failed
                    } else {
                        ObjectState::Copied
                    },
                    attempts: 3,
                    size: c.size,
                    version: c.version.clone(),
                    checksum: Some("kbRsBeY8d1k=".into()),
                    dest_etag: Some("\"0f343b0931126a20f133d67c2b018a3b\"".into()),
                    dest_version: None,
                    verified_by: (!failed).then_some("checksum"),
                    error: failed.then(|| ("unreachable".into(), "connection reset".into())),
                    own_write: OwnWriteChange::Keep,
                    metadata: None,
                }
            })
            .collect::<Vec<_>>();
        done += outcomes.len() as u64;
        store.record_outcomes(outcomes).await?;
    }
    Ok(migration.0)
}
