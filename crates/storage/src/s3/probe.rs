//! Probes: what a destination is found to enforce, by trying it on objects of godwit's own.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

use super::{Bucket, copy_source};
use crate::{CopySupport, StorageError};

impl Bucket {
    /// Finds out whether the server refuses a CopyObject onto an existing key, as AWS does with
    /// `If-None-Match: *` (s3s-fs and moto ignore the header and overwrite). Writes two probe
    /// objects of godwit's own below the prefix, copies one onto the other, and deletes both;
    /// then deletes what an earlier probe left (see [`Bucket::remove_old_probes`]).
    pub(super) async fn probe_conditional_copy(&self) -> CopySupport {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = format!("{PROBE_PREFIX}{}-{nonce:x}", std::process::id());
        let (from, onto) = (format!("{base}-a"), format!("{base}-b"));
        let mut probe_etag = None;
        let answer = async {
            for key in [&from, &onto] {
                let written = self
                    .client()
                    .put_object()
                    .bucket(&self.name)
                    .key(self.key(key))
                    .if_none_match("*")
                    .body(ByteStream::from_static(PROBE_BODY))
                    .send()
                    .await
                    .map_err(|err| self.error("writing a probe object", Some(key), err))?;
                probe_etag = written.e_tag().map(str::to_owned);
            }
            let copied = self
                .client()
                .copy_object()
                .bucket(&self.name)
                .key(self.key(&onto))
                .copy_source(copy_source(&self.name, &self.key(&from)))
                .if_none_match("*")
                .send()
                .await;
            Ok::<_, StorageError>(match copied {
                Err(err) if Self::is_status(&err, 412) => CopySupport::Conditional,
                Ok(_) => CopySupport::No(format!(
                    "{} ignores If-None-Match on CopyObject: a server-side copy could replace an object",
                    self.s3.endpoint
                )),
                Err(err) => CopySupport::No(
                    self.error("probing a server-side copy to", Some(&onto), err)
                        .message()
                        .to_owned(),
                ),
            })
        }
        .await;
        for key in [&from, &onto] {
            if let Err(err) = self
                .client()
                .delete_object()
                .bucket(&self.name)
                .key(self.key(key))
                .send()
                .await
            {
                tracing::warn!(
                    "could not delete the probe object s3://{}/{}: {}",
                    self.name,
                    self.key(key),
                    DisplayErrorContext(&err)
                );
            }
        }
        if let Some(etag) = probe_etag {
            self.remove_old_probes(&etag).await;
        }
        answer.unwrap_or_else(|error| CopySupport::No(error.message().to_owned()))
    }

    /// Deletes probe objects a run that stopped mid-probe left behind: only objects named as
    /// godwit names them, holding exactly its probe body (the same ETag as the probe just written,
    /// checked again by the delete's `If-Match`), and older than an hour, so a probe another
    /// process is running is left alone. Best effort: a failure is only logged.
    async fn remove_old_probes(&self, probe_etag: &str) {
        let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let listed = self
            .client()
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(self.key(PROBE_PREFIX))
            .send()
            .await;
        let page = match listed {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(
                    "could not look for old probe objects: {}",
                    DisplayErrorContext(&err)
                );
                return;
            }
        };
        for object in page.contents() {
            let old = object
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .is_some_and(|t| t < cutoff);
            let Some(key) = object
                .key()
                .filter(|_| old && object.size() == Some(PROBE_BODY.len() as i64))
            else {
                continue;
            };
            // Some listings (s3s-fs) carry no ETags: ask for this one.
            let etag = match object.e_tag() {
                Some(etag) => Some(etag.to_owned()),
                None => {
                    let relative = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
                    self.head(relative)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|o| o.etag)
                }
            };
            if etag.as_deref() != Some(probe_etag) {
                continue;
            }
            match self
                .client()
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .if_match(probe_etag)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!("deleted s3://{}/{key}, left by an earlier probe", self.name)
                }
                Err(err) => tracing::warn!(
                    "could not delete s3://{}/{key}, left by an earlier probe: {}",
                    self.name,
                    DisplayErrorContext(&err)
                ),
            }
        }
    }
}

/// The name every probe object starts with, below the destination prefix.
const PROBE_PREFIX: &str = ".godwit-probe-";
/// What a probe object holds.
const PROBE_BODY: &[u8] = b"godwit: probe for conditional copies";

/// Whether `key` (below any prefix) names one of godwit's probe objects: its name, and the probe's
/// size.
pub(super) fn is_probe(key: &str, size: u64) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with(PROBE_PREFIX) && size == PROBE_BODY.len() as u64
}
