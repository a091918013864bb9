//! One suite of `Store` behaviour, run against every ledger: the embedded SQLite one, and
//! PostgreSQL (the database `scripts/test.sh` names in `GODWIT_TEST_POSTGRES`, each test in a
//! schema of its own). Under CI (`CI` set) a missing PostgreSQL fails the suite instead of
//! narrowing it to SQLite.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use godwit_state::{
    Claim, ClaimedObject, MigrationSpec, MigrationStatus, ObjectId, ObjectState, Outcome, OwnWrite,
    OwnWriteChange, PacketLimits, PartRecord, PgStore, Scanned, ScannedObject, ShardClaim,
    ShardMark, SourceVersion, SqliteStore, Store, StoreError, WorkerBeat,
};

/// A ledger to test, and what must live as long as it.
struct Ledger {
    name: &'static str,
    store: Box<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

/// A fresh ledger of each kind.
async fn ledgers() -> Vec<Ledger> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let mut ledgers = vec![Ledger {
        name: "sqlite",
        store: Box::new(sqlite),
        _dir: Some(dir),
    }];
    match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            let schema = format!(
                "conformance_{}_{}",
                std::process::id(),
                SCHEMAS.fetch_add(1, Ordering::Relaxed)
            );
            let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            admin
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .await
                .unwrap();
            let separator = if url.contains('?') { '&' } else { '?' };
            let scoped = format!("{url}{separator}options=-csearch_path%3D{schema}");
            ledgers.push(Ledger {
                name: "postgres",
                store: Box::new(PgStore::connect(&scoped).await.unwrap()),
                _dir: None,
            });
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which makes sure PostgreSQL is up"
            )
        }
        _ => eprintln!("note: GODWIT_TEST_POSTGRES unset; testing the SQLite ledger only"),
    }
    ledgers
}

/// Runs one behaviour against every ledger.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                for ledger in ledgers().await {
                    eprintln!("{}: {}", stringify!($name), ledger.name);
                    behaviour::$name(ledger.store.as_ref()).await;
                }
            }
        )*
    };
}

conformance!(
    names_keep_their_locations_and_endpoints,
    claims_respect_packet_limits_and_rescans_requeue_only_changes,
    uploads_and_parts_are_kept_and_failures_requeue,
    own_writes_survive_a_new_version_and_claims_tell_an_earlier_claim,
    uploads_begun_but_unrecorded_or_no_longer_needed_are_found,
    done_objects_come_in_key_order_and_can_be_requeued,
    expired_leases_return_to_the_pool,
    a_lost_claim_writes_nothing_over_the_new_one,
    renewed_leases_do_not_expire,
    released_claims_return_at_once_uncharged_and_fenced,
    a_status_set_is_read_back_and_kept_per_migration,
    worker_rows_keep_each_workers_latest_beat,
    the_latest_throttling_note_is_kept_per_migration,
    shards_are_planned_once_handed_out_in_byte_order_and_counted_down,
    a_lost_shard_claim_records_nothing,
    shards_resume_where_they_were_listed_to,
    a_rescan_keeps_its_shards_only_under_the_same_filter,
    renewed_shard_leases_count_and_do_not_expire,
    workers_planning_and_claiming_at_once_never_share_a_shard,
    partitions_count_their_objects_by_state,
    groups_are_claimed_whole_once_scanned_and_never_split,
    a_failed_group_says_why_and_is_requeued_whole,
    partitions_are_validated_then_cut_over_and_left_alone,
    claims_take_only_the_partitions_asked_for,
);

mod behaviour {
    use super::*;

