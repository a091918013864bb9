//! What is read back: problems, the fail queue, objects done; requeues and lookups.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};

use crate::{
    DoneObject, FailedObject, KnownObject, MigrationId, ObjectId, ObjectState, Problem, StoreError,
    millis,
};

use super::SqliteStore;

/// A page of the fail queue. `state IN (4, 7)` repeats the partial index `objects_problems`'s
/// condition, which SQLite must find in the query to use it (`state = 7` alone does not imply
/// it there): without it, the first page of a million-object migration reads every row.
pub(super) const FAILED_PAGE: &str = "SELECT id, key, size, error_kind, attempts, last_error
    FROM objects
    WHERE migration_id = ?1 AND state IN (4, 7) AND state = 7
      AND (?2 IS NULL OR error_kind = ?2) AND id > ?3
    ORDER BY id LIMIT ?4";
impl SqliteStore {
    pub(super) async fn problems(
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

    pub(super) async fn group_problem(
        &self,
        migration: MigrationId,
        group: &str,
    ) -> Result<Option<String>, StoreError> {
        let group = group.to_owned();
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "SELECT key, state, last_error FROM objects
                     WHERE migration_id = ?1 AND group_key = ?2 AND state IN (4, 7)
                     ORDER BY key LIMIT 1",
                )?
                .query_row(params![migration.0, group], |row| {
                    let state = ObjectState::from_code(row.get(1)?).unwrap_or(ObjectState::Failed);
                    Ok(crate::group_problem(row.get(0)?, state, row.get(2)?))
                })
                .optional()
        })
        .await
    }

    pub(super) async fn done_objects(
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

    pub(super) async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        let ids: Vec<i64> = objects.iter().map(|id| id.0).collect();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let mut n = 0;
            {
                let mut update = transaction.prepare_cached(
                    "UPDATE objects SET state = 0, attempts = 0, verified_by = NULL, changed_at = ?2
                     WHERE id = ?1 AND state IN (2, 3)
                       AND COALESCE(partition_key, '') NOT IN (SELECT name FROM partitions
                         WHERE migration_id = objects.migration_id AND cut_over_at IS NOT NULL)",
                )?;
                let at = millis(SystemTime::now());
                for id in ids {
                    n += update.execute(params![id, at])? as u64;
                }
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
    }

    pub(super) async fn lookup(
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

    /// See [`Store::requeue_failed`](crate::Store::requeue_failed): the objects, and the last
    /// pass's listing opened again when it was complete (its shards forgotten, so all of the
    /// source is listed).
    pub(super) async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        let class = class.map(str::to_owned);
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET state = 0, attempts = 0, changed_at = ?3
                 WHERE migration_id = ?1 AND state = 7 AND (?2 IS NULL OR error_kind = ?2
                   OR group_key IN (SELECT group_key FROM objects WHERE migration_id = ?1
                     AND state = 7 AND error_kind = ?2 AND group_key IS NOT NULL))",
                params![migration.0, class, millis(SystemTime::now())],
            )?;
            if n > 0 {
                let reopened = transaction.execute(REOPEN_LAST_SCAN, params![migration.0])?;
                if reopened > 0 {
                    transaction.execute(FORGET_LAST_SHARDS, params![migration.0])?;
                }
            }
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<FailedObject>, StoreError> {
        let class = class.map(str::to_owned);
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(FAILED_PAGE)?;
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

/// The last pass of migration `?1` not listed in full any more, if it was.
const REOPEN_LAST_SCAN: &str = "UPDATE passes SET scan_completed_at = NULL
    WHERE migration_id = ?1 AND scan_completed_at IS NOT NULL
      AND number = (SELECT MAX(number) FROM passes WHERE migration_id = ?1)";

/// The shards of migration `?1`'s last pass, so its next listing plans and lists them afresh.
const FORGET_LAST_SHARDS: &str = "DELETE FROM shards WHERE migration_id = ?1
    AND pass = (SELECT MAX(number) FROM passes WHERE migration_id = ?1)";
