//! Multipart uploads and their parts, godwit's own writes at a key, and uploads no longer needed.

use super::*;

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

pub(super) async fn uploads_begun_but_unrecorded_or_no_longer_needed_are_found(store: &dyn Store) {
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
