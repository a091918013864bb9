//! The embedded ledger: one SQLite file in WAL mode, held by one process at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    Claim, ClaimedObject, ControlState, DoneObject, FailedObject, KnownObject, LeaseToken,
    Migration, MigrationId, MigrationSpec, MigrationStatus, ObjectId, ObjectState, Outcome,
    OwnWrite, OwnWriteChange, PacketLimits, PartRecord, PartitionTally, Pass, Problem,
    ScannedObject, ShardClaim, ShardMark, SourceVersion, StaleUpload, Store, StoreError, Tally,
    UploadRecord, WorkerBeat, WorkerRecord, from_millis, millis, now, scanned_columns,
};

/// 2: uploads bound to a source version and begun before their id is known, godwit's own
/// writes, first claims, the filter of each pass, the endpoints of each migration, the metadata
/// sent with each object.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS migrations (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_url TEXT NOT NULL,
    dest_url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    source_endpoint TEXT,
    dest_endpoint TEXT,
    options TEXT,
    status TEXT,
    throttled_at INTEGER
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    migration TEXT,
    packets_in_flight INTEGER NOT NULL,
    objects_in_flight INTEGER NOT NULL,
    bytes_per_second INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS passes (
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    scan_completed_at INTEGER,
    filter TEXT,
    PRIMARY KEY (migration_id, number)
);
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    version TEXT NOT NULL,
    state INTEGER NOT NULL,
    pass INTEGER NOT NULL,
    group_key TEXT,
    partition_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    checksum TEXT,
    dest_etag TEXT,
    dest_version TEXT,
    verified_by TEXT,
    error_kind TEXT,
    last_error TEXT,
    lease_owner TEXT,
    lease_expires INTEGER,
    upload_id TEXT,
    part_size INTEGER,
    updated_at INTEGER NOT NULL,
    upload_size INTEGER,
    upload_version TEXT,
    upload_started_at INTEGER,
    written_etag TEXT,
    written_version TEXT,
    first_claimed_at INTEGER,
    metadata TEXT,
    lease_token INTEGER,
    UNIQUE (migration_id, key)
);
CREATE TABLE IF NOT EXISTS parts (
    object_id INTEGER NOT NULL REFERENCES objects(id),
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT,
    PRIMARY KEY (object_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    pass INTEGER NOT NULL,
    name TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires INTEGER,
    lease_token INTEGER,
    after TEXT,
    PRIMARY KEY (migration_id, pass, name)
);
CREATE INDEX IF NOT EXISTS objects_pending ON objects (migration_id, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS objects_groups ON objects (migration_id, group_key) WHERE group_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_in_progress ON objects (migration_id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS objects_problems ON objects (migration_id, id) WHERE state IN (4, 7);
CREATE INDEX IF NOT EXISTS objects_uploads ON objects (migration_id)
    WHERE upload_id IS NOT NULL OR upload_started_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS shards_leases ON shards (lease_owner) WHERE state = 1;
";

/// Columns added since schema 1, added to older ledgers as they are opened (times are
/// milliseconds since the Unix epoch).
const ADDED_COLUMNS: [(&str, &str, &str); 14] = [
    ("migrations", "throttled_at", "INTEGER"),
    ("migrations", "status", "TEXT"),
    ("migrations", "options", "TEXT"),
    ("objects", "lease_token", "INTEGER"),
    ("objects", "metadata", "TEXT"),
    ("migrations", "source_endpoint", "TEXT"),
    ("migrations", "dest_endpoint", "TEXT"),
    ("passes", "filter", "TEXT"),
    ("objects", "upload_size", "INTEGER"),
    ("objects", "upload_version", "TEXT"),
    ("objects", "upload_started_at", "INTEGER"),
    ("objects", "written_etag", "TEXT"),
    ("objects", "written_version", "TEXT"),
    ("objects", "first_claimed_at", "INTEGER"),
];

/// Brings a ledger of an older schema up to date: adds the columns it lacks. New ledgers get
/// them from `SCHEMA` directly.
fn upgrade(connection: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        if !has_column(connection, table, column)? {
            connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn has_column(connection: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
        params![column],
        |row| row.get(0),
    )
}

/// Whether the ledger lacks a column this godwit reads.
fn lacks_columns(connection: &Connection) -> rusqlite::Result<bool> {
    for (table, column, _) in ADDED_COLUMNS {
        if !has_column(connection, table, column)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The SQLite ledger. Opening it to work on takes an exclusive lock on `PATH.lock`, so a second
/// process on the same file gets [`StoreError::Busy`] instead of a corrupted queue; every claim
/// left in the file therefore belongs to a process that is gone. Opening it to read
/// ([`SqliteStore::open_read_only`]) takes no lock: WAL lets readers in while a writer works.
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// The writer's lock; `None` for a reader.
    _lock: Option<File>,
}

fn db_error(path: &Path, err: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        path: path.display().to_string(),
        message: err.to_string(),
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
        connection
            .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(|e| db_error(path, e))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
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
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
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

/// A fencing token no earlier claim of this file used: the time in nanoseconds, made to grow
/// within a run.
fn next_token() -> LeaseToken {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let token = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .map_or(now, |last| now.max(last + 1));
    LeaseToken(token)
}

/// `Ok` when a write about a claimed object changed its row; the lease was lost otherwise.
fn held(changed: usize, claim: Claim) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(claim.id.0))
    }
}

/// `Ok` when a write about a claimed shard changed its row; the lease was lost otherwise (the
/// error names the claim's token: a shard has no row id).
fn shard_held(changed: usize, token: LeaseToken) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::ShardLost(token.0))
    }
}

