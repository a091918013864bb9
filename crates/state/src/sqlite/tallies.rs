//! The counters: each migration's objects and bytes by partition and state (`tallies`), and how
//! many of each partition's objects last became work at each time (`change_times`, whose
//! greatest time is the partition's last change). Triggers on `objects` keep them in the same
//! transaction as every insert, update and delete, so no statement can leave them behind;
//! `tally` and `partitions` read them instead of counting a migration's objects.

use rusqlite::{Connection, params};

use crate::partition::{PartitionCount, PartitionCounts, partition_name};
use crate::{MigrationId, ObjectState, StoreError, Tally};

use super::SqliteStore;

/// The counters' tables and the triggers that keep them. A row of `tallies` may fall to zero
/// objects (read as no row); a row of `change_times` that does is deleted, so the greatest time
/// left is always one an object of the partition holds. Partitions are named as their
/// checkpoint rows name them: `""` for the objects in none.
const COUNTERS: &str = "
CREATE TABLE tallies (
    migration_id INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    state INTEGER NOT NULL,
    objects INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (migration_id, partition_key, state)
) WITHOUT ROWID;
CREATE TABLE change_times (
    migration_id INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    changed_at INTEGER NOT NULL,
    objects INTEGER NOT NULL,
    PRIMARY KEY (migration_id, partition_key, changed_at)
) WITHOUT ROWID;
CREATE TRIGGER objects_counted_in AFTER INSERT ON objects BEGIN
    INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
    VALUES (NEW.migration_id, COALESCE(NEW.partition_key, ''), NEW.state, 1, NEW.size)
    ON CONFLICT (migration_id, partition_key, state)
    DO UPDATE SET objects = objects + 1, bytes = bytes + excluded.bytes;
    INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
    SELECT NEW.migration_id, COALESCE(NEW.partition_key, ''), NEW.changed_at, 1
    WHERE NEW.changed_at IS NOT NULL
    ON CONFLICT (migration_id, partition_key, changed_at) DO UPDATE SET objects = objects + 1;
END;
CREATE TRIGGER objects_counted_again AFTER UPDATE OF migration_id, partition_key, state, size
ON objects
WHEN OLD.migration_id IS NOT NEW.migration_id OR OLD.partition_key IS NOT NEW.partition_key
    OR OLD.state IS NOT NEW.state OR OLD.size IS NOT NEW.size
BEGIN
    UPDATE tallies SET objects = objects - 1, bytes = bytes - OLD.size
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND state = OLD.state;
    INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
    VALUES (NEW.migration_id, COALESCE(NEW.partition_key, ''), NEW.state, 1, NEW.size)
    ON CONFLICT (migration_id, partition_key, state)
    DO UPDATE SET objects = objects + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER objects_changed_again AFTER UPDATE OF migration_id, partition_key, changed_at
ON objects
WHEN OLD.migration_id IS NOT NEW.migration_id OR OLD.partition_key IS NOT NEW.partition_key
    OR OLD.changed_at IS NOT NEW.changed_at
BEGIN
    UPDATE change_times SET objects = objects - 1
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND changed_at = OLD.changed_at;
    DELETE FROM change_times
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND changed_at = OLD.changed_at AND objects = 0;
    INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
    SELECT NEW.migration_id, COALESCE(NEW.partition_key, ''), NEW.changed_at, 1
    WHERE NEW.changed_at IS NOT NULL
    ON CONFLICT (migration_id, partition_key, changed_at) DO UPDATE SET objects = objects + 1;
END;
CREATE TRIGGER objects_counted_out AFTER DELETE ON objects BEGIN
    UPDATE tallies SET objects = objects - 1, bytes = bytes - OLD.size
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND state = OLD.state;
    UPDATE change_times SET objects = objects - 1
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND changed_at = OLD.changed_at;
    DELETE FROM change_times
    WHERE migration_id = OLD.migration_id AND partition_key = COALESCE(OLD.partition_key, '')
        AND changed_at = OLD.changed_at AND objects = 0;
END;
INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
SELECT migration_id, COALESCE(partition_key, ''), state, COUNT(*), COALESCE(SUM(size), 0)
FROM objects GROUP BY 1, 2, 3;
INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
SELECT migration_id, COALESCE(partition_key, ''), changed_at, COUNT(*)
FROM objects WHERE changed_at IS NOT NULL GROUP BY 1, 2, 3;
";

