//! Groups and partitions: counted, claimed whole, validated, cut over.

use super::*;

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
    let all: Vec<(String, godwit_state::LeaseToken)> = [a, b, c, d].into_iter().flatten().collect();
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
    // The retry opened the listing again: members of groups wait until it is complete (it may
    // bring more of them), then come whole.
    let early = store.claim(migration.id, "w", whole.clone()).await.unwrap();
    assert!(early.is_empty(), "{early:?}");
    store.restart_scan(migration.id, 1, "").await.unwrap();
    store.finish_scan(migration.id, 1).await.unwrap();
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
    // A validation that began in the millisecond of the scan may have missed it (the ledger
    // counts it changed since): this one begins later.
    tokio::time::sleep(Duration::from_millis(2)).await;
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
    let keys = |claimed: Vec<ClaimedObject>| claimed.into_iter().map(|c| c.key).collect::<Vec<_>>();
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
