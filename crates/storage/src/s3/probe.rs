//! Probes: what a destination is found to enforce, by trying it on objects of godwit's own.
//!
//! Not every S3-compatible server enforces the conditions godwit's guarantees rest on: some accept
//! `If-None-Match`/`If-Match` and write anyway. So each is tried once per run, on probe objects
//! below the destination prefix (named `.godwit-probe-*`, holding [`PROBE_BODY`]), and the engine
//! takes a safe route wherever one is not enforced. Every probe object is deleted again, each
//! delete conditional on the object's ETag.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use bytes::Bytes;

use super::{Bucket, S3Destination, copy_source};
use crate::{
    Conditions, Crc64Nvme, Destination, Enforcement, ErrorKind, LargeWrites, Metadata,
    Precondition, StorageError, UploadedPart, Written,
};

/// The size of the probe object whose single PUT is timed: large enough that the time is the
/// server's throughput rather than its round trip, small enough to cost a fraction of a second.
pub const RATE_PROBE_SIZE: usize = 16 << 20;

/// An ETag no object has: a write or delete conditional on it must be refused.
const NO_SUCH_ETAG: &str = "\"00000000000000000000000000000000\"";

impl Bucket {
    /// Tries each condition on probe objects of godwit's own: `If-None-Match: *` and `If-Match`
    /// on PutObject and CompleteMultipartUpload, `If-None-Match: *` on CopyObject, `If-Match` on
    /// DeleteObject. A condition counts as enforced only when the server refused the write
    /// (412) that it should refuse. Then deletes the probe objects, and what an earlier probe
    /// left (see [`Bucket::remove_old_probes`]).
    pub(super) async fn probe_conditions(&self) -> Conditions {
        let base = probe_base();
        let (first, second) = (format!("{base}-a"), format!("{base}-b"));
        let conditions = match self.try_conditions(&first, &second).await {
            Ok(conditions) => conditions,
            Err(error) => Conditions::unknown(&format!(
                "the probe of the destination's conditions failed: {}",
                error.message()
            )),
        };
        for key in [&first, &second] {
            self.delete_probe(key).await;
        }
        self.remove_old_probes().await;
        conditions
    }

