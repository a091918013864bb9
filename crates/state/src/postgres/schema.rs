//! The PostgreSQL ledger's schema: one step a version, applied under an advisory lock.

use crate::StoreError;

use super::PgStore;

/// The schema, one step a version: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: [&str; 9] = [
    "
CREATE TABLE migrations (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_url TEXT NOT NULL,
    dest_url TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    source_endpoint TEXT,
    dest_endpoint TEXT
);
CREATE TABLE passes (
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    number BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    scan_completed_at BIGINT,
    filter TEXT,
    PRIMARY KEY (migration_id, number)
);
CREATE TABLE objects (
    id BIGSERIAL PRIMARY KEY,
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    key TEXT COLLATE \"C\" NOT NULL,
    size BIGINT NOT NULL,
    version TEXT NOT NULL,
    state BIGINT NOT NULL,
    pass BIGINT NOT NULL,
    group_key TEXT,
    partition_key TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    checksum TEXT,
    dest_etag TEXT,
    dest_version TEXT,
    verified_by TEXT,
    error_kind TEXT,
    last_error TEXT,
    lease_owner TEXT,
    lease_expires BIGINT,
    upload_id TEXT,
    part_size BIGINT,
    updated_at BIGINT NOT NULL,
    upload_size BIGINT,
    upload_version TEXT,
    upload_started_at BIGINT,
    written_etag TEXT,
    written_version TEXT,
    first_claimed_at BIGINT,
    metadata TEXT,
    UNIQUE (migration_id, key)
);
CREATE TABLE parts (
    object_id BIGINT NOT NULL REFERENCES objects(id),
    part_number BIGINT NOT NULL,
    etag TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size BIGINT NOT NULL,
    md5 TEXT,
    PRIMARY KEY (object_id, part_number)
);
CREATE INDEX objects_pending ON objects (migration_id, id) WHERE state = 0;
CREATE INDEX objects_in_progress ON objects (migration_id, lease_expires) WHERE state = 1;
CREATE INDEX objects_problems ON objects (migration_id, id) WHERE state IN (4, 7);
CREATE INDEX objects_uploads ON objects (migration_id)
    WHERE upload_id IS NOT NULL OR upload_started_at IS NOT NULL;
",
    "
ALTER TABLE objects ADD COLUMN lease_token BIGINT;
CREATE SEQUENCE lease_tokens;
CREATE INDEX objects_leases ON objects (lease_owner) WHERE state = 1;
",
    "
ALTER TABLE migrations ADD COLUMN options TEXT;
",
    "
ALTER TABLE migrations ADD COLUMN status TEXT;
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    migration TEXT,
    packets_in_flight BIGINT NOT NULL,
    objects_in_flight BIGINT NOT NULL,
    bytes_per_second BIGINT NOT NULL
);
",
    "
ALTER TABLE migrations ADD COLUMN throttled_at BIGINT;
",
    "
CREATE TABLE shards (
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    pass BIGINT NOT NULL,
    name TEXT COLLATE \"C\" NOT NULL,
    state BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires BIGINT,
    lease_token BIGINT,
    after TEXT COLLATE \"C\",
    PRIMARY KEY (migration_id, pass, name)
);
CREATE INDEX shards_leases ON shards (lease_owner) WHERE state = 1;
",
    // Claims in progress are few (what a fleet has in hand), so `objects_leases` serves the
    // search for expired ones too: one index fewer to write per claim. The pending objects are
    // indexed by `id + 0`, an order only this index gives (see `CLAIM`).
    "
DROP INDEX objects_in_progress;
DROP INDEX objects_pending;
CREATE INDEX objects_pending ON objects (migration_id, (id + 0)) WHERE state = 0;
",
    // The members of a group, for whole-group claims; conflicts and failures in an order only
    // their index gives (see `FAILED_PAGE`).
    "
CREATE INDEX objects_groups ON objects (migration_id, group_key) WHERE group_key IS NOT NULL;
DROP INDEX objects_problems;
CREATE INDEX objects_problems ON objects (migration_id, (id + 0)) WHERE state IN (4, 7);
",
    // Partitions' checkpoints; when each object was found, last became work, and the pass its
    // version was first seen in (for delta passes' counts and cutover's "nothing changed").
    "
ALTER TABLE objects ADD COLUMN changed_at BIGINT, ADD COLUMN found_pass BIGINT,
    ADD COLUMN version_pass BIGINT;
CREATE TABLE partitions (
    migration_id BIGINT NOT NULL REFERENCES migrations(id),
    name TEXT COLLATE \"C\" NOT NULL,
    validated_at BIGINT,
    validation_passed BOOLEAN,
    validation TEXT,
    cut_over_at BIGINT,
    notice_delivered_at BIGINT,
    notice_attempts BIGINT,
    notice_error TEXT,
    PRIMARY KEY (migration_id, name)
);
",
];

/// The advisory lock key under which schema changes are applied (any constant of godwit's own).
const SCHEMA_LOCK: i64 = 0x676f_6477_6974;

impl PgStore {
    /// Applies the schema changes this ledger lacks, once, whoever opens it first.
    pub(super) async fn migrate_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(|e| self.db(e))?;
        transaction
            .batch_execute("CREATE TABLE IF NOT EXISTS godwit_schema (version BIGINT NOT NULL)")
            .await
            .map_err(|e| self.db(e))?;
        let version: i64 = transaction
            .query_opt("SELECT version FROM godwit_schema", &[])
            .await
            .map_err(|e| self.db(e))?
            .map_or(0, |row| row.get(0));
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(self.error(format!(
                "it was written by a newer godwit (schema {version}, this one knows {known}); upgrade godwit"
            )));
        }
        for step in &MIGRATIONS[version as usize..] {
            transaction
                .batch_execute(step)
                .await
                .map_err(|e| self.db(e))?;
        }
        if version == 0 {
            transaction
                .execute("INSERT INTO godwit_schema (version) VALUES ($1)", &[&known])
                .await
                .map_err(|e| self.db(e))?;
        } else if version < known {
            transaction
                .execute("UPDATE godwit_schema SET version = $1", &[&known])
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))
    }
}
