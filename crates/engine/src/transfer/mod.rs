//! Copying one object: read, checksum, conditional write, verify, and settle what was found.
//!
//! Every write is conditional. When the key is taken, the object there is compared with ours:
//! same size and checksum is `already_present`, anything else a `conflict` left alone, unless it
//! is godwit's own earlier write (see `own`), which a changed source replaces. A write counts as
//! `copied` only once the destination's checksum (or, failing that, its MD5 ETag or a read-back)
//! matches the bytes read from the source.
//!
//! One module a concern: this one holds the retry loop and the choice of route; `single` (one
//! PUT), `upload` (multipart uploads, streamed or copied, opened, filled and resumed),
//! `server_side` (copies the destination makes itself), `verify` (checking our write, settling a
//! taken key), `own` (telling godwit's writes from others'), `guarantees` (what the destination
//! enforces, and the safe routes where it does not) and `etag` (what ETags prove).

mod etag;
mod guarantees;
mod own;
mod retry;
mod route;
mod server_side;
mod single;
mod upload;
mod verify;

pub use guarantees::{ConditionsFound, Guarantees};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::time::Duration;

use bytes::Bytes;
use godwit_state::{
    Claim, ClaimedObject, MigrationId, ObjectState, Outcome, Store, StoreError, UploadRecord,
};
use godwit_storage::{
    Conditions, CopyOrigin, Crc64Nvme, Destination, ErrorKind, Metadata, ObjectMeta, Source,
    StorageError, WriteReceipt,
};
use tokio::sync::{OnceCell, Semaphore};

use crate::filter::Filter;
use crate::outage::{Outage, Verdict};
use crate::progress::{InParts, Progress};
use own::Own;
use upload::{MULTIPART_OBJECTS, UNKNOWN};

/// How objects are copied.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Objects larger than this go multipart; `None`: chosen from what the destination is
    /// measured to do (see `route`).
    pub multipart_threshold: Option<u64>,
    /// The smallest part size; it grows so that no object needs more parts than the destination allows.
    pub part_size: u64,
    /// Parts of one object in flight at once.
    pub part_concurrency: usize,
    /// Attempts at one object within one claim before it goes to the fail queue (the first and
    /// two retries by default).
    pub max_attempts: u32,
    /// Bytes of object data held in memory at once, across all transfers.
    pub memory_budget: u64,
    /// Where the destination would copy onto an existing key (it ignores `If-None-Match` on
    /// CopyObject), copy server-side all the same, after a HEAD showed the key free: racy, as
    /// the other tools' server-side copies are, and said so in the summary.
    pub racy_server_side_copy: bool,
    /// What is sent with every object beside what its source serves.
    pub metadata: MetadataOptions,
}

/// What is sent with every object beside what its source serves (its Content-Type and the other
/// headers S3 keeps, its user metadata).
#[derive(Debug, Clone, Default)]
pub struct MetadataOptions {
    /// Replaces every object's Content-Type.
    pub content_type: Option<String>,
    /// User metadata added to every object (replacing the source's value of the same name).
    pub user: BTreeMap<String, String>,
    /// Copy each object's tags too (from S3 sources that keep them).
    pub preserve_tags: bool,
}

impl MetadataOptions {
    /// Whether the run changes what the source serves.
    fn overrides(&self) -> bool {
        self.content_type.is_some() || !self.user.is_empty()
    }

    fn apply(&self, metadata: &mut Metadata) {
        if let Some(content_type) = &self.content_type {
            metadata.content_type = Some(content_type.clone());
        }
        for (name, value) in &self.user {
            metadata
                .user
                .insert(name.to_ascii_lowercase(), value.clone());
        }
    }
}

