//! Multipart uploads: parts streamed through godwit, or copied by the destination; opened, filled
//! and resumed the same way, each part recorded in the ledger as it finishes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use godwit_state::{ObjectState, PartRecord, SourceVersion, StoreError, UploadRecord};
use godwit_storage::{
    Crc64Nvme, DestObject, ErrorKind, Metadata, ObjectMeta, Precondition, StorageError,
    UploadedPart, WriteReceipt, Written,
};

use super::etag::{Evidence, is_md5_etag, md5_hex, multipart_etag};
use super::own::Taken;
use super::single::changed_while_replacing;
use super::verify::Comparison;
use super::{Done, Held, Job, Transfers};
use crate::checksum::{combine, crc64nvme};
use crate::progress::Progress;

/// Whether the destination keeps a checksum of multipart objects: `UNKNOWN`, `KEPT`, `NOT_KEPT`.
pub(super) const UNKNOWN: u8 = 0;
pub(super) const KEPT: u8 = 1;
pub(super) const NOT_KEPT: u8 = 2;

/// Multipart objects streamed through godwit at once, each with `part_concurrency` parts in
/// parallel, so large objects finish one after another. Spreading the same parts over every large
/// object instead would leave all of them unfinished when a run stops, and each would then be
/// completed by the next run (on some servers, s3s-fs among them, a rewrite of the whole object).
/// Measured on
/// s3s-fs (bench, resume case): 1 costs a quarter of the throughput; letting the next object send
/// parts while one completes leaves more unfinished objects behind a kill.
pub(super) const MULTIPART_OBJECTS: usize = 2;

/// Starts computing `f` of a part's bytes off the async threads, at once (not when awaited).
fn off_thread<T: Send + 'static>(
    body: Bytes,
    f: impl FnOnce(&[u8]) -> T + Send + 'static,
) -> impl Future<Output = Result<T, StorageError>> {
    let task = tokio::task::spawn_blocking(move || f(&body));
    async move {
        task.await
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("checksum task failed: {e}")))
    }
}

/// Whether the recorded `upload` can go on: cut in parts of `part_size`, of this `source`, with
/// parts made as they will be (sent with checksums when `checksummed`, else copied server-side).
/// One with no parts yet is not: which way it was made is unknown.
fn goes_on(
    upload: &UploadRecord,
    part_size: u64,
    source: &SourceVersion,
    checksummed: bool,
) -> bool {
    upload.part_size == part_size
        && upload.source.as_ref() == Some(source)
        && !upload.parts.is_empty()
        && upload
            .parts
            .iter()
            .all(|p| Crc64Nvme::from_base64(&p.checksum).is_some() == checksummed)
}

fn source_version(job: &Job<'_>) -> SourceVersion {
    SourceVersion {
        size: job.meta.size,
        version: job.meta.version.clone(),
    }
}

/// The part size for an object of `size` bytes: at least `wanted`, and large enough that the
/// object fits in `max_parts` parts; whole MiB.
fn part_size_for(size: u64, wanted: u64, min: u64, max: u64, max_parts: u32) -> u64 {
    const MIB: u64 = 1 << 20;
    let fits = size.div_ceil(u64::from(max_parts.max(1)));
    let part = wanted.max(fits).max(min);
    (part.div_ceil(MIB) * MIB).min(max.max(MIB))
}

/// How an upload's object is proven once complete, and compared with an object found at a
/// taken key.
pub(super) enum Proof<'a> {
    /// Parts godwit streamed: the whole object's CRC-64/NVME, combined from theirs, and what else
    /// the parts' MD5s show.
    Streamed {
        crc: Crc64Nvme,
        evidence: Evidence<'a>,
    },
    /// Parts the destination copied from `source` (as stated: with its ETag): the copy's ETag
    /// against the source's, or a read-back of both.
    Copied { source: &'a ObjectMeta },
}

