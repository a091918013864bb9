//! Passes and their scans: the objects a scan records, and the shards it lists in parts.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    LeaseToken, MigrationId, Pass, ScannedObject, ShardClaim, ShardMark, StoreError, millis, now,
    scanned_columns,
};

use super::SqliteStore;
use super::claims::next_token;

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

/// Records an object the scan found in a partition that was cut over: a new one is left out
/// (`excluded`, saying why); one seen before keeps everything but the pass that saw it and, when
/// its size or version changed, the pass that saw the change.
const CUT_OVER_UPSERT: &str = "INSERT INTO objects (migration_id, key, size, version, state, pass,
       error_kind, last_error, updated_at, group_key, partition_key, found_pass, version_pass, changed_at)
     VALUES (?1, ?2, ?3, ?4, 5, ?5, 'cut_over',
       'its partition was cut over: the application owns it now, and delta passes leave it alone',
       ?6, ?7, ?8, ?5, ?5, ?9)
     ON CONFLICT (migration_id, key) DO UPDATE SET
       pass = excluded.pass,
       version_pass = CASE WHEN objects.size != excluded.size OR objects.version != excluded.version
         THEN excluded.version_pass ELSE objects.version_pass END
     WHERE objects.pass != excluded.pass OR objects.size != excluded.size
       OR objects.version != excluded.version";

/// The migration's partitions that were cut over (`""` for the objects in none).
fn cut_over_partitions(
    connection: &Connection,
    migration: MigrationId,
) -> rusqlite::Result<Vec<String>> {
    connection
        .prepare_cached(
            "SELECT name FROM partitions WHERE migration_id = ?1 AND cut_over_at IS NOT NULL",
        )?
        .query_map(params![migration.0], |row| row.get(0))?
        .collect()
}

impl SqliteStore {
    pub(super) async fn start_pass(
        &self,
        migration: MigrationId,
        filter: &str,
    ) -> Result<Pass, StoreError> {
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

    pub(super) async fn restart_scan(
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

    pub(super) async fn record_scanned(
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
                       group_key, partition_key, found_pass, version_pass, changed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?6, ?6, ?12)
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
                       updated_at = excluded.updated_at,
                       version_pass = CASE WHEN objects.size != excluded.size OR objects.version != excluded.version
                         THEN excluded.version_pass ELSE objects.version_pass END,
                       changed_at = CASE
                         WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version
                           OR (objects.state = 5 AND excluded.state = 0)) THEN excluded.changed_at
                         ELSE objects.changed_at END
                     WHERE objects.size != excluded.size OR objects.version != excluded.version
                       OR objects.state IN (0, 5) OR objects.pass != excluded.pass
                       OR objects.group_key IS NOT excluded.group_key
                       OR objects.partition_key IS NOT excluded.partition_key",
                )?;
                // A partition that was cut over belongs to the application: its objects are
                // left as they are (a new one is recorded as left out), and only the pass that saw
                // a change is noted, for the pass's counts.
                let mut frozen = transaction.prepare_cached(CUT_OVER_UPSERT)?;
                let cut_over = cut_over_partitions(&transaction, migration)?;
                let at = now();
                let changed_at = millis(SystemTime::now());
                for object in &batch {
                    let (state, kind, message) = scanned_columns(&object.scanned);
                    let partition = object.partition.as_deref().unwrap_or("");
                    if cut_over.iter().any(|p| p == partition) {
                        frozen.execute(params![
                            migration.0,
                            object.key,
                            object.size as i64,
                            object.version,
                            pass,
                            at,
                            object.group,
                            object.partition,
                            changed_at
                        ])?;
                        continue;
                    }
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
                        object.partition,
                        changed_at
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

    pub(super) async fn plan_shards(
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

    pub(super) async fn shards_left(
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

    pub(super) async fn claim_shard(
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

    pub(super) async fn finish_shard(
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

    pub(super) async fn finish_scan(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            transaction.execute(
                "UPDATE passes SET scan_completed_at = ?3 WHERE migration_id = ?1 AND number = ?2",
                params![migration.0, pass, now()],
            )?;
            // A failed object this complete listing did not find is gone from the source
            // (renamed or removed, often to fix it): settled, not failed for ever. (`state IN
            // (4, 7)` lets SQLite read the problems' partial index.)
            transaction.execute(
                "UPDATE objects SET state = 6, lease_owner = NULL, lease_expires = NULL, updated_at = ?3
                 WHERE migration_id = ?1 AND state IN (4, 7) AND state = 7 AND pass < ?2",
                params![migration.0, pass, now()],
            )?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }
}
