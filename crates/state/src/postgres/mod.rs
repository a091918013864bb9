//! The shared ledger: PostgreSQL, for a fleet of workers on several machines.
//!
//! The same tables as the SQLite ledger, in the schema the connection's `search_path` names
//! (`public` unless the URL says otherwise, e.g. `?options=-csearch_path%3Dgodwit`). Keys are
//! compared byte by byte (`COLLATE "C"`), as S3 orders them. Claims take rows with
//! `FOR UPDATE SKIP LOCKED`, so workers never wait on each other's packets; a claim left by a
//! worker that is gone returns to the pool once its lease expires.
//!
//! Schema changes are versioned (`godwit_schema`) and applied in order when a store opens, under
//! an advisory lock so that workers starting together apply each once; a ledger written by a
//! newer godwit is refused.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::{
    Claim, ClaimedObject, ControlState, Cutover, DoneObject, FailedObject, KnownObject,
    LedgerObject, Migration, MigrationId, MigrationSpec, MigrationStatus, Notice, ObjectId,
    ObjectPage, ObjectQuery, Outcome, PacketLimits, PartRecord, PartitionTally, Pass, PassCounts,
    Problem, ScannedObject, ShardClaim, ShardMark, SourceVersion, StaleUpload, Store, StoreError,
    Tally, WorkerBeat, WorkerRecord,
};

mod claims;
mod listing;
mod migrations;
mod partitions;
mod reads;
mod scan;
mod schema;
mod tallies;
mod uploads;

pub use claims::CLAIM;
pub use listing::OBJECTS_PAGE;
pub use reads::FAILED_PAGE;

/// Connections to the database at once, per process.
const POOL_SIZE: usize = 8;

/// An error with its causes: the driver says only "db error" when the server refused something,
/// and the server's words (`database "x" does not exist`, `deadlock detected`) are its cause.
fn explained(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        cause = inner.source();
    }
    message
}

/// The PostgreSQL ledger.
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: String,
}

/// `url` with any password taken out, for messages. The credentials end at the last `@` before
/// the query, so a password with an `@` in it (or a `/`) is taken out whole.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..query].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

impl PgStore {
    /// Connects to the ledger at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`) and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = without_password(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Database {
            path: shown.clone(),
            message: format!(
                "not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE"
            ),
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Database {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        let store = Self { pool, shown };
        store.migrate_schema().await?;
        Ok(store)
    }

    /// Where the ledger is, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: self.shown.clone(),
            message: error.to_string(),
        }
    }

    /// A driver or pool error, with what the server said (see `explained`).
    fn db(&self, error: impl std::error::Error) -> StoreError {
        self.error(explained(&error))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            // The server's or the network's own words, not the pool's wrapping of them.
            let cause = match &e {
                deadpool_postgres::PoolError::Backend(backend) => explained(backend),
                other => explained(other),
            };
            let cause = match cause.rfind(" (os error ") {
                Some(at) if cause.ends_with(')') => cause[..at].to_owned(),
                _ => cause,
            };
            self.error(format!(
                "cannot connect ({cause}); check that PostgreSQL runs there and accepts this user"
            ))
        })
    }
}

// Each method calls the inherent method of the same name (inherent methods come first in
// Rust's method lookup), in the module that holds its SQL: migrations, scan, claims, uploads,
// reads, tallies, partitions, listing.
#[async_trait]
impl Store for PgStore {
    async fn open_migration(&self, spec: &MigrationSpec) -> Result<Migration, StoreError> {
        self.open_migration(spec).await
    }

    async fn set_status(
        &self,
        migration: MigrationId,
        status: MigrationStatus,
    ) -> Result<(), StoreError> {
        self.set_status(migration, status).await
    }

    async fn control_of(&self, migration: MigrationId) -> Result<ControlState, StoreError> {
        self.control_of(migration).await
    }