/// Whether the ledger has its counters (one of schema 4 or later).
pub(super) fn has_counters(connection: &Connection) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tallies'",
        [],
        |row| row.get(0),
    )
}

/// Gives a ledger without counters its counters, filled from its objects: in one transaction
/// with the triggers, so that no object is counted twice or left out.
pub(super) fn install_counters(connection: &Connection) -> rusqlite::Result<()> {
    if has_counters(connection)? {
        return Ok(());
    }
    connection.execute_batch(&format!("BEGIN IMMEDIATE; {COUNTERS} COMMIT;"))
}

/// Counts the migration's objects by partition and state (what the counters must hold).
const RECOUNT: &str = "SELECT COALESCE(partition_key, ''), state, COUNT(*), COALESCE(SUM(size), 0),
       MAX(changed_at)
     FROM objects WHERE migration_id = ?1 GROUP BY 1, 2";

/// Adds a row of counts (partition, state, objects, bytes) to `counts`; its partition's count.
fn add<'a>(
    counts: &'a mut PartitionCounts,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<&'a mut PartitionCount> {
    let count = counts.entry(partition_name(row.get(0)?)).or_default();
    if let Some(state) = ObjectState::from_code(row.get(1)?) {
        count.tally.objects[state as usize] = row.get::<_, i64>(2)? as u64;
        count.tally.bytes[state as usize] = row.get::<_, i64>(3)? as u64;
    }
    Ok(count)
}

/// The migration's objects counted anew.
pub(super) fn recount(
    connection: &Connection,
    migration: MigrationId,
) -> rusqlite::Result<PartitionCounts> {
    let mut statement = connection.prepare_cached(RECOUNT)?;
    let mut rows = statement.query(params![migration.0])?;
    let mut counts = PartitionCounts::new();
    while let Some(row) = rows.next()? {
        let count = add(&mut counts, row)?;
        count.changed_at = count.changed_at.max(row.get(4)?);
    }
    Ok(counts)
}

/// What the counters hold for the migration.
pub(super) fn counted(
    connection: &Connection,
    migration: MigrationId,
) -> rusqlite::Result<PartitionCounts> {
    let mut counts = PartitionCounts::new();
    {
        let mut statement = connection.prepare_cached(
            "SELECT partition_key, state, objects, bytes FROM tallies
             WHERE migration_id = ?1 AND objects != 0",
        )?;
        let mut rows = statement.query(params![migration.0])?;
        while let Some(row) = rows.next()? {
            add(&mut counts, row)?;
        }
    }
    let mut statement = connection.prepare_cached(
        "SELECT partition_key, MAX(changed_at) FROM change_times
         WHERE migration_id = ?1 AND objects > 0 GROUP BY partition_key",
    )?;
    let mut rows = statement.query(params![migration.0])?;
    while let Some(row) = rows.next()? {
        if let Some(count) = counts.get_mut(&partition_name(row.get(0)?)) {
            count.changed_at = row.get(1)?;
        }
    }
    Ok(counts)
}

impl SqliteStore {
    pub(super) async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError> {
        if !self.counters {
            // A ledger of an older schema, read while an older godwit holds it.
            return Ok(crate::tally_of(&self.recount(migration).await?));
        }
        self.with(move |connection| {
            let mut tally = Tally::default();
            let mut statement = connection.prepare_cached(
                "SELECT state, SUM(objects), SUM(bytes) FROM tallies WHERE migration_id = ?1
                 GROUP BY state",
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

    /// What the counters hold for the migration, by partition.
    #[doc(hidden)]
    pub async fn counted(&self, migration: MigrationId) -> Result<PartitionCounts, StoreError> {
        self.with(move |connection| counted(connection, migration))
            .await
    }

    /// The migration's objects counted anew by partition and state, as the counters must
    /// count them (a full scan of its objects: for tests and checks).
    #[doc(hidden)]
    pub async fn recount(&self, migration: MigrationId) -> Result<PartitionCounts, StoreError> {
        self.with(move |connection| recount(connection, migration))
            .await
    }
}
