//! Content-store tables as sources, against the real databases: PostgreSQL and MariaDB as
//! `scripts/test.sh` names them (`GODWIT_TEST_POSTGRES`, `GODWIT_TEST_MYSQL`), and SQLite files.
//! Each test makes a table of its own and drops it. Under CI (`CI` set) a missing database fails
//! the test instead of narrowing it to the databases there are.

use std::sync::atomic::{AtomicU32, Ordering};

use godwit_storage::db::{PAGE, TableSource};
use godwit_storage::{ErrorKind, Listed, Listing, Location, ObjectMeta, Source, shard};
use sqlx::mysql::MySqlPool;

static TABLES: AtomicU32 = AtomicU32::new(0);

/// A database the tests write their tables into.
enum Db {
    Postgres(tokio_postgres::Client, String),
    MySql(MySqlPool, String),
    Sqlite(tempfile::TempDir),
}

fn server_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{variable} is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!("note: {variable} unset; this database is not tested");
            None
        }
    }
}

async fn databases() -> Vec<Db> {
    let mut all = vec![Db::Sqlite(tempfile::tempdir().unwrap())];
    if let Some(url) = server_url("GODWIT_TEST_POSTGRES") {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        all.push(Db::Postgres(client, url));
    }
    if let Some(url) = server_url("GODWIT_TEST_MYSQL") {
        all.push(Db::MySql(MySqlPool::connect(&url).await.unwrap(), url));
    }
    all
}

/// One row: key, blob, group, partition, content type.
type Object = (String, Vec<u8>, String, String, Option<String>);

/// A table of `objects` in `db`, named uniquely; its source URL names every column.
struct Fixture<'a> {
    db: &'a Db,
    table: String,
    url: String,
}

impl Db {
    fn name(&self) -> &'static str {
        match self {
            Db::Postgres(..) => "postgres",
            Db::MySql(..) => "mysql",
            Db::Sqlite(_) => "sqlite",
        }
    }

    fn sqlite_path(&self) -> std::path::PathBuf {
        match self {
            Db::Sqlite(dir) => dir.path().join("store.db"),
            _ => unreachable!(),
        }
    }

    /// Runs `sql` (with `$1`-style parameters on PostgreSQL, `?` elsewhere).
    async fn exec(&self, sql: &str, blob: Option<&[u8]>) {
        match self {
            Db::Postgres(client, _) => {
                let sql = sql.replace('?', "$1");
                match blob {
                    Some(blob) => client.execute(&sql, &[&blob]).await.unwrap(),
                    None => client.execute(&sql, &[]).await.unwrap(),
                };
            }
            Db::MySql(pool, _) => {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                let query = match blob {
                    Some(blob) => query.bind(blob),
                    None => query,
                };
                query.execute(pool).await.unwrap();
            }
            Db::Sqlite(_) => {
                let connection = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                match blob {
                    Some(blob) => connection.execute(sql, [blob]).unwrap(),
                    None => connection.execute(sql, []).unwrap(),
                };
            }
        }
    }

    async fn fixture(&self, objects: &[Object]) -> Fixture<'_> {
        let n = TABLES.fetch_add(1, Ordering::Relaxed);
        let table = format!("godwit_src_{}_{n}", std::process::id());
        // Keys compared by a locale on PostgreSQL and case-insensitively on MariaDB, so the
        // byte order godwit lists in differs from the column's own.
        let (key_type, blob_type, updated_at) = match self {
            Db::Postgres(..) => (
                "text COLLATE \"en-x-icu\" PRIMARY KEY",
                "bytea",
                "timestamptz NOT NULL DEFAULT now()",
            ),
            Db::MySql(..) => (
                // Not unique in that collation (`B` and `b` are both there), only in bytes.
                "varchar(200) COLLATE utf8mb4_general_ci NOT NULL, INDEX (k)",
                "longblob",
                "timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
            ),
            Db::Sqlite(_) => ("text PRIMARY KEY", "blob", "text"),
        };
        self.exec(
            &format!(
                "CREATE TABLE {table} (k {key_type}, data {blob_type}, course text, video text, mime text, changed {updated_at})"
            ),
            None,
        )
        .await;
        self.insert(&table, objects).await;
        // PostgreSQL and MariaDB version rows by their updated-at; SQLite by a hash of the blob.
        let updated_at = match self {
            Db::Sqlite(_) => "",
            _ => "&updated_at=changed",
        };
        let settings = format!(
            "table={table}&key=k&blob=data&group=video&partition=course&content_type=mime{updated_at}"
        );
        let url = match self {
            Db::Postgres(_, url) | Db::MySql(_, url) => format!("{url}?{settings}"),
            Db::Sqlite(_) => format!("sqlite://{}?{settings}", self.sqlite_path().display()),
        };
        Fixture {
            db: self,
            table,
            url,
        }
    }

    async fn insert(&self, table: &str, objects: &[Object]) {
        let sql =
            format!("INSERT INTO {table} (k, data, course, video, mime) VALUES (?, ?, ?, ?, ?)");
        match self {
            Db::Postgres(client, _) => {
                let sql = format!(
                    "INSERT INTO {table} (k, data, course, video, mime) VALUES ($1, $2, $3, $4, $5)"
                );
                let statement = client.prepare(&sql).await.unwrap();
                client.execute("BEGIN", &[]).await.unwrap();
                for (key, blob, group, partition, mime) in objects {
                    client
                        .execute(&statement, &[key, blob, partition, group, mime])
                        .await
                        .unwrap();
                }
                client.execute("COMMIT", &[]).await.unwrap();
            }
            Db::MySql(pool, _) => {
                let mut transaction = pool.begin().await.unwrap();
                for (key, blob, group, partition, mime) in objects {
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(key)
                        .bind(blob)
                        .bind(partition)
                        .bind(group)
                        .bind(mime)
                        .execute(&mut *transaction)
                        .await
                        .unwrap();
                }
                transaction.commit().await.unwrap();
            }
            Db::Sqlite(_) => {
                let mut connection = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                let transaction = connection.transaction().unwrap();
                for (key, blob, group, partition, mime) in objects {
                    transaction
                        .execute(&sql, rusqlite::params![key, blob, partition, group, mime])
                        .unwrap();
                }
                transaction.commit().unwrap();
            }
        }
    }
}

