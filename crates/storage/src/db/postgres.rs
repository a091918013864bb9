//! A content-store table in PostgreSQL, through tokio-postgres and a small deadpool pool.
//!
//! Keys are compared as text `COLLATE "C"` (bytes); the blob column is `bytea`, its size
//! `octet_length`, its ranges `substring(... FROM ... FOR ...)`. Without `updated_at=`, the
//! version is `md5` of the blob. The session runs in UTC, so a `timestamptz` reads the same on
//! every worker.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::{Row, Slice, Table, TableLocation, quoted};
use crate::{ErrorKind, StorageError};

/// A few connections: listing, and a handful of reads in flight.
const POOL_SIZE: usize = 4;

/// The statements, built once from the table's names.
struct Statements {
    first_page: String,
    next_page: String,
    row: String,
    read: String,
    content_type: Option<String>,
}

/// A table in PostgreSQL.
pub struct PgTable {
    pool: Pool,
    table: TableLocation,
    sql: Statements,
}

fn statements(table: &TableLocation) -> Statements {
    let q = |name: &str| quoted(name, '"', false);
    let columns = &table.columns;
    let from = quoted(&table.table, '"', true);
    let key = format!("CAST({} AS text)", q(&columns.key));
    let blob = q(&columns.blob);
    let version = match &columns.updated_at {
        Some(updated_at) => format!("CAST({} AS text)", q(updated_at)),
        None => format!("md5({blob})"),
    };
    let text_of = |column: &Option<String>| match column {
        Some(column) => format!("CAST({} AS text)", q(column)),
        None => "NULL::text".to_owned(),
    };
    let listed = format!(
        "{key}, octet_length({blob}), {version}, {}, {}",
        text_of(&columns.group),
        text_of(&columns.partition)
    );
    Statements {
        first_page: format!("SELECT {listed} FROM {from} ORDER BY {key} COLLATE \"C\" LIMIT $1"),
        next_page: format!(
            "SELECT {listed} FROM {from} WHERE {key} COLLATE \"C\" > $1 ORDER BY {key} COLLATE \"C\" LIMIT $2"
        ),
        row: format!("SELECT {listed} FROM {from} WHERE {key} = $1 LIMIT 2"),
        read: format!(
            "SELECT octet_length({blob}), {version}, substring({blob} FROM $2 FOR $3) FROM {from} WHERE {key} = $1 LIMIT 2"
        ),
        content_type: columns.content_type.as_ref().map(|c| {
            format!(
                "SELECT CAST({} AS text) FROM {from} WHERE {key} = $1 LIMIT 2",
                q(c)
            )
        }),
    }
}

impl PgTable {
    /// A pool for the table `table` names (no connection yet).
    pub fn open(table: &TableLocation) -> Result<Self, StorageError> {
        let server = table.server.as_ref().ok_or_else(|| {
            StorageError::new(ErrorKind::InvalidInput, "a PostgreSQL source needs a host")
        })?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&server.host)
            .port(server.port.unwrap_or(5432))
            .user(super::default_user(server))
            .dbname(&server.database)
            .application_name("godwit")
            .options("-c TimeZone=UTC")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &table.password {
            config.password(&password.0);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StorageError::new(ErrorKind::Other, e.to_string()))?;
        Ok(Self {
            pool,
            sql: statements(table),
            table: table.clone(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => self.error("connecting to", &error),
            other => StorageError::new(
                ErrorKind::Unreachable,
                format!("connecting to {}: {other}", self.table.describe()),
            ),
        })
    }

    /// What an error means, in words that name the table and never the password.
    fn error(&self, doing: &str, error: &tokio_postgres::Error) -> StorageError {
        let shown = self.table.describe();
        let Some(db) = error.as_db_error() else {
            // No answer from the server: it is down, unreachable, or the connection broke.
            let mut message = error.to_string();
            if let Some(cause) = std::error::Error::source(error) {
                message.push_str(&format!(": {cause}"));
            }
            return StorageError::new(
                ErrorKind::Unreachable,
                format!("{doing} {shown}: {message}; check that PostgreSQL runs there"),
            );
        };
        let said = db.message();
        let code = db.code();
        let (kind, hint) = if *code == SqlState::UNDEFINED_TABLE {
            return super::no_table(&self.table, said);
        } else if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            (
                ErrorKind::Credentials,
                "; check the user, and the password (in the URL or PGPASSWORD)",
            )
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            (
                ErrorKind::AccessDenied,
                "; grant the user SELECT on the table",
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (ErrorKind::NotFound, "; check the database in the URL")
        } else if *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            (ErrorKind::Busy, "")
        } else {
            (ErrorKind::Other, "")
        };
        StorageError::new(kind, format!("{doing} {shown}: {said}{hint}"))
    }
}