impl Transfers {
    pub(super) async fn copy_multipart(
        &self,
        job: &mut Job<'_>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let meta = job.meta.clone();
        let part_size = self.streamed_part_size(meta.size);
        let n_parts = meta.size.div_ceil(part_size) as u32;

        let metadata = match self.metadata_for(&meta, None).await {
            Ok(metadata) => metadata,
            Err(error) => return Ok(Err(error)),
        };
        job.sent = Some(metadata.clone());
        let (upload_id, resumed) = match self.open_upload(job, part_size, true, &metadata).await? {
            Ok(opened) => opened,
            Err(error) => return Ok(Err(error)),
        };

        // Unless the destination is known to keep a checksum of multipart objects, the parts'
        // MD5s are the cheapest proof of what it stored (its multipart ETag is made of them): far
        // cheaper than reading every object back while the first ones settle the question.
        let want_md5 = self.multipart_checksums.load(Ordering::Relaxed) != KEPT;
        let send = |part_number: u32| {
            let offset = u64::from(part_number - 1) * part_size;
            let len = part_size.min(meta.size - offset);
            let upload_id = &upload_id;
            let meta = &meta;
            async move {
                let (body, _permit) = self.read_budgeted(meta, offset, len).await?;
                // The CRC goes with the request; the MD5 (several times slower) is only compared
                // with the answer, so it is computed while the part is on its way.
                let crc = off_thread(body.clone(), crc64nvme).await?;
                let md5 = want_md5.then(|| off_thread(body.clone(), md5_hex));
                let etag = self
                    .dest
                    .upload_part(&meta.key, upload_id, part_number, body, crc)
                    .await?;
                let md5 = match md5 {
                    Some(md5) => Some(md5.await?),
                    None => None,
                };
                // An ETag that is not our MD5 proves nothing either way (SSE-KMS makes others).
                let md5 = md5.filter(|md5| {
                    is_md5_etag(&etag).is_some_and(|hex| hex.eq_ignore_ascii_case(md5))
                });
                let part = UploadedPart {
                    part_number,
                    etag,
                    crc64nvme: Some(crc),
                    size: len,
                };
                Ok((part, md5))
            }
        };
        // Each part with the MD5 of its bytes, when known (see `Evidence::MultipartEtag`).
        // The completion needs to know what the destination enforces: learnt (once a run) while
        // the parts are on their way.
        let (filled, _) = tokio::join!(
            self.fill_upload(job, resumed, n_parts, send),
            self.conditions()
        );
        let parts = match filled? {
            Ok(parts) => parts,
            Err(error) => return Ok(Err(error)),
        };

        let md5s: Option<Vec<&str>> = parts.iter().map(|(_, md5)| md5.as_deref()).collect();
        let evidence = md5s
            .and_then(|md5s| multipart_etag(&md5s))
            .map_or(Evidence::Nothing, Evidence::MultipartEtag);
        let parts: Vec<UploadedPart> = parts.into_iter().map(|(part, _)| part).collect();
        let crc = parts.iter().fold(crc64nvme(b""), |acc, p| {
            combine(
                acc,
                p.crc64nvme.expect("streamed parts have checksums"),
                p.size,
            )
        });
        let proof = Proof::Streamed { crc, evidence };
        self.complete(job, &upload_id, resumed, &parts, &proof)
            .await
    }

    /// The part size of an object of `size` bytes streamed in parts.
    fn streamed_part_size(&self, size: u64) -> u64 {
        let caps = self.dest.capabilities();
        part_size_for(
            size,
            self.options.part_size,
            caps.min_part_size,
            caps.max_part_size,
            caps.max_parts,
        )
    }

    /// Whether streaming the object goes on with the upload the ledger records for it (parts of
    /// this version of the source, cut as this run cuts them). Such an object is finished in
    /// parts whatever the route for its size: its parts are not sent again, and a run that only
    /// finishes uploads never measures the destination.
    pub(super) fn resumes_streamed_upload(&self, job: &Job<'_>) -> bool {
        job.upload.as_ref().is_some_and(|upload| {
            goes_on(
                upload,
                self.streamed_part_size(job.meta.size),
                &source_version(job),
                true,
            )
        })
    }