/// The default memory budget: enough for a 128 MiB object sent whole beside the parts and small
/// objects in flight, and within 256 MiB of RSS on the bench's large case.
pub const DEFAULT_MEMORY_BUDGET: u64 = 192 << 20;

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            multipart_threshold: None,
            part_size: 16 << 20,
            part_concurrency: 8,
            max_attempts: 3,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            racy_server_side_copy: false,
            metadata: MetadataOptions::default(),
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
    /// Which keys the run takes: an object queued under another filter is excluded when claimed.
    filter: Filter,
    /// The endpoints' health: outages are waited out.
    pub(crate) outage: Arc<Outage>,
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
    /// Set when the destination's server-side copies are unconditional and the options take
    /// them anyway: each copy looks at the key first.
    copies_racy: AtomicBool,
    /// Whether the destination keeps a checksum of multipart objects: `UNKNOWN`, `KEPT`, `NOT_KEPT`.
    multipart_checksums: AtomicU8,
    /// What the destination enforces, probed before the first write.
    conditions: OnceCell<Conditions>,
    /// How objects above `route::ALWAYS_SINGLE` go, measured when the first needs it.
    large_route: OnceCell<route::LargeRoute>,
    /// Whether the warning that uploads cannot be listed was given.
    unlisted_uploads_said: AtomicBool,
    /// Whether the warning that the source keeps no tags was given.
    untagged_said: AtomicBool,
}

/// How an object whose upload is being cleaned up is held: by this worker's claim, or by nobody
/// (it needs no upload any more).
enum Held {
    Claimed(Claim),
    Stale(godwit_state::ObjectId),
}