impl Fixture<'_> {
    fn source(&self) -> TableSource {
        self.source_at(&self.url)
    }

    fn source_at(&self, url: &str) -> TableSource {
        let Location::Table(table) = Location::parse(url).unwrap() else {
            panic!("{url} is not a table")
        };
        TableSource::open(&table).unwrap()
    }

    async fn drop(self) {
        self.db
            .exec(&format!("DROP TABLE {}", self.table), None)
            .await;
    }
}

async fn all_of(mut listing: Listing) -> Vec<ObjectMeta> {
    let mut all = Vec::new();
    while let Some(page) = listing.recv().await {
        for listed in page.unwrap() {
            match listed {
                Listed::Object(meta) => all.push(meta),
                Listed::Unreadable { key, error } => panic!("{key}: {error}"),
            }
        }
    }
    all
}

fn blob_of(key: &str) -> Vec<u8> {
    key.bytes().cycle().take(10 + key.len() * 3).collect()
}

/// Keys whose byte order differs from a locale's and a case-insensitive one's, and more than a
/// page of others.
fn objects() -> Vec<Object> {
    let mut keys: Vec<String> = [
        "B",
        "a",
        "a-b",
        "a/b",
        "Z",
        "b",
        "\u{e9}t\u{e9}.txt",
        "e.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    keys.extend((0..PAGE + 5).map(|n| format!("course-{}/video-{n:04}.mp4", n % 3)));
    keys.into_iter()
        .map(|key| {
            let group = key.split('.').next().unwrap().to_owned();
            let partition = key.split('/').next().unwrap().to_owned();
            let mime = (key == "a").then(|| "text/x-special".to_owned());
            (key.clone(), blob_of(&key), group, partition, mime)
        })
        .collect()
}

#[tokio::test]
async fn tables_list_in_byte_order_across_pages_and_resume_after_a_key() {
    let objects = objects();
    let mut expected: Vec<&str> = objects.iter().map(|o| o.0.as_str()).collect();
    expected.sort();
    for db in &databases().await {
        let fixture = db.fixture(&objects).await;
        let source = fixture.source();
        source.check().await.unwrap();
        let listed = all_of(source.list()).await;
        let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, expected, "{}", db.name());
        for meta in &listed {
            let (key, blob, group, partition, _) =
                objects.iter().find(|o| o.0 == meta.key).unwrap();
            assert_eq!(meta.size, blob.len() as u64, "{}: {key}", db.name());
            assert_eq!(meta.group.as_ref(), Some(group), "{}: {key}", db.name());
            assert_eq!(
                meta.partition.as_ref(),
                Some(partition),
                "{}: {key}",
                db.name()
            );
            assert!(!meta.version.is_empty(), "{}: {key}", db.name());
        }

        // After a key: exactly what follows it, across the page boundary; after a key that is
        // not there, what follows its place.
        for after in [
            expected[3],
            expected[PAGE - 2],
            "course-1/video-0500",
            "\u{ff}",
        ] {
            let resumed = all_of(source.list_shard(shard::WHOLE, Some(after))).await;
            let keys: Vec<&str> = resumed.iter().map(|m| m.key.as_str()).collect();
            let following: Vec<&str> = expected
                .iter()
                .copied()
                .filter(|key| *key > after)
                .collect();
            assert_eq!(keys, following, "{}: after {after}", db.name());
        }
        fixture.drop().await;
    }
}

