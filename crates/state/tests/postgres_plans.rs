//! The PostgreSQL ledger where PostgreSQL itself matters: how it runs the hot statements (a poor
//! plan would make a big migration slow down as it goes: the claim must walk pending rows only,
//! whatever the statistics say), and what its refusals say.

use godwit_state::{MigrationId, MigrationSpec, PgStore, Scanned, ScannedObject, Store};

/// The database `scripts/test.sh` names; `None` (or, under CI, a failure) without it.
fn database() -> Option<String> {
    match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!("note: GODWIT_TEST_POSTGRES unset; skipping the PostgreSQL tests");
            None
        }
    }
}

/// A ledger in a fresh schema named `schema`, holding one migration of 30,000 pending objects,
/// and an admin connection working in that schema.
async fn ledger_of_30000(
    url: &str,
    schema: &str,
) -> (tokio_postgres::Client, PgStore, MigrationId) {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}"
        ))
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = PgStore::connect(&format!("{url}{separator}options=-csearch_path%3D{schema}"))
        .await
        .unwrap();
    let migration = store
        .open_migration(&MigrationSpec {
            name: "plans".into(),
            source_url: "./a".into(),
            dest_url: "s3://b/".into(),
            source_endpoint: None,
            dest_endpoint: None,
        })
        .await
        .unwrap();
    let pass = store.start_pass(migration.id, "").await.unwrap();
    for page in 0..30 {
        let batch = (0..1000)
            .map(|i| ScannedObject {
                key: format!("k{:06}", page * 1000 + i),
                size: 10,
                version: "v".into(),
                scanned: Scanned::Wanted,
                group: None,
                partition: None,
            })
            .collect();
        store
            .record_scanned(migration.id, pass.number, batch, None)
            .await
            .unwrap();
    }
    (admin, store, migration.id)
}

/// Prepares `sql` as `name` under a generic plan, runs `EXPLAIN (ANALYZE) EXECUTE name(args)`,
/// and returns the plan and the rows its filters read and dropped.
async fn explained(
    admin: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    args: &str,
) -> (String, u64) {
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {sql}"
        ))
        .await
        .unwrap();
    let plan: Vec<String> = admin
        .query(&format!("EXPLAIN (ANALYZE) EXECUTE {name}({args})"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    let removed: u64 = plan
        .lines()
        .filter_map(|line| line.split_once("Rows Removed by Filter:"))
        .map(|(_, n)| n.trim().parse::<u64>().unwrap())
        .sum();
    (plan, removed)
}

/// The claim, prepared once (so PostgreSQL may keep a generic plan) after the statistics were
/// taken while every object was pending, then run when most have finished: it must not read the
/// finished rows. A plan that walked the primary key and filtered on the state read all 25,000
/// (100 ms a claim at 150,000 finished objects, growing with every object done).
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_reads_no_finished_row_whatever_the_statistics() {
    let Some(url) = database() else { return };
    let schema = format!("plans_{}", std::process::id());
    let (admin, store, migration) = ledger_of_30000(&url, &schema).await;
    // Statistics taken while all were pending; then 25,000 finish.
    admin
        .batch_execute(
            "ANALYZE objects;
             UPDATE objects SET state = 2 WHERE id < (SELECT MIN(id) + 25000 FROM objects);",
        )
        .await
        .unwrap();
    // (Dead index entries aside: what is measured is the plan.)
    admin.batch_execute("VACUUM objects").await.unwrap();
    let (plan, removed) = explained(
        &admin,
        "claim",
        godwit_state::POSTGRES_CLAIM,
        &format!("{}, 64, 'w', 0, 0, 1099511627776, NULL", migration.0),
    )
    .await;
    assert!(
        removed < 1000,
        "the claim read {removed} rows it did not take: {plan}"
    );
    assert_eq!(
        store
            .tally(migration)
            .await
            .unwrap()
            .n(godwit_state::ObjectState::InProgress),
        64,
        "the claim took its packet"
    );
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A page of the fail queue, after statistics taken while every object had failed (an outage
/// failed them all), then run when nearly all were retried and copied: it must read the failed
/// rows only, not walk the primary key past the copied ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_fail_queue_page_reads_no_other_row_whatever_the_statistics() {
    let Some(url) = database() else { return };
    let schema = format!("plans_failed_{}", std::process::id());
    let (admin, store, migration) = ledger_of_30000(&url, &schema).await;
    admin
        .batch_execute(
            "UPDATE objects SET state = 7;
             ANALYZE objects;
             UPDATE objects SET state = 2 WHERE id <= (SELECT MAX(id) - 10 FROM objects);",
        )
        .await
        .unwrap();
    admin.batch_execute("VACUUM objects").await.unwrap();
    let (plan, removed) = explained(
        &admin,
        "failed_page",
        godwit_state::POSTGRES_FAILED_PAGE,
        &format!("{}, NULL, 0, 50", migration.0),
    )
    .await;
    assert!(
        removed < 1000,
        "a page of the fail queue read {removed} rows that had not failed: {plan}"
    );
    let page = store.failed(migration, None, None, 50).await.unwrap();
    assert_eq!(page.len(), 10);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// The rows the plan's scan of `index` read (`actual ... rows=N`, times its loops).
fn rows_read(plan: &str, index: &str) -> u64 {
    let line = plan
        .lines()
        .find(|line| line.contains(&format!("Index Scan using {index}")))
        .unwrap_or_else(|| panic!("no scan of {index}: {plan}"));
    let actual = &line[line.find("actual").unwrap()..];
    let number = |field: &str| -> u64 {
        let start = actual.find(field).unwrap() + field.len();
        let digits: String = actual[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    number("rows=") * number("loops=")
}

/// A page of the dashboard's listing whose state matches no object reads its budget of rows
/// through the key index and no more, and under a prefix only the prefix's rows: however big
/// the migration, one call costs the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_objects_reads_its_budget_and_no_more() {
    let Some(url) = database() else { return };
    let schema = format!("plans_page_{}", std::process::id());
    let (admin, store, migration) = ledger_of_30000(&url, &schema).await;
    admin.batch_execute("ANALYZE objects").await.unwrap();
    let index = "objects_migration_id_key_key";
    // Every key starts with k: a page of failed objects (none) reads its budget.
    let (plan, _) = explained(
        &admin,
        "page_all",
        godwit_state::POSTGRES_OBJECTS_PAGE,
        &format!("{}, 'k', NULL, 5000, 7, 51, 'l'", migration.0),
    )
    .await;
    assert_eq!(rows_read(&plan, index), 5000, "{plan}");
    // Keys k000100 to k000199 start with k0001: the read stops where they end.
    let (plan, _) = explained(
        &admin,
        "page_prefix",
        godwit_state::POSTGRES_OBJECTS_PAGE,
        &format!("{}, 'k0001', NULL, 5000, 7, 51, 'k0002'", migration.0),
    )
    .await;
    assert_eq!(rows_read(&plan, index), 100, "{plan}");
    let page = store
        .objects_page(
            migration,
            godwit_state::ObjectQuery {
                prefix: Some("k0001".into()),
                limit: 30,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 30);
    assert_eq!(page.next.as_deref(), Some("k000129"));
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// What the server said reaches the message: the driver's own words for a refusal are only
/// "db error".
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_says_what_the_server_said() {
    let Some(url) = database() else { return };
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/godwit_no_such_database");
    let error = match PgStore::connect(&missing).await {
        Ok(_) => panic!("a database that does not exist was opened"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("database \"godwit_no_such_database\" does not exist"),
        "{error}"
    );
}
