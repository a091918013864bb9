//! Shards of a pass's listing: planned once, claimed one worker at a time, resumed.

use super::*;

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
pub(super) async fn workers_planning_and_claiming_at_once_never_share_a_shard(store: &dyn Store) {
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