#[tokio::test]
async fn ranged_reads_check_the_row_is_unchanged_and_still_there() {
    let mut objects = objects()[..8].to_vec();
    let big: Vec<u8> = (0..300_000u32).map(|n| (n * 7 % 251) as u8).collect();
    objects.push((
        "big.bin".into(),
        big.clone(),
        "big".into(),
        "p".into(),
        None,
    ));
    objects.push(("empty".into(), Vec::new(), "e".into(), "p".into(), None));
    for db in &databases().await {
        let name = db.name();
        let fixture = db.fixture(&objects).await;
        let source = fixture.source();
        let meta = source.stat("big.bin").await.unwrap().unwrap();
        assert_eq!(meta.size, big.len() as u64);
        // Parts read at once, as a multipart upload reads them.
        let parts = [(0u64, 100_000u64), (100_000, 100_000), (200_000, 100_000)];
        let reads = parts.map(|(offset, len)| source.read(&meta, offset, len));
        let read = futures::future::join_all(reads).await;
        for ((offset, len), bytes) in parts.iter().zip(read) {
            let range = *offset as usize..(*offset + *len) as usize;
            assert_eq!(&bytes.unwrap()[..], &big[range], "{name}: at {offset}");
        }
        let (bytes, metadata) = source.read_whole(&meta).await.unwrap();
        assert_eq!(&bytes[..], &big[..], "{name}");
        assert_eq!(
            metadata.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let empty = source.stat("empty").await.unwrap().unwrap();
        assert!(
            source.read(&empty, 0, 0).await.unwrap().is_empty(),
            "{name}"
        );

        // Content types: the column's, else the name's.
        let a = source.stat("a").await.unwrap().unwrap();
        let json = source.stat("e.json").await.unwrap().unwrap();
        assert_eq!(
            source.metadata(&a).await.unwrap().content_type.as_deref(),
            Some("text/x-special")
        );
        assert_eq!(
            source
                .metadata(&json)
                .await
                .unwrap()
                .content_type
                .as_deref(),
            Some("application/json")
        );

        // A row changed since it was listed: its blob (and, where kept, its updated-at).
        let touch = match db {
            Db::Sqlite(_) => "",
            Db::Postgres(..) => ", changed = changed + interval '1 second'",
            Db::MySql(..) => ", changed = changed + INTERVAL 1 SECOND",
        };
        let table = &fixture.table;
        db.exec(
            &format!("UPDATE {table} SET data = ?{touch} WHERE k = 'big.bin'"),
            Some(&big[..299_999]),
        )
        .await;
        let error = source.read(&meta, 0, 10).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SourceChanged, "{name}: {error}");
        let now = source.stat("big.bin").await.unwrap().unwrap();
        assert_ne!(now.version, meta.version, "{name}");
        assert_eq!(now.size, 299_999, "{name}");
        // The same length, other bytes: the version still tells.
        let b = source.stat("b").await.unwrap().unwrap();
        let mut other = blob_of("b");
        other[0] ^= 1;
        db.exec(
            &format!("UPDATE {table} SET data = ?{touch} WHERE k = 'b'"),
            Some(&other),
        )
        .await;
        let error = source.read(&b, 0, b.size).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SourceChanged, "{name}: {error}");

        // A row deleted since.
        db.exec(&format!("DELETE FROM {table} WHERE k = 'a'"), None)
            .await;
        let error = source.read(&a, 0, 1).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{name}: {error}");
        assert_eq!(source.stat("a").await.unwrap(), None, "{name}");
        // `A` is not `a`, even where the column's collation says so.
        assert_eq!(source.stat("A").await.unwrap(), None, "{name}");

        // A NULL blob is listed, as what cannot be read.
        db.exec(
            &format!("UPDATE {table} SET data = NULL WHERE k = 'Z'"),
            None,
        )
        .await;
        let mut listing = source.list();
        let mut unreadable = Vec::new();
        while let Some(page) = listing.recv().await {
            for listed in page.unwrap() {
                if let Listed::Unreadable { key, error } = listed {
                    unreadable.push((key, error.message().to_owned()));
                }
            }
        }
        assert_eq!(unreadable.len(), 1, "{name}: {unreadable:?}");
        assert_eq!(unreadable[0].0, "Z", "{name}");
        assert!(
            unreadable[0].1.contains("data column is NULL"),
            "{name}: {unreadable:?}"
        );
        fixture.drop().await;
    }
}

