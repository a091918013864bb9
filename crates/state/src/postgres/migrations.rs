//! Migrations, their status and options, and the workers' heartbeats.

use crate::{
    ControlState, Migration, MigrationId, MigrationSpec, MigrationStatus, Pass, StoreError,
    WorkerBeat, WorkerRecord, from_millis, millis, now,
};

use super::PgStore;

impl PgStore {
    async fn load_migration(
        &self,
        client: &deadpool_postgres::Client,
        name: &str,
    ) -> Result<Option<Migration>, StoreError> {
        let Some(row) = client
            .query_opt(
                &client.prepare_cached("SELECT id, source_url, dest_url, source_endpoint, dest_endpoint, options, status FROM migrations WHERE name = $1").await.map_err(|e| self.db(e))?,
                &[&name],
            )
            .await
            .map_err(|e| self.db(e))?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let spec = MigrationSpec {
            name: name.to_owned(),
            source_url: row.get(1),
            dest_url: row.get(2),
            source_endpoint: row.get(3),
            dest_endpoint: row.get(4),
        };
        let last_pass = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT number, scan_completed_at IS NOT NULL, filter FROM passes
                 WHERE migration_id = $1 ORDER BY number DESC LIMIT 1",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&id],
            )
            .await
            .map_err(|e| self.db(e))?
            .map(|row| Pass {
                number: row.get::<_, i64>(0) as u32,
                scan_complete: row.get(1),
                filter: row.get(2),
            });
        Ok(Some(Migration {
            id: MigrationId(id),
            spec,
            options: row.get(5),
            status: MigrationStatus::from_name(row.get::<_, Option<String>>(6).as_deref()),
            last_pass,
        }))
    }

    pub(super) async fn open_migration(
        &self,
        spec: &MigrationSpec,
    ) -> Result<Migration, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("INSERT INTO migrations (name, source_url, dest_url, created_at, source_endpoint, dest_endpoint)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING").await.map_err(|e| self.db(e))?,
                &[
                    &spec.name,
                    &spec.source_url,
                    &spec.dest_url,
                    &now(),
                    &spec.source_endpoint,
                    &spec.dest_endpoint,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        let migration = self
            .load_migration(&client, &spec.name)
            .await?
            .ok_or_else(|| self.error("the migration vanished as it was created"))?;
        if migration.spec != *spec {
            return Err(StoreError::NameTaken {
                name: spec.name.clone(),
                recorded: migration.spec.describe(),
            });
        }
        Ok(migration)
    }

    pub(super) async fn set_status(
        &self,
        migration: MigrationId,
        status: MigrationStatus,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE migrations SET status = $2 WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &status.as_str()],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn control_of(
        &self,
        migration: MigrationId,
    ) -> Result<ControlState, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT status, throttled_at FROM migrations WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(ControlState {
            status: MigrationStatus::from_name(row.get::<_, Option<String>>(0).as_deref()),
            throttled_at: row.get::<_, Option<i64>>(1).map(from_millis),
        })
    }

    pub(super) async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE migrations SET throttled_at = GREATEST(COALESCE(throttled_at, 0), $2)
                 WHERE id = $1").await.map_err(|e| self.db(e))?,
                &[&migration.0, &millis(at)],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO workers (name, host, pid, started_at, heartbeat_at, migration,
                   packets_in_flight, objects_in_flight, bytes_per_second)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                   migration = excluded.migration, packets_in_flight = excluded.packets_in_flight,
                   objects_in_flight = excluded.objects_in_flight,
                   bytes_per_second = excluded.bytes_per_second",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &beat.name,
                    &beat.host,
                    &i64::from(beat.pid),
                    &beat.started_at,
                    &now(),
                    &beat.migration,
                    &(beat.packets_in_flight as i64),
                    &(beat.objects_in_flight as i64),
                    &(beat.bytes_per_second as i64),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT name, host, pid, started_at, migration, packets_in_flight,
                   objects_in_flight, bytes_per_second, heartbeat_at FROM workers ORDER BY heartbeat_at DESC, name").await.map_err(|e| self.db(e))?,
                &[],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| WorkerRecord {
                beat: WorkerBeat {
                    name: row.get(0),
                    host: row.get(1),
                    pid: row.get::<_, i64>(2) as u32,
                    started_at: row.get(3),
                    migration: row.get(4),
                    packets_in_flight: row.get::<_, i64>(5) as u64,
                    objects_in_flight: row.get::<_, i64>(6) as u64,
                    bytes_per_second: row.get::<_, i64>(7) as u64,
                },
                heartbeat_at: row.get(8),
            })
            .collect())
    }

    pub(super) async fn save_options(
        &self,
        migration: MigrationId,
        options: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE migrations SET options = $2 WHERE id = $1")
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &options],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError> {
        let client = self.client().await?;
        self.load_migration(&client, name).await
    }

    pub(super) async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        let client = self.client().await?;
        let names: Vec<String> = client
            .query(
                &client
                    .prepare_cached("SELECT name FROM migrations ORDER BY id")
                    .await
                    .map_err(|e| self.db(e))?,
                &[],
            )
            .await
            .map_err(|e| self.db(e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut migrations = Vec::with_capacity(names.len());
        for name in names {
            migrations.extend(self.load_migration(&client, &name).await?);
        }
        Ok(migrations)
    }
}