/// How many shards the pass has, and how many of them are not listed to their end yet.
fn count_shards(
    connection: &Connection,
    migration: MigrationId,
    pass: u32,
) -> rusqlite::Result<(u64, u64)> {
    connection
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(state != 2), 0) FROM shards
             WHERE migration_id = ?1 AND pass = ?2",
        )?
        .query_row(params![migration.0, pass], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
}

/// A row as a claim returns it.
struct Claimed {
    key: String,
    size: u64,
    version: String,
    attempts: u32,
    upload_id: Option<String>,
    part_size: Option<i64>,
    upload_size: Option<i64>,
    upload_version: Option<String>,
    upload_started_at: Option<i64>,
    written_etag: Option<String>,
    written_version: Option<String>,
}

fn load_migration(connection: &Connection, name: &str) -> rusqlite::Result<Option<Migration>> {
    let found = connection
        .query_row(
            "SELECT id, source_url, dest_url, source_endpoint, dest_endpoint, options, status FROM migrations WHERE name = ?1",
            params![name],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    MigrationSpec {
                        name: name.to_owned(),
                        source_url: row.get(1)?,
                        dest_url: row.get(2)?,
                        source_endpoint: row.get(3)?,
                        dest_endpoint: row.get(4)?,
                    },
                    row.get::<_, Option<String>>(5)?,
                    MigrationStatus::from_name(row.get::<_, Option<String>>(6)?.as_deref()),
                ))
            },
        )
        .optional()?;
    let Some((id, spec, options, status)) = found else {
        return Ok(None);
    };
    let last_pass = connection
        .query_row(
            "SELECT number, scan_completed_at IS NOT NULL, filter FROM passes
             WHERE migration_id = ?1 ORDER BY number DESC LIMIT 1",
            params![id],
            |row| {
                Ok(Pass {
                    number: row.get(0)?,
                    scan_complete: row.get(1)?,
                    filter: row.get(2)?,
                })
            },
        )
        .optional()?;
    Ok(Some(Migration {
        id: MigrationId(id),
        spec,
        options,
        status,
        last_pass,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn open_migration(&self, spec: &MigrationSpec) -> Result<Migration, StoreError> {
        let wanted = spec.clone();
        let migration = self
            .with(move |connection| {
                let spec = wanted;
                if let Some(mut found) = load_migration(connection, &spec.name)? {
                    // Ledgers from before godwit recorded endpoints learn them on first use.
                    if found.spec.source_endpoint.is_none() && found.spec.dest_endpoint.is_none()
                        && found.spec.source_url == spec.source_url
                        && found.spec.dest_url == spec.dest_url
                    {
                        connection.execute(
                            "UPDATE migrations SET source_endpoint = ?2, dest_endpoint = ?3 WHERE id = ?1",
                            params![found.id.0, spec.source_endpoint, spec.dest_endpoint],
                        )?;
                        found.spec = spec;
                    }
                    return Ok(found);
                }
                connection.execute(
                    "INSERT INTO migrations (name, source_url, dest_url, created_at, source_endpoint, dest_endpoint)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![spec.name, spec.source_url, spec.dest_url, now(), spec.source_endpoint, spec.dest_endpoint],
                )?;
                Ok(Migration {
                    id: MigrationId(connection.last_insert_rowid()),
                    spec,
                    options: None,
                    status: MigrationStatus::Running,
                    last_pass: None,
                })
            })
            .await?;
        if migration.spec != *spec {
            return Err(StoreError::NameTaken {
                name: spec.name.clone(),
                recorded: migration.spec.describe(),
            });
        }
        Ok(migration)
    }

    async fn set_status(
        &self,
        migration: MigrationId,
        status: MigrationStatus,
    ) -> Result<(), StoreError> {
        self.with(move |connection| {
            connection.execute(
                "UPDATE migrations SET status = ?2 WHERE id = ?1",
                params![migration.0, status.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn control_of(&self, migration: MigrationId) -> Result<ControlState, StoreError> {
        self.with(move |connection| {
            let (name, throttled_at): (Option<String>, Option<i64>) = connection
                .prepare_cached("SELECT status, throttled_at FROM migrations WHERE id = ?1")?
                .query_row(params![migration.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(ControlState {
                status: MigrationStatus::from_name(name.as_deref()),
                throttled_at: throttled_at.map(from_millis),
            })
        })
        .await
    }

    async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        let at = millis(at);
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE migrations SET throttled_at = MAX(COALESCE(throttled_at, 0), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![migration.0, at])?;
            Ok(())
        })
        .await
    }

    async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        let beat = beat.clone();
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO workers (name, host, pid, started_at, heartbeat_at, migration,
                       packets_in_flight, objects_in_flight, bytes_per_second)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    beat.name,
                    beat.host,
                    beat.pid,
                    beat.started_at,
                    now(),
                    beat.migration,
                    beat.packets_in_flight as i64,
                    beat.objects_in_flight as i64,
                    beat.bytes_per_second as i64
                ])?;
            Ok(())
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT name, host, pid, started_at, migration, packets_in_flight,
                   objects_in_flight, bytes_per_second, heartbeat_at FROM workers ORDER BY heartbeat_at DESC, name",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(WorkerRecord {
                    beat: WorkerBeat {
                        name: row.get(0)?,
                        host: row.get(1)?,
                        pid: row.get(2)?,
                        started_at: row.get(3)?,
                        migration: row.get(4)?,
                        packets_in_flight: row.get::<_, i64>(5)? as u64,
                        objects_in_flight: row.get::<_, i64>(6)? as u64,
                        bytes_per_second: row.get::<_, i64>(7)? as u64,
                    },
                    heartbeat_at: row.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn save_options(&self, migration: MigrationId, options: &str) -> Result<(), StoreError> {
        let options = options.to_owned();
        self.with(move |connection| {
            connection.execute(
                "UPDATE migrations SET options = ?2 WHERE id = ?1",
                params![migration.0, options],
            )?;
            Ok(())
        })
        .await
    }

    async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError> {
        let name = name.to_owned();
        self.with(move |connection| load_migration(connection, &name))
            .await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        self.with(|connection| {
            let names: Vec<String> = connection
                .prepare("SELECT name FROM migrations ORDER BY id")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut migrations = Vec::with_capacity(names.len());
            for name in names {
                migrations.extend(load_migration(connection, &name)?);
            }
            Ok(migrations)
        })
        .await
    }

    async fn start_pass(&self, migration: MigrationId, filter: &str) -> Result<Pass, StoreError> {
        let filter = filter.to_owned();
        self.with(move |connection| {
            let number: u32 = connection.query_row(
                "INSERT INTO passes (migration_id, number, started_at, filter)
                 SELECT ?1, COALESCE(MAX(number), 0) + 1, ?2, ?3 FROM passes WHERE migration_id = ?1
                 RETURNING number",
                params![migration.0, now(), filter],
                |row| row.get(0),
            )?;
            Ok(Pass {
                number,
                scan_complete: false,
                filter: Some(filter),
            })
        })
        .await
    }

    async fn restart_scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &str,
    ) -> Result<(), StoreError> {
        let filter = filter.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let recorded: Option<String> = transaction
                .query_row(
                    "SELECT filter FROM passes WHERE migration_id = ?1 AND number = ?2",
                    params![migration.0, pass],
                    |row| row.get(0),
                )
                .optional()?
                .flatten();
            // Another filter lists other keys: the shards are planned and listed afresh.
            if recorded.as_deref() != Some(filter.as_str()) {
                transaction.execute(
                    "DELETE FROM shards WHERE migration_id = ?1 AND pass = ?2",
                    params![migration.0, pass],
                )?;
            }
            transaction.execute(
                "UPDATE passes SET scan_completed_at = NULL, filter = ?3
                 WHERE migration_id = ?1 AND number = ?2",
                params![migration.0, pass, filter],
            )?;
            transaction.commit()
        })
        .await
    }

    async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<ShardMark>,
    ) -> Result<(), StoreError> {
        let token = mark.as_ref().map(|mark| mark.token);
        let changed = self.with(move |connection| {
            let transaction = connection.transaction()?;
            if let Some(mark) = &mark {
                let n = transaction
                    .prepare_cached(
                        "UPDATE shards SET after = ?4
                         WHERE migration_id = ?1 AND pass = ?2 AND name = ?3 AND state = 1
                           AND lease_token = ?5",
                    )?
                    .execute(params![migration.0, pass, mark.name, mark.after, mark.token.0])?;
                if n != 1 {
                    // The shard is another worker's now: the transaction rolls back as it drops.
                    return Ok(n);
                }
            }
            {
                // An object already claimed is left to its worker. One that changed is queued again
                // from scratch; one that never started takes the current filters' verdict.
                let mut upsert = transaction.prepare_cached(
                    "INSERT INTO objects (migration_id, key, size, version, state, pass, error_kind, last_error, updated_at,
                       group_key, partition_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (migration_id, key) DO UPDATE SET
                       pass = excluded.pass,
                       state = CASE
                         WHEN objects.state = 1 THEN objects.state
                         WHEN objects.size != excluded.size OR objects.version != excluded.version
                           OR objects.state IN (0, 5) THEN excluded.state
                         ELSE objects.state END,
                       attempts = CASE
                         WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version)
                           THEN 0 ELSE objects.attempts END,
                       first_claimed_at = CASE
                         WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version)
                           THEN NULL ELSE objects.first_claimed_at END,
                       error_kind = CASE
                         WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version
                           OR objects.state IN (0, 5)) THEN excluded.error_kind
                         ELSE objects.error_kind END,
                       last_error = CASE
                         WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version
                           OR objects.state IN (0, 5)) THEN excluded.last_error
                         ELSE objects.last_error END,
                       size = CASE WHEN objects.state = 1 THEN objects.size ELSE excluded.size END,
                       version = CASE WHEN objects.state = 1 THEN objects.version ELSE excluded.version END,
                       group_key = CASE WHEN objects.state = 1 THEN objects.group_key ELSE excluded.group_key END,
                       partition_key = CASE WHEN objects.state = 1 THEN objects.partition_key ELSE excluded.partition_key END,
                       updated_at = excluded.updated_at
                     WHERE objects.size != excluded.size OR objects.version != excluded.version
                       OR objects.state IN (0, 5) OR objects.pass != excluded.pass
                       OR objects.group_key IS NOT excluded.group_key
                       OR objects.partition_key IS NOT excluded.partition_key",
                )?;
                let at = now();
                for object in &batch {
                    let (state, kind, message) = scanned_columns(&object.scanned);
                    upsert.execute(params![
                        migration.0,
                        object.key,
                        object.size as i64,
                        object.version,
                        state as i64,
                        pass,
                        kind,
                        message,
                        at,
                        object.group,
                        object.partition
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(1)
        })
        .await?;
        match token {
            Some(token) => shard_held(changed, token),
            None => Ok(()),
        }
    }

    async fn plan_shards(
        &self,
        migration: MigrationId,
        pass: u32,
        names: Vec<String>,
    ) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            if count_shards(&transaction, migration, pass)?.0 == 0 {
                let mut insert = transaction.prepare_cached(
                    "INSERT OR IGNORE INTO shards (migration_id, pass, name) VALUES (?1, ?2, ?3)",
                )?;
                for name in &names {
                    insert.execute(params![migration.0, pass, name])?;
                }
            }
            let (all, _) = count_shards(&transaction, migration, pass)?;
            transaction.commit()?;
            Ok(all)
        })
        .await
    }

    async fn shards_left(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.with(move |connection| {
            let (all, left) = count_shards(connection, migration, pass)?;
            Ok((all > 0).then_some(left))
        })
        .await
    }

    async fn claim_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ShardClaim>, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let at = now();
            // Names compare byte by byte (SQLite's BINARY collation), as S3 orders keys.
            let free = transaction
                .prepare_cached(
                    "SELECT name, after FROM shards
                     WHERE migration_id = ?1 AND pass = ?2
                       AND (state = 0 OR (state = 1 AND lease_expires <= ?3))
                     ORDER BY name LIMIT 1",
                )?
                .query_row(params![migration.0, pass, at], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                })
                .optional()?;
            let Some((name, after)) = free else {
                return Ok(None);
            };
            let token = next_token();
            transaction
                .prepare_cached(
                    "UPDATE shards SET state = 1, lease_owner = ?4, lease_expires = ?5, lease_token = ?6
                     WHERE migration_id = ?1 AND pass = ?2 AND name = ?3",
                )?
                .execute(params![
                    migration.0,
                    pass,
                    name,
                    worker,
                    at + lease.as_secs() as i64,
                    token.0
                ])?;
            transaction.commit()?;
            Ok(Some(ShardClaim { name, after, token }))
        })
        .await
    }

    async fn finish_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        shard: &ShardClaim,
    ) -> Result<u64, StoreError> {
        let name = shard.name.clone();
        let token = shard.token;
        let (changed, left) = self
            .with(move |connection| {
                let transaction = connection.transaction()?;
                let n = transaction
                    .prepare_cached(
                        "UPDATE shards SET state = 2, lease_owner = NULL, lease_expires = NULL
                         WHERE migration_id = ?1 AND pass = ?2 AND name = ?3 AND state = 1
                           AND lease_token = ?4",
                    )?
                    .execute(params![migration.0, pass, name, token.0])?;
                let (_, left) = count_shards(&transaction, migration, pass)?;
                transaction.commit()?;
                Ok((n, left))
            })
            .await?;
        shard_held(changed, token).map(|()| left)
    }

    async fn finish_scan(&self, migration: MigrationId, pass: u32) -> Result<(), StoreError> {
        self.with(move |connection| {
            connection.execute(
                "UPDATE passes SET scan_completed_at = ?3 WHERE migration_id = ?1 AND number = ?2",
                params![migration.0, pass, now()],
            )?;
            Ok(())
        })
        .await
    }

    async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let mut claimed = Vec::new();
            {
                // Whole groups: none before the scan is complete, so a group has all its objects.
                let groups_ready = limits.whole_groups
                    && transaction
                        .prepare_cached(
                            "SELECT scan_completed_at IS NOT NULL FROM passes WHERE migration_id = ?1
                             ORDER BY number DESC LIMIT 1",
                        )?
                        .query_row(params![migration.0], |row| row.get::<_, bool>(0))
                        .optional()?
                        .unwrap_or(false);
                let mut candidates = transaction.prepare_cached(
                    "SELECT id, size, first_claimed_at, group_key FROM objects
                     WHERE migration_id = ?1 AND state = 0 AND (?3 OR group_key IS NULL)
                     ORDER BY id LIMIT ?2",
                )?;
                let at = millis(SystemTime::now());
                let mut ids = Vec::new();
                let mut taken = std::collections::HashSet::new();
                let mut groups = Vec::new();
                let mut bytes = 0u64;
                let everything = !limits.whole_groups;
                let mut rows =
                    candidates.query(params![migration.0, limits.max_objects, everything || groups_ready])?;
                while let Some(row) = rows.next()? {
                    let size = row.get::<_, i64>(1)? as u64;
                    if !ids.is_empty() && bytes + size > limits.max_bytes {
                        break;
                    }
                    bytes += size;
                    let id = row.get::<_, i64>(0)?;
                    taken.insert(id);
                    ids.push((id, row.get::<_, Option<i64>>(2)?));
                    if limits.whole_groups
                        && let Some(group) = row.get::<_, Option<String>>(3)?
                        && !groups.contains(&group)
                    {
                        groups.push(group);
                    }
                }
                drop(rows);
                // The rest of each group comes along, whatever the limits.
                let mut members = transaction.prepare_cached(
                    "SELECT id, first_claimed_at FROM objects
                     WHERE migration_id = ?1 AND group_key = ?2 AND state = 0 ORDER BY id",
                )?;
                for group in &groups {
                    let mut rows = members.query(params![migration.0, group])?;
                    while let Some(row) = rows.next()? {
                        let id = row.get::<_, i64>(0)?;
                        if taken.insert(id) {
                            ids.push((id, row.get::<_, Option<i64>>(1)?));
                        }
                    }
                }
                let expires = now() + limits.lease.as_secs() as i64;
                let token = next_token();
                // A `first_claimed_at` read before this claim sets it means an earlier claim.
                let mut take = transaction.prepare_cached(
                    "UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = ?2, lease_expires = ?3,
                       first_claimed_at = COALESCE(first_claimed_at, ?4), lease_token = ?5
                     WHERE id = ?1
                     RETURNING key, size, version, attempts, upload_id, part_size, upload_size, upload_version,
                       upload_started_at, written_etag, written_version",
                )?;
                let mut parts = transaction.prepare_cached(
                    "SELECT part_number, etag, checksum, size, md5 FROM parts WHERE object_id = ?1 ORDER BY part_number",
                )?;
                for (id, earlier_claim_at) in ids {
                    let row = take.query_row(params![id, worker, expires, at, token.0], |row| {
                        Ok(Claimed {
                            key: row.get(0)?,
                            size: row.get::<_, i64>(1)? as u64,
                            version: row.get(2)?,
                            attempts: row.get(3)?,
                            upload_id: row.get(4)?,
                            part_size: row.get(5)?,
                            upload_size: row.get(6)?,
                            upload_version: row.get(7)?,
                            upload_started_at: row.get(8)?,
                            written_etag: row.get(9)?,
                            written_version: row.get(10)?,
                        })
                    })?;
                    let source = match (row.upload_size, row.upload_version) {
                        (Some(size), Some(version)) => Some(SourceVersion { size: size as u64, version }),
                        _ => None,
                    };
                    let unrecorded_upload_since = match &row.upload_id {
                        None => row.upload_started_at.map(from_millis),
                        Some(_) => None,
                    };
                    let upload = match row.upload_id {
                        Some(upload_id) => Some(UploadRecord {
                            upload_id,
                            part_size: row.part_size.unwrap_or(0) as u64,
                            source,
                            parts: parts
                                .query_map(params![id], |row| {
                                    Ok(PartRecord {
                                        part_number: row.get(0)?,
                                        etag: row.get(1)?,
                                        checksum: row.get(2)?,
                                        size: row.get::<_, i64>(3)? as u64,
                                        md5: row.get(4)?,
                                    })
                                })?
                                .collect::<rusqlite::Result<_>>()?,
                        }),
                        None => None,
                    };
                    let own_write = (row.written_etag.is_some() || row.written_version.is_some())
                        .then_some(OwnWrite {
                            etag: row.written_etag,
                            version_id: row.written_version,
                        });
                    claimed.push(ClaimedObject {
                        id: ObjectId(id),
                        token,
                        key: row.key,
                        size: row.size,
                        version: row.version,
                        attempts: row.attempts,
                        upload,
                        own_write,
                        earlier_claim_at: earlier_claim_at.map(from_millis),
                        unrecorded_upload_since,
                    });
                }
            }
            transaction.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn recover_abandoned(&self, migration: MigrationId) -> Result<u64, StoreError> {
        // The lock taken in `open` means no other process works on this file: every claim in it
        // was left by a process that is gone.
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1",
                params![migration.0],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1",
                params![migration.0],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let at = now();
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1 AND lease_expires <= ?2",
                params![migration.0, at],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1 AND lease_expires <= ?2",
                params![migration.0, at],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL,
                   attempts = MAX(attempts - 1, 0)
                 WHERE lease_owner = ?1 AND state = 1",
                params![worker],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE lease_owner = ?1 AND state = 1",
                params![worker],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            connection.query_row(
                "SELECT COUNT(*) FROM objects WHERE migration_id = ?1 AND state = 1
                   AND lease_owner IS NOT ?2",
                params![migration.0, worker],
                |row| row.get::<_, i64>(0).map(|n| n as u64),
            )
        })
        .await
    }

    async fn renew_leases(&self, worker: &str, lease: Duration) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let expires = now() + lease.as_secs() as i64;
            let objects = transaction
                .prepare_cached(
                    "UPDATE objects SET lease_expires = ?2 WHERE lease_owner = ?1 AND state = 1",
                )?
                .execute(params![worker, expires])?;
            let shards = transaction
                .prepare_cached(
                    "UPDATE shards SET lease_expires = ?2 WHERE lease_owner = ?1 AND state = 1",
                )?
                .execute(params![worker, expires])?;
            transaction.commit()?;
            Ok((objects + shards) as u64)
        })
        .await
    }

    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                // ?13: 0 keeps godwit's own write, 1 sets it to ?14/?15, 2 forgets it.
                let mut update = transaction.prepare_cached(
                    "UPDATE objects SET state = ?2, size = ?3, version = ?4, checksum = COALESCE(?5, checksum),
                       dest_etag = ?6, dest_version = ?7, verified_by = ?8, error_kind = ?9, last_error = ?10,
                       lease_owner = NULL, lease_expires = NULL, updated_at = ?11, attempts = ?12,
                       written_etag = CASE ?13 WHEN 0 THEN written_etag WHEN 1 THEN ?14 ELSE NULL END,
                       written_version = CASE ?13 WHEN 0 THEN written_version WHEN 1 THEN ?15 ELSE NULL END,
                       metadata = COALESCE(?16, metadata)
                     WHERE id = ?1 AND state = 1 AND lease_token IS ?17",
                )?;
                let at = now();
                let mut fenced = 0u64;
                for outcome in &outcomes {
                    let (kind, message) = match &outcome.error {
                        Some((kind, message)) => (Some(kind.as_str()), Some(message.as_str())),
                        None => (None, None),
                    };
                    let (own, own_etag, own_version) = match &outcome.own_write {
                        OwnWriteChange::Keep => (0, None, None),
                        OwnWriteChange::Set(write) => {
                            (1, write.etag.as_deref(), write.version_id.as_deref())
                        }
                        OwnWriteChange::Forget => (2, None, None),
                    };
                    if update.execute(params![
                        outcome.id.0,
                        outcome.state as i64,
                        outcome.size as i64,
                        outcome.version,
                        outcome.checksum,
                        outcome.dest_etag,
                        outcome.dest_version,
                        outcome.verified_by,
                        kind,
                        message,
                        at,
                        outcome.attempts,
                        own,
                        own_etag,
                        own_version,
                        outcome.metadata,
                        outcome.token.0
                    ])? == 0
                    {
                        fenced += 1;
                    }
                }
                drop(update);
                transaction.commit()?;
                Ok(fenced)
            }
        })
        .await
    }

    async fn record_upload_intent(&self, claim: Claim, at: SystemTime) -> Result<(), StoreError> {
        self.with(move |connection| {
            let n = connection.execute(
                "UPDATE objects SET upload_started_at = ?2 WHERE id = ?1 AND state = 1 AND lease_token IS ?3",
                params![claim.id.0, millis(at), claim.token.0],
            )?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError> {
        let upload_id = upload_id.to_owned();
        let source = source.clone();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = ?2, part_size = ?3, upload_size = ?4, upload_version = ?5
                 WHERE id = ?1 AND state = 1 AND lease_token IS ?6",
                params![claim.id.0, upload_id, part_size as i64, source.size as i64, source.version, claim.token.0],
            )?;
            if n == 1 {
                transaction.execute("DELETE FROM parts WHERE object_id = ?1", params![claim.id.0])?;
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    async fn record_part(&self, claim: Claim, part: PartRecord) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let held = transaction
                .prepare_cached("SELECT COUNT(*) FROM objects WHERE id = ?1 AND state = 1 AND lease_token IS ?2")?
                .query_row(params![claim.id.0, claim.token.0], |row| row.get::<_, i64>(0))?;
            if held == 1 {
                transaction
                    .prepare_cached(
                        "INSERT OR REPLACE INTO parts (object_id, part_number, etag, checksum, size, md5)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        claim.id.0,
                        part.part_number,
                        part.etag,
                        part.checksum,
                        part.size as i64,
                        part.md5
                    ])?;
            }
            transaction.commit()?;
            Ok(held as usize)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = ?1 AND state = 1 AND lease_token IS ?2",
                params![claim.id.0, claim.token.0],
            )?;
            if n == 1 {
                transaction.execute(
                    "DELETE FROM parts WHERE object_id = ?1",
                    params![claim.id.0],
                )?;
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = ?1 AND state NOT IN (0, 1)",
                params![object.0],
            )?;
            if n == 1 {
                transaction.execute("DELETE FROM parts WHERE object_id = ?1", params![object.0])?;
            }
            transaction.commit()
        })
        .await
    }

    async fn stale_uploads(&self, migration: MigrationId) -> Result<Vec<StaleUpload>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, key, upload_id, upload_started_at FROM objects
                 WHERE migration_id = ?1 AND (upload_id IS NOT NULL OR upload_started_at IS NOT NULL)
                   AND state NOT IN (0, 1)
                 ORDER BY id",
            )?;
            let rows = statement.query_map(params![migration.0], |row| {
                Ok(StaleUpload {
                    id: ObjectId(row.get(0)?),
                    key: row.get(1)?,
                    upload_id: row.get(2)?,
                    started_at: row.get::<_, Option<i64>>(3)?.map(from_millis),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError> {
        self.with(move |connection| {
            let mut tally = Tally::default();
            let mut statement = connection.prepare_cached(
                "SELECT state, COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE migration_id = ?1 GROUP BY state",
            )?;
            let mut rows = statement.query(params![migration.0])?;
            while let Some(row) = rows.next()? {
                if let Some(state) = ObjectState::from_code(row.get(0)?) {
                    tally.objects[state as usize] = row.get::<_, i64>(1)? as u64;
                    tally.bytes[state as usize] = row.get::<_, i64>(2)? as u64;
                }
            }
            Ok(tally)
        })
        .await
    }

    async fn partitions(&self, migration: MigrationId) -> Result<Vec<PartitionTally>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT partition_key, state, COUNT(*), COALESCE(SUM(size), 0) FROM objects
                 WHERE migration_id = ?1 GROUP BY partition_key, state",
            )?;
            let mut rows = statement.query(params![migration.0])?;
            let mut partitions: BTreeMap<Option<String>, Tally> = BTreeMap::new();
            while let Some(row) = rows.next()? {
                let tally = partitions.entry(row.get(0)?).or_default();
                if let Some(state) = ObjectState::from_code(row.get(1)?) {
                    tally.objects[state as usize] = row.get::<_, i64>(2)? as u64;
                    tally.bytes[state as usize] = row.get::<_, i64>(3)? as u64;
                }
            }
            Ok(partitions
                .into_iter()
                .map(|(name, tally)| PartitionTally { name, tally })
                .collect())
        })
        .await
    }

    async fn problems(
        &self,
        migration: MigrationId,
        limit: u32,
    ) -> Result<Vec<Problem>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT key, state, error_kind, last_error FROM objects
                 WHERE migration_id = ?1 AND state IN (4, 7) ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![migration.0, limit], |row| {
                Ok(Problem {
                    key: row.get(0)?,
                    state: ObjectState::from_code(row.get(1)?).unwrap_or(ObjectState::Failed),
                    kind: row.get(2)?,
                    message: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn done_objects(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DoneObject>, StoreError> {
        let after = after.map(str::to_owned);
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, key, size, dest_etag FROM objects
                 WHERE migration_id = ?1 AND state IN (2, 3) AND (?2 IS NULL OR key > ?2)
                 ORDER BY key LIMIT ?3",
            )?;
            let rows = statement.query_map(params![migration.0, after, limit], |row| {
                Ok(DoneObject {
                    id: ObjectId(row.get(0)?),
                    key: row.get(1)?,
                    size: row.get::<_, i64>(2)? as u64,
                    dest_etag: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        let ids: Vec<i64> = objects.iter().map(|id| id.0).collect();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let mut n = 0;
            {
                let mut update = transaction.prepare_cached(
                    "UPDATE objects SET state = 0, attempts = 0, verified_by = NULL WHERE id = ?1 AND state IN (2, 3)",
                )?;
                for id in ids {
                    n += update.execute(params![id])? as u64;
                }
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
    }

    async fn lookup(
        &self,
        migration: MigrationId,
        keys: Vec<String>,
    ) -> Result<Vec<KnownObject>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT key, size, version, state FROM objects WHERE migration_id = ?1 AND key = ?2",
            )?;
            let mut known = Vec::new();
            for key in keys {
                let row = statement
                    .query_row(params![migration.0, key], |row| {
                        Ok(KnownObject {
                            key: row.get(0)?,
                            size: row.get::<_, i64>(1)? as u64,
                            version: row.get(2)?,
                            state: ObjectState::from_code(row.get(3)?)
                                .unwrap_or(ObjectState::Pending),
                        })
                    })
                    .optional()?;
                known.extend(row);
            }
            Ok(known)
        })
        .await
    }

    async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        let class = class.map(str::to_owned);
        self.with(move |connection| {
            let n = connection.execute(
                "UPDATE objects SET state = 0, attempts = 0
                 WHERE migration_id = ?1 AND state = 7 AND (?2 IS NULL OR error_kind = ?2)",
                params![migration.0, class],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<FailedObject>, StoreError> {
        let class = class.map(str::to_owned);
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, key, size, error_kind, attempts, last_error FROM objects
                 WHERE migration_id = ?1 AND state = 7 AND (?2 IS NULL OR error_kind = ?2)
                   AND id > ?3
                 ORDER BY id LIMIT ?4",
            )?;
            let rows = statement.query_map(
                params![migration.0, class, after.map_or(0, |id| id.0), limit],
                |row| {
                    Ok(FailedObject {
                        id: row.get(0)?,
                        key: row.get(1)?,
                        size: row.get::<_, i64>(2)? as u64,
                        class: row.get(3)?,
                        attempts: row.get(4)?,
                        error: row.get(5)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Scanned;

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
    };

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

    #[tokio::test]
    async fn a_second_process_is_refused_and_the_name_keeps_its_locations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let store = SqliteStore::open(&path).unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Busy { .. })
        ));
        store.open_migration(&spec()).await.unwrap();
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
        // The same bucket name on another endpoint is another place.
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

    #[tokio::test]
    async fn a_reader_needs_no_lock_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let writer = SqliteStore::open(&path).unwrap();
        let migration = writer.open_migration(&spec()).await.unwrap();
        writer.start_pass(migration.id, "").await.unwrap();
        writer
            .record_scanned(migration.id, 1, vec![object("a", 1, "1")], None)
            .await
            .unwrap();

        let reader = SqliteStore::open_read_only(&path).unwrap();
        let tally = reader.tally(migration.id).await.unwrap();
        assert_eq!(tally.n(ObjectState::Pending), 1);
        assert!(reader.requeue_failed(migration.id, None).await.is_err());
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Busy { .. })
        ));
    }

    /// `godwit pause` on a ledger a migration works on: no lock needed, and the worker sees it.
    #[tokio::test]
    async fn a_controller_needs_no_lock_and_its_status_reaches_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let writer = SqliteStore::open(&path).unwrap();
        let migration = writer.open_migration(&spec()).await.unwrap();

        let controller = SqliteStore::open_to_control(&path).unwrap();
        controller
            .set_status(migration.id, MigrationStatus::Paused)
            .await
            .unwrap();
        assert_eq!(
            writer.status_of(migration.id).await.unwrap(),
            MigrationStatus::Paused
        );
        let reader = SqliteStore::open_read_only(&path).unwrap();
        assert!(
            reader
                .set_status(migration.id, MigrationStatus::Running)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn parts_survive_a_reopen_and_failures_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let migration = store.open_migration(&spec()).await.unwrap();
            store.start_pass(migration.id, "").await.unwrap();
            store
                .record_scanned(
                    migration.id,
                    1,
                    vec![object("big", 30, "1"), object("bad", 1, "1")],
                    None,
                )
                .await
                .unwrap();
            let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
            let source = SourceVersion {
                size: 30,
                version: "1".into(),
            };
            store
                .record_upload(claimed[0].claim(), "up-1", 10, &source)
                .await
                .unwrap();
            let part = PartRecord {
                part_number: 1,
                etag: "\"e\"".into(),
                checksum: "x".into(),
                size: 10,
                md5: None,
            };
            store.record_part(claimed[0].claim(), part).await.unwrap();
            let failed = Outcome {
                error: Some(("io".into(), "broken".into())),
                ..done(&claimed[1], ObjectState::Failed)
            };
            store.record_outcomes(vec![failed]).await.unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let migration = store.open_migration(&spec()).await.unwrap();
        assert_eq!(
            migration.last_pass,
            Some(Pass {
                number: 1,
                scan_complete: false,
                filter: Some(String::new()),
            })
        );
        let problems = store.problems(migration.id, 10).await.unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].message.as_deref(), Some("broken"));
        assert_eq!(store.recover_abandoned(migration.id).await.unwrap(), 1);
        assert_eq!(store.requeue_failed(migration.id, None).await.unwrap(), 1);
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let big = claimed.iter().find(|c| c.key == "big").unwrap();
        let upload = big.upload.as_ref().unwrap();
        assert_eq!(upload.upload_id, "up-1");
        assert_eq!(upload.parts.len(), 1);
        assert_eq!(
            upload.source.as_ref().map(|s| s.version.as_str()),
            Some("1")
        );
        assert_eq!(big.attempts, 2);
        assert!(big.earlier_claim_at.is_some(), "claimed before the reopen");
    }

    #[tokio::test]
    async fn a_ledger_of_schema_1_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            // The tables as godwit 0.1 (schema 1) made them.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                   source_url TEXT NOT NULL, dest_url TEXT NOT NULL, created_at INTEGER NOT NULL);
                 CREATE TABLE passes (migration_id INTEGER NOT NULL, number INTEGER NOT NULL,
                   started_at INTEGER NOT NULL, scan_completed_at INTEGER,
                   PRIMARY KEY (migration_id, number));
                 CREATE TABLE objects (id INTEGER PRIMARY KEY, migration_id INTEGER NOT NULL,
                   key TEXT NOT NULL, size INTEGER NOT NULL, version TEXT NOT NULL,
                   state INTEGER NOT NULL, pass INTEGER NOT NULL, group_key TEXT, partition_key TEXT,
                   attempts INTEGER NOT NULL DEFAULT 0, checksum TEXT, dest_etag TEXT,
                   dest_version TEXT, verified_by TEXT, error_kind TEXT, last_error TEXT,
                   lease_owner TEXT, lease_expires INTEGER, upload_id TEXT, part_size INTEGER,
                   updated_at INTEGER NOT NULL, UNIQUE (migration_id, key));
                 INSERT INTO migrations VALUES (1, 'm', './a', 's3://b/', 0);
                 INSERT INTO passes VALUES (1, 1, 0, 0);
                 INSERT INTO objects (migration_id, key, size, version, state, pass, upload_id,
                   part_size, updated_at) VALUES (1, 'k', 10, 'v', 0, 1, 'old-upload', 5, 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let reader = SqliteStore::open_read_only(&path).unwrap();
        let migration = reader.find_migration("m").await.unwrap().unwrap();
        assert_eq!(migration.last_pass.as_ref().unwrap().filter, None);
        assert_eq!(migration.spec.dest_endpoint, None, "not recorded then");
        drop(reader);
        let store = SqliteStore::open(&path).unwrap();
        let learned = store.open_migration(&spec()).await.unwrap();
        assert_eq!(
            learned.spec,
            spec(),
            "the endpoints are learned on first use"
        );
        let claimed = store.claim(migration.id, "w", LIMITS).await.unwrap();
        let upload = claimed[0].upload.as_ref().unwrap();
        assert_eq!(upload.upload_id, "old-upload");
        assert_eq!(upload.source, None, "an upload of unknown version");
    }
}
