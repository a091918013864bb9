//! The counters the database keeps (`tally`, `partitions`): after every kind of change a
//! migration's objects go through, they hold what counting the objects again finds.

use super::*;

/// Asserts that the counters hold what counting the migration's objects again finds, that
/// `tally` and `partitions` read them, and (PostgreSQL) that folding their rows changes
/// nothing.
async fn assert_counted(store: &dyn Counted, migration: MigrationId, step: &str) {
    for folded in [false, true] {
        let recounted = store.recount(migration).await;
        assert_eq!(
            store.counted(migration).await,
            recounted,
            "{step} (folded: {folded})"
        );
        assert_eq!(
            store.tally(migration).await.unwrap(),
            godwit_state::tally_of(&recounted),
            "{step} (folded: {folded})"
        );
        let partitions: Vec<_> = store
            .partitions(migration)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.tally))
            .collect();
        let expected: Vec<_> = recounted
            .into_iter()
            .map(|(name, count)| (name, count.tally))
            .collect();
        assert_eq!(partitions, expected, "{step} (folded: {folded})");
        store.fold().await;
    }
}

fn placed(key: &str, size: u64, version: &str, partition: Option<&str>) -> ScannedObject {
    ScannedObject {
        partition: partition.map(str::to_owned),
        ..object(key, size, version)
    }
}

/// The ends an attempt can have: every state, a retry, a new size, an error.
fn ended(claimed: &ClaimedObject) -> Outcome {
    let failed = |kind: &str| Outcome {
        error: Some((kind.into(), format!("{} {kind}", claimed.key))),
        ..done(claimed, ObjectState::Failed)
    };
    match claimed.key.as_str() {
        "a/1" => done(claimed, ObjectState::Copied),
        "a/2" => Outcome {
            size: claimed.size + 7,
            version: "2".into(),
            ..done(claimed, ObjectState::Copied)
        },
        "a/3" => done(claimed, ObjectState::AlreadyPresent),
        "b/1" => done(claimed, ObjectState::Conflict),
        "b/2" => done(claimed, ObjectState::SourceVanished),
        "b/3" => failed("access_denied"),
        "c/1" => failed("unreachable"),
        "c/2" => done(claimed, ObjectState::Excluded),
        _ => Outcome {
            size: claimed.size * 2,
            ..done(claimed, ObjectState::Pending)
        },
    }
}

/// Lets the clock move on, so each step's changes carry a time of their own.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

