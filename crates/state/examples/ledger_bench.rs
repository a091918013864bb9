//! Measures the ledger alone, with no storage behind it: how many objects a second a `Store`
//! takes through the calls on a migration's hot path, with several clients at once.
//!
//! For each client count, on a fresh ledger (PostgreSQL: a schema of its own, made and dropped
//! here; SQLite: a file `<--state>.c<clients>`, deleted after), two timed phases:
//!
//! 1. scan: one migration, one pass cut into a shard a client; each client claims its shard and
//!    records its share of the objects in pages of 1000, in key order, each page with the
//!    shard's mark, as the engine's scan does.
//! 2. claims and outcomes: each client claims packets of up to 64 objects (a worker with 32 in
//!    flight) and records each packet `copied` in one `record_outcomes`, until the queue is empty.
//!
//! A call's rate is its objects (or calls) over the clients' time in it, divided by the clients;
//! `end_to_end_objects_per_s` is phase 2's objects over its wall clock. Each PostgreSQL client
//! has a store (a pool) of its own, as separate workers would; a SQLite ledger serves one
//! process, so its clients share one store, as a run's tasks do. Prints one JSON line per client
//! count; fails (exit 1) unless every object ends `copied`.
//!
//! ```text
//! cargo build --release -p godwit-state --example ledger_bench
//! target/release/examples/ledger_bench --state postgres://root@127.0.0.1:5432/test \
//!     [--objects 200000] [--clients 1,4,8]
//! target/release/examples/ledger_bench --state /tmp/ledger-bench.db
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_state::{
    ClaimedObject, MigrationId, MigrationSpec, ObjectState, Outcome, OwnWriteChange, PacketLimits,
    PgStore, Scanned, ScannedObject, ShardMark, SqliteStore, Store,
};

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str =
    "usage: ledger_bench --state <SQLITE FILE | postgres://...> [--objects N] [--clients 1,4,8]";
const PAGE: u64 = 1000;
const PACKET: PacketLimits = PacketLimits {
    max_objects: 64,
    max_bytes: 200 << 20,
    lease: Duration::from_secs(600),
    whole_groups: false,
    partitions: None,
};

/// Time one client spent in calls of one kind, and what they moved.
#[derive(Default)]
struct Calls {
    n_calls: u64,
    n_objects: u64,
    busy: Duration,
}

impl Calls {
    /// Counts a call that started at `started` and moved `n_objects` (none: an empty claim).
    fn count<T>(&mut self, started: Instant, n_objects: usize, result: T) -> T {
        self.busy += started.elapsed();
        self.n_calls += u64::from(n_objects > 0);
        self.n_objects += n_objects as u64;
        result
    }

    /// Objects a second, calls a second, and milliseconds a call, of all clients together.
    fn rates(all: &[Calls]) -> (f64, f64, f64) {
        let busy: f64 = all.iter().map(|c| c.busy.as_secs_f64()).sum();
        let n_calls = all.iter().map(|c| c.n_calls).sum::<u64>() as f64;
        let n_objects = all.iter().map(|c| c.n_objects).sum::<u64>() as f64;
        let seconds = busy / all.len() as f64;
        (n_objects / seconds, n_calls / seconds, 1e3 * busy / n_calls)
    }
}

/// One client's share of the scan, in pages, in key order as a listing gives them.
fn pages(shard: &str, n_objects: u64) -> impl Iterator<Item = Vec<ScannedObject>> + '_ {
    (0..n_objects).step_by(PAGE as usize).map(move |start| {
        (start..(start + PAGE).min(n_objects))
            .map(|i| ScannedObject {
                key: format!("{shard}d{:03}/e{}/f{i:07}.bin", i / 10_000, i / 1000 % 10),
                size: 4096,
                version: format!("17{i:017}"),
                scanned: Scanned::Wanted,
                group: None,
                partition: None,
            })
            .collect()
    })
}

/// The outcome of a verified copy of the object.
fn copied(claimed: &ClaimedObject) -> Outcome {
    Outcome {
        id: claimed.id,
        token: claimed.token,
        state: ObjectState::Copied,
        attempts: claimed.attempts,
        size: claimed.size,
        version: claimed.version.clone(),
        checksum: Some("kbRsBeY8d1k=".into()),
        dest_etag: Some("\"0f343b0931126a20f133d67c2b018a3b\"".into()),
        dest_version: None,
        verified_by: Some("checksum"),
        error: None,
        own_write: OwnWriteChange::Keep,
        metadata: None,
    }
}