/// One object being copied, across the attempts of a claim: what was claimed, the version being
/// read, its multipart upload, and what godwit knows of its own writes at the key.
struct Job<'a> {
    claimed: &'a ClaimedObject,
    meta: ObjectMeta,
    upload: Option<UploadRecord>,
    own: Own,
    /// The metadata godwit sent with its last write, for the ledger.
    sent: Option<Metadata>,
    /// Its upload's finished parts, shown by the progress bar while it is in flight.
    in_parts: InParts,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: Arc<dyn Source>,
        dest: Arc<dyn Destination>,
        store: Arc<dyn Store>,
        options: TransferOptions,
        progress: Arc<Progress>,
        copy_candidate: Option<CopyOrigin>,
        filter: Filter,
        outage: Arc<Outage>,
    ) -> Self {
        let permits = (options.memory_budget / KIB).clamp(1, u64::from(u32::MAX >> 4)) as usize;
        Self {
            source,
            dest,
            store,
            options,
            progress,
            filter,
            outage,
            budget: Semaphore::new(permits),
            multipart_objects: Semaphore::new(MULTIPART_OBJECTS),
            copy_from_on: AtomicBool::new(true),
            copies_racy: AtomicBool::new(false),
            copy_candidate,
            copy_from: tokio::sync::OnceCell::new(),
            multipart_checksums: AtomicU8::new(UNKNOWN),
            conditions: OnceCell::new(),
            large_route: OnceCell::new(),
            unlisted_uploads_said: AtomicBool::new(false),
            untagged_said: AtomicBool::new(false),
        }
    }

    /// What the destination enforces: probed the first time a write needs to know, and said on
    /// stderr where it falls short.
    async fn conditions(&self) -> &Conditions {
        self.conditions
            .get_or_init(|| async {
                let conditions = self.dest.conditions().await;
                guarantees::warn_about(
                    &conditions,
                    self.dest.endpoint().unwrap_or("the destination"),
                );
                conditions
            })
            .await
    }

    /// How the guarantees held in this run (what the probe found, if it ran).
    pub fn guarantees(&self) -> Guarantees {
        let mut guarantees = Guarantees::of(self.conditions.get());
        if self.copies_racy.load(std::sync::atomic::Ordering::Relaxed) {
            guarantees.no_overwrite = format!(
                "{}; server-side copies: {} (--racy-server-side-copy: the server ignores If-None-Match on CopyObject)",
                guarantees.no_overwrite,
                guarantees::RACY
            );
        }
        guarantees
    }

    /// Reads the whole object and its metadata within the memory budget.
    async fn read_whole_budgeted(
        &self,
        meta: &ObjectMeta,
    ) -> Result<(Bytes, Metadata, tokio::sync::SemaphorePermit<'_>), StorageError> {
        let permit = self.budget_permit(meta.size).await?;
        let (bytes, metadata) = self.source.read_whole(meta).await?;
        Ok((bytes, metadata, permit))
    }

    /// What to send with the object: what its source serves (`served`, else asked for), the
    /// run's overrides, and its tags when the run keeps them.
    async fn metadata_for(
        &self,
        meta: &ObjectMeta,
        served: Option<Metadata>,
    ) -> Result<Metadata, StorageError> {
        let mut metadata = match served {
            Some(served) => served,
            None => self.source.metadata(meta).await?,
        };
        self.options.metadata.apply(&mut metadata);
        if self.options.metadata.preserve_tags {
            metadata.tags = self.tags_of(meta).await?;
        }
        Ok(metadata)
    }

    /// The object's tags; none, said once, where the source cannot say.
    async fn tags_of(&self, meta: &ObjectMeta) -> Result<Option<String>, StorageError> {
        match self.source.tags(meta).await {
            Ok(tags) => Ok(tags),
            Err(error) if error.kind() == ErrorKind::Unsupported => {
                if !self
                    .untagged_said
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "--preserve-tags: the source cannot say what tags its objects have ({}); objects are copied without tags",
                        error.message()
                    );
                }
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Reads a byte range of the source within the memory budget; the permit travels with the bytes.
    async fn read_budgeted(
        &self,
        meta: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, tokio::sync::SemaphorePermit<'_>), StorageError> {
        let permit = self.budget_permit(len).await?;
        let bytes = self.source.read(meta, offset, len).await?;
        Ok((bytes, permit))
    }

    /// Permits for `len` bytes of the memory budget (all of it, for more than it holds).
    async fn budget_permit(
        &self,
        len: u64,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, StorageError> {
        let wanted = len.div_ceil(KIB).max(1);
        let all = (self.options.memory_budget / KIB).clamp(1, u64::from(u32::MAX >> 4));
        self.budget
            .acquire_many(wanted.min(all) as u32)
            .await
            .map_err(|_| StorageError::new(ErrorKind::Other, "memory budget closed"))
    }

    /// Copies one claimed object, retrying temporary failures, and says how it ended: `None` when
    /// the claim was lost meanwhile (its lease ran out and another worker took the object, which
    /// is now that worker's to finish). Only a failure of the ledger itself is an `Err`.
    pub async fn copy(&self, claimed: ClaimedObject) -> Result<Option<Outcome>, StoreError> {
        let started = std::time::Instant::now();
        match self.copy_claimed(&claimed).await {
            Ok(outcome) => {
                crate::metrics::transfer_took(started.elapsed());
                Ok(Some(outcome))
            }
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(key = %claimed.key, "the lease on this object ran out and another worker took it: dropping it");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn copy_claimed(&self, claimed: &ClaimedObject) -> Result<Outcome, StoreError> {
        let mut job = Job {
            claimed,
            meta: ObjectMeta {
                key: claimed.key.clone(),
                size: claimed.size,
                version: claimed.version.clone(),
                group: None,
                partition: None,
            },
            upload: claimed.upload.clone(),
            own: Own::new(claimed),
            sent: None,
            in_parts: InParts::new(Arc::clone(&self.progress)),
        };
        if !self.filter.takes(&claimed.key) {
            // Queued under another filter (a rescan for the new one may not have reached it).
            self.drop_upload(&mut job).await?;
            return Ok(self.ended(&job, 1, ObjectState::Excluded, None));
        }
        if let Some(since) = claimed.unrecorded_upload_since {
            self.abort_unrecorded(Held::Claimed(claimed.claim()), &claimed.key, since)
                .await?;
        }
        let mut attempt = 0;
        // The error the latest retry followed: kept in the ledger with the outcome, so retries
        // show by class even when the object got through.
        let mut retried: Option<StorageError> = None;
        loop {
            attempt += 1;
            let mark = self.outage.mark();
            let result = match self.server_copy_for(&job.meta, job.upload.as_ref()).await {
                Some(origin) => match self.copy_server_side(&mut job, origin).await? {
                    Ok(Some(done)) => Ok(done),
                    Err(error) if !self.server_copy_refused(&error) => Err(error),
                    // Parts copied server-side are no use to streaming: `open_upload` replaces
                    // their upload.
                    Ok(None) | Err(_) => self.copy_streamed(&mut job).await?,
                },
                None => self.copy_streamed(&mut job).await?,
            };
            let error = match result {
                Ok(done) => {
                    // A finished multipart copy has forgotten its upload already; any upload
                    // still recorded (the object settled otherwise, or went by a single PUT after
                    // the threshold changed) is of no use now.
                    self.drop_upload(&mut job).await?;
                    let mut outcome = self.outcome(&job, attempt, done);
                    if outcome.error.is_none()
                        && let Some(error) = retried
                    {
                        outcome.error = Some((
                            error.kind().as_str().to_owned(),
                            format!("done at attempt {attempt}; retried after: {error}"),
                        ));
                    }
                    return Ok(outcome);
                }
                Err(error) => error,
            };
            // An endpoint that stopped answering is an outage to wait out, not this object's
            // failure (see `outage`).
            if error.kind() == ErrorKind::Unreachable {
                match self.outage.weather(mark, error.message()).await {
                    Verdict::Charge => {}
                    Verdict::Retry => {
                        attempt -= 1;
                        continue;
                    }
                    Verdict::GiveUp => {
                        // Back to the queue as it was claimed: its upload kept for the next run.
                        let mut outcome = self.ended(&job, 1, ObjectState::Pending, None);
                        outcome.attempts = job.claimed.attempts.saturating_sub(1);
                        return Ok(outcome);
                    }
                }
            }
            // A source object that went away or changed is looked at again before anything else.
            if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::SourceChanged) {
                match self.source.stat(&job.meta.key).await {
                    Ok(None) => {
                        self.drop_upload(&mut job).await?;
                        return Ok(self.ended(&job, attempt, ObjectState::SourceVanished, None));
                    }
                    Ok(Some(now)) if now != job.meta => {
                        tracing::debug!(key = %job.meta.key, "source changed; reading the new version");
                        // Parts of the old version are of no use: abort their upload.
                        self.drop_upload(&mut job).await?;
                        job.meta = now;
                    }
                    Ok(Some(_)) | Err(_) => {}
                }
            }
            if error.kind() == ErrorKind::Busy {
                // The dispatcher lowers the objects in flight when these gather (see `dispatch`).
                Progress::add(&self.progress.n_throttled, 1);
                crate::metrics::throttled();
            }
            if !error.is_temporary()
                || attempt >= retry::attempts_for(&error, self.options.max_attempts)
            {
                self.drop_upload(&mut job).await?;
                let reason = if error.is_temporary() {
                    format!("{} (gave up after {attempt} attempts)", error.message())
                } else {
                    error.message().to_owned()
                };
                return Ok(self.ended(
                    &job,
                    attempt,
                    ObjectState::Failed,
                    Some((error.kind().as_str().to_owned(), reason)),
                ));
            }
            tracing::debug!(key = %job.meta.key, attempt, %error, "retrying");
            crate::metrics::retried(error.kind().as_str());
            tokio::time::sleep(retry::pause_before_retry(attempt, &error)).await;
            retried = Some(error);
        }
    }

    /// Reads the object through godwit and writes it: one PUT, or a multipart upload.
    async fn copy_streamed(
        &self,
        job: &mut Job<'_>,
    ) -> Result<Result<Done, StorageError>, StoreError> {
        if self.resumes_streamed_upload(job) || self.goes_multipart(job.meta.size).await {
            let _turn = self
                .multipart_objects
                .acquire()
                .await
                .expect("the multipart gate is never closed");
            self.copy_multipart(job).await
        } else {
            Ok(self.copy_single(job).await)
        }
    }

    fn outcome(&self, job: &Job<'_>, attempt: u32, done: Done) -> Outcome {
        let (dest_etag, dest_version) = match done.receipt {
            Some(receipt) => (receipt.etag, receipt.version_id),
            None => (None, None),
        };
        Outcome {
            id: job.claimed.id,
            token: job.claimed.token,
            state: done.state,
            attempts: job.claimed.attempts + attempt - 1,
            size: job.meta.size,
            version: job.meta.version.clone(),
            checksum: done.checksum.map(Crc64Nvme::to_base64),
            dest_etag,
            dest_version,
            verified_by: done.verified_by,
            error: done.note.map(|note| ("conflict".to_owned(), note)),
            own_write: job.own.change(),
            metadata: match done.state {
                ObjectState::Copied => job
                    .sent
                    .as_ref()
                    .and_then(|sent| serde_json::to_string(sent).ok()),
                _ => None,
            },
        }
    }

    fn ended(
        &self,
        job: &Job<'_>,
        attempt: u32,
        state: ObjectState,
        error: Option<(String, String)>,
    ) -> Outcome {
        Outcome {
            id: job.claimed.id,
            token: job.claimed.token,
            state,
            attempts: job.claimed.attempts + attempt - 1,
            size: job.meta.size,
            version: job.meta.version.clone(),
            checksum: None,
            dest_etag: None,
            dest_version: None,
            verified_by: None,
            error,
            own_write: job.own.change(),
            metadata: None,
        }
    }

    /// Aborts and forgets a multipart upload the object no longer needs.
    async fn drop_upload(&self, job: &mut Job<'_>) -> Result<(), StoreError> {
        if let Some(record) = job.upload.take() {
            if let Err(error) = self
                .dest
                .abort_upload(&job.meta.key, &record.upload_id)
                .await
            {
                tracing::warn!(key = %job.meta.key, %error, "could not abort an unneeded multipart upload");
            }
            self.store.clear_upload(job.claimed.claim()).await?;
        }
        Ok(())
    }

    /// Aborts the uploads the ledger records for objects that no longer need them (excluded by
    /// a new filter, or settled otherwise), and those a stopped run began for them without
    /// recording. Returns how many were aborted.
    pub async fn abort_stale_uploads(&self, migration: MigrationId) -> Result<u64, StoreError> {
        let mut aborted = 0;
        for stale in self.store.stale_uploads(migration).await? {
            match &stale.upload_id {
                Some(upload_id) => match self.dest.abort_upload(&stale.key, upload_id).await {
                    Ok(()) => aborted += 1,
                    Err(error) => {
                        tracing::warn!(key = %stale.key, %error, "could not abort a multipart upload no longer needed");
                        continue;
                    }
                },
                None => {
                    if let Some(since) = stale.started_at {
                        aborted += self
                            .abort_unrecorded(Held::Stale(stale.id), &stale.key, since)
                            .await?;
                        continue;
                    }
                }
            }
            self.store.forget_stale_upload(stale.id).await?;
        }
        Ok(aborted)
    }

    /// A run stopped between starting a multipart upload of `key` (at `since`) and recording its
    /// id: finds the uploads open at exactly that key that were started since then (by the
    /// server's clock, give or take a minute) and aborts them. Only this migration writes its
    /// keys, and the next upload of this one is recorded before it starts, so those are ours.
    async fn abort_unrecorded(
        &self,
        object: Held,
        key: &str,
        since: std::time::SystemTime,
    ) -> Result<u64, StoreError> {
        const SLACK: Duration = Duration::from_secs(60);
        let mut aborted = 0;
        match self.dest.list_uploads(key).await {
            Ok(uploads) => {
                let until = std::time::SystemTime::now() + SLACK;
                for open in uploads {
                    // A server that dates uploads wrongly (moto: always 2010) gets nothing aborted.
                    let ours = open
                        .initiated
                        .is_some_and(|at| at + SLACK >= since && at <= until);
                    if !ours {
                        tracing::debug!(key, upload = %open.upload_id, "an open upload not begun by the stopped run: left alone");
                        continue;
                    }
                    match self.dest.abort_upload(key, &open.upload_id).await {
                        Ok(()) => {
                            tracing::info!(
                                key,
                                "aborted a multipart upload a stopped run began without recording it"
                            );
                            aborted += 1;
                        }
                        Err(error) => {
                            tracing::warn!(key, %error, "could not abort a multipart upload a stopped run began");
                            return Ok(aborted);
                        }
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::Unsupported => {
                if !self
                    .unlisted_uploads_said
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "a stopped run began a multipart upload of {key} without recording its id, and the \
                         destination cannot list uploads to abort it: it stays open until a lifecycle rule \
                         (AbortIncompleteMultipartUpload) removes it ({})",
                        error.message()
                    );
                }
            }
            Err(error) => {
                tracing::warn!(key, %error, "could not look for a multipart upload a stopped run began");
                return Ok(aborted);
            }
        }
        match object {
            Held::Claimed(claim) => self.store.clear_upload(claim).await?,
            Held::Stale(id) => self.store.forget_stale_upload(id).await?,
        }
        Ok(aborted)
    }
}
