//! The PostgreSQL ledger's counters where PostgreSQL itself matters: a fleet of workers
//! changing objects at once (each statement's changes added as rows of their own, folded now
//! and then while others write), and a ledger of an older schema given its counters.

use std::time::Duration;

use godwit_state::{
    ClaimedObject, MigrationId, MigrationSpec, ObjectState, Outcome, OwnWriteChange, PacketLimits,
    PgStore, Scanned, ScannedObject, Store, tally_of,
};

/// The database `scripts/test.sh` names; `None` (or, under CI, a failure) without it.
fn database() -> Option<String> {
    match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!("note: GODWIT_TEST_POSTGRES unset; skipping the PostgreSQL tests");
            None
        }
    }
}

/// A fresh schema named `schema`: an admin connection working in it, and the URL of a ledger
/// in it.
async fn schema(url: &str, schema: &str) -> (tokio_postgres::Client, String) {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}"
        ))
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-csearch_path%3D{schema}");
    (admin, scoped)
}

/// A migration of `n_objects` pending objects in four partitions (one the default).
async fn migration_of(store: &PgStore, n_objects: usize) -> MigrationId {
    let migration = store
        .open_migration(&MigrationSpec {
            name: "fleet".into(),
            source_url: "./a".into(),
            dest_url: "s3://b/".into(),
            source_endpoint: None,
            dest_endpoint: None,
        })
        .await
        .unwrap()
        .id;
    let pass = store.start_pass(migration, "").await.unwrap().number;
    let objects: Vec<ScannedObject> = (0..n_objects)
        .map(|i| ScannedObject {
            key: format!("p{}/k{i:06}", i % 4),
            size: 100 + i as u64 % 7,
            version: "v1".into(),
            scanned: Scanned::Wanted,
            group: None,
            partition: (i % 4 != 0).then(|| format!("p{}", i % 4)),
        })
        .collect();
    for page in objects.chunks(1000) {
        store
            .record_scanned(migration, pass, page.to_vec(), None)
            .await
            .unwrap();
    }
    store.finish_scan(migration, pass).await.unwrap();
    migration
}

/// Asserts the counters hold what counting the objects again finds, and `tally` reads them.
async fn assert_counted(store: &PgStore, migration: MigrationId) {
    let recounted = store.recount(migration).await.unwrap();
    assert_eq!(store.counted(migration).await.unwrap(), recounted);
    assert_eq!(store.tally(migration).await.unwrap(), tally_of(&recounted));
}

/// A number from `seed`, the same each run (splitmix64).
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How an attempt at `claimed` ends in round `round`: every state, some with a new size.
fn outcome(claimed: &ClaimedObject, round: u64) -> Outcome {
    let roll = mix(claimed.id.0 as u64 * 1000 + round) % 100;
    let (state, error) = match roll {
        0..50 => (ObjectState::Copied, None),
        50..60 => (ObjectState::Failed, Some(("access_denied", "denied"))),
        60..65 => (ObjectState::Failed, Some(("unreachable", "gone"))),
        65..80 => (ObjectState::Pending, Some(("unreachable", "retry"))),
        80..85 => (ObjectState::Conflict, None),
        85..90 => (ObjectState::AlreadyPresent, None),
        90..95 => (ObjectState::SourceVanished, None),
        _ => (ObjectState::Excluded, None),
    };
    Outcome {
        id: claimed.id,
        token: claimed.token,
        state,
        attempts: claimed.attempts,
        size: claimed.size + u64::from(roll.is_multiple_of(3)),
        version: claimed.version.clone(),
        checksum: None,
        dest_etag: None,
        dest_version: None,
        verified_by: None,
        error: error.map(|(kind, message)| (kind.to_owned(), message.to_owned())),
        own_write: OwnWriteChange::Keep,
        metadata: None,
    }
}