/// Phase 1: the clients list a shard each. Returns the migration and the phase's seconds.
async fn scan(stores: &[Arc<dyn Store>], n_objects: u64) -> Result<(MigrationId, f64), BoxError> {
    let n_clients = stores.len() as u64;
    let spec = MigrationSpec {
        name: "bench".into(),
        source_url: "./data-small".into(),
        dest_url: "s3://bench/".into(),
        source_endpoint: None,
        dest_endpoint: Some("http://127.0.0.1:9000".into()),
    };
    let migration = stores[0].open_migration(&spec).await?.id;
    let pass = stores[0].start_pass(migration, "").await?.number;
    let shards = (0..n_clients).map(|c| format!("s{c:03}/")).collect();
    stores[0].plan_shards(migration, pass, shards).await?;
    let started = Instant::now();
    let mut listers = tokio::task::JoinSet::new();
    for (c, store) in (0..).zip(stores.iter().cloned()) {
        let share = n_objects / n_clients + u64::from(c < n_objects % n_clients);
        listers.spawn(async move {
            let worker = format!("bench-{c}");
            let claimed = store.claim_shard(migration, pass, &worker, PACKET.lease);
            let shard = claimed.await?.ok_or("no shard left to claim")?;
            for page in pages(&shard.name, share) {
                let after = page.last().map(|o| o.key.clone()).unwrap_or_default();
                let (name, token) = (shard.name.clone(), shard.token);
                let mark = Some(ShardMark { name, token, after });
                store.record_scanned(migration, pass, page, mark).await?;
            }
            store.finish_shard(migration, pass, &shard).await?;
            Ok::<_, BoxError>(())
        });
    }
    while let Some(joined) = listers.join_next().await {
        joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    stores[0].finish_scan(migration, pass).await?;
    let pending = stores[0].tally(migration).await?.n(ObjectState::Pending);
    if pending != n_objects {
        return Err(format!("the scan left {pending} objects pending, not {n_objects}").into());
    }
    Ok((migration, seconds))
}

/// Phase 2: the clients claim packets and record their outcomes until the queue is empty.
/// Returns each client's claims and outcome commits, and the phase's seconds.
async fn work(
    stores: &[Arc<dyn Store>],
    migration: MigrationId,
) -> Result<(Vec<Calls>, Vec<Calls>, f64), BoxError> {
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (c, store) in stores.iter().cloned().enumerate() {
        workers.spawn(async move {
            let worker = format!("bench-{c}");
            let (mut claims, mut commits) = (Calls::default(), Calls::default());
            loop {
                let at = Instant::now();
                let packet = store.claim(migration, &worker, PACKET).await?;
                let packet = claims.count(at, packet.len(), packet);
                if packet.is_empty() {
                    return Ok::<_, BoxError>((claims, commits));
                }
                let outcomes = packet.iter().map(copied).collect();
                let at = Instant::now();
                let fenced = store.record_outcomes(outcomes).await?;
                if commits.count(at, packet.len(), fenced) != 0 {
                    return Err(format!("{fenced} outcomes of {worker} were fenced off").into());
                }
            }
        });
    }
    let (mut claims, mut commits) = (Vec::new(), Vec::new());
    while let Some(joined) = workers.join_next().await {
        let (client_claims, client_commits) = joined??;
        claims.push(client_claims);
        commits.push(client_commits);
    }
    Ok((claims, commits, started.elapsed().as_secs_f64()))
}

/// Measures one client count; returns its figures (JSON fields).
async fn measure(stores: &[Arc<dyn Store>], n_objects: u64) -> Result<String, BoxError> {
    let (migration, scan_seconds) = scan(stores, n_objects).await?;
    let (claims, commits, wall) = work(stores, migration).await?;
    let tally = stores[0].tally(migration).await?;
    let copied = tally.n(ObjectState::Copied);
    if copied != n_objects || tally.n_total() != n_objects {
        let counts = tally.objects;
        return Err(format!("{copied} objects ended copied, not {n_objects}: {counts:?}").into());
    }
    let (claim_objects, claim_packets, claim_ms) = Calls::rates(&claims);
    let (outcome_objects, outcome_commits, outcome_ms) = Calls::rates(&commits);
    Ok(format!(
        "\"clients\":{},\"objects\":{n_objects},\"scan_objects_per_s\":{:.0},\
         \"claim_objects_per_s\":{claim_objects:.0},\"claim_packets_per_s\":{claim_packets:.0},\
         \"outcome_objects_per_s\":{outcome_objects:.0},\
         \"outcome_commits_per_s\":{outcome_commits:.0},\"end_to_end_objects_per_s\":{:.0},\
         \"claim_ms\":{claim_ms:.3},\"outcome_ms\":{outcome_ms:.3}",
        stores.len(),
        n_objects as f64 / scan_seconds,
        copied as f64 / wall,
    ))
}

/// Measures one client count on a fresh ledger, removed after whatever happened; returns its
/// JSON line.
async fn run_once(state: &str, n_objects: u64, n_clients: usize) -> Result<String, BoxError> {
    if !state.starts_with("postgres://") && !state.starts_with("postgresql://") {
        let path = format!("{state}.c{n_clients}");
        let remove = || {
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        };
        remove();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path.as_ref())?);
        let measured = measure(&vec![store; n_clients], n_objects).await;
        remove();
        return Ok(format!("{{\"store\":\"sqlite\",{}}}", measured?));
    }
    let schema = format!("ledger_bench_{}_{n_clients}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(state, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let create = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    admin.batch_execute(&create).await?;
    let separator = if state.contains('?') { '&' } else { '?' };
    let scoped = format!("{state}{separator}options=-csearch_path%3D{schema}");
    let mut stores: Vec<Arc<dyn Store>> = Vec::with_capacity(n_clients);
    for _ in 0..n_clients {
        stores.push(Arc::new(PgStore::connect(&scoped).await?));
    }
    let measured = measure(&stores, n_objects).await;
    drop(stores);
    let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
    admin.batch_execute(&drop_schema).await?;
    Ok(format!("{{\"store\":\"postgres\",{}}}", measured?))
}

async fn run() -> Result<(), BoxError> {
    let (mut state, mut n_objects, mut clients) = (String::new(), 200_000, vec![1, 4, 8]);
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--state" => state = value,
            "--objects" => n_objects = value.parse()?,
            "--clients" => clients = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown argument {flag}; {USAGE}").into()),
        }
    }
    if state.is_empty() || clients.contains(&0) || n_objects == 0 {
        return Err(USAGE.into());
    }
    for n_clients in clients {
        println!("{}", run_once(&state, n_objects, n_clients).await?);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Err(error) = run().await else {
        return ExitCode::SUCCESS;
    };
    eprintln!("ledger_bench: {error}");
    ExitCode::FAILURE
}
