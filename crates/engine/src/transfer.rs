//! Copying one object: read, checksum, conditional write, verify, and settle what was found.
//!
//! Every write is conditional. When the key is taken, the object there is compared with ours:
//! same size and checksum is `already_present`, anything else a `conflict` left alone. A write
//! counts as `copied` only once the destination's checksum (or, failing that, its MD5 ETag or a
//! read-back) matches the bytes read from the source.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use godwit_state::{
    ClaimedObject, ObjectState, Outcome, PartRecord, Store, StoreError, UploadRecord,
};
use godwit_storage::{
    CopyOrigin, CopySupport, Crc64Nvme, DestObject, Destination, ErrorKind, MAX_COPY_SIZE,
    ObjectMeta, PartLayout, Source, StorageError, UploadedPart, WriteReceipt, Written,
};
use md5::{Digest, Md5};
use tokio::sync::Semaphore;

use crate::checksum::{combine, crc64nvme};
use crate::progress::Progress;

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

const UNKNOWN: u8 = 0;
const KEPT: u8 = 1;
const NOT_KEPT: u8 = 2;

/// The CRC-64/NVME of a part, and its MD5 when asked, off the async threads.
async fn digest(body: Bytes, md5: bool) -> Result<(Crc64Nvme, Option<String>), StorageError> {
    tokio::task::spawn_blocking(move || (crc64nvme(&body), md5.then(|| md5_hex(&body))))
        .await
        .map_err(|e| StorageError::new(ErrorKind::Other, format!("checksum task failed: {e}")))
}

/// How a copy attempt ended, short of an error.
struct Done {
    state: ObjectState,
    /// The object's CRC-64/NVME, when known (a server-side copy may not say).
    checksum: Option<Crc64Nvme>,
    receipt: Option<WriteReceipt>,
    verified_by: Option<&'static str>,
    /// Why, for a conflict.
    note: Option<String>,
}

/// What we can show of the bytes we sent, beyond their CRC-64/NVME: the ETag a server that
/// computes MD5 ETags would give them.
enum Evidence<'a> {
    /// The whole body (a single PUT): its MD5 is the ETag.
    Body(&'a Bytes),
    /// The multipart ETag `md5(part md5s)-N`, when every part's MD5 is known.
    MultipartEtag(String),
    /// Nothing beyond the checksum.
    Nothing,
}

impl Evidence<'_> {
    /// Whether `etag` is the one our bytes give. A mismatch proves nothing (SSE-KMS and some
    /// servers make other ETags), so callers fall back to a read-back instead of a verdict.
    fn etag_matches(&self, etag: Option<&str>) -> bool {
        let Some(etag) = etag.map(|e| e.trim_matches('"')) else {
            return false;
        };
        match self {
            Evidence::Body(body) => {
                is_md5_etag(etag).is_some_and(|hex| md5_hex(body).eq_ignore_ascii_case(hex))
            }
            Evidence::MultipartEtag(expected) => expected.eq_ignore_ascii_case(etag),
            Evidence::Nothing => false,
        }
    }
}

/// The ETag of a multipart object made of parts with these MD5s (hex).
fn multipart_etag(part_md5s: &[&str]) -> Option<String> {
    let mut digest = Md5::new();
    for hex in part_md5s {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        digest.update(&bytes);
    }
    let whole: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("{whole}-{}", part_md5s.len()))
}

