//! An object in one PUT.

use godwit_state::ClaimedObject;
use godwit_storage::{ErrorKind, ObjectMeta, StorageError, Written};

use super::etag::Evidence;
use super::{Done, Transfers};
use crate::checksum::crc64nvme;
use crate::progress::Progress;

impl Transfers {
    pub(super) async fn copy_single(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
    ) -> Result<Done, StorageError> {
        let (body, _permit) = self.read_budgeted(meta, 0, meta.size).await?;
        let crc = crc64nvme(&body);
        match self.dest.put_new(&meta.key, body.clone(), crc).await {
            Ok(Written::Created(receipt)) => {
                Progress::add(&self.progress.bytes_sent, meta.size);
                self.verify_written(meta, crc, &Evidence::Body(&body), receipt)
                    .await
            }
            Ok(Written::AlreadyExists) => {
                self.settle_existing(claimed, meta, crc, &Evidence::Body(&body))
                    .await
            }
            Err(error) if error.kind() == ErrorKind::ChecksumMismatch => {
                Err(self.rejected_but_stored(meta, error).await)
            }
            Err(error) => Err(error),
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
