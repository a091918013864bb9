//! An S3 source cut into shards, against a real S3 server (in-process s3s-fs): the shards cover
//! the listing once, and a shard resumes after a key.

use godwit_s3_server::LocalS3;
use std::sync::Arc;

use godwit_storage::{Listed, Listing, Location, S3Settings, Source, StaticCredentials, shard};

const KEY: &str = "shards-test-key";
const SECRET: &str = "shards-test-secret";

async fn keys_of(mut listing: Listing) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(page) = listing.recv().await {
        keys.extend(page.unwrap().into_iter().map(|listed| match listed {
            Listed::Object(meta) => meta.key,
            Listed::Unreadable { key, .. } => key,
        }));
    }
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_source_is_cut_by_prefix_and_each_shard_resumes() {
    let keys = [
        "out",
        "pre/top1",
        "pre/top2",
        "pre/a/1",
        "pre/a/b/2",
        "pre/a/b/3",
        "pre/a-b/4",
        "pre/c/d/5",
    ];
    let (_dir, server) = server_holding("shard-test", &keys).await;
    let source = source_of(&server, "shard-test", "pre/").await;

    let shards = source.shards().await.unwrap();
    // S3 lists in byte order: `a-b/` before `a/`.
    assert_eq!(shards, ["", "a-b/", "a/", "c/"]);
    let mut all = Vec::new();
    for shard in &shards {
        all.extend(keys_of(source.list_shard(shard, None)).await);
    }
    all.sort();
    assert_eq!(
        all,
        ["a-b/4", "a/1", "a/b/2", "a/b/3", "c/d/5", "top1", "top2"]
    );

    assert_eq!(
        keys_of(source.list_shard("a/", Some("a/b/2"))).await,
        ["a/b/3"]
    );
    assert_eq!(keys_of(source.list_shard("", Some("top1"))).await, ["top2"]);
    assert_eq!(
        keys_of(source.list_shard(shard::WHOLE, Some("a/b/3"))).await,
        ["c/d/5", "top1", "top2"]
    );
}

/// A bucket with more top-level prefixes than it is worth a shard each is cut into ranges of
/// keys: together they list every key once (the top-level keys, and keys sorting between and at
/// the cuts, among them), and each resumes after a key.
#[tokio::test(flavor = "multi_thread")]
async fn many_prefixes_are_cut_into_ranges_that_list_every_key_once() {
    let mut keys: Vec<String> = Vec::new();
    for d in 0..40 {
        keys.push(format!("d{d:02}/e/f"));
        keys.push(format!("d{d:02}/g"));
        keys.push(format!("d{d:02}-x"));
    }
    keys.extend(["a", "d05.", "zz"].map(str::to_owned));
    let (_dir, server) = server_holding("ranges", &keys).await;
    let source = source_of(&server, "ranges", "").await;

    let shards = source.shards().await.unwrap();
    assert_eq!(shards.len(), 16, "{shards:?}");
    let mut all = Vec::new();
    for shard in &shards {
        let listed = keys_of(source.list_shard(shard, None)).await;
        assert!(!listed.is_empty(), "{shard}");
        if listed.len() > 1 {
            let rest = keys_of(source.list_shard(shard, Some(&listed[0]))).await;
            assert_eq!(rest, listed[1..], "{shard} resumed");
        }
        all.extend(listed);
    }
    all.sort();
    keys.sort();
    assert_eq!(all, keys);
}

/// An in-process S3 server on a new directory whose `bucket` holds `keys`, each object its own
/// key's bytes.
async fn server_holding(bucket: &str, keys: &[impl AsRef<str>]) -> (tempfile::TempDir, LocalS3) {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalS3::start(dir.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET)
        .await
        .unwrap();
    let client = client_of(&server);
    client.create_bucket().bucket(bucket).send().await.unwrap();
    for key in keys {
        let key = key.as_ref();
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(key.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    (dir, server)
}

/// `bucket` below `prefix` on `server`, as a source.
async fn source_of(server: &LocalS3, bucket: &str, prefix: &str) -> Arc<dyn Source> {
    let location = Location::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
    };
    godwit_storage::open_source(&location, &settings_of(server))
        .await
        .unwrap()
}

fn client_of(server: &LocalS3) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            KEY, SECRET, None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn settings_of(server: &LocalS3) -> S3Settings {
    S3Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        credentials: Some(StaticCredentials {
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }),
        ..S3Settings::default()
    }
}