/// What comparing an object at the destination with ours found.
enum Comparison {
    Same(&'static str),
    Different(String),
}

const KIB: u64 = 1024;
/// Multipart objects streamed through godwit at once, each with `part_concurrency` parts in
/// parallel, so large objects finish one after another. Spreading the same parts over every large
/// object instead would leave all of them unfinished when a run stops, and each would then be
/// completed by the next run (on some servers, s3s-fs among them, a rewrite of the whole object).
/// Measured on
/// s3s-fs (bench, resume case): 1 costs a quarter of the throughput; letting the next object send
/// parts while one completes leaves more unfinished objects behind a kill.
const MULTIPART_OBJECTS: usize = 2;
/// Read-back verification reads at most this much at once.
const READ_BACK_CHUNK: u64 = 8 << 20;

/// Whether `etag` is `source_etag` (quotes and case aside), both MD5-made: a plain MD5, or a
/// multipart ETag `md5(part md5s)-N`. Equal ETags of either form mean equal bytes, however the
/// parts were cut; unequal ones prove nothing (encrypted objects have other ETags).
fn same_content_etag(etag: Option<&str>, source_etag: &str) -> bool {
    fn md5_made(etag: &str) -> Option<&str> {
        let etag = etag.trim_matches('"');
        (is_md5_etag(etag).is_some() || multipart_etag_parts(etag).is_some()).then_some(etag)
    }
    match (etag.and_then(md5_made), md5_made(source_etag)) {
        (Some(ours), Some(theirs)) => ours.eq_ignore_ascii_case(theirs),
        _ => false,
    }
}

/// The part count of a multipart ETag `md5(part md5s)-N`, or `None` for any other ETag.
fn multipart_etag_parts(etag: &str) -> Option<u32> {
    let (md5, parts) = etag.trim_matches('"').split_once('-')?;
    is_md5_etag(md5)?;
    parts.parse().ok().filter(|&n| n > 0)
}

fn is_md5_etag(etag: &str) -> Option<&str> {
    let hex = etag.trim_matches('"');
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The part size for an object of `size` bytes: at least `wanted`, and large enough that the
/// object fits in `max_parts` parts; whole MiB.
pub(crate) fn part_size_for(size: u64, wanted: u64, min: u64, max: u64, max_parts: u32) -> u64 {
    const MIB: u64 = 1 << 20;
    let fits = size.div_ceil(u64::from(max_parts.max(1)));
    let part = wanted.max(fits).max(min);
    (part.div_ceil(MIB) * MIB).min(max.max(MIB))
}

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

    /// Where to copy `meta` from server-side, if it goes that way: the destination can (see
    /// [`godwit_storage::CopySupport`]) and the source ETag (unknown yet, or) made of MD5s, that
    /// the copy's ETag can be checked against: a plain MD5 for one copy request, a multipart ETag
    /// for a copy in parts cut as the source's. An object with parts of an earlier streamed
    /// upload recorded goes on streaming, from those parts.
    async fn server_copy_for(
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
    fn server_copy_refused(&self, error: &StorageError) -> bool {
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
    async fn copy_server_side(
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

    async fn copy_server_side_checked(
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
    async fn verify_copied(
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
    async fn settle_existing_copy(
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
    async fn compare_copy(
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

    /// Reads the source object in bounded chunks and returns its checksum.
    async fn read_source(&self, meta: &ObjectMeta) -> Result<Crc64Nvme, StorageError> {
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

    async fn copy_single(
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
    async fn rejected_but_stored(&self, meta: &ObjectMeta, error: StorageError) -> StorageError {
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

    /// Checks what the destination holds after our write.
    async fn verify_written(
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
    async fn head_taken(&self, meta: &ObjectMeta, what: &str) -> Result<DestObject, StorageError> {
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
    async fn head_written(&self, meta: &ObjectMeta) -> Result<DestObject, StorageError> {
        self.dest.head(&meta.key).await?.ok_or_else(|| {
            StorageError::new(
                ErrorKind::Unclear,
                format!("{} was written but is not there any more", meta.key),
            )
        })
    }

    /// Our write is copied when the verdict says the same; otherwise it is corrupt: taken back
    /// (only while it is still ours, by its ETag) and the object is tried again.
    async fn judged(
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
    async fn compare(
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
    async fn read_back(&self, key: &str, size: u64) -> Result<Crc64Nvme, StorageError> {
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

    /// The key was taken when we wrote: decide between ours (from an earlier attempt that
    /// crashed before it was recorded), already present, and conflict.
    async fn settle_existing(
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
    fn settled(
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

    async fn copy_multipart(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        upload: &mut Option<UploadRecord>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let caps = self.dest.capabilities();
        let part_size = part_size_for(
            meta.size,
            self.options.part_size,
            caps.min_part_size,
            caps.max_part_size,
            caps.max_parts,
        );
        let n_parts = meta.size.div_ceil(part_size) as u32;

        let (upload_id, resumed) = match self
            .open_upload(claimed, meta, upload, part_size, true)
            .await?
        {
            Ok(opened) => opened,
            Err(error) => return Ok(Err(error)),
        };
        let upload_gone = |error: &StorageError| upload_gone(error, resumed);

        // Unless the destination is known to keep a checksum of multipart objects, the parts'
        // MD5s are the cheapest proof of what it stored (its multipart ETag is made of them): far
        // cheaper than reading every object back while the first ones settle the question.
        let want_md5 = self.multipart_checksums.load(Ordering::Relaxed) != KEPT;
        let send = |part_number: u32| {
            let offset = u64::from(part_number - 1) * part_size;
            let len = part_size.min(meta.size - offset);
            let upload_id = &upload_id;
            async move {
                let (body, _permit) = self.read_budgeted(meta, offset, len).await?;
                let (crc, md5) = digest(body.clone(), want_md5).await?;
                let etag = self
                    .dest
                    .upload_part(&meta.key, upload_id, part_number, body, crc)
                    .await?;
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
        let parts = match self
            .fill_upload(claimed, upload, resumed, n_parts, send)
            .await?
        {
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
        let answer = self
            .dest
            .complete_upload_new(&meta.key, &upload_id, &parts, Some(crc))
            .await;
        let done = match answer {
            Ok(Written::Created(receipt)) => {
                self.store.clear_upload(claimed.id).await?;
                *upload = None;
                let verified = self.verify_written(meta, crc, &evidence, receipt).await;
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
            Ok(Written::AlreadyExists) => {
                self.drop_upload(claimed, meta, upload).await?;
                self.settle_existing(claimed, meta, crc, &evidence).await
            }
            Err(error) if error.kind() == ErrorKind::Unclear || upload_gone(&error) => {
                let gone = upload_gone(&error);
                let compare =
                    async |found: &DestObject| self.compare(meta, crc, &evidence, found).await;
                return self
                    .settle_unclear_complete(
                        claimed,
                        meta,
                        upload,
                        (error, gone),
                        Some(crc),
                        compare,
                    )
                    .await;
            }
            Err(error) => Err(error),
        };
        Ok(done)
    }

    /// Opens the upload to make the object's parts in: the recorded one when it is cut in parts
    /// of `part_size` and its parts were made the same way (sent with checksums when
    /// `checksummed`, else copied server-side without); otherwise a new one, recorded before any
    /// part is made. A recorded upload with no parts yet is replaced too: which way it was made
    /// is unknown. Returns the upload id, and whether it is the recorded upload going on.
    async fn open_upload(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        upload: &mut Option<UploadRecord>,
        part_size: u64,
        checksummed: bool,
    ) -> Result<Result<(String, bool), StorageError>, StoreError> {
        let fits = |u: &UploadRecord| {
            u.part_size == part_size
                && !u.parts.is_empty()
                && u.parts
                    .iter()
                    .all(|p| Crc64Nvme::from_base64(&p.checksum).is_some() == checksummed)
        };
        if upload.as_ref().is_some_and(|u| !fits(u)) {
            self.drop_upload(claimed, meta, upload).await?;
        }
        if let Some(record) = upload {
            return Ok(Ok((record.upload_id.clone(), true)));
        }
        let upload_id = match self.dest.create_upload(&meta.key, checksummed).await {
            Ok(id) => id,
            Err(error) => return Ok(Err(error)),
        };
        self.store
            .record_upload(claimed.id, &upload_id, part_size)
            .await?;
        *upload = Some(UploadRecord {
            upload_id: upload_id.clone(),
            part_size,
            parts: Vec::new(),
        });
        Ok(Ok((upload_id, false)))
    }

    /// Makes the parts 1..=`n_parts` the open upload lacks with `make`, `part_concurrency` at a
    /// time, recording each in the ledger (and in `upload`) as it finishes. Returns all the
    /// upload's parts in order, each with its MD5 when known. The first failure stops it; when
    /// the server no longer knows the upload, it is forgotten, so the next attempt starts a new
    /// one (and finds the object, should the old upload have completed).
    async fn fill_upload<Made>(
        &self,
        claimed: &ClaimedObject,
        upload: &mut Option<UploadRecord>,
        resumed: bool,
        n_parts: u32,
        make: impl Fn(u32) -> Made,
    ) -> Result<Result<Vec<(UploadedPart, Option<String>)>, StorageError>, StoreError>
    where
        Made: Future<Output = Result<(UploadedPart, Option<String>), StorageError>>,
    {
        let recorded = upload.as_ref().map_or(&[][..], |u| &u.parts[..]);
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
                    self.store.record_part(claimed.id, record.clone()).await?;
                    if let Some(upload) = upload.as_mut() {
                        upload.parts.push(record);
                    }
                    Progress::add(&self.progress.bytes_sent, part.size);
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
                self.store.clear_upload(claimed.id).await?;
                *upload = None;
                Ok(Err(StorageError::new(
                    ErrorKind::NoSuchUpload,
                    error.message(),
                )))
            }
            Some(error) => Ok(Err(error)),
        }
    }

    /// A completion whose outcome is unclear, or whose upload the server no longer knows: the
    /// object at the key settles it. Ours (by `compare`) is copied; otherwise the error stands,
    /// and an upload that is gone is forgotten so that the next attempt starts a new one (and
    /// finds the object, should the old upload have completed after all).
    async fn settle_unclear_complete(
        &self,
        claimed: &ClaimedObject,
        meta: &ObjectMeta,
        upload: &mut Option<UploadRecord>,
        (error, gone): (StorageError, bool),
        checksum: Option<Crc64Nvme>,
        compare: impl AsyncFnOnce(&DestObject) -> Result<Comparison, StorageError>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        let found = match self.dest.head(&meta.key).await {
            Ok(Some(found)) if found.size == meta.size => found,
            Ok(_) if gone => {
                self.store.clear_upload(claimed.id).await?;
                *upload = None;
                return Ok(Err(StorageError::new(
                    ErrorKind::NoSuchUpload,
                    error.message(),
                )));
            }
            Ok(_) => return Ok(Err(error)),
            Err(other) => return Ok(Err(other)),
        };
        match compare(&found).await {
            Ok(Comparison::Same(how)) => {
                self.store.clear_upload(claimed.id).await?;
                *upload = None;
                Ok(Ok(Done {
                    state: ObjectState::Copied,
                    checksum,
                    receipt: Some(WriteReceipt {
                        etag: found.etag,
                        crc64nvme: found.crc64nvme,
                        version_id: found.version_id,
                    }),
                    verified_by: Some(how),
                    note: None,
                }))
            }
            Ok(Comparison::Different(_)) => Ok(Err(error)),
            Err(other) => Ok(Err(other)),
        }
    }

    /// Copies a multipart object server-side in parts cut as the source's (`layout`), under a
    /// completion that never replaces an object. The copy's multipart ETag, made by the
    /// destination from the MD5s of what it copied, must then equal the source's. Each copied
    /// part is recorded (with no checksum: godwit never saw its bytes), so an interrupted copy
    /// goes on from the parts it has.
    async fn copy_parts_server_side(
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

/// Whether `error` says the server no longer knows the upload (it completed, or expired). Servers
/// say so differently (NoSuchUpload; s3s-fs answers AccessDenied), so for an upload resumed from
/// the ledger those answers mean "gone" too.
fn upload_gone(error: &StorageError, resumed: bool) -> bool {
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

    #[test]
    fn multipart_etags_are_made_of_part_md5s() {
        // Two parts "abc" and "def": md5(md5("abc") ++ md5("def")) with the part count.
        let parts = [md5_hex(b"abc"), md5_hex(b"def")];
        let mut joined = Md5::digest(b"abc").to_vec();
        joined.extend_from_slice(&Md5::digest(b"def"));
        let expected = format!("{}-2", md5_hex(&joined));
        assert_eq!(
            multipart_etag(&[&parts[0], &parts[1]]),
            Some(expected.clone())
        );
        let evidence = Evidence::MultipartEtag(expected.clone());
        assert!(evidence.etag_matches(Some(&format!("\"{expected}\""))));
        assert!(!evidence.etag_matches(Some("\"00000000000000000000000000000000-2\"")));
        assert!(!Evidence::Nothing.etag_matches(Some(&expected)));
    }

    #[test]
    fn md5_etags_are_recognised() {
        assert_eq!(
            is_md5_etag("\"900150983cd24fb0d6963f7d28e17f72\""),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(is_md5_etag("\"900150983cd24fb0d6963f7d28e17f72-2\""), None);
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
