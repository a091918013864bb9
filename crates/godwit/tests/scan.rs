//! The scan end to end: a listing cut into shards, each recording how far it got, so a scan
//! killed half-way resumes where it stopped.

mod support;

use support::ledger;

/// Issue 10, point 3: a scan of 20,000 keys killed (SIGKILL) half-way resumes from the
/// positions its shards recorded: the resumed run's LIST requests are those of a full scan less
/// the pages recorded before the kill.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_scan_resumes_where_it_stopped() {
    // Each LIST takes 300 ms: the scan lasts long enough to be killed in the middle.
    let target = support::Target::slow_listing(std::time::Duration::from_millis(300)).await;
    let requests = target.requests().unwrap();
    let source = target.bucket("scan-src").await;
    // Ten prefixes of 2,000 keys: ten shards of two pages each.
    target.files(
        &source,
        (0..20_000).map(|i| (format!("p{}/k{i:05}", i % 10), vec![b'x'])),
    );
    let work = tempfile::tempdir().unwrap();
    let state = ledger(&work);
    // Only p0/ is copied: what is measured is the listing.
    let migrate = |dest: &str, state: &std::path::Path| {
        support::migrate_command(
            &target,
            &format!("s3://{source}"),
            &format!("s3://{dest}"),
            state,
            &["--include", "p0/*"],
        )
    };
    let lists = || requests.get("ListObjectsV2");
    let recorded = |state: &std::path::Path| {
        rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|db| db.query_row("SELECT COUNT(*) FROM objects", [], |row| row.get(0)))
            .unwrap_or(0i64)
    };

    // A full scan, into a ledger of its own, for the count of LIST requests it takes.
    let before = lists();
    let full_dest = target.bucket("scan-full").await;
    let full_state = work.path().join("full.db");
    let full = support::run(migrate(&full_dest, &full_state)).await;
    assert_eq!(full.code, Some(0), "{full:?}");
    assert_eq!(full.n("scanned"), 20_000, "{full:?}");
    let full_lists = lists() - before;

    let dest = target.bucket("scan-dst").await;
    let before = lists();
    let mut child = migrate(&dest, &state).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while recorded(&state) < 6_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scan never got going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    assert_eq!(
        child.wait().await.unwrap().code(),
        None,
        "the run ended before it was killed"
    );
    let at_kill = recorded(&state);
    let first_lists = lists() - before;
    assert!(at_kill < 20_000, "the scan had finished: nothing to resume");

    let before = lists();
    let resumed = support::run(migrate(&dest, &state)).await;
    let second_lists = lists() - before;
    eprintln!(
        "a full scan: {full_lists} LIST requests; killed with {at_kill} of 20,000 keys recorded after {first_lists}; resumed with {second_lists}"
    );
    assert_eq!(resumed.code, Some(0), "{resumed:?}");
    assert_eq!(
        (
            resumed.n("scanned"),
            resumed.n("copied"),
            resumed.n("excluded")
        ),
        (20_000, 2_000, 18_000),
        "{resumed:?}"
    );
    // What the killed run recorded (pages of 1,000 keys) is not listed again.
    let recorded_pages = at_kill as u64 / 1000;
    assert!(
        second_lists <= full_lists - recorded_pages,
        "the resumed scan listed {second_lists} pages; a full scan takes {full_lists}, and {recorded_pages} were recorded before the kill"
    );
    assert_eq!(target.keys(&dest).await.len(), 2_000);
}
