//! An object in one PUT.

use std::time::SystemTime;

use bytes::Bytes;
use godwit_storage::{
    Crc64Nvme, DestObject, ErrorKind, Metadata, ObjectMeta, Precondition, StorageError, Written,
};

use super::etag::Evidence;
use super::own::Taken;
use super::{Done, Job, Transfers};
use crate::checksum::crc64nvme;
use crate::progress::Progress;

impl Transfers {
    pub(super) async fn copy_single(&self, job: &mut Job<'_>) -> Result<Done, StorageError> {
        let meta = job.meta.clone();
        let (body, served, _permit) = self.read_whole_budgeted(&meta).await?;
        let crc = crc64nvme(&body);
        let metadata = self.metadata_for(&meta, Some(served)).await?;
        job.sent = Some(metadata.clone());
        let evidence = Evidence::Body(&body);
        if !self.conditions().await.put_if_none_match.is_enforced() {
            // The server would not refuse the write: look first (racy, and said so).
            if let Some(found) = self.dest.head(&meta.key).await? {
                return self
                    .settle_put(job, crc, &evidence, &body, &metadata, found)
                    .await;
            }
        }
        let sent_at = SystemTime::now();
        match self
            .dest
            .put(
                &meta.key,
                body.clone(),
                crc,
                &metadata,
                &Precondition::Absent,
            )
            .await
        {
            Ok(Written::Created(receipt)) => {
                Progress::add(&self.progress.bytes_sent, meta.size);
                self.verify_written(job, crc, &evidence, receipt).await
            }
            Ok(Written::Refused) => {
                let found = self.head_taken(&meta, "write").await?;
                self.settle_put(job, crc, &evidence, &body, &metadata, found)
                    .await
            }
            Err(error) if error.kind() == ErrorKind::ChecksumMismatch => {
                Err(self.rejected_but_stored(&meta, error).await)
            }
            Err(error) => Err(job.own.failed(sent_at, error)),
        }
    }

    /// The key holds `found`: ours or already present when identical, a conflict when someone
    /// else's; godwit's own earlier write is replaced, conditionally on its ETag.
    async fn settle_put(
        &self,
        job: &mut Job<'_>,
        crc: Crc64Nvme,
        evidence: &Evidence<'_>,
        body: &Bytes,
        metadata: &Metadata,
        found: DestObject,
    ) -> Result<Done, StorageError> {
        let meta = job.meta.clone();
        let comparison = self.compare(&meta, crc, evidence, &found).await?;
        let etag = match job.own.judge(&found, comparison) {
            Taken::Replace(etag) => etag,
            taken => return Ok(self.settled(&meta, Some(crc), found, taken)),
        };
        // Where the server ignores If-Match, the HEAD above is all that stands between this write
        // and another writer's object (racy, and said so).
        let sent_at = SystemTime::now();
        let answer = self
            .dest
            .put(
                &meta.key,
                body.clone(),
                crc,
                metadata,
                &Precondition::Etag(etag),
            )
            .await;
        match answer.map_err(|error| job.own.failed(sent_at, error))? {
            Written::Created(receipt) => {
                Progress::add(&self.progress.bytes_sent, meta.size);
                Progress::add(&self.progress.n_replaced, 1);
                self.verify_written(job, crc, evidence, receipt).await
            }
            Written::Refused => Err(changed_while_replacing(&meta)),
        }
    }

    /// The server rejected our bytes' checksum. Most servers then store nothing and a retry is
    /// right; some (s3s-fs) keep the damaged upload. godwit cannot prove such an object is its
    /// own, so it never deletes it: the object fails with a message saying what to check.
    pub(super) async fn rejected_but_stored(
        &self,
        meta: &ObjectMeta,
        error: StorageError,
    ) -> StorageError {
        match self.dest.head(&meta.key).await {
            Ok(Some(found)) => StorageError::new(
                ErrorKind::Unverifiable,
                format!(
                    "{}: the destination rejected the checksum of godwit's upload ({}), yet an object of {} bytes \
                     is now at the key: some servers keep rejected uploads. It was left alone; if it is a damaged \
                     copy, delete it, then `godwit retry-failed`",
                    meta.key,
                    error.message(),
                    found.size
                ),
            ),
            Ok(None) | Err(_) => error,
        }
    }
}

/// The object at the key changed between godwit finding its own earlier write there and
/// replacing it: someone else wrote. The next attempt looks again.
pub(super) fn changed_while_replacing(meta: &ObjectMeta) -> StorageError {
    StorageError::new(
        ErrorKind::Unclear,
        format!(
            "{}: the object at the destination changed while godwit replaced its own earlier copy; looking again",
            meta.key
        ),
    )
}
