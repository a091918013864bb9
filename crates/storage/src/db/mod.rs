//! A content-store table as a source: an application's files kept as rows (a key, a blob, and
//! optionally a group, a partition, a Content-Type and an updated-at column) in PostgreSQL
//! ([`postgres`]), MariaDB/MySQL ([`mysql`]) or SQLite ([`sqlite`]).
//!
//! The source is a URL naming the table and its columns ([`TableLocation`]), shown and recorded
//! without its password. Each database answers a few statements ([`Table`]); what they mean as a
//! [`Source`] is said once, here:
//!
//! - **Listing** in pages of [`PAGE`] rows in key order by bytes (PostgreSQL `COLLATE "C"`,
//!   MySQL a binary comparison, SQLite's own byte order), each page the keys after the last one
//!   listed, so a listing resumes after any key (`list_shard`).
//! - **Size** is the blob's length in bytes, counted by the database.
//! - **Version**: the updated-at column's text when `updated_at=` names one; otherwise a hash of
//!   the blob: `md5` computed by PostgreSQL or MariaDB, and by godwit for SQLite (which has no
//!   hash function), reading the blob in pieces. A hash costs a read of the whole blob each time
//!   the version is checked, so a table of large blobs should name its updated-at column.
//! - **Reads** are ranges cut by the database (`substring`, `SUBSTRING`, SQLite's incremental
//!   blob I/O), with the row's size and version from the same statement (one snapshot): a row that
//!   changed fails with [`ErrorKind::SourceChanged`], a row gone with [`ErrorKind::NotFound`]. No
//!   blob is ever held whole unless it is read whole; parts of one object are read in parallel.
//! - **Placement**: the group and partition columns fill [`ObjectMeta::group`] and
//!   [`ObjectMeta::partition`].
//! - **Metadata**: the Content-Type column, else the type the key's name says.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    ErrorKind, Listed, Listing, Location, Metadata, ObjectMeta, Source, SourceCapabilities,
    StorageError,
};

mod location;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use location::{Columns, DbKind, Password, Server, TableLocation};

/// How many rows one listing page holds.
pub const PAGE: usize = 1000;

/// One row as the listing and `stat` see it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The key's text.
    pub key: String,
    /// The blob's length; `None` when the blob is NULL.
    pub size: Option<u64>,
    /// The row's version (see the module's docs); `None` when there is nothing to take it from.
    pub version: Option<String>,
    /// The group column's text.
    pub group: Option<String>,
    /// The partition column's text.
    pub partition: Option<String>,
}

/// A range of a blob, with the row's size and version as they were when it was read.
#[derive(Debug)]
pub struct Slice {
    /// The blob's whole length.
    pub size: Option<u64>,
    /// The row's version.
    pub version: Option<String>,
    /// The bytes read.
    pub bytes: Bytes,
}

/// What one database answers: the statements behind a table source.
#[async_trait]
pub trait Table: Send + Sync + 'static {
    /// Connects, and checks that the table and every column named exist (and the blob column
    /// holds bytes), with a message that names the setting to fix.
    async fn check(&self) -> Result<(), StorageError>;
    /// Up to `limit` rows in byte order of their keys, after `after` when given.
    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Row>, StorageError>;
    /// The row of `key`, or `None`.
    async fn row(&self, key: &str) -> Result<Option<Row>, StorageError>;
    /// `len` bytes from `offset` of the blob of `key`, or `None` when the row is gone.
    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Option<Slice>, StorageError>;
    /// The Content-Type column of `key` (`Some(None)` when NULL), or `None` when the row is gone.
    async fn content_type(&self, key: &str) -> Result<Option<Option<String>>, StorageError>;
}

/// A content-store table read as objects.
pub struct TableSource {
    location: Location,
    table: TableLocation,
    rows: Arc<dyn Table>,
}

impl TableSource {
    /// Opens the table `location` names; connections are made when first needed (see
    /// [`Source::check`]). A password the URL does not hold is read from the environment
    /// variable the database's own client reads (`PGPASSWORD`, `MYSQL_PWD`).
    pub fn open(location: &TableLocation) -> Result<Self, StorageError> {
        let mut table = location.clone();
        if table.password.is_none()
            && let Some(variable) = table.kind.password_variable()
            && let Ok(password) = std::env::var(variable)
        {
            table.password = Some(Password(password));
        }
        let rows: Arc<dyn Table> = match table.kind {
            DbKind::Postgres => Arc::new(postgres::PgTable::open(&table)?),
            DbKind::MySql => Arc::new(mysql::MySqlTable::open(&table)?),
            DbKind::Sqlite => Arc::new(sqlite::SharedSqliteTable::open(&table)?),
        };
        Ok(Self {
            location: Location::Table(Box::new(location.clone())),
            table,
            rows,
        })
    }

    fn gone(&self, key: &str) -> StorageError {
        StorageError::new(
            ErrorKind::NotFound,
            format!("{key}: its row is no longer in {}", self.table.describe()),
        )
    }
}

/// The listing entry of `row`: an object, or, when its blob is NULL, what cannot be read.
fn listed(row: Row, table: &TableLocation) -> Listed {
    match (row.size, row.version) {
        (Some(size), Some(version)) => Listed::Object(ObjectMeta {
            key: row.key,
            size,
            version,
            group: row.group,
            partition: row.partition,
        }),
        (size, _) => {
            let what = if size.is_none() {
                format!("its {} column is NULL", table.columns.blob)
            } else {
                let updated_at = table.columns.updated_at.as_deref().unwrap_or("updated_at");
                format!("its {updated_at} column is NULL, so its version cannot be told")
            };
            Listed::Unreadable {
                error: StorageError::new(
                    ErrorKind::InvalidInput,
                    format!("{}: {what} in {}", row.key, table.describe()),
                ),
                key: row.key,
            }
        }
    }
}