fn size_of(length: Option<i32>) -> Option<u64> {
    length.and_then(|n| u64::try_from(n).ok())
}

fn row_of(row: &tokio_postgres::Row) -> Row {
    Row {
        key: row.get(0),
        size: size_of(row.get(1)),
        version: row.get(2),
        group: row.get(3),
        partition: row.get(4),
    }
}

/// The one row of `rows`, or `None`; a key that names two rows is an error.
fn single<'a>(
    table: &TableLocation,
    key: &str,
    rows: &'a [tokio_postgres::Row],
) -> Result<Option<&'a tokio_postgres::Row>, StorageError> {
    match rows {
        [] => Ok(None),
        [row] => Ok(Some(row)),
        _ => Err(super::duplicate(table, key)),
    }
}

#[async_trait]
impl Table for PgTable {
    async fn check(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        let from = quoted(&self.table.table, '"', true);
        client
            .prepare(&format!("SELECT 1 FROM {from} LIMIT 0"))
            .await
            .map_err(|e| self.error("reading", &e))?;
        for (setting, column) in super::named_columns(&self.table.columns) {
            let statement = client
                .prepare(&format!(
                    "SELECT {} FROM {from} LIMIT 0",
                    quoted(column, '"', false)
                ))
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) if *db.code() == SqlState::UNDEFINED_COLUMN => {
                        super::no_column(&self.table, setting, column)
                    }
                    _ => self.error("reading", &e),
                })?;
            let column_type = statement.columns()[0].type_();
            if setting == "blob" && *column_type != Type::BYTEA {
                return Err(super::not_bytes(&self.table, column_type.name()));
            }
        }
        Ok(())
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Row>, StorageError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => {
                let statement = client.prepare_cached(&self.sql.first_page).await;
                let statement = statement.map_err(|e| self.error("listing", &e))?;
                client.query(&statement, &[&limit]).await
            }
            Some(after) => {
                let statement = client.prepare_cached(&self.sql.next_page).await;
                let statement = statement.map_err(|e| self.error("listing", &e))?;
                client.query(&statement, &[&after, &limit]).await
            }
        };
        let rows = rows.map_err(|e| self.error("listing", &e))?;
        Ok(rows.iter().map(row_of).collect())
    }

    async fn row(&self, key: &str) -> Result<Option<Row>, StorageError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.sql.row).await;
        let statement = statement.map_err(|e| self.error("reading", &e))?;
        let rows = client.query(&statement, &[&key]).await;
        let rows = rows.map_err(|e| self.error(&format!("reading {key} from"), &e))?;
        Ok(single(&self.table, key, &rows)?.map(row_of))
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Option<Slice>, StorageError> {
        // A bytea holds at most 1 GB, so a range of one always fits SQL's integers.
        let (Ok(from), Ok(length)) = (i32::try_from(offset + 1), i32::try_from(len)) else {
            return Err(StorageError::new(
                ErrorKind::InvalidInput,
                format!("{key}: a range past 2 GiB cannot be read from PostgreSQL"),
            ));
        };
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.sql.read).await;
        let statement = statement.map_err(|e| self.error("reading", &e))?;
        let rows = client.query(&statement, &[&key, &from, &length]).await;
        let rows = rows.map_err(|e| self.error(&format!("reading {key} from"), &e))?;
        let Some(row) = single(&self.table, key, &rows)? else {
            return Ok(None);
        };
        let bytes: Option<&[u8]> = row.get(2);
        Ok(Some(Slice {
            size: size_of(row.get(0)),
            version: row.get(1),
            bytes: Bytes::copy_from_slice(bytes.unwrap_or_default()),
        }))
    }

    async fn content_type(&self, key: &str) -> Result<Option<Option<String>>, StorageError> {
        let Some(sql) = &self.sql.content_type else {
            return Ok(Some(None));
        };
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await;
        let statement = statement.map_err(|e| self.error("reading", &e))?;
        let rows = client.query(&statement, &[&key]).await;
        let rows = rows.map_err(|e| self.error(&format!("reading {key} from"), &e))?;
        Ok(single(&self.table, key, &rows)?.map(|row| row.get(0)))
    }
}
