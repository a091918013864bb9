//! A page of a migration's objects, in key order, from a bounded stretch of the
//! `(migration_id, key)` index.

use rusqlite::params;

use crate::listing::settle;
use crate::{MigrationId, ObjectPage, ObjectQuery, ObjectRow, ObjectState, StoreError};

use super::SqliteStore;

/// The objects of a key range in key order (`?2` on, but not `?3`), up to `?4` of them; keys
/// compare byte by byte (SQLite's BINARY collation), as S3 orders them.
const PAGE: &str = "SELECT key, size, state, attempts, error_kind, last_error, dest_etag,
       partition_key, group_key, changed_at
     FROM objects WHERE migration_id = ?1 AND key >= ?2 AND key IS NOT ?3
     ORDER BY key LIMIT ?4";

/// `PAGE` for a range with an end (`?5`, exclusive): a prefix's.
const PAGE_TO: &str = "SELECT key, size, state, attempts, error_kind, last_error, dest_etag,
       partition_key, group_key, changed_at
     FROM objects WHERE migration_id = ?1 AND key >= ?2 AND key IS NOT ?3 AND key < ?5
     ORDER BY key LIMIT ?4";

fn object_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectRow> {
    Ok(ObjectRow {
        key: row.get(0)?,
        size: row.get::<_, i64>(1)? as u64,
        state: ObjectState::from_code(row.get(2)?).unwrap_or(ObjectState::Pending),
        attempts: row.get(3)?,
        error_kind: row.get(4)?,
        error_message: row.get(5)?,
        dest_etag: row.get(6)?,
        partition: row.get(7)?,
        group: row.get(8)?,
        changed_at: row.get(9)?,
    })
}

impl SqliteStore {
    pub(super) async fn objects_page(
        &self,
        migration: MigrationId,
        query: ObjectQuery,
    ) -> Result<ObjectPage, StoreError> {
        self.with(move |connection| {
            let range = query.range();
            let budget = query.budget();
            let limit = query.page_size() as usize;
            let mut statement = match &range.upper {
                Some(_) => connection.prepare_cached(PAGE_TO)?,
                None => connection.prepare_cached(PAGE)?,
            };
            let mut rows = match &range.upper {
                Some(upper) => statement.query(params![
                    migration.0,
                    range.lower,
                    range.excluded,
                    budget,
                    upper
                ])?,
                None => {
                    statement.query(params![migration.0, range.lower, range.excluded, budget])?
                }
            };
            // Rows are read as they are stepped to: the read stops at one match more than the
            // page holds.
            let (mut matched, mut n_read, mut last_read) = (Vec::new(), 0, None);
            while let Some(row) = rows.next()? {
                n_read += 1;
                let state = ObjectState::from_code(row.get(2)?);
                if query.state.is_some() && query.state != state {
                    last_read = Some(row.get(0)?);
                    continue;
                }
                let object = object_row(row)?;
                last_read = Some(object.key.clone());
                matched.push(object);
                if matched.len() > limit {
                    break;
                }
            }
            Ok(settle(&query, matched, n_read, last_read))
        })
        .await
    }
}