#[tokio::test]
async fn bad_tables_columns_and_servers_say_what_to_fix() {
    let objects = objects()[..3].to_vec();
    for db in &databases().await {
        let name = db.name();
        let fixture = db.fixture(&objects).await;
        let table = &fixture.table;
        let check = |url: String| {
            let source = fixture.source_at(&url);
            async move {
                let checked = source.check().await;
                checked.expect_err(&format!("{name}: {url} checked"))
            }
        };
        let error = check(fixture.url.replace(table.as_str(), "no_such_table")).await;
        assert_eq!(error.kind(), ErrorKind::NotFound, "{name}: {error}");
        assert!(error.message().contains("table="), "{name}: {error}");
        assert!(error.message().contains("no_such_table"), "{name}: {error}");
        let error = check(fixture.url.replace("blob=data", "blob=bytes")).await;
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{name}: {error}");
        assert!(
            error.message().contains("'bytes' (named by blob=)"),
            "{name}: {error}"
        );
        let error = check(fixture.url.replace("group=video", "group=film")).await;
        assert!(
            error.message().contains("'film' (named by group=)"),
            "{name}: {error}"
        );
        if !matches!(db, Db::Sqlite(_)) {
            let error = check(fixture.url.replace("blob=data", "blob=mime")).await;
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{name}: {error}");
            assert!(error.message().contains("binary column"), "{name}: {error}");
        }
        fixture.drop().await;
    }
    // Nothing listens there; the message names the host and database, never the password.
    for (url, name) in [
        (
            "postgres://u:hunter2@127.0.0.1:9/shop?table=t&key=k&blob=b",
            "postgres",
        ),
        (
            "mysql://u:hunter2@127.0.0.1:9/shop?table=t&key=k&blob=b",
            "mysql",
        ),
    ] {
        let Location::Table(table) = Location::parse(url).unwrap() else {
            unreachable!()
        };
        let error = TableSource::open(&table)
            .unwrap()
            .check()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unreachable, "{name}: {error}");
        assert!(
            error.message().contains("127.0.0.1:9/shop"),
            "{name}: {error}"
        );
        assert!(!error.message().contains("hunter2"), "{name}: {error}");
    }
    let missing = "sqlite:///nonexistent/store.db?table=t&key=k&blob=b";
    let Location::Table(table) = Location::parse(missing).unwrap() else {
        unreachable!()
    };
    let error = TableSource::open(&table)
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(error.message().contains("/nonexistent/store.db"), "{error}");
    // A wrong password is refused as credentials, and not repeated; the right one works.
    for db in &databases().await {
        let Db::MySql(_, url) = db else { continue };
        let fixture = db.fixture(&objects).await;
        db.exec(
            "CREATE USER IF NOT EXISTS 'godwit_pw'@'%' IDENTIFIED BY 'Right-pass-1'",
            None,
        )
        .await;
        db.exec("GRANT SELECT ON *.* TO 'godwit_pw'@'%'", None)
            .await;
        let with = |password: &str| {
            let at = url.replacen("://root@", &format!("://godwit_pw:{password}@"), 1);
            fixture.source_at(&fixture.url.replacen(url.as_str(), &at, 1))
        };
        let error = with("wrong-hunter2").check().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Credentials, "{error}");
        assert!(!error.message().contains("hunter2"), "{error}");
        with("Right-pass-1").check().await.unwrap();
        fixture.drop().await;
    }
}
