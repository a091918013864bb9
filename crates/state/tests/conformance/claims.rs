//! Claims: packets and their limits, rescans, leases that run out or are renewed, lost and
//! released claims, objects done and requeued.

use super::*;

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
