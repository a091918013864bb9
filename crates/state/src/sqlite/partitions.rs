//! Partitions: their tallies and checkpoints (validation, cutover, notice), the objects
//! validation reads, and what each pass found.

use rusqlite::{Connection, OptionalExtension, params};

use crate::partition::{CheckpointRow, assemble};
use crate::{
    Cutover, LedgerObject, MigrationId, Notice, ObjectState, PartitionTally, PassCounts, StoreError,
};

use super::SqliteStore;
use super::tallies::{counted, recount};

const CHECKPOINTS: &str = "SELECT name, validated_at, validation_passed, validation, cut_over_at,
       notice_delivered_at, notice_attempts, notice_error
     FROM partitions WHERE migration_id = ?1";

fn checkpoint_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        name: row.get(0)?,
        validated_at: row.get(1)?,
        validation_passed: row.get(2)?,
        validation: row.get(3)?,
        cut_over_at: row.get(4)?,
        notice_delivered_at: row.get(5)?,
        notice_attempts: row.get(6)?,
        notice_error: row.get(7)?,
    })
}

/// Makes sure the partition has a checkpoint row.
fn ensure_row(connection: &Connection, migration: MigrationId, name: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO partitions (migration_id, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![migration.0, name])?;
    Ok(())
}

impl SqliteStore {
    pub(super) async fn partitions(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<PartitionTally>, StoreError> {
        // A ledger of an older schema, read while an older godwit holds it, has no counters:
        // its objects are counted.
        let counters = self.counters;
        self.with(move |connection| {
            // One snapshot for the counts and the checkpoints.
            let transaction = connection.transaction()?;
            let counts = if counters {
                counted(&transaction, migration)?
            } else {
                recount(&transaction, migration)?
            };
            let checkpoints = transaction
                .prepare_cached(CHECKPOINTS)?
                .query_map(params![migration.0], checkpoint_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            transaction.commit()?;
            Ok(assemble(counts, checkpoints))
        })
        .await
    }

    pub(super) async fn record_validation(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        started: i64,
        passed: bool,
        report: &str,
    ) -> Result<(), StoreError> {
        let name = partition.unwrap_or("").to_owned();
        let report = report.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            ensure_row(&transaction, migration, &name)?;
            transaction
                .prepare_cached(
                    "UPDATE partitions SET validated_at = ?3, validation_passed = ?4, validation = ?5
                     WHERE migration_id = ?1 AND name = ?2",
                )?
                .execute(params![migration.0, name, started, passed, report])?;
            transaction.commit()
        })
        .await
    }

    pub(super) async fn cut_over(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        at: i64,
    ) -> Result<Cutover, StoreError> {
        let name = partition.map(str::to_owned);
        self.with(move |connection| {
            // Immediate: no change can be recorded between the check and the flag.
            let transaction = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (n_objects, changed_at): (i64, Option<i64>) = transaction
                .prepare_cached(
                    "SELECT COUNT(*), MAX(changed_at) FROM objects
                     WHERE migration_id = ?1 AND partition_key IS ?2",
                )?
                .query_row(params![migration.0, name], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            if n_objects == 0 {
                return Ok(Cutover::Unknown);
            }
            let row_name = name.unwrap_or_default();
            let row = transaction
                .prepare_cached(&format!("{CHECKPOINTS} AND name = ?2"))?
                .query_row(params![migration.0, row_name], checkpoint_row)
                .optional()?
                .unwrap_or_default();
            let verdict = row.cutover(changed_at);
            if verdict == Cutover::Done {
                transaction
                    .prepare_cached(
                        "UPDATE partitions SET cut_over_at = ?3 WHERE migration_id = ?1 AND name = ?2",
                    )?
                    .execute(params![migration.0, row_name, at])?;
            }
            transaction.commit()?;
            Ok(verdict)
        })
        .await
    }

    pub(super) async fn record_notice(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        notice: &Notice,
    ) -> Result<(), StoreError> {
        let name = partition.unwrap_or("").to_owned();
        let notice = notice.clone();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            ensure_row(&transaction, migration, &name)?;
            transaction
                .prepare_cached(
                    "UPDATE partitions SET notice_delivered_at = ?3, notice_attempts = ?4,
                       notice_error = ?5
                     WHERE migration_id = ?1 AND name = ?2",
                )?
                .execute(params![
                    migration.0,
                    name,
                    notice.delivered_at,
                    notice.attempts,
                    notice.error
                ])?;
            transaction.commit()
        })
        .await
    }

    pub(super) async fn objects_after(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerObject>, StoreError> {
        let after = after.map(str::to_owned);
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT key, size, state, checksum, dest_etag, group_key, partition_key
                 FROM objects WHERE migration_id = ?1 AND key > COALESCE(?2, '')
                 ORDER BY key LIMIT ?3",
            )?;
            let rows = statement.query_map(params![migration.0, after, limit], |row| {
                Ok(LedgerObject {
                    key: row.get(0)?,
                    size: row.get::<_, i64>(1)? as u64,
                    state: ObjectState::from_code(row.get(2)?).unwrap_or(ObjectState::Pending),
                    checksum: row.get(3)?,
                    dest_etag: row.get(4)?,
                    group: row.get(5)?,
                    partition: row.get(6)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn pass_counts(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<PassCounts, StoreError> {
        self.with(move |connection| {
            let complete: bool = connection
                .prepare_cached(
                    "SELECT scan_completed_at IS NOT NULL FROM passes
                     WHERE migration_id = ?1 AND number = ?2",
                )?
                .query_row(params![migration.0, pass], |row| row.get(0))
                .optional()?
                .unwrap_or(false);
            connection
                .prepare_cached(
                    "SELECT
                       COALESCE(SUM(found_pass = ?2), 0),
                       COALESCE(SUM(version_pass = ?2 AND found_pass < ?2), 0),
                       COALESCE(SUM(error_kind = 'cut_over' AND found_pass = ?2
                         OR version_pass = ?2 AND found_pass < ?2 AND COALESCE(partition_key, '') IN
                           (SELECT name FROM partitions WHERE migration_id = ?1 AND cut_over_at IS NOT NULL)), 0),
                       COALESCE(SUM(?3 AND pass = ?2 - 1), 0)
                     FROM objects WHERE migration_id = ?1",
                )?
                .query_row(params![migration.0, pass, complete], |row| {
                    Ok(PassCounts {
                        new: row.get::<_, i64>(0)? as u64,
                        changed: row.get::<_, i64>(1)? as u64,
                        in_cut_over: row.get::<_, i64>(2)? as u64,
                        vanished: row.get::<_, i64>(3)? as u64,
                    })
                })
        })
        .await
    }
}
