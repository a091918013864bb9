//! Checking what the destination holds after our write, and settling a key that was taken.

use godwit_state::{ClaimedObject, ObjectState};
use godwit_storage::{Crc64Nvme, DestObject, ErrorKind, ObjectMeta, StorageError, WriteReceipt};

use super::etag::Evidence;
use super::{Done, Transfers};
use crate::checksum::{combine, crc64nvme};

/// What comparing an object at the destination with ours found.
pub(super) enum Comparison {
    Same(&'static str),
    Different(String),
}

/// Read-back verification reads at most this much at once.
const READ_BACK_CHUNK: u64 = 8 << 20;

impl Transfers {
    /// Checks what the destination holds after our write.
    pub(super) async fn verify_written(
        &self,
        meta: &ObjectMeta,
        crc: Crc64Nvme,
        evidence: &Evidence<'_>,
        receipt: WriteReceipt,
    ) -> Result<Done, StorageError> {
        let verdict = match receipt.crc64nvme {
            Some(reported) if reported == crc => Comparison::Same("checksum"),
            Some(reported) => Comparison::Different(format!(
                "the destination computed checksum {reported}, the source bytes have {crc}"
            )),
            None if evidence.etag_matches(receipt.etag.as_deref()) => Comparison::Same("etag_md5"),
            None => {
                let found = self.head_written(meta).await?;
                self.compare(meta, crc, evidence, &found).await?
            }
        };
        self.judged(meta, Some(crc), receipt, verdict).await
    }

    /// The object at a key the destination refused our `what` ("write", "copy") onto as taken.
    pub(super) async fn head_taken(
        &self,
        meta: &ObjectMeta,
        what: &str,
    ) -> Result<DestObject, StorageError> {
        self.dest.head(&meta.key).await?.ok_or_else(|| {
            StorageError::new(
                ErrorKind::Unclear,
                format!(
                    "{}: the destination refused the {what} as existing, then had no object",
                    meta.key
                ),
            )
        })
    }

    /// The object just written (or copied) at the key.
    pub(super) async fn head_written(&self, meta: &ObjectMeta) -> Result<DestObject, StorageError> {
        self.dest.head(&meta.key).await?.ok_or_else(|| {
            StorageError::new(
                ErrorKind::Unclear,
                format!("{} was written but is not there any more", meta.key),
            )
        })
    }

    /// Our write is copied when the verdict says the same; otherwise it is corrupt: taken back
    /// (only while it is still ours, by its ETag) and the object is tried again.
    pub(super) async fn judged(
        &self,
        meta: &ObjectMeta,
        checksum: Option<Crc64Nvme>,
        receipt: WriteReceipt,
        verdict: Comparison,
    ) -> Result<Done, StorageError> {
        match verdict {
            Comparison::Same(how) => Ok(Done {
                state: ObjectState::Copied,
                checksum,
                receipt: Some(receipt),
                verified_by: Some(how),
                note: None,
            }),
            Comparison::Different(why) => {
                if let Some(etag) = &receipt.etag {
                    self.dest.delete_if_etag(&meta.key, etag).await?;
                }
                Err(StorageError::new(
                    ErrorKind::ChecksumMismatch,
                    format!("{}: verification after writing failed: {why}", meta.key),
                ))
            }
        }
    }

    /// Compares the destination's object with ours: size, then its checksum, then its ETag, and
    /// when neither settles it, a read-back.
    pub(super) async fn compare(
        &self,
        meta: &ObjectMeta,
        crc: Crc64Nvme,
        evidence: &Evidence<'_>,
        found: &DestObject,
    ) -> Result<Comparison, StorageError> {
        if found.size != meta.size {
            return Ok(Comparison::Different(format!(
                "the destination object has {} bytes, the source {}",
                found.size, meta.size
            )));
        }
        if let Some(theirs) = found.crc64nvme {
            return Ok(if theirs == crc {
                Comparison::Same("checksum")
            } else {
                Comparison::Different(format!(
                    "checksums differ (destination {theirs}, source {crc})"
                ))
            });
        }
        if evidence.etag_matches(found.etag.as_deref()) {
            return Ok(Comparison::Same("etag_md5"));
        }
        let theirs = self.read_back(&meta.key, meta.size).await?;
        Ok(if theirs == crc {
            Comparison::Same("read_back")
        } else {
            Comparison::Different(format!(
                "contents differ (read back: destination {theirs}, source {crc})"
            ))
        })
    }

    /// Reads the destination's object in bounded chunks and returns its checksum.
    pub(super) async fn read_back(&self, key: &str, size: u64) -> Result<Crc64Nvme, StorageError> {
        let mut crc = crc64nvme(b"");
        let mut offset = 0;
        while offset < size {
            let len = READ_BACK_CHUNK.min(size - offset);
            let chunk = self.dest.read(key, offset, len).await?;
            crc = combine(crc, crc64nvme(&chunk), len);
            offset += len;
        }
        Ok(crc)
    }

    /// Reads the source object in bounded chunks and returns its checksum.
    pub(super) async fn read_source(&self, meta: &ObjectMeta) -> Result<Crc64Nvme, StorageError> {
        let mut crc = crc64nvme(b"");
        let mut offset = 0;
        while offset < meta.size {
            let len = READ_BACK_CHUNK.min(meta.size - offset);
            let (chunk, _permit) = self.read_budgeted(meta, offset, len).await?;
            crc = combine(crc, crc64nvme(&chunk), len);
            offset += len;
        }
        Ok(crc)
    }

    /// The key was taken when we wrote: decide between ours (from an earlier attempt that
    /// crashed before it was recorded), already present, and conflict.
    pub(super) async fn settle_existing(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        crc: Crc64Nvme,
        evidence: &Evidence<'_>,
    ) -> Result<Done, StorageError> {
        let found = self.head_taken(meta, "write").await?;
        let verdict = self.compare(meta, crc, evidence, &found).await?;
        Ok(self.settled(claimed, meta, Some(crc), found, verdict))
    }

    /// What the object found at a taken key makes of ours: the same is `already_present` (or
    /// `copied`, when an earlier attempt of ours wrote it and crashed before recording it),
    /// anything else a conflict, left alone.
    pub(super) fn settled(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        checksum: Option<Crc64Nvme>,
        found: DestObject,
        verdict: Comparison,
    ) -> Done {
        let receipt = WriteReceipt {
            etag: found.etag,
            crc64nvme: found.crc64nvme,
            version_id: found.version_id,
        };
        match verdict {
            Comparison::Same(how) => Done {
                state: if claimed.attempts > 1 {
                    ObjectState::Copied
                } else {
                    ObjectState::AlreadyPresent
                },
                checksum,
                receipt: Some(receipt),
                verified_by: Some(how),
                note: None,
            },
            Comparison::Different(why) => Done {
                state: ObjectState::Conflict,
                checksum,
                receipt: Some(receipt),
                verified_by: None,
                note: Some(format!(
                    "{}: a different object is already at the destination ({why}); it was left alone",
                    meta.key
                )),
            },
        }
    }
}
