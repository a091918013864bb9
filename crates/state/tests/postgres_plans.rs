//! The PostgreSQL ledger where PostgreSQL itself matters: how it runs the hot statements (a poor
//! plan would make a big migration slow down as it goes: the claim must walk pending rows only,
//! whatever the statistics say), and what its refusals say.

use godwit_state::{MigrationSpec, PgStore, Scanned, ScannedObject, Store};

/// The claim, prepared once (so PostgreSQL may keep a generic plan) after the statistics were
/// taken while every object was pending, then run when most have finished: it must not read the
/// finished rows. A plan that walked the primary key and filtered on the state read all 25,000
/// (100 ms a claim at 150,000 finished objects, growing with every object done).
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_reads_no_finished_row_whatever_the_statistics() {
    let url = match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!("note: GODWIT_TEST_POSTGRES unset; skipping the PostgreSQL plan test");
            return;
        }
    };
    let schema = format!("plans_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
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
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE claim AS {}",
            godwit_state::POSTGRES_CLAIM
        ))
        .await
        .unwrap();
    let plan: Vec<String> = admin
        .query(
            &format!(
                "EXPLAIN (ANALYZE) EXECUTE claim({}, 64, 'w', 0, 0, 1099511627776)",
                migration.id.0
            ),
            &[],
        )
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
    assert!(
        removed < 1000,
        "the claim read {removed} rows it did not take: {plan}"
    );
    assert_eq!(
        store
            .tally(migration.id)
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

/// What the server said reaches the message: the driver's own words for a refusal are only
/// "db error".
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_says_what_the_server_said() {
    let url = match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => return,
    };
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

/// A page of the fail queue, after statistics taken while every object had failed (an outage
/// failed them all), then run when nearly all were retried and copied: it must read the failed
/// rows only, not walk the primary key past the copied ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_fail_queue_page_reads_no_other_row_whatever_the_statistics() {
    let url = match std::env::var("GODWIT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_POSTGRES is not set: run the tests with scripts/test.sh")
        }
        _ => return,
    };
    let schema = format!("plans_failed_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
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
    admin
        .batch_execute(
            "UPDATE objects SET state = 7;
             ANALYZE objects;
             UPDATE objects SET state = 2 WHERE id <= (SELECT MAX(id) - 10 FROM objects);",
        )
        .await
        .unwrap();
    admin.batch_execute("VACUUM objects").await.unwrap();
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE failed_page AS {}",
            godwit_state::POSTGRES_FAILED_PAGE
        ))
        .await
        .unwrap();
    let plan: Vec<String> = admin
        .query(
            &format!(
                "EXPLAIN (ANALYZE) EXECUTE failed_page({}, NULL, 0, 50)",
                migration.id.0
            ),
            &[],
        )
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
    assert!(
        removed < 1000,
        "a page of the fail queue read {removed} rows that had not failed: {plan}"
    );
    let page = store.failed(migration.id, None, None, 50).await.unwrap();
    assert_eq!(page.len(), 10);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