    pub(super) fn spec() -> MigrationSpec {
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

    /// Packets whose lease has run out as soon as they are claimed: every ledger hands them back.
    const EXPIRED: PacketLimits = PacketLimits {
        max_objects: 100,
        max_bytes: 1000,
        lease: Duration::ZERO,
        whole_groups: false,
        partitions: None,
    };

    fn ms(at: SystemTime) -> u128 {
        at.duration_since(UNIX_EPOCH).unwrap().as_millis()
    }

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

    pub(super) async fn done_objects_come_in_key_order_and_can_be_requeued(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let keys = ["b", "a/z", "a-b", "\u{e9}", "c"];
        store
            .record_scanned(
                migration.id,
                1,
                keys.iter().map(|k| object(k, 1, "1")).collect(),
                None,
            )
            .await
            .unwrap();
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let outcomes = claimed
            .iter()
            .filter(|c| c.key != "c")
            .map(|c| done(c, ObjectState::Copied))
            .collect();
        store.record_outcomes(outcomes).await.unwrap();
        let first = store.done_objects(migration.id, None, 2).await.unwrap();
        let rest = store
            .done_objects(migration.id, Some(&first[1].key), 10)
            .await
            .unwrap();
        let order: Vec<&str> = first.iter().chain(&rest).map(|d| d.key.as_str()).collect();
        // Byte order of UTF-8, as S3 lists keys.
        assert_eq!(order, ["a-b", "a/z", "b", "\u{e9}"]);
        assert_eq!(store.requeue(&[first[0].id]).await.unwrap(), 1);
        // Only done objects go back: one a worker holds stays its worker's.
        let held = claimed.iter().find(|c| c.key == "c").unwrap();
        assert_eq!(store.requeue(&[held.id]).await.unwrap(), 0);
        let known = store
            .lookup(migration.id, vec!["a-b".into(), "none".into(), "c".into()])
            .await
            .unwrap();
        let states: Vec<(&str, ObjectState)> =
            known.iter().map(|k| (k.key.as_str(), k.state)).collect();
        assert_eq!(
            states,
            [
                ("a-b", ObjectState::Pending),
                ("c", ObjectState::InProgress)
            ]
        );
    }

    pub(super) async fn claims_respect_packet_limits_and_rescans_requeue_only_changes(
        store: &dyn Store,
    ) {
        let migration = store.open_migration(&spec()).await.unwrap();
        let pass = store.start_pass(migration.id, "").await.unwrap();
        assert_eq!(pass.number, 1);
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    object("a", 600, "1"),
                    object("b", 600, "1"),
                    object("c", 10, "1"),
                ],
                None,
            )
            .await
            .unwrap();
        let first = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        assert_eq!(
            first.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(first[0].attempts, 1);
        let second = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        assert_eq!(
            second.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        store
            .record_outcomes(vec![
                done(&first[0], ObjectState::Copied),
                done(&second[0], ObjectState::Copied),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.recover_abandoned(migration.id).await.unwrap(),
            1,
            "c was still claimed"
        );

        // A rescan: a unchanged, b changed, c pending, d new.
        let pass = store.start_pass(migration.id, "").await.unwrap();
        assert_eq!(pass.number, 2);
        store
            .record_scanned(
                migration.id,
                2,
                vec![
                    object("a", 600, "1"),
                    object("b", 600, "2"),
                    object("c", 10, "1"),
                    object("d", 1, "1"),
                ],
                None,
            )
            .await
            .unwrap();
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(tally.n(ObjectState::Copied), 1);
        assert_eq!(tally.n(ObjectState::Pending), 3);
        assert_eq!(tally.n_total(), 4);
        let again = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        assert_eq!(
            again.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["b", "c", "d"]
        );
        assert_eq!(
            again[0].attempts, 1,
            "a changed object starts its attempts afresh"
        );
        assert_eq!(again[1].attempts, 2, "an unchanged object keeps counting");
    }

    pub(super) async fn own_writes_survive_a_new_version_and_claims_tell_an_earlier_claim(
        store: &dyn Store,
    ) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 1, vec![object("a", 1, "1")], None)
            .await
            .unwrap();
        let first = store.claim(migration.id, "w", LIMITS).await.unwrap();
        assert_eq!(first[0].earlier_claim_at, None, "a first claim");
        assert_eq!(first[0].own_write, None);
        let ours = OwnWrite {
            etag: Some("\"e1\"".into()),
            version_id: None,
        };
        store
            .record_outcomes(vec![Outcome {
                own_write: OwnWriteChange::Set(ours.clone()),
                ..done(&first[0], ObjectState::Copied)
            }])
            .await
            .unwrap();

        // A new version: queued again, a first claim again, our copy of the old one still known.
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 2, vec![object("a", 1, "2")], None)
            .await
            .unwrap();
        let second = store.claim(migration.id, "w", LIMITS).await.unwrap();
        assert_eq!(second[0].earlier_claim_at, None);
        assert_eq!(second[0].own_write.as_ref(), Some(&ours));
        // Released unstarted, then claimed again: this claim has an earlier one.
        let mut back = done(&second[0], ObjectState::Pending);
        back.own_write = OwnWriteChange::Keep;
        store.record_outcomes(vec![back]).await.unwrap();
        let third = store.claim(migration.id, "w", LIMITS).await.unwrap();
        assert!(third[0].earlier_claim_at.is_some());
        assert_eq!(third[0].own_write.as_ref(), Some(&ours));
        store
            .record_outcomes(vec![Outcome {
                own_write: OwnWriteChange::Forget,
                ..done(&third[0], ObjectState::Conflict)
            }])
            .await
            .unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 3, vec![object("a", 1, "3")], None)
            .await
            .unwrap();
        let fourth = store.claim(migration.id, "w", LIMITS).await.unwrap();
        assert_eq!(fourth[0].own_write, None);
    }

    pub(super) async fn uploads_begun_but_unrecorded_or_no_longer_needed_are_found(
        store: &dyn Store,
    ) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("begun", 10, "1"), object("open", 10, "1")],
                None,
            )
            .await
            .unwrap();
        let claimed = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        let at = SystemTime::now();
        store
            .record_upload_intent(claimed[0].claim(), at)
            .await
            .unwrap();
        store
            .record_upload_intent(claimed[1].claim(), at)
            .await
            .unwrap();
        let source = SourceVersion {
            size: 10,
            version: "1".into(),
        };
        store
            .record_upload(claimed[1].claim(), "up", 5, &source)
            .await
            .unwrap();
        assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 2);
        assert!(store.stale_uploads(migration.id).await.unwrap().is_empty());
        let again = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        let since = again[0].unrecorded_upload_since.unwrap();
        assert_eq!(ms(since), ms(at));
        assert!(again[1].unrecorded_upload_since.is_none());

        // A new filter leaves both out: their uploads are stale.
        store.recover_abandoned(migration.id).await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    ScannedObject {
                        scanned: Scanned::Excluded,
                        ..object("begun", 10, "1")
                    },
                    ScannedObject {
                        scanned: Scanned::Excluded,
                        ..object("open", 10, "1")
                    },
                ],
                None,
            )
            .await
            .unwrap();
        let stale = store.stale_uploads(migration.id).await.unwrap();
        assert_eq!(
            stale
                .iter()
                .map(|s| (s.key.as_str(), s.upload_id.as_deref()))
                .collect::<Vec<_>>(),
            [("begun", None), ("open", Some("up"))]
        );
        store.forget_stale_upload(stale[0].id).await.unwrap();
        store.forget_stale_upload(stale[1].id).await.unwrap();
        assert!(store.stale_uploads(migration.id).await.unwrap().is_empty());
    }

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

    pub(super) async fn uploads_and_parts_are_kept_and_failures_requeue(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "f").await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("big", 30, "1"), object("bad", 1, "1")],
                None,
            )
            .await
            .unwrap();
        let claimed = store.claim(migration.id, "w", EXPIRED).await.unwrap();
        let source = SourceVersion {
            size: 30,
            version: "1".into(),
        };
        store
            .record_upload(claimed[0].claim(), "up-1", 10, &source)
            .await
            .unwrap();
        for number in [2, 1] {
            let part = PartRecord {
                part_number: number,
                etag: format!("\"e{number}\""),
                checksum: "x".into(),
                size: 10,
                md5: None,
            };
            store.record_part(claimed[0].claim(), part).await.unwrap();
        }
        let failed = Outcome {
            error: Some(("io".into(), "broken".into())),
            ..done(&claimed[1], ObjectState::Failed)
        };
        store.record_outcomes(vec![failed]).await.unwrap();
        let problems = store.problems(migration.id, 10).await.unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].message.as_deref(), Some("broken"));
        assert_eq!(problems[0].kind.as_deref(), Some("io"));
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(
            (
                tally.n(ObjectState::InProgress),
                tally.n(ObjectState::Failed)
            ),
            (1, 1)
        );
        assert_eq!(tally.bytes_total(), 31);
        assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 1);
        let queue = store.failed(migration.id, None, None, 10).await.unwrap();
        assert_eq!(
            queue
                .iter()
                .map(|f| (f.key.as_str(), f.class.as_deref(), f.error.as_deref()))
                .collect::<Vec<_>>(),
            [("bad", Some("io"), Some("broken"))]
        );
        assert!(
            store
                .failed(migration.id, Some("access_denied"), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let last = queue[0].id;
        assert!(
            store
                .failed(migration.id, None, Some(ObjectId(last)), 10)
                .await
                .unwrap()
                .is_empty(),
            "a page after the last one"
        );
        assert_eq!(
            store
                .requeue_failed(migration.id, Some("access_denied"))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .requeue_failed(migration.id, Some("io"))
                .await
                .unwrap(),
            1
        );
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let big = claimed.iter().find(|c| c.key == "big").unwrap();
        let upload = big.upload.as_ref().unwrap();
        assert_eq!(upload.upload_id, "up-1");
        assert_eq!(upload.source.as_ref(), Some(&source));
        assert_eq!(
            upload
                .parts
                .iter()
                .map(|p| p.part_number)
                .collect::<Vec<_>>(),
            [1, 2],
            "parts in part-number order"
        );
        assert_eq!(big.attempts, 2);
        assert!(big.earlier_claim_at.is_some());
        store.clear_upload(big.claim()).await.unwrap();
        store
            .record_outcomes(vec![done(big, ObjectState::Copied)])
            .await
            .unwrap();
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(tally.n(ObjectState::Copied), 1);
        assert_eq!(tally.bytes_in(ObjectState::Copied), 30);
    }

    pub(super) async fn expired_leases_return_to_the_pool(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("a", 1, "1"), object("b", 1, "1")],
                None,
            )
            .await
            .unwrap();
        let first = store.claim(migration.id, "dead", EXPIRED).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(
            store.held_by_others(migration.id, "other").await.unwrap(),
            2
        );
        assert_eq!(store.held_by_others(migration.id, "dead").await.unwrap(), 0);
        assert!(
            store
                .claim(migration.id, "other", LIMITS)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 2);
        let second = store.claim(migration.id, "other", LIMITS).await.unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].attempts, 2);
    }

    /// Fencing: a worker whose lease ran out, and whose packet another worker took, writes nothing
    /// about its objects any more: no part, no upload, no outcome.
    pub(super) async fn a_lost_claim_writes_nothing_over_the_new_one(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 1, vec![object("a", 30, "1")], None)
            .await
            .unwrap();
        let old = store.claim(migration.id, "old", EXPIRED).await.unwrap();
        assert_eq!(store.recover_expired(migration.id).await.unwrap(), 1);
        let new = store.claim(migration.id, "new", LIMITS).await.unwrap();
        assert_ne!(old[0].token, new[0].token);
        let source = SourceVersion {
            size: 30,
            version: "1".into(),
        };
        store
            .record_upload(new[0].claim(), "new-upload", 10, &source)
            .await
            .unwrap();
        let part = |n: u32, etag: &str| PartRecord {
            part_number: n,
            etag: etag.into(),
            checksum: "x".into(),
            size: 10,
            md5: None,
        };
        store
            .record_part(new[0].claim(), part(1, "new"))
            .await
            .unwrap();

        // The old holder, back from a pause: every write is refused, nothing changes.
        let lost = |result: Result<(), StoreError>| {
            assert!(
                matches!(result, Err(StoreError::LeaseLost(_))),
                "{result:?}"
            )
        };
        lost(store.record_part(old[0].claim(), part(1, "old")).await);
        lost(store.record_part(old[0].claim(), part(2, "old")).await);
        lost(
            store
                .record_upload(old[0].claim(), "old-upload", 10, &source)
                .await,
        );
        lost(
            store
                .record_upload_intent(old[0].claim(), SystemTime::now())
                .await,
        );
        lost(store.clear_upload(old[0].claim()).await);
        let fenced = store
            .record_outcomes(vec![done(&old[0], ObjectState::Copied)])
            .await
            .unwrap();
        assert_eq!(fenced, 1, "an outcome of the lost claim was recorded");
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(tally.n(ObjectState::InProgress), 1);

        // The new holder's upload is intact, and its outcome counts.
        store
            .record_outcomes(vec![done(&new[0], ObjectState::Pending)])
            .await
            .unwrap();
        let again = store.claim(migration.id, "new", LIMITS).await.unwrap();
        let upload = again[0].upload.as_ref().unwrap();
        assert_eq!(upload.upload_id, "new-upload");
        assert_eq!(
            upload
                .parts
                .iter()
                .map(|p| (p.part_number, p.etag.as_str()))
                .collect::<Vec<_>>(),
            [(1, "new")]
        );
        let claim: Claim = again[0].claim();
        store.clear_upload(claim).await.unwrap();
        let fenced = store
            .record_outcomes(vec![done(&again[0], ObjectState::Copied)])
            .await
            .unwrap();
        assert_eq!(fenced, 0);
        assert_eq!(
            store
                .tally(migration.id)
                .await
                .unwrap()
                .n(ObjectState::Copied),
            1
        );
    }

    /// A worker that renews its leases keeps its packet.
    pub(super) async fn renewed_leases_do_not_expire(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 1, vec![object("a", 1, "1")], None)
            .await
            .unwrap();
        store.claim(migration.id, "busy", EXPIRED).await.unwrap();
        assert_eq!(
            store
                .renew_leases("busy", Duration::from_secs(60))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.recover_expired(migration.id).await.unwrap(), 0);
        assert_eq!(
            store
                .renew_leases("someone-else", Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
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

    /// A worker told to quit now hands its claims back: others can take them at once, the
    /// attempt is not charged, and the quitting worker's late writes change nothing.
    pub(super) async fn released_claims_return_at_once_uncharged_and_fenced(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    object("a", 1, "1"),
                    object("b", 1, "1"),
                    object("c", 1, "1"),
                ],
                None,
            )
            .await
            .unwrap();
        let limits = PacketLimits {
            max_objects: 2,
            ..LIMITS
        };
        let quitting = store
            .claim(migration.id, "quitting", limits.clone())
            .await
            .unwrap();
        let staying = store
            .claim(migration.id, "staying", limits.clone())
            .await
            .unwrap();
        assert_eq!((quitting.len(), staying.len()), (2, 1));

        assert_eq!(store.release_claims("quitting").await.unwrap(), 2);
        assert_eq!(store.release_claims("quitting").await.unwrap(), 0);
        let tally = store.tally(migration.id).await.unwrap();
        assert_eq!(
            (
                tally.n(ObjectState::Pending),
                tally.n(ObjectState::InProgress)
            ),
            (2, 1)
        );
        // The late outcome of a released claim is fenced off.
        let fenced = store
            .record_outcomes(vec![done(&quitting[0], ObjectState::Copied)])
            .await
            .unwrap();
        assert_eq!(fenced, 1);
        assert!(matches!(
            store
                .record_upload_intent(quitting[1].claim(), SystemTime::now())
                .await,
            Err(StoreError::LeaseLost(_))
        ));
        // Taken again at once, with the attempt count it had before.
        let again = store.claim(migration.id, "other", LIMITS).await.unwrap();
        assert_eq!(again.len(), 2);
        for (before, after) in quitting.iter().zip(&again) {
            assert_eq!(after.attempts, before.attempts, "{after:?}");
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

    /// A mark of how far `claim` has listed, at `after`.
    fn mark(claim: &ShardClaim, after: &str) -> Option<ShardMark> {
        Some(ShardMark {
            name: claim.name.clone(),
            token: claim.token,
            after: after.into(),
        })
    }

    /// The first plan of a pass is its plan; its shards go out by name in byte order, each to
    /// one worker at a time, and are counted down as they are listed to their end.
    pub(super) async fn shards_are_planned_once_handed_out_in_byte_order_and_counted_down(
        store: &dyn Store,
    ) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), None);
        let names = ["b/", "\u{e9}/", "", "a/", "B/", "a-"];
        assert_eq!(
            store
                .plan_shards(migration.id, 1, names.map(String::from).to_vec())
                .await
                .unwrap(),
            6
        );
        assert_eq!(
            store
                .plan_shards(migration.id, 1, vec!["x/".into(), "y/".into()])
                .await
                .unwrap(),
            6,
            "a second plan changes nothing"
        );
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), Some(6));

        let lease = Duration::from_secs(60);
        let mut claims = Vec::new();
        while let Some(claim) = store
            .claim_shard(migration.id, 1, "w", lease)
            .await
            .unwrap()
        {
            assert_eq!(claim.after, None, "{claim:?}");
            claims.push(claim);
        }
        // Byte order of UTF-8, as S3 lists keys.
        assert_eq!(
            claims.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["", "B/", "a-", "a/", "b/", "\u{e9}/"]
        );
        assert!(
            store
                .claim_shard(migration.id, 1, "other", lease)
                .await
                .unwrap()
                .is_none(),
            "every shard is held"
        );
        for (n, claim) in claims.iter().enumerate() {
            assert_eq!(
                store.finish_shard(migration.id, 1, claim).await.unwrap(),
                5 - n as u64
            );
        }
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), Some(0));
        assert!(matches!(
            store.finish_shard(migration.id, 1, &claims[0]).await,
            Err(StoreError::ShardLost(_))
        ));
        assert!(
            store
                .claim_shard(migration.id, 1, "w", lease)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .plan_shards(migration.id, 1, vec!["x/".into()])
                .await
                .unwrap(),
            6,
            "a listed pass is not planned again"
        );
        // Another pass has shards of its own.
        store.start_pass(migration.id, "").await.unwrap();
        assert_eq!(store.shards_left(migration.id, 2).await.unwrap(), None);
    }

    /// Fencing of shards: a worker whose shard lease ran out, and whose shard another worker
    /// took, records neither its page nor the shard's end.
    pub(super) async fn a_lost_shard_claim_records_nothing(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .plan_shards(migration.id, 1, vec!["*".into()])
            .await
            .unwrap();
        let old = store
            .claim_shard(migration.id, 1, "old", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let new = store
            .claim_shard(migration.id, 1, "new", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a shard whose lease ran out is free");
        assert_eq!(new.name, old.name);
        assert_ne!(new.token, old.token);

        let page = vec![object("a", 1, "1"), object("b", 1, "1")];
        let result = store
            .record_scanned(migration.id, 1, page.clone(), mark(&old, "b"))
            .await;
        assert!(
            matches!(result, Err(StoreError::ShardLost(_))),
            "{result:?}"
        );
        assert_eq!(
            store.tally(migration.id).await.unwrap().n_total(),
            0,
            "the page of a lost claim was recorded"
        );
        assert!(matches!(
            store.finish_shard(migration.id, 1, &old).await,
            Err(StoreError::ShardLost(_))
        ));
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), Some(1));

        store
            .record_scanned(migration.id, 1, page, mark(&new, "b"))
            .await
            .unwrap();
        assert_eq!(
            store
                .tally(migration.id)
                .await
                .unwrap()
                .n(ObjectState::Pending),
            2
        );
        assert_eq!(store.finish_shard(migration.id, 1, &new).await.unwrap(), 0);
    }

    /// A shard handed back (by a worker told to quit, or left by one that is gone) is listed
    /// again from where it was listed to, and its old holder's marks are refused.
    pub(super) async fn shards_resume_where_they_were_listed_to(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .plan_shards(migration.id, 1, vec!["a/".into(), "b/".into()])
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let quitting = store
            .claim_shard(migration.id, 1, "quitting", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(quitting.name, "a/");
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("a/1", 1, "1"), object("a/2", 1, "1")],
                mark(&quitting, "a/2"),
            )
            .await
            .unwrap();
        assert_eq!(
            store.release_claims("quitting").await.unwrap(),
            0,
            "objects, not shards"
        );
        assert!(matches!(
            store
                .record_scanned(
                    migration.id,
                    1,
                    vec![object("a/3", 1, "1")],
                    mark(&quitting, "a/3")
                )
                .await,
            Err(StoreError::ShardLost(_))
        ));

        // Taken again at once, from after the last key recorded; then its holder is gone.
        let gone = store
            .claim_shard(migration.id, 1, "gone", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (gone.name.as_str(), gone.after.as_deref()),
            ("a/", Some("a/2"))
        );
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("a/3", 1, "1")],
                mark(&gone, "a/3"),
            )
            .await
            .unwrap();
        assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 0);
        assert_eq!(
            store.renew_leases("gone", lease).await.unwrap(),
            0,
            "the shard went back to the pool"
        );
        let next = store
            .claim_shard(migration.id, 1, "next", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.name.as_str(), next.after.as_deref()),
            ("a/", Some("a/3"))
        );
        assert_eq!(store.tally(migration.id).await.unwrap().n_total(), 3);
        assert_eq!(store.finish_shard(migration.id, 1, &next).await.unwrap(), 1);
    }

    /// A scan restarted with the filter its pass recorded resumes its shards; with another one
    /// it plans and lists them afresh.
    pub(super) async fn a_rescan_keeps_its_shards_only_under_the_same_filter(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "f").await.unwrap();
        store
            .plan_shards(migration.id, 1, vec!["a/".into(), "b/".into()])
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let first = store
            .claim_shard(migration.id, 1, "w", lease)
            .await
            .unwrap()
            .unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("a/1", 1, "1")],
                mark(&first, "a/1"),
            )
            .await
            .unwrap();
        store.finish_shard(migration.id, 1, &first).await.unwrap();
        let second = store
            .claim_shard(migration.id, 1, "w", lease)
            .await
            .unwrap()
            .unwrap();
        store
            .record_scanned(
                migration.id,
                1,
                vec![object("b/1", 1, "1")],
                mark(&second, "b/1"),
            )
            .await
            .unwrap();
        store.release_claims("w").await.unwrap();

        store.restart_scan(migration.id, 1, "f").await.unwrap();
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), Some(1));
        let resumed = store
            .claim_shard(migration.id, 1, "w", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (resumed.name.as_str(), resumed.after.as_deref()),
            ("b/", Some("b/1"))
        );
        store.release_claims("w").await.unwrap();

        store.restart_scan(migration.id, 1, "g").await.unwrap();
        assert_eq!(store.shards_left(migration.id, 1).await.unwrap(), None);
        assert_eq!(
            store
                .plan_shards(migration.id, 1, vec!["c/".into()])
                .await
                .unwrap(),
            1
        );
        let fresh = store
            .claim_shard(migration.id, 1, "w", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((fresh.name.as_str(), fresh.after), ("c/", None));
        let pass = store
            .find_migration("m")
            .await
            .unwrap()
            .unwrap()
            .last_pass
            .unwrap();
        assert_eq!(pass.filter.as_deref(), Some("g"));
    }

    /// A worker's renewals cover its shards as well as its objects.
    pub(super) async fn renewed_shard_leases_count_and_do_not_expire(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(migration.id, 1, vec![object("a", 1, "1")], None)
            .await
            .unwrap();
        store
            .plan_shards(migration.id, 1, vec!["*".into()])
            .await
            .unwrap();
        store.claim(migration.id, "busy", EXPIRED).await.unwrap();
        let held = store
            .claim_shard(migration.id, 1, "busy", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let lease = Duration::from_secs(60);
        assert_eq!(store.renew_leases("busy", lease).await.unwrap(), 2);
        assert_eq!(store.recover_expired(migration.id).await.unwrap(), 0);
        assert!(
            store
                .claim_shard(migration.id, 1, "other", lease)
                .await
                .unwrap()
                .is_none(),
            "a renewed shard is still held"
        );
        assert_eq!(store.renew_leases("other", lease).await.unwrap(), 0);
        store
            .record_scanned(migration.id, 1, Vec::new(), mark(&held, "a"))
            .await
            .unwrap();

        // Expired again: the run's sweep hands the shard back (its objects too).
        store.renew_leases("busy", Duration::ZERO).await.unwrap();
        assert_eq!(store.recover_expired(migration.id).await.unwrap(), 1);
        let taken = store
            .claim_shard(migration.id, 1, "other", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.after.as_deref(), Some("a"));
        assert_eq!(store.renew_leases("busy", lease).await.unwrap(), 0);
    }

    /// Workers starting together each plan the pass: one plan wins whole, and each shard goes
    /// to one of them.
    pub(super) async fn workers_planning_and_claiming_at_once_never_share_a_shard(
        store: &dyn Store,
    ) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let plan = |prefix: &'static str| {
            let names = (0..20).map(|n| format!("{prefix}{n:02}/")).collect();
            store.plan_shards(migration.id, 1, names)
        };
        let (x, y, z) = tokio::join!(plan("x"), plan("y"), plan("z"));
        assert_eq!((x.unwrap(), y.unwrap(), z.unwrap()), (20, 20, 20));

        let lease = Duration::from_secs(60);
        let claim = |worker: &'static str| async move {
            let mut names = Vec::new();
            while let Some(claim) = store
                .claim_shard(migration.id, 1, worker, lease)
                .await
                .unwrap()
            {
                names.push(claim.name);
            }
            names
        };
        let (a, b, c) = tokio::join!(claim("a"), claim("b"), claim("c"));
        let mut names: Vec<String> = a.into_iter().chain(b).chain(c).collect();
        names.sort();
        let prefix = &names[0][..1];
        let planned: Vec<String> = (0..20).map(|n| format!("{prefix}{n:02}/")).collect();
        assert_eq!(names, planned, "one plan, each shard claimed once");
    }

    /// Groups and partitions (issue 11): each object keeps the ones the scan gave it; each
    /// partition counts its objects by state, the default partition first, then in byte order;
    /// a rescan under another rule moves an object that is not claimed.
    pub(super) async fn partitions_count_their_objects_by_state(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let placed = |key: &str, size: u64, partition: Option<&str>| ScannedObject {
            group: partition.map(|p| format!("{p}/g")),
            partition: partition.map(str::to_owned),
            ..object(key, size, "1")
        };
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    placed("a1", 10, Some("b")),
                    placed("a2", 20, Some("\u{e9}")),
                    placed("a3", 30, Some("a")),
                    placed("a4", 40, None),
                    placed("a5", 50, Some("b")),
                ],
                None,
            )
            .await
            .unwrap();
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let first = claimed.iter().find(|c| c.key == "a1").unwrap();
        store
            .record_outcomes(vec![done(first, ObjectState::Copied)])
            .await
            .unwrap();
        let partitions = store.partitions(migration.id).await.unwrap();
        let shown: Vec<(Option<&str>, u64, u64, u64)> = partitions
            .iter()
            .map(|p| {
                (
                    p.name.as_deref(),
                    p.tally.n(ObjectState::Copied),
                    p.tally.n(ObjectState::InProgress),
                    p.tally.bytes.iter().sum(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (None, 0, 1, 40),
                (Some("a"), 0, 1, 30),
                (Some("b"), 1, 1, 60),
                (Some("\u{e9}"), 0, 1, 20),
            ]
        );

        // Released, then scanned again under another rule: a3 moves to partition "b".
        let rest: Vec<Outcome> = claimed
            .iter()
            .filter(|c| c.key != "a1")
            .map(|c| Outcome {
                attempts: 0,
                ..done(c, ObjectState::Pending)
            })
            .collect();
        store.record_outcomes(rest).await.unwrap();
        store
            .record_scanned(migration.id, 1, vec![placed("a3", 30, Some("b"))], None)
            .await
            .unwrap();
        let names: Vec<(Option<String>, u64)> = store
            .partitions(migration.id)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.tally.objects.iter().sum()))
            .collect();
        assert_eq!(
            names,
            [
                (None, 1),
                (Some("b".to_owned()), 3),
                (Some("\u{e9}".to_owned()), 1)
            ]
        );
    }

    /// Whole groups (issue 11): objects in no group are claimed as ever; a group waits for the
    /// pass's scan to complete, then comes whole in one packet whatever the limits; workers
    /// claiming at once never split one.
    pub(super) async fn groups_are_claimed_whole_once_scanned_and_never_split(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let grouped = |key: &str, group: Option<&str>| ScannedObject {
            group: group.map(str::to_owned),
            ..object(key, 10, "1")
        };
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    grouped("a1", Some("g1")),
                    grouped("b", None),
                    grouped("c1", Some("g2")),
                    grouped("a2", Some("g1")),
                    grouped("c2", Some("g2")),
                    grouped("a3", Some("g1")),
                ],
                None,
            )
            .await
            .unwrap();
        let one = PacketLimits {
            max_objects: 1,
            whole_groups: true,
            ..LIMITS
        };
        let keys = |claimed: &[ClaimedObject]| {
            let mut keys: Vec<String> = claimed.iter().map(|c| c.key.clone()).collect();
            keys.sort();
            keys
        };
        // The scan is not complete: only the object in no group.
        let first = store.claim(migration.id, "w", one.clone()).await.unwrap();
        assert_eq!(keys(&first), ["b"]);
        assert!(
            store
                .claim(migration.id, "w", one.clone())
                .await
                .unwrap()
                .is_empty()
        );
        store.finish_scan(migration.id, 1).await.unwrap();
        let g1 = store.claim(migration.id, "w", one.clone()).await.unwrap();
        assert_eq!(keys(&g1), ["a1", "a2", "a3"], "a group comes whole");
        assert!(g1.iter().all(|c| c.token == g1[0].token));
        let g2 = store.claim(migration.id, "w", one.clone()).await.unwrap();
        assert_eq!(keys(&g2), ["c1", "c2"]);
        assert!(
            store
                .claim(migration.id, "w", one.clone())
                .await
                .unwrap()
                .is_empty()
        );

        // Four workers at once over 300 groups of three consecutive objects, in packets of two:
        // each packet's first objects cut a group, which another worker would reach next.
        let other = store
            .open_migration(&MigrationSpec {
                name: "groups".into(),
                ..spec()
            })
            .await
            .unwrap();
        store.start_pass(other.id, "").await.unwrap();
        store
            .record_scanned(
                other.id,
                1,
                (0..900)
                    .map(|i| grouped(&format!("k{i:04}"), Some(&format!("g{}", i / 3))))
                    .collect(),
                None,
            )
            .await
            .unwrap();
        store.finish_scan(other.id, 1).await.unwrap();
        let worker = |name: &'static str| async move {
            let limits = PacketLimits {
                max_objects: 2,
                whole_groups: true,
                ..LIMITS
            };
            let mut taken = Vec::new();
            loop {
                let packet = store.claim(other.id, name, limits.clone()).await.unwrap();
                if packet.is_empty() {
                    return taken;
                }
                taken.extend(packet.into_iter().map(|c| (c.key, c.token)));
            }
        };
        let (a, b, c, d) = tokio::join!(worker("a"), worker("b"), worker("c"), worker("d"));
        let all: Vec<(String, godwit_state::LeaseToken)> =
            [a, b, c, d].into_iter().flatten().collect();
        assert_eq!(all.len(), 900, "every object claimed once");
        let mut tokens: std::collections::HashMap<
            u32,
            std::collections::HashSet<godwit_state::LeaseToken>,
        > = std::collections::HashMap::new();
        for (key, token) in &all {
            let n: u32 = key[1..].parse().unwrap();
            tokens.entry(n / 3).or_default().insert(*token);
        }
        assert_eq!(tokens.len(), 300);
        assert!(
            tokens.values().all(|t| t.len() == 1),
            "a group was split between packets: {:?}",
            tokens
                .iter()
                .filter(|(_, t)| t.len() > 1)
                .collect::<Vec<_>>()
        );
    }

    /// A group's member in the fail queue or in conflict keeps it from committing, and says
    /// so; a claim names each object's group; retry-failed of one class brings back every failed
    /// member of the groups it touches (the members rolled back with them), and nothing else.
    pub(super) async fn a_failed_group_says_why_and_is_requeued_whole(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let grouped = |key: &str, group: &str| ScannedObject {
            group: Some(group.to_owned()),
            ..object(key, 10, "1")
        };
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    grouped("a1", "g1"),
                    grouped("a2", "g1"),
                    grouped("a3", "g1"),
                    grouped("b1", "g2"),
                    grouped("b2", "g2"),
                    ScannedObject {
                        scanned: Scanned::Unreadable {
                            kind: "access_denied".into(),
                            message: "no".into(),
                        },
                        ..grouped("c1", "g3")
                    },
                    grouped("c2", "g3"),
                ],
                None,
            )
            .await
            .unwrap();
        store.finish_scan(migration.id, 1).await.unwrap();
        assert_eq!(
            store.group_problem(migration.id, "g3").await.unwrap(),
            Some("c1 ended failed: no".to_owned()),
            "a member failed by the scan"
        );
        assert_eq!(store.group_problem(migration.id, "g1").await.unwrap(), None);
        let whole = PacketLimits {
            whole_groups: true,
            ..LIMITS
        };
        let claimed = store.claim(migration.id, "w", whole.clone()).await.unwrap();
        assert_eq!(claimed.len(), 6);
        for c in &claimed {
            assert_eq!(
                c.group.as_deref(),
                Some(&c.key[..1]).map(|g| match g {
                    "a" => "g1",
                    "b" => "g2",
                    _ => "g3",
                })
            );
        }
        // g1 rolled back: a2 failed for good, a1 and a3 with it; g2 and c2 copied.
        let failed = |c: &ClaimedObject, kind: &str, message: &str| Outcome {
            state: ObjectState::Failed,
            error: Some((kind.into(), message.into())),
            ..done(c, ObjectState::Failed)
        };
        let outcomes = claimed
            .iter()
            .map(|c| match c.key.as_str() {
                "a2" => failed(c, "access_denied", "denied"),
                "a1" | "a3" => failed(c, "rolled_back", "group 'g1' rolled back"),
                _ => done(c, ObjectState::Copied),
            })
            .collect();
        store.record_outcomes(outcomes).await.unwrap();
        assert_eq!(
            store.group_problem(migration.id, "g1").await.unwrap(),
            Some("a1 ended failed: group 'g1' rolled back".to_owned())
        );
        assert_eq!(store.group_problem(migration.id, "g2").await.unwrap(), None);

        // Retrying the access_denied failures brings back g1 whole and c1 (g3's c2 was copied).
        let requeued = store
            .requeue_failed(migration.id, Some("access_denied"))
            .await
            .unwrap();
        assert_eq!(requeued, 4);
        let again = store.claim(migration.id, "w", whole.clone()).await.unwrap();
        let mut keys: Vec<&str> = again.iter().map(|c| c.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["a1", "a2", "a3", "c1"]);
        // Without whole groups, a claim names no group.
        let other = store
            .open_migration(&MigrationSpec {
                name: "loose".into(),
                ..spec()
            })
            .await
            .unwrap();
        store.start_pass(other.id, "").await.unwrap();
        store
            .record_scanned(other.id, 1, vec![grouped("x", "g")], None)
            .await
            .unwrap();
        let loose = store.claim(other.id, "w", LIMITS).await.unwrap();
        assert_eq!(loose[0].group, None);
    }

    /// A partition's checkpoints: cutover is refused before a validation, after a failed one,
    /// and after a change since the latest one began; accepted once, then said to be done; a
    /// cut-over partition's objects are left alone by later passes (a new one left out), and
    /// each pass counts what it found new, changed and vanished.
    pub(super) async fn partitions_are_validated_then_cut_over_and_left_alone(store: &dyn Store) {
        use godwit_state::{Cutover, PartitionState};
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let placed = |key: &str, partition: Option<&str>, version: &str| ScannedObject {
            partition: partition.map(str::to_owned),
            ..object(key, 10, version)
        };
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    placed("c1/a", Some("c1"), "1"),
                    placed("c1/b", Some("c1"), "1"),
                    placed("c2/a", Some("c2"), "1"),
                    placed("top", None, "1"),
                ],
                None,
            )
            .await
            .unwrap();
        store.finish_scan(migration.id, 1).await.unwrap();
        let counts = store.pass_counts(migration.id, 1).await.unwrap();
        assert_eq!((counts.new, counts.changed, counts.vanished), (4, 0, 0));
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        store
            .record_outcomes(
                claimed
                    .iter()
                    .map(|c| done(c, ObjectState::Copied))
                    .collect(),
            )
            .await
            .unwrap();
        let state_of = |partitions: &[godwit_state::PartitionTally], name: Option<&str>| {
            partitions
                .iter()
                .find(|p| p.name.as_deref() == name)
                .unwrap()
                .state()
        };
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        assert_eq!(
            store
                .cut_over(migration.id, Some("c1"), now())
                .await
                .unwrap(),
            Cutover::NotValidated
        );
        assert_eq!(
            store
                .cut_over(migration.id, Some("nowhere"), now())
                .await
                .unwrap(),
            Cutover::Unknown
        );
        store
            .record_validation(migration.id, Some("c1"), now(), false, "{}")
            .await
            .unwrap();
        assert_eq!(
            store
                .cut_over(migration.id, Some("c1"), now())
                .await
                .unwrap(),
            Cutover::ValidationFailed
        );
        let started = now();
        store
            .record_validation(migration.id, Some("c1"), started, true, "{\"passed\":true}")
            .await
            .unwrap();
        store
            .record_validation(migration.id, None, started, true, "{}")
            .await
            .unwrap();
        let partitions = store.partitions(migration.id).await.unwrap();
        assert_eq!(state_of(&partitions, Some("c1")), PartitionState::Validated);
        assert_eq!(state_of(&partitions, Some("c2")), PartitionState::Migrated);
        assert_eq!(state_of(&partitions, None), PartitionState::Validated);
        let c1 = partitions
            .iter()
            .find(|p| p.name.as_deref() == Some("c1"))
            .unwrap();
        assert_eq!(
            c1.checkpoints.validation.as_deref(),
            Some("{\"passed\":true}")
        );
        assert_eq!(c1.checkpoints.validated_at, Some(started));

        // The default partition changes after its validation (an object lost at the
        // destination goes back to the queue): its cutover is refused.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let top = store
            .done_objects(migration.id, Some("c2/a"), 10)
            .await
            .unwrap();
        assert_eq!(top[0].key, "top");
        store.requeue(&[top[0].id]).await.unwrap();
        assert_eq!(
            store.cut_over(migration.id, None, now()).await.unwrap(),
            Cutover::ChangedSince
        );
        let at = now();
        assert_eq!(
            store.cut_over(migration.id, Some("c1"), at).await.unwrap(),
            Cutover::Done
        );
        assert_eq!(
            store
                .cut_over(migration.id, Some("c1"), now())
                .await
                .unwrap(),
            Cutover::AlreadyCutOver(at)
        );
        let partitions = store.partitions(migration.id).await.unwrap();
        assert_eq!(state_of(&partitions, Some("c1")), PartitionState::CutOver);
        assert_eq!(state_of(&partitions, None), PartitionState::Pending);
        store
            .record_notice(
                migration.id,
                Some("c1"),
                &godwit_state::Notice {
                    delivered_at: Some(at),
                    attempts: 2,
                    error: None,
                },
            )
            .await
            .unwrap();
        let partitions = store.partitions(migration.id).await.unwrap();
        let c1 = partitions
            .iter()
            .find(|p| p.name.as_deref() == Some("c1"))
            .unwrap();
        assert_eq!(c1.checkpoints.notice.as_ref().unwrap().attempts, 2);

        // Pass 2: c1/a changed and c1/new is new in the cut-over c1; c2/a changed; c1/b and top
        // vanished; c2/new is new.
        store.start_pass(migration.id, "").await.unwrap();
        store
            .record_scanned(
                migration.id,
                2,
                vec![
                    placed("c1/a", Some("c1"), "2"),
                    placed("c1/new", Some("c1"), "1"),
                    placed("c2/a", Some("c2"), "2"),
                    placed("c2/new", Some("c2"), "1"),
                ],
                None,
            )
            .await
            .unwrap();
        store.finish_scan(migration.id, 2).await.unwrap();
        let counts = store.pass_counts(migration.id, 2).await.unwrap();
        assert_eq!(
            (
                counts.new,
                counts.changed,
                counts.in_cut_over,
                counts.vanished
            ),
            (2, 2, 2, 2),
            "{counts:?}"
        );
        let known = store
            .lookup(
                migration.id,
                vec!["c1/a".into(), "c1/new".into(), "c2/a".into()],
            )
            .await
            .unwrap();
        let state = |key: &str| known.iter().find(|k| k.key == key).unwrap().state;
        let version = |key: &str| known.iter().find(|k| k.key == key).unwrap().version.clone();
        assert_eq!(state("c1/a"), ObjectState::Copied, "left alone");
        assert_eq!(version("c1/a"), "1", "left alone");
        assert_eq!(state("c1/new"), ObjectState::Excluded);
        assert_eq!(state("c2/a"), ObjectState::Pending, "queued again");
        let ledger = store.objects_after(migration.id, None, 100).await.unwrap();
        let keys: Vec<&str> = ledger.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["c1/a", "c1/b", "c1/new", "c2/a", "c2/new", "top"]);
        assert_eq!(ledger[0].partition.as_deref(), Some("c1"));
        let after = store
            .objects_after(migration.id, Some("c2/a"), 1)
            .await
            .unwrap();
        assert_eq!(after[0].key, "c2/new");
    }

    /// A claim limited to some partitions takes only their objects (`""`: the objects in none).
    pub(super) async fn claims_take_only_the_partitions_asked_for(store: &dyn Store) {
        let migration = store.open_migration(&spec()).await.unwrap();
        store.start_pass(migration.id, "").await.unwrap();
        let placed = |key: &str, partition: Option<&str>| ScannedObject {
            partition: partition.map(str::to_owned),
            ..object(key, 10, "1")
        };
        store
            .record_scanned(
                migration.id,
                1,
                vec![
                    placed("a", Some("p1")),
                    placed("b", Some("p2")),
                    placed("c", None),
                    placed("d", Some("p\"3")),
                ],
                None,
            )
            .await
            .unwrap();
        let only = |names: &[&str]| PacketLimits {
            partitions: Some(names.iter().map(|n| n.to_string()).collect()),
            ..LIMITS
        };
        let keys =
            |claimed: Vec<ClaimedObject>| claimed.into_iter().map(|c| c.key).collect::<Vec<_>>();
        assert_eq!(
            keys(
                store
                    .claim(migration.id, "w", only(&["p2", "p\"3"]))
                    .await
                    .unwrap()
            ),
            ["b", "d"]
        );
        assert_eq!(
            keys(store.claim(migration.id, "w", only(&[""])).await.unwrap()),
            ["c"]
        );
        assert!(
            store
                .claim(migration.id, "w", only(&["p9"]))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            keys(store.claim(migration.id, "w", LIMITS).await.unwrap()),
            ["a"]
        );
    }
}