    async fn try_conditions(&self, first: &str, second: &str) -> Result<Conditions, StorageError> {
        for key in [first, second] {
            self.client()
                .put_object()
                .bucket(&self.name)
                .key(self.key(key))
                .if_none_match("*")
                .body(ByteStream::from_static(PROBE_BODY))
                .send()
                .await
                .map_err(|err| self.error("writing a probe object", Some(key), err))?;
        }
        let put = |condition: fn(
            aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder| {
            condition(
                self.client()
                    .put_object()
                    .bucket(&self.name)
                    .key(self.key(first))
                    .body(ByteStream::from_static(PROBE_BODY)),
            )
            .send()
        };
        let put_if_none_match = self.judge(
            "PutObject If-None-Match",
            put(|r| r.if_none_match("*")).await,
        );
        let put_if_match = self.judge(
            "PutObject If-Match",
            put(|r| r.if_match(NO_SUCH_ETAG)).await,
        );
        let copy_if_none_match = self.judge(
            "CopyObject If-None-Match",
            self.client()
                .copy_object()
                .bucket(&self.name)
                .key(self.key(second))
                .copy_source(copy_source(&self.name, &self.key(first)))
                .if_none_match("*")
                .send()
                .await,
        );
        let (complete_if_none_match, complete_if_match) = self.probe_completions(first).await?;
        let delete_if_match = self.judge(
            "DeleteObject If-Match",
            self.client()
                .delete_object()
                .bucket(&self.name)
                .key(self.key(second))
                .if_match(NO_SUCH_ETAG)
                .send()
                .await,
        );
        Ok(Conditions {
            put_if_none_match,
            put_if_match,
            complete_if_none_match,
            complete_if_match,
            delete_if_match,
            copy_if_none_match,
        })
    }

    /// Completes uploads of one part onto `key` (which exists), first with `If-None-Match: *`,
    /// then with `If-Match` on an ETag it does not have. An upload whose completion is refused
    /// is aborted. Some servers' replies to a completion cannot be parsed (moto): then the
    /// object at the key tells whether the upload completed.
    async fn probe_completions(
        &self,
        key: &str,
    ) -> Result<(Enforcement, Enforcement), StorageError> {
        let mut found = Vec::new();
        for if_none_match in [true, false] {
            let upload = self
                .client()
                .create_multipart_upload()
                .bucket(&self.name)
                .key(self.key(key))
                .send()
                .await
                .map_err(|err| self.error("starting a probe upload to", Some(key), err))?;
            let upload_id = upload.upload_id().unwrap_or_default().to_owned();
            let judged = self.probe_completion(key, &upload_id, if_none_match).await;
            // Aborted whatever happened (a completed upload is merely gone already): a probe
            // that failed half-way leaves no upload open.
            let _ = self
                .client()
                .abort_multipart_upload()
                .bucket(&self.name)
                .key(self.key(key))
                .upload_id(&upload_id)
                .send()
                .await;
            found.push(judged?);
        }
        let if_match = found.pop().unwrap_or(Enforcement::Unknown(String::new()));
        let if_none_match = found.pop().unwrap_or(Enforcement::Unknown(String::new()));
        Ok((if_none_match, if_match))
    }

    /// Fills the probe upload `upload_id` with one part and completes it onto `key` under
    /// `If-None-Match: *` (else `If-Match` on an ETag it does not have); says what the server
    /// made of the condition.
    async fn probe_completion(
        &self,
        key: &str,
        upload_id: &str,
        if_none_match: bool,
    ) -> Result<Enforcement, StorageError> {
        let part = self
            .client()
            .upload_part()
            .bucket(&self.name)
            .key(self.key(key))
            .upload_id(upload_id)
            .part_number(1)
            .body(ByteStream::from_static(PROBE_BODY))
            .send()
            .await
            .map_err(|err| self.error("uploading a probe part to", Some(key), err))?;
        let before = self.head(key).await?.and_then(|o| o.etag);
        let mut request = self
            .client()
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(self.key(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(
                        CompletedPart::builder()
                            .part_number(1)
                            .set_e_tag(part.e_tag().map(str::to_owned))
                            .build(),
                    )
                    .build(),
            );
        request = if if_none_match {
            request.if_none_match("*")
        } else {
            request.if_match(NO_SUCH_ETAG)
        };
        let what = if if_none_match {
            "CompleteMultipartUpload If-None-Match"
        } else {
            "CompleteMultipartUpload If-Match"
        };
        let answer = request.send().await;
        Ok(match &answer {
            Err(err) if Self::is_status(err, 412) => Enforcement::Enforced,
            Ok(_) => Enforcement::Ignored,
            Err(err) => {
                // The server may have completed it all the same: the key's ETag says.
                let after = self.head(key).await?.and_then(|o| o.etag);
                if after.is_some() && after != before {
                    Enforcement::Ignored
                } else {
                    Enforcement::Unknown(format!("{what}: {}", DisplayErrorContext(err)))
                }
            }
        })
    }

    /// What the answer to a write that a server enforcing its condition must refuse says.
    fn judge<T, E>(
        &self,
        what: &str,
        answer: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    ) -> Enforcement
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match answer {
            Err(err) if Self::is_status(&err, 412) => Enforcement::Enforced,
            Ok(_) => Enforcement::Ignored,
            Err(err) => Enforcement::Unknown(format!("{what}: {}", DisplayErrorContext(&err))),
        }
    }

    /// Deletes one of this probe's objects, conditional on the ETag it has now.
    async fn delete_probe(&self, key: &str) {
        let etag = match self.head(key).await {
            Ok(Some(found)) => found.etag,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!("could not look at the probe object {key}: {error}");
                return;
            }
        };
        let mut request = self
            .client()
            .delete_object()
            .bucket(&self.name)
            .key(self.key(key));
        if let Some(etag) = etag {
            request = request.if_match(etag);
        }
        if let Err(err) = request.send().await {
            tracing::warn!(
                "could not delete the probe object s3://{}/{}: {}",
                self.name,
                self.key(key),
                DisplayErrorContext(&err)
            );
        }
    }