/// Objects scanned (wanted, excluded, unreadable; in partitions, in none, in one named `""`,
/// which is the default one), claimed, ended in every state (some with a new size), fenced
/// off, requeued, retried, expired, recovered, released, rescanned (changed, moved to other
/// partitions, excluded and wanted again), scanned by a new pass under a new filter, claimed in
/// whole groups and rolled back, in a partition cut over, with uploads recorded: after each
/// step the counters hold what counting the objects again finds.
pub(super) async fn the_counters_follow_every_change_of_state_size_and_partition(
    store: &dyn Counted,
) {
    let migration = store.open_migration(&spec()).await.unwrap().id;
    store.start_pass(migration, "f1").await.unwrap();
    assert_counted(store, migration, "empty").await;
    let excluded = |key: &str| ScannedObject {
        scanned: Scanned::Excluded,
        ..placed(key, 5, "1", Some("c"))
    };
    let unreadable = ScannedObject {
        scanned: Scanned::Unreadable {
            kind: "access_denied".into(),
            message: "no".into(),
        },
        ..placed("c/3", 6, "1", Some("c"))
    };
    let first_scan = vec![
        placed("a/1", 10, "1", Some("a")),
        placed("a/2", 20, "1", Some("a")),
        placed("a/3", 30, "1", Some("a")),
        placed("b/1", 40, "1", Some("b")),
        placed("b/2", 50, "1", Some("b")),
        placed("b/3", 60, "1", Some("b")),
        placed("c/1", 70, "1", Some("c")),
        placed("c/2", 80, "1", Some("c")),
        placed("d/1", 90, "1", None),
        placed("d/2", 100, "1", Some("")),
        excluded("c/4"),
        unreadable,
    ];
    store
        .record_scanned(migration, 1, first_scan.clone(), None)
        .await
        .unwrap();
    assert_counted(store, migration, "scanned").await;

    tick().await;
    let packet = PacketLimits {
        max_objects: 100,
        max_bytes: 10_000,
        ..LIMITS
    };
    let claimed = store.claim(migration, "w", packet.clone()).await.unwrap();
    assert_eq!(claimed.len(), 10);
    assert_counted(store, migration, "claimed").await;
    let fenced = claimed
        .iter()
        .map(|c| Outcome {
            token: godwit_state::LeaseToken(c.token.0 + 1),
            ..done(c, ObjectState::Copied)
        })
        .collect();
    assert_eq!(store.record_outcomes(fenced).await.unwrap(), 10);
    assert_counted(store, migration, "outcomes fenced off").await;
    store
        .record_outcomes(claimed.iter().map(ended).collect())
        .await
        .unwrap();
    assert_counted(store, migration, "every outcome").await;

    tick().await;
    let done_ids: Vec<ObjectId> = store
        .done_objects(migration, None, 100)
        .await
        .unwrap()
        .iter()
        .filter(|d| d.key != "a/3")
        .map(|d| d.id)
        .collect();
    assert_eq!(store.requeue(&done_ids).await.unwrap(), 2);
    assert_counted(store, migration, "requeued").await;
    tick().await;
    assert_eq!(
        store
            .requeue_failed(migration, Some("unreachable"))
            .await
            .unwrap(),
        1
    );
    assert_counted(store, migration, "failed of a class retried").await;
    assert_eq!(store.requeue_failed(migration, None).await.unwrap(), 2);
    assert_counted(store, migration, "every failure retried").await;

    // Leases of no time run out as they are taken.
    let expired = store.claim(migration, "w", EXPIRED).await.unwrap();
    assert!(!expired.is_empty());
    assert_counted(store, migration, "claimed under a lease run out").await;
    assert_eq!(
        store.recover_expired(migration).await.unwrap(),
        expired.len() as u64
    );
    assert_counted(store, migration, "expired claims recovered").await;
    let abandoned = store.claim(migration, "w", EXPIRED).await.unwrap();
    assert_eq!(
        store.recover_abandoned(migration).await.unwrap(),
        abandoned.len() as u64
    );
    assert_counted(store, migration, "abandoned claims recovered").await;
    store.claim(migration, "w", packet.clone()).await.unwrap();
    assert!(store.release_claims("w").await.unwrap() > 0);
    assert_counted(store, migration, "claims released").await;

    // The same pass scans again: sizes and versions change, objects move to other partitions
    // (one out of the partition whose last change it held), excluded ones are wanted.
    tick().await;
    let rescan = vec![
        placed("a/1", 11, "2", Some("a")),
        placed("a/2", 27, "2", Some("b")),
        placed("b/1", 40, "1", None),
        placed("c/1", 70, "1", Some("e")),
        placed("c/4", 5, "1", Some("c")),
        placed("d/2", 100, "1", None),
        placed("new", 1, "1", Some("e")),
    ];
    store
        .record_scanned(migration, 1, rescan, None)
        .await
        .unwrap();
    assert_counted(store, migration, "rescanned").await;
    store.finish_scan(migration, 1).await.unwrap();
    store.restart_scan(migration, 1, "f2").await.unwrap();
    store
        .record_scanned(
            migration,
            1,
            vec![ScannedObject {
                scanned: Scanned::Excluded,
                ..placed("new", 1, "1", Some("e"))
            }],
            None,
        )
        .await
        .unwrap();
    assert_counted(store, migration, "scan restarted under another filter").await;

    // A new pass places every object in groups; whole groups are claimed and one is rolled
    // back, then retried whole.
    tick().await;
    store.start_pass(migration, "f3").await.unwrap();
    let grouped: Vec<ScannedObject> = first_scan
        .iter()
        .map(|o| ScannedObject {
            group: Some(o.key[..1].to_owned()),
            ..o.clone()
        })
        .collect();
    store
        .record_scanned(migration, 2, grouped, None)
        .await
        .unwrap();
    store.finish_scan(migration, 2).await.unwrap();
    assert_counted(store, migration, "a new pass").await;
    let whole = PacketLimits {
        whole_groups: true,
        ..packet.clone()
    };
    let claimed = store.claim(migration, "w", whole).await.unwrap();
    assert!(!claimed.is_empty());
    let outcomes = claimed
        .iter()
        .map(|c| match c.key.as_bytes()[0] {
            b'a' => Outcome {
                error: Some(("rolled_back".into(), "group 'a' rolled back".into())),
                ..done(c, ObjectState::Failed)
            },
            _ => done(c, ObjectState::Copied),
        })
        .collect();
    store.record_outcomes(outcomes).await.unwrap();
    assert_counted(store, migration, "a group rolled back").await;
    store
        .requeue_failed(migration, Some("rolled_back"))
        .await
        .unwrap();
    assert_counted(store, migration, "a group retried whole").await;

    // Uploads change no count (on PostgreSQL, their statements fire the triggers all the same).
    let claimed = store.claim(migration, "w", packet.clone()).await.unwrap();
    let claim = claimed[0].claim();
    let source = SourceVersion {
        size: claimed[0].size,
        version: claimed[0].version.clone(),
    };
    store
        .record_upload_intent(claim, SystemTime::now())
        .await
        .unwrap();
    store.record_upload(claim, "u", 5, &source).await.unwrap();
    store.clear_upload(claim).await.unwrap();
    store.renew_leases("w", LIMITS.lease).await.unwrap();
    assert_counted(store, migration, "uploads").await;
    store
        .record_outcomes(
            claimed
                .iter()
                .map(|c| done(c, ObjectState::Copied))
                .collect(),
        )
        .await
        .unwrap();

    // A partition cut over: a later pass leaves its objects alone and records a new one in it
    // as left out.
    tick().await;
    let at = ms(SystemTime::now()) as i64;
    store
        .record_validation(migration, Some("b"), at, true, "{}")
        .await
        .unwrap();
    assert_eq!(
        store.cut_over(migration, Some("b"), at + 1).await.unwrap(),
        godwit_state::Cutover::Done
    );
    assert_counted(store, migration, "a partition cut over").await;
    tick().await;
    store.start_pass(migration, "f3").await.unwrap();
    store
        .record_scanned(
            migration,
            3,
            vec![
                placed("b/1", 41, "3", Some("b")),
                placed("b/9", 9, "1", Some("b")),
                placed("a/1", 12, "3", Some("a")),
            ],
            None,
        )
        .await
        .unwrap();
    assert_counted(store, migration, "a pass past a cut-over partition").await;
}

