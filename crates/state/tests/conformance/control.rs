//! Migrations and what steers them: names and locations, status, workers' heartbeats,
//! throttling notes.

use super::*;

pub(super) async fn names_keep_their_locations_and_endpoints(store: &dyn Store) {
    store.open_migration(&spec()).await.unwrap();
    let again = store.open_migration(&spec()).await.unwrap();
    assert_eq!(again.spec, spec());
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

/// Pause, resume and cancel are one migration's status, as every opener reads it.
pub(super) async fn a_status_set_is_read_back_and_kept_per_migration(store: &dyn Store) {
    let first = store.open_migration(&spec()).await.unwrap();
    let other = store
        .open_migration(&MigrationSpec {
            name: "other".into(),
            ..spec()
        })
        .await
        .unwrap();
    assert_eq!(first.status, MigrationStatus::Running);
    assert_eq!(
        store.status_of(first.id).await.unwrap(),
        MigrationStatus::Running
    );
    for status in [
        MigrationStatus::Paused,
        MigrationStatus::Cancelled,
        MigrationStatus::Running,
        MigrationStatus::Paused,
    ] {
        store.set_status(first.id, status).await.unwrap();
        assert_eq!(store.status_of(first.id).await.unwrap(), status);
    }
    // Opening it again (as a re-run does) neither resumes it nor touches the other one.
    assert_eq!(
        store.open_migration(&spec()).await.unwrap().status,
        MigrationStatus::Paused
    );
    assert_eq!(
        store.find_migration("m").await.unwrap().unwrap().status,
        MigrationStatus::Paused
    );
    assert_eq!(
        store.status_of(other.id).await.unwrap(),
        MigrationStatus::Running
    );
    let listed: Vec<(String, MigrationStatus)> = store
        .migrations()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.spec.name, m.status))
        .collect();
    assert_eq!(
        listed,
        [
            ("m".to_owned(), MigrationStatus::Paused),
            ("other".to_owned(), MigrationStatus::Running)
        ]
    );
}

fn beat(name: &str, migration: Option<&str>, objects: u64) -> WorkerBeat {
    WorkerBeat {
        name: name.into(),
        host: "h1".into(),
        pid: 42,
        started_at: 1_700_000_000,
        migration: migration.map(str::to_owned),
        packets_in_flight: objects.div_ceil(10),
        objects_in_flight: objects,
        bytes_per_second: objects * 1000,
    }
}

/// Each worker has one row, holding what it said last.
pub(super) async fn worker_rows_keep_each_workers_latest_beat(store: &dyn Store) {
    assert!(store.workers().await.unwrap().is_empty());
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    store.beat(&beat("a", Some("m"), 12)).await.unwrap();
    store.beat(&beat("b", None, 0)).await.unwrap();
    store.beat(&beat("a", None, 0)).await.unwrap();
    store.beat(&beat("b", Some("m"), 30)).await.unwrap();
    let mut workers = store.workers().await.unwrap();
    workers.sort_by(|x, y| x.beat.name.cmp(&y.beat.name));
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].beat, beat("a", None, 0));
    assert_eq!(workers[1].beat, beat("b", Some("m"), 30));
    for worker in &workers {
        assert!(worker.heartbeat_at >= before, "{worker:?}");
        assert!(worker.heartbeat_at <= before + 60, "{worker:?}");
    }
}

/// Workers tell each other of throttling through the migration's row: the latest note wins.
pub(super) async fn the_latest_throttling_note_is_kept_per_migration(store: &dyn Store) {
    let first = store.open_migration(&spec()).await.unwrap();
    let other = store
        .open_migration(&MigrationSpec {
            name: "other".into(),
            ..spec()
        })
        .await
        .unwrap();
    assert_eq!(store.control_of(first.id).await.unwrap().throttled_at, None);
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    store.note_throttled(first.id, at).await.unwrap();
    store
        .note_throttled(first.id, at - Duration::from_secs(5))
        .await
        .unwrap();
    let state = store.control_of(first.id).await.unwrap();
    assert_eq!(state.throttled_at, Some(at));
    assert_eq!(state.status, MigrationStatus::Running);
    store
        .note_throttled(first.id, at + Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(
        store.control_of(first.id).await.unwrap().throttled_at,
        Some(at + Duration::from_millis(1))
    );
    assert_eq!(store.control_of(other.id).await.unwrap().throttled_at, None);
}
