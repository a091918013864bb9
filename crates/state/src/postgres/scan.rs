//! Passes and their scans: the objects a scan records, and the shards it lists in parts.

use std::time::{Duration, SystemTime};

use crate::{
    LeaseToken, MigrationId, Pass, ScannedObject, ShardClaim, ShardMark, StoreError, millis, now,
    scanned_columns,
};

use super::PgStore;

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

/// Records objects the scan found in partitions that were cut over: a new one is left out
/// (`excluded`, saying why); one seen before keeps everything but the pass that saw it and, when
/// its size or version changed, the pass that saw the change.
const CUT_OVER_UPSERT: &str = "INSERT INTO objects (migration_id, key, size, version, state, pass,
       error_kind, last_error, updated_at, group_key, partition_key, found_pass, version_pass, changed_at)
     SELECT $1, k, s, v, 5, $2, 'cut_over',
       'its partition was cut over: the application owns it now, and delta passes leave it alone',
       $3, g, p, $2, $2, $9
     FROM UNNEST($4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[]) AS batch(k, s, v, g, p)
     ON CONFLICT (migration_id, key) DO UPDATE SET
       pass = excluded.pass,
       version_pass = CASE WHEN objects.size != excluded.size OR objects.version != excluded.version
         THEN excluded.version_pass ELSE objects.version_pass END
     WHERE objects.pass != excluded.pass OR objects.size != excluded.size
       OR objects.version != excluded.version";

impl PgStore {
    pub(super) async fn start_pass(
        &self,
        migration: MigrationId,
        filter: &str,
    ) -> Result<Pass, StoreError> {
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

    pub(super) async fn restart_scan(
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

    pub(super) async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<ShardMark>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() && mark.is_none() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        // A partition that was cut over belongs to the application: its objects are recorded
        // apart (`CUT_OVER_UPSERT`), left as they are.
        let cut_over: Vec<String> = transaction
            .query(
                &transaction
                    .prepare_cached(
                        "SELECT name FROM partitions WHERE migration_id = $1 AND cut_over_at IS NOT NULL",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let (batch, frozen): (Vec<ScannedObject>, Vec<ScannedObject>) =
            batch.into_iter().partition(|object| {
                let partition = object.partition.as_deref().unwrap_or("");
                !cut_over.iter().any(|p| p == partition)
            });
        let changed_at = millis(SystemTime::now());
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
                   group_key, partition_key, found_pass, version_pass, changed_at)
                 SELECT $1, k, s, v, st, $2, ek, le, $3, g, p, $2, $2, $12
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
                   updated_at = excluded.updated_at,
                   version_pass = CASE WHEN objects.size != excluded.size OR objects.version != excluded.version
                     THEN excluded.version_pass ELSE objects.version_pass END,
                   changed_at = CASE
                     WHEN objects.state != 1 AND (objects.size != excluded.size OR objects.version != excluded.version
                       OR (objects.state = 5 AND excluded.state = 0)) THEN excluded.changed_at
                     ELSE objects.changed_at END
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
                    &changed_at,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        if !frozen.is_empty() {
            let keys: Vec<&str> = frozen.iter().map(|o| o.key.as_str()).collect();
            let sizes: Vec<i64> = frozen.iter().map(|o| o.size as i64).collect();
            let versions: Vec<&str> = frozen.iter().map(|o| o.version.as_str()).collect();
            let groups: Vec<Option<&str>> = frozen.iter().map(|o| o.group.as_deref()).collect();
            let partitions: Vec<Option<&str>> =
                frozen.iter().map(|o| o.partition.as_deref()).collect();
            transaction
                .execute(
                    &transaction
                        .prepare_cached(CUT_OVER_UPSERT)
                        .await
                        .map_err(|e| self.db(e))?,
                    &[
                        &migration.0,
                        &i64::from(pass),
                        &now(),
                        &keys,
                        &sizes,
                        &versions,
                        &groups,
                        &partitions,
                        &changed_at,
                    ],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))
    }

    pub(super) async fn plan_shards(
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

    pub(super) async fn shards_left(
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

    pub(super) async fn claim_shard(
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

    pub(super) async fn finish_shard(
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

    pub(super) async fn finish_scan(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        transaction
            .execute(
                &transaction.prepare_cached("UPDATE passes SET scan_completed_at = $3 WHERE migration_id = $1 AND number = $2").await.map_err(|e| self.db(e))?,
                &[&migration.0, &i64::from(pass), &now()],
            )
            .await
            .map_err(|e| self.db(e))?;
        // A failed object this complete listing did not find is gone from the source (renamed
        // or removed, often to fix it): settled, not failed for ever.
        transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET state = 6, lease_owner = NULL, lease_expires = NULL, updated_at = $3
                         WHERE migration_id = $1 AND state IN (4, 7) AND state = 7 AND pass < $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &i64::from(pass), &now()],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))?;
        Ok(())
    }
}
