//! The counters (schema step 10): each migration's objects and bytes by partition and state
//! (`tallies`), and how many of each partition's objects last became work at each time
//! (`change_times`, whose greatest time with objects is the partition's last change).
//! Statement-level triggers on `objects` add what each statement changed as rows of their own,
//! in its transaction, so no statement can leave the counters behind and concurrent writers
//! never wait on one another's counter rows; reads sum those rows with the folded ones, and now
//! and then a trigger folds them (`godwit_fold_counters`, whose comment says why that is safe).

use crate::partition::{PartitionCounts, partition_name};
use crate::{MigrationId, ObjectState, StoreError, Tally};

use super::PgStore;

/// The migration's objects and bytes by state: its folded rows and those not folded yet, each
/// read through its own index.
const TALLY: &str = "SELECT state, SUM(objects)::bigint, SUM(bytes)::bigint FROM (
       SELECT state, objects, bytes FROM tallies WHERE migration_id = $1 AND folded
       UNION ALL
       SELECT state, objects, bytes FROM tallies WHERE migration_id = $1 AND NOT folded
     ) AS counters GROUP BY state";

/// The migration's counts by partition and state (`changed_at` null), then each partition's last
/// change (`state` null): one statement, so both come from one snapshot.
const COUNTED: &str = "WITH counts AS (
       SELECT partition_key, state, SUM(objects)::bigint AS objects, SUM(bytes)::bigint AS bytes
       FROM (
         SELECT partition_key, state, objects, bytes FROM tallies
         WHERE migration_id = $1 AND folded
         UNION ALL
         SELECT partition_key, state, objects, bytes FROM tallies
         WHERE migration_id = $1 AND NOT folded
       ) AS counters GROUP BY 1, 2 HAVING SUM(objects) <> 0
     ), times AS (
       SELECT partition_key, changed_at FROM (
         SELECT partition_key, changed_at, objects FROM change_times
         WHERE migration_id = $1 AND folded
         UNION ALL
         SELECT partition_key, changed_at, objects FROM change_times
         WHERE migration_id = $1 AND NOT folded
       ) AS counters GROUP BY 1, 2 HAVING SUM(objects) > 0
     )
     SELECT partition_key, state, objects, bytes, NULL::bigint FROM counts
     UNION ALL
     SELECT partition_key, NULL, NULL, NULL, MAX(changed_at) FROM times GROUP BY 1";

/// The migration's objects counted anew, as `COUNTED` must find them.
const RECOUNT: &str = "SELECT COALESCE(partition_key, ''), state, COUNT(*),
       COALESCE(SUM(size), 0)::bigint, MAX(changed_at)
     FROM objects WHERE migration_id = $1 GROUP BY 1, 2";

/// Adds rows of (partition, state, objects, bytes, changed_at) to counts; a row without a state
/// only says when the partition last changed (and only of a partition with objects).
fn counts_of(rows: &[tokio_postgres::Row]) -> PartitionCounts {
    let mut counts = PartitionCounts::new();
    for row in rows
        .iter()
        .filter(|row| row.get::<_, Option<i64>>(1).is_some())
    {
        let count = counts.entry(partition_name(row.get(0))).or_default();
        if let Some(state) = ObjectState::from_code(row.get(1)) {
            count.tally.objects[state as usize] = row.get::<_, i64>(2) as u64;
            count.tally.bytes[state as usize] = row.get::<_, i64>(3) as u64;
        }
        count.changed_at = count.changed_at.max(row.get(4));
    }
    for row in rows
        .iter()
        .filter(|row| row.get::<_, Option<i64>>(1).is_none())
    {
        if let Some(count) = counts.get_mut(&partition_name(row.get(0))) {
            count.changed_at = row.get(4);
        }
    }
    counts
}

impl PgStore {
    pub(super) async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(TALLY).await.map_err(|e| self.db(e))?;
        let rows = client
            .query(&statement, &[&migration.0])
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

    /// Runs a statement of counts (see `counts_of`) for the migration.
    async fn counts(
        &self,
        sql: &str,
        migration: MigrationId,
    ) -> Result<PartitionCounts, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(e))?;
        let rows = client
            .query(&statement, &[&migration.0])
            .await
            .map_err(|e| self.db(e))?;
        Ok(counts_of(&rows))
    }

    /// What the counters hold for the migration, by partition.
    #[doc(hidden)]
    pub async fn counted(&self, migration: MigrationId) -> Result<PartitionCounts, StoreError> {
        self.counts(COUNTED, migration).await
    }

    /// The migration's objects counted anew by partition and state, as the counters must
    /// count them (a full scan of its objects: for tests and checks).
    #[doc(hidden)]
    pub async fn recount(&self, migration: MigrationId) -> Result<PartitionCounts, StoreError> {
        self.counts(RECOUNT, migration).await
    }

    /// Folds the counters' rows now (the triggers do it now and then), unless another fold is
    /// under way.
    #[doc(hidden)]
    pub async fn fold_counters(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT godwit_fold_counters()", &[])
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}
