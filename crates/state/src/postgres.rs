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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::{
    Claim, ClaimedObject, ControlState, DoneObject, FailedObject, KnownObject, LeaseToken,
    Migration, MigrationId, MigrationSpec, MigrationStatus, ObjectId, ObjectState, Outcome,
    OwnWrite, OwnWriteChange, PacketLimits, PartRecord, PartitionTally, Pass, Problem,
    ScannedObject, ShardClaim, ShardMark, SourceVersion, StaleUpload, Store, StoreError, Tally,
    UploadRecord, WorkerBeat, WorkerRecord, from_millis, millis, now, scanned_columns,
};

/// The schema, one step a version: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: [&str; 8] = [
    "
CREATE TABLE migrations (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_url TEXT NOT NULL,
    dest_url TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    source_endpoint TEXT,
    dest_endpoint TEXT
);
CREATE TABLE passes (
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    number BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    scan_completed_at BIGINT,
    filter TEXT,
    PRIMARY KEY (migration_id, number)
);
CREATE TABLE objects (
    id BIGSERIAL PRIMARY KEY,
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    key TEXT COLLATE \"C\" NOT NULL,
    size BIGINT NOT NULL,
    version TEXT NOT NULL,
    state BIGINT NOT NULL,
    pass BIGINT NOT NULL,
    group_key TEXT,
    partition_key TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    checksum TEXT,
    dest_etag TEXT,
    dest_version TEXT,
    verified_by TEXT,
    error_kind TEXT,
    last_error TEXT,
    lease_owner TEXT,
    lease_expires BIGINT,
    upload_id TEXT,
    part_size BIGINT,
    updated_at BIGINT NOT NULL,
    upload_size BIGINT,
    upload_version TEXT,
    upload_started_at BIGINT,
    written_etag TEXT,
    written_version TEXT,
    first_claimed_at BIGINT,
    metadata TEXT,
    UNIQUE (migration_id, key)
);
CREATE TABLE parts (
    object_id BIGINT NOT NULL REFERENCES objects(id),
    part_number BIGINT NOT NULL,
    etag TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size BIGINT NOT NULL,
    md5 TEXT,
    PRIMARY KEY (object_id, part_number)
);
CREATE INDEX objects_pending ON objects (migration_id, id) WHERE state = 0;
CREATE INDEX objects_in_progress ON objects (migration_id, lease_expires) WHERE state = 1;
CREATE INDEX objects_problems ON objects (migration_id, id) WHERE state IN (4, 7);
CREATE INDEX objects_uploads ON objects (migration_id)
    WHERE upload_id IS NOT NULL OR upload_started_at IS NOT NULL;
",
    "
ALTER TABLE objects ADD COLUMN lease_token BIGINT;
CREATE SEQUENCE lease_tokens;
CREATE INDEX objects_leases ON objects (lease_owner) WHERE state = 1;
",
    "
ALTER TABLE migrations ADD COLUMN options TEXT;
",
    "
ALTER TABLE migrations ADD COLUMN status TEXT;
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    migration TEXT,
    packets_in_flight BIGINT NOT NULL,
    objects_in_flight BIGINT NOT NULL,
    bytes_per_second BIGINT NOT NULL
);
",
    "
ALTER TABLE migrations ADD COLUMN throttled_at BIGINT;
",
    "
CREATE TABLE shards (
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    pass BIGINT NOT NULL,
    name TEXT COLLATE \"C\" NOT NULL,
    state BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires BIGINT,
    lease_token BIGINT,
    after TEXT COLLATE \"C\",
    PRIMARY KEY (migration_id, pass, name)
);
CREATE INDEX shards_leases ON shards (lease_owner) WHERE state = 1;
",
    // Claims in progress are few (what a fleet has in hand), so `objects_leases` serves the
    // search for expired ones too: one index fewer to write per claim. The pending objects are
    // indexed by `id + 0`, an order only this index gives (see `CLAIM`).
    "
DROP INDEX objects_in_progress;
DROP INDEX objects_pending;
CREATE INDEX objects_pending ON objects (migration_id, (id + 0)) WHERE state = 0;
",
    // The members of a group, for whole-group claims; conflicts and failures in an order only
    // their index gives (see `FAILED_PAGE`).
    "
CREATE INDEX objects_groups ON objects (migration_id, group_key) WHERE group_key IS NOT NULL;
DROP INDEX objects_problems;
CREATE INDEX objects_problems ON objects (migration_id, (id + 0)) WHERE state IN (4, 7);
",
];

/// The advisory lock key under which schema changes are applied (any constant of godwit's own).
const SCHEMA_LOCK: i64 = 0x676f_6477_6974;

