//! Migrations, their status and options, and the workers' heartbeats.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    ControlState, Migration, MigrationId, MigrationSpec, MigrationStatus, Pass, StoreError,
    WorkerBeat, WorkerRecord, from_millis, millis, now,
};

use super::SqliteStore;

fn load_migration(connection: &Connection, name: &str) -> rusqlite::Result<Option<Migration>> {
    let found = connection
        .query_row(
            "SELECT id, source_url, dest_url, source_endpoint, dest_endpoint, options, status FROM migrations WHERE name = ?1",
            params![name],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    MigrationSpec {
                        name: name.to_owned(),
                        source_url: row.get(1)?,
                        dest_url: row.get(2)?,
                        source_endpoint: row.get(3)?,
                        dest_endpoint: row.get(4)?,
                    },
                    row.get::<_, Option<String>>(5)?,
                    MigrationStatus::from_name(row.get::<_, Option<String>>(6)?.as_deref()),
                ))
            },
        )
        .optional()?;
    let Some((id, spec, options, status)) = found else {
        return Ok(None);
    };
    let last_pass = connection
        .query_row(
            "SELECT number, scan_completed_at IS NOT NULL, filter FROM passes
             WHERE migration_id = ?1 ORDER BY number DESC LIMIT 1",
            params![id],
            |row| {
                Ok(Pass {
                    number: row.get(0)?,
                    scan_complete: row.get(1)?,
                    filter: row.get(2)?,
                })
            },
        )
        .optional()?;
    Ok(Some(Migration {
        id: MigrationId(id),
        spec,
        options,
        status,
        last_pass,
    }))
}

impl SqliteStore {
    pub(super) async fn open_migration(
        &self,
        spec: &MigrationSpec,
    ) -> Result<Migration, StoreError> {
        let wanted = spec.clone();
        let migration = self
            .with(move |connection| {
                let spec = wanted;
                if let Some(mut found) = load_migration(connection, &spec.name)? {
                    // Ledgers from before godwit recorded endpoints learn them on first use.
                    if found.spec.source_endpoint.is_none() && found.spec.dest_endpoint.is_none()
                        && found.spec.source_url == spec.source_url
                        && found.spec.dest_url == spec.dest_url
                    {
                        connection.execute(
                            "UPDATE migrations SET source_endpoint = ?2, dest_endpoint = ?3 WHERE id = ?1",
                            params![found.id.0, spec.source_endpoint, spec.dest_endpoint],
                        )?;
                        found.spec = spec;
                    }
                    return Ok(found);
                }
                connection.execute(
                    "INSERT INTO migrations (name, source_url, dest_url, created_at, source_endpoint, dest_endpoint)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![spec.name, spec.source_url, spec.dest_url, now(), spec.source_endpoint, spec.dest_endpoint],
                )?;
                Ok(Migration {
                    id: MigrationId(connection.last_insert_rowid()),
                    spec,
                    options: None,
                    status: MigrationStatus::Running,
                    last_pass: None,
                })
            })
            .await?;
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
        self.with(move |connection| {
            connection.execute(
                "UPDATE migrations SET status = ?2 WHERE id = ?1",
                params![migration.0, status.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn control_of(
        &self,
        migration: MigrationId,
    ) -> Result<ControlState, StoreError> {
        self.with(move |connection| {
            let (name, throttled_at): (Option<String>, Option<i64>) = connection
                .prepare_cached("SELECT status, throttled_at FROM migrations WHERE id = ?1")?
                .query_row(params![migration.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(ControlState {
                status: MigrationStatus::from_name(name.as_deref()),
                throttled_at: throttled_at.map(from_millis),
            })
        })
        .await
    }

    pub(super) async fn note_throttled(
        &self,
        migration: MigrationId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        let at = millis(at);
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE migrations SET throttled_at = MAX(COALESCE(throttled_at, 0), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![migration.0, at])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        let beat = beat.clone();
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO workers (name, host, pid, started_at, heartbeat_at, migration,
                       packets_in_flight, objects_in_flight, bytes_per_second)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    beat.name,
                    beat.host,
                    beat.pid,
                    beat.started_at,
                    now(),
                    beat.migration,
                    beat.packets_in_flight as i64,
                    beat.objects_in_flight as i64,
                    beat.bytes_per_second as i64
                ])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT name, host, pid, started_at, migration, packets_in_flight,
                   objects_in_flight, bytes_per_second, heartbeat_at FROM workers ORDER BY heartbeat_at DESC, name",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(WorkerRecord {
                    beat: WorkerBeat {
                        name: row.get(0)?,
                        host: row.get(1)?,
                        pid: row.get(2)?,
                        started_at: row.get(3)?,
                        migration: row.get(4)?,
                        packets_in_flight: row.get::<_, i64>(5)? as u64,
                        objects_in_flight: row.get::<_, i64>(6)? as u64,
                        bytes_per_second: row.get::<_, i64>(7)? as u64,
                    },
                    heartbeat_at: row.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn save_options(
        &self,
        migration: MigrationId,
        options: &str,
    ) -> Result<(), StoreError> {
        let options = options.to_owned();
        self.with(move |connection| {
            connection.execute(
                "UPDATE migrations SET options = ?2 WHERE id = ?1",
                params![migration.0, options],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError> {
        let name = name.to_owned();
        self.with(move |connection| load_migration(connection, &name))
            .await
    }

    pub(super) async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        self.with(|connection| {
            let names: Vec<String> = connection
                .prepare("SELECT name FROM migrations ORDER BY id")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut migrations = Vec::with_capacity(names.len());
            for name in names {
                migrations.extend(load_migration(connection, &name)?);
            }
            Ok(migrations)
        })
        .await
    }
}
