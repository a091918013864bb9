//! How objects travel: one PUT or parts, chosen from what the destination is measured to do;
//! server-side copies where the server would copy over a key (`--racy-server-side-copy`).

mod support;

use godwit_s3_server::{Conditions, ServerOptions};
use support::{Target, bytes, ledger, migrate, path_str, write_tree};

/// A file just above the size that always goes in one PUT (64 MiB).
const LARGE: usize = (64 << 20) + (3 << 20);

/// An in-process server with `options`, its bucket "from" holding `k/0.bin` .. `k/5.bin`
/// (2,000 bytes each, `bytes(i, 2000)`), and an empty bucket "to": the names of both.
async fn six_to_copy(options: ServerOptions) -> (Target, String, String) {
    let target = Target::with_options(options).await;
    let from = target.bucket("from").await;
    let to = target.bucket("to").await;
    for i in 0..6u64 {
        target
            .put(&from, &format!("k/{i}.bin"), &bytes(i, 2000))
            .await;
    }
    (target, from, to)
}

/// What the summary says of how large objects went.
fn large_objects(run: &support::Run) -> String {
    match run.json()["large_objects"].as_str() {
        Some(route) => route.to_owned(),
        None => panic!("no large_objects in the summary: {run:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_object_goes_whole_where_one_request_is_fast_and_parts_keep_no_checksum() {
    // The in-process server (s3s-fs) keeps no checksum of multipart objects, and one request on
    // loopback carries hundreds of MiB a second.
    let target = Target::s3s_fs().await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let body = bytes(7, LARGE);
    write_tree(&src, &[("big.bin", body.clone())]);
    let bucket = target.bucket("whole").await;

    let run = migrate(
        &target,
        &path_str(&src),
        &format!("s3://{bucket}"),
        &ledger(&work),
        &[],
    )
    .await;

    assert_eq!(run.code, Some(0), "{run:?}");
    let route = large_objects(&run);
    assert!(
        route.starts_with("objects up to ") && route.contains("in one PUT"),
        "{route}"
    );
    assert!(route.contains("keep their checksum: no"), "{route}");
    assert_eq!(requests.get("CreateMultipartUpload"), 0, "{route}");
    assert_eq!(requests.get("PutObject"), 1);
    assert_eq!(target.get(&bucket, "big.bin").await, body);
    // The probe's objects are gone again.
    assert_eq!(target.keys(&bucket).await, ["big.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_object_goes_in_parts_where_one_request_is_slow() {
    // One PutObject carries 12 MiB/s here (as a request to AWS carries a few tens): two seconds
    // of one request hold less than the floor, so large objects go in parts, which are not
    // slowed.
    let target = Target::with_options(ServerOptions {
        put_rate: Some(12 << 20),
        ..ServerOptions::default()
    })
    .await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let body = bytes(8, LARGE);
    write_tree(
        &src,
        &[("big.bin", body.clone()), ("small.txt", bytes(9, 100))],
    );
    let bucket = target.bucket("parts").await;

    let run = migrate(
        &target,
        &path_str(&src),
        &format!("s3://{bucket}"),
        &ledger(&work),
        &[],
    )
    .await;

    assert_eq!(run.code, Some(0), "{run:?}");
    let route = large_objects(&run);
    assert!(
        route.starts_with("objects above 64 MiB in parts"),
        "{route}"
    );
    assert_eq!(requests.get("CreateMultipartUpload"), 1, "{route}");
    assert_eq!(
        requests.get("PutObject"),
        1,
        "only the small file goes whole"
    );
    assert_eq!(target.get(&bucket, "big.bin").await, body);

    // A threshold given is obeyed, and said.
    let again = target.bucket("given").await;
    let run = migrate(
        &target,
        &path_str(&src),
        &format!("s3://{again}"),
        &work.path().join("given.db"),
        &["--multipart-threshold", "80MiB"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.json()["large_objects"],
        "objects above 80 MiB in parts (--multipart-threshold)"
    );
    assert_eq!(requests.get("CreateMultipartUpload"), 1, "no second upload");
}

#[tokio::test(flavor = "multi_thread")]
async fn racy_server_side_copies_look_first_and_say_so() {
    // As s3s-fs alone: PutObject and completions conditional, CopyObject not.
    let (target, from, to) = six_to_copy(ServerOptions {
        conditions: Conditions::CopiesUnconditional,
        ..ServerOptions::default()
    })
    .await;
    let requests = target.requests().unwrap();
    let work = tempfile::tempdir().unwrap();
    let theirs = bytes(99, 2000);
    target.put(&to, "k/1.bin", &theirs).await;

    // By default the bytes stream through godwit: a copy could replace an object.
    let streamed = target.bucket("streamed").await;
    let run = migrate(
        &target,
        &format!("s3://{from}"),
        &format!("s3://{streamed}"),
        &work.path().join("streamed.db"),
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["server_side_copy"], false);
    assert!(
        run.stderr.contains("--racy-server-side-copy"),
        "the warning names the opt-in: {}",
        run.stderr
    );
    assert_eq!(requests.get("CopyObject"), 0);

    let run = migrate(
        &target,
        &format!("s3://{from}"),
        &format!("s3://{to}"),
        &ledger(&work),
        &["--racy-server-side-copy"],
    )
    .await;
    assert_eq!(run.code, Some(1), "the conflict exits 1: {run:?}");
    let summary = run.json();
    assert_eq!(summary["server_side_copy"], true);
    assert_eq!(run.n("copied_server_side_this_run"), 5);
    assert_eq!(run.n("conflict"), 1);
    let no_overwrite = summary["guarantees"]["no_overwrite"].as_str().unwrap();
    assert!(
        no_overwrite.contains("server-side copies: checked before write (racy)"),
        "{no_overwrite}"
    );
    assert_eq!(requests.get("CopyObject"), 5, "no copy onto the taken key");
    assert_eq!(
        target.get(&to, "k/1.bin").await,
        theirs,
        "a conflict was replaced"
    );
    for i in [0u64, 2, 3, 4, 5] {
        assert_eq!(target.get(&to, &format!("k/{i}.bin")).await, bytes(i, 2000));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_side_copy_is_one_request_where_the_listing_gives_etags() {
    // The copy names the source's ETag (`x-amz-copy-source-if-match`): from the listing where it
    // gives one (AWS does), else from a HEAD of each object (s3s-fs lists none).
    for listing_etags in [true, false] {
        let (target, from, to) = six_to_copy(ServerOptions {
            listing_etags,
            ..ServerOptions::default()
        })
        .await;
        let requests = target.requests().unwrap();
        let work = tempfile::tempdir().unwrap();
        let before = requests.all();

        let run = migrate(
            &target,
            &format!("s3://{from}"),
            &format!("s3://{to}"),
            &ledger(&work),
            &[],
        )
        .await;

        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.n("copied_server_side_this_run"), 6, "{run:?}");
        let sent = |op: &str| requests.since(&before, op);
        assert_eq!(sent("CopyObject"), 6);
        assert_eq!(
            sent("HeadObject"),
            if listing_etags { 0 } else { 6 },
            "listing ETags: {listing_etags}"
        );
        for i in 0..6u64 {
            assert_eq!(target.get(&to, &format!("k/{i}.bin")).await, bytes(i, 2000));
        }
    }
}
