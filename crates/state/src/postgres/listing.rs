//! A page of a migration's objects, in key order, from a bounded stretch of the
//! `(migration_id, key)` index.

use crate::listing::settle;
use crate::{MigrationId, ObjectPage, ObjectQuery, ObjectRow, ObjectState, StoreError};

use super::PgStore;

/// A page of objects in a range of keys with an end: up to `$4` rows read in key order from `$2`
/// (inclusive, but not `$3`, the cursor) up to `$7` (exclusive), all three index bounds so the
/// read stops where the range does; of those, the first `$6` in state `$5` (or any). Every row
/// also says how many rows were read and the last key read (with no match, one row says only
/// that). Keys compare byte by byte (`COLLATE "C"`). Public for the plan test.
#[doc(hidden)]
pub const OBJECTS_PAGE: &str = "WITH examined AS MATERIALIZED (
           SELECT key, size, state, attempts, error_kind, last_error, dest_etag, partition_key,
             group_key, changed_at
           FROM objects
           WHERE migration_id = $1 AND key >= $2 AND key IS DISTINCT FROM $3 AND key < $7
           ORDER BY key LIMIT $4
         ), span AS (SELECT COUNT(*) AS n_read, MAX(key) AS last_read FROM examined)
         SELECT span.n_read, span.last_read, page.* FROM span LEFT JOIN LATERAL (
           SELECT * FROM examined WHERE $5::bigint IS NULL OR state = $5 ORDER BY key LIMIT $6
         ) AS page ON true";

/// `OBJECTS_PAGE` for a range that runs to the last key (no `$7`).
const OBJECTS_PAGE_TO_END: &str = "WITH examined AS MATERIALIZED (
           SELECT key, size, state, attempts, error_kind, last_error, dest_etag, partition_key,
             group_key, changed_at
           FROM objects
           WHERE migration_id = $1 AND key >= $2 AND key IS DISTINCT FROM $3
           ORDER BY key LIMIT $4
         ), span AS (SELECT COUNT(*) AS n_read, MAX(key) AS last_read FROM examined)
         SELECT span.n_read, span.last_read, page.* FROM span LEFT JOIN LATERAL (
           SELECT * FROM examined WHERE $5::bigint IS NULL OR state = $5 ORDER BY key LIMIT $6
         ) AS page ON true";

impl PgStore {
    pub(super) async fn objects_page(
        &self,
        migration: MigrationId,
        query: ObjectQuery,
    ) -> Result<ObjectPage, StoreError> {
        let range = query.range();
        let budget = i64::from(query.budget());
        let state = query.state.map(|state| state as i64);
        // One match more than the page holds says whether a next page starts after it.
        let n_matches = i64::from(query.page_size()) + 1;
        let client = self.client().await?;
        let rows = match &range.upper {
            Some(upper) => {
                let statement = client
                    .prepare_cached(OBJECTS_PAGE)
                    .await
                    .map_err(|e| self.db(e))?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                    &migration.0,
                    &range.lower,
                    &range.excluded,
                    &budget,
                    &state,
                    &n_matches,
                    upper,
                ];
                client.query(&statement, &params).await
            }
            None => {
                let statement = client
                    .prepare_cached(OBJECTS_PAGE_TO_END)
                    .await
                    .map_err(|e| self.db(e))?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                    &migration.0,
                    &range.lower,
                    &range.excluded,
                    &budget,
                    &state,
                    &n_matches,
                ];
                client.query(&statement, &params).await
            }
        }
        .map_err(|e| self.db(e))?;
        let n_read = rows.first().map_or(0, |row| row.get::<_, i64>(0)) as u64;
        let last_read = rows.first().and_then(|row| row.get(1));
        let matched = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(2).is_some())
            .map(|row| ObjectRow {
                key: row.get(2),
                size: row.get::<_, i64>(3) as u64,
                state: ObjectState::from_code(row.get(4)).unwrap_or(ObjectState::Pending),
                attempts: row.get::<_, i64>(5) as u32,
                error_kind: row.get(6),
                error_message: row.get(7),
                dest_etag: row.get(8),
                partition: row.get(9),
                group: row.get(10),
                changed_at: row.get(11),
            })
            .collect();
        Ok(settle(&query, matched, n_read, last_read))
    }
}
