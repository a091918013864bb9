//! An S3 bucket, below a prefix, as a source.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::Bucket;
use super::probe::is_probe;
use crate::{
    CopyOrigin, ErrorKind, Listed, Listing, Location, Metadata, ObjectMeta, PartLayout, Source,
    SourceCapabilities, StorageError, shard,
};

/// An S3 bucket (below a prefix) as a source.
pub struct S3Source {
    pub(super) bucket: Bucket,
}

/// The delimiter listing that finds a bucket's shards reads at most this many pages (100,000
/// entries at the top level); a top level larger than that is listed as one shard.
const SHARD_PAGES: usize = 100;

impl Bucket {
    /// The shards of the listing (see [`crate::shard`]): the keys at the prefix's top level, and
    /// each common prefix below it, found with a `/` delimiter listing.
    pub(super) async fn shards(&self) -> Result<Vec<String>, StorageError> {
        let mut shards = vec![shard::TOP.to_owned()];
        let mut stream = self
            .client()
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(&self.prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut read = 0;
        while let Some(page) = stream.next().await {
            let page = page.map_err(|err| self.error("listing the top level of", None, err))?;
            read += 1;
            if read > SHARD_PAGES {
                return Ok(vec![shard::WHOLE.to_owned()]);
            }
            shards.extend(page.common_prefixes().iter().filter_map(|common| {
                common
                    .prefix()?
                    .strip_prefix(self.prefix.as_str())
                    .map(str::to_owned)
            }));
        }
        Ok(shards)
    }

    /// Pages through ListObjectsV2 over one shard, after the key `after`, in a background task.
    pub(super) fn list_shard(&self, shard: &str, after: Option<&str>) -> Listing {
        let (pages, receiver) = mpsc::channel(4);
        let bucket = self.clone();
        let below = match shard {
            shard::WHOLE | shard::TOP => String::new(),
            dir => dir.to_owned(),
        };
        let delimited = shard == shard::TOP;
        let start_after = after.map(|after| format!("{}{after}", self.prefix));
        tokio::spawn(async move {
            let mut stream = bucket
                .client()
                .list_objects_v2()
                .bucket(&bucket.name)
                .prefix(format!("{}{below}", bucket.prefix))
                .set_delimiter(delimited.then(|| "/".to_owned()))
                .set_start_after(start_after)
                .into_paginator()
                .send();
            while let Some(page) = stream.next().await {
                let page = match page {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = pages.send(Err(bucket.error("listing", None, err))).await;
                        return;
                    }
                };
                let entries = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        let key = object
                            .key()?
                            .strip_prefix(bucket.prefix.as_str())?
                            .to_owned();
                        let size = object.size().unwrap_or(0).max(0) as u64;
                        // godwit's own probe objects, left by a run that stopped mid-probe, are
                        // not the user's data: migrated, a later probe could take them for its
                        // own leftovers.
                        if is_probe(&key, size) {
                            return None;
                        }
                        Some(Listed::Object(ObjectMeta {
                            key,
                            size,
                            version: object.e_tag().unwrap_or("").to_owned(),
                            group: None,
                            partition: None,
                        }))
                    })
                    .collect();
                if pages.send(Ok(entries)).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }
}

#[async_trait]
impl Source for S3Source {
    fn location(&self) -> &Location {
        &self.bucket.location
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            ranged_reads: true,
            places_groups: false,
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.bucket.check().await
    }

    fn list(&self) -> Listing {
        self.bucket.list_shard(shard::WHOLE, None)
    }

    async fn shards(&self) -> Result<Vec<String>, StorageError> {
        self.bucket.shards().await
    }

    fn list_shard(&self, shard: &str, after: Option<&str>) -> Listing {
        self.bucket.list_shard(shard, after)
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(self.bucket.head(key).await?.map(|object| ObjectMeta {
            key: key.to_owned(),
            size: object.size,
            version: object.etag.unwrap_or_default(),
            group: None,
            partition: None,
        }))
    }

    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let if_match = Some(expected.version.as_str()).filter(|v| !v.is_empty());
        self.bucket.read(&expected.key, if_match, offset, len).await
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.bucket.s3.endpoint)
    }

    async fn read_whole(&self, expected: &ObjectMeta) -> Result<(Bytes, Metadata), StorageError> {
        let if_match = Some(expected.version.as_str()).filter(|v| !v.is_empty());
        let (bytes, metadata) = self
            .bucket
            .read_with(&expected.key, if_match, 0, expected.size, true)
            .await?;
        Ok((bytes, metadata.unwrap_or_default()))
    }

    async fn metadata(&self, expected: &ObjectMeta) -> Result<Metadata, StorageError> {
        let if_match = Some(expected.version.as_str()).filter(|v| !v.is_empty());
        self.bucket.metadata(&expected.key, if_match).await
    }

    async fn tags(&self, expected: &ObjectMeta) -> Result<Option<String>, StorageError> {
        let b = &self.bucket;
        let answer = b
            .client()
            .get_object_tagging()
            .bucket(&b.name)
            .key(b.key(&expected.key))
            .send()
            .await
            .map_err(|err| b.error("reading the tags of", Some(&expected.key), err))?;
        let tags = answer.tag_set();
        Ok((!tags.is_empty())
            .then(|| crate::encode_tags(tags.iter().map(|tag| (tag.key(), tag.value())))))
    }

    fn copy_origin(&self) -> Option<CopyOrigin> {
        let b = &self.bucket;
        Some(CopyOrigin {
            endpoint: b.s3.endpoint.clone(),
            bucket: b.name.clone(),
            prefix: b.prefix.clone(),
        })
    }

    /// Asks for the first part (HEAD with `partNumber=1`): its length and the part count give the
    /// cut, if it was uniform. A server that ignores `partNumber` (s3s-fs) sends no part count.
    /// No `If-Match` here (moto compares it with the part's ETag): the cut is only a guess until
    /// the copy, whose parts are conditional on the source's ETag, shows the same ETag.
    async fn part_layout(&self, meta: &ObjectMeta) -> Result<Option<PartLayout>, StorageError> {
        let b = &self.bucket;
        let answer = b
            .client()
            .head_object()
            .bucket(&b.name)
            .key(b.key(&meta.key))
            .part_number(1)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(out.parts_count().and_then(|parts| {
                let first = u64::try_from(out.content_length()?).ok()?;
                PartLayout::uniform(meta.size, first, u32::try_from(parts).ok()?)
            })),
            Err(err) if Bucket::is_status(&err, 404) => Err(StorageError::new(
                ErrorKind::NotFound,
                format!(
                    "s3://{}/{} is no longer at the source",
                    b.name,
                    b.key(&meta.key)
                ),
            )),
            // A server that does not take `partNumber` cannot say: the object streams instead.
            Err(err)
                if [400, 416, 501]
                    .iter()
                    .any(|&code| Bucket::is_status(&err, code)) =>
            {
                tracing::debug!(
                    "s3://{}/{}: no part layout ({})",
                    b.name,
                    b.key(&meta.key),
                    DisplayErrorContext(&err)
                );
                Ok(None)
            }
            Err(err) => Err(b.error("reading the parts of", Some(&meta.key), err)),
        }
    }
}
