//! Copying one object: read, checksum, conditional write, verify, and settle what was found.
//!
//! Every write is conditional. When the key is taken, the object there is compared with ours:
//! same size and checksum is `already_present`, anything else a `conflict` left alone. A write
//! counts as `copied` only once the destination's checksum (or, failing that, its MD5 ETag or a
//! read-back) matches the bytes read from the source.
//!
//! One module a concern: this one holds the retry loop and the choice of route; `single` (one
//! PUT), `upload` (multipart uploads, streamed or copied, opened, filled and resumed),
//! `server_side` (copies the destination makes itself), `verify` (checking our write, settling a
//! taken key) and `etag` (what ETags prove).

mod etag;
mod server_side;
mod single;
mod upload;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::time::Duration;

use bytes::Bytes;
use godwit_state::{ClaimedObject, ObjectState, Outcome, Store, StoreError, UploadRecord};
use godwit_storage::{
    CopyOrigin, Crc64Nvme, Destination, ErrorKind, ObjectMeta, Source, StorageError, WriteReceipt,
};
use tokio::sync::Semaphore;

use crate::progress::Progress;
use upload::{MULTIPART_OBJECTS, UNKNOWN};

/// How objects are copied.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Objects larger than this go multipart.
    pub multipart_threshold: u64,
    /// The smallest part size; it grows so that no object needs more parts than the destination allows.
    pub part_size: u64,
    /// Parts of one object in flight at once.
    pub part_concurrency: usize,
    /// Attempts at one object within one claim before it goes to the fail queue.
    pub max_attempts: u32,
    /// Bytes of object data held in memory at once, across all transfers.
    pub memory_budget: u64,
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            part_concurrency: 8,
            max_attempts: 5,
            memory_budget: 1 << 30,
        }
    }
}

/// Everything a transfer needs; shared by all of a run's transfers.
pub(crate) struct Transfers {
    pub source: Arc<dyn Source>,
    pub dest: Arc<dyn Destination>,
    pub store: Arc<dyn Store>,
    pub options: TransferOptions,
    pub progress: Arc<Progress>,
    /// The memory budget in KiB permits.
    budget: Semaphore,
    /// Multipart objects streamed at once (see [`MULTIPART_OBJECTS`]).
    multipart_objects: Semaphore,
    /// Where the destination might copy from server-side (the source's origin, unless the
    /// options say to stream everything).
    copy_candidate: Option<CopyOrigin>,
    /// Whether it can, found out when the first object could go that way (so a run with nothing
    /// to copy writes nothing, not even the probe).
    copy_from: tokio::sync::OnceCell<Option<CopyOrigin>>,
    /// Cleared when the destination turns server-side copies down mid-run.
    copy_from_on: AtomicBool,
    /// Whether the destination keeps a checksum of multipart objects: `UNKNOWN`, `KEPT`, `NOT_KEPT`.
    multipart_checksums: AtomicU8,
}

/// How a copy attempt ended, short of an error.
pub(super) struct Done {
    pub state: ObjectState,
    /// The object's CRC-64/NVME, when known (a server-side copy may not say).
    pub checksum: Option<Crc64Nvme>,
    pub receipt: Option<WriteReceipt>,
    pub verified_by: Option<&'static str>,
    /// Why, for a conflict.
    pub note: Option<String>,
}

const KIB: u64 = 1024;

impl Transfers {
    pub fn new(
        source: Arc<dyn Source>,
        dest: Arc<dyn Destination>,
        store: Arc<dyn Store>,
        options: TransferOptions,
        progress: Arc<Progress>,
        copy_candidate: Option<CopyOrigin>,
    ) -> Self {
        let permits = (options.memory_budget / KIB).clamp(1, u64::from(u32::MAX >> 4)) as usize;
        Self {
            source,
            dest,
            store,
            options,
            progress,
            budget: Semaphore::new(permits),
            multipart_objects: Semaphore::new(MULTIPART_OBJECTS),
            copy_from_on: AtomicBool::new(true),
            copy_candidate,
            copy_from: tokio::sync::OnceCell::new(),
            multipart_checksums: AtomicU8::new(UNKNOWN),
        }
    }

    /// Reads a byte range of the source within the memory budget; the permit travels with the bytes.
    async fn read_budgeted(
        &self,
        meta: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, tokio::sync::SemaphorePermit<'_>), StorageError> {
        let wanted = len.div_ceil(KIB).max(1);
        let all = (self.options.memory_budget / KIB).clamp(1, u64::from(u32::MAX >> 4));
        let permit = self
            .budget
            .acquire_many(wanted.min(all) as u32)
            .await
            .map_err(|_| StorageError::new(ErrorKind::Other, "memory budget closed"))?;
        let bytes = self.source.read(meta, offset, len).await?;
        Ok((bytes, permit))
    }