/// Connections to the database at once, per process.
const POOL_SIZE: usize = 8;

/// `Ok` when a write about a claimed object changed its row; the lease was lost otherwise.
fn held(changed: u64, claim: Claim) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(claim.id.0))
    }
}

/// `Ok` when a write about a claimed shard changed its row; the lease was lost otherwise (the
/// error names the claim's token: a shard has no row id).
fn shard_held(changed: u64, token: LeaseToken) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::ShardLost(token.0))
    }
}

/// Counts the shards of a pass: all of them, and those not listed to their end yet.
const COUNT_SHARDS: &str = "SELECT COUNT(*), COUNT(*) FILTER (WHERE state != 2) FROM shards
     WHERE migration_id = $1 AND pass = $2";

/// Claims a packet, in one statement: locks the first pending rows (other workers' packets are
/// skipped, not waited for), cuts them at the byte limit (always one), and takes them under a
/// fresh token; the `first_claimed_at` returned is the one from before this claim. Pending rows
/// are read in the order of `objects_pending`'s `id + 0`, which no other index gives: the planner
/// cannot walk the primary key instead and filter out every finished row (as it would, with a
/// generic plan or statistics taken while all were pending). Public for the plan test.
#[doc(hidden)]
pub const CLAIM: &str = "WITH locked AS (
           SELECT id, size, first_claimed_at FROM objects
           WHERE migration_id = $1 AND state = 0 ORDER BY id + 0 LIMIT $2
           FOR UPDATE SKIP LOCKED
         ), cut AS (
           SELECT id, first_claimed_at,
             (SUM(size) OVER (ORDER BY id))::bigint AS through, ROW_NUMBER() OVER (ORDER BY id) AS n
           FROM locked
         ), token AS (SELECT nextval('lease_tokens') AS value)
         UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = $3,
           lease_expires = $4, first_claimed_at = COALESCE(objects.first_claimed_at, $5),
           lease_token = token.value
         FROM cut, token
         WHERE objects.id = cut.id AND (cut.n = 1 OR cut.through <= $6)
         RETURNING objects.id, key, size, version, attempts, upload_id, part_size, upload_size,
           upload_version, upload_started_at, written_etag, written_version,
           cut.first_claimed_at, token.value";

/// `CLAIM` for a migration whose groups are taken whole (`PacketLimits::whole_groups`): objects
/// in no group as ever; an object of a group only once the pass's scan is complete, and only
/// under the group's advisory lock (held to the end of the statement, so two workers never take
/// parts of one group), bringing every other pending object of its group along, whatever the
/// limits.
const CLAIM_GROUPED: &str = "WITH ready AS (
           SELECT COALESCE((SELECT scan_completed_at IS NOT NULL FROM passes
             WHERE migration_id = $1 ORDER BY number DESC LIMIT 1), false) AS done
         ), heads AS (
           SELECT o.id, o.size, o.first_claimed_at, o.group_key FROM objects o
           WHERE o.migration_id = $1 AND o.state = 0
             AND (o.group_key IS NULL OR ((SELECT done FROM ready)
               AND pg_try_advisory_xact_lock(hashtextextended(o.group_key, $1))))
           ORDER BY o.id + 0 LIMIT $2
           FOR UPDATE OF o SKIP LOCKED
         ), cut AS (
           SELECT id, first_claimed_at, group_key,
             (SUM(size) OVER (ORDER BY id))::bigint AS through, ROW_NUMBER() OVER (ORDER BY id) AS n
           FROM heads
         ), picked AS (
           SELECT id, first_claimed_at, group_key FROM cut WHERE n = 1 OR through <= $6
         ), members AS (
           SELECT o.id, o.first_claimed_at FROM objects o
           WHERE o.migration_id = $1 AND o.state = 0
             AND o.group_key IN (SELECT group_key FROM picked WHERE group_key IS NOT NULL)
           FOR UPDATE OF o
         ), taken AS (
           SELECT id, first_claimed_at FROM picked UNION SELECT id, first_claimed_at FROM members
         ), token AS (SELECT nextval('lease_tokens') AS value)
         UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = $3,
           lease_expires = $4, first_claimed_at = COALESCE(objects.first_claimed_at, $5),
           lease_token = token.value
         FROM taken, token
         WHERE objects.id = taken.id
         RETURNING objects.id, key, size, version, attempts, upload_id, part_size, upload_size,
           upload_version, upload_started_at, written_etag, written_version,
           taken.first_claimed_at, token.value";

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

