//! Copies the destination makes itself, from a source on its endpoint: no bytes pass through
//! godwit, so the proof is the copy's ETag against the source's, or reading both back.

use std::sync::atomic::Ordering;

use godwit_state::{StoreError, UploadRecord};
use godwit_storage::{
    CopyOrigin, CopySupport, DestObject, ErrorKind, MAX_COPY_SIZE, ObjectMeta, PartLayout,
    StorageError, UploadedPart, WriteReceipt, Written,
};

use super::etag::{is_md5_etag, multipart_etag_parts, same_content_etag};
use super::own::Taken;
use super::upload::Proof;
use super::verify::Comparison;
use super::{Done, Job, Transfers};
use crate::progress::Progress;

impl Transfers {
    /// Where to copy `meta` from server-side, if it goes that way: the destination can (see
    /// [`godwit_storage::CopySupport`]) and the source ETag (unknown yet, or) made of MD5s, that
    /// the copy's ETag can be checked against: a plain MD5 for one copy request, a multipart ETag
    /// for a copy in parts cut as the source's. An object with parts of an earlier streamed
    /// upload recorded goes on streaming, from those parts.
    pub(super) async fn server_copy_for(
        &self,
        meta: &ObjectMeta,
        upload: Option<&UploadRecord>,
    ) -> Option<&CopyOrigin> {
        let candidate = self.copy_candidate.as_ref()?;
        let suits = self.copy_from_on.load(Ordering::Relaxed)
            && upload.is_none_or(|u| u.parts.iter().all(|p| p.checksum.is_empty()))
            && (meta.version.is_empty()
                || (is_md5_etag(&meta.version).is_some() && meta.size <= MAX_COPY_SIZE)
                || multipart_etag_parts(&meta.version).is_some());
        if !suits {
            return None;
        }
        self.copy_from
            .get_or_init(|| async {
                // The same probe answers for every condition: learn them all (and say which
                // fall short) before the first copy.
                self.conditions().await;
                match self.dest.copy_support(candidate).await {
                    CopySupport::Conditional => {
                        tracing::info!("the destination copies objects server-side");
                        Some(candidate.clone())
                    }
                    CopySupport::Unconditional(why) if self.options.racy_server_side_copy => {
                        tracing::warn!(
                            "--racy-server-side-copy: the destination copies objects server-side after a look at each key ({why}); a writer racing in between could be overwritten"
                        );
                        self.copies_racy.store(true, Ordering::Relaxed);
                        Some(candidate.clone())
                    }
                    CopySupport::Unconditional(why) => {
                        tracing::warn!(
                            "no server-side copies; streaming objects through godwit: {why} (--racy-server-side-copy copies server-side after a look at each key, racy as other tools are)"
                        );
                        None
                    }
                    CopySupport::No(why)
                        if self.dest.endpoint() == Some(candidate.endpoint.as_str()) =>
                    {
                        // It could have: say why it does not.
                        tracing::warn!(
                            "no server-side copies; streaming objects through godwit: {why}"
                        );
                        None
                    }
                    CopySupport::No(why) => {
                        tracing::info!("streaming objects through godwit: {why}");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    /// Whether `error` from a server-side copy means this run cannot copy server-side (the
    /// destination's credentials may not read the source, say); the run then streams instead.
    pub(super) fn server_copy_refused(&self, error: &StorageError) -> bool {
        let refused = matches!(
            error.kind(),
            ErrorKind::AccessDenied | ErrorKind::Unsupported | ErrorKind::Credentials
        );
        if refused && self.copy_from_on.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "server-side copies are refused ({}); streaming the objects through godwit instead",
                error.message()
            );
        }
        refused
    }

    /// Lets the destination copy the object from the source without the bytes passing through
    /// godwit, then checks the copy's ETag against the source's: in one request for an object
    /// with a plain MD5 ETag, in parts cut as the source's for a multipart one. `None` when the
    /// object turns out not to suit a server-side copy (its ETag is made otherwise, the source
    /// cannot say how it was cut, or godwit's own earlier copy must be replaced): stream it
    /// instead.
    pub(super) async fn copy_server_side(
        &self,
        job: &mut Job<'_>,
        origin: &CopyOrigin,
    ) -> Result<Result<Option<Done>, StorageError>, StoreError> {
        // Listings of some servers (s3s-fs) carry no ETags: ask the source for this one (the
        // ledger keeps the version the listing gave, so the next pass sees no change).
        let source = if job.meta.version.is_empty() {
            match self.source.stat(&job.meta.key).await {
                Ok(None) => {
                    return Ok(Err(StorageError::new(
                        ErrorKind::NotFound,
                        format!("{} is no longer at the source", job.meta.key),
                    )));
                }
                Ok(Some(now)) if now.size == job.meta.size => now,
                Ok(Some(_)) => return Ok(Ok(None)),
                Err(error) => return Ok(Err(error)),
            }
        } else {
            job.meta.clone()
        };
        if is_md5_etag(&source.version).is_some() && source.size <= MAX_COPY_SIZE {
            return Ok(self.copy_whole(job, &source, origin).await);
        }
        let Some(parts) = multipart_etag_parts(&source.version) else {
            return Ok(Ok(None));
        };
        let layout = match self.source.part_layout(&source).await {
            Ok(Some(layout)) if layout.parts == parts => layout,
            Ok(_) => return Ok(Ok(None)),
            Err(error) => return Ok(Err(error)),
        };
        // Not behind the multipart gate: no bytes pass through godwit, and a bucket uploaded by
        // the AWS CLI holds many small objects in parts, which two at a time would crawl through.
        self.copy_parts_server_side(job, &source, origin, layout)
            .await
    }

    /// One CopyObject, under `If-None-Match: *`.
    async fn copy_whole(
        &self,
        job: &mut Job<'_>,
        source: &ObjectMeta,
        origin: &CopyOrigin,
    ) -> Result<Option<Done>, StorageError> {
        // The server copies the source's metadata (and its tags, when kept) unless the run
        // changes it: then godwit sends the source's with the changes.
        let options = &self.options.metadata;
        let metadata = if options.overrides() {
            let mut metadata = self.source.metadata(source).await?;
            options.apply(&mut metadata);
            Some(metadata)
        } else {
            None
        };
        job.sent = metadata.clone();
        if self.copies_racy.load(Ordering::Relaxed)
            && let Some(found) = self.dest.head(&source.key).await?
        {
            // The server would copy over it: settle what is there as a refused copy would.
            return self.settle_copy(job, source, found).await;
        }
        let sent_at = std::time::SystemTime::now();
        let answer = self
            .dest
            .copy_new(
                &source.key,
                origin,
                source,
                metadata.as_ref(),
                options.preserve_tags,
            )
            .await;
        match answer.map_err(|error| job.own.failed(sent_at, error))? {
            Written::Created(receipt) => {
                Progress::add(&self.progress.bytes_sent, source.size);
                self.verify_copied(job, source, receipt).await.map(Some)
            }
            Written::Refused => {
                let found = self.head_taken(source, "copy").await?;
                self.settle_copy(job, source, found).await
            }
        }
    }

    /// The key of a copy holds `found`: already present, a conflict, or godwit's own earlier
    /// copy, which the streamed route replaces (it can say which object it replaces).
    async fn settle_copy(
        &self,
        job: &mut Job<'_>,
        source: &ObjectMeta,
        found: DestObject,
    ) -> Result<Option<Done>, StorageError> {
        let comparison = self.compare_copy(source, &found).await?;
        Ok(match job.own.judge(&found, comparison) {
            Taken::Replace(_) => None,
            taken => Some(self.settled(source, found.crc64nvme, found, taken)),
        })
    }

    /// Checks a server-side copy just made of `source`: its ETag equal to the source's proves
    /// it; otherwise both sides are compared.
    pub(super) async fn verify_copied(
        &self,
        job: &mut Job<'_>,
        source: &ObjectMeta,
        receipt: WriteReceipt,
    ) -> Result<Done, StorageError> {
        let verdict = if same_content_etag(receipt.etag.as_deref(), &source.version) {
            Comparison::Same("copy_etag")
        } else {
            let found = self.head_written(source).await?;
            self.compare_copy(source, &found).await?
        };
        let done = self
            .judged(job, receipt.crc64nvme, receipt, verdict)
            .await?;
        Progress::add(&self.progress.n_copied_server_side, 1);
        Ok(done)
    }

    /// Compares the destination's object with the source's, neither having passed through
    /// godwit: by the MD5 ETags, else by reading both and comparing their checksums.
    pub(super) async fn compare_copy(
        &self,
        source: &ObjectMeta,
        found: &DestObject,
    ) -> Result<Comparison, StorageError> {
        if found.size != source.size {
            return Ok(Comparison::Different(format!(
                "the destination object has {} bytes, the source {}",
                found.size, source.size
            )));
        }
        if same_content_etag(found.etag.as_deref(), &source.version) {
            return Ok(Comparison::Same("copy_etag"));
        }
        let ours = self.read_source(source).await?;
        let theirs = self.read_back(&source.key, source.size).await?;
        Ok(if theirs == ours {
            Comparison::Same("read_back")
        } else {
            Comparison::Different(format!(
                "contents differ (read back: destination {theirs}, source {ours})"
            ))
        })
    }

    /// Copies a multipart object server-side in parts cut as the source's (`layout`), under a
    /// completion that never replaces an object (but godwit's own earlier copy, by its ETag).
    /// The copy's multipart ETag, made by the destination from the MD5s of what it copied, must
    /// then equal the source's. Each copied part is recorded (with no checksum: godwit never saw
    /// its bytes), so an interrupted copy goes on from the parts it has.
    async fn copy_parts_server_side(
        &self,
        job: &mut Job<'_>,
        source: &ObjectMeta,
        origin: &CopyOrigin,
        layout: PartLayout,
    ) -> Result<Result<Option<Done>, StorageError>, StoreError> {
        let metadata = match self.metadata_for(source, None).await {
            Ok(metadata) => metadata,
            Err(error) => return Ok(Err(error)),
        };
        job.sent = Some(metadata.clone());
        let (upload_id, resumed) = match self
            .open_upload(job, layout.part_size, false, &metadata)
            .await?
        {
            Ok(opened) => opened,
            Err(error) => return Ok(Err(error)),
        };
        let copy = |part_number: u32| {
            let (offset, len) = layout.range(part_number, source.size);
            let upload_id = &upload_id;
            async move {
                let etag = self
                    .dest
                    .copy_part(
                        &source.key,
                        upload_id,
                        part_number,
                        origin,
                        source,
                        offset,
                        len,
                    )
                    .await?;
                let part = UploadedPart {
                    part_number,
                    etag,
                    crc64nvme: None,
                    size: len,
                };
                Ok((part, None))
            }
        };
        let parts: Vec<UploadedPart> =
            match self.fill_upload(job, resumed, layout.parts, copy).await? {
                Ok(parts) => parts.into_iter().map(|(part, _)| part).collect(),
                Err(error) => return Ok(Err(error)),
            };
        let proof = Proof::Copied { source };
        Ok(self
            .complete(job, &upload_id, resumed, &parts, &proof)
            .await?
            .map(Some))
    }
}