    async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.note_throttled(migration, at).await
    }

    async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        self.beat(beat).await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.workers().await
    }

    async fn save_options(&self, migration: MigrationId, options: &str) -> Result<(), StoreError> {
        self.save_options(migration, options).await
    }

    async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError> {
        self.find_migration(name).await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        self.migrations().await
    }

    async fn start_pass(&self, migration: MigrationId, filter: &str) -> Result<Pass, StoreError> {
        self.start_pass(migration, filter).await
    }

    async fn restart_scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &str,
    ) -> Result<(), StoreError> {
        self.restart_scan(migration, pass, filter).await
    }

    async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<ShardMark>,
    ) -> Result<(), StoreError> {
        self.record_scanned(migration, pass, batch, mark).await
    }

    async fn plan_shards(
        &self,
        migration: MigrationId,
        pass: u32,
        names: Vec<String>,
    ) -> Result<u64, StoreError> {
        self.plan_shards(migration, pass, names).await
    }

    async fn shards_left(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.shards_left(migration, pass).await
    }

    async fn claim_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ShardClaim>, StoreError> {
        self.claim_shard(migration, pass, worker, lease).await
    }

    async fn finish_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        shard: &ShardClaim,
    ) -> Result<u64, StoreError> {
        self.finish_shard(migration, pass, shard).await
    }

    async fn finish_scan(&self, migration: MigrationId, pass: u32) -> Result<(), StoreError> {
        self.finish_scan(migration, pass).await
    }

    async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        self.claim(migration, worker, limits).await
    }

    async fn recover_abandoned(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.recover_abandoned(migration).await
    }

    async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.recover_expired(migration).await
    }

    async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        self.release_claims(worker).await
    }

    async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        self.held_by_others(migration, worker).await
    }

    async fn renew_leases(&self, worker: &str, lease: Duration) -> Result<u64, StoreError> {
        self.renew_leases(worker, lease).await
    }

    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        self.record_outcomes(outcomes).await
    }

    async fn record_upload_intent(&self, claim: Claim, at: SystemTime) -> Result<(), StoreError> {
        self.record_upload_intent(claim, at).await
    }

    async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError> {
        self.record_upload(claim, upload_id, part_size, source)
            .await
    }

    async fn record_part(&self, claim: Claim, part: PartRecord) -> Result<(), StoreError> {
        self.record_part(claim, part).await
    }

    async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        self.clear_upload(claim).await
    }

    async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        self.forget_stale_upload(object).await
    }

    async fn stale_uploads(&self, migration: MigrationId) -> Result<Vec<StaleUpload>, StoreError> {
        self.stale_uploads(migration).await
    }

    async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError> {
        self.tally(migration).await
    }

    async fn partitions(&self, migration: MigrationId) -> Result<Vec<PartitionTally>, StoreError> {
        self.partitions(migration).await
    }

    async fn objects_page(
        &self,
        migration: MigrationId,
        query: ObjectQuery,
    ) -> Result<ObjectPage, StoreError> {
        self.objects_page(migration, query).await
    }

    async fn record_validation(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        started: i64,
        passed: bool,
        report: &str,
    ) -> Result<(), StoreError> {
        self.record_validation(migration, partition, started, passed, report)
            .await
    }

    async fn cut_over(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        at: i64,
    ) -> Result<Cutover, StoreError> {
        self.cut_over(migration, partition, at).await
    }

    async fn record_notice(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        notice: &Notice,
    ) -> Result<(), StoreError> {
        self.record_notice(migration, partition, notice).await
    }

    async fn objects_after(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerObject>, StoreError> {
        self.objects_after(migration, after, limit).await
    }

    async fn pass_counts(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<PassCounts, StoreError> {
        self.pass_counts(migration, pass).await
    }

    async fn problems(
        &self,
        migration: MigrationId,
        limit: u32,
    ) -> Result<Vec<Problem>, StoreError> {
        self.problems(migration, limit).await
    }

    async fn group_problem(
        &self,
        migration: MigrationId,
        group: &str,
    ) -> Result<Option<String>, StoreError> {
        self.group_problem(migration, group).await
    }

    async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.requeue_failed(migration, class).await
    }

    async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<FailedObject>, StoreError> {
        self.failed(migration, class, after, limit).await
    }

    async fn done_objects(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DoneObject>, StoreError> {
        self.done_objects(migration, after, limit).await
    }

    async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        self.requeue(objects).await
    }

    async fn lookup(
        &self,
        migration: MigrationId,
        keys: Vec<String>,
    ) -> Result<Vec<KnownObject>, StoreError> {
        self.lookup(migration, keys).await
    }
}

#[cfg(test)]
mod shown {
    use super::without_password;

    #[test]
    fn a_password_is_taken_out_whole_whatever_it_holds() {
        assert_eq!(
            without_password("postgres://app:s3cret@db:5432/ledger?options=-c"),
            "postgres://app@db:5432/ledger?options=-c"
        );
        // Found by the fuzz run's note: the part after an '@' in the password was shown.
        assert_eq!(
            without_password("postgres://app:p@ss/w@rd@db/ledger"),
            "postgres://app@db/ledger"
        );
        assert_eq!(
            without_password("postgres://db/ledger?user=a@b"),
            "postgres://db/ledger?user=a@b"
        );
        assert_eq!(without_password("ledger.db"), "ledger.db");
    }
}
