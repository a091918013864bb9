//! Checking what the destination holds after our write, and settling a key that was taken.

use godwit_state::ObjectState;
use godwit_storage::{Crc64Nvme, DestObject, ErrorKind, ObjectMeta, StorageError, WriteReceipt};

use super::etag::Evidence;
use super::own::Taken;
use super::{Done, Job, Transfers};
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
        job: &mut Job<'_>,
        crc: Crc64Nvme,
        evidence: &Evidence<'_>,
        receipt: WriteReceipt,
    ) -> Result<Done, StorageError> {
        let meta = &job.meta;
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
        self.judged(job, Some(crc), receipt, verdict).await
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

    /// Our write is copied when the verdict says the same. Otherwise it is corrupt: taken back
    /// (only while it is still ours, by its ETag, and only where the destination enforces that
    /// condition), and the object is tried again. A write that could not be taken back stays
    /// recorded as ours, so the next attempt replaces it; the failed verification is the reason
    /// either way.
    pub(super) async fn judged(
        &self,
        job: &mut Job<'_>,
        checksum: Option<Crc64Nvme>,
        receipt: WriteReceipt,
        verdict: Comparison,
    ) -> Result<Done, StorageError> {
        job.own.wrote(&receipt);
        let why = match verdict {
            Comparison::Same(how) => {
                return Ok(Done {
                    state: ObjectState::Copied,
                    checksum,
                    receipt: Some(receipt),
                    verified_by: Some(how),
                    note: None,
                });
            }
            Comparison::Different(why) => why,
        };
        let key = &job.meta.key;
        let mut reason = format!("{key}: verification after writing failed: {why}");
        let conditions = self.conditions().await;
        match &receipt.etag {
            Some(etag) if conditions.delete_if_match.is_enforced() => {
                match self.dest.delete_if_etag(key, etag).await {
                    Ok(()) => job.own.gone(),
                    Err(error) => reason.push_str(&format!(
                        "; godwit could not take its write back ({}): it stays recorded as godwit's own, and the next attempt replaces it",
                        error.message()
                    )),
                }
            }
            Some(_) => reason.push_str(
                "; the destination does not enforce If-Match on DELETE, so godwit left its write in place, recorded as its own: the next attempt replaces it",
            ),
            None => reason.push_str("; the destination gave the write no ETag, so godwit cannot take it back"),
        }
        Err(StorageError::new(ErrorKind::ChecksumMismatch, reason))
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

    /// How an object found at a taken key ends, short of a replacement: ours or already present
    /// when identical, a conflict left alone otherwise.
    pub(super) fn settled(
        &self,
        meta: &ObjectMeta,
        checksum: Option<Crc64Nvme>,
        found: DestObject,
        taken: Taken,
    ) -> Done {
        let receipt = WriteReceipt {
            etag: found.etag,
            crc64nvme: found.crc64nvme,
            version_id: found.version_id,
        };
        let (state, verified_by, note) = match taken {
            Taken::Ours(how) => (ObjectState::Copied, Some(how), None),
            Taken::AlreadyPresent(how) => (ObjectState::AlreadyPresent, Some(how), None),
            Taken::Conflict(why) => (
                ObjectState::Conflict,
                None,
                Some(format!(
                    "{}: a different object is already at the destination ({why}); it was left alone",
                    meta.key
                )),
            ),
            Taken::Replace(_) => (
                ObjectState::Conflict,
                None,
                Some(format!(
                    "{}: godwit's own earlier copy is at the destination and could not be replaced; it was left alone",
                    meta.key
                )),
            ),
        };
        Done {
            state,
            checksum,
            receipt: Some(receipt),
            verified_by,
            note,
        }
    }

    /// Deletes godwit's own write at `key` (a group being rolled back), only under `If-Match` on
    /// the ETag it got, so never an object someone else wrote since; says why not when it cannot.
    pub(crate) async fn take_back(&self, key: &str, etag: Option<&str>) -> Result<(), String> {
        let Some(etag) = etag else {
            return Err(
                "the destination gave the write no ETag, so godwit cannot take it back".to_owned(),
            );
        };
        if !self.conditions().await.delete_if_match.is_enforced() {
            return Err(
                "the destination does not enforce If-Match on DELETE, so godwit left its write in place, recorded as its own"
                    .to_owned(),
            );
        }
        match self.dest.delete_if_etag(key, etag).await {
            Ok(()) => Ok(()),
            Err(error) => Err(format!(
                "godwit could not take its write back ({}): it stays recorded as godwit's own",
                error.message()
            )),
        }
    }
}
