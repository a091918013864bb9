//! What is read back: problems, the fail queue, objects done; requeues and lookups.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::{
    DoneObject, FailedObject, KnownObject, MigrationId, ObjectId, ObjectState, Problem, StoreError,
    millis,
};

use super::PgStore;

/// A page of the fail queue. Read in `id + 0` order, which only `objects_problems` gives, so no
/// plan walks the primary key past every object that did not fail (see `CLAIM`). Public for the
/// plan test.
#[doc(hidden)]
pub const FAILED_PAGE: &str = "SELECT id, key, size, error_kind, attempts, last_error FROM objects
         WHERE migration_id = $1 AND state = 7 AND ($2::text IS NULL OR error_kind = $2)
           AND id + 0 > $3
         ORDER BY id + 0 LIMIT $4";

impl PgStore {
    pub(super) async fn group_problem(
        &self,
        migration: MigrationId,
        group: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT key, state, last_error FROM objects
                         WHERE migration_id = $1 AND group_key = $2 AND state IN (4, 7)
                         ORDER BY key LIMIT 1",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &group],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|row| {
            let state = ObjectState::from_code(row.get(1)).unwrap_or(ObjectState::Failed);
            crate::group_problem(row.get(0), state, row.get(2))
        }))
    }

    pub(super) async fn problems(
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

    pub(super) async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET state = 0, attempts = 0, changed_at = $3
                 WHERE migration_id = $1 AND state = 7 AND ($2::text IS NULL OR error_kind = $2
                   OR group_key IN (SELECT group_key FROM objects WHERE migration_id = $1
                     AND state = 7 AND error_kind = $2 AND group_key IS NOT NULL))",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &class, &millis(SystemTime::now())],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n > 0 {
            // The last pass's listing opened again when it was complete, its shards forgotten:
            // the next run lists all of the source (a name fixed by a rename is found then).
            let reopened = transaction
                .execute(
                    "UPDATE passes SET scan_completed_at = NULL
                     WHERE migration_id = $1 AND scan_completed_at IS NOT NULL
                       AND number = (SELECT MAX(number) FROM passes WHERE migration_id = $1)",
                    &[&migration.0],
                )
                .await
                .map_err(|e| self.db(e))?;
            if reopened > 0 {
                transaction
                    .execute(
                        "DELETE FROM shards WHERE migration_id = $1
                         AND pass = (SELECT MAX(number) FROM passes WHERE migration_id = $1)",
                        &[&migration.0],
                    )
                    .await
                    .map_err(|e| self.db(e))?;
            }
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        Ok(n)
    }

    pub(super) async fn failed(
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

    pub(super) async fn done_objects(
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

    pub(super) async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError> {
        let ids: Vec<i64> = objects.iter().map(|id| id.0).collect();
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE objects SET state = 0, attempts = 0, verified_by = NULL, changed_at = $2 WHERE id = ANY($1) AND state IN (2, 3) AND COALESCE(partition_key, '') NOT IN (SELECT name FROM partitions WHERE migration_id = objects.migration_id AND cut_over_at IS NOT NULL)").await.map_err(|e| self.db(e))?,
                &[&ids, &millis(SystemTime::now())],
            )
            .await
            .map_err(|e| self.db(e))
    }

    pub(super) async fn lookup(
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