/// A page of the fail queue. Read in `id + 0` order, which only `objects_problems` gives, so no
/// plan walks the primary key past every object that did not fail (see `CLAIM`). Public for the
/// plan test.
#[doc(hidden)]
pub const FAILED_PAGE: &str = "SELECT id, key, size, error_kind, attempts, last_error FROM objects
         WHERE migration_id = $1 AND state = 7 AND ($2::text IS NULL OR error_kind = $2)
           AND id + 0 > $3
         ORDER BY id + 0 LIMIT $4";

/// The PostgreSQL ledger.
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: String,
}

/// `url` with any password taken out, for messages.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
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

    /// Runs a statement that changes objects and shards at once and counts each.
    async fn objects_and_shards(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(e))?;
        let row = client
            .query_one(&statement, params)
            .await
            .map_err(|e| self.db(e))?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    /// A driver or pool error, with what the server said (see `explained`).
    fn db(&self, error: impl std::error::Error) -> StoreError {
        self.error(explained(&error))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.error(format!(
                "cannot connect ({}); check that PostgreSQL runs there and accepts this user",
                explained(&e)
            ))
        })
    }

    /// Applies the schema changes this ledger lacks, once, whoever opens it first.
    async fn migrate_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(|e| self.db(e))?;
        transaction
            .batch_execute("CREATE TABLE IF NOT EXISTS godwit_schema (version BIGINT NOT NULL)")
            .await
            .map_err(|e| self.db(e))?;
        let version: i64 = transaction
            .query_opt("SELECT version FROM godwit_schema", &[])
            .await
            .map_err(|e| self.db(e))?
            .map_or(0, |row| row.get(0));
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(self.error(format!(
                "it was written by a newer godwit (schema {version}, this one knows {known}); upgrade godwit"
            )));
        }
        for step in &MIGRATIONS[version as usize..] {
            transaction
                .batch_execute(step)
                .await
                .map_err(|e| self.db(e))?;
        }
        if version == 0 {
            transaction
                .execute("INSERT INTO godwit_schema (version) VALUES ($1)", &[&known])
                .await
                .map_err(|e| self.db(e))?;
        } else if version < known {
            transaction
                .execute("UPDATE godwit_schema SET version = $1", &[&known])
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))
    }

    async fn load_migration(
        &self,
        client: &deadpool_postgres::Client,
        name: &str,
    ) -> Result<Option<Migration>, StoreError> {
        let Some(row) = client
            .query_opt(
                &client.prepare_cached("SELECT id, source_url, dest_url, source_endpoint, dest_endpoint, options, status FROM migrations WHERE name = $1").await.map_err(|e| self.db(e))?,
                &[&name],
            )
            .await
            .map_err(|e| self.db(e))?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let spec = MigrationSpec {
            name: name.to_owned(),
            source_url: row.get(1),
            dest_url: row.get(2),
            source_endpoint: row.get(3),
            dest_endpoint: row.get(4),
        };
        let last_pass = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT number, scan_completed_at IS NOT NULL, filter FROM passes
                 WHERE migration_id = $1 ORDER BY number DESC LIMIT 1",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&id],
            )
            .await
            .map_err(|e| self.db(e))?
            .map(|row| Pass {
                number: row.get::<_, i64>(0) as u32,
                scan_complete: row.get(1),
                filter: row.get(2),
            });
        Ok(Some(Migration {
            id: MigrationId(id),
            spec,
            options: row.get(5),
            status: MigrationStatus::from_name(row.get::<_, Option<String>>(6).as_deref()),
            last_pass,
        }))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn open_migration(&self, spec: &MigrationSpec) -> Result<Migration, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("INSERT INTO migrations (name, source_url, dest_url, created_at, source_endpoint, dest_endpoint)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING").await.map_err(|e| self.db(e))?,
                &[
                    &spec.name,
                    &spec.source_url,
                    &spec.dest_url,
                    &now(),
                    &spec.source_endpoint,
                    &spec.dest_endpoint,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        let migration = self
            .load_migration(&client, &spec.name)
            .await?
            .ok_or_else(|| self.error("the migration vanished as it was created"))?;
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
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE migrations SET status = $2 WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &status.as_str()],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn control_of(&self, migration: MigrationId) -> Result<ControlState, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT status, throttled_at FROM migrations WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(ControlState {
            status: MigrationStatus::from_name(row.get::<_, Option<String>>(0).as_deref()),
            throttled_at: row.get::<_, Option<i64>>(1).map(from_millis),
        })
    }

    async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE migrations SET throttled_at = GREATEST(COALESCE(throttled_at, 0), $2)
                 WHERE id = $1").await.map_err(|e| self.db(e))?,
                &[&migration.0, &millis(at)],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO workers (name, host, pid, started_at, heartbeat_at, migration,
                   packets_in_flight, objects_in_flight, bytes_per_second)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                   migration = excluded.migration, packets_in_flight = excluded.packets_in_flight,
                   objects_in_flight = excluded.objects_in_flight,
                   bytes_per_second = excluded.bytes_per_second",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &beat.name,
                    &beat.host,
                    &i64::from(beat.pid),
                    &beat.started_at,
                    &now(),
                    &beat.migration,
                    &(beat.packets_in_flight as i64),
                    &(beat.objects_in_flight as i64),
                    &(beat.bytes_per_second as i64),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT name, host, pid, started_at, migration, packets_in_flight,
                   objects_in_flight, bytes_per_second, heartbeat_at FROM workers ORDER BY heartbeat_at DESC, name").await.map_err(|e| self.db(e))?,
                &[],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| WorkerRecord {
                beat: WorkerBeat {
                    name: row.get(0),
                    host: row.get(1),
                    pid: row.get::<_, i64>(2) as u32,
                    started_at: row.get(3),
                    migration: row.get(4),
                    packets_in_flight: row.get::<_, i64>(5) as u64,
                    objects_in_flight: row.get::<_, i64>(6) as u64,
                    bytes_per_second: row.get::<_, i64>(7) as u64,
                },
                heartbeat_at: row.get(8),
            })
            .collect())
    }

    async fn save_options(&self, migration: MigrationId, options: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE migrations SET options = $2 WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &options],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError> {
        let client = self.client().await?;
        self.load_migration(&client, name).await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        let client = self.client().await?;
        let names: Vec<String> = client
            .query(
                &client
                    .prepare_cached("SELECT name FROM migrations ORDER BY id")
                    .await
                    .map_err(|e| self.db(e))?,
                &[],
            )
            .await
            .map_err(|e| self.db(e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut migrations = Vec::with_capacity(names.len());
        for name in names {
            migrations.extend(self.load_migration(&client, &name).await?);
        }
        Ok(migrations)
    }

    async fn start_pass(&self, migration: MigrationId, filter: &str) -> Result<Pass, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "INSERT INTO passes (migration_id, number, started_at, filter)
                 SELECT $1, COALESCE(MAX(number), 0) + 1, $2, $3 FROM passes WHERE migration_id = $1
                 RETURNING number",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &now(), &filter],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(Pass {
            number: row.get::<_, i64>(0) as u32,
            scan_complete: false,
            filter: Some(filter.to_owned()),
        })
    }

    async fn restart_scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &str,
    ) -> Result<(), StoreError> {
        let pass = i64::from(pass);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        // The pass's row is locked: the compare, the planning of shards and the new filter do
        // not interleave with another worker's.
        let recorded: Option<String> = transaction
            .query_opt(
                &transaction.prepare_cached("SELECT filter FROM passes WHERE migration_id = $1 AND number = $2 FOR UPDATE").await.map_err(|e| self.db(e))?,
                &[&migration.0, &pass],
            )
            .await
            .map_err(|e| self.db(e))?
            .and_then(|row| row.get(0));
        // Another filter lists other keys: the shards are planned and listed afresh.
        if recorded.as_deref() != Some(filter) {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM shards WHERE migration_id = $1 AND pass = $2")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&migration.0, &pass],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE passes SET scan_completed_at = NULL, filter = $3
                 WHERE migration_id = $1 AND number = $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass, &filter],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))
    }

    async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<ShardMark>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() && mark.is_none() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(batch.len());
        let mut sizes = Vec::with_capacity(batch.len());
        let mut versions = Vec::with_capacity(batch.len());
        let mut states = Vec::with_capacity(batch.len());
        let mut kinds: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut messages: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut groups: Vec<Option<&str>> = Vec::with_capacity(batch.len());
        let mut partitions: Vec<Option<&str>> = Vec::with_capacity(batch.len());
        for object in &batch {
            groups.push(object.group.as_deref());
            partitions.push(object.partition.as_deref());
            let (state, kind, message) = scanned_columns(&object.scanned);
            keys.push(object.key.as_str());
            sizes.push(object.size as i64);
            versions.push(object.version.as_str());
            states.push(state as i64);
            kinds.push(kind.map(str::to_owned));
            messages.push(message.map(str::to_owned));
        }
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        if let Some(mark) = &mark {
            // The shard's row stays locked until the batch is in: no claim comes in between.
            let n = transaction
                .execute(
                    &transaction
                        .prepare_cached(
                            "UPDATE shards SET after = $4
                     WHERE migration_id = $1 AND pass = $2 AND name = $3 AND state = 1
                       AND lease_token = $5",
                        )
                        .await
                        .map_err(|e| self.db(e))?,
                    &[
                        &migration.0,
                        &i64::from(pass),
                        &mark.name,
                        &mark.after,
                        &mark.token.0,
                    ],
                )
                .await
                .map_err(|e| self.db(e))?;
            // Lost: the transaction rolls back as it drops.
            shard_held(n, mark.token)?;
        }
        // The same rules as the SQLite ledger: an object already claimed is left to its worker;
        // one that changed is queued again from scratch; one that never started takes the
        // current filters' verdict.
        transaction
            .execute(
                &transaction.prepare_cached("INSERT INTO objects (migration_id, key, size, version, state, pass, error_kind, last_error, updated_at,
                   group_key, partition_key)
                 SELECT $1, k, s, v, st, $2, ek, le, $3, g, p
                 FROM UNNEST($4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[])
                   AS batch(k, s, v, st, ek, le, g, p)
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
                   OR objects.group_key IS DISTINCT FROM excluded.group_key
                   OR objects.partition_key IS DISTINCT FROM excluded.partition_key").await.map_err(|e| self.db(e))?,
                &[
                    &migration.0,
                    &i64::from(pass),
                    &now(),
                    &keys,
                    &sizes,
                    &versions,
                    &states,
                    &kinds,
                    &messages,
                    &groups,
                    &partitions,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))
    }

    async fn plan_shards(
        &self,
        migration: MigrationId,
        pass: u32,
        names: Vec<String>,
    ) -> Result<u64, StoreError> {
        let pass = i64::from(pass);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        // Workers planning at once take turns on the pass's row: the first plan is the plan.
        transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "SELECT 1 FROM passes WHERE migration_id = $1 AND number = $2 FOR UPDATE",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "INSERT INTO shards (migration_id, pass, name)
                 SELECT $1, $2, name FROM UNNEST($3::text[]) AS planned(name)
                 WHERE NOT EXISTS (SELECT 1 FROM shards WHERE migration_id = $1 AND pass = $2)
                 ON CONFLICT (migration_id, pass, name) DO NOTHING",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass, &names],
            )
            .await
            .map_err(|e| self.db(e))?;
        let row = transaction
            .query_one(
                &transaction
                    .prepare_cached(COUNT_SHARDS)
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn shards_left(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(COUNT_SHARDS)
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &i64::from(pass)],
            )
            .await
            .map_err(|e| self.db(e))?;
        let (all, left): (i64, i64) = (row.get(0), row.get(1));
        Ok((all > 0).then_some(left as u64))
    }

    async fn claim_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ShardClaim>, StoreError> {
        let client = self.client().await?;
        let at = now();
        // The first free shard by name (byte order: the column is `COLLATE "C"`); one another
        // worker is taking is skipped, not waited for.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH free AS (
                   SELECT name FROM shards
                   WHERE migration_id = $1 AND pass = $2
                     AND (state = 0 OR (state = 1 AND lease_expires <= $3))
                   ORDER BY name LIMIT 1
                   FOR UPDATE SKIP LOCKED
                 )
                 UPDATE shards SET state = 1, lease_owner = $4, lease_expires = $5,
                   lease_token = nextval('lease_tokens')
                 FROM free
                 WHERE shards.migration_id = $1 AND shards.pass = $2 AND shards.name = free.name
                 RETURNING shards.name, shards.after, shards.lease_token",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &migration.0,
                    &i64::from(pass),
                    &at,
                    &worker,
                    &(at + lease.as_secs() as i64),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|row| ShardClaim {
            name: row.get(0),
            after: row.get(1),
            token: LeaseToken(row.get(2)),
        }))
    }

    async fn finish_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        shard: &ShardClaim,
    ) -> Result<u64, StoreError> {
        let pass = i64::from(pass);
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE shards SET state = 2, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = $1 AND pass = $2 AND name = $3 AND state = 1
                   AND lease_token = $4",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass, &shard.name, &shard.token.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        shard_held(n, shard.token)?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(COUNT_SHARDS)
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &pass],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.get::<_, i64>(1) as u64)
    }

    async fn finish_scan(&self, migration: MigrationId, pass: u32) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE passes SET scan_completed_at = $3 WHERE migration_id = $1 AND number = $2").await.map_err(|e| self.db(e))?,
                &[&migration.0, &i64::from(pass), &now()],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        let client = self.client().await?;
        let expires = now() + limits.lease.as_secs() as i64;
        let at = millis(SystemTime::now());
        // One statement (`CLAIM`, or `CLAIM_GROUPED`), committing on its own: one round trip a
        // packet.
        let claim = if limits.whole_groups {
            CLAIM_GROUPED
        } else {
            CLAIM
        };
        let rows = client
            .query(
                &client.prepare_cached(claim).await.map_err(|e| self.db(e))?,
                &[
                    &migration.0,
                    &i64::from(limits.max_objects),
                    &worker,
                    &expires,
                    &at,
                    &(limits.max_bytes.min(i64::MAX as u64) as i64),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let earlier: HashMap<i64, Option<i64>> =
            rows.iter().map(|row| (row.get(0), row.get(12))).collect();
        let token: i64 = rows[0].get(13);
        let with_uploads: Vec<i64> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(5).is_some())
            .map(|row| row.get(0))
            .collect();
        let mut parts: HashMap<i64, Vec<PartRecord>> = HashMap::new();
        // Read after the claim: the objects are this worker's now, and only the holder of their
        // token records parts.
        if !with_uploads.is_empty() {
            for row in client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT object_id, part_number, etag, checksum, size, md5 FROM parts
                     WHERE object_id = ANY($1) ORDER BY object_id, part_number",
                        )
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&with_uploads],
                )
                .await
                .map_err(|e| self.db(e))?
            {
                parts.entry(row.get(0)).or_default().push(PartRecord {
                    part_number: row.get::<_, i64>(1) as u32,
                    etag: row.get(2),
                    checksum: row.get(3),
                    size: row.get::<_, i64>(4) as u64,
                    md5: row.get(5),
                });
            }
        }
        let mut claimed: Vec<ClaimedObject> = rows
            .into_iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let upload_id: Option<String> = row.get(5);
                let source = match (
                    row.get::<_, Option<i64>>(7),
                    row.get::<_, Option<String>>(8),
                ) {
                    (Some(size), Some(version)) => Some(SourceVersion {
                        size: size as u64,
                        version,
                    }),
                    _ => None,
                };
                let started: Option<i64> = row.get(9);
                let written_etag: Option<String> = row.get(10);
                let written_version: Option<String> = row.get(11);
                ClaimedObject {
                    id: ObjectId(id),
                    token: LeaseToken(token),
                    key: row.get(1),
                    size: row.get::<_, i64>(2) as u64,
                    version: row.get(3),
                    attempts: row.get::<_, i64>(4) as u32,
                    unrecorded_upload_since: match &upload_id {
                        None => started.map(from_millis),
                        Some(_) => None,
                    },
                    upload: upload_id.map(|upload_id| UploadRecord {
                        upload_id,
                        part_size: row.get::<_, Option<i64>>(6).unwrap_or(0) as u64,
                        source,
                        parts: parts.remove(&id).unwrap_or_default(),
                    }),
                    own_write: (written_etag.is_some() || written_version.is_some()).then_some(
                        OwnWrite {
                            etag: written_etag,
                            version_id: written_version,
                        },
                    ),
                    earlier_claim_at: earlier.get(&id).copied().flatten().map(from_millis),
                }
            })
            .collect();
        // In id order, as the SQLite ledger hands them out.
        claimed.sort_by_key(|c| c.id.0);
        Ok(claimed)
    }

    async fn recover_abandoned(&self, migration: MigrationId) -> Result<u64, StoreError> {
        // Other workers may be alive: only claims whose lease ran out go back. Objects and
        // shards in one statement: one round trip, all or nothing.
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE migration_id = $1 AND state = 1 AND lease_expires <= $2 RETURNING 1
             ), shards AS (
               UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE migration_id = $1 AND state = 1 AND lease_expires <= $2 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&migration.0, &now()],
        )
        .await
        .map(|(objects, _)| objects)
    }

    async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.recover_abandoned(migration).await
    }

    async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL,
                 attempts = GREATEST(attempts - 1, 0)
               WHERE lease_owner = $1 AND state = 1 RETURNING 1
             ), shards AS (
               UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE lease_owner = $1 AND state = 1 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&worker],
        )
        .await
        .map(|(objects, _)| objects)
    }

    async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT COUNT(*) FROM objects WHERE migration_id = $1 AND state = 1
                   AND lease_owner IS DISTINCT FROM $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &worker],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn renew_leases(&self, worker: &str, lease: Duration) -> Result<u64, StoreError> {
        let expires = now() + lease.as_secs() as i64;
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET lease_expires = $2 WHERE lease_owner = $1 AND state = 1 RETURNING 1
             ), shards AS (
               UPDATE shards SET lease_expires = $2 WHERE lease_owner = $1 AND state = 1 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&worker, &expires],
        )
        .await
        .map(|(objects, shards)| objects + shards)
    }

    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut checksums = Vec::with_capacity(n);
        let mut etags = Vec::with_capacity(n);
        let mut dest_versions = Vec::with_capacity(n);
        let mut verified = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut messages = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut own = Vec::with_capacity(n);
        let mut own_etags = Vec::with_capacity(n);
        let mut own_versions = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        for outcome in outcomes {
            ids.push(outcome.id.0);
            tokens.push(outcome.token.0);
            states.push(outcome.state as i64);
            sizes.push(outcome.size as i64);
            versions.push(outcome.version);
            checksums.push(outcome.checksum);
            etags.push(outcome.dest_etag);
            dest_versions.push(outcome.dest_version);
            verified.push(outcome.verified_by.map(str::to_owned));
            let (kind, message) = outcome.error.unzip();
            kinds.push(kind);
            messages.push(message);
            attempts.push(i64::from(outcome.attempts));
            let (code, etag, version) = match outcome.own_write {
                OwnWriteChange::Keep => (0i64, None, None),
                OwnWriteChange::Set(write) => (1, write.etag, write.version_id),
                OwnWriteChange::Forget => (2, None, None),
            };
            own.push(code);
            own_etags.push(etag);
            own_versions.push(version);
            metadata.push(outcome.metadata);
        }
        let client = self.client().await?;
        let params: [&(dyn ToSql + Sync); 17] = [
            &ids,
            &states,
            &sizes,
            &versions,
            &checksums,
            &etags,
            &dest_versions,
            &verified,
            &kinds,
            &messages,
            &attempts,
            &own,
            &own_etags,
            &own_versions,
            &metadata,
            &now(),
            &tokens,
        ];
        let written = client
            .execute(
                &client.prepare_cached("UPDATE objects SET state = o.state, size = o.size, version = o.version,
                   checksum = COALESCE(o.checksum, objects.checksum), dest_etag = o.dest_etag,
                   dest_version = o.dest_version, verified_by = o.verified_by,
                   error_kind = o.error_kind, last_error = o.last_error,
                   lease_owner = NULL, lease_expires = NULL, updated_at = $16, attempts = o.attempts,
                   written_etag = CASE o.own WHEN 0 THEN objects.written_etag WHEN 1 THEN o.own_etag ELSE NULL END,
                   written_version = CASE o.own WHEN 0 THEN objects.written_version WHEN 1 THEN o.own_version ELSE NULL END,
                   metadata = COALESCE(o.metadata, objects.metadata)
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                   $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
                   $13::text[], $14::text[], $15::text[], $17::bigint[])
                   AS o(id, state, size, version, checksum, dest_etag, dest_version, verified_by,
                     error_kind, last_error, attempts, own, own_etag, own_version, metadata, token)
                 WHERE objects.id = o.id AND objects.state = 1 AND objects.lease_token = o.token").await.map_err(|e| self.db(e))?,
                &params,
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n as u64 - written)
    }

    async fn record_upload_intent(&self, claim: Claim, at: SystemTime) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client.prepare_cached("UPDATE objects SET upload_started_at = $2 WHERE id = $1 AND state = 1 AND lease_token = $3").await.map_err(|e| self.db(e))?,
                &[&claim.id.0, &millis(at), &claim.token.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        held(n, claim)
    }

    async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction.prepare_cached("UPDATE objects SET upload_id = $2, part_size = $3, upload_size = $4, upload_version = $5
                 WHERE id = $1 AND state = 1 AND lease_token = $6").await.map_err(|e| self.db(e))?,
                &[
                    &claim.id.0,
                    &upload_id,
                    &(part_size as i64),
                    &(source.size as i64),
                    &source.version,
                    &claim.token.0,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&claim.id.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        held(n, claim)
    }

    async fn record_part(&self, claim: Claim, part: PartRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        // Inserted only while the claim holds the object (its row locked against a new claim
        // for the moment of the insert).
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO parts (object_id, part_number, etag, checksum, size, md5)
                 SELECT id, $2, $3, $4, $5, $6 FROM objects
                 WHERE id = $1 AND state = 1 AND lease_token = $7 FOR SHARE
                 ON CONFLICT (object_id, part_number) DO UPDATE SET etag = excluded.etag,
                   checksum = excluded.checksum, size = excluded.size, md5 = excluded.md5",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &claim.id.0,
                    &i64::from(part.part_number),
                    &part.etag,
                    &part.checksum,
                    &(part.size as i64),
                    &part.md5,
                    &claim.token.0,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        held(n, claim)
    }

    async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = $1 AND state = 1 AND lease_token = $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&claim.id.0, &claim.token.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&claim.id.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        held(n, claim)
    }

    async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = $1 AND state NOT IN (0, 1)",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&object.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&object.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))
    }

    async fn stale_uploads(&self, migration: MigrationId) -> Result<Vec<StaleUpload>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT id, key, upload_id, upload_started_at FROM objects
                 WHERE migration_id = $1 AND (upload_id IS NOT NULL OR upload_started_at IS NOT NULL)
                   AND state NOT IN (0, 1)
                 ORDER BY id").await.map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| StaleUpload {
                id: ObjectId(row.get(0)),
                key: row.get(1),
                upload_id: row.get(2),
                started_at: row.get::<_, Option<i64>>(3).map(from_millis),
            })
            .collect())
    }

    async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT state, COUNT(*), COALESCE(SUM(size), 0)::bigint FROM objects
                 WHERE migration_id = $1 GROUP BY state",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        let mut tally = Tally::default();
        for row in rows {
            if let Some(state) = ObjectState::from_code(row.get(0)) {
                tally.objects[state as usize] = row.get::<_, i64>(1) as u64;
                tally.bytes[state as usize] = row.get::<_, i64>(2) as u64;
            }
        }
        Ok(tally)
    }

    async fn partitions(&self, migration: MigrationId) -> Result<Vec<PartitionTally>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT partition_key, state, COUNT(*), COALESCE(SUM(size), 0)::bigint
                         FROM objects WHERE migration_id = $1 GROUP BY partition_key, state",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        // Ordered here, in bytes, as the SQLite ledger orders them.
        let mut partitions: BTreeMap<Option<String>, Tally> = BTreeMap::new();
        for row in rows {
            let tally = partitions.entry(row.get(0)).or_default();
            if let Some(state) = ObjectState::from_code(row.get(1)) {
                tally.objects[state as usize] = row.get::<_, i64>(2) as u64;
                tally.bytes[state as usize] = row.get::<_, i64>(3) as u64;
            }
        }
        Ok(partitions
            .into_iter()
            .map(|(name, tally)| PartitionTally { name, tally })
            .collect())
    }

    async fn problems(
        &self,
        migration: MigrationId,
        limit: u32,
    ) -> Result<Vec<Problem>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT key, state, error_kind, last_error FROM objects
                 WHERE migration_id = $1 AND state IN (4, 7) ORDER BY id + 0 LIMIT $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &i64::from(limit)],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| Problem {
                key: row.get(0),
                state: ObjectState::from_code(row.get(1)).unwrap_or(ObjectState::Failed),
                kind: row.get(2),
                message: row.get(3),
            })
            .collect())
    }

    async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE objects SET state = 0, attempts = 0
                 WHERE migration_id = $1 AND state = 7 AND ($2::text IS NULL OR error_kind = $2)",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &class],
            )
            .await
            .map_err(|e| self.db(e))
    }

    async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<FailedObject>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(FAILED_PAGE)
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &migration.0,
                    &class,
                    &after.map_or(0, |id| id.0),
                    &i64::from(limit),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| FailedObject {
                id: row.get(0),
                key: row.get(1),
                size: row.get::<_, i64>(2) as u64,
                class: row.get(3),
                attempts: row.get::<_, i64>(4) as u32,
                error: row.get(5),
            })
            .collect())
    }

    async fn done_objects(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DoneObject>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, key, size, dest_etag FROM objects
                 WHERE migration_id = $1 AND state IN (2, 3) AND ($2::text IS NULL OR key > $2)
                 ORDER BY key LIMIT $3",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &after, &i64::from(limit)],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| DoneObject {
                id: ObjectId(row.get(0)),
                key: row.get(1),
                size: row.get::<_, i64>(2) as u64,
                dest_etag: row.get(3),
            })
            .collect())
    }

    async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        let ids: Vec<i64> = objects.iter().map(|id| id.0).collect();
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE objects SET state = 0, attempts = 0, verified_by = NULL WHERE id = ANY($1) AND state IN (2, 3)").await.map_err(|e| self.db(e))?,
                &[&ids],
            )
            .await
            .map_err(|e| self.db(e))
    }

    async fn lookup(
        &self,
        migration: MigrationId,
        keys: Vec<String>,
    ) -> Result<Vec<KnownObject>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT key, size, version, state FROM objects WHERE migration_id = $1 AND key = ANY($2)").await.map_err(|e| self.db(e))?,
                &[&migration.0, &keys],
            )
            .await
            .map_err(|e| self.db(e))?;
        let mut found: HashMap<String, KnownObject> = rows
            .iter()
            .map(|row| {
                let key: String = row.get(0);
                let known = KnownObject {
                    key: key.clone(),
                    size: row.get::<_, i64>(1) as u64,
                    version: row.get(2),
                    state: ObjectState::from_code(row.get(3)).unwrap_or(ObjectState::Pending),
                };
                (key, known)
            })
            .collect();
        // In the order asked, as the trait promises.
        Ok(keys.iter().filter_map(|key| found.remove(key)).collect())
    }
}
