use std::time::Duration;

use rusqlite::Connection;

use super::SqliteStore;
use crate::{
    ClaimedObject, MigrationSpec, MigrationStatus, ObjectState, Outcome, OwnWriteChange,
    PacketLimits, PartRecord, Pass, Scanned, ScannedObject, SourceVersion, Store, StoreError,
};

fn spec() -> MigrationSpec {
    MigrationSpec {
        name: "m".into(),
        source_url: "./a".into(),
        dest_url: "s3://b/".into(),
        source_endpoint: None,
        dest_endpoint: Some("http://127.0.0.1:9000".into()),
    }
}

fn object(key: &str, size: u64, version: &str) -> ScannedObject {
    ScannedObject {
        key: key.into(),
        size,
        version: version.into(),
        scanned: Scanned::Wanted,
        group: None,
        partition: None,
    }
}

const LIMITS: PacketLimits = PacketLimits {
    max_objects: 100,
    max_bytes: 1000,
    lease: Duration::from_secs(60),
    whole_groups: false,
    partitions: None,
};

fn done(claimed: &ClaimedObject, state: ObjectState) -> Outcome {
    Outcome {
        id: claimed.id,
        token: claimed.token,
        state,
        attempts: claimed.attempts,
        size: claimed.size,
        version: claimed.version.clone(),
        checksum: Some("c".into()),
        dest_etag: None,
        dest_version: None,
        verified_by: Some("checksum"),
        error: None,
        own_write: OwnWriteChange::Keep,
        metadata: None,
    }
}

#[tokio::test]
async fn a_second_process_is_refused_and_the_name_keeps_its_locations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Busy { .. })
    ));
    store.open_migration(&spec()).await.unwrap();
    let listed = store.migrations().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|m| m.spec.name.as_str())
            .collect::<Vec<_>>(),
        ["m"]
    );
    let other = MigrationSpec {
        dest_url: "s3://other/".into(),
        ..spec()
    };
    assert!(matches!(
        store.open_migration(&other).await,
        Err(StoreError::NameTaken { .. })
    ));
    // The same bucket name on another endpoint is another place.
    let elsewhere = MigrationSpec {
        dest_endpoint: Some("http://127.0.0.1:9001".into()),
        ..spec()
    };
    let refused = store.open_migration(&elsewhere).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("s3://b/ at http://127.0.0.1:9000"),
        "{refused}"
    );
    assert!(store.find_migration("m").await.unwrap().is_some());
    assert!(store.find_migration("n").await.unwrap().is_none());
}

#[tokio::test]
async fn a_reader_needs_no_lock_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let writer = SqliteStore::open(&path).unwrap();
    let migration = writer.open_migration(&spec()).await.unwrap();
    writer.start_pass(migration.id, "").await.unwrap();
    writer
        .record_scanned(migration.id, 1, vec![object("a", 1, "1")], None)
        .await
        .unwrap();

    let reader = SqliteStore::open_read_only(&path).unwrap();
    let tally = reader.tally(migration.id).await.unwrap();
    assert_eq!(tally.n(ObjectState::Pending), 1);
    assert!(reader.requeue_failed(migration.id, None).await.is_err());
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Busy { .. })
    ));
}

/// `godwit pause` on a ledger a migration works on: no lock needed, and the worker sees it.
#[tokio::test]
async fn a_controller_needs_no_lock_and_its_status_reaches_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let writer = SqliteStore::open(&path).unwrap();
    let migration = writer.open_migration(&spec()).await.unwrap();

    let controller = SqliteStore::open_to_control(&path).unwrap();
    controller
        .set_status(migration.id, MigrationStatus::Paused)
        .await
        .unwrap();
    assert_eq!(
        writer.status_of(migration.id).await.unwrap(),
        MigrationStatus::Paused
    );
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert!(
        reader
            .set_status(migration.id, MigrationStatus::Running)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn parts_survive_a_reopen_and_failures_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("big", 30, "1"), object("bad", 1, "1")],
                None,
            )
            .await
            .unwrap();
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let source = SourceVersion {
            size: 30,
            version: "1".into(),
        };
        store
            .record_upload(claimed[0].claim(), "up-1", 10, &source)
            .await
            .unwrap();
        let part = PartRecord {
            part_number: 1,
            etag: "\"e\"".into(),
            checksum: "x".into(),
            size: 10,
            md5: None,
        };
        store.record_part(claimed[0].claim(), part).await.unwrap();
        let failed = Outcome {
            error: Some(("io".into(), "broken".into())),
            ..done(&claimed[1], ObjectState::Failed)
        };
        store.record_outcomes(vec![failed]).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let migration = store.open_migration(&spec()).await.unwrap();
    assert_eq!(
        migration.last_pass,
        Some(Pass {
            number: 1,
            scan_complete: false,
            filter: Some(String::new()),
        })
    );
    let problems = store.problems(migration.id, 10).await.unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].message.as_deref(), Some("broken"));
    assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 1);
    assert_eq!(store.requeue_failed(migration.id, None).await.unwrap(), 1);
    let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
    let big = claimed.iter().find(|c| c.key == "big").unwrap();
    let upload = big.upload.as_ref().unwrap();
    assert_eq!(upload.upload_id, "up-1");
    assert_eq!(upload.parts.len(), 1);
    assert_eq!(
        upload.source.as_ref().map(|s| s.version.as_str()),
        Some("1")
    );
    assert_eq!(big.attempts, 2);
    assert!(big.earlier_claim_at.is_some(), "claimed before the reopen");
}