/// Two migrations in one ledger count apart, whatever changes in the other.
pub(super) async fn each_migration_keeps_counters_of_its_own(store: &dyn Counted) {
    let first = store.open_migration(&spec()).await.unwrap().id;
    let second = store
        .open_migration(&MigrationSpec {
            name: "second".into(),
            ..spec()
        })
        .await
        .unwrap()
        .id;
    for (migration, size) in [(first, 1), (second, 1000)] {
        store.start_pass(migration, "").await.unwrap();
        store
            .record_scanned(
                migration,
                1,
                vec![
                    placed("k1", size, "1", Some("p")),
                    placed("k2", size, "1", None),
                ],
                None,
            )
            .await
            .unwrap();
    }
    let claimed = store.claim(second, "w", LIMITS).await.unwrap();
    store
        .record_outcomes(
            claimed
                .iter()
                .map(|c| done(c, ObjectState::Copied))
                .collect(),
        )
        .await
        .unwrap();
    // One statement across both migrations: a worker's claims handed back.
    store.claim(first, "w", LIMITS).await.unwrap();
    store.release_claims("w").await.unwrap();
    for migration in [first, second] {
        assert_counted(store, migration, "two migrations").await;
    }
    let first_tally = store.tally(first).await.unwrap();
    assert_eq!(first_tally.n(ObjectState::Pending), 2);
    assert_eq!(first_tally.bytes_total(), 2);
    let second_tally = store.tally(second).await.unwrap();
    assert_eq!(second_tally.n(ObjectState::Copied), 1);
    assert_eq!(second_tally.bytes_total(), 2000);
}

