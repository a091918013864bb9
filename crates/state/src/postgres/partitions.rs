//! Partitions: their tallies and checkpoints (validation, cutover, notice), the objects
//! validation reads, and what each pass found.

use crate::partition::{CheckpointRow, assemble};
use crate::{
    Cutover, LedgerObject, MigrationId, Notice, ObjectState, PartitionTally, PassCounts, StoreError,
};

use super::PgStore;

const CHECKPOINTS: &str = "SELECT name, validated_at, validation_passed, validation, cut_over_at,
       notice_delivered_at, notice_attempts, notice_error
     FROM partitions WHERE migration_id = $1";

fn checkpoint_row(row: &tokio_postgres::Row) -> CheckpointRow {
    CheckpointRow {
        name: row.get(0),
        validated_at: row.get(1),
        validation_passed: row.get(2),
        validation: row.get(3),
        cut_over_at: row.get(4),
        notice_delivered_at: row.get(5),
        notice_attempts: row.get(6),
        notice_error: row.get(7),
    }
}

const ENSURE_ROW: &str =
    "INSERT INTO partitions (migration_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING";

impl PgStore {
    pub(super) async fn partitions(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<PartitionTally>, StoreError> {
        let counts = self.counted(migration).await?;
        let client = self.client().await?;
        let checkpoints = client
            .query(
                &client
                    .prepare_cached(CHECKPOINTS)
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?
            .iter()
            .map(checkpoint_row)
            .collect();
        Ok(assemble(counts, checkpoints))
    }

    pub(super) async fn record_validation(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        started: i64,
        passed: bool,
        report: &str,
    ) -> Result<(), StoreError> {
        let name = partition.unwrap_or("");
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        transaction
            .execute(ENSURE_ROW, &[&migration.0, &name])
            .await
            .map_err(|e| self.db(e))?;
        transaction
            .execute(
                "UPDATE partitions SET validated_at = $3, validation_passed = $4, validation = $5
                 WHERE migration_id = $1 AND name = $2",
                &[&migration.0, &name, &started, &passed, &report],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))
    }

    pub(super) async fn cut_over(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        at: i64,
    ) -> Result<Cutover, StoreError> {
        let name = partition.unwrap_or("");
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        // The partition's row stays locked to the end: two cutovers take turns. A change
        // recorded meanwhile by a scan commits before this reads it, or after the flag is set
        // (and the scan then leaves the partition alone).
        transaction
            .execute(ENSURE_ROW, &[&migration.0, &name])
            .await
            .map_err(|e| self.db(e))?;
        let row = transaction
            .query_one(
                &format!("{CHECKPOINTS} AND name = $2 FOR UPDATE"),
                &[&migration.0, &name],
            )
            .await
            .map_err(|e| self.db(e))?;
        let row = checkpoint_row(&row);
        let found = transaction
            .query_one(
                "SELECT COUNT(*), MAX(changed_at) FROM objects
                 WHERE migration_id = $1 AND partition_key IS NOT DISTINCT FROM $2",
                &[&migration.0, &partition],
            )
            .await
            .map_err(|e| self.db(e))?;
        if found.get::<_, i64>(0) == 0 {
            return Ok(Cutover::Unknown);
        }
        let verdict = row.cutover(found.get(1));
        if verdict == Cutover::Done {
            transaction
                .execute(
                    "UPDATE partitions SET cut_over_at = $3 WHERE migration_id = $1 AND name = $2",
                    &[&migration.0, &name, &at],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        Ok(verdict)
    }

    pub(super) async fn record_notice(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        notice: &Notice,
    ) -> Result<(), StoreError> {
        let name = partition.unwrap_or("");
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        transaction
            .execute(ENSURE_ROW, &[&migration.0, &name])
            .await
            .map_err(|e| self.db(e))?;
        transaction
            .execute(
                "UPDATE partitions SET notice_delivered_at = $3, notice_attempts = $4,
                   notice_error = $5
                 WHERE migration_id = $1 AND name = $2",
                &[
                    &migration.0,
                    &name,
                    &notice.delivered_at,
                    &i64::from(notice.attempts),
                    &notice.error,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        transaction.commit().await.map_err(|e| self.db(e))
    }

    pub(super) async fn objects_after(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerObject>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT key, size, state, checksum, dest_etag, group_key, partition_key
                         FROM objects WHERE migration_id = $1 AND key > COALESCE($2, '')
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
            .map(|row| LedgerObject {
                key: row.get(0),
                size: row.get::<_, i64>(1) as u64,
                state: ObjectState::from_code(row.get(2)).unwrap_or(ObjectState::Pending),
                checksum: row.get(3),
                dest_etag: row.get(4),
                group: row.get(5),
                partition: row.get(6),
            })
            .collect())
    }

    pub(super) async fn pass_counts(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<PassCounts, StoreError> {
        let pass = i64::from(pass);
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT
                   COUNT(*) FILTER (WHERE found_pass = $2),
                   COUNT(*) FILTER (WHERE version_pass = $2 AND found_pass < $2),
                   COUNT(*) FILTER (WHERE error_kind = 'cut_over' AND found_pass = $2
                     OR version_pass = $2 AND found_pass < $2 AND COALESCE(partition_key, '') IN
                       (SELECT name FROM partitions WHERE migration_id = $1 AND cut_over_at IS NOT NULL)),
                   COUNT(*) FILTER (WHERE pass = $2 - 1 AND COALESCE((SELECT scan_completed_at IS NOT NULL
                     FROM passes WHERE migration_id = $1 AND number = $2), false))
                 FROM objects WHERE migration_id = $1",
                &[&migration.0, &pass],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(PassCounts {
            new: row.get::<_, i64>(0) as u64,
            changed: row.get::<_, i64>(1) as u64,
            in_cut_over: row.get::<_, i64>(2) as u64,
            vanished: row.get::<_, i64>(3) as u64,
        })
    }
}
