//! A content-store table in a SQLite file, through rusqlite, opened read-only.
//!
//! Keys are compared as text in SQLite's own byte order; the blob's size is its `octet_length`;
//! ranges are read by incremental blob I/O (`sqlite3_blob_read`), which reads only the pages of
//! the range where `substr` would load the whole blob. SQLite has no hash function, so without
//! `updated_at=` godwit computes the version, an MD5 of the blob, reading it a piece at a time.
//! Each read runs in one read transaction, so its size, version and bytes come from one snapshot.
//! The table needs a rowid (not `WITHOUT ROWID`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension, params};

use super::{Row, Slice, Table, TableLocation, quoted};
use crate::{ErrorKind, StorageError};

/// How much of a blob one step of hashing reads.
const HASH_PIECE: usize = 1 << 20;

struct Statements {
    first_page: String,
    next_page: String,
    row: String,
    content_type: Option<String>,
}

/// A table in a SQLite file.
struct SqliteTable {
    path: PathBuf,
    table: TableLocation,
    sql: Statements,
    /// Open connections not in use (a connection serves one blocking task at a time).
    idle: Mutex<Vec<Connection>>,
}

fn statements(table: &TableLocation) -> Statements {
    let q = |name: &str| quoted(name, '"', false);
    let columns = &table.columns;
    let from = q(&table.table);
    let key = format!("CAST({} AS TEXT)", q(&columns.key));
    let blob = q(&columns.blob);
    let version = match &columns.updated_at {
        Some(updated_at) => format!("CAST({} AS TEXT)", q(updated_at)),
        None => "NULL".to_owned(),
    };
    let text_of = |column: &Option<String>| match column {
        Some(column) => format!("CAST({} AS TEXT)", q(column)),
        None => "NULL".to_owned(),
    };
    let listed = format!(
        "{key}, octet_length({blob}), {version}, {}, {}, rowid",
        text_of(&columns.group),
        text_of(&columns.partition)
    );
    Statements {
        first_page: format!("SELECT {listed} FROM {from} ORDER BY {key} LIMIT ?1"),
        next_page: format!("SELECT {listed} FROM {from} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"),
        row: format!("SELECT {listed} FROM {from} WHERE {key} = ?1 LIMIT 2"),
        content_type: columns.content_type.as_ref().map(|c| {
            format!(
                "SELECT CAST({} AS TEXT) FROM {from} WHERE {key} = ?1 LIMIT 2",
                q(c)
            )
        }),
    }
}

/// A listed row and its rowid, before its version is known.
struct Found {
    row: Row,
    rowid: i64,
}

fn found(row: &rusqlite::Row<'_>) -> rusqlite::Result<Found> {
    let size: Option<i64> = row.get(1)?;
    Ok(Found {
        row: Row {
            key: row.get(0)?,
            size: size.and_then(|n| u64::try_from(n).ok()),
            version: row.get(2)?,
            group: row.get(3)?,
            partition: row.get(4)?,
        },
        rowid: row.get(5)?,
    })
}

impl SqliteTable {
    /// The table `table` names, in its file (opened when first needed).
    fn open(table: &TableLocation) -> Result<Self, StorageError> {
        let path = table.path.clone().ok_or_else(|| {
            StorageError::new(ErrorKind::InvalidInput, "a SQLite source needs a file")
        })?;
        Ok(Self {
            path,
            sql: statements(table),
            table: table.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn error(&self, doing: &str, error: &rusqlite::Error) -> StorageError {
        let shown = self.table.describe();
        let said = error.to_string();
        if said.starts_with("no such table") {
            return super::no_table(&self.table, &said);
        }
        let kind = match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                ErrorKind::Busy
            }
            Some(rusqlite::ErrorCode::CannotOpen) => ErrorKind::NotFound,
            Some(rusqlite::ErrorCode::PermissionDenied) => ErrorKind::AccessDenied,
            _ => ErrorKind::Other,
        };
        StorageError::new(kind, format!("{doing} {shown}: {said}"))
    }

    fn connection(&self) -> Result<Connection, StorageError> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(connection);
        }
        if !self.path.exists() {
            return Err(StorageError::new(
                ErrorKind::NotFound,
                format!(
                    "{} does not exist; check the path after sqlite://",
                    self.path.display()
                ),
            ));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| self.error("opening", &e))?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| self.error("opening", &e))?;
        // A quoted name that is no column must be an error, not a string (SQLite's old
        // leniency), or a misspelt column would read as its own name.
        connection
            .set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)
            .map_err(|e| self.error("opening", &e))?;
        Ok(connection)
    }

    /// Runs `work` on a connection of the pool, on the blocking pool.
    async fn with<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        work: impl FnOnce(&Self, &Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let this = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let connection = this.connection()?;
            let result = work(&this, &connection);
            this.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(connection);
            result
        })
        .await
        .map_err(|e| StorageError::new(ErrorKind::Other, format!("SQLite task failed: {e}")))?
    }

    /// The MD5 of the blob of `rowid`, read a piece at a time.
    fn hash(&self, connection: &Connection, rowid: i64) -> Result<String, StorageError> {
        let blob = connection
            .blob_open(
                MAIN_DB,
                self.table.table.as_str(),
                self.table.columns.blob.as_str(),
                rowid,
                true,
            )
            .map_err(|e| self.error("reading", &e))?;
        let mut hasher = Md5::new();
        let mut piece = vec![0u8; HASH_PIECE.min(blob.len().max(1))];
        let mut at = 0;
        while at < blob.len() {
            let n = blob
                .read_at(&mut piece, at)
                .map_err(|e| self.error("reading", &e))?;
            if n == 0 {
                break;
            }
            hasher.update(&piece[..n]);
            at += n;
        }
        let digest = hasher.finalize();
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `found` with its version: the updated-at column's, or the blob's hash.
    fn versioned(&self, connection: &Connection, found: Found) -> Result<Row, StorageError> {
        let mut row = found.row;
        if self.table.columns.updated_at.is_none() && row.size.is_some() {
            row.version = Some(self.hash(connection, found.rowid)?);
        }
        Ok(row)
    }

    fn lookup(&self, connection: &Connection, key: &str) -> Result<Option<Found>, StorageError> {
        let mut statement = connection
            .prepare_cached(&self.sql.row)
            .map_err(|e| self.error("reading", &e))?;
        let rows = statement
            .query_map(params![key], found)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.error(&format!("reading {key} from"), &e))?;
        let mut rows = rows.into_iter();
        match (rows.next(), rows.next()) {
            (None, _) => Ok(None),
            (Some(found), None) => Ok(Some(found)),
            (Some(_), Some(_)) => Err(super::duplicate(&self.table, key)),
        }
    }
}