#[tokio::test]
async fn a_ledger_of_schema_1_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        // The tables as godwit 0.1 (schema 1) made them.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                   source_url TEXT NOT NULL, dest_url TEXT NOT NULL, created_at INTEGER NOT NULL);
                 CREATE TABLE passes (migration_id INTEGER NOT NULL, number INTEGER NOT NULL,
                   started_at INTEGER NOT NULL, scan_completed_at INTEGER,
                   PRIMARY KEY (migration_id, number));
                 CREATE TABLE objects (id INTEGER PRIMARY KEY, migration_id INTEGER NOT NULL,
                   key TEXT NOT NULL, size INTEGER NOT NULL, version TEXT NOT NULL,
                   state INTEGER NOT NULL, pass INTEGER NOT NULL, group_key TEXT, partition_key TEXT,
                   attempts INTEGER NOT NULL DEFAULT 0, checksum TEXT, dest_etag TEXT,
                   dest_version TEXT, verified_by TEXT, error_kind TEXT, last_error TEXT,
                   lease_owner TEXT, lease_expires INTEGER, upload_id TEXT, part_size INTEGER,
                   updated_at INTEGER NOT NULL, UNIQUE (migration_id, key));
                 INSERT INTO migrations VALUES (1, 'm', './a', 's3://b/', 0);
                 INSERT INTO passes VALUES (1, 1, 0, 0);
                 INSERT INTO objects (migration_id, key, size, version, state, pass, upload_id,
                   part_size, updated_at) VALUES (1, 'k', 10, 'v', 0, 1, 'old-upload', 5, 0);
                 PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let reader = SqliteStore::open_read_only(&path).unwrap();
    let migration = reader.find_migration("m").await.unwrap().unwrap();
    assert_eq!(migration.last_pass.as_ref().unwrap().filter, None);
    let tally = reader.tally(migration.id).await.unwrap();
    assert_eq!(
        (tally.n(ObjectState::Pending), tally.bytes_total()),
        (1, 10),
        "its counters filled from its objects"
    );
    assert_eq!(migration.spec.dest_endpoint, None, "not recorded then");
    drop(reader);
    let store = SqliteStore::open(&path).unwrap();
    let learned = store.open_migration(&spec()).await.unwrap();
    assert_eq!(
        learned.spec,
        spec(),
        "the endpoints are learned on first use"
    );
    let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
    let upload = claimed[0].upload.as_ref().unwrap();
    assert_eq!(upload.upload_id, "old-upload");
    assert_eq!(upload.source, None, "an upload of unknown version");
}

/// The fail queue's page reads the partial index of problems, not every object of the
/// migration (its first page took 2.2 s on a million objects before).
#[test]
fn a_page_of_the_fail_queue_reads_the_problems_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    drop(SqliteStore::open(&path).unwrap());
    let connection = Connection::open(&path).unwrap();
    let plan: Vec<String> = connection
        .prepare(&format!("EXPLAIN QUERY PLAN {}", super::reads::FAILED_PAGE))
        .unwrap()
        .query_map(rusqlite::params![1, None::<String>, 0, 50], |row| {
            row.get(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX objects_problems")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

/// A ledger of schema 3 (no counters) read while an older godwit holds it is counted from its
/// objects; opened by this godwit, it is given its counters, filled from its objects.
#[tokio::test]
async fn a_ledger_without_counters_is_counted_then_given_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let migration = {
        let store = SqliteStore::open(&path).unwrap();
        let migration = store.open_migration(&spec()).await.unwrap().id;
        store.start_pass(migration, "").await.unwrap();
        let placed = |key: &str, partition: Option<&str>| ScannedObject {
            partition: partition.map(str::to_owned),
            ..object(key, 10, "1")
        };
        let batch = vec![
            placed("a", Some("p")),
            placed("b", None),
            placed("c", Some("p")),
        ];
        store
            .record_scanned(migration, 1, batch, None)
            .await
            .unwrap();
        let claimed = store.claim(migration, "w", LIMITS).await.unwrap();
        let outcomes = vec![done(&claimed[0], ObjectState::Copied)];
        store.record_outcomes(outcomes).await.unwrap();
        migration
    };
    // As schema 3 had it, and changed since by an older godwit.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER objects_counted_in; DROP TRIGGER objects_counted_again;
             DROP TRIGGER objects_changed_again; DROP TRIGGER objects_counted_out;
             DROP TABLE tallies; DROP TABLE change_times;
             UPDATE objects SET state = 7 WHERE key = 'b';
             PRAGMA user_version = 3;",
        )
        .unwrap();
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let older_godwit = std::fs::File::options()
        .write(true)
        .open(&lock_path)
        .unwrap();
    older_godwit.try_lock().unwrap();
    let reader = SqliteStore::open_read_only(&path).unwrap();
    let recounted = reader.recount(migration).await.unwrap();
    let tally = reader.tally(migration).await.unwrap();
    assert_eq!(tally, crate::tally_of(&recounted));
    assert_eq!(
        (tally.n(ObjectState::Copied), tally.n(ObjectState::Failed)),
        (1, 1)
    );
    let partitions = reader.partitions(migration).await.unwrap();
    assert_eq!(partitions.len(), 2);
    drop(reader);
    drop(older_godwit);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.counted(migration).await.unwrap(), recounted);
    assert_eq!(store.tally(migration).await.unwrap(), tally);
    store.requeue_failed(migration, None).await.unwrap();
    assert_eq!(
        store.counted(migration).await.unwrap(),
        store.recount(migration).await.unwrap()
    );
}
