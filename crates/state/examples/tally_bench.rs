//! Measures what the dashboard's counts cost on a big migration: `tally` and `partitions` on a
//! ledger of `--objects` objects (a million by default) in `--partitions` partitions, a fifth of
//! them copied, the rest pending. Each read runs `--runs` times; prints the fastest and the
//! median in milliseconds, one JSON line.
//!
//! On a fresh ledger (PostgreSQL: a schema of its own, made and dropped here; SQLite: the file
//! given, deleted before and after). Uses the `Store` API only, so it measures any version.
//!
//! ```text
//! cargo build --release -p godwit-state --example tally_bench
//! target/release/examples/tally_bench --state postgres://root@127.0.0.1:5432/test \
//!     [--objects 1000000] [--partitions 100] [--runs 20]
//! target/release/examples/tally_bench --state /tmp/tally-bench.db
//! ```

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use godwit_state::{
    MigrationId, MigrationSpec, ObjectState, Outcome, OwnWriteChange, PacketLimits, PgStore,
    Scanned, ScannedObject, SqliteStore, Store,
};

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "usage: tally_bench --state <SQLITE FILE | postgres://...> [--objects N] \
                     [--partitions N] [--runs N]";

/// Records the objects and copies a fifth of them; returns the migration.
async fn fill(
    store: &dyn Store,
    n_objects: u64,
    n_partitions: u64,
) -> Result<MigrationId, BoxError> {
    let spec = MigrationSpec {
        name: "tally-bench".into(),
        source_url: "./data".into(),
        dest_url: "s3://bench/".into(),
        source_endpoint: None,
        dest_endpoint: None,
    };
    let migration = store.open_migration(&spec).await?.id;
    let pass = store.start_pass(migration, "").await?.number;
    for start in (0..n_objects).step_by(1000) {
        let page = (start..(start + 1000).min(n_objects))
            .map(|i| ScannedObject {
                key: format!("d{:04}/f{i:08}.bin", i * n_partitions / n_objects),
                size: 4096 + i % 100,
                version: "1".into(),
                scanned: Scanned::Wanted,
                group: None,
                partition: Some(format!("d{:04}", i * n_partitions / n_objects)),
            })
            .collect();
        store.record_scanned(migration, pass, page, None).await?;
    }
    store.finish_scan(migration, pass).await?;
    let limits = PacketLimits {
        max_objects: 512,
        max_bytes: u64::MAX,
        lease: Duration::from_secs(600),
        whole_groups: false,
        partitions: None,
    };
    let mut n_copied = 0;
    while n_copied < n_objects / 5 {
        let packet = store.claim(migration, "bench", limits.clone()).await?;
        n_copied += packet.len() as u64;
        let outcomes = packet
            .iter()
            .map(|claimed| Outcome {
                id: claimed.id,
                token: claimed.token,
                state: ObjectState::Copied,
                attempts: claimed.attempts,
                size: claimed.size,
                version: claimed.version.clone(),
                checksum: None,
                dest_etag: None,
                dest_version: None,
                verified_by: Some("checksum"),
                error: None,
                own_write: OwnWriteChange::Keep,
                metadata: None,
            })
            .collect();
        store.record_outcomes(outcomes).await?;
    }
    Ok(migration)
}

/// The fastest and the median of `runs` runs of `read`, in milliseconds.
async fn timed<F, T>(runs: usize, mut read: impl FnMut() -> F) -> Result<(f64, f64), BoxError>
where
    F: Future<Output = Result<T, godwit_state::StoreError>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        read().await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[runs / 2]))
}

/// Fills the ledger and times its reads; returns the JSON fields.
async fn measure(
    store: &dyn Store,
    n_objects: u64,
    n_partitions: u64,
    runs: usize,
) -> Result<String, BoxError> {
    let started = Instant::now();
    let migration = fill(store, n_objects, n_partitions).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let tally = store.tally(migration).await?;
    if tally.n_total() != n_objects {
        return Err(format!("{} objects counted, not {n_objects}", tally.n_total()).into());
    }
    let (tally_min, tally_median) = timed(runs, || store.tally(migration)).await?;
    let (partitions_min, partitions_median) = timed(runs, || store.partitions(migration)).await?;
    Ok(format!(
        "\"objects\":{n_objects},\"partitions\":{n_partitions},\"fill_s\":{fill_seconds:.1},\
         \"tally_ms_min\":{tally_min:.3},\"tally_ms_median\":{tally_median:.3},\
         \"partitions_ms_min\":{partitions_min:.3},\"partitions_ms_median\":{partitions_median:.3}"
    ))
}

async fn run() -> Result<(), BoxError> {
    let (mut state, mut n_objects, mut n_partitions, mut runs) =
        (String::new(), 1_000_000, 100, 20);
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--state" => state = value,
            "--objects" => n_objects = value.parse()?,
            "--partitions" => n_partitions = value.parse()?,
            "--runs" => runs = value.parse()?,
            _ => return Err(format!("unknown argument {flag}; {USAGE}").into()),
        }
    }
    if state.is_empty() || n_objects == 0 || n_partitions == 0 || runs == 0 {
        return Err(USAGE.into());
    }
    if !state.starts_with("postgres://") && !state.starts_with("postgresql://") {
        let remove = || {
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let _ = std::fs::remove_file(format!("{state}{suffix}"));
            }
        };
        remove();
        let store = SqliteStore::open(state.as_ref())?;
        let measured = measure(&store, n_objects, n_partitions, runs).await;
        drop(store);
        remove();
        println!("{{\"store\":\"sqlite\",{}}}", measured?);
        return Ok(());
    }
    let schema = format!("tally_bench_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(&state, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let create = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    admin.batch_execute(&create).await?;
    let separator = if state.contains('?') { '&' } else { '?' };
    let store = PgStore::connect(&format!(
        "{state}{separator}options=-csearch_path%3D{schema}"
    ))
    .await?;
    let measured = measure(&store, n_objects, n_partitions, runs).await;
    drop(store);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    println!("{{\"store\":\"postgres\",{}}}", measured?);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Err(error) = run().await else {
        return ExitCode::SUCCESS;
    };
    eprintln!("tally_bench: {error}");
    ExitCode::FAILURE
}
