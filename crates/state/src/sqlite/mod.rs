//! The embedded ledger: one SQLite file in WAL mode, held by one process at a time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::Connection;

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

use schema::{SCHEMA, SCHEMA_VERSION, lacks_columns, upgrade};
use tallies::{has_counters, install_counters};

/// The SQLite ledger. Opening it to work on takes an exclusive lock on `PATH.lock`, so a second
/// process on the same file gets [`StoreError::Busy`] instead of a corrupted queue; every claim
/// left in the file therefore belongs to a process that is gone. Opening it to read
/// ([`SqliteStore::open_read_only`]) takes no lock: WAL lets readers in while a writer works.
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Whether the ledger has its counters: always, but in a ledger of an older schema read
    /// while an older godwit holds it (then tallies count the objects).
    counters: bool,
    /// The writer's lock; `None` for a reader.
    _lock: Option<File>,
}

fn db_error(path: &Path, err: impl std::fmt::Display) -> StoreError {
    let message = err.to_string();
    // What to do, for the errors a person can fix.
    let hint = if message.contains("file is not a database") {
        "; it is not a godwit ledger: move it aside, or choose another --state"
    } else if message.contains("disk is full") || message.contains("No space left") {
        "; free space on its disk, then run the same command again (what was recorded stays)"
    } else if message.contains("readonly database") || message.contains("Permission denied") {
        "; make it (and its directory) writable, or choose another --state"
    } else {
        ""
    };
    StoreError::Database {
        path: path.display().to_string(),
        message: format!("{message}{hint}"),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| db_error(path, format!("cannot create its directory: {e}")))?;
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| db_error(path, format!("cannot open its lock file: {e}")))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Busy {
                path: path.display().to_string(),
            });
        }
        let connection = Connection::open(path).map_err(|e| db_error(path, e))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(|e| db_error(path, e))?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| db_error(path, e))?;
        if version > SCHEMA_VERSION {
            return Err(db_error(
                path,
                format!("it was written by a newer godwit (schema {version}); upgrade godwit"),
            ));
        }
        // Tables first (a new ledger gets every column), then what older ledgers lack, then the
        // indexes that may name those columns.
        let (tables, indexes) = SCHEMA
            .split_once("CREATE INDEX")
            .map_or((SCHEMA, String::new()), |(tables, rest)| {
                (tables, format!("CREATE INDEX{rest}"))
            });
        connection
            .execute_batch(tables)
            .map_err(|e| db_error(path, e))?;
        upgrade(&connection).map_err(|e| db_error(path, e))?;
        connection
            .execute_batch(&indexes)
            .map_err(|e| db_error(path, e))?;
        install_counters(&connection).map_err(|e| db_error(path, e))?;
        connection
            .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(|e| db_error(path, e))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
            counters: true,
            _lock: Some(lock),
        })
    }

    /// Opens an existing ledger to read it (`godwit status`, later the dashboard), whether or
    /// not a migration is working on it: no lock is taken, and every write through it fails.
    /// A ledger of an older schema is brought up to date first when no process holds it.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_unlocked(path, false)
    }

    /// Opens an existing ledger to steer the migrations in it (`godwit pause`, `resume`,
    /// `cancel`) while one may be working on it: no lock is taken. SQLite serialises the writes
    /// with the working process's; only a migration's status may be written through it (never
    /// claims or outcomes, which the lock holder owns).
    pub fn open_to_control(path: &Path) -> Result<Self, StoreError> {
        Self::open_unlocked(path, true)
    }

    fn open_unlocked(path: &Path, writable: bool) -> Result<Self, StoreError> {
        let flags = if writable {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let open = || {
            let connection = Connection::open_with_flags(
                path,
                flags | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| db_error(path, e))?;
            connection
                .execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(|e| db_error(path, e))?;
            let version: i64 = connection
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(|e| db_error(path, e))?;
            Ok::<_, StoreError>((connection, version))
        };
        let (mut connection, mut version) = open()?;
        let stale = version <= SCHEMA_VERSION
            && lacks_columns(&connection).map_err(|e| db_error(path, e))?;
        if version < SCHEMA_VERSION || stale {
            drop(connection);
            match Self::open(path) {
                Ok(writer) => drop(writer),
                Err(StoreError::Busy { .. }) => {}
                Err(other) => return Err(other),
            }
            (connection, version) = open()?;
        }
        if version > SCHEMA_VERSION {
            return Err(db_error(
                path,
                format!("it was written by a newer godwit (schema {version}); upgrade godwit"),
            ));
        }
        let counters = has_counters(&connection).map_err(|e| db_error(path, e))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
            counters,
            _lock: None,
        })
    }

    /// Where the ledger is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the connection on a blocking thread.
    async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|e| db_error(&self.path, e))?
        .map_err(|e| db_error(&path, e))
    }
}

// Each method calls the inherent method of the same name (inherent methods come first in
// Rust's method lookup), in the module that holds its SQL: migrations, scan, claims, uploads,
// reads, tallies, partitions, listing.
#[async_trait]
impl Store for SqliteStore {
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
}

#[cfg(test)]
mod tests;
