//! Copies the destination makes itself, from a source on its endpoint: no bytes pass through
//! godwit, so the proof is the copy's ETag against the source's, or reading both back.

use std::sync::atomic::Ordering;

use godwit_state::{ClaimedObject, StoreError, UploadRecord};
use godwit_storage::{
    CopyOrigin, CopySupport, DestObject, ErrorKind, MAX_COPY_SIZE, ObjectMeta, PartLayout,
    StorageError, UploadedPart, WriteReceipt, Written,
};

use super::etag::{is_md5_etag, multipart_etag_parts, same_content_etag};
use super::upload::upload_gone;
use super::verify::Comparison;
use super::{Done, Transfers};
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
                match self.dest.copy_support(candidate).await {
                    CopySupport::Conditional => {
                        tracing::info!("the destination copies objects server-side");
                        Some(candidate.clone())
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
    /// object turns out not to suit a server-side copy (its ETag is made otherwise, or the source
    /// cannot say how it was cut): stream it instead.
    pub(super) async fn copy_server_side(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        origin: &CopyOrigin,
        upload: &mut Option<UploadRecord>,
    ) -> Result<Result<Option<Done>, StorageError>, StoreError> {
        // Listings of some servers (s3s-fs) carry no ETags: ask the source for this one.
        let stated;
        let meta = if meta.version.is_empty() {
            match self.source.stat(&meta.key).await {
                Ok(None) => {
                    return Ok(Err(StorageError::new(
                        ErrorKind::NotFound,
                        format!("{} is no longer at the source", meta.key),
                    )));
                }
                Ok(Some(now)) if now.size == meta.size => {
                    stated = now;
                    &stated
                }
                Ok(Some(_)) => return Ok(Ok(None)),
                Err(error) => return Ok(Err(error)),
            }
        } else {
            meta
        };
        if is_md5_etag(&meta.version).is_some() && meta.size <= MAX_COPY_SIZE {
            return Ok(self
                .copy_server_side_checked(claimed, meta, origin)
                .await
                .map(Some));
        }
        let Some(parts) = multipart_etag_parts(&meta.version) else {
            return Ok(Ok(None));
        };
        let layout = match self.source.part_layout(meta).await {
            Ok(Some(layout)) if layout.parts == parts => layout,
            Ok(_) => return Ok(Ok(None)),
            Err(error) => return Ok(Err(error)),
        };
        // Not behind the multipart gate: no bytes pass through godwit, and a bucket uploaded by
        // the AWS CLI holds many small objects in parts, which two at a time would crawl through.
        Ok(self
            .copy_parts_server_side(claimed, meta, origin, layout, upload)
            .await?
            .map(Some))
    }

    pub(super) async fn copy_server_side_checked(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        origin: &CopyOrigin,
    ) -> Result<Done, StorageError> {
        match self.dest.copy_new(&meta.key, origin, meta).await? {
            Written::Created(receipt) => {
                Progress::add(&self.progress.bytes_sent, meta.size);
                self.verify_copied(meta, receipt).await
            }
            Written::AlreadyExists => self.settle_existing_copy(claimed, meta).await,
        }
    }

    /// Checks a server-side copy just made: its ETag equal to the source's proves it; otherwise
    /// both sides are compared.
    pub(super) async fn verify_copied(
        &self,
        meta: &ObjectMeta,
        receipt: WriteReceipt,
    ) -> Result<Done, StorageError> {
        let verdict = if same_content_etag(receipt.etag.as_deref(), &meta.version) {
            Comparison::Same("copy_etag")
        } else {
            let found = self.head_written(meta).await?;
            self.compare_copy(meta, &found).await?
        };
        let done = self
            .judged(meta, receipt.crc64nvme, receipt, verdict)
            .await?;
        Progress::add(&self.progress.n_copied_server_side, 1);
        Ok(done)
    }

    /// The destination refused a server-side copy because the key is taken: settle what is there.
    pub(super) async fn settle_existing_copy(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
    ) -> Result<Done, StorageError> {
        let found = self.head_taken(meta, "copy").await?;
        let verdict = self.compare_copy(meta, &found).await?;
        Ok(self.settled(claimed, meta, found.crc64nvme, found, verdict))
    }

    /// Compares the destination's object with the source's, neither having passed through
    /// godwit: by the MD5 ETags, else by reading both and comparing their checksums.
    pub(super) async fn compare_copy(
        &self,
        meta: &ObjectMeta,
        found: &DestObject,
    ) -> Result<Comparison, StorageError> {
        if found.size != meta.size {
            return Ok(Comparison::Different(format!(
                "the destination object has {} bytes, the source {}",
                found.size, meta.size
            )));
        }
        if same_content_etag(found.etag.as_deref(), &meta.version) {
            return Ok(Comparison::Same("copy_etag"));
        }
        let ours = self.read_source(meta).await?;
        let theirs = self.read_back(&meta.key, meta.size).await?;
        Ok(if theirs == ours {
            Comparison::Same("read_back")
        } else {
            Comparison::Different(format!(
                "contents differ (read back: destination {theirs}, source {ours})"
            ))
        })
    }

    /// Copies a multipart object server-side in parts cut as the source's (`layout`), under a
    /// completion that never replaces an object. The copy's multipart ETag, made by the
    /// destination from the MD5s of what it copied, must then equal the source's. Each copied
    /// part is recorded (with no checksum: godwit never saw its bytes), so an interrupted copy
    /// goes on from the parts it has.
    pub(super) async fn copy_parts_server_side(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        origin: &CopyOrigin,
        layout: PartLayout,
        upload: &mut Option<UploadRecord>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let (upload_id, resumed) = match self
            .open_upload(claimed, meta, upload, layout.part_size, false)
            .await?
        {
            Ok(opened) => opened,
            Err(error) => return Ok(Err(error)),
        };
        let upload_gone = |error: &StorageError| upload_gone(error, resumed);
        let copy = |part_number: u32| {
            let (offset, len) = layout.range(part_number, meta.size);
            let upload_id = &upload_id;
            async move {
                let etag = self
                    .dest
                    .copy_part(&meta.key, upload_id, part_number, origin, meta, offset, len)
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
        let parts: Vec<UploadedPart> = match self
            .fill_upload(claimed, upload, resumed, layout.parts, copy)
            .await?
        {
            Ok(parts) => parts.into_iter().map(|(part, _)| part).collect(),
            Err(error) => return Ok(Err(error)),
        };
        let answer = self
            .dest
            .complete_upload_new(&meta.key, &upload_id, &parts, None)
            .await;
        let done = match answer {
            Ok(Written::Created(receipt)) => {
                self.store.clear_upload(claimed.id).await?;
                *upload = None;
                self.verify_copied(meta, receipt).await
            }
            Ok(Written::AlreadyExists) => {
                self.drop_upload(claimed, meta, upload).await?;
                self.settle_existing_copy(claimed, meta).await
            }
            Err(error) if error.kind() == ErrorKind::Unclear || upload_gone(&error) => {
                let gone = upload_gone(&error);
                let compare = async |found: &DestObject| self.compare_copy(meta, found).await;
                return self
                    .settle_unclear_complete(claimed, meta, upload, (error, gone), None, compare)
                    .await;
            }
            Err(error) => Err(error),
        };
        Ok(done)
    }
}
