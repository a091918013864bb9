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

/// Above this many top-level prefixes, the listing is cut into this many ranges of keys instead
/// of a shard a prefix: every shard costs at least one request, and some servers (s3s-fs, so
/// `godwit serve-s3`) walk the whole bucket for each listing request whatever its prefix.
const MOST_PREFIX_SHARDS: usize = 16;

/// A shard of the keys `k` with `after < k <= up_to` (relative to the source's prefix; an
/// empty `after` is the start, an empty `up_to` the end). Named `range:N:AFTERUP_TO]` (N the
/// length of `after`): a name a prefix shard (ending in `/`), [`shard::TOP`] or [`shard::WHOLE`]
/// cannot be.
#[derive(Debug, PartialEq)]
struct Range {
    after: String,
    up_to: String,
}

impl Range {
    fn name(after: &str, up_to: &str) -> String {
        format!("range:{}:{after}{up_to}]", after.len())
    }

    fn parse(name: &str) -> Option<Self> {
        let inner = name.strip_prefix("range:")?.strip_suffix(']')?;
        let (len, rest) = inner.split_once(':')?;
        let len: usize = len.parse().ok()?;
        if !rest.is_char_boundary(len) {
            return None;
        }
        let (after, up_to) = rest.split_at(len);
        Some(Self {
            after: after.to_owned(),
            up_to: up_to.to_owned(),
        })
    }

    /// Whether `key` comes after the range (so the listing of the range is over).
    fn past(&self, key: &str) -> bool {
        !self.up_to.is_empty() && key > self.up_to.as_str()
    }
}

/// `n` ranges covering every key, cut at (some of) the top-level `prefixes`, in byte order.
fn ranges(prefixes: &[String], n: usize) -> Vec<String> {
    let cuts: Vec<&str> = (1..n)
        .map(|i| prefixes[i * prefixes.len() / n].as_str())
        .collect();
    let mut bounds = vec![""];
    bounds.extend(cuts);
    bounds.push("");
    bounds
        .windows(2)
        .map(|pair| Range::name(pair[0], pair[1]))
        .collect()
}

impl Bucket {
    /// The shards of the listing (see [`crate::shard`]): the keys at the prefix's top level, and
    /// each common prefix below it, found with a `/` delimiter listing; or, past
    /// [`MOST_PREFIX_SHARDS`] prefixes, that many ranges of keys cut at prefixes.
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
        if shards.len() - 1 > MOST_PREFIX_SHARDS {
            return Ok(ranges(&shards[1..], MOST_PREFIX_SHARDS));
        }
        Ok(shards)
    }

    /// Pages through ListObjectsV2 over one shard, after the key `after`, in a background task.
    pub(super) fn list_shard(&self, shard: &str, after: Option<&str>) -> Listing {
        let (pages, receiver) = mpsc::channel(4);
        let bucket = self.clone();
        let range = Range::parse(shard);
        let below = match shard {
            _ if range.is_some() => String::new(),
            shard::WHOLE | shard::TOP => String::new(),
            dir => dir.to_owned(),
        };
        let delimited = shard == shard::TOP;
        let after = after.or(range
            .as_ref()
            .map(|r| r.after.as_str())
            .filter(|a| !a.is_empty()));
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
                let mut past = false;
                let entries = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        let key = object
                            .key()?
                            .strip_prefix(bucket.prefix.as_str())?
                            .to_owned();
                        if range.as_ref().is_some_and(|r| r.past(&key)) {
                            past = true;
                            return None;
                        }
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
                if pages.send(Ok(entries)).await.is_err() || past {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_named_so_no_prefix_shard_is_taken_for_it() {
        for (after, up_to) in [("", "b/"), ("b/", ""), ("a]:1/", "z9:/"), ("é/", "")] {
            let name = Range::name(after, up_to);
            assert!(!name.ends_with('/') && name != shard::TOP && name != shard::WHOLE);
            let (after, up_to) = (after.to_owned(), up_to.to_owned());
            assert_eq!(Range::parse(&name), Some(Range { after, up_to }));
        }
        assert_eq!(Range::parse("range:3:ab/"), None, "a prefix shard");
        assert_eq!(Range::parse("range:9:ab]"), None);
    }

    #[test]
    fn ranges_cut_at_prefixes_cover_every_key_once() {
        let prefixes: Vec<String> = (0..40).map(|i| format!("d{i:02}/")).collect();
        let names = ranges(&prefixes, 16);
        assert_eq!(names.len(), 16);
        let ranges: Vec<Range> = names.iter().map(|n| Range::parse(n).unwrap()).collect();
        assert_eq!(ranges[0].after, "");
        assert_eq!(ranges[15].up_to, "");
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].up_to, pair[1].after);
            assert!(pair[0].after < pair[0].up_to || pair[0].after.is_empty());
        }
        // A key equal to a cut belongs to the range it ends.
        let cut = &ranges[0].up_to;
        assert!(!ranges[0].past(cut) && ranges[0].past(&format!("{cut}x")));
    }
}
