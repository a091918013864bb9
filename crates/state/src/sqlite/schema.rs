//! The SQLite ledger's schema: its tables and indexes, its version, and the upgrade of older
//! ledgers.

use rusqlite::{Connection, params};

/// 2: uploads bound to a source version and begun before their id is known, godwit's own
/// writes, first claims, the filter of each pass, the endpoints of each migration, the metadata
/// sent with each object. 3: partitions' checkpoints (validation, cutover, notice), and when each
/// object was found, last changed, and its version seen. 4: the counters (`tallies`,
/// `change_times`) and the triggers that keep them (`tallies.rs`).
pub(super) const SCHEMA_VERSION: i64 = 4;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS migrations (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_url TEXT NOT NULL,
    dest_url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    source_endpoint TEXT,
    dest_endpoint TEXT,
    options TEXT,
    status TEXT,
    throttled_at INTEGER
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    migration TEXT,
    packets_in_flight INTEGER NOT NULL,
    objects_in_flight INTEGER NOT NULL,
    bytes_per_second INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS passes (
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    scan_completed_at INTEGER,
    filter TEXT,
    PRIMARY KEY (migration_id, number)
);
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    version TEXT NOT NULL,
    state INTEGER NOT NULL,
    pass INTEGER NOT NULL,
    group_key TEXT,
    partition_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    checksum TEXT,
    dest_etag TEXT,
    dest_version TEXT,
    verified_by TEXT,
    error_kind TEXT,
    last_error TEXT,
    lease_owner TEXT,
    lease_expires INTEGER,
    upload_id TEXT,
    part_size INTEGER,
    updated_at INTEGER NOT NULL,
    upload_size INTEGER,
    upload_version TEXT,
    upload_started_at INTEGER,
    written_etag TEXT,
    written_version TEXT,
    first_claimed_at INTEGER,
    metadata TEXT,
    lease_token INTEGER,
    changed_at INTEGER,
    found_pass INTEGER,
    version_pass INTEGER,
    UNIQUE (migration_id, key)
);
CREATE TABLE IF NOT EXISTS partitions (
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    name TEXT NOT NULL,
    validated_at INTEGER,
    validation_passed INTEGER,
    validation TEXT,
    cut_over_at INTEGER,
    notice_delivered_at INTEGER,
    notice_attempts INTEGER,
    notice_error TEXT,
    PRIMARY KEY (migration_id, name)
);
CREATE TABLE IF NOT EXISTS parts (
    object_id INTEGER NOT NULL REFERENCES objects(id),
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT,
    PRIMARY KEY (object_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (
    migration_id INTEGER NOT NULL REFERENCES migrations(id),
    pass INTEGER NOT NULL,
    name TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires INTEGER,
    lease_token INTEGER,
    after TEXT,
    PRIMARY KEY (migration_id, pass, name)
);
CREATE INDEX IF NOT EXISTS objects_pending ON objects (migration_id, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS objects_groups ON objects (migration_id, group_key) WHERE group_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_in_progress ON objects (migration_id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS objects_problems ON objects (migration_id, id) WHERE state IN (4, 7);
CREATE INDEX IF NOT EXISTS objects_uploads ON objects (migration_id)
    WHERE upload_id IS NOT NULL OR upload_started_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS shards_leases ON shards (lease_owner) WHERE state = 1;
";

/// Columns added since schema 1, added to older ledgers as they are opened (times are
/// milliseconds since the Unix epoch).
const ADDED_COLUMNS: [(&str, &str, &str); 17] = [
    ("migrations", "throttled_at", "INTEGER"),
    ("migrations", "status", "TEXT"),
    ("migrations", "options", "TEXT"),
    ("objects", "lease_token", "INTEGER"),
    ("objects", "metadata", "TEXT"),
    ("migrations", "source_endpoint", "TEXT"),
    ("migrations", "dest_endpoint", "TEXT"),
    ("passes", "filter", "TEXT"),
    ("objects", "upload_size", "INTEGER"),
    ("objects", "upload_version", "TEXT"),
    ("objects", "upload_started_at", "INTEGER"),
    ("objects", "written_etag", "TEXT"),
    ("objects", "written_version", "TEXT"),
    ("objects", "first_claimed_at", "INTEGER"),
    ("objects", "changed_at", "INTEGER"),
    ("objects", "found_pass", "INTEGER"),
    ("objects", "version_pass", "INTEGER"),
];

/// Brings a ledger of an older schema up to date: adds the columns it lacks. New ledgers get
/// them from `SCHEMA` directly.
pub(super) fn upgrade(connection: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        if !has_column(connection, table, column)? {
            connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn has_column(connection: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
        params![column],
        |row| row.get(0),
    )
}

/// Whether the ledger lacks a column this godwit reads.
pub(super) fn lacks_columns(connection: &Connection) -> rusqlite::Result<bool> {
    for (table, column, _) in ADDED_COLUMNS {
        if !has_column(connection, table, column)? {
            return Ok(true);
        }
    }
    Ok(false)
}
