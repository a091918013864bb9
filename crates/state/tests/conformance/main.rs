//! One suite of `Store` behaviour, run against every ledger: the embedded SQLite one, and
//! PostgreSQL (the database `scripts/test.sh` names in `GODWIT_TEST_POSTGRES`, each test in a
//! schema of its own). Under CI (`CI` set) a missing PostgreSQL fails the suite instead of
//! narrowing it to SQLite.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use godwit_state::{
    Claim, ClaimedObject, MigrationId, MigrationSpec, MigrationStatus, ObjectId, ObjectState,
    Outcome, OwnWrite, OwnWriteChange, PacketLimits, PartRecord, PartitionCounts, PgStore, Scanned,
    ScannedObject, ShardClaim, ShardMark, SourceVersion, SqliteStore, Store, StoreError,
    WorkerBeat,
};

mod claims;
mod control;
mod pages;
mod shards;
mod tallies;
mod units;
mod uploads;

/// A ledger whose counters can be checked: what they hold, and what counting the objects again
/// finds.
#[async_trait]
trait Counted: Store {
    /// What the counters hold for the migration.
    async fn counted(&self, migration: MigrationId) -> PartitionCounts;
    /// The migration's objects counted anew.
    async fn recount(&self, migration: MigrationId) -> PartitionCounts;
    /// Folds the counters' rows (PostgreSQL's triggers add rows a statement; SQLite's keep one
    /// row a key, and have nothing to fold).
    async fn fold(&self);
}

#[async_trait]
impl Counted for SqliteStore {
    async fn counted(&self, migration: MigrationId) -> PartitionCounts {
        SqliteStore::counted(self, migration).await.unwrap()
    }
    async fn recount(&self, migration: MigrationId) -> PartitionCounts {
        SqliteStore::recount(self, migration).await.unwrap()
    }
    async fn fold(&self) {}
}

#[async_trait]
impl Counted for PgStore {
    async fn counted(&self, migration: MigrationId) -> PartitionCounts {
        PgStore::counted(self, migration).await.unwrap()
    }
    async fn recount(&self, migration: MigrationId) -> PartitionCounts {
        PgStore::recount(self, migration).await.unwrap()
    }
    async fn fold(&self) {
        self.fold_counters().await.unwrap();
    }
}

/// A ledger to test, and what must live as long as it.
struct Ledger {
    name: &'static str,
    store: Box<dyn Counted>,
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
    ($($module:ident::$name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                for ledger in ledgers().await {
                    eprintln!("{}: {}", stringify!($name), ledger.name);
                    $module::$name(ledger.store.as_ref()).await;
                }
            }
        )*
    };
}

conformance!(
    control::names_keep_their_locations_and_endpoints,
    claims::claims_respect_packet_limits_and_rescans_requeue_only_changes,
    uploads::uploads_and_parts_are_kept_and_failures_requeue,
    uploads::own_writes_survive_a_new_version_and_claims_tell_an_earlier_claim,
    uploads::uploads_begun_but_unrecorded_or_no_longer_needed_are_found,
    claims::done_objects_come_in_key_order_and_can_be_requeued,
    claims::expired_leases_return_to_the_pool,
    claims::a_lost_claim_writes_nothing_over_the_new_one,
    claims::renewed_leases_do_not_expire,
    claims::released_claims_return_at_once_uncharged_and_fenced,
    control::a_status_set_is_read_back_and_kept_per_migration,
    control::worker_rows_keep_each_workers_latest_beat,
    control::the_latest_throttling_note_is_kept_per_migration,
    shards::shards_are_planned_once_handed_out_in_byte_order_and_counted_down,
    shards::a_lost_shard_claim_records_nothing,
    shards::shards_resume_where_they_were_listed_to,
    shards::a_rescan_keeps_its_shards_only_under_the_same_filter,
    shards::renewed_shard_leases_count_and_do_not_expire,
    shards::workers_planning_and_claiming_at_once_never_share_a_shard,
    units::partitions_count_their_objects_by_state,
    units::groups_are_claimed_whole_once_scanned_and_never_split,
    units::a_failed_group_says_why_and_is_requeued_whole,
    units::partitions_are_validated_then_cut_over_and_left_alone,
    units::claims_take_only_the_partitions_asked_for,
    tallies::the_counters_follow_every_change_of_state_size_and_partition,
    tallies::each_migration_keeps_counters_of_its_own,
    tallies::failed_objects_gone_from_a_complete_listing_are_settled_vanished,
    tallies::retried_failures_open_the_last_listing_again,
    pages::a_page_holds_the_keys_under_a_prefix_taken_byte_for_byte,
    pages::pages_follow_one_another_by_their_cursor,
    pages::a_page_reads_a_bounded_stretch_however_few_objects_match,
);

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