/// A failed object the next complete listing of the source does not find is settled as
/// `source_vanished` when that scan ends (renamed or removed to fix it, say), so a re-run ends
/// well without `retry-failed`; failed objects still listed stay failed, and the counters
/// follow.
pub(super) async fn failed_objects_gone_from_a_complete_listing_are_settled_vanished(
    store: &dyn Counted,
) {
    let migration = store.open_migration(&spec()).await.unwrap().id;
    store.start_pass(migration, "f").await.unwrap();
    let unreadable = |key: &str| ScannedObject {
        scanned: Scanned::Unreadable {
            kind: "invalid_input".into(),
            message: format!("{key}: bad name"),
        },
        ..object(key, 0, "")
    };
    let first = vec![
        object("a", 1, "1"),
        unreadable("bad-gone"),
        unreadable("bad-kept"),
    ];
    store
        .record_scanned(migration, 1, first, None)
        .await
        .unwrap();
    store.finish_scan(migration, 1).await.unwrap();
    let claimed = store.claim(migration, "w", LIMITS).await.unwrap();
    store
        .record_outcomes(
            claimed
                .iter()
                .map(|c| done(c, ObjectState::Copied))
                .collect(),
        )
        .await
        .unwrap();
    let tally = store.tally(migration).await.unwrap();
    assert_eq!(tally.n(ObjectState::Failed), 2);

    // The next pass lists the source again: "bad-gone" is no longer there, "good" is new.
    let pass = store.start_pass(migration, "f").await.unwrap().number;
    assert_eq!(pass, 2);
    let second = vec![
        object("a", 1, "1"),
        unreadable("bad-kept"),
        object("good", 2, "1"),
    ];
    store
        .record_scanned(migration, pass, second, None)
        .await
        .unwrap();
    // Not before the listing is complete: a scan cut short proves nothing gone.
    assert_eq!(
        store.tally(migration).await.unwrap().n(ObjectState::Failed),
        2
    );
    store.finish_scan(migration, pass).await.unwrap();
    let tally = store.tally(migration).await.unwrap();
    assert_eq!(tally.n(ObjectState::Failed), 1, "{tally:?}");
    assert_eq!(tally.n(ObjectState::SourceVanished), 1, "{tally:?}");
    let failed = store.failed(migration, None, None, 10).await.unwrap();
    let keys: Vec<&str> = failed.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["bad-kept"]);
    assert_counted(store, migration, "failed objects gone settled").await;
}

/// Failed objects put back in the queue open the last pass's listing again, when it was
/// complete, with its shards forgotten: the next run lists all of the source under that pass (a
/// name fixed by a rename is found then). Nothing put back, nothing opened.
pub(super) async fn retried_failures_open_the_last_listing_again(store: &dyn Counted) {
    let migration = store.open_migration(&spec()).await.unwrap().id;
    store.start_pass(migration, "f").await.unwrap();
    let bad = ScannedObject {
        scanned: Scanned::Unreadable {
            kind: "invalid_input".into(),
            message: "bad\u{7}: control character".into(),
        },
        ..object("bad\u{7}", 0, "")
    };
    store
        .record_scanned(migration, 1, vec![object("a", 1, "1"), bad], None)
        .await
        .unwrap();
    store
        .plan_shards(migration, 1, vec!["*".into()])
        .await
        .unwrap();
    store.finish_scan(migration, 1).await.unwrap();
    let listed_in_full = || async {
        let migration = store.find_migration("m").await.unwrap().unwrap();
        migration.last_pass.unwrap().scan_complete
    };
    assert!(listed_in_full().await);
    assert_eq!(
        store.requeue_failed(migration, Some("io")).await.unwrap(),
        0
    );
    assert!(
        listed_in_full().await,
        "nothing retried, yet the listing opened"
    );
    assert_eq!(store.requeue_failed(migration, None).await.unwrap(), 1);
    assert!(!listed_in_full().await);
    assert_eq!(store.shards_left(migration, 1).await.unwrap(), None);
    assert_counted(store, migration, "failures retried").await;

    // The next run lists again under the same pass: the renamed object is found.
    store.restart_scan(migration, 1, "f").await.unwrap();
    store
        .record_scanned(
            migration,
            1,
            vec![object("a", 1, "1"), object("bad", 4, "1")],
            None,
        )
        .await
        .unwrap();
    store.finish_scan(migration, 1).await.unwrap();
    assert!(listed_in_full().await);
    let tally = store.tally(migration).await.unwrap();
    assert_eq!(tally.n(ObjectState::Pending), 3, "{tally:?}");
    assert_counted(store, migration, "listed again").await;
}