    /// Completes the upload into a new object; where the key is taken, settles what is there
    /// (replacing godwit's own earlier write with this upload, conditionally on its ETag).
    pub(super) async fn complete(
        &self,
        job: &mut Job<'_>,
        upload_id: &str,
        resumed: bool,
        parts: &[UploadedPart],
        proof: &Proof<'_>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let meta = job.meta.clone();
        let crc = match proof {
            Proof::Streamed { crc, .. } => Some(*crc),
            Proof::Copied { .. } => None,
        };
        if !self.conditions().await.complete_if_none_match.is_enforced() {
            // The server would not refuse the completion: look first (racy, and said so).
            match self.dest.head(&meta.key).await {
                Ok(Some(found)) => {
                    return self
                        .settle_upload(job, upload_id, parts, proof, found)
                        .await;
                }
                Ok(None) => {}
                Err(error) => return Ok(Err(error)),
            }
        }
        let sent_at = SystemTime::now();
        let answer = self
            .dest
            .complete_upload(&meta.key, upload_id, parts, crc, &Precondition::Absent)
            .await
            .map_err(|error| job.own.failed(sent_at, error));
        match answer {
            Ok(Written::Created(receipt)) => {
                self.completed(job).await?;
                Ok(self.verify_upload(job, proof, receipt).await)
            }
            Ok(Written::Refused) => match self.head_taken(&meta, "completion").await {
                Ok(found) => {
                    self.settle_upload(job, upload_id, parts, proof, found)
                        .await
                }
                Err(error) => Ok(Err(error)),
            },
            Err(error) if error.kind() == ErrorKind::Unclear || upload_gone(&error, resumed) => {
                let gone = upload_gone(&error, resumed);
                self.settle_unclear_complete(job, (error, gone), proof)
                    .await
            }
            Err(error) => Ok(Err(error)),
        }
    }

    /// The upload became an object: it is no longer the ledger's to resume.
    async fn completed(&self, job: &mut Job<'_>) -> Result<(), StoreError> {
        self.store.clear_upload(job.claimed.claim()).await?;
        job.upload = None;
        Ok(())
    }

    /// Checks the object an upload just became.
    async fn verify_upload(
        &self,
        job: &mut Job<'_>,
        proof: &Proof<'_>,
        receipt: WriteReceipt,
    ) -> Result<Done, StorageError> {
        match proof {
            Proof::Streamed { crc, evidence } => {
                let verified = self.verify_written(job, *crc, evidence, receipt).await;
                if let Ok(done) = &verified {
                    let kept = if done.verified_by == Some("checksum") {
                        KEPT
                    } else {
                        NOT_KEPT
                    };
                    self.multipart_checksums.store(kept, Ordering::Relaxed);
                }
                verified
            }
            Proof::Copied { source } => self.verify_copied(job, source, receipt).await,
        }
    }

    /// Compares `found` with what the upload holds.
    async fn compare_upload(
        &self,
        meta: &ObjectMeta,
        proof: &Proof<'_>,
        found: &DestObject,
    ) -> Result<Comparison, StorageError> {
        match proof {
            Proof::Streamed { crc, evidence } => self.compare(meta, *crc, evidence, found).await,
            Proof::Copied { source } => self.compare_copy(source, found).await,
        }
    }

    /// The key holds `found`: ours or already present when identical (the upload is aborted), a
    /// conflict when someone else's; godwit's own earlier write is replaced by completing the
    /// upload conditionally on that write's ETag.
    async fn settle_upload(
        &self,
        job: &mut Job<'_>,
        upload_id: &str,
        parts: &[UploadedPart],
        proof: &Proof<'_>,
        found: DestObject,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let meta = job.meta.clone();
        let crc = match proof {
            Proof::Streamed { crc, .. } => Some(*crc),
            Proof::Copied { .. } => None,
        };
        let comparison = match self.compare_upload(&meta, proof, &found).await {
            Ok(comparison) => comparison,
            Err(error) => return Ok(Err(error)),
        };
        let etag = match job.own.judge(&found, comparison) {
            Taken::Replace(etag) => etag,
            taken => {
                self.drop_upload(job).await?;
                return Ok(Ok(self.settled(&meta, crc, found, taken)));
            }
        };
        let sent_at = SystemTime::now();
        let answer = self
            .dest
            .complete_upload(&meta.key, upload_id, parts, crc, &Precondition::Etag(etag))
            .await
            .map_err(|error| job.own.failed(sent_at, error));
        match answer {
            Ok(Written::Created(receipt)) => {
                self.completed(job).await?;
                Progress::add(&self.progress.n_replaced, 1);
                Ok(self.verify_upload(job, proof, receipt).await)
            }
            Ok(Written::Refused) => {
                self.drop_upload(job).await?;
                Ok(Err(changed_while_replacing(&meta)))
            }
            // Some servers' replies to a completion cannot be parsed (moto): the key says.
            Err(error) if error.kind() == ErrorKind::Unclear => {
                let settled = self
                    .settle_unclear_complete(job, (error, false), proof)
                    .await?;
                if settled
                    .as_ref()
                    .is_ok_and(|done| done.state == ObjectState::Copied)
                {
                    Progress::add(&self.progress.n_replaced, 1);
                }
                Ok(settled)
            }
            Err(error) => Ok(Err(error)),
        }
    }

