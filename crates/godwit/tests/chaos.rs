//! Chaos: a fleet of three processes on one PostgreSQL ledger, killed with SIGKILL at random
//! moments and started again, still moves every object exactly, leaves no upload open, and
//! re-sends no more than what the killed processes held.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{bytes, path_str, write_tree};

/// Small objects (one PutObject each) and multipart ones (three parts each).
const SMALL: usize = 4_970;
const LARGE: usize = 30;
const PARTS: usize = 3;
const KILLS: usize = 6;

/// Issue 10, the chaos test: `migrate` and two `godwit worker`s share a migration of 5,000
/// objects (30 of them multipart); six times a random one of them is killed (SIGKILL) and a new
/// one started in its place. At the end every object is at the destination, equal byte for
/// byte to its source as an independent reader (the S3 SDK, validating the stored checksum)
/// reads it, every ledger row is terminal, no multipart upload is open, and the PUTs sent again
/// number no more than the objects the killed processes held unrecorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_killed_at_random_moves_every_object_exactly_once() {
    let Some(url) = support::postgres_schema("chaos").await else {
        return;
    };
    // Every PutObject takes 40 ms: the run lasts long enough for six kills in its middle.
    let target = support::Target::slow(Duration::from_millis(40)).await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let mut files: Vec<(String, Vec<u8>)> = (0..SMALL)
        .map(|i| {
            let len = 100 + (i * 7919) % 4000;
            (format!("d{:02}/f{i:05}", i % 23), bytes(i as u64, len))
        })
        .collect();
    files.extend((0..LARGE).map(|i| {
        let len = (PARTS - 1) * (5 << 20) + 1 + i * 1000;
        // Among the small ones (at the end of each directory): the kills meet uploads in flight.
        (
            format!("d{:02}/g{i:02}", i % 23),
            bytes(1_000_000 + i as u64, len),
        )
    }));
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_tree(&source, &borrowed);
    drop(borrowed);
    let bucket = target.bucket("chaos").await;

    let seed = fastrand::u64(..);
    eprintln!("chaos seed {seed} (GODWIT_CHAOS_SEED={seed} repeats this run's choices)");
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("GODWIT_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed),
    );

    // Slot 0 is the `migrate` that made the migration (started again, it resumes it); slots 1
    // and 2 are workers.
    let start = |slot: usize| {
        let mut command = support::godwit();
        if slot == 0 {
            command
                .args(["migrate", &path_str(&source), &format!("s3://{bucket}")])
                .args(["--json", "--no-progress", "--concurrency", "4"])
                .args(["--multipart-threshold", "8MiB", "--part-size", "5MiB"])
                .args(["--dest-endpoint", &target.endpoint]);
        } else {
            command.args(["worker", "--json"]);
        }
        command.args(["--lease", "3", "--state", &url]);
        command.spawn().unwrap()
    };
    let mut fleet: Vec<tokio::process::Child> = (0..3).map(start).collect();

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Objects a process holds unrecorded: those it may have sent and must be sent again.
    let held_by = |pid: u32| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE size <= 8388608), COUNT(*) FILTER (WHERE size > 8388608) \
                     FROM objects WHERE state = 1 AND lease_owner LIKE '%:' || $1 || ':%'",
                    &[&pid.to_string()],
                )
                .await
                .map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        }
    };
    let recorded = || async {
        client
            .query_one("SELECT COUNT(*) FROM objects WHERE state = 2", &[])
            .await
            .map_or(0, |row| row.get::<_, i64>(0))
    };

    // Let the first kill land after the fleet has started copying.
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded().await < 200 {
        assert!(Instant::now() < deadline, "the fleet never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = (0i64, 0i64);
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(1000..2500))).await;
        let slot = rng.usize(0..fleet.len());
        let child = &mut fleet[slot];
        let pid = child
            .id()
            .expect("a process of the fleet ended before its kill");
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), None, "slot {slot} had ended before its kill");
        let (small, large) = held_by(pid).await;
        held.0 += small;
        held.1 += large;
        let done = recorded().await;
        kills.push((slot, done, small + large));
        fleet[slot] = start(slot);
    }
    assert!(
        recorded().await < (SMALL + LARGE) as i64,
        "the migration was over before the last kill: the kills proved nothing"
    );
    eprintln!("kills (slot, objects copied then, objects the killed process held): {kills:?}");
    assert!(
        held.0 + held.1 > 0,
        "no kill met a process holding work: the kills proved nothing"
    );

    // The last `migrate` runs to the end; then the workers are told to stop.
    let migrate = fleet.remove(0);
    let finished = tokio::time::timeout(Duration::from_secs(300), migrate.wait_with_output())
        .await
        .expect("the migration did not end within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["copied"], (SMALL + LARGE) as u64, "{summary}");
    for worker in fleet {
        let pid = worker.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let output = worker.wait_with_output().await.unwrap();
        assert_eq!(
            output.status.code(),
            Some(130),
            "a worker did not stop cleanly: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Every ledger row is terminal (copied), and no claim is left.
    let states: BTreeMap<i64, i64> = client
        .query("SELECT state, COUNT(*) FROM objects GROUP BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .collect();
    assert_eq!(states, BTreeMap::from([(2, (SMALL + LARGE) as i64)]));

    // No multipart upload is left open.
    let open = target
        .client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());

    // An independent reader: every key, every byte, and the checksum the object carries.
    let keys = target.keys(&bucket).await;
    let mut expected: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    expected.sort();
    assert_eq!(keys.iter().collect::<Vec<_>>(), expected);
    let files = Arc::new(files);
    let client = target.client.clone();
    let checked = Arc::new(tokio::sync::Semaphore::new(16));
    let mut reads = tokio::task::JoinSet::new();
    for n in 0..files.len() {
        let (files, client, bucket) = (Arc::clone(&files), client.clone(), bucket.clone());
        let permit = Arc::clone(&checked).acquire_owned().await.unwrap();
        reads.spawn(async move {
            let (key, content) = &files[n];
            let object = client
                .get_object()
                .bucket(&bucket)
                .key(key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
            assert_eq!(object.content_length(), Some(content.len() as i64), "{key}");
            let carried = object.checksum_crc64_nvme().is_some();
            // Collecting the body validates it against the checksum the object carries.
            let body = object.body.collect().await.unwrap().into_bytes();
            assert!(body == content[..], "{key} differs from its source");
            drop(permit);
            carried
        });
    }
    let mut with_checksum = 0;
    while let Some(read) = reads.join_next().await {
        with_checksum += usize::from(read.unwrap());
    }

    // PUTs sent again: no more than the objects the killed processes held unrecorded.
    let puts = requests.get("PutObject");
    let parts = requests.get("UploadPart");
    let resent_puts = puts
        .checked_sub(SMALL as u64)
        .expect("fewer PutObject requests than small objects");
    let resent_parts = parts
        .checked_sub((LARGE * PARTS) as u64)
        .expect("fewer UploadPart requests than parts");
    eprintln!(
        "{} objects ({LARGE} multipart), {KILLS} kills; killed processes held {} small and {} multipart objects unrecorded; PutObject {puts} ({resent_puts} re-sent), UploadPart {parts} ({resent_parts} re-sent); {with_checksum} objects carry a CRC-64 the reader validated (every object was compared byte for byte)",
        SMALL + LARGE,
        held.0,
        held.1
    );
    assert!(
        resent_puts <= held.0 as u64,
        "{resent_puts} PUTs were sent again; the killed processes held {} small objects",
        held.0
    );
    assert!(
        resent_parts <= (held.1 as u64) * PARTS as u64,
        "{resent_parts} parts were sent again; the killed processes held {} multipart objects",
        held.1
    );
}
