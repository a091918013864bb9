//! A content-store table in MariaDB or MySQL, through sqlx (its MySQL driver only) and a small
//! pool.
//!
//! Keys are compared as their UTF-8 bytes (`CAST(CONVERT(key USING utf8mb4) AS BINARY)`), whatever
//! the column's collation; a point lookup goes through the column itself first, so an index on
//! the key serves it. The blob column is a `BLOB`/`VARBINARY`, its size `OCTET_LENGTH`, its
//! ranges `SUBSTRING`. Without `updated_at=`, the version is `MD5` of the blob. sqlx runs each
//! session in UTC (`time_zone='+00:00'`), so a `TIMESTAMP` reads the same on every worker.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Executor, Row as _, SqlSafeStr as _};

use super::{Row, Slice, Table, TableLocation, quoted};
use crate::{ErrorKind, StorageError};

/// A few connections: listing, and a handful of reads in flight.
const POOL_SIZE: u32 = 4;

struct Statements {
    first_page: String,
    next_page: String,
    row: String,
    read: String,
    content_type: Option<String>,
}

/// A table in MariaDB or MySQL.
pub struct MySqlTable {
    pool: MySqlPool,
    table: TableLocation,
    sql: Statements,
}

fn statements(table: &TableLocation) -> Statements {
    let q = |name: &str| quoted(name, '`', false);
    let columns = &table.columns;
    let from = quoted(&table.table, '`', true);
    let column = q(&columns.key);
    let key = format!("CAST(CONVERT({column} USING utf8mb4) AS BINARY)");
    let blob = q(&columns.blob);
    let version = match &columns.updated_at {
        Some(updated_at) => format!("CAST({} AS CHAR)", q(updated_at)),
        None => format!("MD5({blob})"),
    };
    let text_of = |column: &Option<String>| match column {
        Some(column) => format!("CAST({} AS CHAR)", q(column)),
        None => "CAST(NULL AS CHAR)".to_owned(),
    };
    let listed = format!(
        "{key}, OCTET_LENGTH({blob}), {version}, {}, {}",
        text_of(&columns.group),
        text_of(&columns.partition)
    );
    // The column's own comparison finds the row by its index; the bytes make it exact (a
    // case-insensitive collation would also match `A` for `a`).
    let lookup = format!("{column} = ? AND {key} = ?");
    Statements {
        first_page: format!("SELECT {listed} FROM {from} ORDER BY {key} LIMIT ?"),
        next_page: format!("SELECT {listed} FROM {from} WHERE {key} > ? ORDER BY {key} LIMIT ?"),
        row: format!("SELECT {listed} FROM {from} WHERE {lookup} LIMIT 2"),
        read: format!(
            "SELECT OCTET_LENGTH({blob}), {version}, SUBSTRING({blob}, ?, ?) FROM {from} WHERE {lookup} LIMIT 2"
        ),
        content_type: columns.content_type.as_ref().map(|c| {
            format!(
                "SELECT CAST({} AS CHAR) FROM {from} WHERE {lookup} LIMIT 2",
                q(c)
            )
        }),
    }
}

impl MySqlTable {
    /// A pool for the table `table` names (no connection yet).
    pub fn open(table: &TableLocation) -> Result<Self, StorageError> {
        let server = table.server.as_ref().ok_or_else(|| {
            StorageError::new(ErrorKind::InvalidInput, "a MySQL source needs a host")
        })?;
        let mut options = MySqlConnectOptions::new()
            .host(&server.host)
            .port(server.port.unwrap_or(3306))
            .username(&super::default_user(server))
            .database(&server.database)
            .charset("utf8mb4");
        if let Some(password) = &table.password {
            options = options.password(&password.0);
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            sql: statements(table),
            table: table.clone(),
        })
    }

    /// What an error means, in words that name the table and never the password.
    fn error(&self, doing: &str, error: sqlx::Error) -> StorageError {
        let shown = self.table.describe();
        let database = match &error {
            sqlx::Error::Database(database) => database,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                return StorageError::new(
                    ErrorKind::Unreachable,
                    format!("{doing} {shown}: {error}; check that MariaDB/MySQL runs there"),
                );
            }
            _ => {
                return StorageError::new(ErrorKind::Other, format!("{doing} {shown}: {error}"));
            }
        };
        let said = database.message();
        let number = database
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number());
        let (kind, hint) = match number {
            // ER_NO_SUCH_TABLE
            Some(1146) => return super::no_table(&self.table, said),
            // ER_ACCESS_DENIED_ERROR
            Some(1045) => (
                ErrorKind::Credentials,
                "; check the user, and the password (in the URL or MYSQL_PWD)",
            ),
            // ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR
            Some(1044 | 1142 | 1143) => (
                ErrorKind::AccessDenied,
                "; grant the user SELECT on the table",
            ),
            // ER_BAD_DB_ERROR
            Some(1049) => (ErrorKind::NotFound, "; check the database in the URL"),
            // Too many connections, lock wait timeout, deadlock, server shutting down.
            Some(1040 | 1205 | 1213 | 1053) => (ErrorKind::Busy, ""),
            _ => (ErrorKind::Other, ""),
        };
        StorageError::new(kind, format!("{doing} {shown}: {said}{hint}"))
    }
}