    /// Deletes probe objects a run that stopped mid-probe left behind: only objects named as
    /// godwit names them, older than an hour (a probe another process is running is left alone),
    /// holding exactly what one of godwit's probes writes — the probe body (conditions, and the
    /// one-part multipart upload) or the [`RATE_PROBE_SIZE`] zeros of the timed PUT — read back
    /// under the ETag the delete's `If-Match` then names. Best effort: a failure is only logged.
    async fn remove_old_probes(&self) {
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
            let size = object.size().and_then(|size| u64::try_from(size).ok());
            let (Some(key), Some(size)) = (object.key(), size) else {
                continue;
            };
            let relative = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
            if !old || !is_probe(relative, size) {
                continue;
            }
            let Some(etag) = self.probe_written(relative, object.e_tag(), size).await else {
                continue;
            };
            match self
                .client()
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .if_match(&etag)
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

    /// The ETag of the object at `key` (`size` bytes, `listed` the listing's ETag if it gave
    /// one) when it holds what a probe writes, read back under that ETag; else `None`.
    async fn probe_written(&self, key: &str, listed: Option<&str>, size: u64) -> Option<String> {
        // Some listings (s3s-fs) carry no ETags: ask for this one.
        let etag = match listed {
            Some(etag) => etag.to_owned(),
            None => self.head(key).await.ok().flatten()?.etag?,
        };
        let body = self.read(key, Some(&etag), 0, size).await.ok()?;
        let written = if size == RATE_PROBE_SIZE as u64 {
            body.iter().all(|&byte| byte == 0)
        } else {
            body == PROBE_BODY
        };
        written.then_some(etag)
    }
}

/// A name for this probe's objects, unlike any other process's.
fn probe_base() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{PROBE_PREFIX}{}-{nonce:x}", std::process::id())
}

/// Measures what `dest` does with large writes: one PutObject of [`RATE_PROBE_SIZE`] bytes,
/// timed, and a one-part multipart upload with a full-object CRC-64/NVME, whose object is then
/// asked for its checksum. Both probe objects are deleted again. A failed measurement is left
/// unknown, with why.
pub(super) async fn probe_large_writes(dest: &S3Destination) -> LargeWrites {
    let base = probe_base();
    let mut notes = Vec::new();
    let rate_key = format!("{base}-rate");
    let body = Bytes::from(vec![0u8; RATE_PROBE_SIZE]);
    let crc = Crc64Nvme::of(&body);
    let started = std::time::Instant::now();
    let written = dest
        .put(
            &rate_key,
            body,
            crc,
            &Metadata::default(),
            &Precondition::Absent,
        )
        .await;
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    let put_rate = match written {
        Ok(Written::Created(_)) => Some(RATE_PROBE_SIZE as f64 / elapsed),
        Ok(Written::Refused) => {
            notes.push("the timed probe PUT was refused".to_owned());
            None
        }
        Err(error) => {
            notes.push(format!("the timed probe PUT failed: {}", error.message()));
            None
        }
    };
    dest.bucket.delete_probe(&rate_key).await;

    let multipart_key = format!("{base}-multipart");
    let multipart_checksums = match multipart_keeps_checksum(dest, &multipart_key).await {
        Ok(kept) => Some(kept),
        Err(error) => {
            notes.push(format!(
                "the probe multipart upload failed: {}",
                error.message()
            ));
            None
        }
    };
    dest.bucket.delete_probe(&multipart_key).await;
    LargeWrites {
        put_rate,
        multipart_checksums,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// Whether an object made at `key` by a multipart upload with a full-object CRC-64/NVME shows
/// that checksum. Some servers complete the upload but send a reply the SDK cannot read (moto):
/// the object is asked all the same.
async fn multipart_keeps_checksum(dest: &S3Destination, key: &str) -> Result<bool, StorageError> {
    let crc = Crc64Nvme::of(PROBE_BODY);
    let upload_id = dest.create_upload(key, true, &Metadata::default()).await?;
    let filled = async {
        let etag = dest
            .upload_part(key, &upload_id, 1, Bytes::from_static(PROBE_BODY), crc)
            .await?;
        let part = UploadedPart {
            part_number: 1,
            etag,
            crc64nvme: Some(crc),
            size: PROBE_BODY.len() as u64,
        };
        match dest
            .complete_upload(key, &upload_id, &[part], Some(crc), &Precondition::Absent)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == ErrorKind::Unclear => Ok(()),
            Err(error) => Err(error),
        }
    }
    .await;
    if filled.is_err() {
        let _ = dest.abort_upload(key, &upload_id).await;
    }
    filled?;
    Ok(dest
        .bucket
        .head(key)
        .await?
        .is_some_and(|found| found.crc64nvme == Some(crc)))
}

/// The name every probe object starts with, below the destination prefix.
const PROBE_PREFIX: &str = ".godwit-probe-";
/// What a probe object holds (the name is older than the probe's other uses; kept so that probes
/// left by earlier versions are still recognised).
const PROBE_BODY: &[u8] = b"godwit: probe for conditional copies";

/// Whether `key` (below any prefix) names one of godwit's probe objects: its name, and the probe's
/// size.
pub(super) fn is_probe(key: &str, size: u64) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with(PROBE_PREFIX)
        && (size == PROBE_BODY.len() as u64 || size == RATE_PROBE_SIZE as u64)
}