    /// Opens the upload to make the object's parts in: the recorded one when it belongs to this
    /// version of the source, is cut in parts of `part_size`, and its parts were made the same
    /// way (sent with checksums when `checksummed`, else copied server-side without); otherwise a
    /// new one. A recorded upload with no parts yet is replaced too: which way it was made is
    /// unknown. That a new upload is being started is recorded before it starts, and its id as
    /// soon as it is known. Returns the upload id, and whether it is the recorded upload going on.
    pub(super) async fn open_upload(
        &self,
        job: &mut Job<'_>,
        part_size: u64,
        checksummed: bool,
        metadata: &Metadata,
    ) -> Result<Result<(String, bool), StorageError>, StoreError> {
        let source = source_version(job);
        if job
            .upload
            .as_ref()
            .is_some_and(|u| !goes_on(u, part_size, &source, checksummed))
        {
            self.drop_upload(job).await?;
        }
        if let Some(record) = &job.upload {
            return Ok(Ok((record.upload_id.clone(), true)));
        }
        let intent = SystemTime::now();
        self.store
            .record_upload_intent(job.claimed.claim(), intent)
            .await?;
        let upload_id = match self
            .dest
            .create_upload(&job.meta.key, checksummed, metadata)
            .await
        {
            Ok(id) => id,
            Err(error) => {
                // The server may have opened the upload and its answer been lost (cut short, a
                // reset): abort what was begun since the intent, or it stays open unrecorded.
                self.abort_unrecorded(Held::Claimed(job.claimed.claim()), &job.meta.key, intent)
                    .await?;
                return Ok(Err(error));
            }
        };
        self.store
            .record_upload(job.claimed.claim(), &upload_id, part_size, &source)
            .await?;
        job.upload = Some(UploadRecord {
            upload_id: upload_id.clone(),
            part_size,
            source: Some(source),
            parts: Vec::new(),
        });
        Ok(Ok((upload_id, false)))
    }