fn size_of(length: Option<i64>) -> Option<u64> {
    length.and_then(|n| u64::try_from(n).ok())
}

fn row_of(row: &MySqlRow) -> Result<Row, sqlx::Error> {
    let key: Vec<u8> = row.try_get(0)?;
    Ok(Row {
        // Converted to utf8mb4 by the server, so valid UTF-8.
        key: String::from_utf8_lossy(&key).into_owned(),
        size: size_of(row.try_get(1)?),
        version: row.try_get(2)?,
        group: row.try_get(3)?,
        partition: row.try_get(4)?,
    })
}

fn single<'a>(
    table: &TableLocation,
    key: &str,
    rows: &'a [MySqlRow],
) -> Result<Option<&'a MySqlRow>, StorageError> {
    match rows {
        [] => Ok(None),
        [row] => Ok(Some(row)),
        _ => Err(super::duplicate(table, key)),
    }
}

#[async_trait]
impl Table for MySqlTable {
    async fn check(&self) -> Result<(), StorageError> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.error("connecting to", e))?;
        let from = quoted(&self.table.table, '`', true);
        let probe = format!("SELECT 1 FROM {from} LIMIT 0");
        connection
            .prepare(AssertSqlSafe(probe).into_sql_str())
            .await
            .map_err(|e| self.error("reading", e))?;
        for (setting, column) in super::named_columns(&self.table.columns) {
            let probe = format!("SELECT {} FROM {from} LIMIT 0", quoted(column, '`', false));
            let statement = connection
                .prepare(AssertSqlSafe(probe).into_sql_str())
                .await
                .map_err(|e| match &e {
                    // ER_BAD_FIELD_ERROR
                    sqlx::Error::Database(database)
                        if database
                            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                            .is_some_and(|d| d.number() == 1054) =>
                    {
                        super::no_column(&self.table, setting, column)
                    }
                    _ => self.error("reading", e),
                })?;
            if setting == "blob" {
                use sqlx::{Column as _, Statement as _, TypeInfo as _};
                let type_name = statement.columns()[0].type_info().name().to_owned();
                if !(type_name.contains("BLOB") || type_name.contains("BINARY")) {
                    return Err(super::not_bytes(&self.table, &type_name));
                }
            }
        }
        Ok(())
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Row>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => {
                sqlx::query::<MySql>(AssertSqlSafe(self.sql.first_page.as_str()))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
            Some(after) => {
                sqlx::query::<MySql>(AssertSqlSafe(self.sql.next_page.as_str()))
                    .bind(after.as_bytes())
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
        };
        let rows = rows.map_err(|e| self.error("listing", e))?;
        rows.iter()
            .map(row_of)
            .collect::<Result<_, _>>()
            .map_err(|e| self.error("listing", e))
    }

    async fn row(&self, key: &str) -> Result<Option<Row>, StorageError> {
        let rows = sqlx::query::<MySql>(AssertSqlSafe(self.sql.row.as_str()))
            .bind(key)
            .bind(key.as_bytes())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(&format!("reading {key} from"), e))?;
        single(&self.table, key, &rows)?
            .map(row_of)
            .transpose()
            .map_err(|e| self.error(&format!("reading {key} from"), e))
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Option<Slice>, StorageError> {
        let failed = |e| self.error(&format!("reading {key} from"), e);
        let rows = sqlx::query::<MySql>(AssertSqlSafe(self.sql.read.as_str()))
            .bind(offset + 1)
            .bind(len)
            .bind(key)
            .bind(key.as_bytes())
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
        let Some(row) = single(&self.table, key, &rows)? else {
            return Ok(None);
        };
        let bytes: Option<&[u8]> = row.try_get(2).map_err(failed)?;
        Ok(Some(Slice {
            size: size_of(row.try_get(0).map_err(failed)?),
            version: row.try_get(1).map_err(failed)?,
            bytes: Bytes::copy_from_slice(bytes.unwrap_or_default()),
        }))
    }

    async fn content_type(&self, key: &str) -> Result<Option<Option<String>>, StorageError> {
        let Some(sql) = &self.sql.content_type else {
            return Ok(Some(None));
        };
        let failed = |e| self.error(&format!("reading {key} from"), e);
        let rows = sqlx::query::<MySql>(AssertSqlSafe(sql.as_str()))
            .bind(key)
            .bind(key.as_bytes())
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
        single(&self.table, key, &rows)?
            .map(|row| row.try_get::<Option<String>, _>(0))
            .transpose()
            .map_err(failed)
    }
}
