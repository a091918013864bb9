//! Content-store tables as sources, end to end (issue 11, point 7): the real binary migrates a
//! table of 10,000 rows in PostgreSQL and one in MariaDB (`GODWIT_TEST_POSTGRES`,
//! `GODWIT_TEST_MYSQL`, as `scripts/test.sh` sets them) and a small one in SQLite to the
//! in-process S3 server; every object is read back and compared, a re-run copies nothing, and the
//! password in the source URL appears nowhere: not in the ledger, the summary, stderr or
//! `godwit status`. Under CI (`CI` set) a missing database fails the test.

mod support;

use std::path::Path;

use futures::StreamExt;
use support::{Target, bytes, ledger, path_str};

/// One row: key, blob, Content-Type column.
type Row = (String, Vec<u8>, Option<&'static str>);

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

/// `n` small rows in courses and videos, some with a Content-Type column, and one blob of
/// 12 MiB, copied in parts.
fn rows(n: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = (0..n)
        .map(|i| {
            let (key, mime) = match i % 4 {
                0 => (
                    format!("course-{}/video-{}/{i}.mp4", i % 7, i % 50),
                    Some("video/mp4"),
                ),
                1 => (format!("course-{}/video-{}/{i}.json", i % 7, i % 50), None),
                2 => (
                    format!("course-{}/video-{}/{i}.vtt", i % 7, i % 50),
                    Some("text/vtt"),
                ),
                _ => (format!("course-{}/video-{}/{i}", i % 7, i % 50), None),
            };
            (key, bytes(i as u64, 50 + i % 300), mime)
        })
        .collect();
    rows.push(("course-0/lecture.bin".into(), bytes(99_999, 12 << 20), None));
    rows
}

/// The course and video of a key, as the table's columns hold them.
fn placement(key: &str) -> (String, String) {
    let parts: Vec<&str> = key.split('/').collect();
    let course = parts[0].to_owned();
    let video = if parts.len() > 2 {
        format!("{}/{}", parts[0], parts[1])
    } else {
        course.clone()
    };
    (course, video)
}

fn table_name(hint: &str) -> String {
    format!("godwit_e2e_{hint}_{}", std::process::id())
}

const SETTINGS: &str = "key=path&blob=content&group=video&partition=course&content_type=mime";

/// Migrates `url` (which holds `password`, when given) into a new bucket, checks every object,
/// the re-run, and that the password stayed secret.
async fn migrate_and_check(url: &str, password: Option<&str>, rows: &[Row]) {
    let target = Target::s3s_fs().await;
    let work = tempfile::tempdir().unwrap();
    let state = ledger(&work);
    let bucket = target.bucket("table").await;
    let migrate = || async {
        let mut command = support::godwit();
        command
            .args(["migrate", url, &format!("s3://{bucket}/files")])
            .args(["--json", "--no-progress", "--state", &path_str(&state)])
            .args(["--multipart-threshold", "6MiB", "--part-size", "5MiB"])
            .args(["--dest-endpoint", &target.endpoint]);
        support::run(command).await
    };
    let first = migrate().await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(first.n("scanned"), rows.len() as u64, "{first:?}");
    assert_eq!(first.n("copied"), rows.len() as u64, "{first:?}");

    // Every object, byte for byte, with its Content-Type: the column's, else the name's.
    let client = &target.client;
    let checks = futures::stream::iter(rows.iter().map(|(key, blob, mime)| {
        let bucket = bucket.clone();
        async move {
            let object = client
                .get_object()
                .bucket(&bucket)
                .key(format!("files/{key}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
            let content_type = object.content_type().map(str::to_owned);
            let body = object.body.collect().await.unwrap().into_bytes();
            assert!(body[..] == blob[..], "{key}: other bytes");
            let expected = match mime {
                Some(mime) => Some(*mime),
                None if key.ends_with(".json") => Some("application/json"),
                None if key.ends_with(".bin") => Some("application/octet-stream"),
                None => None,
            };
            if let Some(expected) = expected {
                assert_eq!(content_type.as_deref(), Some(expected), "{key}");
            }
        }
    }));
    checks.buffer_unordered(16).collect::<Vec<()>>().await;

    // The ledger placed each object in the group and partition its row names.
    let connection = rusqlite::Connection::open(&state).unwrap();
    let mut statement = connection
        .prepare("SELECT key, group_key, partition_key FROM objects")
        .unwrap();
    let placed: Vec<(String, Option<String>, Option<String>)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(placed.len(), rows.len());
    for (key, group, partition) in placed {
        let (course, video) = placement(&key);
        assert_eq!(group, Some(video), "{key}");
        assert_eq!(partition, Some(course), "{key}");
    }
    drop(statement);
    drop(connection);

    let again = migrate().await;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(again.n("copied_this_run"), 0, "{again:?}");

    // Validation reads the destination back against the ledger: every partition passes.
    let mut validate = support::godwit();
    validate.args(["validate", "--json", "--state", &path_str(&state)]);
    let validated = support::run(validate).await;
    assert_eq!(validated.code, Some(0), "{validated:?}");
    let reports = validated.json()["partitions"].as_array().unwrap().clone();
    assert!(reports.iter().all(|r| r["passed"] == true), "{reports:?}");
    let verified: u64 = reports
        .iter()
        .map(|r| r["verified"].as_u64().unwrap())
        .sum();
    assert_eq!(verified, rows.len() as u64, "{reports:?}");
    if let Some(password) = password {
        assert!(!validated.stdout.contains(password) && !validated.stderr.contains(password));
    }

    let mut status = support::godwit();
    status.args(["status", "--json", "--state", &path_str(&state)]);
    let status = support::run(status).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    let source_url = status.json()["migrations"][0]["source"].clone();
    if let Some(password) = password {
        for (what, text) in [
            ("summary", &first.stdout),
            ("stderr", &first.stderr),
            ("re-run summary", &again.stdout),
            ("re-run stderr", &again.stderr),
            ("status", &status.stdout),
        ] {
            assert!(
                !text.contains(password),
                "{what} shows the password: {text}"
            );
        }
        assert_no_password_in(&state, password);
    }
    assert!(source_url.to_string().contains("table="), "{source_url}");
}

/// The ledger's files (the database and its write-ahead log) hold no trace of `password`.
fn assert_no_password_in(state: &Path, password: &str) {
    let mut checked = 0;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = format!("{}{suffix}", state.display());
        let Ok(content) = std::fs::read(&path) else {
            continue;
        };
        checked += 1;
        let found = content
            .windows(password.len())
            .any(|window| window == password.as_bytes());
        assert!(!found, "{path} holds the password");
    }
    assert!(checked > 0, "no ledger at {}", state.display());
    // And the recorded URL is the one given, less its password.
    let connection = rusqlite::Connection::open(state).unwrap();
    let (source_url, options): (String, String) = connection
        .query_row("SELECT source_url, options FROM migrations", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert!(source_url.contains(SETTINGS), "{source_url}");
    assert!(
        options.contains(&source_url.replace('&', "\\u0026")) || options.contains(&source_url),
        "{options}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_table_of_10000_rows_migrates() {
    let Some(base) = server_url("GODWIT_TEST_POSTGRES") else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let table = table_name("pg");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (path text PRIMARY KEY, content bytea, course text, video text, mime text, changed timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .unwrap();
    let rows = rows(10_000);
    let (keys, blobs, mimes): (Vec<&str>, Vec<&[u8]>, Vec<Option<&str>>) = rows
        .iter()
        .map(|(k, b, m)| (k.as_str(), b.as_slice(), *m))
        .fold(
            (vec![], vec![], vec![]),
            |(mut k, mut b, mut m), (key, blob, mime)| {
                k.push(key);
                b.push(blob);
                m.push(mime);
                (k, b, m)
            },
        );
    let (courses, videos): (Vec<String>, Vec<String>) =
        rows.iter().map(|(key, _, _)| placement(key)).unzip();
    client
        .execute(
            &format!(
                "INSERT INTO {table} (path, content, mime, course, video) SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[])"
            ),
            &[&keys, &blobs, &mimes, &courses, &videos],
        )
        .await
        .unwrap();
    // Trust authentication takes any password: one in the URL must still stay secret.
    let password = "Pg-e2e-S3cret";
    let with_password = base.replacen("://root@", &format!("://root:{password}@"), 1);
    assert_ne!(
        with_password, base,
        "GODWIT_TEST_POSTGRES names another user: {base}"
    );
    let url = format!("{with_password}?table={table}&{SETTINGS}&updated_at=changed");
    migrate_and_check(&url, Some(password), &rows).await;
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_table_of_10000_rows_migrates_with_a_password_kept_secret() {
    let Some(base) = server_url("GODWIT_TEST_MYSQL") else {
        return;
    };
    let pool = sqlx::mysql::MySqlPool::connect(&base).await.unwrap();
    let table = table_name("maria");
    let exec = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    exec(format!(
        "CREATE TABLE {table} (path varchar(255) PRIMARY KEY, content longblob, course text, video text, mime text)"
    ))
    .await;
    let rows = rows(10_000);
    for chunk in rows.chunks(500) {
        let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql =
            format!("INSERT INTO {table} (path, content, mime, course, video) VALUES {values}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (key, blob, mime) in chunk {
            let (course, video) = placement(key);
            query = query
                .bind(key)
                .bind(blob)
                .bind(mime)
                .bind(course)
                .bind(video);
        }
        query.execute(&pool).await.unwrap();
    }
    let password = "Maria-e2e-S3cret";
    exec(format!(
        "CREATE USER IF NOT EXISTS 'godwit_e2e'@'%' IDENTIFIED BY '{password}'"
    ))
    .await;
    exec("GRANT SELECT ON *.* TO 'godwit_e2e'@'%'".to_owned()).await;
    let address = base.split_once('@').unwrap().1;
    // No updated-at column: each row's version is the MD5 MariaDB computes of its blob.
    let url = format!("mysql://godwit_e2e:{password}@{address}?table={table}&{SETTINGS}");
    migrate_and_check(&url, Some(password), &rows).await;
    exec(format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_table_migrates() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("content.db");
    let mut connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE files (path text PRIMARY KEY, content blob, course text, video text, mime text)",
        )
        .unwrap();
    let rows = rows(40);
    let transaction = connection.transaction().unwrap();
    for (key, blob, mime) in &rows {
        let (course, video) = placement(key);
        transaction
            .execute(
                "INSERT INTO files VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![key, blob, course, video, mime],
            )
            .unwrap();
    }
    transaction.commit().unwrap();
    drop(connection);
    let url = format!("sqlite://{}?table=files&{SETTINGS}", path.display());
    migrate_and_check(&url, None, &rows).await;
}