    /// Makes the parts 1..=`n_parts` the open upload lacks with `make`, `part_concurrency` at a
    /// time, recording each in the ledger (and in the job) as it finishes. Returns all the
    /// upload's parts in order, each with its MD5 when known. The first failure stops it; when
    /// the server no longer knows the upload, it is forgotten, so the next attempt starts a new
    /// one (and finds the object, should the old upload have completed).
    pub(super) async fn fill_upload<Made>(
        &self,
        job: &mut Job<'_>,
        resumed: bool,
        n_parts: u32,
        make: impl Fn(u32) -> Made,
    ) -> Result<Result<Vec<(UploadedPart, Option<String>)>, StorageError>, StoreError>
    where
        Made: Future<Output = Result<(UploadedPart, Option<String>), StorageError>>,
    {
        let recorded = job.upload.as_ref().map_or(&[][..], |u| &u.parts[..]);
        let mut parts: BTreeMap<u32, (UploadedPart, Option<String>)> = recorded
            .iter()
            .map(|p| {
                let part = UploadedPart {
                    part_number: p.part_number,
                    etag: p.etag.clone(),
                    crc64nvme: Crc64Nvme::from_base64(&p.checksum),
                    size: p.size,
                };
                (p.part_number, (part, p.md5.clone()))
            })
            .collect();
        let mut in_parts: u64 = parts.values().map(|(part, _)| part.size).sum();
        job.in_parts.set(in_parts);
        let missing: Vec<u32> = (1..=n_parts).filter(|n| !parts.contains_key(n)).collect();
        let mut made = futures::stream::iter(missing)
            .map(make)
            .buffer_unordered(self.options.part_concurrency.max(1));
        let mut failure = None;
        while let Some(result) = made.next().await {
            match result {
                Ok((part, md5)) => {
                    let record = PartRecord {
                        part_number: part.part_number,
                        etag: part.etag.clone(),
                        checksum: part
                            .crc64nvme
                            .map_or_else(String::new, Crc64Nvme::to_base64),
                        size: part.size,
                        md5: md5.clone(),
                    };
                    self.store
                        .record_part(job.claimed.claim(), record.clone())
                        .await?;
                    if let Some(upload) = job.upload.as_mut() {
                        upload.parts.push(record);
                    }
                    Progress::add(&self.progress.bytes_sent, part.size);
                    in_parts += part.size;
                    job.in_parts.set(in_parts);
                    parts.insert(part.part_number, (part, md5));
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        drop(made);
        match failure {
            None => Ok(Ok(parts.into_values().collect())),
            Some(error) if upload_gone(&error, resumed) => {
                self.completed(job).await?;
                Ok(Err(StorageError::new(
                    ErrorKind::NoSuchUpload,
                    error.message(),
                )))
            }
            Some(error) => Ok(Err(error)),
        }
    }

    /// A completion whose outcome is unclear, or whose upload the server no longer knows: the
    /// object at the key settles it. Identical and written since godwit sent the completion (or
    /// ours by its receipt) is copied; identical and older was there already; otherwise the error
    /// stands, and an upload that is gone is forgotten so that the next attempt starts a new one
    /// (and finds the object, should the old upload have completed after all).
    async fn settle_unclear_complete(
        &self,
        job: &mut Job<'_>,
        (error, gone): (StorageError, bool),
        proof: &Proof<'_>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let meta = job.meta.clone();
        let found = match self.dest.head(&meta.key).await {
            Ok(Some(found)) if found.size == meta.size => found,
            Ok(_) if gone => {
                self.completed(job).await?;
                return Ok(Err(StorageError::new(
                    ErrorKind::NoSuchUpload,
                    error.message(),
                )));
            }
            Ok(_) => return Ok(Err(error)),
            Err(other) => return Ok(Err(other)),
        };
        let comparison = match self.compare_upload(&meta, proof, &found).await {
            Ok(comparison) => comparison,
            Err(other) => return Ok(Err(other)),
        };
        let crc = match proof {
            Proof::Streamed { crc, .. } => Some(*crc),
            Proof::Copied { .. } => None,
        };
        match job.own.judge(&found, comparison) {
            taken @ (Taken::Ours(_) | Taken::AlreadyPresent(_)) => {
                if matches!(taken, Taken::Ours(_)) {
                    self.completed(job).await?;
                } else {
                    self.drop_upload(job).await?;
                }
                Ok(Ok(self.settled(&meta, crc, found, taken)))
            }
            Taken::Replace(_) | Taken::Conflict(_) => Ok(Err(error)),
        }
    }
}

/// Whether `error` says the server no longer knows the upload (it completed, or expired). Servers
/// say so differently (NoSuchUpload; s3s-fs answers AccessDenied), so for an upload resumed from
/// the ledger those answers mean "gone" too.
pub(super) fn upload_gone(error: &StorageError, resumed: bool) -> bool {
    error.kind() == ErrorKind::NoSuchUpload
        || (resumed && matches!(error.kind(), ErrorKind::AccessDenied | ErrorKind::NotFound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_grow_to_fit_the_part_limit() {
        const MIB: u64 = 1 << 20;
        assert_eq!(
            part_size_for(100 * MIB, 16 * MIB, 5 * MIB, 5 << 30, 10_000),
            16 * MIB
        );
        assert_eq!(
            part_size_for(100 * MIB, MIB, 5 * MIB, 5 << 30, 10_000),
            5 * MIB
        );
        // 1 TiB in 10,000 parts needs parts of at least 105 MiB (rounded up to whole MiB).
        let size = 1u64 << 40;
        let part = part_size_for(size, 16 * MIB, 5 * MIB, 5 << 30, 10_000);
        assert!(size.div_ceil(part) <= 10_000);
        assert_eq!(part, 105 * MIB);
    }
}