    /// Copies one claimed object, retrying temporary failures, and says how it ended. Only a
    /// failure of the ledger itself is an `Err`.
    pub async fn copy(&self, claimed: ClaimedObject) -> Result<Outcome, StoreError> {
        let mut meta = ObjectMeta {
            key: claimed.key.clone(),
            size: claimed.size,
            version: claimed.version.clone(),
        };
        let mut upload = claimed.upload.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.server_copy_for(&meta, upload.as_ref()).await {
                Some(origin) => {
                    match self
                        .copy_server_side(&claimed, &meta, origin, &mut upload)
                        .await?
                    {
                        Ok(Some(done)) => Ok(done),
                        Err(error) if !self.server_copy_refused(&error) => Err(error),
                        // Parts copied server-side are no use to streaming: `open_upload`
                        // replaces their upload.
                        Ok(None) | Err(_) => {
                            self.copy_streamed(&claimed, &meta, &mut upload).await?
                        }
                    }
                }
                None => self.copy_streamed(&claimed, &meta, &mut upload).await?,
            };
            let error = match result {
                Ok(done) => {
                    // A finished multipart copy has forgotten its upload already; any upload
                    // still recorded (the object settled otherwise, or went by a single PUT after
                    // the threshold changed) is of no use now.
                    self.drop_upload(&claimed, &meta, &mut upload).await?;
                    return Ok(self.outcome(&claimed, &meta, attempt, done));
                }
                Err(error) => error,
            };
            // A source object that went away or changed is looked at again before anything else.
            if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::SourceChanged) {
                match self.source.stat(&meta.key).await {
                    Ok(None) => {
                        self.drop_upload(&claimed, &meta, &mut upload).await?;
                        return Ok(self.ended(
                            &claimed,
                            &meta,
                            attempt,
                            ObjectState::SourceVanished,
                            None,
                        ));
                    }
                    Ok(Some(now)) if now != meta => {
                        tracing::debug!(key = %meta.key, "source changed; reading the new version");
                        // Parts of the old version are of no use: abort their upload.
                        self.drop_upload(&claimed, &meta, &mut upload).await?;
                        meta = now;
                    }
                    Ok(Some(_)) | Err(_) => {}
                }
            }
            if !error.is_temporary() || attempt >= self.options.max_attempts {
                self.drop_upload(&claimed, &meta, &mut upload).await?;
                let reason = if error.is_temporary() {
                    format!("{} (gave up after {attempt} attempts)", error.message())
                } else {
                    error.message().to_owned()
                };
                return Ok(self.ended(
                    &claimed,
                    &meta,
                    attempt,
                    ObjectState::Failed,
                    Some((error.kind().as_str().to_owned(), reason)),
                ));
            }
            tracing::debug!(key = %meta.key, attempt, %error, "retrying");
            let backoff = Duration::from_millis(100 << (attempt - 1).min(6));
            tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
        }
    }

    /// Reads the object through godwit and writes it: one PUT, or a multipart upload.
    async fn copy_streamed(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        upload: &mut Option<UploadRecord>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        if meta.size > self.options.multipart_threshold {
            let _turn = self
                .multipart_objects
                .acquire()
                .await
                .expect("the multipart gate is never closed");
            self.copy_multipart(claimed, meta, upload).await
        } else {
            Ok(self.copy_single(claimed, meta).await)
        }
    }

    fn outcome(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        attempt: u32,
        done: Done,
    ) -> Outcome {
        let (dest_etag, dest_version) = match done.receipt {
            Some(receipt) => (receipt.etag, receipt.version_id),
            None => (None, None),
        };
        Outcome {
            id: claimed.id,
            state: done.state,
            attempts: claimed.attempts + attempt - 1,
            size: meta.size,
            version: meta.version.clone(),
            checksum: done.checksum.map(Crc64Nvme::to_base64),
            dest_etag,
            dest_version,
            verified_by: done.verified_by,
            error: done.note.map(|note| ("conflict".to_owned(), note)),
        }
    }

    fn ended(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        attempt: u32,
        state: ObjectState,
        error: Option<(String, String)>,
    ) -> Outcome {
        Outcome {
            id: claimed.id,
            state,
            attempts: claimed.attempts + attempt - 1,
            size: meta.size,
            version: meta.version.clone(),
            checksum: None,
            dest_etag: None,
            dest_version: None,
            verified_by: None,
            error,
        }
    }

    /// Aborts and forgets a multipart upload the object no longer needs.
    async fn drop_upload(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        upload: &mut Option<UploadRecord>,
    ) -> Result<(), StoreError> {
        if let Some(record) = upload.take() {
            if let Err(error) = self.dest.abort_upload(&meta.key, &record.upload_id).await {
                tracing::warn!(key = %meta.key, %error, "could not abort an unneeded multipart upload");
            }
            self.store.clear_upload(claimed.id).await?;
        }
        Ok(())
    }
}