/// The SQLite table behind an `Arc`, as its blocking work needs.
pub struct SharedSqliteTable(std::sync::Arc<SqliteTable>);

impl SharedSqliteTable {
    /// The table `table` names.
    pub fn open(table: &TableLocation) -> Result<Self, StorageError> {
        Ok(Self(std::sync::Arc::new(SqliteTable::open(table)?)))
    }
}

#[async_trait]
impl Table for SharedSqliteTable {
    async fn check(&self) -> Result<(), StorageError> {
        self.0
            .with(|this, connection| {
                let from = quoted(&this.table.table, '"', false);
                connection
                    .prepare(&format!("SELECT rowid FROM {from} LIMIT 0"))
                    .map_err(|e| {
                        let said = e.to_string();
                        if said.contains("no such column: rowid") {
                            return StorageError::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{} is a WITHOUT ROWID table, which godwit cannot read a blob of in ranges",
                                    this.table.describe()
                                ),
                            );
                        }
                        this.error("reading", &e)
                    })?;
                for (setting, column) in super::named_columns(&this.table.columns) {
                    connection
                        .prepare(&format!(
                            "SELECT {} FROM {from} LIMIT 0",
                            quoted(column, '"', false)
                        ))
                        .map_err(|e| {
                            if e.to_string().starts_with("no such column") {
                                super::no_column(&this.table, setting, column)
                            } else {
                                this.error("reading", &e)
                            }
                        })?;
                }
                Ok(())
            })
            .await
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Row>, StorageError> {
        let after = after.map(str::to_owned);
        self.0
            .with(move |this, connection| {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let listed = match &after {
                    None => connection
                        .prepare_cached(&this.sql.first_page)
                        .and_then(|mut s| s.query_map(params![limit], found)?.collect()),
                    Some(after) => connection
                        .prepare_cached(&this.sql.next_page)
                        .and_then(|mut s| s.query_map(params![after, limit], found)?.collect()),
                };
                let listed: Vec<Found> = listed.map_err(|e| this.error("listing", &e))?;
                listed
                    .into_iter()
                    .map(|found| this.versioned(connection, found))
                    .collect()
            })
            .await
    }

    async fn row(&self, key: &str) -> Result<Option<Row>, StorageError> {
        let key = key.to_owned();
        self.0
            .with(move |this, connection| {
                let transaction = connection
                    .unchecked_transaction()
                    .map_err(|e| this.error("reading", &e))?;
                let found = this.lookup(&transaction, &key)?;
                found.map(|f| this.versioned(&transaction, f)).transpose()
            })
            .await
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Option<Slice>, StorageError> {
        let key = key.to_owned();
        self.0
            .with(move |this, connection| {
                // One snapshot for the size, the version and the bytes.
                let transaction = connection
                    .unchecked_transaction()
                    .map_err(|e| this.error("reading", &e))?;
                let Some(found) = this.lookup(&transaction, &key)? else {
                    return Ok(None);
                };
                let rowid = found.rowid;
                let row = this.versioned(&transaction, found)?;
                let mut bytes = Vec::new();
                if let Some(size) = row.size
                    && offset < size
                {
                    let columns = &this.table.columns;
                    let blob = transaction
                        .blob_open(
                            MAIN_DB,
                            this.table.table.as_str(),
                            columns.blob.as_str(),
                            rowid,
                            true,
                        )
                        .map_err(|e| this.error(&format!("reading {key} from"), &e))?;
                    let (Ok(start), Ok(len)) = (
                        usize::try_from(offset),
                        usize::try_from(len.min(size - offset)),
                    ) else {
                        return Err(StorageError::new(ErrorKind::InvalidInput, "read too large"));
                    };
                    bytes = vec![0u8; len];
                    blob.read_at_exact(&mut bytes, start)
                        .map_err(|e| this.error(&format!("reading {key} from"), &e))?;
                }
                Ok(Some(Slice {
                    size: row.size,
                    version: row.version,
                    bytes: Bytes::from(bytes),
                }))
            })
            .await
    }

    async fn content_type(&self, key: &str) -> Result<Option<Option<String>>, StorageError> {
        let key = key.to_owned();
        self.0
            .with(move |this, connection| {
                let Some(sql) = &this.sql.content_type else {
                    return Ok(Some(None));
                };
                let mut statement = connection
                    .prepare_cached(sql)
                    .map_err(|e| this.error("reading", &e))?;
                statement
                    .query_row(params![key], |row| row.get::<_, Option<String>>(0))
                    .optional()
                    .map_err(|e| this.error(&format!("reading {key} from"), &e))
            })
            .await
    }
}