async fn list_pages(
    rows: Arc<dyn Table>,
    table: TableLocation,
    mut after: Option<String>,
    pages: mpsc::Sender<Result<Vec<Listed>, StorageError>>,
) {
    loop {
        let page = match rows.page(after.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(error) => {
                let _ = pages.send(Err(error)).await;
                return;
            }
        };
        let full = page.len() == PAGE;
        after = page.last().map(|row| row.key.clone());
        let page: Vec<Listed> = page.into_iter().map(|row| listed(row, &table)).collect();
        if !page.is_empty() && pages.send(Ok(page)).await.is_err() {
            return;
        }
        if !full {
            return;
        }
    }
}

#[async_trait]
impl Source for TableSource {
    fn location(&self) -> &Location {
        &self.location
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            ranged_reads: true,
            places_groups: self.table.columns.group.is_some(),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.rows.check().await
    }

    fn list(&self) -> Listing {
        self.list_shard(crate::shard::WHOLE, None)
    }

    fn list_shard(&self, _shard: &str, after: Option<&str>) -> Listing {
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(list_pages(
            Arc::clone(&self.rows),
            self.table.clone(),
            after.map(str::to_owned),
            sender,
        ));
        receiver
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(match self.rows.row(key).await? {
            None => None,
            Some(row) => match listed(row, &self.table) {
                Listed::Object(meta) => Some(meta),
                Listed::Unreadable { error, .. } => return Err(error),
            },
        })
    }

    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let key = &expected.key;
        let Some(slice) = self.rows.read(key, offset, len).await? else {
            return Err(self.gone(key));
        };
        if slice.size != Some(expected.size)
            || slice.version.as_deref() != Some(expected.version.as_str())
            || slice.bytes.len() as u64 != len
        {
            return Err(StorageError::new(
                ErrorKind::SourceChanged,
                format!(
                    "{key}: its row in {} changed since it was listed; it will be read again",
                    self.table.describe()
                ),
            ));
        }
        Ok(slice.bytes)
    }

    async fn metadata(&self, expected: &ObjectMeta) -> Result<Metadata, StorageError> {
        if self.table.columns.content_type.is_none() {
            return Ok(Metadata::guessed(&expected.key));
        }
        match self.rows.content_type(&expected.key).await? {
            None => Err(self.gone(&expected.key)),
            Some(Some(content_type)) if !content_type.is_empty() => Ok(Metadata {
                content_type: Some(content_type),
                ..Metadata::default()
            }),
            Some(_) => Ok(Metadata::guessed(&expected.key)),
        }
    }
}

/// `name` quoted as an SQL identifier with `quote` (`"` or a backtick), each part of a dotted
/// name on its own when `dotted` (`schema.table`).
pub(crate) fn quoted(name: &str, quote: char, dotted: bool) -> String {
    let one = |part: &str| {
        let doubled = part.replace(quote, &format!("{quote}{quote}"));
        format!("{quote}{doubled}{quote}")
    };
    if dotted {
        name.split('.').map(one).collect::<Vec<_>>().join(".")
    } else {
        one(name)
    }
}

/// The columns a setting names, with the setting, for checks and their messages.
pub(crate) fn named_columns(columns: &Columns) -> Vec<(&'static str, &str)> {
    let mut named = vec![
        ("key", columns.key.as_str()),
        ("blob", columns.blob.as_str()),
    ];
    for (setting, column) in [
        ("group", &columns.group),
        ("partition", &columns.partition),
        ("content_type", &columns.content_type),
        ("updated_at", &columns.updated_at),
    ] {
        if let Some(column) = column {
            named.push((setting, column.as_str()));
        }
    }
    named
}

/// The message for a column the table does not have.
pub(crate) fn no_column(table: &TableLocation, setting: &str, column: &str) -> StorageError {
    StorageError::new(
        ErrorKind::InvalidInput,
        format!(
            "{}: has no column '{column}' (named by {setting}=); check {setting}= in the source URL",
            table.describe()
        ),
    )
}

/// The message for a table that does not exist.
pub(crate) fn no_table(table: &TableLocation, said: &str) -> StorageError {
    StorageError::new(
        ErrorKind::NotFound,
        format!(
            "{} does not exist ({said}); check table= in the source URL",
            table.describe()
        ),
    )
}

/// The message for a blob column that does not hold bytes.
pub(crate) fn not_bytes(table: &TableLocation, type_name: &str) -> StorageError {
    StorageError::new(
        ErrorKind::InvalidInput,
        format!(
            "{}: its column '{}' (blob=) is of type {type_name}; godwit reads a binary column (PostgreSQL bytea, MySQL BLOB/VARBINARY, SQLite BLOB)",
            table.describe(),
            table.columns.blob
        ),
    )
}

/// The user to connect as when the URL names none: the one running godwit, as the databases'
/// own clients do.
pub(crate) fn default_user(server: &Server) -> String {
    server
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "root".to_owned())
}

/// The message for a key that names more than one row.
pub(crate) fn duplicate(table: &TableLocation, key: &str) -> StorageError {
    StorageError::new(
        ErrorKind::InvalidInput,
        format!(
            "{key}: more than one row of {} has this key; the key column (key={}) must be unique",
            table.describe(),
            table.columns.key
        ),
    )
}