/// One worker's rounds: a packet claimed, its outcomes recorded (every state, some sizes
/// changed, some retried); every 13th round its claims handed back first (their outcomes are
/// fenced off). Worker 0 also puts done objects back in the queue and retries failures now and
/// then, as `godwit retry-failed` or a recheck would while the fleet works. The first error ends
/// it.
///
/// Bulk recoveries of expired claims are left out: two of them at once, or one with the outcome
/// of a claim it takes back, can deadlock on the objects' rows themselves, counters or not (a
/// known limit, out of this test's reach).
async fn work(store: PgStore, migration: MigrationId, worker: usize) -> Result<(), String> {
    let name = format!("w{worker}");
    let limits = PacketLimits {
        max_objects: 24,
        max_bytes: u64::MAX,
        lease: Duration::from_secs(600),
        whole_groups: false,
        partitions: None,
    };
    for round in 0..120u64 {
        let claimed = store.claim(migration, &name, limits.clone()).await;
        let claimed = claimed.map_err(|e| format!("{name} claim: {e}"))?;
        match (worker, round % 13) {
            (_, 5) => {
                store
                    .release_claims(&name)
                    .await
                    .map_err(|e| format!("{name} release: {e}"))?;
            }
            (0, 7) => {
                let done = store.done_objects(migration, None, 40).await;
                let done = done.map_err(|e| format!("{name} done objects: {e}"))?;
                let some: Vec<_> = done.iter().step_by(3).map(|d| d.id).collect();
                store
                    .requeue(&some)
                    .await
                    .map_err(|e| format!("{name} requeue: {e}"))?;
            }
            (0, 11) => {
                store
                    .requeue_failed(migration, Some("access_denied"))
                    .await
                    .map_err(|e| format!("{name} retry failed: {e}"))?;
            }
            _ => {}
        }
        let outcomes = claimed.iter().map(|c| outcome(c, round)).collect();
        store
            .record_outcomes(outcomes)
            .await
            .map_err(|e| format!("{name} outcomes: {e}"))?;
    }
    Ok(())
}

/// Six workers (each its own pool, as on six machines) change the same migration's objects at
/// once while a reader reads the counters and folds them: nothing fails (no deadlock, no lock
/// wait cut short), and the counters end as the objects are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_at_work_keeps_the_counters_exact_and_never_deadlocks() {
    let Some(url) = database() else { return };
    let name = format!("counters_fleet_{}", std::process::id());
    let (admin, scoped) = schema(&url, &name).await;
    let store = PgStore::connect(&scoped).await.unwrap();
    let migration = migration_of(&store, 4000).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let store = PgStore::connect(&scoped).await.unwrap();
        tasks.spawn(work(store, migration, worker));
    }
    let reader = PgStore::connect(&scoped).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n_reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                reader.tally(migration).await.map_err(|e| e.to_string())?;
                reader
                    .partitions(migration)
                    .await
                    .map_err(|e| e.to_string())?;
                reader.fold_counters().await.map_err(|e| e.to_string())?;
                n_reads += 1;
            }
            Ok::<_, String>(n_reads)
        })
    };
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reading.await.unwrap().unwrap() > 0);
    assert_counted(&store, migration).await;
    store.fold_counters().await.unwrap();
    assert_counted(&store, migration).await;
    let tally = store.tally(migration).await.unwrap();
    assert_eq!(tally.n_total(), 4000);
    assert!(tally.n(ObjectState::Copied) > 0, "{tally:?}");
    assert!(tally.n(ObjectState::Failed) > 0, "{tally:?}");
    admin
        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
        .await
        .unwrap();
}

/// A ledger from before the counters (schema 9) is given them as it is opened, counted from its
/// objects; the counters follow from there.
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_of_schema_9_gets_its_counters_filled() {
    let Some(url) = database() else { return };
    let name = format!("counters_upgrade_{}", std::process::id());
    let (admin, scoped) = schema(&url, &name).await;
    let store = PgStore::connect(&scoped).await.unwrap();
    let migration = migration_of(&store, 300).await;
    let claimed = store
        .claim(
            migration,
            "w",
            PacketLimits {
                max_objects: 50,
                max_bytes: u64::MAX,
                lease: Duration::from_secs(60),
                whole_groups: false,
                partitions: None,
            },
        )
        .await
        .unwrap();
    store
        .record_outcomes(claimed.iter().map(|c| outcome(c, 1)).collect())
        .await
        .unwrap();
    let before = store.recount(migration).await.unwrap();
    drop(store);
    // What schema 9 had: no counters, their triggers or functions.
    admin
        .batch_execute(
            "DROP TRIGGER objects_counted_in ON objects;
             DROP TRIGGER objects_counted_again ON objects;
             DROP TRIGGER objects_counted_out ON objects;
             DROP TRIGGER objects_emptied ON objects;
             DROP FUNCTION godwit_count_objects(), godwit_forget_counts(), godwit_fold_counters();
             DROP TABLE tallies, change_times;
             UPDATE objects SET state = 2 WHERE state = 0 AND id % 2 = 0;
             UPDATE godwit_schema SET version = 9;",
        )
        .await
        .unwrap();
    let store = PgStore::connect(&scoped).await.unwrap();
    let recounted = store.recount(migration).await.unwrap();
    assert_ne!(recounted, before, "changed while it had no counters");
    assert_counted(&store, migration).await;
    let claimed = store
        .claim(
            migration,
            "w",
            PacketLimits {
                max_objects: 50,
                max_bytes: u64::MAX,
                lease: Duration::from_secs(60),
                whole_groups: false,
                partitions: None,
            },
        )
        .await
        .unwrap();
    assert!(!claimed.is_empty());
    assert_counted(&store, migration).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
        .await
        .unwrap();
}
