//! The PostgreSQL ledger's schema: one step a version, applied under an advisory lock.

use crate::StoreError;

use super::PgStore;

/// The schema, one step a version: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: [&str; 10] = [
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
    // The counters (`tallies.rs`): objects and bytes by migration, partition and state, and how
    // many of a partition's objects last became work at each time. Triggers add what each
    // statement changed as rows of their own (`folded` false), which reads sum with the folded
    // rows; now and then a statement's trigger folds them. The triggers come first: creating
    // them locks `objects` against writes until this transaction commits, so the counts taken
    // after them miss no write and count none twice.
    r#"
CREATE TABLE tallies (
    migration_id BIGINT NOT NULL,
    partition_key TEXT COLLATE "C" NOT NULL,
    state BIGINT NOT NULL,
    objects BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    folded BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX tallies_folded ON tallies (migration_id, partition_key, state) WHERE folded;
CREATE INDEX tallies_deltas ON tallies (migration_id, partition_key, state) WHERE NOT folded;
CREATE TABLE change_times (
    migration_id BIGINT NOT NULL,
    partition_key TEXT COLLATE "C" NOT NULL,
    changed_at BIGINT NOT NULL,
    objects BIGINT NOT NULL,
    folded BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX change_times_folded ON change_times (migration_id, partition_key, changed_at)
    WHERE folded;
CREATE INDEX change_times_deltas ON change_times (migration_id, partition_key, changed_at)
    WHERE NOT folded;

-- Folds the rows the triggers added into one row a key (a key whose sum is zero keeps none).
-- The DELETE ... RETURNING is what is summed: under READ COMMITTED a row added by a
-- transaction that commits after this statement began is neither deleted nor summed (a later
-- fold takes it), and a row another fold deleted first is skipped, not returned; the deletes
-- and the new sums commit together, so a reader sees the rows before the fold or after it,
-- never both. One fold runs at a time (the others skip it): two at once could each write a
-- folded row for one key, and wait on each other's deletes. A fold never waits on a writer:
-- writers only add rows. Not under a stricter isolation, where its snapshot could predate
-- the last fold.
CREATE FUNCTION godwit_fold_counters() RETURNS void LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed'
        OR NOT pg_try_advisory_xact_lock(1735353449, 1) THEN
        RETURN;
    END IF;
    WITH gone AS (
        DELETE FROM tallies WHERE NOT folded
        RETURNING migration_id, partition_key, state, objects, bytes
    ), summed AS (
        SELECT migration_id, partition_key, state, SUM(objects) AS objects, SUM(bytes) AS bytes
        FROM gone GROUP BY 1, 2, 3
    ), replaced AS (
        DELETE FROM tallies t USING summed s
        WHERE t.folded AND t.migration_id = s.migration_id AND t.partition_key = s.partition_key
            AND t.state = s.state
        RETURNING t.migration_id, t.partition_key, t.state, t.objects, t.bytes
    )
    INSERT INTO tallies (migration_id, partition_key, state, objects, bytes, folded)
    SELECT s.migration_id, s.partition_key, s.state, s.objects + COALESCE(r.objects, 0),
        s.bytes + COALESCE(r.bytes, 0), true
    FROM summed s LEFT JOIN replaced r USING (migration_id, partition_key, state)
    WHERE s.objects + COALESCE(r.objects, 0) <> 0 OR s.bytes + COALESCE(r.bytes, 0) <> 0;
    WITH gone AS (
        DELETE FROM change_times WHERE NOT folded
        RETURNING migration_id, partition_key, changed_at, objects
    ), summed AS (
        SELECT migration_id, partition_key, changed_at, SUM(objects) AS objects
        FROM gone GROUP BY 1, 2, 3
    ), replaced AS (
        DELETE FROM change_times t USING summed s
        WHERE t.folded AND t.migration_id = s.migration_id AND t.partition_key = s.partition_key
            AND t.changed_at = s.changed_at
        RETURNING t.migration_id, t.partition_key, t.changed_at, t.objects
    )
    INSERT INTO change_times (migration_id, partition_key, changed_at, objects, folded)
    SELECT s.migration_id, s.partition_key, s.changed_at, s.objects + COALESCE(r.objects, 0), true
    FROM summed s LEFT JOIN replaced r USING (migration_id, partition_key, changed_at)
    WHERE s.objects + COALESCE(r.objects, 0) <> 0;
END $$;

-- What one statement changed, summed by key: statement-level triggers, so a claim or a batch
-- of outcomes adds a row or two whatever its size, and writers never update a shared row (no
-- lock waits between them, no deadlocks). About one statement in 256 folds.
CREATE FUNCTION godwit_count_objects() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        WITH delta AS (
            SELECT migration_id, COALESCE(partition_key, '') AS partition_key, state, changed_at,
                SUM(n) AS n, SUM(size) AS size
            FROM (SELECT migration_id, partition_key, state, changed_at, -1, -size FROM old_rows
                UNION ALL
                SELECT migration_id, partition_key, state, changed_at, 1, size FROM new_rows)
                AS moved (migration_id, partition_key, state, changed_at, n, size)
            GROUP BY 1, 2, 3, 4
        ), counted AS (
            INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
            SELECT migration_id, partition_key, state, SUM(n), SUM(size) FROM delta
            GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 OR SUM(size) <> 0
        )
        INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
        SELECT migration_id, partition_key, changed_at, SUM(n) FROM delta
        WHERE changed_at IS NOT NULL GROUP BY 1, 2, 3 HAVING SUM(n) <> 0;
    ELSIF TG_OP = 'INSERT' THEN
        WITH delta AS (
            SELECT migration_id, COALESCE(partition_key, '') AS partition_key, state, changed_at,
                SUM(n) AS n, SUM(size) AS size
            FROM (SELECT migration_id, partition_key, state, changed_at, 1, size FROM new_rows)
                AS moved (migration_id, partition_key, state, changed_at, n, size)
            GROUP BY 1, 2, 3, 4
        ), counted AS (
            INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
            SELECT migration_id, partition_key, state, SUM(n), SUM(size) FROM delta
            GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 OR SUM(size) <> 0
        )
        INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
        SELECT migration_id, partition_key, changed_at, SUM(n) FROM delta
        WHERE changed_at IS NOT NULL GROUP BY 1, 2, 3 HAVING SUM(n) <> 0;
    ELSE
        WITH delta AS (
            SELECT migration_id, COALESCE(partition_key, '') AS partition_key, state, changed_at,
                SUM(n) AS n, SUM(size) AS size
            FROM (SELECT migration_id, partition_key, state, changed_at, -1, -size FROM old_rows)
                AS moved (migration_id, partition_key, state, changed_at, n, size)
            GROUP BY 1, 2, 3, 4
        ), counted AS (
            INSERT INTO tallies (migration_id, partition_key, state, objects, bytes)
            SELECT migration_id, partition_key, state, SUM(n), SUM(size) FROM delta
            GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 OR SUM(size) <> 0
        )
        INSERT INTO change_times (migration_id, partition_key, changed_at, objects)
        SELECT migration_id, partition_key, changed_at, SUM(n) FROM delta
        WHERE changed_at IS NOT NULL GROUP BY 1, 2, 3 HAVING SUM(n) <> 0;
    END IF;
    IF random() < 1.0 / 256 THEN
        PERFORM godwit_fold_counters();
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER objects_counted_in AFTER INSERT ON objects REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION godwit_count_objects();
CREATE TRIGGER objects_counted_again AFTER UPDATE ON objects
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION godwit_count_objects();
CREATE TRIGGER objects_counted_out AFTER DELETE ON objects REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION godwit_count_objects();
CREATE FUNCTION godwit_forget_counts() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM tallies;
    DELETE FROM change_times;
    RETURN NULL;
END $$;
CREATE TRIGGER objects_emptied AFTER TRUNCATE ON objects
    FOR EACH STATEMENT EXECUTE FUNCTION godwit_forget_counts();

INSERT INTO tallies (migration_id, partition_key, state, objects, bytes, folded)
SELECT migration_id, COALESCE(partition_key, ''), state, COUNT(*), COALESCE(SUM(size), 0), true
FROM objects GROUP BY 1, 2, 3;
INSERT INTO change_times (migration_id, partition_key, changed_at, objects, folded)
SELECT migration_id, COALESCE(partition_key, ''), changed_at, COUNT(*), true
FROM objects WHERE changed_at IS NOT NULL GROUP BY 1, 2, 3;
"#,
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
